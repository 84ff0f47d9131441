//! `/v1/chat/completions`, `/v1/completions`: wire shapes exactly as OpenAI's, and
//! Lantern's timings in an extra `timings` field that SDKs ignore.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::accounting::{finish, Account, Api, Outcome, Totals};
use super::body::parse_body;
use super::errors::ApiError;
use super::response_cache::{recording, replay, response_key, CacheUse};
use super::validate::{validate_chat, validate_completion, ChatRequest, CompletionRequest, Plan};
use super::{sse, AppState};
use crate::engine::generate::FinishReason;
use crate::scheduler::{EngineHandle, GenEvent, RegistryError, ScheduleError, Usage};

pub(super) fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub(super) fn new_id(prefix: &str) -> String {
    format!(
        "{prefix}-{:016x}{:08x}",
        rand::random::<u64>(),
        rand::random::<u32>()
    )
}

/// A chat answer's message and finish reason: calls read out of the text when the request
/// gave tools.
pub(super) fn chat_message(
    text: String,
    tools: Option<&super::tools::ToolsRequest>,
    finish: FinishReason,
) -> (Value, &'static str) {
    if let Some(t) = tools {
        let parsed = crate::engine::tools::parse(&text, &t.specs);
        if !parsed.calls.is_empty() {
            let content = (!parsed.content.is_empty()).then_some(parsed.content);
            return (
                json!({"role": "assistant", "content": content, "tool_calls": super::tools::calls_json(&parsed.calls)}),
                "tool_calls",
            );
        }
    }
    (
        json!({"role": "assistant", "content": text}),
        finish_reason(finish),
    )
}

fn finish_reason(f: FinishReason) -> &'static str {
    match f {
        FinishReason::Stop => "stop",
        FinishReason::Length | FinishReason::Cancelled => "length",
    }
}

