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

/// A remote backend's model or a fallback chain: served here, run elsewhere or by turns.
fn routed_json(id: &str, kind: &str, extra: Value) -> (String, Value) {
    let mut meta = json!({"kind": kind});
    if let (Some(m), Value::Object(e)) = (meta.as_object_mut(), extra) {
        m.extend(e);
    }
    let v = json!({"id": id, "object": "model", "created": 0, "owned_by": "lantern", "meta": meta});
    (id.to_string(), v)
}

fn all_models(state: &AppState) -> Vec<(String, Value)> {
    let chat = state.engines.servable();
    let chat = chat.iter().map(|m| (m.id.clone(), model_json(m)));
    let embed = state.embedders.installed();
    let embed = embed
        .iter()
        .map(|m| (m.id.clone(), embedding_model_json(m)));
    let backends = &state.infer.backends;
    let remote = backends.models().into_iter().map(|id| {
        let backend = id.split('/').next().unwrap_or_default().to_string();
        routed_json(&id, "remote", json!({"backend": backend}))
    });
    let chains = backends
        .chains()
        .into_iter()
        .map(|c| routed_json(&c.name, "chain", json!({"targets": c.targets})));
    let auto = backends.auto();
    let auto = (!auto.routes.is_empty()).then(|| {
        let candidates: Vec<&str> = auto.routes.iter().map(|r| r.model.as_str()).collect();
        routed_json("auto", "auto", json!({"routes": candidates}))
    });
    chat.chain(embed)
        .chain(remote)
        .chain(chains)
        .chain(auto)
        .collect()
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

/// `POST /api/models/{id}/load`: load (and warm) a model now rather than on its first request.
pub async fn load(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    state
        .engines
        .get(&id)
        .await
        .map_err(super::openai::registry_error)?;
    let loaded = state.engines.loaded().into_iter().find(|m| m.id == id);
    Ok(Json(json!({"id": id, "loaded": true, "model": loaded})))
}

/// `POST /api/models/{id}/unload`: free its memory now; 409 while it has requests in flight.
pub async fn unload(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    if !state.engines.servable().iter().any(|m| m.id == id) {
        return Err(ApiError::ModelNotFound(id));
    }
    match state.engines.unload(&id) {
        Ok(was) => Ok(Json(json!({"id": id, "unloaded": was}))),
        Err(busy) => Err(ApiError::Conflict(format!(
            "`{id}` has {busy} request(s) in flight; unload it when they finish"
        ))),
    }
}

/// `DELETE /api/models/{id}`: remove an installed model's directory (its files), after
/// unloading it. The default model cannot be deleted while the server serves it.
pub async fn delete(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    if id == state.default_model {
        return Err(ApiError::Conflict(format!(
            "`{id}` is the model this server was started with; it cannot be deleted while served"
        )));
    }
    let installed = state.engines.library().list().unwrap_or_default();
    if !installed.iter().any(|m| m.name == id) {
        return Err(ApiError::ModelNotFound(id));
    }
    if let Err(busy) = state.engines.unload(&id) {
        return Err(ApiError::Conflict(format!(
            "`{id}` has {busy} request(s) in flight; delete it when they finish"
        )));
    }
    let dir = state.engines.library().models_dir().join(&id);
    // A linked directory loses its link, never the files it points to.
    let removed = match std::fs::symlink_metadata(&dir) {
        Ok(m) if m.file_type().is_symlink() => std::fs::remove_file(&dir),
        Ok(_) => std::fs::remove_dir_all(&dir),
        Err(e) => Err(e),
    };
    removed.map_err(ApiError::internal)?;
    Ok(Json(json!({"id": id, "deleted": true})))
}

type Body = Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>;

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PullBody {
    /// A manifest name (`smollm2`) or a Hugging Face repo (`owner/name`).
    model: String,
    /// The GGUF file in the repo (not needed for manifest names).
    file: Option<String>,
    /// The name to install under.
    name: Option<String>,
}

/// `GET /api/models/catalog`: the manifest's models (what `lantern pull NAME` fetches by
/// name), each with its size and whether it is installed: the first-run screen offers them.
pub async fn catalog(State(state): State<AppState>) -> Json<Value> {
    let library = state.engines.library();
    let models: Vec<Value> = crate::library::manifest::Manifest::builtin()
        .models
        .iter()
        .map(|m| {
            json!({
                "name": m.name,
                "kind": m.kind,
                "description": m.description,
                "size": m.files.iter().map(|f| f.size).sum::<u64>(),
                "installed": library.resolve_gguf(&m.name).is_ok()
                    || library.models_dir().join(&m.name).is_dir(),
            })
        })
        .collect();
    Json(json!({"models": models}))
}

/// `POST /api/models/pull`: a job downloading a GGUF from Hugging Face (or the configured
/// mirror) into the library, with byte progress; cancelling keeps what arrived for a retry.
pub async fn pull(
    State(state): State<AppState>,
    body: Body,
) -> Result<axum::response::Response, ApiError> {
    use crate::library::pull::{check, pull_observed, PullRequest};
    let body: PullBody = super::body::parse_body(body, state.body_limit)?;
    let req = PullRequest {
        target: body.model.trim().to_string(),
        file: body.file.filter(|f| !f.trim().is_empty()),
        name: body.name.filter(|n| !n.trim().is_empty()),
        endpoint: state.settings.effective().hf_endpoint,
        show_progress: false,
    };
    let name = check(&req).map_err(|e| ApiError::invalid(e.to_string(), "model"))?;
    let home = state
        .engines
        .library()
        .models_dir()
        .parent()
        .map(std::path::Path::to_path_buf)
        .ok_or_else(|| ApiError::internal("the models directory has no parent"))?;
    let title = format!("pull {}", req.target);
    let job = state.jobs.spawn("pull", &title, move |job| {
        let handle = job.clone();
        let observer = Box::new(move |done: u64, total: u64| {
            let fraction = if total == 0 {
                0.0
            } else {
                done as f64 / total as f64
            };
            handle.progress(fraction, &format!("{} of {}", mib(done), mib(total)));
            !handle.cancelled()
        });
        let path = pull_observed(&home, &req, Some(observer)).map_err(|e| e.to_string())?;
        Ok(json!({"model": name, "path": path}))
    });
    Ok(super::jobs::accepted(job))
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ImportBody {
    /// An absolute path to a .gguf file on the machine the server runs on.
    path: std::path::PathBuf,
    /// The name to install under (default: from the file name).
    name: Option<String>,
}

/// `POST /api/models/import`: a job copying a GGUF file from disk into the library, checked as a
/// model first (the desktop app's file dialog gives the path).
pub async fn import(
    State(state): State<AppState>,
    body: Body,
) -> Result<axum::response::Response, ApiError> {
    use crate::library::import::{import, plan};
    let body: ImportBody = super::body::parse_body(body, state.body_limit)?;
    let models_dir = state.engines.library().models_dir().to_path_buf();
    let name = body.name.as_deref().filter(|n| !n.trim().is_empty());
    let plan = plan(&models_dir, &body.path, name)
        .map_err(|e| ApiError::invalid(e.to_string(), "path"))?;
    let title = format!("import {}", plan.name);
    let job = state.jobs.spawn("import", &title, move |job| {
        let dest = import(&plan, &mut |done, total| {
            let fraction = if total == 0 {
                1.0
            } else {
                done as f64 / total as f64
            };
            job.progress(fraction, &format!("{} of {}", mib(done), mib(total)));
            !job.cancelled()
        })
        .map_err(|e| e.to_string())?;
        Ok(json!({"model": plan.name, "path": dest, "architecture": plan.architecture}))
    });
    Ok(super::jobs::accepted(job))
}
