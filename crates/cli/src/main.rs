//! The `pixlm` command line.

mod bench;
mod cmd_check;
mod cmd_run;
mod common;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "pixlm",
    version,
    about = "Run, check and benchmark native vision-language models (NEO) on CPU or GPU",
    long_about = "pixlm runs native multimodal models — pixels and words through one transformer — \
from Hugging Face checkpoint directories (config.json, *.safetensors, tokenizer.json).\n\n\
Examples:\n  pixlm run --image examples/shapes.png \"What color is the circle?\"\n  \
pixlm run --model ./NEO1_0-2B-SFT --image cat.jpg \"Describe this image.\"\n  \
pixlm check ../shared/fixtures\n  pixlm bench"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Answer a prompt (with optional images), streaming the answer; without a prompt, chat.
    Run(cmd_run::RunArgs),
    /// Run reference fixture cases and report every difference against its tolerance.
    Check(cmd_check::CheckArgs),
    /// Measure load time, prefill and decode speed, time to first token and peak memory.
    Bench(bench::BenchArgs),
}

fn main() {
    let cli = Cli::parse();
    common::init_tracing();
    let result = match cli.command {
        Command::Run(a) => cmd_run::run(a),
        Command::Check(a) => cmd_check::run(a),
        Command::Bench(a) => bench::run(a),
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
    }
}
