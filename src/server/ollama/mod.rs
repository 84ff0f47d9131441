//! Ollama's API on the same port, for the apps that speak only it: `/api/chat`, `/api/generate`
//! (NDJSON streams by default, as Ollama's), `/api/embed` (and the older `/api/embeddings`),
//! `/api/tags`, `/api/show`, `/api/ps`, `/api/version`.
//!
//! Requests are translated into the OpenAI shapes and go through the same validation, cache,
//! scheduler and accounting; only the wire differs: Ollama's field names (`options.num_predict`,
//! `format`, `keep_alive`), durations in nanoseconds, errors as `{"error": "..."}`.
//!
//! - `request`: Ollama's options, format and messages as the OpenAI fields they mean
//! - `listing`: what is installed and loaded (`tags`, `show`, `ps`, `version`)

mod listing;
mod request;

pub use listing::{ps, show, tags, version};
use request::{apply_options, openai_messages, refuse_think};

use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use tokio::sync::mpsc;

use super::accounting::{finish, Api, Outcome, Totals};
use super::body::parse_body;
use super::errors::{ApiError, OllamaError};
use super::openai::{chat_message, collect, plan_chat, start, Collected, Started};
use super::validate::ChatRequest;
use super::AppState;
use crate::engine::generate::FinishReason;
use crate::scheduler::{GenEvent, Usage};

/// Ollama names carry a tag; Lantern's models have none, so `:latest` means the model itself.
fn model_name(name: &str) -> &str {
    name.strip_suffix(":latest").unwrap_or(name)
}

use crate::clock::rfc3339;

fn now_rfc3339() -> String {
    rfc3339(crate::clock::unix_seconds())
}

fn nanos(d: std::time::Duration) -> u64 {
    d.as_nanos() as u64
}

#[derive(Debug, Deserialize)]
struct ChatBody {
    model: String,
    #[serde(default)]
    messages: Vec<Map<String, Value>>,
    tools: Option<Value>,
    format: Option<Value>,
    options: Option<Value>,
    stream: Option<bool>,
    keep_alive: Option<Value>,
    think: Option<Value>,
}

#[derive(Debug, Deserialize)]
struct GenerateBody {
    model: String,
    #[serde(default)]
    prompt: String,
    system: Option<String>,
    suffix: Option<String>,
    template: Option<String>,
    context: Option<Value>,
    images: Option<Value>,
    #[serde(default)]
    raw: bool,
    format: Option<Value>,
    options: Option<Value>,
    stream: Option<bool>,
    keep_alive: Option<Value>,
    think: Option<Value>,
}

fn invalid(message: impl Into<String>, param: &'static str) -> OllamaError {
    OllamaError(ApiError::invalid(message, param))
}

/// Load or unload a model on a request without a prompt, as Ollama does (`done_reason`
/// `load` or `unload`).
async fn load_or_unload(
    state: &AppState,
    model: &str,
    keep_alive: Option<&Value>,
    chat: bool,
) -> Result<Response, OllamaError> {
    let unload = keep_alive.is_some_and(|k| {
        crate::scheduler::KeepAlive::parse(k)
            == Some(crate::scheduler::KeepAlive::For(std::time::Duration::ZERO))
    });
    let reason = if unload {
        state.engines.unload(model).map_err(|busy| {
            OllamaError(ApiError::Conflict(format!(
                "`{model}` has {busy} requests in flight"
            )))
        })?;
        "unload"
    } else {
        state
            .engines
            .get(model)
            .await
            .map_err(super::openai::registry_error)?;
        "load"
    };
    let mut body =
        json!({"model": model, "created_at": now_rfc3339(), "done": true, "done_reason": reason});
    if chat {
        body["message"] = json!({"role": "assistant", "content": ""});
    } else {
        body["response"] = json!("");
    }
    Ok(Json(body).into_response())
}

fn done_reason(f: FinishReason) -> &'static str {
    match f {
        FinishReason::Stop => "stop",
        FinishReason::Length | FinishReason::Cancelled => "length",
    }
}

/// The figures Ollama ends every answer with.
fn stats(body: &mut Value, usage: &Usage, total: std::time::Duration, load: std::time::Duration) {
    body["total_duration"] = json!(nanos(total));
    body["load_duration"] = json!(nanos(load));
    body["prompt_eval_count"] = json!(usage.prompt_tokens);
    body["prompt_eval_duration"] = json!(nanos(usage.prefill));
    body["eval_count"] = json!(usage.completion_tokens);
    body["eval_duration"] = json!(nanos(usage.decode));
}

