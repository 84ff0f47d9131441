//! Function calling on the wire: OpenAI's `tools`, `tool_choice`, `parallel_tool_calls`, an
//! assistant's `tool_calls` and `tool` messages in, `tool_calls` out.

use serde::Deserialize;
use serde_json::{json, Value};

use super::errors::ApiError;
use crate::engine::tools::{ToolCall, ToolChoice, ToolSpec};

#[derive(Debug, Deserialize)]
pub struct WireTool {
    #[serde(rename = "type")]
    pub kind: String,
    pub function: Option<WireFunction>,
}

#[derive(Debug, Deserialize)]
pub struct WireFunction {
    pub name: String,
    pub description: Option<String>,
    pub parameters: Option<Value>,
    pub strict: Option<bool>,
}

/// A call an assistant message made earlier in the conversation.
#[derive(Debug, Deserialize)]
pub struct WireToolCall {
    pub id: Option<String>,
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub function: WireCallFunction,
}

#[derive(Debug, Deserialize)]
pub struct WireCallFunction {
    pub name: String,
    /// A JSON string, as OpenAI sends it (Ollama sends an object).
    pub arguments: Option<Value>,
}

/// What a request asked of tools, checked.
#[derive(Debug, Clone)]
pub struct ToolsRequest {
    pub specs: Vec<ToolSpec>,
    pub choice: ToolChoice,
    pub parallel: bool,
}

impl ToolsRequest {
    /// Are calls read out of the answer? Not with `tool_choice: "none"`.
    pub fn parses(&self) -> bool {
        self.choice != ToolChoice::None && !self.specs.is_empty()
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
}

/// Check `tools`, `tool_choice` and `parallel_tool_calls` together.
pub fn tools_request(
    tools: Option<Vec<WireTool>>,
    tool_choice: Option<&Value>,
    parallel: Option<bool>,
) -> Result<Option<ToolsRequest>, ApiError> {
    let tools = tools.unwrap_or_default();
    let mut specs = Vec::with_capacity(tools.len());
    for (i, t) in tools.into_iter().enumerate() {
        let param = format!("tools[{i}]");
        if t.kind != "function" {
            return Err(ApiError::invalid(
                format!(
                    "{param}.type `{}` is not supported (only `function`)",
                    t.kind
                ),
                param,
            ));
        }
        let f = t.function.ok_or_else(|| {
            ApiError::invalid(format!("{param} needs a `function`"), param.clone())
        })?;
        if !valid_name(&f.name) {
            return Err(ApiError::invalid(
                format!(
                    "{param}.function.name `{}` must be 1-64 letters, digits, `_`, `-` or `.`",
                    f.name
                ),
                format!("{param}.function.name"),
            ));
        }
        if specs.iter().any(|s: &ToolSpec| s.name == f.name) {
            return Err(ApiError::invalid(
                format!("two tools are named `{}`", f.name),
                "tools",
            ));
        }
        let parameters = f.parameters.unwrap_or_else(|| json!({"type": "object"}));
        if !parameters.is_object() {
            return Err(ApiError::invalid(
                format!("{param}.function.parameters must be a JSON Schema object"),
                format!("{param}.function.parameters"),
            ));
        }
        specs.push(ToolSpec {
            name: f.name,
            description: f.description,
            parameters,
            strict: f.strict.unwrap_or(false),
        });
    }
    let choice = match tool_choice.filter(|v| !v.is_null()) {
        None => ToolChoice::Auto,
        Some(Value::String(s)) => match s.as_str() {
            "auto" => ToolChoice::Auto,
            "none" => ToolChoice::None,
            "required" => ToolChoice::Required,
            other => {
                return Err(ApiError::invalid(
                    format!("`tool_choice` `{other}` is not one of auto, none, required, or {{\"type\": \"function\", \"function\": {{\"name\": ...}}}}"),
                    "tool_choice",
                ))
            }
        },
        Some(v) => {
            let name = v
                .pointer("/function/name")
                .and_then(Value::as_str)
                .ok_or_else(|| {
                    ApiError::invalid(
                        "`tool_choice` as an object is {\"type\": \"function\", \"function\": {\"name\": ...}}",
                        "tool_choice",
                    )
                })?;
            if !specs.iter().any(|s| s.name == name) {
                return Err(ApiError::invalid(
                    format!("`tool_choice` names `{name}`, which is not in `tools`"),
                    "tool_choice",
                ));
            }
            ToolChoice::Function(name.to_string())
        }
    };
    if specs.is_empty() {
        return match choice {
            ToolChoice::Auto | ToolChoice::None => Ok(None),
            _ => Err(ApiError::invalid(
                "`tool_choice` needs `tools`",
                "tool_choice",
            )),
        };
    }
    Ok(Some(ToolsRequest {
        specs,
        choice,
        parallel: parallel.unwrap_or(true),
    }))
}

/// An earlier call as a template sees it: Hugging Face's shape, `arguments` as an object.
pub fn template_call(i: usize, call: WireToolCall) -> Result<Value, ApiError> {
    if call.kind.as_deref().is_some_and(|k| k != "function") {
        return Err(ApiError::invalid(
            format!("messages[{i}].tool_calls: only calls of type `function` are supported"),
            "messages",
        ));
    }
    let arguments = match call.function.arguments {
        None | Some(Value::Null) => json!({}),
        Some(Value::String(s)) => serde_json::from_str(&s).unwrap_or(Value::String(s)),
        Some(v) => v,
    };
    Ok(json!({
        "id": call.id,
        "type": "function",
        "function": {"name": call.function.name, "arguments": arguments},
    }))
}

/// A stream's text while it may still turn out to be a tool call: held until it is known not to
/// be one (then it flows on as text) or the answer ends (then it is read for calls). Every
/// streaming API (chat, Responses, Ollama) sends its text through one.
#[derive(Debug, Default)]
pub struct CallHold {
    holding: bool,
    held: String,
}

impl CallHold {
    /// `tools`: the request gave tools whose calls are read out of the answer.
    pub fn new(tools: bool) -> Self {
        Self {
            holding: tools,
            held: String::new(),
        }
    }

