//! `POST /v1/responses`: OpenAI's Responses API, stateless (`store` is always false).
//!
//! `input` (a string, or message and function-call items), `instructions`, `max_output_tokens`
//! and `text.format` become a chat request and go through the same validation, cache,
//! scheduler and accounting; the answer comes back as output items (a message, or function
//! calls), or streamed as `response.created` … `response.output_text.delta` …
//! `response.completed` events.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::Event;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use tokio::sync::mpsc;

use super::accounting::{finish, Api, Outcome, Totals};
use super::body::parse_body;
use super::errors::ApiError;
use super::openai::{chat_message, collect, new_id, now, plan_chat, start, Collected, Started};
use super::validate::ChatRequest;
use super::AppState;
use crate::engine::generate::FinishReason;
use crate::scheduler::{GenEvent, Usage};

#[derive(Debug, Deserialize)]
struct ResponsesBody {
    model: String,
    input: Option<Value>,
    instructions: Option<String>,
    max_output_tokens: Option<i64>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    text: Option<Value>,
    tools: Option<Vec<Value>>,
    tool_choice: Option<Value>,
    parallel_tool_calls: Option<bool>,
    #[serde(default)]
    stream: bool,
    store: Option<bool>,
    previous_response_id: Option<String>,
    metadata: Option<Value>,
    user: Option<String>,
    /// Lantern's extension, as on chat: a seed makes the answer repeat.
    seed: Option<i64>,
}

fn invalid(message: impl Into<String>, param: &'static str) -> ApiError {
    ApiError::invalid(message, param)
}

/// A message's content: a string, or parts of which text ones are taken.
fn text_of(content: &Value, at: &str) -> Result<String, ApiError> {
    match content {
        Value::String(s) => Ok(s.clone()),
        Value::Array(parts) => {
            let mut text = String::new();
            for p in parts {
                match (p["type"].as_str(), p["text"].as_str()) {
                    (Some("input_text" | "output_text" | "text"), Some(t)) => text.push_str(t),
                    (kind, _) => {
                        return Err(invalid(
                            format!(
                                "{at}: content parts of type `{}` are not supported (text only)",
                                kind.unwrap_or("?")
                            ),
                            "input",
                        ))
                    }
                }
            }
            Ok(text)
        }
        _ => Err(invalid(
            format!("{at}.content must be a string or a list of parts"),
            "input",
        )),
    }
}

/// `input` items as chat messages: messages by role, `function_call` items as an assistant's
/// calls (consecutive ones together), `function_call_output` items as tool results.
fn messages(instructions: Option<String>, input: Value) -> Result<Vec<Value>, ApiError> {
    let mut out = Vec::new();
    if let Some(i) = instructions.filter(|i| !i.is_empty()) {
        out.push(json!({"role": "system", "content": i}));
    }
    let items = match input {
        Value::String(s) => vec![json!({"role": "user", "content": s})],
        Value::Array(items) if !items.is_empty() => items,
        _ => {
            return Err(invalid(
                "`input` must be a string or a non-empty list of items",
                "input",
            ))
        }
    };
    for (i, item) in items.into_iter().enumerate() {
        let at = format!("input[{i}]");
        match item["type"].as_str() {
            None | Some("message") => {
                let role = item["role"].as_str().ok_or_else(|| {
                    invalid(format!("{at} needs a `role`"), "input")
                })?;
                out.push(json!({"role": role, "content": text_of(&item["content"], &at)?}));
            }
            Some("function_call") => {
                let call = json!({
                    "id": item["call_id"],
                    "type": "function",
                    "function": {"name": item["name"], "arguments": item["arguments"]},
                });
                if item["name"].as_str().is_none() {
                    return Err(invalid(format!("{at}: a function_call needs its `name`"), "input"));
                }
                match out.last_mut() {
                    Some(last) if last["role"] == "assistant" && last.get("tool_calls").is_some() => {
                        last["tool_calls"].as_array_mut().expect("an array").push(call);
                    }
                    _ => out.push(json!({"role": "assistant", "content": null, "tool_calls": [call]})),
                }
            }
            Some("function_call_output") => {
                let output = match &item["output"] {
                    Value::String(s) => s.clone(),
                    other => text_of(other, &at)?,
                };
                out.push(json!({"role": "tool", "tool_call_id": item["call_id"], "content": output}));
            }
            Some(other) => {
                return Err(invalid(
                    format!("{at}: items of type `{other}` are not supported (message, function_call, function_call_output)"),
                    "input",
                ))
            }
        }
    }
    Ok(out)
}

