//! The only place where requests meet the engine.
//!
//! Handlers see one narrow door: [`Registry::get`] finds (or loads) a model's engine and
//! [`EngineHandle::schedule`] takes a [`ValidatedRequest`] (only validation can make one) and
//! returns a stream of [`GenEvent`]s. Behind it, per loaded model, one OS thread (`worker`) runs
//! the continuous-batching step loop that `batch` plans, reusing prompt prefixes from `prefix`.
//! Dropping the stream cancels the request within one step.
//!
//! - `batch`: which sequences run in the next step (plain data, unit-tested without threads)
//! - `prefix`: KV caches of finished sequences, reused by prompts that start the same way
//! - `speculate`, `draft_model`: drafts of the next tokens, by prompt lookup or a draft model
//! - `job`: what the engine thread is handed (a request, or work needing the model to itself)
//! - `queue`: admission (bounded, 429 when full) and the handle handlers hold
//! - `worker`: the engine thread: warmup, step loop, sampling, events, status
//! - `thinking_budget`: the `<think>` block closed for a sequence once its budget is spent
//! - `registry`: which models are loaded: on demand, warm set, keep-alive, LRU, memory check

pub mod batch;
pub mod draft_model;
pub mod embedder;
mod job;
pub mod prefix;
pub mod queue;
pub mod registry;
mod speculate;
mod status;
pub mod thinking_budget;
pub mod worker;

use std::time::Duration;

use crate::engine::generate::FinishReason;
use crate::engine::sampler::SamplingParams;

pub use queue::{EngineHandle, ScheduleError};
pub use registry::{Registry, RegistryConfig, RegistryError};
pub use worker::{EngineConfig, EngineStatus};

/// How long a model stays loaded after its last request (Ollama's `keep_alive`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KeepAlive {
    Forever,
    For(Duration),
}

impl KeepAlive {
    /// Ollama's forms: a number of seconds (negative: forever), or a string of one
    /// (`"300"`, `"-1"`) or a duration with a unit (`"90s"`, `"5m"`, `"1h"`, `"500ms"`).
    pub fn parse(value: &serde_json::Value) -> Option<Self> {
        match value {
            serde_json::Value::Number(n) => Self::seconds(n.as_f64()?),
            serde_json::Value::String(s) => Self::parse_str(s),
            _ => None,
        }
    }

    pub fn parse_str(s: &str) -> Option<Self> {
        let s = s.trim();
        if let Ok(n) = s.parse::<f64>() {
            return Self::seconds(n);
        }
        let (number, unit) = s.split_at(s.find(|c: char| c.is_ascii_alphabetic())?);
        let n: f64 = number.trim().parse().ok()?;
        if n < 0.0 {
            return Some(Self::Forever);
        }
        let scale = match unit {
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        Self::seconds(n * scale)
    }

    /// Negative: forever; NaN or infinite: no answer; longer than a `Duration` holds: forever
    /// too (a fuzzed `1e109` once panicked here).
    fn seconds(s: f64) -> Option<Self> {
        if s < 0.0 {
            Some(Self::Forever)
        } else if s.is_finite() {
            Some(
                Duration::try_from_secs_f64(s)
                    .map(Self::For)
                    .unwrap_or(Self::Forever),
            )
        } else {
            None
        }
    }

    /// Seconds, or -1 for forever (how `/api/engine` shows it).
    pub fn as_seconds(&self) -> f64 {
        match self {
            Self::Forever => -1.0,
            Self::For(d) => d.as_secs_f64(),
        }
    }
}

/// A request that passed validation: token ids within the context, sane sampling settings.
#[derive(Debug, Clone)]
pub struct ValidatedRequest {
    pub prompt: Vec<u32>,
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    pub stop: Vec<String>,
    /// The request's own keep-alive for its model (the server's override still wins).
    pub keep_alive: Option<KeepAlive>,
    /// Reuse cached KV for the prompt's prefix (llama.cpp's `cache_prompt`). On the CPU reuse
    /// is bit-exact; on a GPU, attention through cuBLAS/Metal kernels sized by the chunk can
    /// differ in the last bits, so a client wanting exact repeatability there turns it off.
    pub cache_prompt: bool,
    /// The grammar the output must match (structured output, forced tool calls).
    pub constraint: Option<crate::engine::constrain::Constraint>,
    /// Tokens it may reason for before the engine closes its `<think>` block.
    pub thinking_budget: Option<thinking_budget::ThinkingBudget>,
}

impl ValidatedRequest {
    /// Only the server's validation builds these; the fields are checked there.
    pub fn new(
        prompt: Vec<u32>,
        max_tokens: usize,
        sampling: SamplingParams,
        stop: Vec<String>,
        keep_alive: Option<KeepAlive>,
    ) -> Self {
        Self {
            prompt,
            max_tokens,
            sampling,
            stop,
            keep_alive,
            cache_prompt: true,
            constraint: None,
            thinking_budget: None,
        }
    }
}

/// What a scheduled request produces, in order: tokens and text, then exactly one `Done` or
/// `Failed`. Serialized for the semantic response cache, which keeps answers on disk.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub enum GenEvent {
    /// A sampled token with its log-probability and the best alternatives (when asked).
    Token {
        id: u32,
        logprob: Option<f32>,
        top: Vec<(u32, f32)>,
    },
    /// Text that became whole (never part of a stop string).
    Text(String),
    /// A token named by its text, with its log-probability and alternatives: from a remote
    /// engine, whose token ids mean nothing here.
    NamedToken {
        token: String,
        logprob: Option<f32>,
        top: Vec<(String, f32)>,
    },
    /// Tool calls a remote engine read out of its answer itself (sent just before `Done`).
    Calls(Vec<crate::engine::tools::ToolCall>),
    Done(Usage),
    Failed(String),
}

