//! Structured output on the wire: OpenAI's `response_format` (`text`, `json_object`,
//! `json_schema`), and Lantern's `grammar` (llguidance's Lark) and `regex`, turned into the
//! engine's [`Grammar`].

use serde_json::Value;

use super::errors::ApiError;
use crate::engine::constrain::Grammar;

/// The grammar a request's output must match, if it names one. `param` is the field the error
/// names (`response_format`, or `format` on Ollama's API).
pub fn response_format(value: Option<&Value>, param: &str) -> Result<Option<Grammar>, ApiError> {
    let Some(format) = value.filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    let bad = |message: String| ApiError::invalid(message, param.to_string());
    let kind = format.get("type").and_then(Value::as_str).ok_or_else(|| {
        bad(format!(
            "`{param}` needs a `type` (text, json_object or json_schema)"
        ))
    })?;
    match kind {
        "text" => Ok(None),
        "json_object" => Ok(Some(Grammar::JsonObject)),
        "json_schema" => {
            let spec = format.get("json_schema").ok_or_else(|| {
                bad(format!(
                    "`{param}` of type json_schema needs a `json_schema` object"
                ))
            })?;
            let schema = spec.get("schema").cloned().unwrap_or(Value::Bool(true));
            if !schema.is_object() && !schema.is_boolean() {
                return Err(bad(format!(
                    "`{param}.json_schema.schema` must be a JSON Schema object"
                )));
            }
            let strict = spec.get("strict").and_then(Value::as_bool).unwrap_or(false);
            Ok(Some(Grammar::JsonSchema { schema, strict }))
        }
        other => Err(bad(format!(
            "`{param}.type` `{other}` is not one of text, json_object, json_schema"
        ))),
    }
}

/// Lantern's extensions beside `response_format`: a Lark grammar or a regex.
pub fn extension(
    grammar: Option<String>,
    regex: Option<String>,
) -> Result<Option<Grammar>, ApiError> {
    match (grammar, regex) {
        (Some(_), Some(_)) => Err(ApiError::invalid(
            "give `grammar` or `regex`, not both",
            "grammar",
        )),
        (Some(g), None) if g.trim().is_empty() => {
            Err(ApiError::invalid("`grammar` is empty", "grammar"))
        }
        (Some(g), None) => Ok(Some(Grammar::Lark(g))),
        (None, Some(r)) => Ok(Some(Grammar::Regex(r))),
        (None, None) => Ok(None),
    }
}

/// At most one of the ways to constrain the output.
pub fn one_of(
    format: Option<Grammar>,
    extension: Option<Grammar>,
) -> Result<Option<Grammar>, ApiError> {
    match (format, extension) {
        (Some(_), Some(_)) => Err(ApiError::invalid(
            "give `response_format` or `grammar`/`regex`, not both",
            "response_format",
        )),
        (a, b) => Ok(a.or(b)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn openai_shapes() {
        assert_eq!(response_format(None, "response_format").unwrap(), None);
        assert_eq!(
            response_format(Some(&json!({"type": "text"})), "response_format").unwrap(),
            None
        );
        assert_eq!(
            response_format(Some(&json!({"type": "json_object"})), "response_format").unwrap(),
            Some(Grammar::JsonObject)
        );
        let g = response_format(
            Some(&json!({"type": "json_schema", "json_schema": {"name": "x", "strict": true, "schema": {"type": "object"}}})),
            "response_format",
        )
        .unwrap();
        assert_eq!(
            g,
            Some(Grammar::JsonSchema {
                schema: json!({"type": "object"}),
                strict: true
            })
        );
        for bad in [
            json!({"type": "yaml"}),
            json!({}),
            json!({"type": "json_schema"}),
            json!({"type": "json_schema", "json_schema": {"schema": 3}}),
        ] {
            let e = response_format(Some(&bad), "response_format").unwrap_err();
            assert!(e.to_string().contains("response_format"), "{bad}: {e}");
        }
    }

    #[test]
    fn one_way_at_a_time() {
        assert!(extension(Some("start: \"a\"".into()), Some("a".into())).is_err());
        assert!(extension(Some(" ".into()), None).is_err());
        assert_eq!(
            extension(None, Some("[0-9]+".into())).unwrap(),
            Some(Grammar::Regex("[0-9]+".into()))
        );
        assert!(one_of(Some(Grammar::JsonObject), Some(Grammar::Regex("a".into()))).is_err());
    }
}
