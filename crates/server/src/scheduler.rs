//! Continuous batching: one thread owns the forward passes. Each step it admits waiting
//! requests (looking up the longest cached prefix of each prompt), runs ONE
//! `Model::forward` over every running sequence (the next chunk of each prompt still being
//! prefilled, within the step's token budget, and one decode token for the others),
//! samples each sequence with its own `Sampler`, streams text through `StreamDecoder` and
//! `StopMatcher` to the request's channel, and frees finished or cancelled sequences at once.

use crate::metrics::Metrics;
use crate::prefix::{content_key, count_images, is_image, splits_image, PrefixCache};
use pixlm_engine::sampler::Sampler;
use pixlm_engine::stream::{StopMatcher, StreamDecoder};
use pixlm_engine::{Engine, Family, FinishReason, Prepared};
use pixlm_models::{KvCache, LogitsWanted, Model, SeqInput};
use std::collections::VecDeque;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc::UnboundedSender;

/// What the scheduler sends back to a request.
#[derive(Debug)]
pub enum Event {
    /// A piece of the answer (UTF-8 safe, stop strings withheld).
    Text(String),
    Done(Usage),
    Error(String),
}

#[derive(Clone, Copy, Debug)]
pub struct Usage {
    pub finish: FinishReason,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    /// Prompt tokens whose keys and values came from the prefix cache.
    pub cached_tokens: usize,
}

/// A prepared request waiting for admission.
pub struct Job {
    pub prepared: Prepared,
    pub sampling: pixlm_engine::SamplingParams,
    pub max_new_tokens: usize,
    pub stop_strings: Vec<String>,
    pub tx: UnboundedSender<Event>,
    /// When the HTTP request arrived (for time to first token).
    pub arrived: Instant,
}

/// Scheduler limits.
#[derive(Clone, Debug)]
pub struct SchedulerConfig {
    /// Waiting requests beyond this are refused (429).
    pub queue_size: usize,
    /// Most sequences in the running batch.
    pub max_running: usize,
    /// Most prompt tokens prefilled in one step; longer prompts go in chunks over several
    /// steps (an image larger than this still goes whole, in one).
    pub prefill_token_budget: usize,
    /// Prefix cache bounds (entries, bytes); 0 entries turns it off.
    pub prefix_entries: usize,
    pub prefix_bytes: usize,
    /// Tokens of keys and values the running sequences may reserve together (prompt plus
    /// `max_new_tokens` each); a request that does not fit waits for room.
    pub kv_token_budget: usize,
}

#[derive(Default)]
struct QueueState {
    waiting: VecDeque<Job>,
    running: usize,
    /// Drop everything (grace period over).
    abort: bool,
    /// Exit the thread once nothing is left.
    closed: bool,
}

/// The waiting queue, shared between the HTTP handlers and the scheduler thread.
pub struct Queue {
    state: Mutex<QueueState>,
    cv: Condvar,
    cfg: SchedulerConfig,
}

/// Why a job was not queued.
pub enum Refused {
    Full(Box<Job>),
    Closed(Box<Job>),
}

