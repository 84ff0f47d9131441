//! Anthropic's Messages request as the one typed request: `system`, `messages` with text,
//! `tool_use` and `tool_result` blocks, `tools` with `input_schema`, `tool_choice`
//! (`auto`/`any`/`tool`/`none`), `stop_sequences`, sampling, `metadata.user_id` as the session.

use serde::Deserialize;
use serde_json::{json, Value};

use crate::engine::template::ChatMessage;
use crate::engine::tools::{ToolChoice, ToolSpec};
use crate::infer::{Api, Caller, Input, OneOrMany, Request};
use crate::server::errors::ApiError;

#[derive(Debug, Deserialize)]
pub struct WireMessage {
    pub role: String,
    pub content: Value,
}

#[derive(Debug, Deserialize)]
pub struct WireTool {
    /// Absent or `custom` for a client's own tools; Anthropic's server tools have other types.
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub name: String,
    pub description: Option<String>,
    pub input_schema: Option<Value>,
}

#[derive(Debug, Deserialize)]
pub struct MessagesBody {
    pub model: String,
    pub max_tokens: Option<i64>,
    pub system: Option<Value>,
    pub messages: Vec<WireMessage>,
    pub tools: Option<Vec<WireTool>>,
    pub tool_choice: Option<Value>,
    pub stop_sequences: Option<Vec<String>>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<i64>,
    pub metadata: Option<Value>,
    #[serde(default)]
    pub stream: bool,
    pub thinking: Option<Value>,
    /// Lantern's extension, as on every API: `{"semantic": 0.95}`.
    pub cache: Option<crate::infer::CacheSpec>,
}

fn invalid(message: impl Into<String>, param: &'static str) -> ApiError {
    ApiError::invalid(message, param)
}

/// A block list's (or a plain string's) text; `at` names it in errors.
fn text_of(content: &Value, at: &str) -> Result<String, ApiError> {
    match content {
        Value::String(s) => Ok(s.clone()),
        Value::Null => Ok(String::new()),
        Value::Array(blocks) => {
            let mut text = String::new();
            for b in blocks {
                match b["type"].as_str() {
                    Some("text") => text.push_str(b["text"].as_str().unwrap_or_default()),
                    other => {
                        return Err(invalid(
                            format!(
                                "{at}: blocks of type `{}` are not supported here (text only)",
                                other.unwrap_or("?")
                            ),
                            "messages",
                        ))
                    }
                }
            }
            Ok(text)
        }
        _ => Err(invalid(
            format!("{at} must be a string or a list of blocks"),
            "messages",
        )),
    }
}

/// One wire message as the template's: a user turn's tool results become tool messages (first,
/// as Anthropic places them), an assistant's `tool_use` blocks its calls.
fn push_message(out: &mut Vec<ChatMessage>, i: usize, m: WireMessage) -> Result<(), ApiError> {
    let at = format!("messages[{i}]");
    let role = match m.role.as_str() {
        r @ ("user" | "assistant") => r,
        other => {
            return Err(invalid(
                format!("{at}.role `{other}` is not one of user, assistant (the system prompt goes in `system`)"),
                "messages",
            ))
        }
    };
    let blocks = match m.content {
        Value::String(s) => {
            out.push(ChatMessage::new(role, s));
            return Ok(());
        }
        Value::Array(blocks) => blocks,
        _ => {
            return Err(invalid(
                format!("{at}.content must be a string or a list of blocks"),
                "messages",
            ))
        }
    };
    let (mut text, mut calls) = (String::new(), Vec::new());
    for (k, b) in blocks.into_iter().enumerate() {
        let at = format!("{at}.content[{k}]");
        match (b["type"].as_str(), role) {
            (Some("text"), _) => text.push_str(b["text"].as_str().unwrap_or_default()),
            // Earlier reasoning is not replayed to a model without it.
            (Some("thinking" | "redacted_thinking"), "assistant") => {}
            (Some("tool_use"), "assistant") => {
                let name = b["name"].as_str().ok_or_else(|| invalid(format!("{at}: a tool_use block needs its `name`"), "messages"))?;
                let input = if b["input"].is_null() { json!({}) } else { b["input"].clone() };
                calls.push(json!({"id": b["id"], "type": "function", "function": {"name": name, "arguments": input}}));
            }
            (Some("tool_result"), "user") => {
                let mut result = text_of(&b["content"], &at)?;
                if b["is_error"].as_bool() == Some(true) {
                    result = format!("Error: {result}");
                }
                let mut tool = ChatMessage::new("tool", result);
                tool.tool_call_id = b["tool_use_id"].as_str().map(str::to_string);
                out.push(tool);
            }
            (kind, _) => {
                return Err(invalid(
                    format!("{at}: blocks of type `{}` are not supported in a {role} message (text, tool_use, tool_result)", kind.unwrap_or("?")),
                    "messages",
                ))
            }
        }
    }
    if !calls.is_empty() {
        let mut message = ChatMessage::new(role, text);
        message.tool_calls = Some(calls);
        out.push(message);
    } else if !text.is_empty() || out.last().is_none_or(|m| m.role != "tool") {
        out.push(ChatMessage::new(role, text));
    }
    Ok(())
}

