//! The HTTP door: axum routes and wire types only; no model logic here.
//!
//! `openai` serves the OpenAI-compatible API (`embeddings` its `/v1/embeddings`), `validate` turns bodies into scheduler requests,
//! `errors` maps every failure to OpenAI's error JSON, `sse` streams.

pub mod admin;
pub mod admin_token;
pub mod anthropic;
pub mod backends;
pub mod body;
pub mod browser;
pub mod budget;
pub mod caller;
pub mod canary;
pub mod consistency;
pub mod csv;
pub mod devices;
pub mod drift;
pub mod embeddings;
pub mod errors;
pub mod experiments;
pub mod guard;
pub mod jobs;
pub mod lab;
pub mod models;
pub mod monitoring;
pub mod ollama;
pub mod openai;
pub mod rate;
pub mod request_span;
pub mod responses;
pub mod settings;
pub mod sse;
pub mod start;
pub mod structured;
pub mod thread_reply;
pub mod thread_votes;
pub mod threads;
pub mod tools;
pub mod ui;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::scheduler::Registry;
use errors::ApiError;

pub use crate::config::serve::DEFAULT_BODY_LIMIT;

/// What every handler can reach: the loaded models and the server's limits.
#[derive(Clone)]
pub struct AppState {
    pub engines: Registry,
    /// The one inference path every wire format runs its requests through.
    pub infer: crate::infer::Infer,
    /// Embedding models, loaded on first request.
    pub embedders: crate::scheduler::embedder::Embedders,
    pub caches: crate::cache::Caches,
    /// Where every finished request is recorded.
    pub monitor: crate::monitor::Monitor,
    /// The model `lantern serve` was started with (loaded and warmed before it listens).
    pub default_model: String,
    pub body_limit: usize,
    pub keys: guard::ApiKeys,
    /// What the admin API (`/api/*`) asks for besides an API key.
    pub admin: admin_token::AdminToken,
    /// The saved settings, and the CORS origins and request timeout they set.
    pub settings: std::sync::Arc<settings::Settings>,
    pub rate: rate::RateLimiter,
    /// Long jobs (benchmarks, quantizations, experiments) started through the API.
    pub jobs: crate::jobs::Jobs,
    /// Blind-vote pairs handed out and not yet voted on.
    pub pairs: experiments::Pairs,
    /// Sessions' default prompt compression.
    pub compression:
        std::sync::Arc<crate::store::session_defaults::SessionDefaults<crate::compress::Spec>>,
}

impl AppState {
    /// The database, or a 503 saying that `needing` ("Threads need") cannot work without it:
    /// a database that could not be opened at start leaves the server running without it.
    pub fn database(&self, needing: &str) -> Result<&crate::store::Store, errors::ApiError> {
        self.monitor
            .store()
            .ok_or_else(|| errors::ApiError::Unavailable {
                message: format!(
                    "{needing} the database, which could not be opened (see the server's log)"
                ),
                code: "no_database",
            })
    }
}

/// The desktop app's own origins (Tauri on Linux/macOS and on Windows).
pub const APP_ORIGINS: [&str; 2] = ["tauri://localhost", "http://tauri.localhost"];