/// `text.format` as chat's `response_format`.
fn response_format(text: Option<&Value>) -> Result<Option<Value>, ApiError> {
    let Some(format) = text.and_then(|t| t.get("format")).filter(|f| !f.is_null()) else {
        return Ok(None);
    };
    Ok(match format["type"].as_str() {
        Some("text") => None,
        Some("json_object") => Some(json!({"type": "json_object"})),
        Some("json_schema") => Some(json!({"type": "json_schema", "json_schema": {
            "name": format["name"],
            "schema": format.get("schema").cloned().unwrap_or(json!({})),
            "strict": format.get("strict").cloned().unwrap_or(json!(false)),
        }})),
        _ => {
            return Err(invalid(
                "`text.format.type` must be text, json_object or json_schema",
                "text.format",
            ))
        }
    })
}

/// Responses' flat function tools as chat's nested ones.
fn chat_tools(tools: Vec<Value>) -> Result<Vec<Value>, ApiError> {
    tools
        .into_iter()
        .enumerate()
        .map(|(i, t)| match t["type"].as_str() {
            Some("function") => Ok(json!({"type": "function", "function": {
                "name": t["name"],
                "description": t.get("description"),
                "parameters": t.get("parameters"),
                "strict": t.get("strict"),
            }})),
            other => Err(ApiError::invalid(
                format!(
                    "tools[{i}].type `{}` is not supported (only `function`)",
                    other.unwrap_or("?")
                ),
                format!("tools[{i}]"),
            )),
        })
        .collect()
}

/// What the response object repeats of its request.
struct Echo {
    model: String,
    instructions: Option<String>,
    max_output_tokens: Option<i64>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    text: Value,
    tools: Value,
    tool_choice: Value,
    parallel_tool_calls: bool,
    metadata: Value,
}

impl Echo {
    fn response(&self, id: &str, created: u64, status: &str, output: Value, usage: Value) -> Value {
        json!({
            "id": id,
            "object": "response",
            "created_at": created,
            "status": status,
            "error": null,
            "incomplete_details": if status == "incomplete" { json!({"reason": "max_output_tokens"}) } else { Value::Null },
            "instructions": self.instructions,
            "max_output_tokens": self.max_output_tokens,
            "model": self.model,
            "output": output,
            "parallel_tool_calls": self.parallel_tool_calls,
            "previous_response_id": null,
            "reasoning": {"effort": null, "summary": null},
            "store": false,
            "temperature": self.temperature.unwrap_or(1.0),
            "text": self.text,
            "tool_choice": self.tool_choice,
            "tools": self.tools,
            "top_p": self.top_p.unwrap_or(1.0),
            "truncation": "disabled",
            "usage": usage,
            "user": null,
            "metadata": self.metadata,
        })
    }
}

fn usage_json(totals: &Totals) -> Value {
    json!({
        "input_tokens": totals.prompt,
        "input_tokens_details": {"cached_tokens": totals.cached},
        "output_tokens": totals.completion,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": totals.prompt + totals.completion,
    })
}

fn message_item(id: &str, text: &str) -> Value {
    json!({
        "type": "message",
        "id": id,
        "status": "completed",
        "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": []}],
    })
}