    /// A piece of text in; the text to send now, if any.
    pub fn push(&mut self, text: String) -> Option<String> {
        if !self.holding {
            return Some(text);
        }
        self.held.push_str(&text);
        if crate::engine::tools::may_be_call(&self.held) {
            return None;
        }
        self.holding = false;
        Some(std::mem::take(&mut self.held))
    }

    /// The answer ended: the held text, when some is left to read for calls.
    pub fn finish(&mut self) -> Option<String> {
        (self.holding && !self.held.is_empty()).then(|| std::mem::take(&mut self.held))
    }
}

fn call_id() -> String {
    format!("call_{:024x}", rand::random::<u128>() >> 32)
}

/// Calls as OpenAI's `message.tool_calls`.
pub fn calls_json(calls: &[ToolCall]) -> Value {
    calls
        .iter()
        .map(|c| {
            json!({
                "id": call_id(),
                "type": "function",
                "function": {"name": c.name, "arguments": c.arguments},
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tool(name: &str) -> WireTool {
        WireTool {
            kind: "function".into(),
            function: Some(WireFunction {
                name: name.into(),
                description: None,
                parameters: Some(json!({"type": "object"})),
                strict: None,
            }),
        }
    }

    #[test]
    fn choices() {
        let r = tools_request(Some(vec![tool("f")]), None, None)
            .unwrap()
            .unwrap();
        assert_eq!(r.choice, ToolChoice::Auto);
        assert!(r.parallel && r.parses());
        let r = tools_request(Some(vec![tool("f")]), Some(&json!("none")), None)
            .unwrap()
            .unwrap();
        assert!(!r.parses());
        let named = json!({"type": "function", "function": {"name": "f"}});
        let r = tools_request(Some(vec![tool("f")]), Some(&named), Some(false))
            .unwrap()
            .unwrap();
        assert_eq!(r.choice, ToolChoice::Function("f".into()));
        assert!(!r.parallel);
        assert!(tools_request(None, None, None).unwrap().is_none());
    }

    #[test]
    fn bad_tools_are_clear_errors() {
        let other = json!({"type": "function", "function": {"name": "g"}});
        for (tools, choice, needle) in [
            (vec![tool("f")], Some(other), "not in `tools`"),
            (vec![tool("f")], Some(json!("always")), "not one of"),
            (vec![tool("f"), tool("f")], None, "two tools"),
            (vec![tool("bad name")], None, "letters"),
            (vec![], Some(json!("required")), "needs `tools`"),
        ] {
            let e = tools_request(Some(tools), choice.as_ref(), None).unwrap_err();
            assert!(e.to_string().contains(needle), "{e}");
        }
    }

    #[test]
    fn text_is_held_only_while_it_may_be_a_call() {
        let mut hold = CallHold::new(true);
        assert_eq!(hold.push("<tool".into()), None);
        assert_eq!(hold.push("_call>".into()), None);
        assert_eq!(hold.finish().as_deref(), Some("<tool_call>"));
        let mut hold = CallHold::new(true);
        assert_eq!(hold.push("{".into()), None);
        assert_eq!(hold.push("Hi".into()), None);
        let mut prose = CallHold::new(true);
        assert_eq!(prose.push("Hello".into()).as_deref(), Some("Hello"));
        assert_eq!(prose.push(" there".into()).as_deref(), Some(" there"));
        assert_eq!(prose.finish(), None);
        assert_eq!(CallHold::new(false).push("{".into()).as_deref(), Some("{"));
    }

    #[test]
    fn earlier_calls_get_object_arguments() {
        let call = WireToolCall {
            id: Some("call_1".into()),
            kind: Some("function".into()),
            function: WireCallFunction {
                name: "f".into(),
                arguments: Some(json!("{\"x\": 1}")),
            },
        };
        let v = template_call(0, call).unwrap();
        assert_eq!(v["function"]["arguments"], json!({"x": 1}));
    }
}
