//! `/api/*`: what the UI and operators read about the server itself.

use axum::extract::{Path, Query, State};
use axum::Json;
use serde_json::{json, Value};

use super::errors::ApiError;
use super::AppState;
use crate::monitor::summary::{group, GroupBy, Summary};

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
        "semantic": state.caches.semantic.stats(),
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

/// Forget the semantic cache's answers, all or one model's (`?model=NAME`).
pub async fn clear_semantic(
    State(state): State<AppState>,
    Query(q): Query<ClearQuery>,
) -> Json<Value> {
    let deleted = state.caches.semantic.clear(q.model.as_deref()).await;
    Json(json!({"deleted": deleted, "model": q.model}))
}

/// Forget every cached response.
pub async fn clear_responses(State(state): State<AppState>) -> Json<Value> {
    Json(json!({"deleted": state.caches.responses.clear()}))
}

fn window_seconds(window: Option<&str>) -> Result<f64, ApiError> {
    match window.unwrap_or("all") {
        "5m" => Ok(300.0),
        "1h" => Ok(3_600.0),
        "1d" => Ok(86_400.0),
        "all" => Ok(f64::INFINITY),
        other => Err(ApiError::invalid(
            format!("Invalid 'window' `{other}`: use 5m, 1h, 1d or all"),
            "window",
        )),
    }
}

fn request_log(state: &AppState) -> Result<&crate::store::Store, ApiError> {
    state.database("The request log needs")
}

#[derive(serde::Deserialize)]
pub struct SessionsQuery {
    window: Option<String>,
    page: Option<u64>,
    per_page: Option<u64>,
}

/// Every session with requests in the window: counts, tokens, TTFT and latency percentiles.
pub async fn sessions(
    State(state): State<AppState>,
    Query(q): Query<SessionsQuery>,
) -> Result<Json<Value>, ApiError> {
    let window = window_seconds(q.window.as_deref())?;
    let rows = request_log(&state)?
        .requests_between(crate::clock::unix_seconds() - window, f64::INFINITY, None)
        .await
        .map_err(ApiError::internal)?;
    let sessions: Vec<Value> = group(&rows, GroupBy::Session)
        .into_iter()
        .map(|(id, summary)| session_json(&state, &id, summary))
        .collect();
    Ok(Json(json!({
        "window": q.window.as_deref().unwrap_or("all"),
        "sessions": sessions,
        "monitor": state.monitor.stats(),
    })))
}

/// One session: its summary over the window and its request log, newest first, paged.
pub async fn session(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<SessionsQuery>,
) -> Result<Json<Value>, ApiError> {
    let window = window_seconds(q.window.as_deref())?;
    let per_page = q.per_page.unwrap_or(50);
    if !(1..=1000).contains(&per_page) {
        return Err(ApiError::invalid(
            "'per_page' must be between 1 and 1000",
            "per_page",
        ));
    }
    let page = q.page.unwrap_or(1).max(1);
    let store = request_log(&state)?;
    let rows = store
        .requests_between(
            crate::clock::unix_seconds() - window,
            f64::INFINITY,
            Some(&id),
        )
        .await
        .map_err(ApiError::internal)?;
    let all = Summary::of(&rows);
    let (requests, total) = store
        .requests_page(&id, (page - 1) * per_page, per_page)
        .await
        .map_err(ApiError::internal)?;
    if total == 0 {
        return Err(ApiError::RouteNotFound(format!(
            "/api/sessions/{id} (no requests recorded for this session)"
        )));
    }
    let cost = super::monitoring::cloud_cost(&state, all.prompt_tokens, all.completion_tokens);
    Ok(Json(json!({
        "id": id,
        "window": q.window.as_deref().unwrap_or("all"),
        "summary": all,
        "budget": state.monitor.budgets().status(&id, crate::clock::unix_seconds()),
        "cloud_cost_usd": cost,
        "requests": requests,
        "page": page,
        "per_page": per_page,
        "total": total,
    })))
}

/// One session in the list: its summary, budget, and what its tokens would have cost in the
/// cloud (the price table).
fn session_json(state: &AppState, id: &str, summary: Summary) -> Value {
    let cost =
        super::monitoring::cloud_cost(state, summary.prompt_tokens, summary.completion_tokens);
    json!({
        "id": id,
        "budget": state.monitor.budgets().status(id, crate::clock::unix_seconds()),
        "cloud_cost_usd": cost,
        "summary": summary,
    })
}

