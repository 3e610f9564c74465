//! Prometheus counters and gauges, rendered as text at `GET /metrics`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

/// Upper bounds (seconds) of the time-to-first-token histogram buckets.
const TTFT_BUCKETS: [f64; 12] = [
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
/// Upper bounds (seconds) of the inter-token latency histogram buckets.
const ITL_BUCKETS: [f64; 12] = [
    0.002, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12,
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
    /// Tokens whose keys and values the running sequences' caches hold.
    pub kv_running_tokens: AtomicU64,
    /// Bytes of the KV blocks held by running sequences and the prefix cache (a shared block
    /// once).
    pub kv_bytes: AtomicU64,
    /// KV blocks held by running sequences and the prefix cache (a shared block once).
    pub kv_blocks: AtomicU64,
    /// Tokens of keys and values the running sequences reserve (prompt and longest answer).
    pub kv_reserved_tokens: AtomicU64,
    /// What they may reserve together (`--kv-cache-mb` over the model's bytes per token).
    pub kv_budget_tokens: AtomicU64,
    ttft: Mutex<Histogram>,
    itl: Mutex<Histogram>,
}

/// A cumulative histogram over fixed bucket bounds (Prometheus' `le` buckets).
#[derive(Default)]
struct Histogram {
    counts: [u64; 12],
    count: u64,
    sum: f64,
}

impl Histogram {
    fn observe(&mut self, bounds: &[f64; 12], v: f64) {
        for (c, &b) in self.counts.iter_mut().zip(bounds) {
            if v <= b {
                *c += 1;
            }
        }
        self.count += 1;
        self.sum += v;
    }

    fn render(&self, s: &mut String, name: &str, help: &str, bounds: &[f64; 12]) {
        let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (c, b) in self.counts.iter().zip(bounds) {
            let _ = writeln!(s, "{name}_bucket{{le=\"{b}\"}} {c}");
        }
        let _ = writeln!(s, "{name}_bucket{{le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(s, "{name}_sum {}", self.sum);
        let _ = writeln!(s, "{name}_count {}", self.count);
    }
}

impl Metrics {
    pub fn count_request(&self, status: u16) {
        if let Ok(mut m) = self.requests.lock() {
            *m.entry(status).or_insert(0) += 1;
        }
    }

    pub fn observe_ttft(&self, secs: f64) {
        if let Ok(mut h) = self.ttft.lock() {
            h.observe(&TTFT_BUCKETS, secs);
        }
    }

    /// Time between two tokens of one sequence, as its client sees them.
    pub fn observe_itl(&self, secs: f64) {
        if let Ok(mut h) = self.itl.lock() {
            h.observe(&ITL_BUCKETS, secs);
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
            (
                "pixlm_kv_running_tokens",
                "Tokens whose keys and values the running sequences hold.",
                &self.kv_running_tokens,
            ),
            (
                "pixlm_kv_cache_bytes",
                "Bytes of the KV cache blocks in use (running sequences and the prefix cache; a block they share counts once).",
                &self.kv_bytes,
            ),
            (
                "pixlm_kv_reserved_tokens",
                "Tokens of keys and values the running sequences reserve (prompt and longest answer each).",
                &self.kv_reserved_tokens,
            ),
            (
                "pixlm_kv_budget_tokens",
                "Tokens of keys and values the running sequences may reserve together (--kv-cache-mb).",
                &self.kv_budget_tokens,
            ),
            (
                "pixlm_kv_blocks_in_use",
                "KV cache blocks in use (running sequences and the prefix cache; a block they share counts once). A block holds a prompt chunk, or up to 64 decoded tokens, in every layer.",
                &self.kv_blocks,
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
        if let Ok(h) = self.ttft.lock() {
            h.render(
                &mut s,
                "pixlm_time_to_first_token_seconds",
                "Time from request arrival to the first generated token.",
                &TTFT_BUCKETS,
            );
        }
        if let Ok(h) = self.itl.lock() {
            h.render(
                &mut s,
                "pixlm_inter_token_latency_seconds",
                "Time between consecutive generated tokens of one sequence.",
                &ITL_BUCKETS,
            );
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative_and_rendered() {
        let m = Metrics::default();
        m.observe_itl(0.003);
        m.observe_itl(0.05);
        m.observe_itl(9.0);
        m.observe_ttft(0.2);
        let text = m.render();
        let line = |name: &str| {
            text.lines()
                .find(|l| l.starts_with(name))
                .unwrap_or_else(|| panic!("{name} missing in\n{text}"))
                .to_string()
        };
        assert_eq!(
            line("pixlm_inter_token_latency_seconds_bucket{le=\"0.002\"}"),
            "pixlm_inter_token_latency_seconds_bucket{le=\"0.002\"} 0"
        );
        assert_eq!(
            line("pixlm_inter_token_latency_seconds_bucket{le=\"0.005\"}"),
            "pixlm_inter_token_latency_seconds_bucket{le=\"0.005\"} 1"
        );
        assert_eq!(
            line("pixlm_inter_token_latency_seconds_bucket{le=\"0.08\"}"),
            "pixlm_inter_token_latency_seconds_bucket{le=\"0.08\"} 2"
        );
        assert_eq!(
            line("pixlm_inter_token_latency_seconds_bucket{le=\"5.12\"}"),
            "pixlm_inter_token_latency_seconds_bucket{le=\"5.12\"} 2"
        );
        assert_eq!(
            line("pixlm_inter_token_latency_seconds_bucket{le=\"+Inf\"}"),
            "pixlm_inter_token_latency_seconds_bucket{le=\"+Inf\"} 3"
        );
        assert_eq!(
            line("pixlm_inter_token_latency_seconds_count"),
            "pixlm_inter_token_latency_seconds_count 3"
        );
        assert_eq!(
            line("pixlm_time_to_first_token_seconds_bucket{le=\"0.25\"}"),
            "pixlm_time_to_first_token_seconds_bucket{le=\"0.25\"} 1"
        );
        assert_eq!(
            line("pixlm_time_to_first_token_seconds_bucket{le=\"0.1\"}"),
            "pixlm_time_to_first_token_seconds_bucket{le=\"0.1\"} 0"
        );
        assert!(text.contains("# TYPE pixlm_kv_cache_bytes gauge"));
        assert!(text.contains("# TYPE pixlm_kv_blocks_in_use gauge"));
    }
}
