//! `pixlm quantize`: a checkpoint directory to one GGUF file (weight matrices in Q8_0 or Q4_K,
//! norms and biases f32, config and tokenizer in the metadata), loadable with
//! `--model FILE.gguf`.

use crate::common::resolve_model;
use anyhow::{bail, Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use pixlm_models::gguf::ExportEvent;
use pixlm_models::{LinearChoice, QuantFormat};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::PathBuf;

#[derive(Args)]
pub struct QuantizeArgs {
    /// Checkpoint directory (default: the shipped shapes model).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Weight format of the weight matrices: linear layers, token embeddings, output head and
    /// patch embedding. Matrices whose input dimension is not a multiple of the block stay f32
    /// (q8_0: 32); q4_k uses Q4_0 where 256 does not fit but 32 does.
    #[arg(long, value_parser = ["q8_0", "q4_k"])]
    pub to: String,
    /// Keep the token embeddings, output head and patch embedding in f32 (larger file, the
    /// linear layers alone quantized).
    #[arg(long)]
    pub dense_embeddings: bool,
    /// The GGUF file to write.
    #[arg(short, long)]
    pub output: PathBuf,
    /// List every weight matrix that stays dense, with the reason.
    #[arg(long, short)]
    pub verbose: bool,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

pub fn run(a: QuantizeArgs) -> Result<i32> {
    let dir = resolve_model(&a.model)?;
    if !dir.is_dir() {
        bail!(
            "{} is not a checkpoint directory (quantize reads config.json, *.safetensors and the tokenizer files)",
            dir.display()
        );
    }
    let format: QuantFormat = a.to.parse().map_err(anyhow::Error::msg)?;
    let bar = if a.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(0)
    };
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} tensors [{elapsed_precise}] {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let report =
        pixlm_engine::engine::export_gguf(&dir, format, a.dense_embeddings, &a.output, &mut |ev| {
            match ev {
                ExportEvent::Start { tensors } => bar.set_length(tensors as u64),
                ExportEvent::Tensor { name } => {
                    bar.set_message(name.to_string());
                    bar.inc(1);
                }
                ExportEvent::Writing => bar.set_message(format!("writing {}", a.output.display())),
            }
        })
        .with_context(|| format!("quantizing {} to {format}", dir.display()))?;
    bar.finish_and_clear();

    let l = &report.linears;
    let mut by_type: BTreeMap<String, usize> = BTreeMap::new();
    for (_, t) in l.quantized_types() {
        *by_type.entry(format!("{t:?}")).or_default() += 1;
    }
    let types = by_type
        .iter()
        .map(|(t, n)| format!("{n} {t}"))
        .collect::<Vec<_>>()
        .join(", ");
    let mut out = String::new();
    writeln!(
        out,
        "wrote {} ({format}): {} tensors, {} weight matrices quantized ({}), {} weight matrices dense, {} other tensors f32",
        a.output.display(),
        report.tensors,
        l.num_quantized(),
        types,
        l.num_dense(),
        report.f32_tensors.saturating_sub(l.num_dense()),
    )?;
    let mut reasons: BTreeMap<&str, usize> = BTreeMap::new();
    for (name, c) in &l.layers {
        if let LinearChoice::Dense(why) = c {
            *reasons.entry(why.as_str()).or_default() += 1;
            if a.verbose {
                writeln!(out, "    dense: {name}: {why}")?;
            }
        }
    }
    for (why, n) in reasons {
        writeln!(out, "    {n} dense: {why}")?;
    }
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    writeln!(
        out,
        "    {:.1}% of parameters quantized; file {:.2} MiB = {:.3}x the f32 weights ({:.2} MiB)",
        100.0 * report.quantized_params as f64 / report.total_params.max(1) as f64,
        mib(report.file_bytes),
        report.file_bytes as f64 / report.f32_bytes.max(1) as f64,
        mib(report.f32_bytes),
    )?;
    // A closed pipe (`| head`) is not an error worth a panic.
    let _ = std::io::stdout().write_all(out.as_bytes());
    Ok(0)
}