/// The output items of an answer: function calls when it made any (with its text, if some,
/// as a message first), else one message.
fn output_items(text: String, started: &Started, finish: FinishReason) -> Vec<Value> {
    let (message, _) = chat_message(text, started.plan.tools.as_ref(), finish);
    let mut items = Vec::new();
    let content = message["content"].as_str().unwrap_or_default();
    let calls = message["tool_calls"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if !content.is_empty() || calls.is_empty() {
        items.push(message_item(&new_id("msg"), content));
    }
    for c in calls {
        items.push(json!({
            "type": "function_call",
            "id": new_id("fc"),
            "call_id": c["id"],
            "name": c["function"]["name"],
            "arguments": c["function"]["arguments"],
            "status": "completed",
        }));
    }
    items
}

fn status_of(usage: &Usage) -> &'static str {
    match usage.finish_reason {
        FinishReason::Length => "incomplete",
        _ => "completed",
    }
}

pub async fn responses(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let req: ResponsesBody = parse_body(body, state.body_limit)?;
    if req.previous_response_id.is_some() {
        return Err(invalid(
            "`previous_response_id` needs stored responses, and this server stores none (`store` is always false): send the whole conversation in `input`",
            "previous_response_id",
        ));
    }
    let _ = req.store;
    let input = req
        .input
        .ok_or_else(|| invalid("`input` is required", "input"))?;
    let mut chat = Map::new();
    chat.insert("model".into(), json!(req.model));
    chat.insert(
        "messages".into(),
        Value::Array(messages(req.instructions.clone(), input)?),
    );
    if let Some(n) = req.max_output_tokens {
        chat.insert("max_completion_tokens".into(), json!(n));
    }
    for (key, value) in [
        ("temperature", req.temperature.map(|v| json!(v))),
        ("top_p", req.top_p.map(|v| json!(v))),
        ("seed", req.seed.map(|v| json!(v))),
        ("user", req.user.map(|v| json!(v))),
        ("response_format", response_format(req.text.as_ref())?),
        (
            "tool_choice",
            req.tool_choice.clone().map(|c| match c {
                // Responses names a function flat: {"type": "function", "name": ...}.
                Value::Object(o) if o.contains_key("name") => {
                    json!({"type": "function", "function": {"name": o["name"]}})
                }
                other => other,
            }),
        ),
        (
            "parallel_tool_calls",
            req.parallel_tool_calls.map(|v| json!(v)),
        ),
    ] {
        if let Some(v) = value {
            chat.insert(key.into(), v);
        }
    }
    let tools = req.tools.unwrap_or_default();
    if !tools.is_empty() {
        chat.insert("tools".into(), Value::Array(chat_tools(tools.clone())?));
    }
    let chat: ChatRequest = serde_json::from_value(Value::Object(chat))
        .map_err(|e| invalid(format!("Invalid request body: {e}"), "input"))?;
    let echo = Echo {
        model: req.model,
        instructions: req.instructions,
        max_output_tokens: req.max_output_tokens,
        temperature: req.temperature,
        top_p: req.top_p,
        text: req.text.unwrap_or(json!({"format": {"type": "text"}})),
        tools: Value::Array(tools),
        tool_choice: req.tool_choice.unwrap_or(json!("auto")),
        parallel_tool_calls: req.parallel_tool_calls.unwrap_or(true),
        metadata: req.metadata.unwrap_or(json!({})),
    };
    let planned = plan_chat(&state, &headers, chat).await?;
    if planned.plan.n != 1 {
        return Err(invalid("the Responses API gives one answer", "input"));
    }
    let admitted = planned.admitted;
    let started = start(
        &state,
        planned.engine,
        planned.plan,
        Api::Chat,
        planned.session,
        &headers,
    )?;
    let id = new_id("resp");
    let response = if req.stream {
        stream(started, echo, id)
    } else {
        let Collected {
            started,
            mut choices,
            totals,
            ..
        } = collect(started).await?;
        let choice = choices
            .pop()
            .ok_or_else(|| ApiError::internal("no choice"))?;
        let status = status_of(&choice.usage);
        let output = output_items(choice.text, &started, choice.usage.finish_reason);
        Json(echo.response(&id, now(), status, json!(output), usage_json(&totals))).into_response()
    };
    Ok(admitted.onto(response))
}