impl Queue {
    pub fn new(cfg: SchedulerConfig) -> Self {
        Self {
            state: Mutex::new(QueueState::default()),
            cv: Condvar::new(),
            cfg,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn push(&self, job: Job) -> Result<(), Refused> {
        let mut s = self.lock();
        if s.closed || s.abort {
            return Err(Refused::Closed(Box::new(job)));
        }
        if s.waiting.len() >= self.cfg.queue_size {
            return Err(Refused::Full(Box::new(job)));
        }
        s.waiting.push_back(job);
        drop(s);
        self.cv.notify_all();
        Ok(())
    }

    /// (waiting, running)
    pub fn depth(&self) -> (usize, usize) {
        let s = self.lock();
        (s.waiting.len(), s.running)
    }

    /// Ends every waiting and running request with an error.
    pub fn abort(&self) {
        self.lock().abort = true;
        self.cv.notify_all();
    }

    /// Lets the thread exit once idle.
    pub fn close(&self) {
        self.lock().closed = true;
        self.cv.notify_all();
    }
}

struct Seq {
    job: Job,
    /// Tokens of the KV budget this sequence holds (see [`reserve`]).
    reserve: usize,
    cache: KvCache,
    /// The prompt's content key (see `prefix::content_key`); generated tokens join it.
    key: Vec<u64>,
    /// Prompt tokens (and whole images) already in `cache`: from the prefix cache, then
    /// from each prefill chunk.
    done_ids: usize,
    done_images: usize,
    /// Prompt tokens the prefix cache gave (usage.prompt_tokens_details.cached_tokens).
    cached: usize,
    last: [u32; 1],
    generated: Vec<u32>,
    /// When the last token was sampled (for the inter-token latency histogram).
    last_token_at: Option<Instant>,
    budget: usize,
    sampler: Sampler,
    decoder: StreamDecoder,
    stops: StopMatcher,
}

enum StepOutcome {
    Running,
    Finished(FinishReason),
    Failed(String),
}

/// Starts the scheduler thread; it owns the forward passes until `Queue::close`.
pub fn spawn(
    engine: Arc<Engine>,
    queue: Arc<Queue>,
    metrics: Arc<Metrics>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("pixlm-scheduler".into())
        .spawn(move || run(&engine, &queue, &metrics))
}

fn run(engine: &Engine, queue: &Queue, metrics: &Metrics) {
    let tokenizer = Arc::new(engine.tokenizer.clone());
    let mut running: Vec<Seq> = Vec::new();
    let mut prefix = PrefixCache::new(queue.cfg.prefix_entries, queue.cfg.prefix_bytes);
    loop {
        // Admission, under the queue lock.
        {
            let mut s = queue.lock();
            loop {
                if s.abort {
                    for j in s.waiting.drain(..) {
                        let _ =
                            j.tx.send(Event::Error("the server is shutting down".into()));
                    }
                    for q in running.drain(..) {
                        let _ = q.job.tx.send(Event::Error(
                            "the server shut down before this answer was finished".into(),
                        ));
                    }
                }
                if !running.is_empty() || !s.waiting.is_empty() {
                    break;
                }
                s.running = 0;
                metrics.running.store(0, Relaxed);
                metrics.queue_depth.store(0, Relaxed);
                store_kv_gauges(metrics, &running, &prefix);
                if s.closed {
                    return;
                }
                s = queue
                    .cv
                    .wait_timeout(s, Duration::from_millis(250))
                    .map(|(g, _)| g)
                    .unwrap_or_else(|p| p.into_inner().0);
            }
            while running.len() < queue.cfg.max_running {
                let Some(front) = s.waiting.front() else {
                    break;
                };
                if front.tx.is_closed() {
                    s.waiting.pop_front();
                    metrics.cancelled.fetch_add(1, Relaxed);
                    continue;
                }
                // Room in the KV budget for its whole answer, or it waits (first come, first
                // served). Alone it is always admitted: the HTTP layer refused any request
                // larger than the whole budget.
                let reserved: usize = running.iter().map(|q| q.reserve).sum();
                if !running.is_empty()
                    && reserved.saturating_add(reserve(engine, front)) > queue.cfg.kv_token_budget
                {
                    break;
                }
                let Some(job) = s.waiting.pop_front() else {
                    break;
                };
                if let Some(seq) = new_seq(engine, &tokenizer, job, &mut prefix, metrics) {
                    running.push(seq);
                }
            }
            s.running = running.len();
            metrics.running.store(running.len() as u64, Relaxed);
            metrics.queue_depth.store(s.waiting.len() as u64, Relaxed);
        }

        // Clients that went away free their sequence now.
        let before = running.len();
        running.retain(|q| !q.job.tx.is_closed());
        metrics
            .cancelled
            .fetch_add((before - running.len()) as u64, Relaxed);
        if running.is_empty() {
            continue;
        }

        // What each sequence feeds this step: one decode token, or the next chunk of its
        // prompt. Chunks share `prefill_token_budget` in arrival order and never split an
        // image (an image larger than the budget goes whole, in a chunk of its own).
        let mut budget = queue.cfg.prefill_token_budget;
        let chunks: Vec<Option<Chunk>> = running
            .iter()
            .map(|q| {
                if q.prefilled() {
                    return None;
                }
                let c = next_chunk(&q.key, q.done_ids, budget)?;
                budget = budget.saturating_sub(c.end - q.done_ids);
                Some(c)
            })
            .collect();

        // A panic in the model must not take the scheduler (and every later request) down.
        let mut slot = vec![None; running.len()];
        let logits = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let mut inputs: Vec<SeqInput> = Vec::with_capacity(running.len());
            for (i, q) in running.iter_mut().enumerate() {
                let prefilled = q.prefilled();
                let Seq {
                    job,
                    cache,
                    last,
                    done_ids,
                    done_images,
                    ..
                } = q;
                if prefilled {
                    slot[i] = Some(inputs.len());
                    inputs.push(SeqInput {
                        ids: &last[..],
                        images: &[],
                        decode: true,
                        cache,
                        logits: LogitsWanted::Last,
                    });
                } else if let Some(c) = &chunks[i] {
                    slot[i] = Some(inputs.len());
                    let whole = c.end == job.prepared.ids.len();
                    inputs.push(SeqInput {
                        ids: &job.prepared.ids[*done_ids..c.end],
                        images: &job.prepared.images[*done_images..*done_images + c.images],
                        decode: false,
                        cache,
                        logits: if whole {
                            LogitsWanted::Last
                        } else {
                            LogitsWanted::None
                        },
                    });
                }
            }
            engine.model.forward(&mut inputs, None)
        }))
        .unwrap_or_else(|_| {
            Err(pixlm_models::ModelError::Input(
                "internal error: the forward pass panicked".into(),
            ))
        });
        metrics.forward_steps.fetch_add(1, Relaxed);
        let logits = match logits {
            Ok(l) => l,
            Err(e) => {
                tracing::error!("forward failed: {e}");
                for q in running.drain(..) {
                    let _ = q.job.tx.send(Event::Error(format!("model error: {e}")));
                }
                continue;
            }
        };

