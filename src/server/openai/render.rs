//! OpenAI's answers from the inference path's events: one body, or `chat.completion.chunk` /
//! `text_completion` chunks over SSE, each choice with its index.

use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::{new_id, now};
use crate::infer::accounting::{CacheHit, Totals};
use crate::infer::{Answer, Api, Event, Finish, Run, TokenLogprob};
use crate::scheduler::Usage;
use crate::server::errors::ApiError;
use crate::server::tools::calls_json;

pub fn finish_reason(f: &Finish) -> &'static str {
    match f {
        Finish::Stop | Finish::StopSequence(_) => "stop",
        Finish::Length => "length",
        Finish::ToolCalls => "tool_calls",
    }
}

/// OpenAI's `usage`, with Lantern's word when it came from the response cache.
pub fn usage_json(totals: &Totals) -> Value {
    let mut usage = json!({
        "prompt_tokens": totals.prompt,
        "completion_tokens": totals.completion,
        "total_tokens": totals.prompt + totals.completion,
        "prompt_tokens_details": {"cached_tokens": totals.cached},
    });
    cache_note(&mut usage, totals);
    usage
}

/// Lantern's word on a usage object answered from a cache: `response_cached` is `true` for the
/// same request, `"semantic"` (with `semantic_similarity`) for a question this similar.
pub fn cache_note(usage: &mut Value, totals: &Totals) {
    match totals.from_cache {
        Some(CacheHit::Exact) => usage["response_cached"] = json!(true),
        Some(CacheHit::Semantic { similarity }) => {
            usage["response_cached"] = json!("semantic");
            usage["semantic_similarity"] = json!(similarity);
        }
        None => {}
    }
}

pub fn timings_json(u: &Usage) -> Value {
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
    // No rate for work not done (a response from the cache, a prompt wholly reused).
    let rate = |n: usize, d: std::time::Duration| {
        (n > 0 && !d.is_zero()).then(|| n as f64 / d.as_secs_f64())
    };
    json!({
        "queue_ms": ms(u.queue),
        "ttft_ms": ms(u.time_to_first_token),
        "prompt_ms": ms(u.prefill),
        "prompt_n": u.prompt_tokens,
        "cached_n": u.cached_tokens,
        "prompt_per_second": rate(u.prompt_tokens - u.cached_tokens, u.prefill),
        "predicted_ms": ms(u.decode),
        "predicted_per_second": rate(u.completion_tokens.saturating_sub(1), u.decode),
    })
}

/// Chat logprobs: `{"content": [{token, logprob, bytes, top_logprobs: [...]}]}`.
fn chat_logprobs(tokens: &[TokenLogprob]) -> Value {
    let entry =
        |t: &str, lp: Option<f32>| json!({"token": t, "logprob": lp, "bytes": t.as_bytes()});
    let content: Vec<Value> = tokens
        .iter()
        .map(|t| {
            let mut e = entry(&t.token, t.logprob);
            e["top_logprobs"] = t.top.iter().map(|(a, l)| entry(a, Some(*l))).collect();
            e
        })
        .collect();
    json!({ "content": content })
}

/// Completions logprobs: parallel arrays, as the legacy API has them.
fn completion_logprobs(tokens: &[TokenLogprob]) -> Value {
    let mut offset = 0;
    let (mut texts, mut lps, mut tops, mut offsets) = (vec![], vec![], vec![], vec![]);
    for t in tokens {
        offsets.push(offset);
        offset += t.token.len();
        texts.push(t.token.clone());
        lps.push(t.logprob);
        let alternatives: serde_json::Map<String, Value> =
            t.top.iter().map(|(a, l)| (a.clone(), json!(l))).collect();
        tops.push(Value::Object(alternatives));
    }
    json!({"tokens": texts, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offsets})
}

fn logprobs(run_logprobs: bool, api: Api, tokens: &[TokenLogprob]) -> Value {
    match (run_logprobs, api) {
        (false, _) => Value::Null,
        (true, Api::Completions) => completion_logprobs(tokens),
        (true, _) => chat_logprobs(tokens),
    }
}

fn fingerprint() -> String {
    format!("lantern-{}", env!("CARGO_PKG_VERSION"))
}

