//! `/api/*` of the monitor beyond the request log: the live stream, alerts, budgets, settings.

use std::collections::{BTreeMap, HashMap};

use axum::extract::{Path, State};
use axum::response::sse::Event;
use axum::response::Response;
use axum::Json;
use serde::Serialize;
use serde_json::{json, Value};

use super::errors::ApiError;
use super::AppState;
use crate::clock::unix_seconds;
use crate::monitor::settings::MonitorSettings;
use crate::monitor::summary::Percentiles;
use crate::store::requests::RequestRow;

/// How far back the live TTFT and latency percentiles look.
const LIVE_WINDOW: f64 = 60.0;

/// What changed in a session since the last snapshot.
#[derive(Debug, Default, Serialize, PartialEq)]
pub struct SessionDelta {
    pub requests: u64,
    pub errors: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

/// Per-session deltas of the requests in `rows`.
pub fn deltas(rows: &[RequestRow]) -> BTreeMap<String, SessionDelta> {
    let mut out: BTreeMap<String, SessionDelta> = BTreeMap::new();
    for r in rows {
        let d = out.entry(r.session.clone()).or_default();
        d.requests += 1;
        d.errors += (r.status >= 500) as u64;
        d.prompt_tokens += r.prompt_tokens;
        d.completion_tokens += r.completion_tokens;
    }
    out
}

#[derive(serde::Deserialize)]
pub struct SeriesQuery {
    window: Option<String>,
}

/// `GET /api/monitor/series?window=5m|1h|1d`: the request log's measures in buckets spanning
/// exactly the window, and requests per API.
pub async fn series(
    State(state): State<AppState>,
    axum::extract::Query(q): axum::extract::Query<SeriesQuery>,
) -> Result<Json<crate::monitor::series::Series>, ApiError> {
    use crate::monitor::series::{series, Window};
    let name = q.window.as_deref().unwrap_or("5m");
    let window = Window::named(name).ok_or_else(|| {
        ApiError::invalid(
            format!("Invalid 'window' `{name}`: use 5m, 1h or 1d"),
            "window",
        )
    })?;
    let now = unix_seconds();
    let rows = state
        .database("The charts' history needs")?
        .requests_between(now - window.seconds - window.step, f64::INFINITY, None)
        .await
        .map_err(ApiError::internal)?;
    Ok(Json(series(&rows, window, now)))
}

/// `GET /api/monitor/stream`: a `snapshot` event each second (running and waiting sequences,
/// tokens/s, the last minute's TTFT and latency percentiles, per-session deltas, active alerts)
/// and an `alert` event whenever an alert fires or resolves.
pub async fn stream(State(state): State<AppState>) -> Response {
    let (tx, rx) = tokio::sync::mpsc::channel::<Event>(16);
    tokio::spawn(async move {
        let mut alerts = state.monitor.alerts().subscribe();
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut last_time = unix_seconds();
        // Tokens generated before the client connected are not this second's.
        let mut generated: HashMap<String, u64> = state
            .engines
            .loaded()
            .into_iter()
            .map(|m| (m.id, m.engine.generated_tokens))
            .collect();
        loop {
            let event = tokio::select! {
                _ = tick.tick() => {
                    let now = unix_seconds();
                    let snapshot = snapshot(&state, last_time, now, &mut generated);
                    last_time = now;
                    Event::default().event("snapshot").data(snapshot.to_string())
                }
                alert = alerts.recv() => match alert {
                    Ok(a) => Event::default().event("alert").data(json!(a).to_string()),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(_) => break,
                },
            };
            if tx.send(event).await.is_err() {
                break; // the client went away
            }
        }
    });
    super::sse::events(rx)
}

fn snapshot(state: &AppState, since: f64, now: f64, generated: &mut HashMap<String, u64>) -> Value {
    let elapsed = (now - since).max(1e-3);
    let mut engines = Vec::new();
    let (mut running, mut waiting, mut new_tokens) = (0, 0, 0u64);
    for m in state.engines.loaded() {
        let e = &m.engine;
        running += e.running;
        waiting += e.waiting;
        // A model loaded since the last snapshot counts from zero.
        let before = generated
            .insert(m.id.clone(), e.generated_tokens)
            .unwrap_or(0);
        let delta = e.generated_tokens.saturating_sub(before);
        new_tokens += delta;
        engines.push(json!({
            "model": m.id,
            "running": e.running,
            "waiting": e.waiting,
            "kv_tokens": e.kv_tokens,
            "kv_tokens_budget": e.kv_tokens_budget,
            "tokens_per_second": delta as f64 / elapsed,
        }));
    }
    let recent = state.monitor.recent_since(now - LIVE_WINDOW);
    let new: Vec<RequestRow> = recent
        .iter()
        .filter(|r| r.finished_at >= since && r.finished_at < now)
        .cloned()
        .collect();
    let (active, _) = state.monitor.alerts().list();
    json!({
        "time": now,
        "running": running,
        "waiting": waiting,
        "tokens_per_second": new_tokens as f64 / elapsed,
        "requests_per_second": new.len() as f64 / elapsed,
        "engines": engines,
        "last_minute": {
            "requests": recent.len(),
            "ttft_ms": Percentiles::of(recent.iter().filter_map(|r| r.ttft_ms).collect()),
            "latency_ms": Percentiles::of(recent.iter().map(|r| r.total_ms).collect()),
        },
        "sessions": deltas(&new),
        "alerts": active,
    })
}

/// `GET /api/alerts`: active alerts and the recently resolved.
pub async fn alerts(State(state): State<AppState>) -> Json<Value> {
    let (active, recent) = state.monitor.alerts().list();
    Json(json!({
        "active": active,
        "recent": recent,
        "thresholds": state.monitor.settings().alerts,
    }))
}

pub async fn get_settings(State(state): State<AppState>) -> Json<MonitorSettings> {
    Json(state.monitor.settings())
}

/// `PUT /api/monitor/settings`: change the settings (fields left out keep their values; `null`
/// puts one back to its default).
pub async fn put_settings(
    State(state): State<AppState>,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Json<MonitorSettings>, ApiError> {
    let new: MonitorSettings =
        super::body::parse_patch(body, state.body_limit, &state.monitor.settings())?;
    new.validate()
        .map_err(|(message, param)| ApiError::invalid(message, param))?;
    state
        .monitor
        .set_settings(new)
        .await
        .map_err(ApiError::internal)?;
    Ok(Json(state.monitor.settings()))
}

fn budget_json(state: &AppState, session: &str) -> Value {
    let status = state.monitor.budgets().status(session, unix_seconds());
    json!({"session": session, "budget": status})
}

pub async fn get_budget(State(state): State<AppState>, Path(id): Path<String>) -> Json<Value> {
    Json(budget_json(&state, &id))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct BudgetBody {
    /// Required, `null` included: a body without it must not reset the budget.
    #[serde(deserialize_with = "present")]
    daily_tokens: Option<u64>,
}

/// A field that must be given, though it may be `null`.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    serde::Deserialize::deserialize(d)
}

/// `PUT /api/sessions/{id}/budget` with `{"daily_tokens": N}` (null: back to the default).
pub async fn put_budget(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let body: BudgetBody = super::body::parse_body(body, state.body_limit)?;
    if body.daily_tokens == Some(0) {
        return Err(ApiError::invalid(
            "'daily_tokens' must be at least 1 (null puts the session back on the default)",
            "daily_tokens",
        ));
    }
    set_budget(&state, &id, body.daily_tokens).await
}

/// `DELETE /api/sessions/{id}/budget`: the session goes back to the default budget.
pub async fn delete_budget(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    set_budget(&state, &id, None).await
}

async fn set_budget(
    state: &AppState,
    session: &str,
    daily_tokens: Option<u64>,
) -> Result<Json<Value>, ApiError> {
    if session.is_empty() || session.len() > 256 {
        return Err(ApiError::invalid(
            "a session id has 1 to 256 characters",
            "session",
        ));
    }
    state
        .monitor
        .set_session_budget(session, daily_tokens)
        .await
        .map_err(ApiError::internal)?;
    Ok(Json(budget_json(state, session)))
}

pub async fn get_compression(State(state): State<AppState>, Path(id): Path<String>) -> Json<Value> {
    Json(json!({"session": id, "compression": state.compression.get(&id)}))
}

/// `PUT /api/sessions/{id}/compression` with `{"method": "prune", "ratio": 0.5}`: the session's
/// requests are compressed so unless they ask otherwise.
pub async fn put_compression(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let spec: crate::compress::Spec = super::body::parse_body(body, state.body_limit)?;
    spec.validate().map_err(|e| ApiError::invalid(e, "ratio"))?;
    state
        .compression
        .set(&id, Some(spec.clone()))
        .await
        .map_err(ApiError::internal)?;
    Ok(Json(json!({"session": id, "compression": spec})))
}

pub async fn delete_compression(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    state
        .compression
        .set(&id, None)
        .await
        .map_err(ApiError::internal)?;
    Ok(Json(json!({"session": id, "compression": null})))
}

pub async fn get_session_cache(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Json<Value> {
    Json(json!({"session": id, "cache": state.infer.cache_defaults.get(&id)}))
}

/// `PUT /api/sessions/{id}/cache` with `{"semantic": 0.95}`: the session's requests use the
/// semantic cache at that threshold unless they say otherwise.
pub async fn put_session_cache(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let spec: crate::infer::CacheSpec = super::body::parse_body(body, state.body_limit)?;
    spec.threshold()
        .map_err(|e| ApiError::invalid(e, "semantic"))?;
    state
        .infer
        .cache_defaults
        .set(&id, Some(spec))
        .await
        .map_err(ApiError::internal)?;
    Ok(Json(json!({"session": id, "cache": spec})))
}

pub async fn delete_session_cache(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    state
        .infer
        .cache_defaults
        .set(&id, None)
        .await
        .map_err(ApiError::internal)?;
    Ok(Json(json!({"session": id, "cache": null})))
}

/// What a session's tokens would have cost at each price in the table (US dollars).
pub fn cloud_cost(state: &AppState, prompt: u64, completion: u64) -> BTreeMap<String, f64> {
    state
        .monitor
        .settings()
        .prices
        .iter()
        .map(|p| (p.model.clone(), p.cost(prompt, completion)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deltas_add_up_per_session() {
        let row = |session: &str, status: u16, completion: u64| RequestRow {
            finished_at: 0.0,
            session: session.into(),
            model: "m".into(),
            api: "chat".into(),
            status,
            outcome: "ok".into(),
            error_kind: None,
            prompt_tokens: 10,
            cached_tokens: 0,
            completion_tokens: completion,
            queue_ms: None,
            ttft_ms: None,
            total_ms: 1.0,
            tokens_per_second: None,
            response_cached: false,
            variant: None,
            compression: None,
            route: None,
        };
        let d = deltas(&[row("a", 200, 5), row("b", 500, 0), row("a", 200, 7)]);
        assert_eq!(
            d["a"],
            SessionDelta {
                requests: 2,
                errors: 0,
                prompt_tokens: 20,
                completion_tokens: 12
            }
        );
        assert_eq!(d["b"].errors, 1);
    }
}