        let mut outcomes = Vec::with_capacity(running.len());
        for (i, q) in running.iter_mut().enumerate() {
            let Some(b) = slot[i] else {
                // No room in this step's prefill budget: next step.
                outcomes.push(StepOutcome::Running);
                continue;
            };
            if let Some(c) = &chunks[i] {
                metrics
                    .prefill_tokens
                    .fetch_add((c.end - q.done_ids) as u64, Relaxed);
                q.done_ids = c.end;
                q.done_images += c.images;
                if q.done_ids < q.job.prepared.ids.len() {
                    outcomes.push(StepOutcome::Running);
                    continue;
                }
                metrics
                    .prompt_tokens
                    .fetch_add(q.job.prepared.ids.len() as u64, Relaxed);
                // The image patches are in the cache now.
                q.job.prepared.images = Vec::new();
            }
            let row = match logits.get(b).and_then(|l| l.as_ref()) {
                Some(t) => t.squeeze(0).and_then(|t| t.to_vec1::<f32>()),
                None => {
                    outcomes.push(StepOutcome::Failed("the model returned no logits".into()));
                    continue;
                }
            };
            let outcome = match row {
                Ok(row) => std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    step(engine, q, &row, metrics)
                }))
                .unwrap_or_else(|_| StepOutcome::Failed("internal error while sampling".into())),
                Err(e) => StepOutcome::Failed(format!("model error: {e}")),
            };
            outcomes.push(outcome);
        }
        let mut idx = 0;
        running.retain_mut(|q| {
            let o = &outcomes[idx];
            idx += 1;
            match o {
                StepOutcome::Running => true,
                StepOutcome::Finished(f) => {
                    let _ = q.job.tx.send(Event::Done(Usage {
                        finish: *f,
                        prompt_tokens: q.job.prepared.ids.len(),
                        completion_tokens: q.generated.len(),
                        cached_tokens: q.cached,
                    }));
                    // The cache holds the prompt and every generated token but the last
                    // (sampled, never fed back).
                    let fed = q.generated.len().saturating_sub(1);
                    let mut key = std::mem::take(&mut q.key);
                    key.extend(q.generated[..fed].iter().map(|&t| t as u64));
                    prefix.insert(key, std::mem::take(&mut q.cache));
                    false
                }
                StepOutcome::Failed(e) => {
                    let _ = q.job.tx.send(Event::Error(e.clone()));
                    false
                }
            }
        });
        // After the finished sequences left (their caches went to the prefix cache).
        store_kv_gauges(metrics, &running, &prefix);
    }
}

