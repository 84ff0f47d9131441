//! Drift probes: a model answers the fixed probe set greedily, and the answers are compared with
//! its first run's (MiniLM similarity, length, refusal rate); past a threshold the `drift` alert
//! fires for the model. Each loaded model is probed every `drift_probe_hours` (once the server
//! has run a while, so a short-lived server never spends its engine on them), and on demand:
//! `POST /api/monitor/drift/{model}`; `GET /api/monitor/drift` charts the runs.

use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::Json;
use serde_json::{json, Value};

use super::errors::ApiError;
use super::AppState;
use crate::engine::template::ChatMessage;
use crate::infer::{Api, CacheUse, Caller, Input, Request};
use crate::monitor::drift::{
    drift_finding, drift_reasons, refused, Compared, PROBES, PROBE_SESSION, PROBE_TOKENS,
};
use crate::store::drift::{DriftRun, ProbeAnswer};

/// How long a server runs before its first scheduled probe.
const SETTLE: Duration = Duration::from_secs(15 * 60);
/// How often the schedule is looked at.
const TICK: Duration = Duration::from_secs(5 * 60);

/// The probe set's answers from `model`, greedy and never from a cache.
async fn answers(state: &AppState, model: &str) -> Result<Vec<ProbeAnswer>, ApiError> {
    let mut out = Vec::with_capacity(PROBES.len());
    for prompt in PROBES {
        let caller = Caller {
            session: PROBE_SESSION.into(),
            rate_key: PROBE_SESSION.into(),
            cache: CacheUse {
                read: false,
                write: false,
            },
            timeout: Duration::from_secs(600),
        };
        let input = Input::Chat(vec![ChatMessage::new("user", prompt)]);
        let mut req = Request::new(Api::Chat, model, input, caller);
        req.sampling.temperature = Some(0.0);
        req.sampling.max_tokens = Some(PROBE_TOKENS as i64);
        let (answer, totals) = state.infer.start(req).await?.collect_one().await?;
        out.push(ProbeAnswer {
            prompt: prompt.to_string(),
            refused: refused(&answer.text),
            answer: answer.text,
            tokens: totals.completion as u64,
        });
    }
    Ok(out)
}

/// The mean, 0 of nothing (a run always has its probes).
fn mean(xs: impl Iterator<Item = f64>) -> f64 {
    crate::monitor::drift::mean(xs).unwrap_or(0.0)
}

fn refusal_rate(answers: &[ProbeAnswer]) -> f64 {
    mean(answers.iter().map(|a| a.refused as u8 as f64))
}

/// This run's figures against the baseline's answers (probe by probe).
async fn compare(
    state: &AppState,
    run: &[ProbeAnswer],
    baseline: &[ProbeAnswer],
) -> Result<Compared, ApiError> {
    let texts: Vec<&str> = run
        .iter()
        .chain(baseline)
        .map(|a| a.answer.as_str())
        .collect();
    let vectors = state
        .infer
        .embed_texts(crate::infer::embed::DEFAULT_EMBEDDER, &texts)
        .await
        .map_err(|e| ApiError::Unavailable {
            message: format!("drift probes compare answers with MiniLM: {e}"),
            code: "drift_embedding",
        })?
        .vectors;
    let (now, then) = vectors.split_at(run.len());
    let pairs = run.len().min(baseline.len());
    let similarity = mean((0..pairs).map(|i| crate::lab::experiments::cosine(&now[i], &then[i])));
    let tokens = |a: &[ProbeAnswer]| mean(a.iter().map(|a| a.tokens as f64));
    let base_tokens = tokens(baseline).max(1.0);
    Ok(Compared {
        similarity,
        length_ratio: tokens(run) / base_tokens,
        refusal_rate: refusal_rate(run),
        baseline_refusal_rate: refusal_rate(baseline),
    })
}

