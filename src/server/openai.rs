//! `/v1/chat/completions`, `/v1/completions`, `/v1/models`: wire shapes exactly as OpenAI's, and
//! Lantern's timings in an extra `timings` field that SDKs ignore.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::DeserializeOwned;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::errors::ApiError;
use super::validate::{validate_chat, validate_completion, ChatRequest, CompletionRequest, Plan};
use super::{sse, AppState};
use crate::cache::responses::{KeyBuilder, Recorded, ResponseKey};
use crate::cache::ResponseCache;
use crate::engine::generate::FinishReason;
use crate::scheduler::embedder::EmbeddingModelEntry;
use crate::scheduler::registry::{created_of, ServableModel};
use crate::scheduler::{EngineHandle, GenEvent, RegistryError, ScheduleError, Usage};

/// Parse a JSON body, turning every kind of failure into an OpenAI-shaped 400 or 413.
pub fn parse_body<T: DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
    limit: usize,
) -> Result<T, ApiError> {
    let bytes = body.map_err(|e| {
        if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge(limit)
        } else {
            ApiError::invalid(e.body_text(), "body")
        }
    })?;
    serde_json::from_slice(&bytes).map_err(|e| ApiError::InvalidRequest {
        message: format!("Invalid request body: {e}"),
        param: None,
        code: None,
    })
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn new_id(prefix: &str) -> String {
    format!(
        "{prefix}-{:016x}{:08x}",
        rand::random::<u64>(),
        rand::random::<u32>()
    )
}

fn finish_reason(f: FinishReason) -> &'static str {
    match f {
        FinishReason::Stop => "stop",
        FinishReason::Length | FinishReason::Cancelled => "length",
    }
}

/// Token counts of a response; prompts shared by `n` choices count once, as OpenAI does.
#[derive(Default)]
struct Totals {
    prompt: usize,
    cached: usize,
    completion: usize,
    /// Served whole from the response cache: still counted, and said so.
    from_cache: bool,
}

impl Totals {
    fn add(&mut self, index: usize, n: usize, usage: &Usage) {
        if index.is_multiple_of(n) {
            self.prompt += usage.prompt_tokens;
            self.cached += usage.cached_tokens;
        }
        self.completion += usage.completion_tokens;
    }

