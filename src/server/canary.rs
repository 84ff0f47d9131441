//! `/api/lab/experiments/{key}/canary`: where an experiment's canary release stands (its share,
//! status, bounds, both sides' figures over the window) and every change with its reason;
//! `promote` and `rollback` by hand, stored with the reason given.

use axum::extract::{Path, State};
use axum::Json;
use serde_json::{json, Value};

use super::errors::ApiError;
use super::experiments::{experiment, store};
use super::AppState;
use crate::lab::canary::Status;
use crate::store::experiments::Experiment;

/// The experiment's canary, taken up from its stored changes when no request has yet.
async fn live(state: &AppState, key: &str) -> Result<Experiment, ApiError> {
    let e = experiment(state, key).await?;
    if e.spec.canary.is_none() {
        return Err(ApiError::invalid(
            format!(
                "experiment `{}` releases no canary (its spec has no `canary`)",
                e.name
            ),
            "canary",
        ));
    };
    state.infer.take_up_canary(&e).await?;
    Ok(e)
}

/// `GET /api/lab/experiments/{key}/canary`.
pub async fn get(
    State(state): State<AppState>,
    Path(key): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let e = live(&state, &key).await?;
    let changes = store(&state)?
        .canary_changes(e.id)
        .await
        .map_err(ApiError::internal)?;
    let mut view = state.infer.canaries.view(&e.name).unwrap_or_default();
    view["experiment"] = json!(e.name);
    view["changes"] = json!(changes);
    Ok(Json(view))
}

#[derive(serde::Deserialize, Default)]
pub struct Reason {
    reason: Option<String>,
}

async fn set(
    state: &AppState,
    key: &str,
    status: Status,
    body: Option<Json<Reason>>,
) -> Result<Json<Value>, ApiError> {
    let e = live(state, key).await?;
    let said = body
        .and_then(|b| b.0.reason)
        .filter(|r| !r.trim().is_empty());
    let verb = if status == Status::Promoted {
        "promoted"
    } else {
        "rolled back"
    };
    let reason = match said {
        Some(r) => format!("{verb} by hand: {r}"),
        None => format!("{verb} by hand"),
    };
    let change = state
        .infer
        .canaries
        .set(&e.name, status, &reason)
        .ok_or_else(|| ApiError::internal("the canary is not live"))?;
    store(state)?
        .canary_change_put(e.id, &change)
        .await
        .map_err(ApiError::internal)?;
    let now = change.at;
    if status == Status::Promoted {
        state
            .monitor
            .alerts()
            .resolve_where("canary_rollback", now, |s| s != e.name);
    }
    Ok(Json(json!({"experiment": e.name, "change": change})))
}

/// `POST /api/lab/experiments/{key}/canary/promote`: all traffic to the canary, `{"reason"}`.
pub async fn promote(
    State(state): State<AppState>,
    Path(key): Path<String>,
    body: Option<Json<Reason>>,
) -> Result<Json<Value>, ApiError> {
    set(&state, &key, Status::Promoted, body).await
}

/// `POST /api/lab/experiments/{key}/canary/rollback`: none to the canary, `{"reason"}`.
pub async fn rollback(
    State(state): State<AppState>,
    Path(key): Path<String>,
    body: Option<Json<Reason>>,
) -> Result<Json<Value>, ApiError> {
    set(&state, &key, Status::RolledBack, body).await
}
