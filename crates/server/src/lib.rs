//! pixlm-server: the OpenAI-compatible HTTP API (axum + tokio) in front of one `Engine`.
//!
//! * `POST /v1/chat/completions` — OpenAI chat completions, streamed (server-sent events,
//!   `chat.completion.chunk`, ending with `data: [DONE]`) or not; images as `data:` URLs.
//! * `GET /v1/models`, `GET /health`, `GET /metrics` (Prometheus text).
//!
//! Requests are validated and prepared (template, images, tokens: `Engine::prepare`) in the
//! HTTP handlers before anything is queued; one scheduler thread (`scheduler`) owns the
//! forward passes and batches every running sequence into one packed forward per step. A
//! full waiting queue answers 429 with `Retry-After`. Deterministic requests (temperature 0
//! or a seed) are answered from a bounded LRU response cache when repeated.

pub mod api;
pub mod cache;
pub mod metrics;
pub mod prefix;
pub mod remote;
pub mod scheduler;

use crate::api::{ApiError, ChatRequest};
use crate::cache::{CachedAnswer, ResponseCache};
use crate::metrics::Metrics;
use crate::scheduler::{Event, Job, Queue, Refused, SchedulerConfig, Usage};
use anyhow::{Context, Result};
use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use pixlm_engine::{Engine, FinishReason};
use serde_json::{json, Value};
use std::convert::Infallible;
use std::future::IntoFuture;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::Notify;

/// Everything `pixlm serve` can set.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub host: String,
    /// 0 picks a free port (see `ServerHandle::addr`).
    pub port: u16,
    /// The model path as given (its directory or file name is also accepted as the model).
    pub model_path: PathBuf,
    /// The name `/v1/models` lists; defaults to the model's directory (or file) name.
    pub served_name: Option<String>,
    /// Required as `Authorization: Bearer <key>` on `/v1/*` when set.
    pub api_key: Option<String>,
    pub queue_size: usize,
    pub max_running: usize,
    pub prefill_token_budget: usize,
    pub max_body_bytes: usize,
    /// `max_tokens` when the request gives none (also capped by the room left in the context).
    pub default_max_tokens: usize,
    pub response_cache: bool,
    pub cache_entries: usize,
    pub cache_bytes: usize,
    /// Prefix cache (KV of finished sequences reused by prompts that start the same way):
    /// entries (0 turns it off) and bytes.
    pub prefix_entries: usize,
    pub prefix_bytes: usize,
    /// Keys and values the running sequences may hold together, in bytes: a request is
    /// admitted when its prompt and `max_tokens` fit beside those already running (else it
    /// waits), and one that could never fit is refused. `None`: half the memory available
    /// when the server starts (unbounded where that cannot be read).
    pub kv_cache_bytes: Option<usize>,
    /// Fetch `http(s)` image URLs within these limits (`--allow-remote-images`); `None`
    /// refuses them.
    pub remote_images: Option<remote::RemoteLimits>,
    /// After a shutdown signal: how long running requests may take to finish.
    pub grace: Duration,
    /// Most images in one request (the engine's default when `None`).
    pub max_images: Option<usize>,
    /// Largest accepted image width or height in pixels (the engine's default when `None`).
    pub max_image_side: Option<u32>,
    /// Worker threads of the HTTP runtime.
    pub http_threads: usize,
    /// Listen for ctrl-c and SIGTERM (the CLI); tests call `ServerHandle::shutdown`.
    pub handle_signals: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 8080,
            model_path: PathBuf::new(),
            served_name: None,
            api_key: None,
            queue_size: 64,
            max_running: 16,
            prefill_token_budget: 4096,
            max_body_bytes: 32 << 20,
            default_max_tokens: 1024,
            response_cache: true,
            cache_entries: 1024,
            cache_bytes: 64 << 20,
            prefix_entries: 64,
            prefix_bytes: 1 << 30,
            kv_cache_bytes: None,
            remote_images: None,
            grace: Duration::from_secs(30),
            max_images: None,
            max_image_side: None,
            http_threads: 2,
            handle_signals: false,
        }
    }
}

