//! `POST /v1/embeddings` as OpenAI shapes it: `input` as a string, a list of strings, a list of
//! token ids or a list of such lists; `encoding_format` float or base64 (the official SDK asks
//! for base64); `dimensions` only when it is the model's own. Texts past the model's window are
//! cut (and listed in `truncated_inputs`) unless the request says `"truncate": false`. Vectors
//! come from the embedding cache where it has them (`cache` tells how many from where). A remote
//! model's (`NAME/MODEL`) come from its engine, through the same cache (`remote`).

mod remote;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::Json;
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{json, Value};

use super::body::parse_body;
use super::errors::ApiError;
use super::AppState;
use crate::engine::models::bert::EmbedError;
use crate::scheduler::embedder::EmbedderError;
use crate::store::embeddings::ModelKey;
use crate::store::requests::RequestRow;

/// OpenAI's own bound on inputs per request.
pub const MAX_INPUTS: usize = 2048;

#[derive(Debug, Deserialize)]
pub struct EmbeddingRequest {
    model: Option<String>,
    input: Option<Value>,
    encoding_format: Option<String>,
    dimensions: Option<i64>,
    user: Option<String>,
    /// Lantern (as Ollama): cut inputs past the window (default) or refuse them.
    truncate: Option<bool>,
}

/// The request's inputs, before tokenization.
#[derive(Debug, PartialEq)]
pub(super) enum Inputs {
    Texts(Vec<String>),
    Tokens(Vec<Vec<u32>>),
}

fn bad_input(message: &str) -> ApiError {
    ApiError::invalid(
        format!("Invalid 'input': {message}. Send a string, a list of strings, a list of token ids or a list of lists of token ids."),
        "input",
    )
}

fn token_list(v: &[Value]) -> Option<Vec<u32>> {
    v.iter()
        .map(|x| x.as_u64().and_then(|n| u32::try_from(n).ok()))
        .collect()
}

fn parse_inputs(input: Option<Value>) -> Result<Inputs, ApiError> {
    let inputs = match input {
        None | Some(Value::Null) => return Err(bad_input("it is required")),
        Some(Value::String(s)) => Inputs::Texts(vec![s]),
        Some(Value::Array(items)) => {
            if items.is_empty() {
                return Err(bad_input("the list is empty"));
            }
            if items.iter().all(Value::is_string) {
                Inputs::Texts(
                    items
                        .into_iter()
                        .map(|v| v.as_str().unwrap_or_default().to_string())
                        .collect(),
                )
            } else if items.iter().all(Value::is_number) {
                Inputs::Tokens(vec![token_list(&items)
                    .ok_or_else(|| bad_input("token ids must be integers ≥ 0"))?])
            } else if items.iter().all(Value::is_array) {
                let lists = items
                    .iter()
                    .map(|v| v.as_array().and_then(|a| token_list(a)))
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| bad_input("token ids must be integers ≥ 0"))?;
                Inputs::Tokens(lists)
            } else {
                return Err(bad_input("the list mixes kinds"));
            }
        }
        Some(_) => return Err(bad_input("wrong type")),
    };
    let n = match &inputs {
        Inputs::Texts(t) => t.len(),
        Inputs::Tokens(t) => t.len(),
    };
    if n > MAX_INPUTS {
        return Err(bad_input(&format!(
            "{n} inputs, at most {MAX_INPUTS} per request"
        )));
    }
    if let Inputs::Tokens(lists) = &inputs {
        if lists.iter().any(Vec::is_empty) {
            return Err(bad_input("a token list is empty"));
        }
    }
    Ok(inputs)
}

fn embedder_error(e: EmbedderError) -> ApiError {
    match e {
        EmbedderError::NotInstalled(m) => ApiError::ModelNotFound(m),
        EmbedderError::QueueFull(_) => ApiError::Overloaded {
            message: format!("Server busy: {e}; retry shortly"),
            retry_after: 1,
        },
        EmbedderError::Load { .. } | EmbedderError::Failed(_) => ApiError::internal(e),
    }
}