/// The router, without a listener (tests drive it with `oneshot`).
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(ui::asset))
        .route("/index.html", get(ui::asset))
        .route("/favicon.svg", get(ui::asset))
        .route("/assets/{*path}", get(ui::asset))
        .route("/health", get(health))
        .route("/metrics", get(admin::metrics))
        .route("/v1/models", get(models::list_models))
        .route("/v1/models/{*id}", get(models::get_model))
        .route("/v1/chat/completions", post(openai::chat_completions))
        .route("/v1/completions", post(openai::completions))
        .route("/v1/responses", post(responses::responses))
        .route("/v1/embeddings", post(embeddings::embeddings))
        .route("/v1/messages", post(anthropic::messages))
        .route("/v1/messages/count_tokens", post(anthropic::count_tokens))
        .route("/api/chat", post(ollama::chat))
        .route("/api/generate", post(ollama::generate))
        .route("/api/embed", post(ollama::embed))
        .route("/api/embeddings", post(ollama::embed))
        .route("/api/tags", get(ollama::tags))
        .route("/api/show", post(ollama::show))
        .route("/api/ps", get(ollama::ps))
        .route("/api/version", get(ollama::version))
        .route("/api/engine", get(admin::engine))
        .route("/api/backends", get(backends::list).post(backends::put))
        .route(
            "/api/backends/{name}",
            axum::routing::delete(backends::delete),
        )
        .route("/api/backends/{name}/test", post(backends::test))
        .route("/api/cache", get(admin::cache))
        .route("/api/sessions", get(admin::sessions))
        .route("/api/sessions/{id}", get(admin::session))
        .route(
            "/api/sessions/{id}/budget",
            get(monitoring::get_budget)
                .put(monitoring::put_budget)
                .delete(monitoring::delete_budget),
        )
        .route(
            "/api/sessions/{id}/cache",
            get(monitoring::get_session_cache)
                .put(monitoring::put_session_cache)
                .delete(monitoring::delete_session_cache),
        )
        .route(
            "/api/sessions/{id}/compression",
            get(monitoring::get_compression)
                .put(monitoring::put_compression)
                .delete(monitoring::delete_compression),
        )
        .route("/api/usage", get(admin::usage))
        .route("/api/alerts", get(monitoring::alerts))
        .route("/api/devices", get(devices::devices))
        .route("/api/devices/stream", get(devices::devices_stream))
        .route(
            "/api/bench",
            get(devices::list_bench).post(devices::start_bench),
        )
        .route("/api/bench/compare", get(devices::compare_bench))
        .route("/api/bench/{id}", get(devices::get_bench))
        .route("/api/models/{id}/quantize", post(lab::quantize))
        .route("/api/models/catalog", get(models::catalog))
        .route("/api/models/pull", post(models::pull))
        .route("/api/models/import", post(models::import))
        .route("/api/models/{id}/load", post(models::load))
        .route("/api/models/{id}/unload", post(models::unload))
        .route("/api/models/{id}", axum::routing::delete(models::delete))
        .route(
            "/api/lab/quality",
            get(lab::list_quality).post(lab::start_quality),
        )
        .route(
            "/api/lab/experiments",
            get(experiments::list).post(experiments::create),
        )
        .route("/api/lab/experiments/{key}", get(experiments::get))
        .route("/api/lab/experiments/{key}/run", post(experiments::run))
        .route("/api/lab/experiments/{key}/pair", get(experiments::pair))
        .route("/api/lab/experiments/{key}/votes", post(experiments::vote))
        .route("/api/lab/experiments/{key}/canary", get(canary::get))
        .route(
            "/api/lab/experiments/{key}/canary/promote",
            post(canary::promote),
        )
        .route(
            "/api/lab/experiments/{key}/canary/rollback",
            post(canary::rollback),
        )
        .route(
            "/api/settings",
            get(settings::get_settings).put(settings::put_settings),
        )
        .route("/api/threads", get(threads::list).post(threads::create))
        .route(
            "/api/threads/{id}",
            get(threads::get)
                .patch(threads::update)
                .delete(threads::delete),
        )
        .route("/api/threads/{id}/restore", post(threads::restore))
        .route("/api/threads/{id}/messages", post(threads::add_message))
        .route("/api/threads/{id}/reply", post(thread_reply::reply))
        .route("/api/threads/{id}/votes", post(thread_votes::vote))
        .route("/api/threads/{id}/export", get(threads::export))
        .route("/api/jobs", get(jobs::list_jobs))
        .route(
            "/api/jobs/{id}",
            get(jobs::get_job).delete(jobs::cancel_job),
        )
        .route("/api/monitor/stream", get(monitoring::stream))
        .route("/api/monitor/series", get(monitoring::series))
        .route("/api/monitor/drift", get(drift::runs))
        .route(
            "/api/monitor/drift/{model}",
            post(drift::run_now).delete(drift::forget),
        )
        .route("/api/monitor/consistency", get(consistency::points))
        .route(
            "/api/monitor/settings",
            get(monitoring::get_settings).put(monitoring::put_settings),
        )
        .route(
            "/api/cache/embeddings",
            axum::routing::delete(admin::clear_embeddings),
        )
        .route(
            "/api/cache/responses",
            axum::routing::delete(admin::clear_responses),
        )
        .route(
            "/api/cache/semantic",
            axum::routing::delete(admin::clear_semantic),
        )
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(state.body_limit))
        .layer(axum::middleware::from_fn_with_state(
            state.rate.clone(),
            rate::limit,
        ))
        .layer(axum::middleware::from_fn(request_span::request_span))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            guard::require_access,
        ))
        .layer(
            CorsLayer::new()
                .allow_origin({
                    let origins = state.settings.cors();
                    AllowOrigin::predicate(move |origin: &HeaderValue, _| {
                        origins
                            .read()
                            .unwrap_or_else(|e| e.into_inner())
                            .contains(origin)
                    })
                })
                .allow_methods([
                    Method::GET,
                    Method::POST,
                    Method::PUT,
                    Method::PATCH,
                    Method::DELETE,
                ])
                .allow_headers([
                    header::AUTHORIZATION,
                    header::CONTENT_TYPE,
                    HeaderName::from_static("x-session-id"),
                    HeaderName::from_static("x-api-key"),
                    HeaderName::from_static("anthropic-version"),
                    HeaderName::from_static("traceparent"),
                ])
                .expose_headers([request_span::REQUEST_ID]),
        )
        // Outermost: a foreign `Host` or a cross-site write is refused before anything runs.
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            browser::defend,
        ))
        .with_state(state)
}

/// Ready once the default model is loaded and warmed (the server only listens after that).
async fn health(State(state): State<AppState>) -> impl IntoResponse {
    let loaded: Vec<String> = state.engines.loaded().into_iter().map(|m| m.id).collect();
    (
        StatusCode::OK,
        Json(json!({
            "status": "ok",
            "model": state.default_model,
            "loaded": loaded,
        })),
    )
}

async fn not_found(uri: Uri) -> ApiError {
    ApiError::RouteNotFound(uri.path().to_string())
}

/// Ctrl-C or SIGTERM, listened for from the moment this is called, not from the future's
/// first poll: a signal sent right after the server says it listens must not meet the default
/// action (which kills the process mid-stream).
pub fn shutdown_signal() -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let (int, term) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        );
        Box::pin(async move {
            let wait = |s: std::io::Result<tokio::signal::unix::Signal>| async move {
                match s {
                    Ok(mut s) => {
                        s.recv().await;
                    }
                    Err(_) => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                _ = wait(int) => {},
                _ = wait(term) => {},
            }
        })
    }
    #[cfg(not(unix))]
    Box::pin(async {
        let _ = tokio::signal::ctrl_c().await;
    })
}