struct AppState {
    engine: Arc<Engine>,
    cfg: ServerConfig,
    /// `names[0]` is the served name; the others are accepted aliases.
    names: Vec<String>,
    queue: Arc<Queue>,
    metrics: Arc<Metrics>,
    cache: Option<Mutex<ResponseCache>>,
    draining: AtomicBool,
    /// Chat requests being handled (prepared, queued, or streaming).
    inflight: AtomicUsize,
    next_id: AtomicU64,
    started: u64,
    /// Bounds the prompts (templates, image decoding) prepared at once.
    prepare_slots: tokio::sync::Semaphore,
    /// Tokens of keys and values the running sequences may reserve together
    /// (`ServerConfig::kv_cache_bytes` over the model's bytes per token).
    kv_tokens: usize,
}

/// Counts a chat request as in flight until dropped.
struct Inflight(Arc<AppState>);

impl Inflight {
    fn new(st: &Arc<AppState>) -> Self {
        st.inflight.fetch_add(1, Relaxed);
        Self(st.clone())
    }
}

impl Drop for Inflight {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Relaxed);
    }
}

/// A running server: its address, and a way to stop it.
pub struct ServerHandle {
    pub addr: SocketAddr,
    shutdown: Arc<Notify>,
    thread: Option<std::thread::JoinHandle<Result<()>>>,
}

impl ServerHandle {
    /// Starts the graceful shutdown (as SIGTERM does): new requests get 503, running ones
    /// finish within the grace period.
    pub fn shutdown(&self) {
        self.shutdown.notify_one();
    }

