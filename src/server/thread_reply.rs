//! `POST /api/threads/{id}/reply`: answer a user message of a thread on the one request path and
//! stream it as `/v1/chat/completions` chunks, while the server writes the answer into the
//! thread as it arrives. A client that goes away (a stop, a reload) ends the request, and the
//! answer keeps what arrived, marked interrupted; a regeneration is a second answer to the same
//! message, beside the first; `continue` goes on with an answer cut short, in place.

use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use axum::response::Response;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use tokio::sync::mpsc;

use super::errors::ApiError;
use super::openai::wire::ChatRequest;
use super::threads::{branch, store, thread_error, Body};
use super::AppState;
use crate::infer::Event;
use crate::scheduler::Usage;
use crate::store::threads::{Message, MessageState, NewMessage, Progress};
use crate::store::Store;

/// The answer's message id, so the client can find it in the thread.
pub const MESSAGE_HEADER: HeaderName = HeaderName::from_static("x-lantern-message");

/// How often a streaming answer is written: a reload loses at most this much of it.
const SAVE_EVERY: Duration = Duration::from_millis(250);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplyBody {
    /// The user message to answer (again, for a regeneration: a sibling of the first answer).
    parent: Option<String>,
    /// Or an answer cut short (interrupted, or out of tokens) to go on with, in place.
    #[serde(rename = "continue")]
    continue_answer: Option<String>,
    /// Sent before the branch's messages.
    #[serde(default)]
    system: Option<String>,
    /// `/v1/chat/completions` parameters (model, sampling, response_format, compression,
    /// chat_template_kwargs, ...), without `messages`; `model` defaults to the server's.
    #[serde(default)]
    request: Map<String, Value>,
    /// Answers to one message from several variants at once share a compare id, so the
    /// page shows them side by side and can vote between them.
    compare: Option<String>,
}

/// What the reply writes: a new answer under a user message, or more of an earlier answer.
enum Target {
    Answer { parent: String },
    Continue { answer: Box<Message> },
}

pub async fn reply(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let ReplyBody {
        parent,
        continue_answer,
        system,
        mut request,
        compare,
    } = super::body::parse_body(body, state.body_limit)?;
    let db = store(&state)?.clone();
    if db
        .thread_get(&id)
        .await
        .map_err(ApiError::internal)?
        .is_none()
    {
        return Err(ApiError::RouteNotFound(format!(
            "/api/threads/{id} (no such thread)"
        )));
    }
    let messages = db.thread_messages(&id).await.map_err(ApiError::internal)?;
    let target = target(&messages, parent, continue_answer)?;
    if let Some(key) = ["messages", "n", "continue_final_message"]
        .iter()
        .find(|k| request.contains_key(**k))
    {
        return Err(ApiError::invalid(
            format!("'request.{key}' is set by the thread"),
            format!("request.{key}"),
        ));
    }
    if compare.as_ref().is_some_and(|c| {
        c.is_empty() || c.len() > 64 || !c.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    }) {
        return Err(ApiError::invalid(
            "'compare' is 1 to 64 letters, digits or '-'",
            "compare",
        ));
    }
    // The server's default model unless the thread names one.
    request
        .entry("model")
        .or_insert_with(|| Value::String(state.default_model.clone()));
    let mut sampling = request.clone();
    if let Some(group) = compare {
        sampling.insert("compare".into(), Value::String(group));
    }
    let mut wire = Vec::new();
    if let Some(system) = system.filter(|s| !s.trim().is_empty()) {
        wire.push(json!({"role": "system", "content": system}));
    }
    let last = match &target {
        Target::Answer { parent } => parent,
        Target::Continue { answer } => &answer.id,
    };
    // Failed answers carry nothing a model should read; interrupted ones carry what arrived.
    wire.extend(
        branch(&messages, Some(last))
            .into_iter()
            .filter(|m| m.state != MessageState::Error && !m.content.is_empty())
            .map(|m| json!({"role": m.role, "content": m.content})),
    );
    request.insert("messages".into(), Value::Array(wire));
    request.insert("stream".into(), Value::Bool(true));
    request.insert("stream_options".into(), json!({"include_usage": true}));
    if matches!(target, Target::Continue { .. }) {
        request.insert("continue_final_message".into(), Value::Bool(true));
    }
    let mut chat: ChatRequest = serde_json::from_value(Value::Object(request))
        .map_err(|e| ApiError::invalid(format!("request: {e}"), "request"))?;
    let delivery = std::mem::take(&mut chat.delivery);
    let caller = super::caller::caller(&state, &headers, delivery.user.as_deref());
    let mut run = state.infer.start(chat.into_request(caller)?).await?;

    let (answer, so_far) = match target {
        Target::Answer { parent } => {
            let answer = db
                .message_add(
                    &id,
                    NewMessage {
                        parent_id: Some(parent),
                        role: "assistant".into(),
                        content: String::new(),
                        model: Some(run.model.clone()),
                        sampling: Some(Value::Object(sampling)),
                        state: MessageState::Streaming,
                    },
                )
                .await
                .map_err(thread_error)?;
            (answer.id, Progress::default())
        }
        Target::Continue { answer } => {
            let so_far = Progress {
                content: answer.content.trim_end().to_string(),
                reasoning: answer.reasoning,
                ..Default::default()
            };
            db.message_progress(&answer.id, &so_far, MessageState::Streaming)
                .await
                .map_err(ApiError::internal)?;
            (answer.id, so_far)
        }
    };
    let (tx, rx) = mpsc::channel(64);
    let events = std::mem::replace(&mut run.events, rx);
    tokio::spawn(record(db, answer.clone(), so_far, events, tx));
    let mut response = super::openai::stream_chat(run);
    if let Ok(value) = HeaderValue::from_str(&answer) {
        response.headers_mut().insert(MESSAGE_HEADER, value);
    }
    Ok(response)
}