fn timings_json(u: &Usage) -> Value {
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

/// A registry failure as the client sees it.
pub fn registry_error(e: RegistryError) -> ApiError {
    match e {
        RegistryError::NotInstalled(model) => ApiError::ModelNotFound(model),
        RegistryError::InsufficientMemory { .. } => ApiError::Unavailable {
            message: e.to_string(),
            code: "insufficient_memory",
        },
        RegistryError::Busy(_) => ApiError::Overloaded {
            message: format!("Server busy: {e}"),
            retry_after: 5,
        },
        RegistryError::Load { .. } => ApiError::Internal {
            request_id: new_id("req"),
            message: e.to_string(),
        },
    }
}

fn schedule_error(e: ScheduleError) -> ApiError {
    match e {
        ScheduleError::QueueFull(_) => ApiError::Overloaded {
            message: format!("Server busy: {e}; retry shortly"),
            retry_after: 1,
        },
        ScheduleError::EngineStopped => ApiError::Internal {
            request_id: new_id("req"),
            message: e.to_string(),
        },
    }
}

/// A generated token: id, log-probability, best alternatives.
type TokenLogprobs = (u32, Option<f32>, Vec<(u32, f32)>);

/// One finished choice.
pub(super) struct Choice {
    pub(super) text: String,
    pub(super) tokens: Vec<TokenLogprobs>,
    pub(super) usage: Usage,
}

/// Schedule every choice at once, so they run side by side in the batch.
fn schedule_all(
    engine: &EngineHandle,
    requests: Vec<crate::scheduler::ValidatedRequest>,
) -> Result<Vec<mpsc::UnboundedReceiver<GenEvent>>, ApiError> {
    requests
        .into_iter()
        .map(|r| engine.schedule(r).map_err(schedule_error))
        .collect()
}

async fn run_choice(mut events: mpsc::UnboundedReceiver<GenEvent>) -> Result<Choice, ApiError> {
    let (mut text, mut tokens) = (String::new(), Vec::new());
    while let Some(event) = events.recv().await {
        match event {
            GenEvent::Token { id, logprob, top } => tokens.push((id, logprob, top)),
            GenEvent::Text(t) => text.push_str(&t),
            GenEvent::Done(usage) => {
                return Ok(Choice {
                    text,
                    tokens,
                    usage,
                })
            }
            GenEvent::Failed(message) => {
                return Err(ApiError::Internal {
                    request_id: new_id("req"),
                    message,
                })
            }
        }
    }
    Err(ApiError::Internal {
        request_id: new_id("req"),
        message: "the engine stopped mid-request".into(),
    })
}

fn token_text(engine: &EngineHandle, id: u32) -> String {
    engine
        .tokenizer
        .tokenizer
        .decode(&[id], false)
        .unwrap_or_default()
}

/// Chat logprobs: `{"content": [{token, logprob, bytes, top_logprobs: [...]}]}`.
fn chat_logprobs(engine: &EngineHandle, tokens: &[TokenLogprobs]) -> Value {
    let entry = |id: u32, lp: Option<f32>| {
        let t = token_text(engine, id);
        json!({"token": t, "logprob": lp, "bytes": t.as_bytes()})
    };
    let content: Vec<Value> = tokens
        .iter()
        .map(|(id, lp, top)| {
            let mut e = entry(*id, *lp);
            e["top_logprobs"] = top.iter().map(|(t, l)| entry(*t, Some(*l))).collect();
            e
        })
        .collect();
    json!({ "content": content })
}

/// Completions logprobs: parallel arrays, as the legacy API has them.
fn completion_logprobs(engine: &EngineHandle, tokens: &[TokenLogprobs]) -> Value {
    let mut offset = 0;
    let (mut texts, mut lps, mut tops, mut offsets) = (vec![], vec![], vec![], vec![]);
    for (id, lp, top) in tokens {
        let t = token_text(engine, *id);
        offsets.push(offset);
        offset += t.len();
        texts.push(t);
        lps.push(*lp);
        let alternatives: serde_json::Map<String, Value> = top
            .iter()
            .map(|(t, l)| (token_text(engine, *t), json!(l)))
            .collect();
        tops.push(Value::Object(alternatives));
    }
    json!({"tokens": texts, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offsets})
}

pub async fn chat_completions(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let req: ChatRequest = parse_body(body, state.body_limit)?;
    let planned = plan_chat(&state, &headers, req).await?;
    let compression = planned.plan.compression.clone();
    let admitted = planned.admitted;
    let started = start(
        &state,
        planned.engine,
        planned.plan,
        Api::Chat,
        planned.session,
        &headers,
    )?;
    respond(started)
        .await
        .map(|r| with_compression(admitted.onto(r), compression.as_ref()))
}

/// A chat request checked and ready to schedule.
pub(super) struct Planned {
    pub(super) engine: EngineHandle,
    pub(super) plan: Plan,
    pub(super) session: String,
    /// The session's budget headers, for the response.
    pub(super) admitted: super::budget::Admitted,
}

/// Everything before scheduling a chat request, whichever API it came through: its session and
/// budget, an experiment's routing, the model, compression, validation.
pub(super) async fn plan_chat(
    state: &AppState,
    headers: &HeaderMap,
    mut req: ChatRequest,
) -> Result<Planned, ApiError> {
    let session = session_of(headers, req.sampling.user.as_deref());
    let admitted = super::budget::admit(state, &session)?;
    // `experiment:NAME` runs this session's variant: its model, and its compression and
    // temperature where the request names none.
    let routed = super::experiments::route(state, &req.model, &session).await?;
    if let Some((_, v)) = &routed {
        req.model = v.model.clone();
        req.sampling.compression = req.sampling.compression.or_else(|| v.compression.clone());
        req.sampling.temperature = req.sampling.temperature.or(v.temperature);
    }
    let engine = state
        .engines
        .get(&req.model)
        .await
        .map_err(registry_error)?;
    req.sampling.compression = req
        .sampling
        .compression
        .or_else(|| state.compression.get(&session));
    let scorer = scorer_of(state, req.sampling.compression.as_ref()).await?;
    let mut plan = validate_chat(&engine, req, scorer.as_ref().map(|s| &*s.model))?;
    plan.variant = routed.map(|(label, _)| label);
    Ok(Planned {
        engine,
        plan,
        session,
        admitted,
    })
}

pub async fn completions(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let mut req: CompletionRequest = parse_body(body, state.body_limit)?;
    let session = session_of(&headers, req.sampling.user.as_deref());
    req.sampling.compression = req
        .sampling
        .compression
        .or_else(|| state.compression.get(&session));
    let admitted = super::budget::admit(&state, &session)?;
    let engine = state
        .engines
        .get(&req.model)
        .await
        .map_err(registry_error)?;
    let scorer = scorer_of(&state, req.sampling.compression.as_ref()).await?;
    let plan = validate_completion(&engine, req, scorer.as_ref().map(|s| &*s.model))?;
    let compression = plan.compression.clone();
    let started = start(&state, engine, plan, Api::Completions, session, &headers)?;
    respond(started)
        .await
        .map(|r| with_compression(admitted.onto(r), compression.as_ref()))
}

/// Set on answers whose prompt was compressed: `prune@0.5 612->306` (method and target, then the
/// prompt's tokens before and after).
pub const COMPRESSION: axum::http::HeaderName =
    axum::http::HeaderName::from_static("x-lantern-compression");

fn with_compression(mut r: Response, c: Option<&super::validate::Applied>) -> Response {
    if let Some(c) = c {
        let text = format!(
            "{} {}->{}",
            c.label(),
            c.report.original_tokens,
            c.report.compressed_tokens
        );
        if let Ok(v) = axum::http::HeaderValue::from_str(&text) {
            r.headers_mut().insert(COMPRESSION, v);
        }
    }
    r
}

/// The engine of the model a compression scores with, when it names one (loaded if need be).
async fn scorer_of(
    state: &AppState,
    spec: Option<&crate::compress::Spec>,
) -> Result<Option<EngineHandle>, ApiError> {
    match spec.and_then(|s| s.scorer.as_deref()) {
        Some(name) => Ok(Some(state.engines.get(name).await.map_err(
            |e| match registry_error(e) {
                ApiError::ModelNotFound(m) => ApiError::invalid(
                    format!("compression scorer `{m}` is not an installed model"),
                    "compression",
                ),
                other => other,
            },
        )?)),
        None => Ok(None),
    }
}

/// The session a request belongs to: an `X-Session-Id` header, else the API key (as a short
/// hash, never the key itself), else the `user` field, else `anonymous`.
pub fn session_of(headers: &HeaderMap, user: Option<&str>) -> String {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(id) = header("x-session-id").filter(|s| !s.is_empty()) {
        return id.to_string();
    }
    if header("authorization").is_some() {
        return super::rate::key_of(headers);
    }
    user.filter(|u| !u.is_empty())
        .map(|u| format!("user-{u}"))
        .unwrap_or_else(|| "anonymous".into())
}

use super::rate::key_of as rate_key_of;

/// A request scheduled (or answered from the response cache): its choices' event streams and
/// what rendering them needs. Every API's responses are written from one of these.
pub(super) struct Started {
    pub(super) engine: EngineHandle,
    pub(super) streams: Vec<mpsc::UnboundedReceiver<GenEvent>>,
    pub(super) plan: Plan,
    pub(super) api: Api,
    pub(super) id: String,
    pub(super) account: Account,
    /// The request's time limit.
    pub(super) limit: std::time::Duration,
    pub(super) from_cache: bool,
}

/// Schedule every choice of a plan, or replay them from the response cache. Scheduled before
/// the response starts: a full queue is a 429 status, not an event.
pub(super) fn start(
    state: &AppState,
    engine: EngineHandle,
    mut plan: Plan,
    api: Api,
    session: String,
    headers: &HeaderMap,
) -> Result<Started, ApiError> {
    let account = Account {
        session,
        rate_key: rate_key_of(headers),
        limiter: state.rate.clone(),
        monitor: state.monitor.clone(),
        model: engine.model_id.to_string(),
        api,
        started: std::time::Instant::now(),
        variant: plan
            .variant
            .clone()
            .or_else(|| engine.model.quantization.clone()),
        compression: plan.compression.as_ref().map(|c| c.label()),
    };
    let id = new_id(if api == Api::Chat { "chatcmpl" } else { "cmpl" });
    let limit = state.settings.request_timeout();
    let cache = &state.caches.responses;
    let key = response_key(&engine, api, &plan).filter(|_| cache.enabled());
    let control = CacheUse::of(headers);
    if key.is_some() && !control.read {
        cache.note_bypass();
    }
    let hit = key.filter(|_| control.read).and_then(|k| cache.get(&k));
    let from_cache = hit.is_some();
    let streams = match (hit, key) {
        (Some(recorded), _) => {
            engine.served_without_engine(plan.requests.first().and_then(|r| r.keep_alive));
            replay(&recorded)
        }
        (None, Some(k)) if control.write => recording(
            schedule_all(&engine, std::mem::take(&mut plan.requests))?,
            k,
            cache.clone(),
        ),
        _ => schedule_all(&engine, std::mem::take(&mut plan.requests))?,
    };
    Ok(Started {
        engine,
        streams,
        plan,
        api,
        id,
        account,
        limit,
        from_cache,
    })
}

/// OpenAI's response: chunks when the request streams, else one body.
async fn respond(started: Started) -> Result<Response, ApiError> {
    if started.plan.stream {
        return Ok(stream(started));
    }
    complete(started).await
}

/// Every choice of a non-streaming request, finished and accounted for.
pub(super) struct Collected {
    pub(super) started: Started,
    pub(super) choices: Vec<Choice>,
    pub(super) totals: Totals,
    pub(super) last_usage: Option<Usage>,
}

/// Wait for every choice (within the request's time limit) and account for the request.
/// Dropping the unfinished future on timeout drops its event streams: the engine cancels.
pub(super) async fn collect(mut started: Started) -> Result<Collected, ApiError> {
    let account = started.account.clone();
    let mut totals = Totals {
        from_cache: started.from_cache,
        ..Totals::default()
    };
    let streams = std::mem::take(&mut started.streams);
    let all = futures_util::future::try_join_all(streams.into_iter().map(run_choice));
    let finished = match tokio::time::timeout(started.limit, all).await {
        Ok(Ok(f)) => f,
        Ok(Err(e)) => {
            finish(&account, &totals, None, Outcome::Error(e.to_string()));
            return Err(e);
        }
        Err(_) => {
            finish(&account, &Totals::default(), None, Outcome::Timeout);
            return Err(ApiError::Timeout(started.limit.as_secs()));
        }
    };
    for (index, choice) in finished.iter().enumerate() {
        totals.add(index, started.plan.n, &choice.usage);
    }
    let last_usage = finished.last().map(|c| c.usage.clone());
    finish(&account, &totals, last_usage.as_ref(), Outcome::Ok);
    Ok(Collected {
        started,
        choices: finished,
        totals,
        last_usage,
    })
}

async fn complete(started: Started) -> Result<Response, ApiError> {
    let Collected {
        started,
        choices: finished,
        totals,
        last_usage,
    } = collect(started).await?;
    let Started {
        engine,
        plan,
        api,
        id,
        ..
    } = started;
    let mut choices = Vec::new();
    for (index, choice) in finished.into_iter().enumerate() {
        let finish = finish_reason(choice.usage.finish_reason);
        let logprobs = plan.logprobs.map(|_| match api {
            Api::Chat => chat_logprobs(&engine, &choice.tokens),
            Api::Completions => completion_logprobs(&engine, &choice.tokens),
        });
        choices.push(match api {
            Api::Chat => {
                let (message, finish) =
                    chat_message(choice.text, plan.tools.as_ref(), choice.usage.finish_reason);
                json!({
                    "index": index,
                    "message": message,
                    "logprobs": logprobs,
                    "finish_reason": finish,
                })
            }
            Api::Completions => json!({
                "index": index,
                "text": choice.text,
                "logprobs": logprobs,
                "finish_reason": finish,
            }),
        });
    }
    let mut body = json!({
        "id": id,
        "object": if api == Api::Chat { "chat.completion" } else { "text_completion" },
        "created": now(),
        "model": &*engine.model_id,
        "system_fingerprint": format!("lantern-{}", env!("CARGO_PKG_VERSION")),
        "choices": choices,
        "usage": totals.json(),
    });
    if let Some(u) = &last_usage {
        body["timings"] = timings_json(u);
    }
    Ok(Json(body).into_response())
}

/// A whole message as the deltas a stream sends: its text, then per call one delta with the
/// call's id and name and one with its arguments (as OpenAI splits them).
fn stream_deltas(message: Value) -> Vec<Value> {
    let mut deltas = Vec::new();
    if let Some(text) = message["content"].as_str().filter(|t| !t.is_empty()) {
        deltas.push(json!({"content": text}));
    }
    for (k, call) in message["tool_calls"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        deltas.push(json!({"tool_calls": [{
            "index": k,
            "id": call["id"],
            "type": "function",
            "function": {"name": call["function"]["name"], "arguments": ""},
        }]}));
        deltas.push(json!({"tool_calls": [{
            "index": k,
            "function": {"arguments": call["function"]["arguments"]},
        }]}));
    }
    deltas
}

/// Stream chunks. Every choice is scheduled at once (they generate side by side); their chunks
/// are sent one choice after another, each with its index.
fn stream(started: Started) -> Response {
    let Started {
        engine,
        streams,
        plan,
        api,
        id,
        account: session,
        limit,
        from_cache,
    } = started;
    let (tx, rx) = mpsc::channel::<Value>(64);
    let timeout_tx = tx.clone();
    let created = now();
    let model = engine.model_id.to_string();
    let chunk = move |choices: Value| {
        json!({
            "id": id,
            "object": if api == Api::Chat { "chat.completion.chunk" } else { "text_completion" },
            "created": created,
            "model": model,
            "system_fingerprint": format!("lantern-{}", env!("CARGO_PKG_VERSION")),
            "choices": choices,
        })
    };
    let account = session.clone();
    let produce = async move {
        let mut totals = Totals {
            from_cache,
            ..Totals::default()
        };
        let mut last_usage = None;
        let mut failed = None;
        // The client went away: record what it was sent; dropping `events` cancels the rest.
        let gone = |totals: &mut Totals, streamed: usize, last: Option<&Usage>| {
            totals.completion += streamed;
            finish(&session, totals, last, Outcome::Cancelled);
        };
        for (index, mut events) in streams.into_iter().enumerate() {
            let mut streamed = 0;
            if api == Api::Chat {
                let first = json!([{"index": index, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null}]);
                if tx.send(chunk(first)).await.is_err() {
                    return gone(&mut totals, streamed, last_usage.as_ref());
                }
            }
            let mut pending_tokens = Vec::new();
            // With tools, text that may be a call is held until it is known not to be one (then
            // it streams as content) or the answer ends (then its calls go out as deltas).
            let mut hold = super::tools::CallHold::new(api == Api::Chat && plan.tools.is_some());
            while let Some(event) = events.recv().await {
                let message = match event {
                    GenEvent::Token { id, logprob, top } => {
                        pending_tokens.push((id, logprob, top));
                        streamed += 1;
                        continue;
                    }
                    GenEvent::Text(text) => {
                        let Some(text) = hold.push(text) else {
                            continue;
                        };
                        let tokens = std::mem::take(&mut pending_tokens);
                        let logprobs = plan.logprobs.map(|_| match api {
                            Api::Chat => chat_logprobs(&engine, &tokens),
                            Api::Completions => completion_logprobs(&engine, &tokens),
                        });
                        chunk(match api {
                            Api::Chat => {
                                json!([{"index": index, "delta": {"content": text}, "logprobs": logprobs, "finish_reason": null}])
                            }
                            Api::Completions => {
                                json!([{"index": index, "text": text, "logprobs": logprobs, "finish_reason": null}])
                            }
                        })
                    }
                    GenEvent::Done(usage) => {
                        let mut finish = finish_reason(usage.finish_reason);
                        if let Some(held) = hold.finish() {
                            let (message, reason) =
                                chat_message(held, plan.tools.as_ref(), usage.finish_reason);
                            finish = reason;
                            for delta in stream_deltas(message) {
                                let c = chunk(
                                    json!([{"index": index, "delta": delta, "logprobs": null, "finish_reason": null}]),
                                );
                                if tx.send(c).await.is_err() {
                                    return gone(&mut totals, streamed, last_usage.as_ref());
                                }
                            }
                        }
                        totals.add(index, plan.n, &usage);
                        streamed = 0;
                        last_usage = Some(usage);
                        chunk(match api {
                            Api::Chat => {
                                json!([{"index": index, "delta": {}, "logprobs": null, "finish_reason": finish}])
                            }
                            Api::Completions => {
                                json!([{"index": index, "text": "", "logprobs": null, "finish_reason": finish}])
                            }
                        })
                    }
                    GenEvent::Failed(message) => {
                        failed = Some(message.clone());
                        ApiError::Internal {
                            request_id: new_id("req"),
                            message,
                        }
                        .body()
                    }
                };
                if tx.send(message).await.is_err() {
                    return gone(&mut totals, streamed, last_usage.as_ref());
                }
            }
        }
        if plan.include_usage {
            let mut last = chunk(json!([]));
            last["usage"] = totals.json();
            if let Some(u) = &last_usage {
                last["timings"] = timings_json(u);
            }
            let _ = tx.send(last).await;
        }
        let outcome = failed.map_or(Outcome::Ok, Outcome::Error);
        finish(&session, &totals, last_usage.as_ref(), outcome);
    };
    tokio::spawn(async move {
        if tokio::time::timeout(limit, produce).await.is_err() {
            finish(&account, &Totals::default(), None, Outcome::Timeout);
            let _ = timeout_tx
                .send(ApiError::Timeout(limit.as_secs()).body())
                .await;
        }
    });
    sse::stream(rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_come_from_header_key_or_user() {
        let mut h = HeaderMap::new();
        assert_eq!(session_of(&h, None), "anonymous");
        assert_eq!(session_of(&h, Some("ada")), "user-ada");
        h.insert("authorization", "Bearer sk-secret".parse().unwrap());
        let by_key = session_of(&h, Some("ada"));
        assert!(by_key.starts_with("key-") && !by_key.contains("secret"));
        h.insert("x-session-id", "chat-42".parse().unwrap());
        assert_eq!(session_of(&h, Some("ada")), "chat-42");
    }
}