    /// Waits until the server has stopped.
    pub fn wait(mut self) -> Result<()> {
        match self.thread.take() {
            Some(t) => t
                .join()
                .map_err(|_| anyhow::anyhow!("the server thread panicked"))?,
            None => Ok(()),
        }
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Binds the listener, starts the scheduler thread and the HTTP runtime, and returns at once.
pub fn spawn(mut engine: Engine, cfg: ServerConfig) -> Result<ServerHandle> {
    if let Some(n) = cfg.max_images {
        engine.max_images = n;
    }
    if let Some(side) = cfg.max_image_side {
        engine.decode_limits.max_width = side;
        engine.decode_limits.max_height = side;
    }
    let listener = std::net::TcpListener::bind((cfg.host.as_str(), cfg.port))
        .with_context(|| format!("binding {}:{}", cfg.host, cfg.port))?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;

    let path_name = cfg
        .model_path
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "pixlm".into());
    let mut names = vec![cfg.served_name.clone().unwrap_or(path_name.clone())];
    for n in [path_name, cfg.model_path.display().to_string()] {
        if !n.is_empty() && !names.contains(&n) {
            names.push(n);
        }
    }
    // One short forward pays one-time costs before the first request, and measures the
    // cache's bytes per token for the KV budget.
    let warm = engine.warm_up().context("warm-up forward")?;
    tracing::info!("warm-up forward took {:.2} s", warm.took.as_secs_f64());
    let kv_tokens = kv_token_budget(warm.kv_bytes_per_token, cfg.kv_cache_bytes);
    let engine = Arc::new(engine);
    let metrics = Arc::new(Metrics::default());
    metrics.kv_budget_tokens.store(
        kv_tokens.try_into().unwrap_or(u64::MAX),
        std::sync::atomic::Ordering::Relaxed,
    );
    let queue = Arc::new(Queue::new(SchedulerConfig {
        queue_size: cfg.queue_size,
        max_running: cfg.max_running.max(1),
        prefill_token_budget: cfg.prefill_token_budget.max(1),
        prefix_entries: cfg.prefix_entries,
        prefix_bytes: cfg.prefix_bytes,
        kv_token_budget: kv_tokens,
    }));
    let sched = scheduler::spawn(engine.clone(), queue.clone(), metrics.clone())?;
    let cache = cfg
        .response_cache
        .then(|| Mutex::new(ResponseCache::new(cfg.cache_entries, cfg.cache_bytes)));
    let state = Arc::new(AppState {
        engine,
        names,
        queue,
        metrics,
        cache,
        draining: AtomicBool::new(false),
        inflight: AtomicUsize::new(0),
        next_id: AtomicU64::new(1),
        started: now_secs(),
        prepare_slots: tokio::sync::Semaphore::new(cfg.http_threads.max(2)),
        kv_tokens,
        cfg,
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(state.cfg.http_threads.max(1))
        .thread_name("pixlm-http")
        .enable_all()
        .build()?;
    let shutdown = Arc::new(Notify::new());
    let notify = shutdown.clone();
    let thread = std::thread::Builder::new()
        .name("pixlm-server".into())
        .spawn(move || {
            let r = runtime.block_on(serve(listener, state.clone(), notify));
            state.queue.close();
            let _ = sched.join();
            r
        })?;
    Ok(ServerHandle {
        addr,
        shutdown,
        thread: Some(thread),
    })
}

/// `spawn`, then blocks until the server has shut down (after ctrl-c or SIGTERM when
/// `cfg.handle_signals`).
pub fn run(engine: Engine, cfg: ServerConfig) -> Result<()> {
    let h = spawn(engine, cfg)?;
    h.wait()
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

async fn serve(
    listener: std::net::TcpListener,
    st: Arc<AppState>,
    notify: Arc<Notify>,
) -> Result<()> {
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let app = router(st.clone());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = stop_rx.await;
            })
            .into_future(),
    );
    let signals = st.cfg.handle_signals;
    tokio::select! {
        _ = notify.notified() => {}
        _ = shutdown_signal(), if signals => {}
    }
    st.draining.store(true, Relaxed);
    tracing::warn!(
        "shutting down: no new requests; waiting up to {:?} for running ones",
        st.cfg.grace
    );
    let deadline = Instant::now() + st.cfg.grace;
    loop {
        let (waiting, running) = st.queue.depth();
        if waiting == 0 && running == 0 && st.inflight.load(Relaxed) == 0 {
            break;
        }
        if Instant::now() >= deadline {
            tracing::warn!(
                "grace period over: ending {running} running and {waiting} waiting requests"
            );
            st.queue.abort();
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = stop_tx.send(());
    match tokio::time::timeout(Duration::from_secs(5), server).await {
        Ok(Ok(r)) => r?,
        Ok(Err(e)) => return Err(anyhow::anyhow!("the HTTP server task failed: {e}")),
        Err(_) => tracing::warn!("connections still open 5 s after shutdown; closing them"),
    }
    Ok(())
}

fn router(st: Arc<AppState>) -> Router {
    let limit = st.cfg.max_body_bytes;
    Router::new()
        .route(
            "/v1/chat/completions",
            post(chat).fallback(|m: Method, u: Uri| method_not_allowed(m, u, "POST")),
        )
        .route("/v1/models", get(models).fallback(only_get))
        .route("/v1/models/{id}", get(model_info).fallback(only_get))
        .route("/health", get(health).fallback(only_get))
        .route("/metrics", get(metrics).fallback(only_get))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(limit))
        .with_state(st)
}

async fn not_found(method: Method, uri: Uri) -> Response {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        format!("no route for {method} {}", uri.path()),
    )
    .with_code("unknown_url")
    .into_response()
}

/// A known path asked with a method it does not take: 405, with the methods it does take
/// (`allow`, as its route says) in `Allow` and an OpenAI-style error body.
async fn method_not_allowed(method: Method, uri: Uri, allow: &'static str) -> Response {
    let mut r = ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "invalid_request_error",
        format!("{} takes {allow}, not {method}", uri.path()),
    )
    .with_code("method_not_allowed")
    .into_response();
    r.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    r
}

/// [`method_not_allowed`] for the `get` routes (which take HEAD too).
async fn only_get(method: Method, uri: Uri) -> Response {
    method_not_allowed(method, uri, "GET, HEAD").await
}

async fn health(State(st): State<Arc<AppState>>) -> Response {
    if st.draining.load(Relaxed) {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({"status": "draining"})),
        )
            .into_response()
    } else {
        let (waiting, running) = st.queue.depth();
        axum::Json(json!({"status": "ok", "waiting": waiting, "running": running})).into_response()
    }
}