    fn json(&self) -> Value {
        let mut usage = json!({
            "prompt_tokens": self.prompt,
            "completion_tokens": self.completion,
            "total_tokens": self.prompt + self.completion,
            "prompt_tokens_details": {"cached_tokens": self.cached},
        });
        if self.from_cache {
            usage["response_cached"] = json!(true);
        }
        usage
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
struct Choice {
    text: String,
    tokens: Vec<TokenLogprobs>,
    usage: Usage,
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

#[derive(Clone, Copy, PartialEq)]
enum Api {
    Chat,
    Completions,
}

pub async fn chat_completions(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let req: ChatRequest = parse_body(body, state.body_limit)?;
    let session = session_of(&headers, req.sampling.user.as_deref());
    let engine = state
        .engines
        .get(&req.model)
        .await
        .map_err(registry_error)?;
    let plan = validate_chat(&engine, req)?;
    respond(&state, engine, plan, Api::Chat, session, &headers).await
}

pub async fn completions(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let req: CompletionRequest = parse_body(body, state.body_limit)?;
    let session = session_of(&headers, req.sampling.user.as_deref());
    let engine = state
        .engines
        .get(&req.model)
        .await
        .map_err(registry_error)?;
    let plan = validate_completion(&engine, req)?;
    respond(&state, engine, plan, Api::Completions, session, &headers).await
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

/// Who a finished request is recorded and charged to, and what it was.
#[derive(Clone)]
struct Account {
    session: String,
    rate_key: String,
    limiter: super::rate::RateLimiter,
    monitor: crate::monitor::Monitor,
    model: String,
    api: Api,
    started: std::time::Instant,
}

/// How a request ended.
enum Outcome {
    Ok,
    Error(String),
    /// The client went away.
    Cancelled,
    Timeout,
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Every finished request is recorded once, here, with the totals its client was told: charged
/// to its rate-limit key, logged, and handed to the monitor.
fn finish(account: &Account, totals: &Totals, last: Option<&Usage>, outcome: Outcome) {
    account.limiter.add_tokens(
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
    let api = if account.api == Api::Chat {
        "chat"
    } else {
        "completions"
    };
    let total_ms = ms(account.started.elapsed());
    tracing::info!(
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
    account.monitor.record(crate::store::requests::RequestRow {
        finished_at: unix_now(),
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
        response_cached: totals.from_cache,
    });
}

/// What a request's `Cache-Control` allows the response cache: `no-cache` skips reading it
/// (the fresh answer is still kept), `no-store` skips both.
struct CacheUse {
    read: bool,
    write: bool,
}

impl CacheUse {
    fn of(headers: &HeaderMap) -> Self {
        let directives: Vec<String> = headers
            .get_all(axum::http::header::CACHE_CONTROL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|d| d.trim().to_ascii_lowercase())
            .collect();
        let has = |d: &str| directives.iter().any(|x| x == d);
        Self {
            read: !has("no-cache") && !has("no-store"),
            write: !has("no-store"),
        }
    }
}

/// The response-cache key of a deterministic request (greedy, or every choice seeded): the
/// weights and everything that changes the output. None for anything else.
fn response_key(engine: &EngineHandle, api: Api, plan: &Plan) -> Option<ResponseKey> {
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
        .text(if api == Api::Chat {
            "chat"
        } else {
            "completions"
        })
        .number(plan.n as u64)
        .number(optional(plan.logprobs.map(|l| l as u64)));
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

/// A stored response as event streams again, with the figures of a response that took no time.
fn replay(recorded: &Recorded) -> Vec<mpsc::UnboundedReceiver<GenEvent>> {
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
fn recording(
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

async fn respond(
    state: &AppState,
    engine: EngineHandle,
    mut plan: Plan,
    api: Api,
    session: String,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let session = Account {
        session,
        rate_key: rate_key_of(headers),
        limiter: state.rate.clone(),
        monitor: state.monitor.clone(),
        model: engine.model_id.to_string(),
        api,
        started: std::time::Instant::now(),
    };
    let id = new_id(if api == Api::Chat { "chatcmpl" } else { "cmpl" });
    let limit = state.request_timeout;
    let cache = &state.caches.responses;
    let key = response_key(&engine, api, &plan).filter(|_| cache.enabled());
    let control = CacheUse::of(headers);
    if key.is_some() && !control.read {
        cache.note_bypass();
    }
    let hit = key.filter(|_| control.read).and_then(|k| cache.get(&k));
    let from_cache = hit.is_some();
    // Scheduled before the response starts: a full queue is a 429 status, not an event.
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
    if plan.stream {
        return Ok(stream(
            engine, streams, plan, api, id, session, limit, from_cache,
        ));
    }
    // Dropping the unfinished future on timeout drops its event streams: the engine cancels.
    let account = session.clone();
    let answer = complete(engine, streams, plan, api, id, session, from_cache);
    match tokio::time::timeout(limit, answer).await {
        Ok(answer) => answer,
        Err(_) => {
            finish(&account, &Totals::default(), None, Outcome::Timeout);
            Err(ApiError::Timeout(limit.as_secs()))
        }
    }
}

async fn complete(
    engine: EngineHandle,
    streams: Vec<mpsc::UnboundedReceiver<GenEvent>>,
    plan: Plan,
    api: Api,
    id: String,
    session: Account,
    from_cache: bool,
) -> Result<Response, ApiError> {
    let mut choices = Vec::new();
    let mut totals = Totals {
        from_cache,
        ..Totals::default()
    };
    let mut last_usage = None;
    let all = futures_util::future::try_join_all(streams.into_iter().map(run_choice));
    let finished = match all.await {
        Ok(f) => f,
        Err(e) => {
            finish(&session, &totals, None, Outcome::Error(e.to_string()));
            return Err(e);
        }
    };
    for (index, choice) in finished.into_iter().enumerate() {
        totals.add(index, plan.n, &choice.usage);
        let finish = finish_reason(choice.usage.finish_reason);
        let logprobs = plan.logprobs.map(|_| match api {
            Api::Chat => chat_logprobs(&engine, &choice.tokens),
            Api::Completions => completion_logprobs(&engine, &choice.tokens),
        });
        choices.push(match api {
            Api::Chat => json!({
                "index": index,
                "message": {"role": "assistant", "content": choice.text},
                "logprobs": logprobs,
                "finish_reason": finish,
            }),
            Api::Completions => json!({
                "index": index,
                "text": choice.text,
                "logprobs": logprobs,
                "finish_reason": finish,
            }),
        });
        last_usage = Some(choice.usage);
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
    finish(&session, &totals, last_usage.as_ref(), Outcome::Ok);
    Ok(Json(body).into_response())
}

/// Stream chunks. Every choice is scheduled at once (they generate side by side); their chunks
/// are sent one choice after another, each with its index.
#[allow(clippy::too_many_arguments)]
fn stream(
    engine: EngineHandle,
    streams: Vec<mpsc::UnboundedReceiver<GenEvent>>,
    plan: Plan,
    api: Api,
    id: String,
    session: Account,
    limit: std::time::Duration,
    from_cache: bool,
) -> Response {
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
            while let Some(event) = events.recv().await {
                let message = match event {
                    GenEvent::Token { id, logprob, top } => {
                        pending_tokens.push((id, logprob, top));
                        streamed += 1;
                        continue;
                    }
                    GenEvent::Text(text) => {
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
                        totals.add(index, plan.n, &usage);
                        streamed = 0;
                        let finish = finish_reason(usage.finish_reason);
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

fn model_json(m: &ServableModel) -> Value {
    json!({
        "id": m.id,
        "object": "model",
        "created": m.created,
        "owned_by": "lantern",
        "meta": {
            "kind": "chat",
            "architecture": m.architecture,
            "quantization": m.quantization,
            "context_length": m.context_length,
            "size_bytes": m.size_bytes,
            "loaded": m.loaded,
        },
    })
}

fn embedding_model_json(m: &EmbeddingModelEntry) -> Value {
    json!({
        "id": m.id,
        "object": "model",
        "created": created_of(&m.path),
        "owned_by": "lantern",
        "meta": {
            "kind": "embedding",
            "format": "safetensors",
            "size_bytes": m.size_bytes,
            "loaded": m.loaded,
        },
    })
}

/// Installed chat and embedding models, loaded or not (a request for one loads it).
fn all_models(state: &AppState) -> Vec<(String, Value)> {
    let chat = state.engines.servable();
    let chat = chat.iter().map(|m| (m.id.clone(), model_json(m)));
    let embed = state.embedders.installed();
    let embed = embed
        .iter()
        .map(|m| (m.id.clone(), embedding_model_json(m)));
    chat.chain(embed).collect()
}

pub async fn list_models(State(state): State<AppState>) -> Json<Value> {
    let data: Vec<Value> = all_models(&state).into_iter().map(|(_, v)| v).collect();
    Json(json!({"object": "list", "data": data}))
}

pub async fn get_model(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    all_models(&state)
        .into_iter()
        .find(|(m, _)| *m == id)
        .map(|(_, v)| Json(v))
        .ok_or(ApiError::ModelNotFound(id))
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
