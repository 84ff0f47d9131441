//! `GET /v1/models` and `/v1/models/{id}`: every installed chat and embedding model, loaded or
//! not (a request naming one loads it).

use axum::extract::{Path, State};
use axum::Json;
use serde_json::{json, Value};

use super::errors::ApiError;
use super::AppState;
use crate::scheduler::embedder::EmbeddingModelEntry;
use crate::scheduler::registry::{created_of, ServableModel};

fn model_json(m: &ServableModel) -> Value {
    json!({
        "id": m.id,
        "object": "model",
        "created": m.created,
        "owned_by": "lantern",
        "meta": {
            "kind": "chat",
            "architecture": m.architecture,
            "quantization": m.quantization,
            "context_length": m.context_length,
            "size_bytes": m.size_bytes,
            "loaded": m.loaded,
        },
    })
}

fn embedding_model_json(m: &EmbeddingModelEntry) -> Value {
    json!({
        "id": m.id,
        "object": "model",
        "created": created_of(&m.path),
        "owned_by": "lantern",
        "meta": {
            "kind": "embedding",
            "format": "safetensors",
            "size_bytes": m.size_bytes,
            "loaded": m.loaded,
        },
    })
}

fn all_models(state: &AppState) -> Vec<(String, Value)> {
    let chat = state.engines.servable();
    let chat = chat.iter().map(|m| (m.id.clone(), model_json(m)));
    let embed = state.embedders.installed();
    let embed = embed
        .iter()
        .map(|m| (m.id.clone(), embedding_model_json(m)));
    chat.chain(embed).collect()
}

pub async fn list_models(State(state): State<AppState>) -> Json<Value> {
    let data: Vec<Value> = all_models(&state).into_iter().map(|(_, v)| v).collect();
    Json(json!({"object": "list", "data": data}))
}

pub async fn get_model(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    all_models(&state)
        .into_iter()
        .find(|(m, _)| *m == id)
        .map(|(_, v)| Json(v))
        .ok_or(ApiError::ModelNotFound(id))
}