/// Named SSE events, each with its `type` and a rising `sequence_number`.
struct Events {
    tx: mpsc::Sender<Event>,
    sequence: u64,
}

impl Events {
    async fn send(&mut self, kind: &str, mut data: Value) -> bool {
        data["type"] = json!(kind);
        data["sequence_number"] = json!(self.sequence);
        self.sequence += 1;
        self.tx
            .send(Event::default().event(kind).data(data.to_string()))
            .await
            .is_ok()
    }
}

fn stream(mut started: Started, echo: Echo, id: String) -> Response {
    let (tx, rx) = mpsc::channel::<Event>(64);
    let created = now();
    tokio::spawn(async move {
        let account = started.account.clone();
        let limit = started.limit;
        let Some(mut events) = started.streams.pop() else {
            return;
        };
        let mut out = Events { tx, sequence: 0 };
        let produce = async {
            let mut totals = Totals {
                from_cache: started.from_cache,
                ..Totals::default()
            };
            let shell = echo.response(&id, created, "in_progress", json!([]), Value::Null);
            if !out
                .send("response.created", json!({"response": shell}))
                .await
                || !out
                    .send("response.in_progress", json!({"response": shell}))
                    .await
            {
                return finish(&account, &totals, None, Outcome::Cancelled);
            }
            // With tools, text is held until it is known not to be a call, as on chat.
            let mut hold = super::tools::CallHold::new(started.plan.tools.is_some());
            let (mut text, mut opened) = (String::new(), false);
            let msg_id = new_id("msg");
            let mut streamed = 0;
            while let Some(event) = events.recv().await {
                match event {
                    GenEvent::Token { .. } => streamed += 1,
                    GenEvent::Text(piece) => {
                        let Some(piece) = hold.push(piece) else {
                            continue;
                        };
                        if !opened {
                            opened = true;
                            let item = json!({"type": "message", "id": msg_id, "status": "in_progress", "role": "assistant", "content": []});
                            let part =
                                json!({"type": "output_text", "text": "", "annotations": []});
                            if !out.send("response.output_item.added", json!({"output_index": 0, "item": item})).await
                                || !out.send("response.content_part.added", json!({"item_id": msg_id, "output_index": 0, "content_index": 0, "part": part})).await
                            {
                                break;
                            }
                        }
                        text.push_str(&piece);
                        let delta = json!({"item_id": msg_id, "output_index": 0, "content_index": 0, "delta": piece, "logprobs": []});
                        if !out.send("response.output_text.delta", delta).await {
                            break;
                        }
                    }
                    GenEvent::Done(usage) => {
                        totals.add(0, 1, &usage);
                        let items = if opened {
                            vec![message_item(&msg_id, &text)]
                        } else {
                            output_items(
                                hold.finish().unwrap_or_default(),
                                &started,
                                usage.finish_reason,
                            )
                        };
                        if opened {
                            let part =
                                json!({"type": "output_text", "text": text, "annotations": []});
                            out.send("response.output_text.done", json!({"item_id": msg_id, "output_index": 0, "content_index": 0, "text": text, "logprobs": []})).await;
                            out.send("response.content_part.done", json!({"item_id": msg_id, "output_index": 0, "content_index": 0, "part": part})).await;
                            out.send(
                                "response.output_item.done",
                                json!({"output_index": 0, "item": items[0]}),
                            )
                            .await;
                        } else {
                            for (index, item) in items.iter().enumerate() {
                                announce(&mut out, index, item).await;
                            }
                        }
                        let whole = echo.response(
                            &id,
                            created,
                            status_of(&usage),
                            json!(items),
                            usage_json(&totals),
                        );
                        let kind = if status_of(&usage) == "completed" {
                            "response.completed"
                        } else {
                            "response.incomplete"
                        };
                        out.send(kind, json!({"response": whole})).await;
                        return finish(&account, &totals, Some(&usage), Outcome::Ok);
                    }
                    GenEvent::Failed(message) => {
                        let error = ApiError::Internal {
                            request_id: new_id("req"),
                            message: message.clone(),
                        };
                        out.send("error", json!({"code": "server_error", "message": error.to_string(), "param": null})).await;
                        return finish(&account, &totals, None, Outcome::Error(message));
                    }
                }
            }
            totals.completion = streamed;
            finish(&account, &totals, None, Outcome::Cancelled)
        };
        if tokio::time::timeout(limit, produce).await.is_err() {
            finish(&account, &Totals::default(), None, Outcome::Timeout);
        }
    });
    super::sse::events(rx)
}