fn input_error(index: usize, e: EmbedError) -> ApiError {
    match e {
        EmbedError::TooLong { .. } => ApiError::InvalidRequest {
            message: format!("Invalid 'input[{index}]': {e}; send \"truncate\": true to cut it"),
            param: Some("input".into()),
            code: Some("context_length_exceeded"),
        },
        EmbedError::BadToken { .. } | EmbedError::Empty => {
            ApiError::invalid(format!("Invalid 'input[{index}]': {e}"), "input")
        }
        other => ApiError::internal(other),
    }
}

/// Little-endian f32 bytes in base64, as OpenAI sends and its SDK decodes.
fn base64_vector(v: &[f32]) -> String {
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

pub async fn embeddings(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<axum::response::Response, ApiError> {
    let started = std::time::Instant::now();
    let req: EmbeddingRequest = parse_body(body, state.body_limit)?;
    let session = super::caller::session_of(&headers, req.user.as_deref());
    let admitted = super::budget::admit(&state, &session)?;
    let model_id = req
        .model
        .filter(|m| !m.is_empty())
        .ok_or_else(|| ApiError::invalid("'model' is required", "model"))?;
    let base64 = match req.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(ApiError::invalid(
                format!("Invalid 'encoding_format' `{other}`: use `float` or `base64`"),
                "encoding_format",
            ))
        }
    };
    let inputs = parse_inputs(req.input)?;
    if let Some((remote, name)) = state.infer.backends.resolve(&model_id) {
        let asked = remote::Asked {
            session,
            label: model_id,
            base64,
            dimensions: req.dimensions,
            started,
        };
        let answer = remote::embed(&state, &remote, &name, inputs, asked).await?;
        return Ok(admitted.onto(answer));
    }
    let embedder = match state.embedders.get(&model_id).await {
        Err(EmbedderError::NotInstalled(_))
            if state.engines.servable().iter().any(|m| m.id == model_id) =>
        {
            let installed: Vec<String> = state
                .embedders
                .installed()
                .into_iter()
                .map(|m| m.id)
                .collect();
            return Err(ApiError::invalid(
                format!(
                    "`{model_id}` is a chat model; embeddings need an embedding model (installed: {})",
                    installed.join(", ")
                ),
                "model",
            ));
        }
        other => other.map_err(embedder_error)?,
    };
    let info = &embedder.model.info;
    if let Some(d) = req.dimensions {
        if d != info.dimensions as i64 {
            return Err(ApiError::invalid(
                format!(
                    "Invalid 'dimensions' {d}: `{model_id}` gives {}-dimensional vectors and cannot shorten them",
                    info.dimensions
                ),
                "dimensions",
            ));
        }
    }
    let truncate = req.truncate.unwrap_or(true);
    let model = embedder.model.clone();
    // Tokenizing a large request is real work: off the async threads.
    let fitted = tokio::task::spawn_blocking(move || {
        let fit = |(i, r): (usize, Result<_, EmbedError>)| r.map_err(|e| input_error(i, e));
        match inputs {
            Inputs::Texts(texts) => texts
                .iter()
                .map(|t| model.tokenize(t, truncate))
                .enumerate()
                .map(fit)
                .collect::<Result<Vec<_>, _>>(),
            Inputs::Tokens(lists) => lists
                .into_iter()
                .map(|ids| model.fit(ids, truncate))
                .enumerate()
                .map(fit)
                .collect(),
        }
    })
    .await
    .map_err(ApiError::internal)??;
    let prompt_tokens: usize = fitted.iter().map(|t| t.ids.len()).sum();
    let truncated: Vec<Value> = fitted
        .iter()
        .enumerate()
        .filter_map(|(i, t)| {
            t.truncated_from
                .map(|n| json!({"index": i, "tokens": n, "kept": t.ids.len()}))
        })
        .collect();
    let key = ModelKey {
        model: model_id.clone(),
        weights_sha256: embedder.weights_sha256.clone(),
    };
    let ids: Vec<Vec<u32>> = fitted.into_iter().map(|t| t.ids).collect();
    let (vectors, outcome) = state
        .caches
        .embeddings
        .get_or_compute(&key, &ids, |missing| embedder.embed(missing))
        .await
        .map_err(embedder_error)?;
    let done = Embedded {
        session,
        model: model_id,
        vectors,
        outcome,
        prompt_tokens,
        truncated,
        base64,
        started,
    };
    Ok(admitted.onto(respond(&state, done)))
}