#[derive(serde::Deserialize)]
pub struct UsageQuery {
    from: Option<f64>,
    to: Option<f64>,
    group_by: Option<String>,
    format: Option<String>,
}

/// Usage between two times (unix seconds), grouped by session, model or UTC day; JSON or CSV.
pub async fn usage(
    State(state): State<AppState>,
    Query(q): Query<UsageQuery>,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse;
    let by = match q.group_by.as_deref().unwrap_or("session") {
        "session" => GroupBy::Session,
        "model" => GroupBy::Model,
        "day" => GroupBy::Day,
        other => {
            return Err(ApiError::invalid(
                format!("Invalid 'group_by' `{other}`: use session, model or day"),
                "group_by",
            ))
        }
    };
    let (from, to) = (q.from.unwrap_or(0.0), q.to.unwrap_or(f64::INFINITY));
    if from > to {
        return Err(ApiError::invalid("'from' is after 'to'", "from"));
    }
    let rows = request_log(&state)?
        .requests_between(from, to, None)
        .await
        .map_err(ApiError::internal)?;
    let groups = group(&rows, by);
    match q.format.as_deref().unwrap_or("json") {
        "json" => {
            let groups: Vec<Value> = groups
                .into_iter()
                .map(|(key, summary)| json!({"key": key, "summary": summary}))
                .collect();
            Ok(Json(
                json!({"group_by": q.group_by.as_deref().unwrap_or("session"), "groups": groups}),
            )
            .into_response())
        }
        "csv" => {
            let opt = |x: Option<f64>| x.map_or(String::new(), |v| format!("{v:.3}"));
            let mut csv = String::from(
                "key,requests,errors,cancelled,prompt_tokens,cached_tokens,completion_tokens,\
                 ttft_p50_ms,ttft_p95_ms,latency_p50_ms,latency_p95_ms,latency_p99_ms,tokens_per_second\n",
            );
            for (key, s) in groups {
                let key = super::csv::field(&key);
                csv.push_str(&format!(
                    "{key},{},{},{},{},{},{},{},{},{},{},{},{}\n",
                    s.requests,
                    s.errors,
                    s.cancelled,
                    s.prompt_tokens,
                    s.cached_tokens,
                    s.completion_tokens,
                    opt(s.ttft_ms.p50),
                    opt(s.ttft_ms.p95),
                    opt(s.latency_ms.p50),
                    opt(s.latency_ms.p95),
                    opt(s.latency_ms.p99),
                    opt(s.tokens_per_second),
                ));
            }
            Ok(super::csv::response(csv))
        }
        other => Err(super::csv::bad_format(other)),
    }
}

/// `/metrics` in Prometheus' text format: request counters and histograms, and the engines' and
/// caches' figures as they are now.
pub async fn metrics(State(state): State<AppState>) -> axum::response::Response {
    use axum::response::IntoResponse;
    let m = state.monitor.metrics();
    m.reset_gauges();
    let (mut prefix_hits, mut prefix_misses) = (0, 0);
    for model in state.engines.loaded() {
        let (e, id) = (&model.engine, model.id.as_str());
        m.running.with_label_values(&[id]).set(e.running as i64);
        m.waiting.with_label_values(&[id]).set(e.waiting as i64);
        m.kv_tokens.with_label_values(&[id]).set(e.kv_tokens as i64);
        m.kv_budget_tokens
            .with_label_values(&[id])
            .set(e.kv_tokens_budget as i64);
        m.loaded.with_label_values(&[id, "chat"]).set(1);
        prefix_hits += e.prefix_cache.hits;
        prefix_misses += e.prefix_cache.lookups - e.prefix_cache.hits;
    }
    for (id, _) in state.embedders.loaded() {
        m.loaded.with_label_values(&[&id, "embedding"]).set(1);
    }
    m.cache_counts("prefix", &[("memory", prefix_hits)], prefix_misses);
    let e = state.caches.embeddings.stats().await;
    m.cache_counts(
        "embeddings",
        &[("memory", e.memory.hits), ("store", e.store.hits)],
        e.misses,
    );
    let r = state.caches.responses.stats();
    m.cache_counts("responses", &[("memory", r.hits)], r.misses);
    let sem = state.caches.semantic.stats();
    m.cache_counts("semantic", &[("index", sem.hits)], sem.misses);
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        m.render(),
    )
        .into_response()
}