async fn metrics(State(st): State<Arc<AppState>>) -> Response {
    let (waiting, running) = st.queue.depth();
    st.metrics.queue_depth.store(waiting as u64, Relaxed);
    st.metrics.running.store(running as u64, Relaxed);
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4"),
        )],
        st.metrics.render(),
    )
        .into_response()
}

fn check_auth(st: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(key) = &st.cfg.api_key else {
        return Ok(());
    };
    let got = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.strip_prefix("Bearer "))
        .map(str::trim);
    match got {
        None => Err(ApiError::unauthorized(
            "missing API key: send it as 'Authorization: Bearer <key>'",
        )),
        Some(k) if constant_time_eq(k.as_bytes(), key.as_bytes()) => Ok(()),
        Some(_) => Err(ApiError::unauthorized("incorrect API key provided")),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Tokens of keys and values `bytes` hold at `per_token` bytes a token (`None`: half the
/// memory available now); unbounded when the memory cannot be read.
fn kv_token_budget(per_token: usize, bytes: Option<usize>) -> usize {
    if per_token == 0 {
        return usize::MAX;
    }
    let Some(bytes) = bytes.or_else(|| available_memory().map(|m| m / 2)) else {
        tracing::warn!("available memory unknown: no KV cache budget (set --kv-cache-mb)");
        return usize::MAX;
    };
    let tokens = bytes / per_token;
    tracing::info!(
        "KV cache budget: {:.0} MiB, {tokens} tokens at {per_token} bytes per token",
        bytes as f64 / (1u64 << 20) as f64
    );
    tokens
}

/// `MemAvailable` of `/proc/meminfo`, in bytes (Linux).
fn available_memory() -> Option<usize> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: usize = line.split_whitespace().nth(1)?.parse().ok()?;
    kb.checked_mul(1024)
}

fn model_json(st: &AppState) -> Value {
    json!({
        "id": st.names[0],
        "object": "model",
        "created": st.started,
        "owned_by": "pixlm",
        "max_model_len": st.engine.context_limit.min(st.kv_tokens),
    })
}

async fn models(State(st): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if let Err(e) = check_auth(&st, &headers) {
        return e.into_response();
    }
    axum::Json(json!({"object": "list", "data": [model_json(&st)]})).into_response()
}

async fn model_info(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Response {
    if let Err(e) = check_auth(&st, &headers) {
        return e.into_response();
    }
    if !st.names.contains(&id) {
        return ApiError::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            format!(
                "the model '{id}' does not exist; this server serves '{}'",
                st.names[0]
            ),
        )
        .with_code("model_not_found")
        .param("model")
        .into_response();
    }
    axum::Json(model_json(&st)).into_response()
}

async fn chat(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let r = match chat_inner(&st, &headers, body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    };
    st.metrics.count_request(r.status().as_u16());
    r
}

fn finish_str(f: FinishReason) -> &'static str {
    match f {
        FinishReason::Stop => "stop",
        FinishReason::Length => "length",
    }
}

fn usage_json(prompt: usize, completion: usize, cached: usize) -> Value {
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
    })
}

/// Identity of one response (id, created, model) shared by its chunks.
struct Ids {
    id: String,
    created: u64,
    model: String,
}

impl Ids {
    /// The whole response for `answers`, one choice each (index in order). The prompt is
    /// counted once; completion tokens are summed over the choices.
    fn completion(&self, answers: &[CachedAnswer], cached: usize) -> Value {
        let choices: Vec<Value> = answers
            .iter()
            .enumerate()
            .map(|(i, a)| {
                json!({
                    "index": i,
                    "message": {"role": "assistant", "content": a.text},
                    "logprobs": null,
                    "finish_reason": a.finish_reason,
                })
            })
            .collect();
        let prompt = answers.first().map_or(0, |a| a.prompt_tokens);
        let completion = answers.iter().map(|a| a.completion_tokens).sum();
        json!({
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": null,
            "choices": choices,
            "usage": usage_json(prompt, completion, cached),
        })
    }