/// Publishes what the running sequences and the prefix cache hold; a KV block several of
/// them share (a prefix reused by a running sequence) counts once.
fn store_kv_gauges(metrics: &Metrics, running: &[Seq], prefix: &PrefixCache) {
    let tokens: usize = running.iter().map(|q| q.cache.len()).sum();
    // The prefix cache keeps its block set; only the running sequences' blocks are looked at
    // each step, those it does not hold (a reused prefix is its blocks) counted on top.
    let held = prefix.blocks();
    let own = crate::prefix::block_map(running.iter().map(|q| &q.cache));
    let mine = own.iter().filter(|(id, _)| !held.contains_key(id));
    let (blocks, bytes) = mine.fold((held.len(), prefix.bytes()), |(n, b), (_, x)| {
        (n + 1, b + x)
    });
    metrics.kv_running_tokens.store(tokens as u64, Relaxed);
    let reserved: usize = running.iter().map(|q| q.reserve).sum();
    metrics.kv_reserved_tokens.store(reserved as u64, Relaxed);
    metrics.kv_blocks.store(blocks as u64, Relaxed);
    metrics.kv_bytes.store(bytes as u64, Relaxed);
    metrics
        .prefix_cached_tokens
        .store(prefix.tokens() as u64, Relaxed);
}

/// The part of a prompt one step prefills: up to token `end`, holding `images` whole images.
struct Chunk {
    end: usize,
    images: usize,
}

/// The next chunk of the prompt whose content key is `key`, `done` tokens of it already in the
/// cache, within `budget` tokens; an image is never split: a chunk stops before an image that
/// does not fit, and one that starts with an image takes it whole even past the budget.
/// `None` when the budget is spent.
fn next_chunk(key: &[u64], done: usize, budget: usize) -> Option<Chunk> {
    let n = key.len();
    if budget == 0 || done >= n {
        return None;
    }
    let mut end = (done + budget).min(n);
    if splits_image(key, end) {
        let mut start = end;
        while start > done && is_image(key[start - 1]) {
            start -= 1;
        }
        if start > done {
            // Stop before the image.
            end = start;
        } else {
            // The chunk starts with the image: all of it.
            while splits_image(key, end) {
                end += 1;
            }
        }
    }
    Some(Chunk {
        end,
        images: count_images(&key[done..end]),
    })
}

/// Tokens of keys and values `job` may come to hold: its prompt and its longest answer.
fn reserve(engine: &Engine, job: &Job) -> usize {
    let prompt = job.prepared.ids.len();
    (prompt + job.max_new_tokens).min(engine.context_limit.max(prompt))
}

impl Seq {
    /// Whether the whole prompt is in the cache (the sequence decodes).
    fn prefilled(&self) -> bool {
        self.done_ids == self.job.prepared.ids.len()
    }
}

fn new_seq(
    engine: &Engine,
    tokenizer: &Arc<tokenizers::Tokenizer>,
    job: Job,
    prefix: &mut PrefixCache,
    metrics: &Metrics,
) -> Option<Seq> {
    let sampler = match Sampler::new(job.sampling.clone()) {
        Ok(s) => s,
        Err(e) => {
            let _ = job.tx.send(Event::Error(e.to_string()));
            return None;
        }
    };
    let budget = job
        .max_new_tokens
        .min(engine.context_limit.saturating_sub(job.prepared.ids.len()));
    if budget == 0 {
        let _ = job.tx.send(Event::Error(
            "no room left in the context for an answer".into(),
        ));
        return None;
    }
    let (img_context, merge) = match (&engine.family, &engine.model) {
        (Family::Neo(sp), Model::Neo(m)) => (Some(sp.img_context), m.merge()),
        _ => (None, 1),
    };
    let key = content_key(&job.prepared.ids, &job.prepared.images, img_context, merge);
    let (cache, skip_ids, skip_images) = match prefix.lookup(&key, &job.prepared.ids) {
        Some(hit) => {
            metrics.prefix_hits.fetch_add(1, Relaxed);
            (hit.cache, hit.len, hit.images)
        }
        None => (KvCache::new(), 0, 0),
    };
    Some(Seq {
        reserve: reserve(engine, &job),
        cache,
        key,
        done_ids: skip_ids,
        done_images: skip_images,
        cached: skip_ids,
        last: [0],
        generated: Vec::new(),
        last_token_at: None,
        budget,
        sampler,
        decoder: StreamDecoder::from_shared(tokenizer.clone(), true),
        stops: StopMatcher::new(job.stop_strings.clone()),
        job,
    })
}