/// `tool_choice`: `{"type": "auto"|"any"|"none"}` or `{"type": "tool", "name"}`, with
/// `disable_parallel_tool_use`.
fn choice(v: Option<&Value>) -> Result<(ToolChoice, Option<bool>), ApiError> {
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return Ok((ToolChoice::Auto, None));
    };
    let parallel = v["disable_parallel_tool_use"].as_bool().map(|d| !d);
    let choice = match (v["type"].as_str(), v["name"].as_str()) {
        (Some("auto"), _) => ToolChoice::Auto,
        (Some("any"), _) => ToolChoice::Required,
        (Some("none"), _) => ToolChoice::None,
        (Some("tool"), Some(name)) => ToolChoice::Function(name.to_string()),
        _ => {
            return Err(invalid(
                "`tool_choice` is {\"type\": \"auto\"}, {\"type\": \"any\"}, {\"type\": \"none\"} or {\"type\": \"tool\", \"name\": ...}",
                "tool_choice",
            ))
        }
    };
    Ok((choice, parallel))
}

fn tool_specs(tools: Option<Vec<WireTool>>) -> Result<Vec<ToolSpec>, ApiError> {
    tools
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .map(|(i, t)| match t.kind.as_deref() {
            None | Some("custom") => Ok(ToolSpec {
                name: t.name,
                description: t.description,
                parameters: t.input_schema.unwrap_or_else(|| json!({"type": "object"})),
                strict: false,
            }),
            Some(other) => Err(ApiError::invalid(
                format!(
                    "tools[{i}]: server tools of type `{other}` are not available on this server"
                ),
                format!("tools[{i}]"),
            )),
        })
        .collect()
}

impl MessagesBody {
    /// The conversation: `system` first, then the turns.
    fn conversation(&mut self) -> Result<Vec<ChatMessage>, ApiError> {
        let mut out = Vec::new();
        if let Some(system) = self.system.take() {
            let text = text_of(&system, "system")?;
            if !text.is_empty() {
                out.push(ChatMessage::new("system", text));
            }
        }
        for (i, m) in std::mem::take(&mut self.messages).into_iter().enumerate() {
            push_message(&mut out, i, m)?;
        }
        Ok(out)
    }

    /// The end user, for the session.
    pub fn user(&self) -> Option<&str> {
        self.metadata.as_ref()?.get("user_id")?.as_str()
    }

    /// `thinking.budget_tokens`: a positive integer. Anthropic also asks for at least 1024 and
    /// less than `max_tokens`; a local model is let off both (`max_tokens` still ends the answer).
    fn thinking_budget(&self) -> Result<Option<usize>, ApiError> {
        let Some(b) = self.thinking.as_ref().map(|t| &t["budget_tokens"]) else {
            return Ok(None);
        };
        if b.is_null() {
            return Ok(None);
        }
        let param = "thinking.budget_tokens";
        let n = b
            .as_i64()
            .filter(|n| *n >= 1)
            .ok_or_else(|| invalid(format!("`{param}` must be a positive integer"), param))?;
        Ok(Some(n as usize))
    }

