//! The response caches on the one path: the key of a deterministic request, the scope of a
//! semantic look-up, and event streams replayed from them or recorded into them. Every API reads
//! and fills the same entries: the same tokens under the same settings give the same answer,
//! whatever wire format asked.

use tokio::sync::mpsc;

use super::backend::Generation;
use super::validate::Validated;
use crate::cache::responses::{KeyBuilder, ResponseKey};
use crate::scheduler::{EngineHandle, GenEvent, Usage};

/// The response-cache key of a deterministic request (greedy, or every choice seeded): the
/// weights and everything that changes the output. None for anything else.
pub(super) fn response_key(engine: &EngineHandle, plan: &Validated) -> Option<ResponseKey> {
    let deterministic = plan
        .requests
        .iter()
        .all(|r| r.sampling.temperature <= 0.0 || r.sampling.seed.is_some());
    if !deterministic {
        return None;
    }
    settings_key(engine, plan, true).map(KeyBuilder::finish)
}

/// The scope a semantic look-up stays within: the weights, every setting, the messages before
/// the question (`context`) and the embedding model; everything but the question itself.
pub(super) fn semantic_scope(
    engine: &EngineHandle,
    plan: &Validated,
    context: &str,
    embedder: &str,
) -> Option<ResponseKey> {
    let k = settings_key(engine, plan, false)?;
    Some(k.text("semantic").text(embedder).text(context).finish())
}

/// The weights and every setting that changes the output; the prompts' tokens when `prompts`.
fn settings_key(engine: &EngineHandle, plan: &Validated, prompts: bool) -> Option<KeyBuilder> {
    let weights = engine.weights_sha256.as_deref()?;
    let optional = |x: Option<u64>| x.map_or(0, |v| v.wrapping_add(1));
    let mut k = KeyBuilder::default()
        .text(weights)
        .text(if plan.chat { "chat" } else { "completions" })
        .number(plan.n as u64)
        .number(optional(plan.logprobs.map(|l| l as u64)))
        .text(plan.grammar_key.as_deref().unwrap_or(""))
        .number(plan.tools.is_some() as u64);
    for r in &plan.requests {
        let p = &r.sampling;
        if prompts {
            k = k.tokens(&r.prompt);
        }
        k = k
            .number(r.max_tokens as u64)
            .float(p.temperature)
            .number(p.top_k as u64)
            .float(p.top_p)
            .float(p.min_p)
            .float(p.repetition_penalty)
            .float(p.presence_penalty)
            .float(p.frequency_penalty)
            .number(p.seed.is_some() as u64)
            .number(p.seed.unwrap_or(0))
            .number(optional(p.top_logprobs.map(|t| t as u64)))
            .number(r.cache_prompt as u64)
            .number(optional(
                r.thinking_budget.as_ref().map(|b| b.tokens as u64),
            ));
        let mut bias: Vec<(u32, u32)> = p
            .logit_bias
            .iter()
            .map(|(t, b)| (*t, b.to_bits()))
            .collect();
        bias.sort_unstable();
        k = k.number(bias.len() as u64);
        for (t, b) in bias {
            k = k.number(t as u64).number(b as u64);
        }
        k = k.number(r.stop.len() as u64);
        for stop in &r.stop {
            k = k.text(stop);
        }
    }
    Some(k)
}

/// The response-cache key of a deterministic request to a remote engine: its address and the
/// exact body sent (model, messages, sampling, seed).
pub(super) fn remote_key(base: &str, body: &serde_json::Value) -> ResponseKey {
    KeyBuilder::default()
        .text("remote")
        .text(base)
        .text(&body.to_string())
        .finish()
}

/// A stored response as event streams again, with the figures of a response that took no time
/// (and this request's prompt size, when it is another question's answer).
pub(super) fn replay(
    choices: &[Vec<GenEvent>],
    prompt_tokens: Option<usize>,
) -> Vec<mpsc::UnboundedReceiver<GenEvent>> {
    choices
        .iter()
        .map(|events| {
            let (tx, rx) = mpsc::unbounded_channel();
            for e in events {
                let e = match e {
                    GenEvent::Done(u) => GenEvent::Done(Usage {
                        prompt_tokens: prompt_tokens.unwrap_or(u.prompt_tokens),
                        cached_tokens: prompt_tokens.unwrap_or(u.prompt_tokens),
                        queue: Default::default(),
                        time_to_first_token: Default::default(),
                        prefill: Default::default(),
                        decode: Default::default(),
                        inter_token: Vec::new(),
                        ..u.clone()
                    }),
                    other => other.clone(),
                };
                let _ = tx.send(e);
            }
            rx
        })
        .collect()
}

/// Where a finished response's events go: the caches that keep it.
pub(super) type Keep = Box<dyn FnOnce(Vec<Vec<GenEvent>>) + Send>;

/// Pass the engine's events through while keeping a copy; when every choice is done, the
/// response goes to `keep`. A client that goes away still cancels the generation at once.
fn recording(
    streams: Vec<mpsc::UnboundedReceiver<GenEvent>>,
    keep: Keep,
) -> Vec<mpsc::UnboundedReceiver<GenEvent>> {
    let n = streams.len();
    let kept = std::sync::Arc::new(std::sync::Mutex::new((
        vec![Vec::new(); n],
        0usize,
        Some(keep),
    )));
    streams
        .into_iter()
        .enumerate()
        .map(|(i, mut events)| {
            let (tx, rx) = mpsc::unbounded_channel();
            let kept = kept.clone();
            tokio::spawn(async move {
                loop {
                    let event = tokio::select! {
                        e = events.recv() => e,
                        _ = tx.closed() => return,
                    };
                    let Some(event) = event else { return };
                    let last = matches!(event, GenEvent::Done(_) | GenEvent::Failed(_));
                    let mut guard = kept.lock().unwrap_or_else(|e| e.into_inner());
                    guard.0[i].push(event.clone());
                    if last {
                        guard.1 += 1;
                        if let (true, Some(keep)) = (guard.1 == n, guard.2.take()) {
                            keep(std::mem::take(&mut guard.0));
                        }
                    }
                    drop(guard);
                    if tx.send(event).is_err() {
                        return;
                    }
                }
            });
            rx
        })
        .collect()
}

/// Fresh streams, recorded as they pass when an answer is to be kept.
pub(super) fn recording_if(streams: Vec<Generation>, keep: Option<Keep>) -> Vec<Generation> {
    match keep {
        Some(keep) => recording(streams, keep),
        None => streams,
    }
}

/// What a run looks the question up by, and keeps a fresh answer under.
pub struct SemanticProbe {
    pub scope: ResponseKey,
    pub vector: Vec<f32>,
    pub threshold: f32,
    pub question: String,
}