/// Samples one token for `q` from its logits row and streams its text.
fn step(engine: &Engine, q: &mut Seq, row: &[f32], metrics: &Metrics) -> StepOutcome {
    let next = q.sampler.sample(row, &q.generated);
    let now = Instant::now();
    match q.last_token_at {
        None => metrics.observe_ttft(now.duration_since(q.job.arrived).as_secs_f64()),
        Some(t) => metrics.observe_itl(now.duration_since(t).as_secs_f64()),
    }
    q.last_token_at = Some(now);
    q.generated.push(next);
    q.last = [next];
    metrics.generated_tokens.fetch_add(1, Relaxed);
    let finish = if engine.stop_ids.contains(&next) {
        Some(FinishReason::Stop)
    } else {
        let piece = match q.decoder.push(next) {
            Ok(p) => p,
            Err(e) => return StepOutcome::Failed(e.to_string()),
        };
        let out = q.stops.push(&piece);
        let stopped = out.is_stop();
        send_text(q, out.text);
        if stopped {
            Some(FinishReason::Stop)
        } else if q.generated.len() >= q.budget {
            Some(FinishReason::Length)
        } else {
            None
        }
    };
    match finish {
        None => StepOutcome::Running,
        Some(f) => {
            if !q.stops.is_stopped() {
                let rest = q.decoder.finish();
                let out = q.stops.push(&rest);
                let stopped = out.is_stop();
                send_text(q, out.text);
                if !stopped {
                    let tail = q.stops.finish().text;
                    send_text(q, tail);
                }
            }
            StepOutcome::Finished(f)
        }
    }
}

fn send_text(q: &Seq, text: String) {
    if !text.is_empty() {
        let _ = q.job.tx.send(Event::Text(text));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(n: usize) -> (Job, tokio::sync::mpsc::UnboundedReceiver<Event>) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let job = Job {
            prepared: Prepared {
                prompt: String::new(),
                ids: vec![1; n],
                images: Vec::new(),
                image_info: Vec::new(),
            },
            sampling: pixlm_engine::SamplingParams::default(),
            max_new_tokens: 4,
            stop_strings: Vec::new(),
            tx,
            arrived: Instant::now(),
        };
        (job, rx)
    }

    #[test]
    fn chunks_respect_the_budget_and_never_split_an_image() {
        const I: u64 = 1 << 63;
        // text 0-2, image 3-8 (6 tokens), text 9-11, image 12-13, text 14
        let key: Vec<u64> = (0..15u64)
            .map(|i| {
                if (3..9).contains(&i) || (12..14).contains(&i) {
                    I | i
                } else {
                    i
                }
            })
            .collect();
        let chunks = |budget: usize| {
            let mut out = Vec::new();
            let mut done = 0;
            while let Some(c) = next_chunk(&key, done, budget) {
                out.push((c.end, c.images));
                done = c.end;
            }
            out
        };
        // Budget 4: text stops before the image, the image (6 > 4) goes whole.
        assert_eq!(chunks(4), vec![(3, 0), (9, 1), (12, 0), (15, 1)]);
        assert_eq!(chunks(10), vec![(10, 1), (15, 1)]);
        assert_eq!(chunks(100), vec![(15, 2)]);
        assert_eq!(
            chunks(1),
            (1..=3)
                .map(|e| (e, 0))
                .chain([(9, 1), (10, 0), (11, 0), (12, 0), (14, 1), (15, 0)])
                .collect::<Vec<_>>()
        );
        assert!(next_chunk(&key, 0, 0).is_none());
        assert!(next_chunk(&key, 15, 4).is_none());
    }

    #[test]
    fn queue_is_bounded_and_closes() {
        let q = Queue::new(SchedulerConfig {
            queue_size: 2,
            max_running: 1,
            prefill_token_budget: 8,
            prefix_entries: 0,
            prefix_bytes: 0,
            kv_token_budget: usize::MAX,
        });
        let mut rxs = Vec::new();
        for _ in 0..2 {
            let (j, rx) = job(3);
            assert!(q.push(j).is_ok());
            rxs.push(rx);
        }
        let (j, _rx) = job(3);
        assert!(matches!(q.push(j), Err(Refused::Full(_))));
        assert_eq!(q.depth(), (2, 0));
        q.abort();
        let (j, _rx) = job(3);
        assert!(matches!(q.push(j), Err(Refused::Closed(_))));
    }
}