/// Pass the run's events on to the renderer, writing the answer as it grows; when the renderer
/// is gone (the client left) the events are dropped, which ends the request.
async fn record(
    db: Store,
    id: String,
    mut progress: Progress,
    mut events: mpsc::Receiver<Event>,
    out: mpsc::Sender<Event>,
) {
    let began = Instant::now();
    let mut saved = Instant::now();
    let mut state = MessageState::Interrupted;
    while let Some(event) = events.recv().await {
        let last = match &event {
            Event::Reasoning { text, .. } => {
                progress.reasoning += text;
                false
            }
            Event::Text { text, .. } => {
                progress.content += text;
                false
            }
            Event::Done { usage, .. } => {
                progress.figures = Some(figures(usage, began.elapsed()));
                false
            }
            Event::End { .. } => {
                state = MessageState::Complete;
                true
            }
            Event::Error(e) => {
                progress.error = Some(e.to_string());
                state = MessageState::Error;
                true
            }
        };
        let delivered = out.send(event).await.is_ok();
        if last || !delivered {
            break;
        }
        if saved.elapsed() >= SAVE_EVERY {
            saved = Instant::now();
            if let Err(e) = db
                .message_progress(&id, &progress, MessageState::Streaming)
                .await
            {
                tracing::warn!("thread message {id}: {e}");
            }
        }
    }
    drop(events);
    if let Err(e) = db.message_progress(&id, &progress, state).await {
        tracing::warn!("thread message {id}: {e}");
    }
}

fn target(
    messages: &[Message],
    parent: Option<String>,
    continue_answer: Option<String>,
) -> Result<Target, ApiError> {
    let find = |id: &str, param: &'static str| {
        messages
            .iter()
            .find(|m| m.id == id)
            .ok_or_else(|| ApiError::invalid(format!("no message `{id}` in this thread"), param))
    };
    match (parent, continue_answer) {
        (Some(parent), None) => match find(&parent, "parent")? {
            m if m.role == "user" => Ok(Target::Answer { parent }),
            _ => Err(ApiError::invalid(
                "'parent' is not a user message",
                "parent",
            )),
        },
        (None, Some(id)) => match find(&id, "continue")? {
            m if m.role == "assistant" && m.state != MessageState::Streaming => {
                Ok(Target::Continue {
                    answer: Box::new(m.clone()),
                })
            }
            _ => Err(ApiError::invalid(
                "'continue' names an answer that is not being written",
                "continue",
            )),
        },
        _ => Err(ApiError::invalid(
            "give either 'parent' (the message to answer) or 'continue' (the answer to go on with)",
            "parent",
        )),
    }
}

/// An answer's figures as the Chat page shows them.
fn figures(usage: &Usage, elapsed: Duration) -> Value {
    let decode = usage.decode.as_secs_f64();
    let per_second = (usage.completion_tokens > 1 && decode > 0.0)
        .then(|| (usage.completion_tokens - 1) as f64 / decode);
    json!({
        "prompt_tokens": usage.prompt_tokens,
        "cached_tokens": usage.cached_tokens,
        "completion_tokens": usage.completion_tokens,
        "ttft_ms": usage.time_to_first_token.as_secs_f64() * 1000.0,
        "tokens_per_second": per_second,
        "seconds": elapsed.as_secs_f64(),
        "finish_reason": usage.finish_reason,
    })
}
