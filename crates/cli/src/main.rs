//! The `pixlm` command line.

mod alloc;
mod bench;
mod bench_llama;
mod bench_model;
mod cmd_check;
mod cmd_quantize;
mod cmd_run;
mod cmd_serve;
mod cmd_train;
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
    /// Serve the model over an OpenAI-compatible HTTP API (chat completions, streaming, metrics).
    Serve(cmd_serve::ServeArgs),
    /// Run reference fixture cases and report every difference against its tolerance.
    Check(cmd_check::CheckArgs),
    /// Measure load time, prefill and decode speed, time to first token and peak memory.
    Bench(bench::BenchArgs),
    /// Train a NEO-architecture model on the shapes task (checkpoints in the Hugging Face layout).
    ///
    /// Training is data-parallel: `--threads N` runs N workers, each differentiating
    /// micro-batches of every batch with single-threaded kernels (default: one per core).
    /// Results are reproducible for a given seed, whatever the thread count.
    Train(cmd_train::TrainArgs),
    /// Accuracy of a model on a shapes evaluation directory, overall and per question kind.
    Eval(cmd_train::EvalArgs),
    /// Write a model as one GGUF file with Q8_0 or Q4_K linear layers (config and tokenizer inside).
    Quantize(cmd_quantize::QuantizeArgs),
    /// Write a shapes evaluation directory (images and questions.jsonl) from a seed.
    GenShapes(cmd_train::GenShapesArgs),
}

fn main() {
    alloc::keep_freed_memory();
    let cli = Cli::parse();
    common::init_tracing();
    let result = match cli.command {
        Command::Run(a) => cmd_run::run(a),
        Command::Serve(a) => cmd_serve::run(a),
        Command::Check(a) => cmd_check::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Train(a) => cmd_train::train(a),
        Command::Eval(a) => cmd_train::eval(a),
        Command::GenShapes(a) => cmd_train::gen_shapes(a),
        Command::Quantize(a) => cmd_quantize::run(a),
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("error: {}", error_chain(&e));
            std::process::exit(1);
        }
    }
}

/// The error and its causes, `: `-joined like anyhow's `{:#}`, leaving out a cause whose text
/// the message already holds (many of the libraries' errors print their source in their own
/// message, which `{:#}` would then print twice).
fn error_chain(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::error_chain;

    #[test]
    fn a_cause_already_in_the_message_is_not_repeated() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let e = anyhow::Error::new(io).context("cannot read a.png: no such file");
        assert_eq!(error_chain(&e), "cannot read a.png: no such file");
        let e = anyhow::anyhow!("bad header").context("loading model m");
        assert_eq!(error_chain(&e), "loading model m: bad header");
    }
}
