//! `POST /v1/responses`: OpenAI's Responses API, stateless (`store` is always false).
//!
//! `input` (a string, or message and function-call items), `instructions`, `max_output_tokens`
//! and `text.format` become the one typed request; the inference path's events come back as
//! output items (a message, function calls), or streamed as `response.created` …
//! `response.output_text.delta` … `response.completed` events.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::body::parse_body;
use super::errors::ApiError;
use super::openai::{new_id, now};
use super::AppState;
use crate::engine::template::ChatMessage;
use crate::engine::tools::ToolCall;
use crate::infer::accounting::Totals;
use crate::infer::{Api, Finish, Input, Request};

mod stream;
use stream::stream;

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
    /// Lantern's extension, as on every API: `{"semantic": 0.95}`.
    cache: Option<crate::infer::CacheSpec>,
    /// `effort`: `none` turns a thinking model's reasoning off, any other effort on.
    reasoning: Option<Value>,
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
fn messages(instructions: Option<String>, input: Value) -> Result<Vec<ChatMessage>, ApiError> {
    let mut out = Vec::new();
    if let Some(i) = instructions.filter(|i| !i.is_empty()) {
        out.push(ChatMessage::new("system", i));
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
                let role = match item["role"].as_str() {
                    Some("developer") => "system",
                    Some(r @ ("system" | "user" | "assistant")) => r,
                    Some(other) => {
                        return Err(invalid(
                            format!("{at}.role `{other}` is not one of system, developer, user, assistant"),
                            "input",
                        ))
                    }
                    None => return Err(invalid(format!("{at} needs a `role`"), "input")),
                };
                out.push(ChatMessage::new(role, text_of(&item["content"], &at)?));
            }
            Some("function_call") => {
                let Some(name) = item["name"].as_str() else {
                    return Err(invalid(format!("{at}: a function_call needs its `name`"), "input"));
                };
                let arguments = match &item["arguments"] {
                    Value::String(s) => serde_json::from_str(s).unwrap_or_else(|_| json!(s)),
                    Value::Null => json!({}),
                    other => other.clone(),
                };
                let call = json!({"id": item["call_id"], "type": "function",
                                  "function": {"name": name, "arguments": arguments}});
                match out.last_mut() {
                    Some(last) if last.role == "assistant" && last.tool_calls.is_some() => {
                        last.tool_calls.get_or_insert_with(Vec::new).push(call);
                    }
                    _ => {
                        let mut m = ChatMessage::new("assistant", "");
                        m.tool_calls = Some(vec![call]);
                        out.push(m);
                    }
                }
            }
            Some("function_call_output") => {
                let output = match &item["output"] {
                    Value::String(s) => s.clone(),
                    other => text_of(other, &at)?,
                };
                let mut m = ChatMessage::new("tool", output);
                m.tool_call_id = item["call_id"].as_str().map(str::to_string);
                out.push(m);
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

/// `text.format` as the output's grammar.
fn output_format(
    text: Option<&Value>,
) -> Result<Option<crate::engine::constrain::Grammar>, ApiError> {
    let Some(format) = text.and_then(|t| t.get("format")).filter(|f| !f.is_null()) else {
        return Ok(None);
    };
    let as_chat = match format["type"].as_str() {
        Some("text") => return Ok(None),
        Some("json_object") => json!({"type": "json_object"}),
        Some("json_schema") => json!({"type": "json_schema", "json_schema": {
            "name": format["name"],
            "schema": format.get("schema").cloned().unwrap_or(json!({})),
            "strict": format.get("strict").cloned().unwrap_or(json!(false)),
        }}),
        _ => {
            return Err(invalid(
                "`text.format.type` must be text, json_object or json_schema",
                "text.format",
            ))
        }
    };
    super::structured::response_format(Some(&as_chat), "text.format")
}

/// Responses' flat function tools as the engine's specs.
fn tool_specs(tools: &[Value]) -> Result<Vec<crate::engine::tools::ToolSpec>, ApiError> {
    tools
        .iter()
        .enumerate()
        .map(|(i, t)| match (t["type"].as_str(), t["name"].as_str()) {
            (Some("function"), Some(name)) => Ok(crate::engine::tools::ToolSpec {
                name: name.to_string(),
                description: t["description"].as_str().map(str::to_string),
                parameters: t
                    .get("parameters")
                    .filter(|p| !p.is_null())
                    .cloned()
                    .unwrap_or(json!({"type": "object"})),
                strict: t["strict"].as_bool().unwrap_or(false),
            }),
            (Some("function"), None) => Err(ApiError::invalid(
                format!("tools[{i}] needs a `name`"),
                format!("tools[{i}]"),
            )),
            (other, _) => Err(ApiError::invalid(
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
    effort: Option<String>,
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
            "reasoning": {"effort": self.effort, "summary": null},
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
    let mut usage = json!({
        "input_tokens": totals.prompt,
        "input_tokens_details": {"cached_tokens": totals.cached},
        "output_tokens": totals.completion,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": totals.prompt + totals.completion,
    });
    crate::server::openai::render::cache_note(&mut usage, totals);
    usage
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

/// Calls as `function_call` output items.
fn call_items(calls: &[ToolCall]) -> Vec<Value> {
    calls
        .iter()
        .map(|c| {
            json!({
                "type": "function_call",
                "id": new_id("fc"),
                "call_id": super::tools::call_id(),
                "name": c.name,
                "arguments": c.arguments,
                "status": "completed",
            })
        })
        .collect()
}

/// A thinking model's reasoning as a `reasoning` item (its text whole, as gpt-oss servers give
/// it; no summary).
fn reasoning_item(id: &str, text: &str) -> Value {
    json!({
        "type": "reasoning",
        "id": id,
        "status": "completed",
        "summary": [],
        "content": [{"type": "reasoning_text", "text": text}],
    })
}

/// The output items of an answer: its reasoning when it has any, its text as a message (when
/// it has text, or no calls), then its calls.
fn output_items(reasoning: &str, text: &str, calls: &[ToolCall]) -> Vec<Value> {
    let mut items = Vec::new();
    if !reasoning.is_empty() {
        items.push(reasoning_item(&new_id("rs"), reasoning));
    }
    if !text.is_empty() || calls.is_empty() {
        items.push(message_item(&new_id("msg"), text));
    }
    items.extend(call_items(calls));
    items
}

fn status_of(finish: &Finish) -> &'static str {
    match finish {
        Finish::Length => "incomplete",
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
    let caller = super::caller::caller(&state, &headers, req.user.as_deref());
    let messages = messages(req.instructions.clone(), input)?;
    let mut request = Request::new(
        Api::Responses,
        req.model.clone(),
        Input::Chat(messages),
        caller,
    );
    let tools = req.tools.unwrap_or_default();
    request.tools = tool_specs(&tools)?;
    request.tool_choice = super::tools::choice(req.tool_choice.as_ref())?;
    request.parallel_tool_calls = req.parallel_tool_calls;
    request.output = output_format(req.text.as_ref())?;
    request.output_param = "text.format";
    request.sampling.max_completion_tokens = req.max_output_tokens;
    request.sampling.temperature = req.temperature;
    request.sampling.top_p = req.top_p;
    request.sampling.seed = req.seed;
    request.sampling.cache = req.cache;
    let effort = match req.reasoning.as_ref().map(|r| &r["effort"]) {
        None | Some(Value::Null) => None,
        Some(Value::String(e)) => Some(e.clone()),
        Some(other) => {
            return Err(invalid(
                format!("`reasoning.effort` is a string, got {other}"),
                "reasoning.effort",
            ))
        }
    };
    request.enable_thinking =
        super::openai::wire::thinking_of_effort(effort.as_deref(), "reasoning.effort")?;
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
        effort,
    };
    let mut run = state.infer.start(request).await?;
    let admitted = super::budget::Admitted::of(&run);
    let id = new_id("resp");
    let response = if req.stream {
        stream(run, echo, id)
    } else {
        let (choice, totals) = run.collect_one().await?;
        let output = output_items(&choice.reasoning, &choice.text, &choice.calls);
        let status = status_of(&choice.finish);
        Json(echo.response(&id, now(), status, json!(output), usage_json(&totals))).into_response()
    };
    Ok(admitted.onto(response))
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
                {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": "{\"city\": \"Paris\"}"},
                {"type": "function_call", "call_id": "c2", "name": "get_weather", "arguments": "{}"},
                {"type": "function_call_output", "call_id": "c1", "output": "18C"},
            ]),
        )
        .unwrap();
        assert_eq!(
            (m[0].role.as_str(), m[0].content.as_str()),
            ("system", "Be brief.")
        );
        assert_eq!(m[1].content, "Weather?");
        let calls = m[2].tool_calls.as_ref().unwrap();
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[0]["function"]["arguments"], json!({"city": "Paris"}));
        assert_eq!(m[3].role, "tool");
        assert_eq!(m[3].tool_call_id.as_deref(), Some("c1"));
        assert_eq!(m[3].content, "18C");
        let plain = messages(None, json!("hi")).unwrap();
        assert_eq!(
            (plain[0].role.as_str(), plain[0].content.as_str()),
            ("user", "hi")
        );
        for bad in [
            json!([]),
            json!(3),
            json!([{"type": "image"}]),
            json!([{"content": "x"}]),
            json!([{"role": "robot", "content": "x"}]),
        ] {
            assert!(messages(None, bad.clone()).is_err(), "{bad}");
        }
    }

    #[test]
    fn text_format_is_the_output_grammar() {
        assert_eq!(output_format(None).unwrap(), None);
        let f = json!({"format": {"type": "json_schema", "name": "p", "schema": {"type": "object"}, "strict": true}});
        assert!(matches!(
            output_format(Some(&f)).unwrap(),
            Some(crate::engine::constrain::Grammar::JsonSchema { strict: true, .. })
        ));
        assert!(output_format(Some(&json!({"format": {"type": "yaml"}}))).is_err());
    }
}
