//! The response cache on the one path: the key of a deterministic request, and event streams
//! replayed from it or recorded into it. Every API reads and fills the same entries: the same
//! tokens under the same settings give the same answer, whatever wire format asked.

use tokio::sync::mpsc;

use super::validate::Validated;
use crate::cache::responses::{KeyBuilder, Recorded, ResponseKey};
use crate::cache::ResponseCache;
use crate::scheduler::{EngineHandle, GenEvent, Usage};

/// The response-cache key of a deterministic request (greedy, or every choice seeded): the
/// weights and everything that changes the output. None for anything else.
pub(super) fn response_key(engine: &EngineHandle, plan: &Validated) -> Option<ResponseKey> {
    let weights = engine.weights_sha256.as_deref()?;
    let deterministic = plan
        .requests
        .iter()
        .all(|r| r.sampling.temperature <= 0.0 || r.sampling.seed.is_some());
    if !deterministic {
        return None;
    }
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
        k = k
            .tokens(&r.prompt)
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
            .number(r.cache_prompt as u64);
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
    Some(k.finish())
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

/// A stored response as event streams again, with the figures of a response that took no time.
pub(super) fn replay(recorded: &Recorded) -> Vec<mpsc::UnboundedReceiver<GenEvent>> {
    recorded
        .choices
        .iter()
        .map(|events| {
            let (tx, rx) = mpsc::unbounded_channel();
            for e in events {
                let e = match e {
                    GenEvent::Done(u) => GenEvent::Done(Usage {
                        cached_tokens: u.prompt_tokens,
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

/// Pass the engine's events through while keeping a copy; when every choice is done, the
/// response goes into the cache. A client that goes away still cancels the generation at once.
pub(super) fn recording(
    streams: Vec<mpsc::UnboundedReceiver<GenEvent>>,
    key: ResponseKey,
    cache: std::sync::Arc<ResponseCache>,
) -> Vec<mpsc::UnboundedReceiver<GenEvent>> {
    let n = streams.len();
    let kept = std::sync::Arc::new(std::sync::Mutex::new((vec![Vec::new(); n], 0usize)));
    streams
        .into_iter()
        .enumerate()
        .map(|(i, mut events)| {
            let (tx, rx) = mpsc::unbounded_channel();
            let (kept, cache) = (kept.clone(), cache.clone());
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
                        if guard.1 == n {
                            cache.put(key, std::mem::take(&mut guard.0));
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
