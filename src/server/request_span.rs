//! Every API request runs in a `request` span: its id (the trace id: the client's, from its
//! `traceparent`, or a fresh one) comes back in `X-Request-Id`, JSON log lines carry it with the
//! session and model the request path records, and with traces exported the span and its
//! children (route, plan, cache look-up, generate, prefill, decode, remote) form the trace.

use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use tracing::field::Empty;
use tracing::Instrument;

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

pub async fn request_span(request: Request, next: Next) -> Response {
    let path = request.uri().path();
    // The UI's files and the health check are not requests worth a trace.
    if !(path.starts_with("/v1/") || path.starts_with("/api/")) {
        return next.run(request).await;
    }
    let span = tracing::info_span!(
        "request",
        request_id = Empty,
        method = %request.method(),
        path,
        session = Empty,
        model = Empty,
    );
    let traceparent = request
        .headers()
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    let id = crate::telemetry::context::adopt(&span, traceparent.as_deref());
    span.record("request_id", id.as_str());
    let mut response = next.run(request).instrument(span).await;
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    response
}
