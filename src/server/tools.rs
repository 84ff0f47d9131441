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

/// OpenAI's `tools` as the engine's specs (names and schemas are checked on the one path).
pub fn specs(tools: Option<Vec<WireTool>>) -> Result<Vec<ToolSpec>, ApiError> {
    tools
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .map(|(i, t)| {
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
            let f = t
                .function
                .ok_or_else(|| ApiError::invalid(format!("{param} needs a `function`"), param))?;
            Ok(ToolSpec {
                name: f.name,
                description: f.description,
                parameters: f.parameters.unwrap_or_else(|| json!({"type": "object"})),
                strict: f.strict.unwrap_or(false),
            })
        })
        .collect()
}

/// OpenAI's `tool_choice`: `auto`, `none`, `required`, or `{"type": "function", "function":
/// {"name": ...}}` (the Responses API's flat `{"type": "function", "name": ...}` too).
pub fn choice(tool_choice: Option<&Value>) -> Result<ToolChoice, ApiError> {
    Ok(match tool_choice.filter(|v| !v.is_null()) {
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
                .or_else(|| v.get("name"))
                .and_then(Value::as_str)
                .ok_or_else(|| {
                    ApiError::invalid(
                        "`tool_choice` as an object is {\"type\": \"function\", \"function\": {\"name\": ...}}",
                        "tool_choice",
                    )
                })?;
            ToolChoice::Function(name.to_string())
        }
    })
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

/// A fresh call id, as OpenAI writes them.
pub fn call_id() -> String {
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

    #[test]
    fn choices_and_tools_from_the_wire() {
        assert_eq!(choice(None).unwrap(), ToolChoice::Auto);
        assert_eq!(choice(Some(&json!("none"))).unwrap(), ToolChoice::None);
        let named = json!({"type": "function", "function": {"name": "f"}});
        assert_eq!(
            choice(Some(&named)).unwrap(),
            ToolChoice::Function("f".into())
        );
        let flat = json!({"type": "function", "name": "f"});
        assert_eq!(
            choice(Some(&flat)).unwrap(),
            ToolChoice::Function("f".into())
        );
        assert!(choice(Some(&json!("always"))).is_err());
        assert!(choice(Some(&json!({"type": "function"}))).is_err());
        let bad = WireTool {
            kind: "retrieval".into(),
            function: None,
        };
        assert!(specs(Some(vec![bad])).is_err());
        assert!(specs(None).unwrap().is_empty());
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