/// Calls as Ollama writes them: arguments as an object.
fn ollama_calls(openai_calls: &Value) -> Value {
    openai_calls
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            let args = c["function"]["arguments"]
                .as_str()
                .and_then(|s| serde_json::from_str::<Value>(s).ok())
                .unwrap_or(json!({}));
            json!({"function": {"name": c["function"]["name"], "arguments": args}})
        })
        .collect()
}

/// What one answer's final object carries besides its figures.
fn answer_fields(chat: bool, text: String, started: &Started, finish: FinishReason) -> Value {
    if chat {
        let (message, reason) = chat_message(text, started.plan.tools.as_ref(), finish);
        let mut m =
            json!({"role": "assistant", "content": message["content"].as_str().unwrap_or("")});
        if message.get("tool_calls").is_some() {
            m["tool_calls"] = ollama_calls(&message["tool_calls"]);
        }
        json!({"message": m, "done_reason": if reason == "tool_calls" { "stop" } else { reason }})
    } else {
        json!({"response": text, "done_reason": done_reason(finish)})
    }
}

async fn answer(
    started: Started,
    chat: bool,
    model: String,
    load: std::time::Duration,
) -> Result<Response, OllamaError> {
    let began = started.account.started;
    let Collected {
        started,
        mut choices,
        ..
    } = collect(started).await?;
    let choice = choices
        .pop()
        .ok_or_else(|| ApiError::internal("no choice"))?;
    let mut body = answer_fields(chat, choice.text, &started, choice.usage.finish_reason);
    body["model"] = json!(model);
    body["created_at"] = json!(now_rfc3339());
    body["done"] = json!(true);
    stats(&mut body, &choice.usage, began.elapsed(), load);
    Ok(Json(body).into_response())
}

