//! Prometheus counters and gauges, rendered as text at `GET /metrics`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

/// Upper bounds (seconds) of the time-to-first-token histogram buckets.
const TTFT_BUCKETS: [f64; 12] = [
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

#[derive(Default)]
pub struct Metrics {
    /// Chat completion requests by HTTP status.
    requests: Mutex<BTreeMap<u16, u64>>,
    pub prompt_tokens: AtomicU64,
    pub generated_tokens: AtomicU64,
    pub cache_hits: AtomicU64,
    /// Requests whose prompt started with a prefix-cache entry.
    pub prefix_hits: AtomicU64,
    /// Prompt tokens actually run through the model (the rest came from the prefix cache).
    pub prefill_tokens: AtomicU64,
    /// Tokens whose keys and values the prefix cache holds.
    pub prefix_cached_tokens: AtomicU64,
    pub cancelled: AtomicU64,
    pub queue_depth: AtomicU64,
    pub running: AtomicU64,
    pub forward_steps: AtomicU64,
    ttft: Mutex<Histogram>,
}

#[derive(Default)]
struct Histogram {
    counts: [u64; TTFT_BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Metrics {
    pub fn count_request(&self, status: u16) {
        if let Ok(mut m) = self.requests.lock() {
            *m.entry(status).or_insert(0) += 1;
        }
    }

    pub fn observe_ttft(&self, secs: f64) {
        if let Ok(mut h) = self.ttft.lock() {
            for (i, &b) in TTFT_BUCKETS.iter().enumerate() {
                if secs <= b {
                    h.counts[i] += 1;
                }
            }
            h.count += 1;
            h.sum += secs;
        }
    }

    pub fn render(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "# HELP pixlm_requests_total Chat completion requests by HTTP status.\n# TYPE pixlm_requests_total counter"
        );
        if let Ok(m) = self.requests.lock() {
            for (status, n) in m.iter() {
                let _ = writeln!(s, "pixlm_requests_total{{status=\"{status}\"}} {n}");
            }
        }
        let gauges = [
            (
                "pixlm_queue_depth",
                "Requests waiting to be admitted.",
                &self.queue_depth,
            ),
            (
                "pixlm_running_sequences",
                "Sequences in the running batch.",
                &self.running,
            ),
            (
                "pixlm_prefix_cache_tokens",
                "Tokens whose keys and values the prefix cache holds.",
                &self.prefix_cached_tokens,
            ),
        ];
        for (name, help, v) in gauges {
            let _ = writeln!(
                s,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {}",
                v.load(Relaxed)
            );
        }
        let counters = [
            (
                "pixlm_prompt_tokens_total",
                "Prompt tokens of admitted requests.",
                &self.prompt_tokens,
            ),
            (
                "pixlm_generated_tokens_total",
                "Tokens generated.",
                &self.generated_tokens,
            ),
            (
                "pixlm_response_cache_hits_total",
                "Answers served from the response cache.",
                &self.cache_hits,
            ),
            (
                "pixlm_prefill_tokens_total",
                "Prompt tokens run through the model (the rest came from the prefix cache).",
                &self.prefill_tokens,
            ),
            (
                "pixlm_prefix_cache_hits_total",
                "Requests whose prompt reused a prefix-cache entry.",
                &self.prefix_hits,
            ),
            (
                "pixlm_cancelled_total",
                "Sequences cancelled because the client went away.",
                &self.cancelled,
            ),
            (
                "pixlm_forward_steps_total",
                "Packed forward passes run by the scheduler.",
                &self.forward_steps,
            ),
        ];
        for (name, help, v) in counters {
            let _ = writeln!(
                s,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                v.load(Relaxed)
            );
        }
        let name = "pixlm_time_to_first_token_seconds";
        let _ = writeln!(s, "# HELP {name} Time from request arrival to the first generated token.\n# TYPE {name} histogram");
        if let Ok(h) = self.ttft.lock() {
            for (i, b) in TTFT_BUCKETS.iter().enumerate() {
                let _ = writeln!(s, "{name}_bucket{{le=\"{b}\"}} {}", h.counts[i]);
            }
            let _ = writeln!(s, "{name}_bucket{{le=\"+Inf\"}} {}", h.count);
            let _ = writeln!(s, "{name}_sum {}", h.sum);
            let _ = writeln!(s, "{name}_count {}", h.count);
        }
        s
    }
}
