//! `/metrics` for Prometheus, through the `prometheus` crate: counters and histograms fed once
//! per recorded request (by the monitor, so they agree with the request log), and gauges of the
//! engines and caches set when Prometheus scrapes.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use crate::store::requests::RequestRow;

/// Latency buckets in seconds: 5 ms to 2 minutes.
const SECONDS: [f64; 16] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 90.0, 120.0,
];
/// Per-token buckets in seconds: 0.5 ms to 1 s.
const PER_TOKEN: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.035, 0.05, 0.1, 0.25, 0.5, 1.0,
];

pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    prompt_tokens: IntCounterVec,
    cached_prompt_tokens: IntCounterVec,
    generated_tokens: IntCounterVec,
    ttft: HistogramVec,
    duration: HistogramVec,
    queue: HistogramVec,
    per_token: HistogramVec,
    inter_token: HistogramVec,
    pub running: IntGaugeVec,
    pub waiting: IntGaugeVec,
    pub kv_tokens: IntGaugeVec,
    pub kv_budget_tokens: IntGaugeVec,
    pub loaded: IntGaugeVec,
    cache_hits: IntCounterVec,
    cache_misses: IntCounterVec,
    fallbacks: IntCounterVec,
    circuit_opens: IntCounterVec,
    /// The semantic cache's best match per look-up (it observes them itself).
    pub semantic_similarity: prometheus::Histogram,
}

fn counter(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(c.clone())).expect("registered once");
    c
}

fn gauge(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(g.clone())).expect("registered once");
    g
}

fn histogram(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: &[f64],
) -> HistogramVec {
    let h = HistogramVec::new(
        HistogramOpts::new(name, help).buckets(buckets.to_vec()),
        labels,
    )
    .expect("valid metric");
    r.register(Box::new(h.clone())).expect("registered once");
    h
}

/// Raise a counter to an absolute value read elsewhere (caches keep their own counts).
fn counter_to(c: &IntCounter, value: u64) {
    let now = c.get();
    if value > now {
        c.inc_by(value - now);
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let r = Registry::new_custom(Some("lantern".into()), None).expect("valid prefix");
        Self {
            requests: counter(
                &r,
                "requests_total",
                "Finished requests.",
                &["model", "api", "outcome", "status"],
            ),
            prompt_tokens: counter(
                &r,
                "prompt_tokens_total",
                "Prompt tokens of finished requests.",
                &["model"],
            ),
            cached_prompt_tokens: counter(
                &r,
                "cached_prompt_tokens_total",
                "Prompt tokens served from the prefix cache.",
                &["model"],
            ),
            generated_tokens: counter(
                &r,
                "generated_tokens_total",
                "Generated tokens.",
                &["model"],
            ),
            ttft: histogram(
                &r,
                "time_to_first_token_seconds",
                "Arrival to the first token.",
                &["model"],
                &SECONDS,
            ),
            duration: histogram(
                &r,
                "request_duration_seconds",
                "Arrival to the last byte.",
                &["model", "api"],
                &SECONDS,
            ),
            queue: histogram(
                &r,
                "queue_time_seconds",
                "Arrival to the first engine step.",
                &["model"],
                &SECONDS,
            ),
            per_token: histogram(
                &r,
                "time_per_output_token_seconds",
                "Mean time between generated tokens, per request.",
                &["model"],
                &PER_TOKEN,
            ),
            inter_token: histogram(
                &r,
                "inter_token_latency_seconds",
                "Time between each generated token and the next, every token.",
                &["model"],
                &PER_TOKEN,
            ),
            running: gauge(
                &r,
                "running_sequences",
                "Sequences in the batch.",
                &["model"],
            ),
            waiting: gauge(
                &r,
                "waiting_sequences",
                "Sequences waiting to start.",
                &["model"],
            ),
            kv_tokens: gauge(
                &r,
                "kv_cache_tokens",
                "KV cache positions in use by running sequences.",
                &["model"],
            ),
            kv_budget_tokens: gauge(
                &r,
                "kv_cache_budget_tokens",
                "KV cache positions the budget allows.",
                &["model"],
            ),
            loaded: gauge(
                &r,
                "model_loaded",
                "1 for each loaded model.",
                &["model", "kind"],
            ),
            cache_hits: counter(&r, "cache_hits_total", "Cache hits.", &["cache", "level"]),
            cache_misses: counter(&r, "cache_misses_total", "Cache misses.", &["cache"]),
            fallbacks: counter(
                &r,
                "fallbacks_total",
                "Requests a fallback chain answered from a later target than its first.",
                &["chain", "target"],
            ),
            circuit_opens: counter(
                &r,
                "circuit_opens_total",
                "Times a target's circuit breaker opened after failures.",
                &["target"],
            ),
            semantic_similarity: histogram(
                &r,
                "semantic_cache_similarity",
                "Similarity of the nearest kept question, per semantic cache look-up.",
                &[],
                &crate::cache::semantic::SIMILARITY_EDGES,
            )
            .with_label_values(&[] as &[&str]),
            registry: r,
        }
    }
}

