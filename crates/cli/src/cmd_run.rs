//! `pixlm run`: one answer streamed to stdout, or an interactive chat.

use crate::common::{resolve_model, ComputeArgs, ImageBudgetArgs};
use anyhow::{bail, Context, Result};
use clap::Args;
use pixlm_engine::{ChatMessage, Content, Engine, GenerateOptions, ImageUrl, Part, SamplingParams};
use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;

#[derive(Args, Clone)]
pub struct SamplingArgs {
    /// Sampling temperature; 0 picks the most likely token every time (greedy).
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    pub temperature: f32,
    /// Sample only among the K most likely tokens (0 = no limit).
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    /// Sample from the smallest set of tokens whose probability reaches P (1 = off).
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    pub top_p: f32,
    /// Drop tokens less likely than MIN_P times the most likely one (0 = off).
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    pub min_p: f32,
    /// Penalise tokens already generated (>1 discourages repeats; 1 = off).
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    pub repetition_penalty: f32,
    /// Random seed: the same seed gives the same text.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Most tokens to generate (at least 1).
    #[arg(long, default_value_t = 512, value_parser = at_least_one)]
    pub max_new_tokens: usize,
    /// Stop when this text is produced (repeatable); the stop text is not printed.
    #[arg(long = "stop")]
    pub stop: Vec<String>,
    /// Stop when this token id is produced (repeatable), besides the model's end-of-turn token.
    #[arg(long = "stop-token")]
    pub stop_token: Vec<u32>,
}

impl SamplingArgs {
    pub fn options(&self) -> GenerateOptions {
        GenerateOptions {
            sampling: SamplingParams {
                temperature: self.temperature,
                top_k: self.top_k,
                top_p: self.top_p,
                min_p: self.min_p,
                repetition_penalty: self.repetition_penalty,
                seed: self.seed,
                ..SamplingParams::default()
            },
            max_new_tokens: self.max_new_tokens,
            stop_strings: self.stop.clone(),
            stop_ids: self.stop_token.clone(),
        }
    }
}

#[derive(Args)]
pub struct RunArgs {
    /// Model directory (Hugging Face layout). Default: the small shapes model shipped in the repo.
    #[arg(long, short)]
    pub model: Option<PathBuf>,
    /// Image file to show the model (PNG, JPEG, WebP, BMP, GIF); repeat for several images.
    #[arg(long = "image", short = 'i')]
    pub images: Vec<PathBuf>,
    /// System message placed before the conversation.
    #[arg(long)]
    pub system: Option<String>,
    #[command(flatten)]
    pub image_budget: ImageBudgetArgs,
    /// Start an interactive chat (also the default when no PROMPT is given on a terminal).
    #[arg(long)]
    pub chat: bool,
    /// Print prompt size and speed to stderr after the answer.
    #[arg(long, short)]
    pub verbose: bool,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    #[command(flatten)]
    pub compute: ComputeArgs,
    /// The question or instruction. Without it, pixlm reads a chat from the terminal.
    pub prompt: Option<String>,
}

fn user_message(text: &str, images: &[PathBuf]) -> Result<ChatMessage> {
    let mut parts = Vec::new();
    for p in images {
        if !p.is_file() {
            bail!("image {} does not exist", p.display());
        }
        parts.push(Part::ImageUrl {
            image_url: ImageUrl {
                url: p.to_string_lossy().into_owned(),
            },
        });
    }
    parts.push(Part::Text {
        text: text.to_string(),
    });
    Ok(ChatMessage {
        role: "user".into(),
        content: Content::Parts(parts),
    })
}

fn load(a: &RunArgs) -> Result<Engine> {
    let dir = resolve_model(&a.model)?;
    let opts = a.compute.load_options()?;
    let mut engine =
        Engine::load(&dir, &opts).with_context(|| format!("loading model {}", dir.display()))?;
    a.image_budget.apply(&mut engine)?;
    Ok(engine)
}

/// Generates one answer for `messages`, streaming it to stdout.
fn answer(
    engine: &Engine,
    messages: &[ChatMessage],
    opts: &GenerateOptions,
    verbose: bool,
) -> Result<String> {
    let prepared = engine.prepare(messages, None)?;
    let mut out = std::io::stdout().lock();
    let g = engine.generate(&prepared, opts, &mut |s| {
        let _ = out.write_all(s.as_bytes());
        let _ = out.flush();
    })?;
    let _ = writeln!(out);
    if verbose {
        let n = g.ids.len();
        eprintln!(
            "[{} prompt tokens in {:.2}s ({:.1} tok/s); {n} new tokens in {:.2}s ({:.1} tok/s); finish: {:?}]",
            g.prompt_tokens,
            g.prefill_secs,
            g.prompt_tokens as f64 / g.prefill_secs.max(1e-9),
            g.decode_secs,
            n as f64 / g.decode_secs.max(1e-9),
            g.finish
        );
    }
    Ok(g.text)
}

pub fn run(a: RunArgs) -> Result<i32> {
    let opts = a.sampling.options();
    opts.sampling.validate()?;
    if let (Some(p), false) = (&a.prompt, a.chat) {
        let engine = load(&a)?;
        let mut msgs = Vec::new();
        if let Some(s) = &a.system {
            msgs.push(ChatMessage::text("system", s.clone()));
        }
        msgs.push(user_message(p, &a.images)?);
        answer(&engine, &msgs, &opts, a.verbose)?;
        return Ok(0);
    }
    chat(a, opts)
}

const CHAT_HELP: &str = "Commands: /image PATH attaches an image to your next message; /reset starts over; /exit quits (or Ctrl-D).";

fn chat(a: RunArgs, opts: GenerateOptions) -> Result<i32> {
    let engine = load(&a)?;
    let tty = std::io::stdin().is_terminal();
    if tty {
        eprintln!("pixlm chat with {} — {CHAT_HELP}", engine.dir.display());
    }
    let mut history: Vec<ChatMessage> = Vec::new();
    if let Some(s) = &a.system {
        history.push(ChatMessage::text("system", s.clone()));
    }
    let base = history.clone();
    let mut pending: Vec<PathBuf> = a.images.clone();
    let mut first = a.prompt.clone();
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    loop {
        let line = match first.take() {
            Some(p) => p,
            None => {
                if tty {
                    eprint!(">>> ");
                    let _ = std::io::stderr().flush();
                }
                match lines.next() {
                    None => break,
                    Some(l) => l.context("reading the terminal")?,
                }
            }
        };
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if line == "/exit" || line == "/quit" {
            break;
        }
        if line == "/reset" {
            history = base.clone();
            pending.clear();
            eprintln!("(conversation cleared)");
            continue;
        }
        if line == "/help" {
            eprintln!("{CHAT_HELP}");
            continue;
        }
        if let Some(p) = line.strip_prefix("/image") {
            let p = PathBuf::from(p.trim());
            if p.as_os_str().is_empty() || !p.is_file() {
                eprintln!("no such image: {}", p.display());
            } else {
                eprintln!("(attached {} to your next message)", p.display());
                pending.push(p);
            }
            continue;
        }
        let msg = match user_message(line, &pending) {
            Ok(m) => m,
            Err(e) => {
                eprintln!("error: {e:#}");
                continue;
            }
        };
        pending.clear();
        history.push(msg);
        match answer(&engine, &history, &opts, a.verbose) {
            Ok(text) => history.push(ChatMessage::text("assistant", text)),
            Err(e) => {
                eprintln!("error: {e:#}");
                history.pop();
            }
        }
    }
    Ok(0)
}

/// A count that must be at least 1 (clap parser).
fn at_least_one(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}