/// NDJSON: one object per piece of text, then a last one with `done: true` and the figures.
fn stream_ndjson(
    started: Started,
    chat: bool,
    model: String,
    load: std::time::Duration,
) -> Response {
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::convert::Infallible>>(64);
    let line = |v: Value| Ok(Bytes::from(format!("{v}\n")));
    tokio::spawn(async move {
        let mut started = started;
        let account = started.account.clone();
        let limit = started.limit;
        let mut events = match started.streams.pop() {
            Some(e) => e,
            None => return,
        };
        let produce = async {
            let mut totals = Totals {
                from_cache: started.from_cache,
                ..Totals::default()
            };
            let mut hold = super::tools::CallHold::new(chat && started.plan.tools.is_some());
            let mut streamed = 0;
            while let Some(event) = events.recv().await {
                let piece = match event {
                    GenEvent::Token { .. } => {
                        streamed += 1;
                        continue;
                    }
                    GenEvent::Text(text) => {
                        let Some(text) = hold.push(text) else {
                            continue;
                        };
                        let mut v = if chat {
                            json!({"message": {"role": "assistant", "content": text}})
                        } else {
                            json!({"response": text})
                        };
                        v["model"] = json!(model);
                        v["created_at"] = json!(now_rfc3339());
                        v["done"] = json!(false);
                        v
                    }
                    GenEvent::Done(usage) => {
                        totals.add(0, 1, &usage);
                        let mut last = if let Some(held) = hold.finish() {
                            let whole = answer_fields(chat, held, &started, usage.finish_reason);
                            // The calls (or held text) go out in one piece before the end.
                            let mut piece =
                                json!({"model": model, "created_at": now_rfc3339(), "done": false});
                            piece["message"] = whole["message"].clone();
                            if tx.send(line(piece)).await.is_err() {
                                totals.completion = streamed;
                                return finish(&account, &totals, Some(&usage), Outcome::Cancelled);
                            }
                            json!({"done_reason": whole["done_reason"]})
                        } else {
                            json!({"done_reason": done_reason(usage.finish_reason)})
                        };
                        if chat {
                            last["message"] = json!({"role": "assistant", "content": ""});
                        } else {
                            last["response"] = json!("");
                        }
                        last["model"] = json!(model);
                        last["created_at"] = json!(now_rfc3339());
                        last["done"] = json!(true);
                        stats(&mut last, &usage, account.started.elapsed(), load);
                        let _ = tx.send(line(last)).await;
                        return finish(&account, &totals, Some(&usage), Outcome::Ok);
                    }
                    GenEvent::Failed(message) => {
                        let _ = tx.send(line(json!({"error": message}))).await;
                        return finish(&account, &totals, None, Outcome::Error(message));
                    }
                };
                if tx.send(line(piece)).await.is_err() {
                    totals.completion = streamed;
                    return finish(&account, &totals, None, Outcome::Cancelled);
                }
            }
        };
        if tokio::time::timeout(limit, produce).await.is_err() {
            finish(&account, &Totals::default(), None, Outcome::Timeout);
            let _ = tx
                .send(line(
                    json!({"error": ApiError::Timeout(limit.as_secs()).to_string()}),
                ))
                .await;
        }
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/x-ndjson")
        .body(Body::from_stream(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        ))
        .expect("a valid response")
}

fn loaded(state: &AppState, model: &str) -> bool {
    state.engines.loaded().iter().any(|m| m.id == model)
}

/// Plan, start and answer an OpenAI-shaped chat request built from an Ollama one.
async fn run_chat(
    state: &AppState,
    headers: &HeaderMap,
    body: Map<String, Value>,
    stream: bool,
    chat: bool,
) -> Result<Response, OllamaError> {
    let model = body["model"].as_str().unwrap_or_default().to_string();
    let was_loaded = loaded(state, &model);
    let began = std::time::Instant::now();
    let req: ChatRequest = serde_json::from_value(Value::Object(body))
        .map_err(|e| invalid(e.to_string(), "messages"))?;
    let planned = plan_chat(state, headers, req).await?;
    let load = if was_loaded {
        std::time::Duration::ZERO
    } else {
        began.elapsed()
    };
    let admitted = planned.admitted;
    let api = if chat { Api::Chat } else { Api::Completions };
    let started = start(
        state,
        planned.engine,
        planned.plan,
        api,
        planned.session,
        headers,
    )?;
    let response = if stream {
        stream_ndjson(started, chat, model, load)
    } else {
        answer(started, chat, model, load).await?
    };
    Ok(admitted.onto(response))
}

/// `POST /api/chat`.
pub async fn chat(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, OllamaError> {
    let req: ChatBody = parse_body(body, state.body_limit)?;
    let model = model_name(&req.model).to_string();
    refuse_think(&req.think, &model)?;
    if req.messages.is_empty() {
        return load_or_unload(&state, &model, req.keep_alive.as_ref(), true).await;
    }
    let mut body = Map::new();
    body.insert("model".into(), json!(model));
    body.insert(
        "messages".into(),
        Value::Array(openai_messages(req.messages)?),
    );
    if let Some(tools) = req.tools.filter(|t| !t.is_null()) {
        body.insert("tools".into(), tools);
    }
    if let Some(k) = req.keep_alive {
        body.insert("keep_alive".into(), k);
    }
    apply_options(&mut body, req.options, req.format)?;
    run_chat(&state, &headers, body, req.stream.unwrap_or(true), true).await
}

/// `POST /api/generate`: the prompt through the chat template (with `system`), or as written
/// with `raw`.
pub async fn generate(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, OllamaError> {
    let req: GenerateBody = parse_body(body, state.body_limit)?;
    let model = model_name(&req.model).to_string();
    refuse_think(&req.think, &model)?;
    for (field, given) in [
        (
            "suffix",
            req.suffix.as_deref().is_some_and(|s| !s.is_empty()),
        ),
        (
            "template",
            req.template.as_deref().is_some_and(|s| !s.is_empty()),
        ),
        (
            "context",
            req.context.as_ref().is_some_and(|c| !c.is_null()),
        ),
        ("images", req.images.as_ref().is_some_and(|c| !c.is_null())),
    ] {
        if given {
            return Err(OllamaError(ApiError::invalid(
                format!("`{field}` is not supported by this server; send the whole conversation to /api/chat instead"),
                field,
            )));
        }
    }
    if req.prompt.is_empty() {
        return load_or_unload(&state, &model, req.keep_alive.as_ref(), false).await;
    }
    let mut body = Map::new();
    body.insert("model".into(), json!(model));
    if let Some(k) = req.keep_alive {
        body.insert("keep_alive".into(), k);
    }
    apply_options(&mut body, req.options, req.format)?;
    let stream = req.stream.unwrap_or(true);
    if req.raw {
        return run_completion(&state, &headers, body, req.prompt, stream).await;
    }
    let mut messages = Vec::new();
    if let Some(system) = req.system.filter(|s| !s.is_empty()) {
        messages.push(json!({"role": "system", "content": system}));
    }
    messages.push(json!({"role": "user", "content": req.prompt}));
    body.insert("messages".into(), Value::Array(messages));
    run_chat(&state, &headers, body, stream, false).await
}

/// `raw` generation: the prompt as written, through the completions path.
async fn run_completion(
    state: &AppState,
    headers: &HeaderMap,
    mut body: Map<String, Value>,
    prompt: String,
    stream: bool,
) -> Result<Response, OllamaError> {
    let model = body["model"].as_str().unwrap_or_default().to_string();
    body.insert("prompt".into(), json!(prompt));
    if !body.contains_key("max_tokens") {
        // Ollama generates until the end of the turn; the completions API's default is 16.
        body.insert(
            "max_tokens".into(),
            json!(
                state
                    .engines
                    .get(&model)
                    .await
                    .map_err(super::openai::registry_error)?
                    .info
                    .context_length
            ),
        );
    }
    let was_loaded = loaded(state, &model);
    let began = std::time::Instant::now();
    let req: super::validate::CompletionRequest = serde_json::from_value(Value::Object(body))
        .map_err(|e| invalid(e.to_string(), "prompt"))?;
    let session = super::openai::session_of(headers, None);
    let admitted = super::budget::admit(state, &session)?;
    let engine = state
        .engines
        .get(&req.model)
        .await
        .map_err(super::openai::registry_error)?;
    let plan = super::validate::validate_completion(&engine, req, None)?;
    let load = if was_loaded {
        std::time::Duration::ZERO
    } else {
        began.elapsed()
    };
    let started = start(state, engine, plan, Api::Completions, session, headers)?;
    let response = if stream {
        stream_ndjson(started, false, model, load)
    } else {
        answer(started, false, model, load).await?
    };
    Ok(admitted.onto(response))
}

#[derive(Debug, Deserialize)]
struct EmbedBody {
    model: String,
    input: Option<Value>,
    /// `/api/embeddings`' one text.
    prompt: Option<String>,
    truncate: Option<bool>,
    options: Option<Value>,
    keep_alive: Option<Value>,
}

/// `POST /api/embed` (`input`: a text or a list) and `/api/embeddings` (`prompt`: one text),
/// through the OpenAI embeddings route.
pub async fn embed(
    State(state): State<AppState>,
    headers: HeaderMap,
    uri: axum::http::Uri,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, OllamaError> {
    let began = std::time::Instant::now();
    let req: EmbedBody = parse_body(body, state.body_limit)?;
    let _ = (&req.options, &req.keep_alive);
    let legacy = uri.path() == "/api/embeddings";
    let input = if legacy {
        json!(req.prompt.unwrap_or_default())
    } else {
        req.input
            .ok_or_else(|| invalid("`input` is required", "input"))?
    };
    let model = model_name(&req.model).to_string();
    let openai_body =
        json!({"model": model, "input": input, "truncate": req.truncate.unwrap_or(true)});
    let response = super::embeddings::embeddings(
        State(state),
        headers,
        Ok(Bytes::from(openai_body.to_string())),
    )
    .await?;
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .map_err(ApiError::internal)?;
    let v: Value = serde_json::from_slice(&bytes).map_err(ApiError::internal)?;
    let vectors: Vec<Value> = v["data"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|d| d["embedding"].clone())
        .collect();
    let body = if legacy {
        json!({"embedding": vectors.into_iter().next().unwrap_or(json!([]))})
    } else {
        json!({
            "model": model,
            "embeddings": vectors,
            "total_duration": nanos(began.elapsed()),
            "load_duration": 0,
            "prompt_eval_count": v["usage"]["prompt_tokens"],
        })
    };
    Ok(Json(body).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_become_openai_fields() {
        let mut body = Map::new();
        apply_options(
            &mut body,
            Some(json!({"temperature": 0, "seed": 7, "num_predict": 12, "num_ctx": 512, "stop": ["\n"]})),
            Some(json!("json")),
        )
        .unwrap();
        assert_eq!(body["temperature"], json!(0.0));
        assert_eq!(body["seed"], json!(7));
        assert_eq!(body["max_tokens"], json!(12));
        assert_eq!(body["context_limit"], json!(512));
        assert_eq!(body["top_k"], json!(40));
        assert_eq!(body["response_format"], json!({"type": "json_object"}));
        let mut body = Map::new();
        apply_options(&mut body, None, None).unwrap();
        assert!(!body.contains_key("max_tokens"));
        for (options, format) in [
            (Some(json!({"num_predict": -3})), None),
            (Some(json!({"num_ctx": 0})), None),
            (Some(json!({"temperature": "hot"})), None),
            (None, Some(json!(3))),
        ] {
            assert!(apply_options(&mut Map::new(), options, format).is_err());
        }
    }

    #[test]
    fn calls_carry_object_arguments() {
        let openai = json!([{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{\"x\": 1}"}}]);
        assert_eq!(
            ollama_calls(&openai),
            json!([{"function": {"name": "f", "arguments": {"x": 1}}}])
        );
    }

    #[test]
    fn tags_and_paths() {
        assert_eq!(model_name("smollm2:latest"), "smollm2");
        assert_eq!(model_name("smollm2"), "smollm2");
    }
}