    fn chunk(
        &self,
        index: usize,
        delta: Value,
        finish: Option<&str>,
        include_usage: bool,
    ) -> String {
        let mut v = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": null,
            "choices": [{"index": index, "delta": delta, "logprobs": null, "finish_reason": finish}],
        });
        if include_usage {
            v["usage"] = Value::Null;
        }
        format!("data: {v}\n\n")
    }

    fn usage_chunk(&self, usage: Value) -> String {
        let v = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": null,
            "choices": [],
            "usage": usage,
        });
        format!("data: {v}\n\n")
    }

    /// The closing chunks of a one-choice stream: finish reason, usage when asked, `[DONE]`.
    fn closing(&self, finish: &str, usage: Option<Value>, include_usage: bool) -> Vec<String> {
        let mut out = vec![self.chunk(0, json!({}), Some(finish), include_usage)];
        out.extend(self.ending(usage, include_usage));
        out
    }

    /// The last chunks of a stream, after every choice's finish: usage when asked, `[DONE]`.
    fn ending(&self, usage: Option<Value>, include_usage: bool) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(u) = usage.filter(|_| include_usage) {
            out.push(self.usage_chunk(u));
        }
        out.push("data: [DONE]\n\n".into());
        out
    }
}

fn sse_response(body: Body, cache_hit: bool) -> Response {
    let mut r = Response::new(body);
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if cache_hit {
        h.insert("x-pixlm-cache", HeaderValue::from_static("hit"));
    }
    r
}

fn cache_key(st: &AppState, req: &ChatRequest) -> Option<u128> {
    // One stored answer per key: requests for several choices are not cached.
    if st.cache.is_none() || !req.is_deterministic() || req.n != 1 {
        return None;
    }
    let canonical = json!({
        "model": st.names[0],
        // The parsed messages (remote images already fetched into data: URLs), so that the
        // key is the request's content, however it was spelled.
        "messages": serde_json::to_value(&req.messages).ok()?,
        "sampling": req.sampling,
        "max_tokens": req.max_tokens,
        "stop": req.stop,
    });
    Some(cache::key_of(&canonical.to_string()))
}

fn cache_get(st: &AppState, key: Option<u128>) -> Option<CachedAnswer> {
    let key = key?;
    let mut c = st.cache.as_ref()?.lock().ok()?;
    c.get(key)
}

fn cache_put(st: &AppState, key: Option<u128>, a: CachedAnswer) {
    if let (Some(key), Some(c)) = (key, st.cache.as_ref()) {
        if let Ok(mut c) = c.lock() {
            c.insert(key, a);
        }
    }
}

