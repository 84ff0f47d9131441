//! Request bodies: every JSON body of the API is parsed here, so every kind of failure gets the
//! same OpenAI-shaped answer.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use super::errors::ApiError;

/// Parse a JSON body, turning every kind of failure into an OpenAI-shaped 400 or 413.
pub fn parse_body<T: DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
    limit: usize,
) -> Result<T, ApiError> {
    let bytes = body.map_err(|e| {
        if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge(limit)
        } else {
            ApiError::invalid(e.body_text(), "body")
        }
    })?;
    serde_json::from_slice(&bytes).map_err(|e| ApiError::InvalidRequest {
        message: format!("Invalid request body: {e}"),
        param: None,
        code: None,
    })
}

/// A `PUT` body over what is stored: a JSON merge patch (RFC 7396). Fields left out keep their
/// stored values, objects merge field by field, and `null` puts a field back to its default, so
/// a body that omits a field never silently resets it.
pub fn parse_patch<T: Serialize + DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
    limit: usize,
    current: &T,
) -> Result<T, ApiError> {
    let patch: Value = parse_body(body, limit)?;
    if !patch.is_object() {
        return Err(ApiError::invalid(
            "The body must be a JSON object of the fields to change",
            "body",
        ));
    }
    let mut merged = serde_json::to_value(current).map_err(ApiError::internal)?;
    merge(&mut merged, patch);
    serde_json::from_value(merged).map_err(|e| ApiError::InvalidRequest {
        message: format!("Invalid request body: {e}"),
        param: None,
        code: None,
    })
}

fn merge(target: &mut Value, patch: Value) {
    match (target, patch) {
        (Value::Object(target), Value::Object(patch)) => {
            for (key, value) in patch {
                if value.is_null() {
                    target.remove(&key);
                } else {
                    merge(target.entry(key).or_insert(Value::Null), value);
                }
            }
        }
        (target, patch) => *target = patch,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[derive(Debug, PartialEq, Serialize, serde::Deserialize)]
    #[serde(default, deny_unknown_fields)]
    struct S {
        a: u32,
        b: Vec<String>,
        inner: Inner,
        opt: Option<u32>,
    }
    #[derive(Debug, PartialEq, Serialize, serde::Deserialize)]
    #[serde(default)]
    struct Inner {
        x: u32,
        y: u32,
    }
    impl Default for S {
        fn default() -> Self {
            Self {
                a: 1,
                b: vec![],
                inner: Inner::default(),
                opt: None,
            }
        }
    }
    impl Default for Inner {
        fn default() -> Self {
            Self { x: 10, y: 20 }
        }
    }

    fn patch(stored: &S, body: Value) -> Result<S, ApiError> {
        parse_patch(Ok(Bytes::from(body.to_string())), 1 << 20, stored)
    }

    #[test]
    fn left_out_fields_keep_their_values() {
        let stored = S {
            a: 7,
            b: vec!["k".into()],
            inner: Inner { x: 1, y: 2 },
            opt: Some(3),
        };
        assert_eq!(patch(&stored, json!({})).unwrap(), stored);
        let changed = patch(&stored, json!({"inner": {"y": 5}})).unwrap();
        assert_eq!(changed.inner, Inner { x: 1, y: 5 });
        assert_eq!((changed.a, changed.opt), (7, Some(3)));
        let reset = patch(&stored, json!({"a": null, "opt": null})).unwrap();
        assert_eq!((reset.a, reset.opt, reset.b.len()), (1, None, 1));
        assert!(patch(&stored, json!({"nope": 1})).is_err());
        assert!(patch(&stored, json!([1])).is_err());
        assert!(patch(&stored, json!({"a": "x"})).is_err());
    }
}