/// A finished embedding request: what its client is told and the request log keeps.
pub(super) struct Embedded {
    pub session: String,
    pub model: String,
    pub vectors: Vec<std::sync::Arc<[f32]>>,
    pub outcome: crate::cache::embeddings::Outcome,
    pub prompt_tokens: usize,
    pub truncated: Vec<Value>,
    pub base64: bool,
    pub started: std::time::Instant,
}

/// OpenAI's list of vectors, with the cache's word; recorded in the request log.
pub(super) fn respond(state: &AppState, e: Embedded) -> axum::response::Response {
    use axum::response::IntoResponse;
    let data: Vec<Value> = e
        .vectors
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let embedding = if e.base64 {
                Value::String(base64_vector(v))
            } else {
                json!(v)
            };
            json!({"object": "embedding", "index": i, "embedding": embedding})
        })
        .collect();
    let mut body = json!({
        "object": "list",
        "data": data,
        "model": e.model,
        "usage": {"prompt_tokens": e.prompt_tokens, "total_tokens": e.prompt_tokens},
        "cache": e.outcome,
    });
    if !e.truncated.is_empty() {
        body["truncated_inputs"] = Value::Array(e.truncated);
    }
    state.monitor.record(RequestRow {
        finished_at: crate::clock::unix_seconds(),
        session: e.session,
        model: e.model,
        api: "embeddings".into(),
        status: 200,
        outcome: "ok".into(),
        error_kind: None,
        prompt_tokens: e.prompt_tokens as u64,
        cached_tokens: 0,
        completion_tokens: 0,
        queue_ms: None,
        ttft_ms: None,
        total_ms: e.started.elapsed().as_secs_f64() * 1e3,
        tokens_per_second: None,
        response_cached: e.outcome.computed == 0 && e.outcome.joined == 0,
        variant: None,
        compression: None,
        route: None,
    });
    Json(body).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_of_every_documented_shape() {
        assert_eq!(
            parse_inputs(Some(json!("hi"))).unwrap(),
            Inputs::Texts(vec!["hi".into()])
        );
        assert_eq!(
            parse_inputs(Some(json!(["a", "b"]))).unwrap(),
            Inputs::Texts(vec!["a".into(), "b".into()])
        );
        assert_eq!(
            parse_inputs(Some(json!([101, 7592, 102]))).unwrap(),
            Inputs::Tokens(vec![vec![101, 7592, 102]])
        );
        assert_eq!(
            parse_inputs(Some(json!([[101, 102], [101, 1, 102]]))).unwrap(),
            Inputs::Tokens(vec![vec![101, 102], vec![101, 1, 102]])
        );
        for bad in [
            json!(null),
            json!([]),
            json!(3),
            json!(["a", 1]),
            json!([1.5]),
            json!([-1]),
            json!([[1], "a"]),
            json!([[]]),
            json!({"text": "a"}),
        ] {
            assert!(parse_inputs(Some(bad.clone())).is_err(), "{bad}");
        }
        let many: Vec<&str> = vec!["x"; MAX_INPUTS + 1];
        assert!(parse_inputs(Some(json!(many))).is_err());
    }

    #[test]
    fn base64_is_little_endian_f32() {
        assert_eq!(base64_vector(&[1.0, -2.0]), "AACAPwAAAMA=");
    }
}
