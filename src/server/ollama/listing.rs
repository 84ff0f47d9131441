//! Ollama's listing routes: `/api/tags` (installed models), `/api/show` (one model's template,
//! details and capabilities), `/api/ps` (loaded models and when they unload), `/api/version`.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::{invalid, model_name};
use crate::clock::rfc3339;
use crate::server::body::parse_body;
use crate::server::errors::{ApiError, OllamaError};
use crate::server::AppState;

/// The Ollama API version these routes follow (clients check it before using newer fields).
const OLLAMA_VERSION: &str = "0.9.0";

/// An id for a model file from what identifies its contents cheaply (path, size, time written):
/// Ollama's `digest` field, which clients show and compare.
fn digest(path: &std::path::Path, size: u64, created: u64) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(path.to_string_lossy().as_bytes());
    h.update(size.to_le_bytes());
    h.update(created.to_le_bytes());
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

fn details(architecture: &str, quantization: &str, format: &str) -> Value {
    json!({
        "parent_model": "",
        "format": format,
        "family": architecture,
        "families": [architecture],
        "parameter_size": "",
        "quantization_level": quantization,
    })
}

/// `GET /api/tags`: every installed model, chat and embedding.
pub async fn tags(State(state): State<AppState>) -> Json<Value> {
    let mut models: Vec<Value> = state
        .engines
        .servable()
        .iter()
        .map(|m| {
            json!({
                "name": m.id,
                "model": m.id,
                "modified_at": rfc3339(m.created as f64),
                "size": m.size_bytes,
                "digest": digest(&m.path, m.size_bytes, m.created),
                "details": details(&m.architecture, &m.quantization, "gguf"),
            })
        })
        .collect();
    models.extend(state.embedders.installed().iter().map(|m| {
        let created = crate::scheduler::registry::created_of(&m.path);
        json!({
            "name": m.id,
            "model": m.id,
            "modified_at": rfc3339(created as f64),
            "size": m.size_bytes,
            "digest": digest(&m.path, m.size_bytes, created),
            "details": details("bert", "F32", "safetensors"),
        })
    }));
    Json(json!({"models": models}))
}

#[derive(Debug, Deserialize)]
struct ShowBody {
    model: Option<String>,
    /// Older clients send `name`.
    name: Option<String>,
}

/// `POST /api/show`: a model's details, template and capabilities.
pub async fn show(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, OllamaError> {
    let req: ShowBody = parse_body(body, state.body_limit)?;
    let name = req
        .model
        .or(req.name)
        .ok_or_else(|| invalid("`model` is required", "model"))?;
    let name = model_name(&name).to_string();
    if let Some(m) = state
        .embedders
        .installed()
        .into_iter()
        .find(|m| m.id == name)
    {
        let created = crate::scheduler::registry::created_of(&m.path);
        return Ok(Json(json!({
            "modelfile": "", "parameters": "", "template": "",
            "details": details("bert", "F32", "safetensors"),
            "model_info": {"general.architecture": "bert"},
            "capabilities": ["embedding"],
            "modified_at": rfc3339(created as f64),
        }))
        .into_response());
    }
    let servable = state.engines.servable();
    let m = servable
        .iter()
        .find(|m| m.id == name)
        .ok_or_else(|| OllamaError(ApiError::ModelNotFound(name.clone())))?;
    // The template and figures are the loaded model's own.
    let engine = state
        .engines
        .get(&name)
        .await
        .map_err(crate::server::openai::registry_error)?;
    let info = &engine.info;
    let arch = &info.architecture;
    let mut model_info = Map::new();
    model_info.insert("general.architecture".into(), json!(arch));
    for (key, value) in [
        ("context_length", info.context_length),
        ("block_count", info.n_layers),
        ("attention.head_count_kv", info.n_kv_heads),
        ("vocab_size", info.vocab_size),
    ] {
        model_info.insert(format!("{arch}.{key}"), json!(value));
    }
    let special = &engine.tokenizer.special;
    model_info.insert("tokenizer.ggml.bos_token_id".into(), json!(special.bos));
    model_info.insert("lantern.stop_token_ids".into(), json!(special.stop_ids));
    // Ollama names a model that thinks `thinking`: its template knows `<think>`.
    let mut capabilities = vec!["completion", "tools"];
    if engine.model.template_source().contains("<think>") {
        capabilities.push("thinking");
    }
    Ok(Json(json!({
        "modelfile": "",
        "parameters": "",
        "template": engine.model.template.source(),
        "details": details(arch, &m.quantization, "gguf"),
        "model_info": model_info,
        "capabilities": capabilities,
        "modified_at": rfc3339(m.created as f64),
    }))
    .into_response())
}

/// `GET /api/ps`: the loaded models and when each unloads.
pub async fn ps(State(state): State<AppState>) -> Json<Value> {
    let servable = state.engines.servable();
    let models: Vec<Value> = state
        .engines
        .loaded()
        .iter()
        .map(|l| {
            let file = servable.iter().find(|s| s.id == l.id);
            let size = file.map_or(0, |f| f.size_bytes);
            let created = file.map_or(0, |f| f.created);
            let quantization = file.map(|f| f.quantization.as_str()).unwrap_or("");
            // Busy or kept forever: Ollama shows a time far ahead.
            let expires = l.unload_at.unwrap_or(crate::clock::unix_seconds() + 3.15e8);
            json!({
                "name": l.id,
                "model": l.id,
                "size": size,
                "digest": digest(&l.path, size, created),
                "details": details(&l.info.architecture, quantization, "gguf"),
                "expires_at": rfc3339(expires),
                "size_vram": 0,
                "context_length": l.info.context_length,
            })
        })
        .collect();
    Json(json!({"models": models}))
}

/// `GET /api/version`.
pub async fn version() -> Json<Value> {
    Json(json!({"version": OLLAMA_VERSION, "lantern": env!("CARGO_PKG_VERSION")}))
}
