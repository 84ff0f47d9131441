//! Ollama's API on the same port, for the apps that speak only it: `/api/chat`, `/api/generate`
//! (NDJSON streams by default, as Ollama's), `/api/embed` (and the older `/api/embeddings`),
//! `/api/tags`, `/api/show`, `/api/ps`, `/api/version`.
//!
//! Requests become the one typed request and run on the inference path; only the wire differs:
//! Ollama's field names (`options.num_predict`, `format`, `keep_alive`), durations in
//! nanoseconds, errors as `{"error": "..."}`.
//!
//! - `request`: Ollama's options, format and messages as the typed request's fields
//! - `listing`: what is installed and loaded (`tags`, `show`, `ps`, `version`)

mod listing;
mod request;

pub use listing::{ps, show, tags, version};
use request::{apply_options, messages, think_flag};

use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use tokio::sync::mpsc;

use super::body::parse_body;
use super::errors::{ApiError, OllamaError};
use super::AppState;
use crate::engine::template::ChatMessage;
use crate::infer::{Api, Event, Finish, Input, Request, Run};
use crate::scheduler::Usage;

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
    /// Lantern's extension, as on every API: `{"semantic": 0.95}`.
    cache: Option<crate::infer::CacheSpec>,
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
    /// Lantern's extension, as on every API: `{"semantic": 0.95}`.
    cache: Option<crate::infer::CacheSpec>,
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

