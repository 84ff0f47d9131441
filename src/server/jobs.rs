//! `/api/jobs`: every long job (benchmark, quantization, quality, experiment) with its progress;
//! `DELETE` cancels one.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::errors::ApiError;
use super::AppState;

/// The answer to a request that started job `id`: 202 and where to follow it.
pub fn accepted(id: u64) -> Response {
    (
        StatusCode::ACCEPTED,
        Json(json!({"job": id, "url": format!("/api/jobs/{id}")})),
    )
        .into_response()
}

pub async fn list_jobs(State(state): State<AppState>) -> Json<Value> {
    Json(json!({"jobs": state.jobs.list()}))
}

pub async fn get_job(
    State(state): State<AppState>,
    Path(id): Path<u64>,
) -> Result<Json<Value>, ApiError> {
    state
        .jobs
        .get(id)
        .map(|j| Json(json!(j)))
        .ok_or_else(|| ApiError::RouteNotFound(format!("/api/jobs/{id} (no such job)")))
}

/// `DELETE /api/jobs/{id}`: cancel a running job (it stops at its next check).
pub async fn cancel_job(
    State(state): State<AppState>,
    Path(id): Path<u64>,
) -> Result<Json<Value>, ApiError> {
    if !state.jobs.cancel(id) {
        return Err(ApiError::RouteNotFound(format!(
            "/api/jobs/{id} (no such job)"
        )));
    }
    Ok(Json(json!(state.jobs.get(id))))
}