impl Metrics {
    /// One finished request.
    pub fn observe(&self, row: &RequestRow) {
        let model = row.model.as_str();
        let status = row.status.to_string();
        self.requests
            .with_label_values(&[
                model,
                row.api.as_str(),
                row.outcome.as_str(),
                status.as_str(),
            ])
            .inc();
        self.prompt_tokens
            .with_label_values(&[model])
            .inc_by(row.prompt_tokens);
        self.cached_prompt_tokens
            .with_label_values(&[model])
            .inc_by(row.cached_tokens);
        self.generated_tokens
            .with_label_values(&[model])
            .inc_by(row.completion_tokens);
        self.duration
            .with_label_values(&[model, row.api.as_str()])
            .observe(row.total_ms / 1e3);
        if let Some(t) = row.ttft_ms {
            self.ttft.with_label_values(&[model]).observe(t / 1e3);
        }
        if let Some(q) = row.queue_ms {
            self.queue.with_label_values(&[model]).observe(q / 1e3);
        }
        if let Some(tps) = row.tokens_per_second.filter(|t| *t > 0.0) {
            self.per_token
                .with_label_values(&[model])
                .observe(1.0 / tps);
        }
    }

    /// The gaps between one request's successive tokens, as the engine sent them.
    pub fn observe_inter_token(&self, model: &str, gaps: &[f32]) {
        let h = self.inter_token.with_label_values(&[model]);
        for &g in gaps {
            h.observe(g as f64);
        }
    }

    /// A chain answered from `target`, not its first.
    pub fn fallback(&self, chain: &str, target: &str) {
        self.fallbacks.with_label_values(&[chain, target]).inc();
    }

    /// `target`'s circuit opened.
    pub fn circuit_opened(&self, target: &str) {
        self.circuit_opens.with_label_values(&[target]).inc();
    }

    /// A cache's own counts, as counters.
    pub fn cache_counts(&self, cache: &str, hits_by_level: &[(&str, u64)], misses: u64) {
        for (level, hits) in hits_by_level {
            counter_to(&self.cache_hits.with_label_values(&[cache, level]), *hits);
        }
        counter_to(&self.cache_misses.with_label_values(&[cache]), misses);
    }

    /// Gauges of models no longer loaded must not linger: cleared before each scrape sets them.
    pub fn reset_gauges(&self) {
        for g in [
            &self.running,
            &self.waiting,
            &self.kv_tokens,
            &self.kv_budget_tokens,
            &self.loaded,
        ] {
            g.reset();
        }
    }

    /// Prometheus' text format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding of gathered metrics");
        String::from_utf8(out).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_become_counters_and_histograms() {
        let m = Metrics::default();
        let row = RequestRow {
            finished_at: 0.0,
            session: "s".into(),
            model: "smollm2".into(),
            api: "chat".into(),
            status: 200,
            outcome: "ok".into(),
            error_kind: None,
            prompt_tokens: 12,
            cached_tokens: 4,
            completion_tokens: 9,
            queue_ms: Some(2.0),
            ttft_ms: Some(40.0),
            total_ms: 120.0,
            tokens_per_second: Some(100.0),
            response_cached: false,
            variant: None,
            compression: None,
            route: None,
        };
        m.observe(&row);
        m.observe(&row);
        m.cache_counts("embeddings", &[("memory", 3)], 1);
        m.cache_counts("embeddings", &[("memory", 5)], 1);
        let text = m.render();
        for line in [
            "lantern_requests_total{api=\"chat\",model=\"smollm2\",outcome=\"ok\",status=\"200\"} 2",
            "lantern_prompt_tokens_total{model=\"smollm2\"} 24",
            "lantern_generated_tokens_total{model=\"smollm2\"} 18",
            "lantern_time_to_first_token_seconds_bucket{model=\"smollm2\",le=\"0.05\"} 2",
            "lantern_time_to_first_token_seconds_count{model=\"smollm2\"} 2",
            "lantern_cache_hits_total{cache=\"embeddings\",level=\"memory\"} 5",
            "lantern_cache_misses_total{cache=\"embeddings\"} 1",
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
        assert!(text.contains("# TYPE lantern_request_duration_seconds histogram"));
    }
}
