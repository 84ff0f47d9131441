//! Ollama's request fields as the OpenAI ones the shared validation reads: `options` (with
//! Ollama's defaults), `format`, messages with `tool_calls` and `tool_name`, and `think`.

use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::{invalid, OllamaError};

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

/// Ollama's options and format as the OpenAI fields they mean, onto `body`. Ollama's defaults
/// (temperature 0.8, top_k 40, top_p 0.9, repeat_penalty 1.1) hold where the request sets none.
pub(super) fn apply_options(
    body: &mut Map<String, Value>,
    options: Option<Value>,
    format: Option<Value>,
) -> Result<(), OllamaError> {
    let o: Options = match options.filter(|v| !v.is_null()) {
        None => Options::default(),
        Some(v) => {
            serde_json::from_value(v).map_err(|e| invalid(format!("`options`: {e}"), "options"))?
        }
    };
    let mut set = |k: &str, v: Value| {
        body.insert(k.into(), v);
    };
    set("temperature", json!(o.temperature.unwrap_or(0.8)));
    set("top_p", json!(o.top_p.unwrap_or(0.9)));
    set("top_k", json!(o.top_k.unwrap_or(40)));
    set("repetition_penalty", json!(o.repeat_penalty.unwrap_or(1.1)));
    if let Some(v) = o.min_p {
        set("min_p", json!(v));
    }
    if let Some(v) = o.seed {
        set("seed", json!(v));
    }
    if let Some(v) = o.presence_penalty {
        set("presence_penalty", json!(v));
    }
    if let Some(v) = o.frequency_penalty {
        set("frequency_penalty", json!(v));
    }
    // -1: until the turn ends; -2: fill the context. Both are the default here.
    match o.num_predict {
        Some(n) if n > 0 => set("max_tokens", json!(n)),
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
        set("context_limit", json!(n));
    }
    if let Some(stop) = o.stop {
        set("stop", stop);
    }
    match format.filter(|v| !v.is_null()) {
        None => {}
        Some(Value::String(s)) if s == "json" => {
            set("response_format", json!({"type": "json_object"}));
        }
        Some(Value::String(s)) if s.is_empty() => {}
        Some(schema @ Value::Object(_)) => {
            set(
                "response_format",
                json!({"type": "json_schema", "json_schema": {"name": "format", "schema": schema}}),
            );
        }
        Some(other) => {
            return Err(invalid(
                format!("`format` must be \"json\" or a JSON Schema object, got {other}"),
                "format",
            ))
        }
    }
    Ok(())
}

/// A model without thinking says so, as Ollama does, rather than ignoring `think`.
pub(super) fn refuse_think(think: &Option<Value>, model: &str) -> Result<(), OllamaError> {
    match think {
        None | Some(Value::Null) | Some(Value::Bool(false)) => Ok(()),
        Some(_) => Err(invalid(
            format!("\"{model}\" does not support thinking"),
            "think",
        )),
    }
}

/// Ollama's messages as OpenAI's: `tool_calls` with object arguments, `tool_name` on results.
pub(super) fn openai_messages(
    messages: Vec<Map<String, Value>>,
) -> Result<Vec<Value>, OllamaError> {
    messages
        .into_iter()
        .enumerate()
        .map(|(i, mut m)| {
            if m.get("images").is_some_and(|v| !v.is_null()) {
                return Err(invalid(
                    format!("messages[{i}]: images are not supported by this model (text only)"),
                    "messages",
                ));
            }
            m.remove("images");
            m.remove("thinking");
            if let Some(name) = m.remove("tool_name") {
                m.insert("name".into(), name);
            }
            if m.get("role").and_then(Value::as_str) == Some("assistant")
                && m.get("content").is_none()
            {
                m.insert("content".into(), json!(""));
            }
            Ok(Value::Object(m))
        })
        .collect()
}
