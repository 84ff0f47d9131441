//! `/api/*`: what the UI and operators read about the server itself.

use axum::extract::{Query, State};
use axum::Json;
use serde_json::{json, Value};

use super::AppState;

/// Loaded models with their engines' live figures: running and waiting sequences, KV use,
/// prefix-cache hit rate, keep-alive deadlines; and the memory the machine has left.
pub async fn engine(State(state): State<AppState>) -> Json<Value> {
    let models: Vec<Value> = state
        .engines
        .loaded()
        .into_iter()
        .map(|m| {
            let p = m.engine.prefix_cache;
            let hit_rate = if p.lookups == 0 {
                0.0
            } else {
                p.hits as f64 / p.lookups as f64
            };
            let token_hit_rate = if p.lookup_tokens == 0 {
                0.0
            } else {
                p.hit_tokens as f64 / p.lookup_tokens as f64
            };
            let mut v = serde_json::to_value(&m).unwrap_or(Value::Null);
            v["engine"]["prefix_cache"]["hit_rate"] = json!(hit_rate);
            v["engine"]["prefix_cache"]["token_hit_rate"] = json!(token_hit_rate);
            v
        })
        .collect();
    let config = state.engines.config();
    Json(json!({
        "default_model": state.default_model,
        "models": models,
        "embedding_models": state
            .embedders
            .loaded()
            .into_iter()
            .map(|(id, info)| json!({"id": id, "info": info}))
            .collect::<Vec<_>>(),
        "max_loaded": config.max_loaded,
        "keep_alive_seconds": config.keep_alive.as_seconds(),
        "keep_alive_override_seconds": config.keep_alive_override.map(|k| k.as_seconds()),
        "memory": crate::scheduler::registry::memory(),
    }))
}

/// The caches: entries, bytes and hits per level, misses and hit rate.
pub async fn cache(State(state): State<AppState>) -> Json<Value> {
    Json(json!({
        "embeddings": state.caches.embeddings.stats().await,
        "responses": state.caches.responses.stats(),
    }))
}

#[derive(serde::Deserialize)]
pub struct ClearQuery {
    model: Option<String>,
}

/// Forget cached embeddings, all or one model's (`?model=NAME`).
pub async fn clear_embeddings(
    State(state): State<AppState>,
    Query(q): Query<ClearQuery>,
) -> Json<Value> {
    let (memory, store) = state.caches.embeddings.clear(q.model.as_deref()).await;
    Json(json!({"deleted": {"memory": memory, "store": store}, "model": q.model}))
}

/// Forget every cached response.
pub async fn clear_responses(State(state): State<AppState>) -> Json<Value> {
    Json(json!({"deleted": state.caches.responses.clear()}))
}
