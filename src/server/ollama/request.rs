//! Ollama's request fields as the typed request's: `options` (with Ollama's defaults), `format`,
//! messages with `tool_calls` and `tool_name`, and `think`.

use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::{invalid, OllamaError};
use crate::engine::constrain::Grammar;
use crate::engine::template::ChatMessage;
use crate::infer::{OneOrMany, Sampling};

/// `options`: Ollama's sampling settings, by Ollama's names.
#[derive(Debug, Default, Deserialize)]
struct Options {
    temperature: Option<f32>,
    top_p: Option<f32>,
    top_k: Option<i64>,
    min_p: Option<f32>,
    seed: Option<i64>,
    num_predict: Option<i64>,
    num_ctx: Option<i64>,
    stop: Option<Value>,
    repeat_penalty: Option<f32>,
    presence_penalty: Option<f32>,
    frequency_penalty: Option<f32>,
}

/// Ollama's options onto the sampling settings, and `format` as the output's grammar. Ollama's
/// defaults (temperature 0.8, top_k 40, top_p 0.9, repeat_penalty 1.1) hold where the request
/// sets none.
pub(super) fn apply_options(
    sampling: &mut Sampling,
    options: Option<Value>,
    format: Option<Value>,
) -> Result<Option<Grammar>, OllamaError> {
    let o: Options = match options.filter(|v| !v.is_null()) {
        None => Options::default(),
        Some(v) => {
            serde_json::from_value(v).map_err(|e| invalid(format!("`options`: {e}"), "options"))?
        }
    };
    sampling.temperature = Some(o.temperature.unwrap_or(0.8));
    sampling.top_p = Some(o.top_p.unwrap_or(0.9));
    sampling.top_k = Some(o.top_k.unwrap_or(40));
    sampling.repetition_penalty = Some(o.repeat_penalty.unwrap_or(1.1));
    sampling.min_p = o.min_p;
    sampling.seed = o.seed;
    sampling.presence_penalty = o.presence_penalty;
    sampling.frequency_penalty = o.frequency_penalty;
    // -1: until the turn ends; -2: fill the context. Both are the default here.
    match o.num_predict {
        Some(n) if n > 0 => sampling.max_tokens = Some(n),
        Some(-1 | -2) | None => {}
        Some(n) => {
            return Err(invalid(
                format!("`options.num_predict` must be positive, -1 or -2, got {n}"),
                "options",
            ))
        }
    }
    if let Some(n) = o.num_ctx {
        if n < 1 {
            return Err(invalid(
                format!("`options.num_ctx` must be positive, got {n}"),
                "options",
            ));
        }
        sampling.context_limit = Some(n as usize);
    }
    sampling.stop = match o.stop {
        None | Some(Value::Null) => None,
        Some(v) => Some(serde_json::from_value::<OneOrMany>(v).map_err(|_| {
            invalid(
                "`options.stop` must be a string or a list of strings",
                "options",
            )
        })?),
    };
    let as_openai = match format.filter(|v| !v.is_null()) {
        None => return Ok(None),
        Some(Value::String(s)) if s == "json" => json!({"type": "json_object"}),
        Some(Value::String(s)) if s.is_empty() => return Ok(None),
        Some(schema @ Value::Object(_)) => {
            json!({"type": "json_schema", "json_schema": {"name": "format", "schema": schema}})
        }
        Some(other) => {
            return Err(invalid(
                format!("`format` must be \"json\" or a JSON Schema object, got {other}"),
                "format",
            ))
        }
    };
    Ok(crate::server::structured::response_format(
        Some(&as_openai),
        "format",
    )?)
}

/// Ollama's `think`: true, false, or a level (`"high"`, `"medium"`, `"low"`), which a template
/// with `enable_thinking` takes as on. Whether the model thinks at all is checked with its
/// template (a model without thinking refuses `think`, as Ollama does).
pub(super) fn think_flag(think: &Option<Value>) -> Result<Option<bool>, OllamaError> {
    match think {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(Value::String(level)) if matches!(level.as_str(), "high" | "medium" | "low") => {
            Ok(Some(true))
        }
        Some(other) => Err(invalid(
            format!("`think` must be true, false, \"high\", \"medium\" or \"low\", got {other}"),
            "think",
        )),
    }
}

/// Ollama's messages as the template's: `tool_calls` with object arguments, `tool_name` on
/// results; images refused (text only).
pub(super) fn messages(messages: Vec<Map<String, Value>>) -> Result<Vec<ChatMessage>, OllamaError> {
    messages
        .into_iter()
        .enumerate()
        .map(|(i, m)| {
            if m.get("images").is_some_and(|v| !v.is_null()) {
                return Err(invalid(
                    format!("messages[{i}]: images are not supported by this model (text only)"),
                    "messages",
                ));
            }
            let text = |key: &str| m.get(key).and_then(Value::as_str).map(str::to_string);
            let role = text("role").unwrap_or_default();
            let mut message = ChatMessage::new(role.clone(), text("content").unwrap_or_default());
            if m.get("content").is_some_and(|c| !c.is_string() && !c.is_null()) {
                return Err(invalid(format!("messages[{i}].content must be a string"), "messages"));
            }
            if let Some(calls) = m.get("tool_calls").and_then(Value::as_array) {
                message.tool_calls = Some(
                    calls
                        .iter()
                        .map(|c| {
                            let f = &c["function"];
                            let arguments = match &f["arguments"] {
                                Value::String(s) => serde_json::from_str(s).unwrap_or_else(|_| json!(s)),
                                Value::Null => json!({}),
                                other => other.clone(),
                            };
                            json!({"type": "function", "function": {"name": f["name"], "arguments": arguments}})
                        })
                        .collect(),
                );
            }
            if role == "tool" {
                message.name = text("tool_name").or_else(|| text("name"));
            }
            Ok(message)
        })
        .collect()
}