    /// The typed request. `counting`: for `count_tokens`, which needs no `max_tokens`.
    pub fn into_request(mut self, caller: Caller, counting: bool) -> Result<Request, ApiError> {
        // Extended thinking is the template's `enable_thinking`; its `budget_tokens` is the
        // engine's thinking budget (the block is closed for the model once it is spent).
        let budget = self.thinking_budget()?;
        let enable_thinking = match self.thinking.as_ref().map(|t| &t["type"]) {
            None => None,
            Some(t) if t == "enabled" => Some(true),
            Some(t) if t == "disabled" => Some(false),
            Some(other) => {
                return Err(invalid(
                    format!("`thinking.type` must be \"enabled\" or \"disabled\", got {other}"),
                    "thinking",
                ))
            }
        };
        let max_tokens = match self.max_tokens {
            Some(n) => Some(n),
            None if counting => None,
            None => return Err(invalid("`max_tokens` is required", "max_tokens")),
        };
        if let Some(t) = self.temperature.filter(|t| !(0.0..=1.0).contains(t)) {
            return Err(invalid(
                format!("`temperature` must be between 0 and 1, got {t}"),
                "temperature",
            ));
        }
        let messages = self.conversation()?;
        // A last assistant message is a prefill: the answer goes on from its text.
        let prefill = messages.last().is_some_and(|m| {
            m.role == "assistant" && m.tool_calls.is_none() && !m.content.trim().is_empty()
        });
        let (tool_choice, parallel) = choice(self.tool_choice.as_ref())?;
        let mut req = Request::new(Api::Messages, self.model, Input::Chat(messages), caller);
        req.enable_thinking = enable_thinking;
        req.thinking_budget = budget.filter(|_| enable_thinking == Some(true));
        req.continue_final = prefill;
        req.tools = tool_specs(self.tools)?;
        req.tool_choice = tool_choice;
        req.parallel_tool_calls = parallel;
        req.sampling.max_tokens = max_tokens;
        req.sampling.temperature = self.temperature;
        req.sampling.top_p = self.top_p;
        req.sampling.top_k = self.top_k;
        req.sampling.stop = self.stop_sequences.map(OneOrMany::Many);
        req.sampling.cache = self.cache;
        Ok(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(v: Value) -> MessagesBody {
        serde_json::from_value(v).unwrap()
    }

    fn caller() -> Caller {
        Caller::test()
    }

    #[test]
    fn blocks_become_the_conversation() {
        let b = body(
            json!({"model": "m", "max_tokens": 10, "system": [{"type": "text", "text": "Be brief."}],
            "messages": [
                {"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "content": [{"type": "text", "text": "Let me look."},
                    {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "18C"},
                    {"type": "text", "text": "And tomorrow?"}]},
            ],
            "tool_choice": {"type": "tool", "name": "get_weather", "disable_parallel_tool_use": true},
            "tools": [{"name": "get_weather", "input_schema": {"type": "object"}}],
            "stop_sequences": ["\n\n"], "metadata": {"user_id": "ada"}}),
        );
        assert_eq!(b.user(), Some("ada"));
        let r = b.into_request(caller(), false).unwrap();
        let Input::Chat(m) = &r.input else {
            panic!("chat")
        };
        let roles: Vec<&str> = m.iter().map(|m| m.role.as_str()).collect();
        assert_eq!(roles, ["system", "user", "assistant", "tool", "user"]);
        assert_eq!(m[2].content, "Let me look.");
        assert_eq!(
            m[2].tool_calls.as_ref().unwrap()[0]["function"]["arguments"],
            json!({"city": "Paris"})
        );
        assert_eq!(m[3].tool_call_id.as_deref(), Some("toolu_1"));
        assert_eq!(m[4].content, "And tomorrow?");
        assert_eq!(r.tool_choice, ToolChoice::Function("get_weather".into()));
        assert_eq!(r.parallel_tool_calls, Some(false));
        assert_eq!(r.sampling.max_tokens, Some(10));
    }

    #[test]
    fn what_is_refused_says_why() {
        for (v, needle) in [
            (
                json!({"model": "m", "messages": [{"role": "user", "content": "x"}]}),
                "max_tokens",
            ),
            (
                json!({"model": "m", "max_tokens": 5, "messages": [{"role": "system", "content": "x"}]}),
                "`system`",
            ),
            (
                json!({"model": "m", "max_tokens": 5, "temperature": 1.5, "messages": [{"role": "user", "content": "x"}]}),
                "temperature",
            ),
            (
                json!({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "image", "source": {}}]}]}),
                "image",
            ),
            (
                json!({"model": "m", "max_tokens": 5, "tool_choice": {"type": "always"}, "messages": [{"role": "user", "content": "x"}]}),
                "tool_choice",
            ),
            (
                json!({"model": "m", "max_tokens": 5, "tools": [{"type": "web_search_20250305", "name": "web_search"}], "messages": [{"role": "user", "content": "x"}]}),
                "server tools",
            ),
            (
                json!({"model": "m", "max_tokens": 5, "thinking": {"type": "sometimes"}, "messages": [{"role": "user", "content": "x"}]}),
                "thinking",
            ),
        ] {
            let e = body(v).into_request(caller(), false).unwrap_err();
            assert!(e.to_string().contains(needle), "{e}");
        }
        let counted = body(json!({"model": "m", "messages": [{"role": "user", "content": "x"}]}));
        assert!(counted.into_request(caller(), true).is_ok());
    }
}