/// A finished item streamed whole: added, its arguments or text, done.
async fn announce(out: &mut Events, index: usize, item: &Value) {
    let id = item["id"].clone();
    if item["type"] == "function_call" {
        let mut opening = item.clone();
        opening["arguments"] = json!("");
        opening["status"] = json!("in_progress");
        out.send(
            "response.output_item.added",
            json!({"output_index": index, "item": opening}),
        )
        .await;
        out.send(
            "response.function_call_arguments.delta",
            json!({"item_id": id, "output_index": index, "delta": item["arguments"]}),
        )
        .await;
        out.send("response.function_call_arguments.done", json!({"item_id": id, "output_index": index, "name": item["name"], "arguments": item["arguments"]})).await;
    } else {
        let text = item["content"][0]["text"].clone();
        let mut opening = item.clone();
        opening["content"] = json!([]);
        opening["status"] = json!("in_progress");
        let part = json!({"type": "output_text", "text": text, "annotations": []});
        out.send(
            "response.output_item.added",
            json!({"output_index": index, "item": opening}),
        )
        .await;
        out.send("response.content_part.added", json!({"item_id": id, "output_index": index, "content_index": 0, "part": {"type": "output_text", "text": "", "annotations": []}})).await;
        out.send("response.output_text.delta", json!({"item_id": id, "output_index": index, "content_index": 0, "delta": text, "logprobs": []})).await;
        out.send("response.output_text.done", json!({"item_id": id, "output_index": index, "content_index": 0, "text": text, "logprobs": []})).await;
        out.send(
            "response.content_part.done",
            json!({"item_id": id, "output_index": index, "content_index": 0, "part": part}),
        )
        .await;
    }
    out.send(
        "response.output_item.done",
        json!({"output_index": index, "item": item}),
    )
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_items_become_messages() {
        let m = messages(
            Some("Be brief.".into()),
            json!([
                {"role": "user", "content": [{"type": "input_text", "text": "Weather?"}]},
                {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": "{}"},
                {"type": "function_call", "call_id": "c2", "name": "get_weather", "arguments": "{}"},
                {"type": "function_call_output", "call_id": "c1", "output": "18C"},
            ]),
        )
        .unwrap();
        assert_eq!(m[0], json!({"role": "system", "content": "Be brief."}));
        assert_eq!(m[1]["content"], "Weather?");
        assert_eq!(m[2]["tool_calls"].as_array().unwrap().len(), 2);
        assert_eq!(
            m[3],
            json!({"role": "tool", "tool_call_id": "c1", "content": "18C"})
        );
        assert_eq!(
            messages(None, json!("hi")).unwrap(),
            vec![json!({"role": "user", "content": "hi"})]
        );
        for bad in [
            json!([]),
            json!(3),
            json!([{"type": "image"}]),
            json!([{"content": "x"}]),
        ] {
            assert!(messages(None, bad.clone()).is_err(), "{bad}");
        }
    }

    #[test]
    fn text_format_is_response_format() {
        assert_eq!(response_format(None).unwrap(), None);
        let f = json!({"format": {"type": "json_schema", "name": "p", "schema": {"type": "object"}, "strict": true}});
        assert_eq!(
            response_format(Some(&f)).unwrap().unwrap()["json_schema"]["strict"],
            json!(true)
        );
        assert!(response_format(Some(&json!({"format": {"type": "yaml"}}))).is_err());
    }
}
