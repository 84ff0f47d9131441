//! `/v1/chat/completions`, `/v1/completions`: wire shapes exactly as OpenAI's, and Lantern's
//! timings in an extra `timings` field that SDKs ignore. The bodies become the one typed request
//! (`wire`); the answer is the inference path's events, written whole or as chunks (`render`).

pub mod render;
pub mod wire;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;

use super::body::parse_body;
use super::budget::Admitted;
use super::errors::ApiError;
use super::AppState;
use crate::infer::Request;
use wire::{ChatRequest, CompletionRequest, Delivery};

pub(super) fn now() -> u64 {
    crate::clock::unix_seconds() as u64
}

pub(super) fn new_id(prefix: &str) -> String {
    format!(
        "{prefix}-{:016x}{:08x}",
        rand::random::<u64>(),
        rand::random::<u32>()
    )
}

/// A registry failure as the client sees it.
pub fn registry_error(e: crate::scheduler::RegistryError) -> ApiError {
    crate::infer::registry_error(e).into()
}

pub async fn chat_completions(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let mut req: ChatRequest = parse_body(body, state.body_limit)?;
    let delivery = std::mem::take(&mut req.delivery);
    let caller = super::caller::caller(&state, &headers, delivery.user.as_deref());
    serve(&state, req.into_request(caller)?, delivery).await
}

pub async fn completions(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let mut req: CompletionRequest = parse_body(body, state.body_limit)?;
    let delivery = std::mem::take(&mut req.delivery);
    let caller = super::caller::caller(&state, &headers, delivery.user.as_deref());
    serve(&state, req.into_request(caller)?, delivery).await
}

/// A chat answer as chunks with usage, for the threads' replies.
pub(super) fn stream_chat(run: crate::infer::Run) -> Response {
    render::stream(run, crate::infer::Api::Chat, true)
}

/// Plan and run on the one path; answer whole or as chunks.
async fn serve(state: &AppState, req: Request, delivery: Delivery) -> Result<Response, ApiError> {
    let api = req.api;
    let mut run = state.infer.start(req).await?;
    let admitted = Admitted::of(&run);
    let compression = run.compression.clone();
    let response = if delivery.stream {
        render::stream(run, api, delivery.include_usage())
    } else {
        let answer = run.collect().await?;
        render::complete(&run, answer, api)
    };
    Ok(with_compression(
        admitted.onto(response),
        compression.as_ref(),
    ))
}

/// Set on answers whose prompt was compressed: `prune@0.5 612->306` (method and target, then the
/// prompt's tokens before and after).
pub const COMPRESSION: axum::http::HeaderName =
    axum::http::HeaderName::from_static("x-lantern-compression");

fn with_compression(mut r: Response, c: Option<&crate::infer::validate::Applied>) -> Response {
    if let Some(c) = c {
        let text = format!(
            "{} {}->{}",
            c.label(),
            c.report.original_tokens,
            c.report.compressed_tokens
        );
        if let Ok(v) = axum::http::HeaderValue::from_str(&text) {
            r.headers_mut().insert(COMPRESSION, v);
        }
    }
    r
}