/// Probe `model` now: its run is saved (the first is the baseline) and the `drift` alert fires
/// or resolves by what it shows.
pub async fn probe(state: &AppState, model: &str) -> Result<DriftRun, ApiError> {
    let store = state.database("Drift probes need")?.clone();
    let weights = state
        .engines
        .get(model)
        .await
        .map_err(crate::infer::registry_error)?
        .weights_sha256
        .clone();
    let answers = answers(state, model).await?;
    let baseline = store
        .drift_baseline(model)
        .await
        .map_err(ApiError::internal)?;
    let now = crate::clock::unix_seconds();
    let mut run = DriftRun {
        id: 0,
        model: model.to_string(),
        weights_sha256: weights.map(|w| w.to_string()),
        ran_at: now,
        refusal_rate: refusal_rate(&answers),
        answers,
        similarity: None,
        length_ratio: None,
        drifted: false,
    };
    if let Some(base) = baseline {
        let c = compare(state, &run.answers, &base.answers).await?;
        let why = drift_reasons(&c, &state.monitor.settings().alerts);
        run.similarity = Some(c.similarity);
        run.length_ratio = Some(c.length_ratio);
        run.drifted = !why.is_empty();
        let alerts = state.monitor.alerts();
        match drift_finding(model, &c, &why) {
            Some(f) => alerts.fire(f, now),
            None => alerts.resolve_where("drift", now, |s| s != model),
        }
    }
    run.id = store.drift_insert(&run).await.map_err(ApiError::internal)?;
    Ok(run)
}

/// `POST /api/monitor/drift/{model}`: probe it now.
pub async fn run_now(
    State(state): State<AppState>,
    Path(model): Path<String>,
) -> Result<Json<DriftRun>, ApiError> {
    Ok(Json(probe(&state, &model).await?))
}

#[derive(serde::Deserialize)]
pub struct RunsQuery {
    model: Option<String>,
    /// Days back (default 30).
    days: Option<f64>,
}

/// `GET /api/monitor/drift`: the runs of the last `days` (every model, or one), oldest first,
/// with each model's baseline.
pub async fn runs(
    State(state): State<AppState>,
    Query(q): Query<RunsQuery>,
) -> Result<Json<Value>, ApiError> {
    let days = q.days.unwrap_or(30.0);
    if !(days > 0.0 && days <= 3650.0) {
        return Err(ApiError::invalid("'days' is between 0 and 3650", "days"));
    }
    let store = state.database("Drift probes need")?;
    let from = crate::clock::unix_seconds() - days * 86_400.0;
    let runs = store
        .drift_runs(q.model.as_deref(), from)
        .await
        .map_err(ApiError::internal)?;
    let settings = state.monitor.settings();
    Ok(Json(json!({
        "runs": runs,
        "probes": PROBES,
        "every_hours": settings.drift_probe_hours,
        "thresholds": {
            "similarity": settings.alerts.drift_similarity,
            "length_change": settings.alerts.drift_length_change,
            "refusal_change": settings.alerts.drift_refusal_change,
        },
    })))
}

/// `DELETE /api/monitor/drift/{model}`: forget its runs; the next run is a new baseline.
pub async fn forget(
    State(state): State<AppState>,
    Path(model): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let store = state.database("Drift probes need")?;
    let deleted = store
        .drift_forget(&model)
        .await
        .map_err(ApiError::internal)?;
    let now = crate::clock::unix_seconds();
    state
        .monitor
        .alerts()
        .resolve_where("drift", now, |s| s != model);
    Ok(Json(json!({"model": model, "deleted": deleted})))
}

/// Probe each loaded model whose last run is older than `drift_probe_hours`, one at a time.
pub fn spawn_schedule(state: AppState) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        tokio::time::sleep(SETTLE).await;
        let mut tick = tokio::time::interval(TICK);
        loop {
            tick.tick().await;
            let Some(hours) = state.monitor.settings().drift_probe_hours else {
                continue;
            };
            let Some(store) = state.monitor.store() else {
                return;
            };
            let last = store.drift_last_runs().await.unwrap_or_default();
            let now = crate::clock::unix_seconds();
            for m in state.engines.loaded() {
                let due = last
                    .iter()
                    .find(|(model, _)| *model == m.id)
                    .is_none_or(|(_, at)| now - at >= hours as f64 * 3600.0);
                if due {
                    if let Err(e) = probe(&state, &m.id).await {
                        tracing::warn!(model = m.id.as_str(), "drift probe failed: {e}");
                    }
                }
            }
        }
    })
}
