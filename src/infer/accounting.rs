//! Every finished request is accounted for once, here: charged to its rate-limit key, logged,
//! and recorded by the monitor with the totals its client was told.

use std::sync::Arc;

use super::request::Api;
use crate::scheduler::Usage;

/// Token counts of a response; prompts shared by `n` choices count once, as OpenAI does.
#[derive(Debug, Clone, Default)]
pub struct Totals {
    pub prompt: usize,
    pub cached: usize,
    pub completion: usize,
    /// Served whole from a response cache: still counted, and said so.
    pub from_cache: Option<CacheHit>,
}

/// Which response cache answered a request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum CacheHit {
    /// The same tokens under the same settings (a deterministic request).
    Exact,
    /// A question this similar (cosine of their embeddings), in the same scope.
    Semantic { similarity: f32 },
}

impl CacheHit {
    /// As the `X-Lantern-Response-Cache` header says it.
    pub fn header(&self) -> String {
        match self {
            Self::Exact => "exact".into(),
            Self::Semantic { similarity } => format!("semantic; similarity={similarity:.4}"),
        }
    }
}

impl Totals {
    pub fn add(&mut self, index: usize, n: usize, usage: &Usage) {
        if index.is_multiple_of(n) {
            self.prompt += usage.prompt_tokens;
            self.cached += usage.cached_tokens;
        }
        self.completion += usage.completion_tokens;
    }
}

/// Charges a finished request's tokens to its rate-limit key (the server's limiter).
pub type Charge = Arc<dyn Fn(&str, u64) + Send + Sync>;

/// Told whether a finished request went well and how long it took (ms).
pub type Observer = Arc<dyn Fn(bool, f64) + Send + Sync>;

/// Who a finished request is recorded and charged to, and what it was.
#[derive(Clone)]
pub struct Account {
    pub session: String,
    pub rate_key: String,
    pub charge: Charge,
    pub monitor: crate::monitor::Monitor,
    pub model: String,
    pub api: Api,
    pub started: std::time::Instant,
    /// The model's weight type (or an experiment's variant name).
    pub variant: Option<String>,
    /// The compression applied to the prompt, as `prune@0.5`.
    pub compression: Option<String>,
    pub observer: Option<Observer>,
    /// How routing chose the target, with its reason.
    pub route: Option<String>,
}

/// How a request ended.
pub enum Outcome {
    Ok,
    Error(String),
    /// The client went away.
    Cancelled,
    Timeout,
}

/// Every finished request is recorded once, here, with the totals its client was told: charged
/// to its rate-limit key, logged, and handed to the monitor.
pub fn finish(account: &Account, totals: &Totals, last: Option<&Usage>, outcome: Outcome) {
    (account.charge)(
        &account.rate_key,
        (totals.prompt + totals.completion) as u64,
    );
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
    let (status, outcome, error_kind) = match outcome {
        Outcome::Ok => (200, "ok", None),
        Outcome::Error(kind) => (500, "error", Some(kind)),
        Outcome::Cancelled => (499, "cancelled", None),
        Outcome::Timeout => (504, "timeout", None),
    };
    let api = account.api.name();
    let total_ms = ms(account.started.elapsed());
    if let (Some(observe), false) = (&account.observer, outcome == "cancelled") {
        observe(outcome == "ok", total_ms);
    }
    tracing::info!(
        event = "request.finished",
        session = account.session.as_str(),
        api,
        model = account.model.as_str(),
        outcome,
        prompt_tokens = totals.prompt,
        completion_tokens = totals.completion,
        total_ms,
        "request finished"
    );
    let decode = last.map(|u| u.decode).filter(|d| !d.is_zero());
    if let Some(u) = last {
        account
            .monitor
            .metrics()
            .observe_inter_token(&account.model, &u.inter_token);
    }
    account.monitor.record(crate::store::requests::RequestRow {
        finished_at: crate::clock::unix_seconds(),
        session: account.session.clone(),
        model: account.model.clone(),
        api: api.into(),
        status,
        outcome: outcome.into(),
        error_kind,
        prompt_tokens: totals.prompt as u64,
        cached_tokens: totals.cached as u64,
        completion_tokens: totals.completion as u64,
        queue_ms: last.map(|u| ms(u.queue)),
        ttft_ms: last.map(|u| ms(u.time_to_first_token)),
        total_ms,
        tokens_per_second: last.zip(decode).and_then(|(u, d)| {
            (u.completion_tokens > 1).then(|| (u.completion_tokens - 1) as f64 / d.as_secs_f64())
        }),
        response_cached: totals.from_cache.is_some(),
        variant: account.variant.clone(),
        compression: account.compression.clone(),
        route: account.route.clone(),
    });
}
