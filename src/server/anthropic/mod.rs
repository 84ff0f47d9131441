//! Anthropic's Messages API on the same port, for Claude Code and the `anthropic` SDKs:
//! `POST /v1/messages` (whole or streamed) and `POST /v1/messages/count_tokens`, errors in
//! Anthropic's shape, `x-api-key` as an API key.
//!
//! - `wire`: the request body as the one typed request
//! - `stream`: the inference path's events as Anthropic's named SSE events

mod stream;
pub mod wire;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::body::parse_body;
use super::errors::AnthropicError;
use super::AppState;
use crate::engine::tools::ToolCall;
use crate::infer::Finish;
use wire::MessagesBody;

/// Anthropic's `stop_reason` and `stop_sequence` for how an answer ended.
fn stop_reason(f: &Finish) -> (&'static str, Option<&str>) {
    match f {
        Finish::Stop => ("end_turn", None),
        Finish::StopSequence(s) => ("stop_sequence", Some(s)),
        Finish::Length => ("max_tokens", None),
        Finish::ToolCalls => ("tool_use", None),
    }
}

fn message_id() -> String {
    format!("msg_{:024x}", rand::random::<u128>() >> 32)
}

fn tool_use_id() -> String {
    format!("toolu_{:024x}", rand::random::<u128>() >> 32)
}

/// A call as a `tool_use` block: its input as an object.
fn tool_use(call: &ToolCall) -> Value {
    let input = serde_json::from_str::<Value>(&call.arguments).unwrap_or_else(|_| json!({}));
    json!({"type": "tool_use", "id": tool_use_id(), "name": call.name, "input": input})
}

/// `POST /v1/messages`.
pub async fn messages(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, AnthropicError> {
    let body: MessagesBody = parse_body(body, state.body_limit)?;
    let mut caller = super::caller::caller(&state, &headers, body.user());
    // Anthropic's SDKs always send a key: `metadata.user_id`, when given, names the session
    // (an `X-Session-Id` header still wins).
    if let (Some(user), None) = (body.user(), headers.get("x-session-id")) {
        caller.session = format!("user-{user}");
    }
    let stream = body.stream;
    let model = body.model.clone();
    let req = body.into_request(caller, false)?;
    let mut run = state.infer.start(req).await?;
    let admitted = super::budget::Admitted::of(&run);
    let response = if stream {
        stream::events(run, model)
    } else {
        let (choice, totals) = run.collect_one().await?;
        let mut content = Vec::new();
        if !choice.reasoning.is_empty() {
            content
                .push(json!({"type": "thinking", "thinking": choice.reasoning, "signature": ""}));
        }
        if !choice.text.is_empty() {
            content.push(json!({"type": "text", "text": choice.text}));
        }
        content.extend(choice.calls.iter().map(tool_use));
        let (reason, sequence) = stop_reason(&choice.finish);
        Json(json!({
            "id": message_id(),
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": content,
            "stop_reason": reason,
            "stop_sequence": sequence,
            "usage": {
                "input_tokens": totals.prompt,
                "output_tokens": totals.completion,
            },
        }))
        .into_response()
    };
    Ok(admitted.onto(response))
}

/// `POST /v1/messages/count_tokens`: the prompt's tokens as the model would see it (template,
/// tools and all), without running it.
pub async fn count_tokens(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, AnthropicError> {
    let body: MessagesBody = parse_body(body, state.body_limit)?;
    let caller = super::caller::caller(&state, &headers, body.user());
    let req = body.into_request(caller, true)?;
    let tokens = state.infer.count_tokens(req).await?;
    Ok(Json(json!({"input_tokens": tokens})).into_response())
}