/// The whole answer as one body.
pub fn complete(run: &Run, answer: Answer, api: Api) -> Response {
    let chat = api != Api::Completions;
    let choices: Vec<Value> = answer
        .choices
        .into_iter()
        .enumerate()
        .map(|(index, c)| {
            let logprobs = logprobs(run.logprobs, api, &c.logprobs);
            let finish = finish_reason(&c.finish);
            if !chat {
                return json!({"index": index, "text": c.text, "logprobs": logprobs, "finish_reason": finish});
            }
            let mut message = json!({"role": "assistant", "content": c.text});
            if !c.calls.is_empty() {
                message["content"] = if c.text.is_empty() { Value::Null } else { json!(c.text) };
                message["tool_calls"] = calls_json(&c.calls);
            }
            if !c.reasoning.is_empty() {
                message["reasoning_content"] = json!(c.reasoning);
            }
            json!({"index": index, "message": message, "logprobs": logprobs, "finish_reason": finish})
        })
        .collect();
    let mut body = json!({
        "id": new_id(if chat { "chatcmpl" } else { "cmpl" }),
        "object": if chat { "chat.completion" } else { "text_completion" },
        "created": now(),
        "model": run.model,
        "system_fingerprint": fingerprint(),
        "choices": choices,
        "usage": usage_json(&answer.totals),
    });
    if let Some(u) = &answer.usage {
        body["timings"] = timings_json(u);
    }
    Json(body).into_response()
}

/// The deltas of one choice's calls, as OpenAI splits them: per call one with the id and name,
/// one with the arguments.
fn call_deltas(calls: &[crate::engine::tools::ToolCall]) -> Vec<Value> {
    let mut deltas = Vec::new();
    for (k, call) in calls_json(calls)
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        deltas.push(json!({"tool_calls": [{
            "index": k, "id": call["id"], "type": "function",
            "function": {"name": call["function"]["name"], "arguments": ""},
        }]}));
        deltas.push(json!({"tool_calls": [{
            "index": k, "function": {"arguments": call["function"]["arguments"]},
        }]}));
    }
    deltas
}

/// Chunks over SSE: every choice's text as it comes, then its end; usage last when asked.
pub fn stream(mut run: Run, api: Api, include_usage: bool) -> Response {
    let chat = api != Api::Completions;
    let (tx, rx) = mpsc::channel::<Value>(64);
    let (id, created, model, logprobs_on) = (
        new_id(if chat { "chatcmpl" } else { "cmpl" }),
        now(),
        run.model.clone(),
        run.logprobs,
    );
    let chunk = move |choices: Value| {
        json!({
            "id": id,
            "object": if chat { "chat.completion.chunk" } else { "text_completion" },
            "created": created,
            "model": model,
            "system_fingerprint": fingerprint(),
            "choices": choices,
        })
    };
    let piece = move |index: usize, delta: Value, logprobs: Value, finish: Value| {
        if chat {
            json!([{"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}])
        } else {
            json!([{"index": index, "text": delta["content"].as_str().unwrap_or(""), "logprobs": logprobs, "finish_reason": finish}])
        }
    };
    tokio::spawn(async move {
        let mut opened = Vec::new();
        while let Some(event) = run.events.recv().await {
            let mut out = Vec::new();
            let mut open = |index: usize, out: &mut Vec<Value>| {
                if chat && !opened.contains(&index) {
                    opened.push(index);
                    out.push(chunk(piece(
                        index,
                        json!({"role": "assistant", "content": ""}),
                        Value::Null,
                        Value::Null,
                    )));
                }
            };
            match event {
                // llama-server's and vLLM's `reasoning_content`; a prompt completion has none.
                Event::Reasoning { choice, text } => {
                    if chat {
                        open(choice, &mut out);
                        out.push(chunk(piece(
                            choice,
                            json!({"reasoning_content": text}),
                            Value::Null,
                            Value::Null,
                        )));
                    }
                }
                Event::Text {
                    choice,
                    text,
                    logprobs: tokens,
                } => {
                    open(choice, &mut out);
                    let lp = logprobs(logprobs_on, api, &tokens);
                    out.push(chunk(piece(
                        choice,
                        json!({"content": text}),
                        lp,
                        Value::Null,
                    )));
                }
                Event::Done {
                    choice,
                    calls,
                    logprobs: tokens,
                    finish,
                    ..
                } => {
                    open(choice, &mut out);
                    for delta in call_deltas(&calls) {
                        out.push(chunk(piece(choice, delta, Value::Null, Value::Null)));
                    }
                    // The calls' tokens (text that was held, then read as calls).
                    let lp = if tokens.is_empty() {
                        Value::Null
                    } else {
                        logprobs(logprobs_on, api, &tokens)
                    };
                    out.push(chunk(piece(
                        choice,
                        json!({}),
                        lp,
                        json!(finish_reason(&finish)),
                    )));
                }
                Event::End { totals, usage } => {
                    if include_usage {
                        let mut last = chunk(json!([]));
                        last["usage"] = usage_json(&totals);
                        if let Some(u) = &usage {
                            last["timings"] = timings_json(u);
                        }
                        out.push(last);
                    }
                }
                Event::Error(e) => out.push(ApiError::from(e).body()),
            }
            for c in out {
                if tx.send(c).await.is_err() {
                    return;
                }
            }
        }
    });
    crate::server::sse::stream(rx)
}
