//! `pixlm bench`: speed and memory of the NEO forward with random weights at a real shape.

use crate::common::{peak_rss_bytes, ComputeArgs};
use anyhow::Result;
use clap::Args;

#[derive(Args)]
pub struct BenchArgs {
    /// Model shape: neo-2b (spec §11.1: 40 layers, hidden 2048, untied) or neo-tiny.
    #[arg(long, default_value = "neo-2b")]
    pub shape: String,
    /// Image tokens in the prefill prompt (the image is sized to give about this many).
    #[arg(long, default_value_t = 256)]
    pub image_tokens: usize,
    /// Tokens to decode after the prefill.
    #[arg(long, default_value_t = 32)]
    pub decode_tokens: usize,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub compute: ComputeArgs,
}

pub fn run(_a: BenchArgs) -> Result<i32> {
    let _ = peak_rss_bytes();
    anyhow::bail!("bench: not built yet")
}
