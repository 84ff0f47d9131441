//! `/v1/embeddings` of a remote model (`NAME/MODEL`): the inputs go to its `/embeddings`, and
//! the vectors pass through the same embedding cache, keyed by the remote's address and the
//! exact input (text bytes, or token ids), so a repeated input never travels twice.

use serde_json::{json, Value};

use super::{respond, Embedded, Inputs};
use crate::infer::backends::Remote;
use crate::server::errors::ApiError;
use crate::server::AppState;
use crate::store::embeddings::ModelKey;

/// Marks a cache key made of text bytes (token ids never reach it).
const TEXT: u32 = u32::MAX;

/// What the client asked beside its inputs.
pub(super) struct Asked {
    pub session: String,
    /// `NAME/MODEL`, as the client named it.
    pub label: String,
    pub base64: bool,
    pub dimensions: Option<i64>,
    pub started: std::time::Instant,
}

/// An input as the cache keys it.
fn key_of(input: &Inputs) -> Vec<Vec<u32>> {
    match input {
        Inputs::Texts(texts) => texts
            .iter()
            .map(|t| {
                std::iter::once(TEXT)
                    .chain(t.bytes().map(u32::from))
                    .collect()
            })
            .collect(),
        Inputs::Tokens(lists) => lists.clone(),
    }
}

/// A cache key back as the input the remote takes.
fn input_of(key: &[u32]) -> Value {
    match key.split_first() {
        Some((&TEXT, bytes)) => {
            let bytes: Vec<u8> = bytes.iter().map(|b| *b as u8).collect();
            json!(String::from_utf8_lossy(&bytes))
        }
        _ => json!(key),
    }
}

pub(super) async fn embed(
    state: &AppState,
    remote: &Remote,
    model: &str,
    inputs: Inputs,
    asked: Asked,
) -> Result<axum::response::Response, ApiError> {
    let key = ModelKey {
        model: asked.label.clone(),
        weights_sha256: format!("remote:{}:{model}", remote.spec.base()),
    };
    let ids = key_of(&inputs);
    let client = state.infer.backends.client();
    let counted = std::sync::atomic::AtomicUsize::new(0);
    let (vectors, outcome) = state
        .caches
        .embeddings
        .get_or_compute(&key, &ids, |missing| {
            let counted = &counted;
            async move {
                let n = missing.len();
                let inputs: Vec<Value> = missing.iter().map(|k| input_of(k)).collect();
                let (vectors, tokens) = remote.embed(client, model, json!(inputs)).await?;
                counted.fetch_add(tokens, std::sync::atomic::Ordering::Relaxed);
                if vectors.len() != n {
                    return Err(crate::infer::InferError::internal(format!(
                        "backend `{}` sent {} vectors for {n} inputs",
                        remote.spec.name,
                        vectors.len()
                    )));
                }
                Ok(vectors)
            }
        })
        .await
        .map_err(ApiError::from)?;
    if let (Some(d), Some(v)) = (asked.dimensions, vectors.first()) {
        if d != v.len() as i64 {
            return Err(ApiError::invalid(
                format!(
                    "Invalid 'dimensions' {d}: `{}` gives {}-dimensional vectors",
                    asked.label,
                    v.len()
                ),
                "dimensions",
            ));
        }
    }
    let done = Embedded {
        session: asked.session,
        model: asked.label,
        vectors,
        outcome,
        prompt_tokens: counted.into_inner(),
        truncated: Vec::new(),
        base64: asked.base64,
        started: asked.started,
    };
    Ok(respond(state, done))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts_and_token_lists_key_apart_and_come_back_whole() {
        let keys = key_of(&Inputs::Texts(vec!["héllo".into()]));
        assert_eq!(input_of(&keys[0]), json!("héllo"));
        let ids = key_of(&Inputs::Tokens(vec![vec![101, 102]]));
        assert_eq!(input_of(&ids[0]), json!([101, 102]));
        assert_ne!(keys[0], key_of(&Inputs::Tokens(vec![vec![104]]))[0]);
    }
}