/// The figures of one finished request, counted here once.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Usage {
    pub prompt_tokens: usize,
    /// Prompt tokens whose KV came from the prefix cache.
    pub cached_tokens: usize,
    pub completion_tokens: usize,
    pub finish_reason: FinishReason,
    /// The stop string that ended the answer, when one did.
    pub stop_sequence: Option<String>,
    /// Arrival to the first step that included it.
    pub queue: Duration,
    /// Arrival to the first token (what the client waits).
    pub time_to_first_token: Duration,
    /// First step to the first token.
    pub prefill: Duration,
    /// First token to the last.
    pub decode: Duration,
    /// Seconds between each generated token and the next.
    pub inter_token: Vec<f32>,
}

#[cfg(test)]
impl Usage {
    /// The figures of an answer that stopped normally and took no time (unit tests' events).
    pub fn stopped(prompt_tokens: usize, completion_tokens: usize) -> Self {
        Self {
            prompt_tokens,
            cached_tokens: 0,
            completion_tokens,
            finish_reason: crate::engine::generate::FinishReason::Stop,
            stop_sequence: None,
            queue: Duration::ZERO,
            time_to_first_token: Duration::ZERO,
            prefill: Duration::ZERO,
            decode: Duration::ZERO,
            inter_token: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keep_alive_accepts_ollamas_forms() {
        let secs = |s| Some(KeepAlive::For(Duration::from_secs(s)));
        assert_eq!(KeepAlive::parse(&json!(300)), secs(300));
        assert_eq!(KeepAlive::parse(&json!(0)), secs(0));
        assert_eq!(KeepAlive::parse(&json!(-1)), Some(KeepAlive::Forever));
        assert_eq!(KeepAlive::parse(&json!("-1")), Some(KeepAlive::Forever));
        assert_eq!(KeepAlive::parse(&json!("5m")), secs(300));
        assert_eq!(KeepAlive::parse(&json!("90s")), secs(90));
        assert_eq!(KeepAlive::parse(&json!("1h")), secs(3600));
        assert_eq!(
            KeepAlive::parse(&json!("250ms")),
            Some(KeepAlive::For(Duration::from_millis(250)))
        );
        // Past what a Duration holds: forever, not a panic.
        assert_eq!(KeepAlive::parse(&json!(4.6e109)), Some(KeepAlive::Forever));
        assert_eq!(KeepAlive::parse(&json!("1e300")), Some(KeepAlive::Forever));
        for bad in [
            json!("soon"),
            json!("5 parsecs"),
            json!(true),
            json!(null),
            json!(""),
        ] {
            assert_eq!(KeepAlive::parse(&bad), None, "{bad}");
        }
    }
}