fn done_reason(f: &Finish) -> &'static str {
    match f {
        Finish::Length => "length",
        _ => "stop",
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
fn ollama_calls(calls: &[crate::engine::tools::ToolCall]) -> Value {
    calls
        .iter()
        .map(|c| {
            let args = serde_json::from_str::<Value>(&c.arguments).unwrap_or(json!({}));
            json!({"function": {"name": c.name, "arguments": args}})
        })
        .collect()
}

/// One NDJSON object (or a whole answer's start): the model, the time, whether it is the end.
fn object(model: &str, done: bool) -> Value {
    json!({"model": model, "created_at": now_rfc3339(), "done": done})
}

/// Text as a chat message or a generated response.
fn with_text(mut v: Value, chat: bool, text: &str) -> Value {
    if chat {
        v["message"] = json!({"role": "assistant", "content": text});
    } else {
        v["response"] = json!(text);
    }
    v
}

/// A thinking model's reasoning, where Ollama puts it: `message.thinking` or `thinking`.
fn with_thinking(mut v: Value, chat: bool, reasoning: &str) -> Value {
    if chat {
        v["message"]["thinking"] = json!(reasoning);
    } else {
        v["thinking"] = json!(reasoning);
    }
    v
}

/// The whole answer as one object.
async fn answer(mut run: Run, chat: bool, model: &str) -> Result<Response, OllamaError> {
    let (choice, _) = run.collect_one().await?;
    let mut body = with_text(object(model, true), chat, &choice.text);
    if !choice.reasoning.is_empty() {
        body = with_thinking(body, chat, &choice.reasoning);
    }
    if chat && !choice.calls.is_empty() {
        body["message"]["tool_calls"] = ollama_calls(&choice.calls);
    }
    body["done_reason"] = json!(done_reason(&choice.finish));
    stats(&mut body, &choice.usage, run.began.elapsed(), run.load);
    Ok(Json(body).into_response())
}

/// NDJSON: one object per piece of text, calls in one piece, then a last one with `done: true`
/// and the figures. Returning drops the run: a client that went away cancels the generation.
fn stream_ndjson(mut run: Run, chat: bool, model: String) -> Response {
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::convert::Infallible>>(64);
    let line = |v: Value| Ok(Bytes::from(format!("{v}\n")));
    tokio::spawn(async move {
        let mut last = None;
        while let Some(event) = run.events.recv().await {
            let piece = match event {
                Event::Text { text, .. } => with_text(object(&model, false), chat, &text),
                Event::Reasoning { text, .. } => {
                    with_thinking(with_text(object(&model, false), chat, ""), chat, &text)
                }
                Event::Done {
                    calls,
                    finish,
                    usage,
                    ..
                } => {
                    last = Some((finish, usage));
                    if calls.is_empty() || !chat {
                        continue;
                    }
                    let mut v = with_text(object(&model, false), chat, "");
                    v["message"]["tool_calls"] = ollama_calls(&calls);
                    v
                }
                Event::End { .. } => {
                    let Some((finish, usage)) = last.take() else {
                        return;
                    };
                    let mut v = with_text(object(&model, true), chat, "");
                    v["done_reason"] = json!(done_reason(&finish));
                    stats(&mut v, &usage, run.began.elapsed(), run.load);
                    v
                }
                Event::Error(e) => json!({"error": e.to_string()}),
            };
            if tx.send(line(piece)).await.is_err() {
                return;
            }
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

/// Plan and run on the one path; answer whole or as NDJSON.
async fn serve(state: &AppState, req: Request, stream: bool) -> Result<Response, OllamaError> {
    let chat = req.api == Api::OllamaChat;
    let model = req.model.clone();
    let run = state.infer.start(req).await?;
    let admitted = super::budget::Admitted::of(&run);
    let response = if stream {
        stream_ndjson(run, chat, model)
    } else {
        answer(run, chat, &model).await?
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
    let think = think_flag(&req.think)?;
    if req.messages.is_empty() {
        return load_or_unload(&state, &model, req.keep_alive.as_ref(), true).await;
    }
    let caller = super::caller::caller(&state, &headers, None);
    let mut request = Request::new(
        Api::OllamaChat,
        model,
        Input::Chat(messages(req.messages)?),
        caller,
    );
    request.enable_thinking = think;
    if let Some(tools) = req.tools.filter(|t| !t.is_null()) {
        let tools: Vec<super::tools::WireTool> =
            serde_json::from_value(tools).map_err(|e| invalid(format!("`tools`: {e}"), "tools"))?;
        request.tools = super::tools::specs(Some(tools))?;
    }
    request.output = apply_options(&mut request.sampling, req.options, req.format)?;
    request.output_param = "format";
    request.sampling.keep_alive = req.keep_alive;
    request.sampling.cache = req.cache;
    serve(&state, request, req.stream.unwrap_or(true)).await
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
    let think = think_flag(&req.think)?;
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
    let input = if req.raw {
        Input::Prompts(vec![req.prompt])
    } else {
        let mut messages = Vec::new();
        if let Some(system) = req.system.filter(|s| !s.is_empty()) {
            messages.push(ChatMessage::new("system", system));
        }
        messages.push(ChatMessage::new("user", req.prompt));
        Input::Chat(messages)
    };
    let caller = super::caller::caller(&state, &headers, None);
    let mut request = Request::new(Api::OllamaGenerate, model, input, caller);
    request.enable_thinking = think;
    request.output = apply_options(&mut request.sampling, req.options, req.format)?;
    request.output_param = "format";
    request.sampling.keep_alive = req.keep_alive;
    request.sampling.cache = req.cache;
    serve(&state, request, req.stream.unwrap_or(true)).await
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
    fn options_become_sampling_settings() {
        let mut sampling = crate::infer::Sampling::default();
        let output = apply_options(
            &mut sampling,
            Some(json!({"temperature": 0, "seed": 7, "num_predict": 12, "num_ctx": 512, "stop": ["\n"]})),
            Some(json!("json")),
        )
        .unwrap();
        assert_eq!(sampling.temperature, Some(0.0));
        assert_eq!(sampling.seed, Some(7));
        assert_eq!(sampling.max_tokens, Some(12));
        assert_eq!(sampling.context_limit, Some(512));
        assert_eq!(sampling.top_k, Some(40));
        assert_eq!(output, Some(crate::engine::constrain::Grammar::JsonObject));
        let mut sampling = crate::infer::Sampling::default();
        assert_eq!(apply_options(&mut sampling, None, None).unwrap(), None);
        assert_eq!(sampling.max_tokens, None);
        for (options, format) in [
            (Some(json!({"num_predict": -3})), None),
            (Some(json!({"num_ctx": 0})), None),
            (Some(json!({"temperature": "hot"})), None),
            (Some(json!({"stop": 3})), None),
            (None, Some(json!(3))),
        ] {
            let mut sampling = crate::infer::Sampling::default();
            assert!(apply_options(&mut sampling, options, format).is_err());
        }
    }

    #[test]
    fn calls_carry_object_arguments() {
        let calls = [crate::engine::tools::ToolCall {
            name: "f".into(),
            arguments: "{\"x\": 1}".into(),
        }];
        assert_eq!(
            ollama_calls(&calls),
            json!([{"function": {"name": "f", "arguments": {"x": 1}}}])
        );
    }

    #[test]
    fn tags_and_paths() {
        assert_eq!(model_name("smollm2:latest"), "smollm2");
        assert_eq!(model_name("smollm2"), "smollm2");
    }
}
