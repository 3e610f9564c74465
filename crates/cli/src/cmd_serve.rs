//! `pixlm serve`: the OpenAI-compatible HTTP server (see the `pixlm-server` crate).

use crate::common::{resolve_model, ComputeArgs, ImageBudgetArgs};
use anyhow::{Context, Result};
use clap::Args;
use pixlm_engine::Engine;
use pixlm_server::ServerConfig;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Args)]
pub struct ServeArgs {
    /// Model directory (Hugging Face layout) or pixlm GGUF file. Default: the shapes model.
    #[arg(long, short)]
    pub model: Option<PathBuf>,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on (0 picks a free one).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Require `Authorization: Bearer KEY` on /v1/* (also read from PIXLM_API_KEY).
    #[arg(long)]
    pub api_key: Option<String>,
    /// The model name /v1/models lists (default: the model's directory name). Requests may
    /// also name the directory, or omit the model.
    #[arg(long)]
    pub served_model_name: Option<String>,
    /// Fetch http(s) image URLs given in requests (off by default: only data: URLs are
    /// accepted). Each fetch is limited by --remote-image-max-mb and
    /// --remote-image-timeout-secs, follows at most 3 redirects and needs HTTP 200.
    #[arg(long)]
    pub allow_remote_images: bool,
    /// Largest remote image accepted, in MiB.
    #[arg(long, default_value_t = 20)]
    pub remote_image_max_mb: usize,
    /// Seconds one remote image may take to fetch.
    #[arg(long, default_value_t = 10)]
    pub remote_image_timeout_secs: u64,
    /// Requests allowed to wait for a slot; past this the server answers 429.
    #[arg(long, default_value_t = 64)]
    pub queue_size: usize,
    /// Most sequences decoded together in one batch.
    #[arg(long, default_value_t = 16)]
    pub max_running: usize,
    /// Most prompt tokens prefilled in one step; longer prompts go in chunks over several
    /// steps, an image always whole.
    #[arg(long, default_value_t = 4096)]
    pub prefill_token_budget: usize,
    /// max_tokens for requests that give none (also capped by the context).
    #[arg(long, default_value_t = 1024)]
    pub default_max_tokens: usize,
    /// Largest request body in MiB (413 past it).
    #[arg(long, default_value_t = 32)]
    pub max_body_mb: usize,
    /// Most images in one request.
    #[arg(long)]
    pub max_images: Option<usize>,
    /// Largest accepted image width or height in pixels.
    #[arg(long)]
    pub max_image_side: Option<u32>,
    /// Turn off the response cache for deterministic requests (temperature 0 or a seed).
    #[arg(long)]
    pub no_response_cache: bool,
    /// Response cache size in entries.
    #[arg(long, default_value_t = 1024)]
    pub response_cache_entries: usize,
    /// Response cache size in MiB.
    #[arg(long, default_value_t = 64)]
    pub response_cache_mb: usize,
    /// Turn off the prefix cache (the keys and values of finished requests, reused by a prompt
    /// that starts the same way: the next turn of a chat about the same image skips
    /// re-encoding it).
    #[arg(long)]
    pub no_prefix_cache: bool,
    /// Prefix cache size in MiB of keys and values.
    #[arg(long, default_value_t = 1024)]
    pub prefix_cache_mb: usize,
    /// Keys and values the running requests may hold together, in MiB. A request is admitted
    /// when its prompt and max_tokens fit beside those already running, and waits otherwise;
    /// one that could never fit is refused (400, context_length_exceeded). Default: half the
    /// memory available once the model is loaded.
    #[arg(long)]
    pub kv_cache_mb: Option<usize>,
    /// Seconds running requests may take to finish after ctrl-c or SIGTERM.
    #[arg(long, default_value_t = 30)]
    pub grace_secs: u64,
    #[command(flatten)]
    pub image_budget: ImageBudgetArgs,
    #[command(flatten)]
    pub compute: ComputeArgs,
}

pub fn run(a: ServeArgs) -> Result<i32> {
    let dir = resolve_model(&a.model)?;
    let opts = a.compute.load_options()?;
    let mut engine =
        Engine::load(&dir, &opts).with_context(|| format!("loading model {}", dir.display()))?;
    a.image_budget.apply(&mut engine)?;
    let cfg = ServerConfig {
        host: a.host,
        port: a.port,
        model_path: dir,
        served_name: a.served_model_name,
        api_key: a
            .api_key
            .or_else(|| std::env::var("PIXLM_API_KEY").ok())
            .filter(|k| !k.is_empty()),
        queue_size: a.queue_size,
        max_running: a.max_running,
        prefill_token_budget: a.prefill_token_budget,
        max_body_bytes: a.max_body_mb << 20,
        default_max_tokens: a.default_max_tokens,
        response_cache: !a.no_response_cache,
        cache_entries: a.response_cache_entries,
        cache_bytes: a.response_cache_mb << 20,
        prefix_entries: if a.no_prefix_cache { 0 } else { 64 },
        prefix_bytes: a.prefix_cache_mb << 20,
        kv_cache_bytes: a.kv_cache_mb.map(|m| m << 20),
        remote_images: a
            .allow_remote_images
            .then(|| pixlm_server::remote::RemoteLimits {
                max_bytes: a.remote_image_max_mb << 20,
                timeout: Duration::from_secs(a.remote_image_timeout_secs),
            }),
        grace: Duration::from_secs(a.grace_secs),
        max_images: a.max_images,
        max_image_side: a.max_image_side,
        handle_signals: true,
        ..ServerConfig::default()
    };
    let auth = cfg.api_key.is_some();
    let h = pixlm_server::spawn(engine, cfg)?;
    eprintln!(
        "pixlm serve: listening on http://{} (POST /v1/chat/completions, GET /v1/models, /health, /metrics){}",
        h.addr,
        if auth { "; API key required" } else { "" }
    );
    h.wait()?;
    eprintln!("pixlm serve: stopped");
    Ok(0)
}
