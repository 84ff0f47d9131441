//! `/api/backends`: the remote engines served as `NAME/MODEL`: listed with their health, the
//! state of their circuits and whether they hold a key (never the key itself); added, replaced,
//! tested and removed from the Models page. Each change is saved to `settings.toml` (the key to
//! `backend-keys.json`, 0600) and in force at once.

use axum::extract::{Path, State};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::errors::ApiError;
use super::AppState;
use crate::infer::backends::BackendSpec;

/// A backend as the Models page sends it: its spec, and a key to set (`""` removes it; left
/// out, the saved key stays).
#[derive(Deserialize)]
pub struct BackendBody {
    #[serde(flatten)]
    spec: BackendSpec,
    #[serde(default)]
    api_key: Option<String>,
}

/// `GET /api/backends`: every backend, chain and the breaker's limits.
pub async fn list(State(state): State<AppState>) -> Json<Value> {
    let b = &state.infer.backends;
    let saved = state.settings.effective();
    Json(json!({
        "backends": b.views(),
        "chains": b.chains(),
        "breaker": saved.breaker,
    }))
}

/// `POST /api/backends`: add a backend, or replace the one of the same name.
pub async fn put(
    State(state): State<AppState>,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let BackendBody { spec, api_key } = super::body::parse_body(body, state.body_limit)?;
    spec.validate()
        .map_err(|e| ApiError::invalid(e, "backends"))?;
    let name = spec.name.clone();
    if let Some(key) = &api_key {
        if key.chars().any(|c| c.is_control() || c == ' ') {
            return Err(ApiError::invalid(
                "api_key: a key may not contain spaces",
                "api_key",
            ));
        }
        let key = Some(key.as_str()).filter(|k| !k.is_empty());
        state
            .infer
            .backends
            .set_key(&name, key)
            .map_err(ApiError::internal)?;
    }
    super::settings::change(&state, |s| {
        match s.backends.iter_mut().find(|b| b.name == spec.name) {
            Some(b) => *b = spec,
            None => s.backends.push(spec),
        }
        Ok(())
    })?;
    Ok(Json(view(&state, &name)?))
}

fn view(state: &AppState, name: &str) -> Result<Value, ApiError> {
    state
        .infer
        .backends
        .views()
        .into_iter()
        .find(|v| v["name"] == name)
        .ok_or_else(|| ApiError::RouteNotFound(format!("/api/backends/{name} (no such backend)")))
}

/// `DELETE /api/backends/{name}`: remove a backend and its key. Chains that name its models
/// keep them (a link that cannot answer is passed over) until edited.
pub async fn delete(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    view(&state, &name)?;
    super::settings::change(&state, |s| {
        s.backends.retain(|b| b.name != name);
        Ok(())
    })?;
    state
        .infer
        .backends
        .set_key(&name, None)
        .map_err(ApiError::internal)?;
    Ok(Json(json!({"deleted": name})))
}

/// `POST /api/backends/{name}/test`: a health check now: up, how fast, which models it lists,
/// and which of the configured ones it does not.
pub async fn test(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let b = &state.infer.backends;
    let remote = b.remote(&name).ok_or_else(|| {
        ApiError::RouteNotFound(format!("/api/backends/{name} (no such backend)"))
    })?;
    let health = remote.check(b.client()).await;
    let missing: Vec<&String> = remote
        .spec
        .models
        .iter()
        .filter(|m| health.up == Some(true) && !health.models.contains(m))
        .collect();
    Ok(Json(
        json!({"name": name, "health": health, "missing_models": missing}),
    ))
}
