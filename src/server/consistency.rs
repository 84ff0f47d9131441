//! Consistency of each session's answers: every finished answer's length, and its MiniLM
//! similarity to the running mean of the session's earlier answers, kept as a point; when a
//! session's latest answers move from its earlier ones past a threshold, the `consistency`
//! alert fires for it. Answers are embedded by the embedding model directly, off the request
//! path (answers rarely repeat, so the embedding cache is left to requests).
//! `GET /api/monitor/consistency` charts a session's points as distributions over time.

use axum::extract::{Query, State};
use axum::Json;
use serde_json::{json, Value};

use super::errors::ApiError;
use super::AppState;
use crate::monitor::answers::Answered;
use crate::monitor::drift::consistency_finding;
use crate::monitor::summary::rank;
use crate::store::drift::AnswerPoint;
use crate::store::Store;

/// Answers the running mean weighs at most: older ones fade, so a lasting change becomes the
/// session's new normal instead of an alert forever.
const CENTROID_SPAN: u64 = 50;

/// One answer's point: its similarity to the session's mean so far, which then takes it in.
async fn measure(state: &AppState, store: &Store, a: &Answered) -> Result<AnswerPoint, String> {
    let vector = crate::lab::runner::embed(&state.embedders, &[a.text.as_str()])
        .await?
        .pop()
        .ok_or("no vector")?;
    let centroid = store
        .centroid_get(&a.session)
        .await
        .map_err(|e| e.to_string())?
        .filter(|(c, _)| c.len() == vector.len());
    let (similarity, mean, n) = match centroid {
        Some((c, n)) => {
            let similarity = crate::lab::experiments::cosine(&vector, &c);
            let w = n.min(CENTROID_SPAN - 1) as f32;
            let mean: Vec<f32> = c
                .iter()
                .zip(&vector)
                .map(|(m, v)| (m * w + v) / (w + 1.0))
                .collect();
            (Some(similarity), mean, n + 1)
        }
        None => (None, vector, 1),
    };
    store
        .centroid_put(&a.session, &mean, n)
        .await
        .map_err(|e| e.to_string())?;
    let point = AnswerPoint {
        session: a.session.clone(),
        model: a.model.clone(),
        at: a.at,
        tokens: a.tokens,
        similarity,
    };
    store
        .answer_point_insert(&point)
        .await
        .map_err(|e| e.to_string())?;
    Ok(point)
}

/// Judge a session by its latest points: fire or resolve its `consistency` alert.
async fn judge(state: &AppState, store: &Store, session: &str) {
    let t = state.monitor.settings().alerts;
    let points = match store
        .answer_points(Some(session), 0.0, 50 + t.consistency_recent)
        .await
    {
        Ok(p) => p,
        Err(e) => return tracing::warn!(error = %e, "consistency: points not read"),
    };
    let now = crate::clock::unix_seconds();
    let alerts = state.monitor.alerts();
    match consistency_finding(session, &points, &t) {
        Some(f) => alerts.fire(f, now),
        None => alerts.resolve_where("consistency", now, |s| s != session),
    }
}

/// Measure answers as they finish, for as long as the server runs.
pub fn spawn_worker(state: AppState) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            state.monitor.answers().ready().await;
            let Some(store) = state.monitor.store().cloned() else {
                state.monitor.answers().drain();
                continue;
            };
            let mut sessions = Vec::new();
            for a in state.monitor.answers().drain() {
                match measure(&state, &store, &a).await {
                    Ok(_) if !sessions.contains(&a.session) => sessions.push(a.session),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "consistency: answer not measured"),
                }
            }
            for s in sessions {
                judge(&state, &store, &s).await;
            }
        }
    })
}

/// The 10th, 50th and 90th percentiles.
fn spread(mut values: Vec<f64>) -> Value {
    values.sort_by(f64::total_cmp);
    json!({"p10": rank(&values, 10.0), "p50": rank(&values, 50.0), "p90": rank(&values, 90.0)})
}

#[derive(serde::Deserialize)]
pub struct PointsQuery {
    session: Option<String>,
    /// Hours back (default 24), in 24 buckets.
    hours: Option<f64>,
}

/// `GET /api/monitor/consistency?session=S&hours=24`: the session's answers over time (every
/// session's when none is named), each bucket with the count and the 10th, 50th and 90th
/// percentiles of length and similarity; and the sessions that have points.
pub async fn points(
    State(state): State<AppState>,
    Query(q): Query<PointsQuery>,
) -> Result<Json<Value>, ApiError> {
    let hours = q.hours.unwrap_or(24.0);
    if !(hours > 0.0 && hours <= 24.0 * 365.0) {
        return Err(ApiError::invalid("'hours' is between 0 and 8760", "hours"));
    }
    let store = state.database("Consistency figures need")?;
    let now = crate::clock::unix_seconds();
    let from = now - hours * 3600.0;
    let points = store
        .answer_points(q.session.as_deref(), from, 100_000)
        .await
        .map_err(ApiError::internal)?;
    let mut sessions: Vec<&str> = points.iter().map(|p| p.session.as_str()).collect();
    sessions.sort_unstable();
    sessions.dedup();
    let step = hours * 3600.0 / 24.0;
    let buckets: Vec<Value> = (0..24)
        .map(|i| {
            let start = from + i as f64 * step;
            let inside: Vec<&AnswerPoint> = points
                .iter()
                .filter(|p| p.at >= start && p.at < start + step)
                .collect();
            json!({
                "t": start + step,
                "n": inside.len(),
                "tokens": spread(inside.iter().map(|p| p.tokens as f64).collect()),
                "similarity": spread(inside.iter().filter_map(|p| p.similarity).collect()),
            })
        })
        .collect();
    Ok(Json(json!({
        "session": q.session,
        "sessions": sessions,
        "buckets": buckets,
        "answers": points.len(),
        "dropped": state.monitor.answers().dropped(),
    })))
}