async fn chat_inner(
    st: &Arc<AppState>,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let arrived = Instant::now();
    // Counted from the start, so a shutdown that begins now waits for this request.
    let guard = Inflight::new(st);
    if st.draining.load(Relaxed) {
        return Err(ApiError::unavailable(
            "the server is shutting down and accepts no new requests",
        ));
    }
    check_auth(st, headers)?;
    let body = body.map_err(|rej| {
        if rej.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "invalid_request_error",
                format!(
                    "the request body is larger than the limit of {} bytes",
                    st.cfg.max_body_bytes
                ),
            )
            .with_code("request_too_large")
        } else {
            ApiError::bad(
                "",
                format!("could not read the request body: {}", rej.body_text()),
            )
        }
    })?;
    let mut req = api::parse_chat_request_with(&body, st.cfg.remote_images.is_some())?;
    if let Some(m) = &req.model {
        if !st.names.contains(m) {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                format!(
                    "the model '{m}' does not exist; this server serves '{}'",
                    st.names[0]
                ),
            )
            .with_code("model_not_found")
            .param("model"));
        }
    }
    let n_images = api::count_images(&req.messages);
    if n_images > st.engine.max_images {
        return Err(ApiError::bad(
            "messages",
            format!(
                "{n_images} images in one request; at most {} are accepted",
                st.engine.max_images
            ),
        )
        .with_code("too_many_images"));
    }
    if let (Some(limits), true) = (&st.cfg.remote_images, remote::has_remote(&req.messages)) {
        // Fetches take the same few slots as prompt preparation, so that a burst of requests
        // with remote images cannot start a thread per image.
        let permit = st
            .prepare_slots
            .acquire()
            .await
            .map_err(|e| ApiError::internal(e.to_string()))?;
        let limits = limits.clone();
        let mut messages = std::mem::take(&mut req.messages);
        req.messages = tokio::task::spawn_blocking(move || {
            remote::resolve(&mut messages, &limits).map(|()| messages)
        })
        .await
        .map_err(|e| ApiError::internal(format!("fetching the images failed: {e}")))??;
        drop(permit);
    }
    let n = st.next_id.fetch_add(1, Relaxed);
    let ids = Ids {
        id: format!("chatcmpl-{:x}{n:06x}", st.started),
        created: now_secs(),
        model: st.names[0].clone(),
    };
    let key = cache_key(st, &req);
    if let Some(hit) = cache_get(st, key) {
        st.metrics.cache_hits.fetch_add(1, Relaxed);
        if req.stream {
            let mut parts = vec![ids.chunk(
                0,
                json!({"role": "assistant", "content": ""}),
                None,
                req.include_usage,
            )];
            if !hit.text.is_empty() {
                parts.push(ids.chunk(0, json!({"content": hit.text}), None, req.include_usage));
            }
            parts.extend(ids.closing(
                hit.finish_reason,
                Some(usage_json(
                    hit.prompt_tokens,
                    hit.completion_tokens,
                    hit.prompt_tokens,
                )),
                req.include_usage,
            ));
            let stream = futures_util::stream::iter(parts.into_iter().map(Ok::<_, Infallible>));
            return Ok(sse_response(Body::from_stream(stream), true));
        }
        let cached = hit.prompt_tokens;
        let mut r = axum::Json(ids.completion(&[hit], cached)).into_response();
        r.headers_mut()
            .insert("x-pixlm-cache", HeaderValue::from_static("hit"));
        return Ok(r);
    }

    // Refuse early when the queue cannot take the request's choices, before spending time on
    // the prompt.
    if st.queue.depth().0 + req.n > st.cfg.queue_size {
        return Err(busy(st));
    }
    let engine = st.engine.clone();
    let messages = req.messages.clone();
    let permit = st
        .prepare_slots
        .acquire()
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let prepared = tokio::task::spawn_blocking(move || engine.prepare(&messages, None))
        .await
        .map_err(|e| ApiError::internal(format!("preparing the prompt failed: {e}")))?
        .map_err(|e| ApiError::from_engine(&e))?;
    drop(permit);
    // The context, or the KV cache budget where that is smaller.
    let (limit, of) = if st.kv_tokens < st.engine.context_limit {
        (
            st.kv_tokens,
            "the server's key/value cache budget (--kv-cache-mb) of",
        )
    } else {
        (st.engine.context_limit, "the context of")
    };
    let room = limit.saturating_sub(prepared.ids.len());
    let max_new = match req.max_tokens {
        Some(m) if m > room => {
            return Err(ApiError::bad(
                "max_tokens",
                format!(
                    "the prompt has {} tokens and max_tokens is {m}: together they exceed \
                     {of} {limit} tokens",
                    prepared.ids.len()
                ),
            )
            .with_code("context_length_exceeded"))
        }
        Some(m) => m,
        None => room.min(st.cfg.default_max_tokens),
    };
    if max_new == 0 {
        return Err(ApiError::bad(
            "messages",
            format!(
                "the prompt has {} tokens and leaves no room for an answer in {of} {limit} tokens",
                prepared.ids.len()
            ),
        )
        .with_code("context_length_exceeded"));
    }
    // One job per choice; their events are merged, tagged with the choice's index. A seeded
    // request gives choice i the seed + i, so that choices differ and the request stays
    // reproducible. Dropping the merged receiver (client gone) ends the forwarders, which
    // drops each job's receiver and cancels it in the scheduler.
    let (mtx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(usize, Event)>();
    for i in 0..req.n {
        let (tx, mut jrx) = tokio::sync::mpsc::unbounded_channel();
        let mut sampling = req.sampling.clone();
        sampling.seed = sampling.seed.map(|s| s.wrapping_add(i as u64));
        let job = Job {
            prepared: prepared.clone(),
            sampling,
            max_new_tokens: max_new,
            stop_strings: req.stop.clone(),
            tx,
            arrived,
        };
        match st.queue.push(job) {
            Ok(()) => {}
            Err(Refused::Full(_)) => return Err(busy(st)),
            Err(Refused::Closed(_)) => {
                return Err(ApiError::unavailable(
                    "the server is shutting down and accepts no new requests",
                ))
            }
        }
        let mtx = mtx.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    ev = jrx.recv() => match ev {
                        Some(ev) => if mtx.send((i, ev)).is_err() { return },
                        None => return,
                    },
                    _ = mtx.closed() => return,
                }
            }
        });
    }
    drop(mtx);
    let n = req.n;

    if !req.stream {
        let mut texts = vec![String::new(); n];
        let mut done: Vec<Option<CachedAnswer>> = vec![None; n];
        let (mut left, mut cached) = (n, 0);
        while let Some((i, ev)) = rx.recv().await {
            match ev {
                Event::Text(t) => texts[i].push_str(&t),
                Event::Done(u) => {
                    cached = cached.max(u.cached_tokens);
                    done[i] = Some(answer(std::mem::take(&mut texts[i]), u));
                    left -= 1;
                    if left == 0 {
                        let answers: Vec<CachedAnswer> = done.into_iter().flatten().collect();
                        if let [a] = answers.as_slice() {
                            cache_put(st, key, a.clone());
                        }
                        drop(guard);
                        return Ok(axum::Json(ids.completion(&answers, cached)).into_response());
                    }
                }
                Event::Error(e) => return Err(ApiError::internal(e)),
            }
        }
        return Err(ApiError::internal("the scheduler stopped"));
    }

    let (btx, brx) = tokio::sync::mpsc::channel::<String>(64);
    let include_usage = req.include_usage;
    let st2 = st.clone();
    tokio::spawn(async move {
        let _guard = guard;
        for i in 0..n {
            let first = ids.chunk(
                i,
                json!({"role": "assistant", "content": ""}),
                None,
                include_usage,
            );
            if btx.send(first).await.is_err() {
                return;
            }
        }
        let mut texts = vec![String::new(); n];
        let (mut left, mut completion, mut cached) = (n, 0, 0);
        loop {
            let ev = tokio::select! {
                ev = rx.recv() => ev,
                _ = btx.closed() => return,
            };
            match ev {
                Some((i, Event::Text(t))) => {
                    let c = ids.chunk(i, json!({"content": t}), None, include_usage);
                    texts[i].push_str(&t);
                    if btx.send(c).await.is_err() {
                        return;
                    }
                }
                Some((i, Event::Done(u))) => {
                    let c = ids.chunk(i, json!({}), Some(finish_str(u.finish)), include_usage);
                    if btx.send(c).await.is_err() {
                        return;
                    }
                    completion += u.completion_tokens;
                    cached = cached.max(u.cached_tokens);
                    if n == 1 {
                        cache_put(&st2, key, answer(std::mem::take(&mut texts[i]), u));
                    }
                    left -= 1;
                    if left == 0 {
                        let usage = usage_json(u.prompt_tokens, completion, cached);
                        for c in ids.ending(Some(usage), include_usage) {
                            if btx.send(c).await.is_err() {
                                return;
                            }
                        }
                        return;
                    }
                }
                Some((_, Event::Error(e))) => {
                    let err = ApiError::internal(e).body();
                    let _ = btx.send(format!("data: {err}\n\n")).await;
                    let _ = btx.send("data: [DONE]\n\n".into()).await;
                    return;
                }
                None => return,
            }
        }
    });
    let stream = futures_util::stream::unfold(brx, |mut r| async move {
        r.recv().await.map(|s| (Ok::<_, Infallible>(s), r))
    });
    Ok(sse_response(Body::from_stream(stream), false))
}

/// 429: the waiting queue is full.
fn busy(st: &AppState) -> ApiError {
    let mut e = ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limit_error",
        format!(
            "the server is busy ({} requests waiting); retry later",
            st.cfg.queue_size
        ),
    )
    .with_code("rate_limit_exceeded");
    e.retry_after_secs = Some(1);
    e
}

fn answer(text: String, u: Usage) -> CachedAnswer {
    CachedAnswer {
        text,
        finish_reason: finish_str(u.finish),
        prompt_tokens: u.prompt_tokens,
        completion_tokens: u.completion_tokens,
    }
}
