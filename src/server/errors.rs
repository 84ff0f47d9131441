//! One error type for the HTTP API, one mapping to OpenAI's error JSON and status, to Ollama's
//! (`{"error": message}`) on Ollama's routes and to Anthropic's (`{"type": "error", "error":
//! {"type", "message"}}`) on its routes. The inference path's errors become these.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// Everything a request can fail with, as a client sees it.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The body is not valid JSON, a field has the wrong type or an out-of-range value.
    #[error("{message}")]
    InvalidRequest {
        message: String,
        /// The field at fault, as OpenAI names it (`messages[2].content`).
        param: Option<std::borrow::Cow<'static, str>>,
        code: Option<&'static str>,
    },
    /// The server wants an API key and the request has none or a wrong one.
    #[error("Incorrect or missing API key: send `Authorization: Bearer <key>`")]
    Unauthorized,
    /// The admin API (`/api/*`) was called without the admin token, its cookie or an API key.
    #[error(
        "The admin API needs the admin token: the UI served by this server sends it as a cookie; \
         other local clients send `Authorization: Bearer <token>` from the file `admin-token` in \
         Lantern's data directory (or an API key, when keys are set)"
    )]
    AdminRequired,
    /// A browser-borne request this server refuses: a foreign `Host` (DNS rebinding) or a
    /// cross-site origin.
    #[error("{message}")]
    Forbidden { message: String, code: &'static str },
    /// A body that is not JSON by its `Content-Type`.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// The `model` names nothing this server serves.
    #[error("The model `{0}` does not exist or is not loaded")]
    ModelNotFound(String),
    /// No such route.
    #[error("Unknown request URL: {0}")]
    RouteNotFound(String),
    /// The body is larger than the server accepts.
    #[error("Request body too large: the limit is {0} bytes")]
    PayloadTooLarge(usize),
    /// The server is too busy to queue the request; retry after the given seconds.
    #[error("{message}")]
    Overloaded { message: String, retry_after: u64 },
    /// The session's daily token budget is spent; retry after the given seconds (its reset).
    #[error("{message}")]
    BudgetExhausted { message: String, retry_after: u64 },
    /// The request conflicts with the server's state (a model in use).
    #[error("{0}")]
    Conflict(String),
    /// The server cannot take the request now for want of a resource (memory to load a model).
    #[error("{message}")]
    Unavailable { message: String, code: &'static str },
    /// The request took longer than the server allows.
    #[error("The request took longer than {0} s and was stopped")]
    Timeout(u64),
    /// A fault in the server itself; details are in its log under the request id.
    #[error("Internal error (request {request_id}): {message}")]
    Internal { request_id: String, message: String },
}

impl ApiError {
    pub fn invalid(
        message: impl Into<String>,
        param: impl Into<std::borrow::Cow<'static, str>>,
    ) -> Self {
        Self::InvalidRequest {
            message: message.into(),
            param: Some(param.into()),
            code: None,
        }
    }

    /// A fault in the server, under a fresh request id (logged when it is answered).
    pub fn internal(e: impl std::fmt::Display) -> Self {
        Self::Internal {
            request_id: format!("req-{:016x}", rand::random::<u64>()),
            message: e.to_string(),
        }
    }

    /// The HTTP status this error answers with.
    pub fn status(&self) -> StatusCode {
        self.parts().0
    }

    fn parts(&self) -> (StatusCode, &'static str, Option<&str>, Option<&'static str>) {
        match self {
            Self::InvalidRequest { param, code, .. } => (
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                param.as_deref(),
                *code,
            ),
            Self::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                "invalid_request_error",
                None,
                Some("invalid_api_key"),
            ),
            Self::AdminRequired => (
                StatusCode::UNAUTHORIZED,
                "invalid_request_error",
                None,
                Some("admin_token_required"),
            ),
            Self::Forbidden { code, .. } => (
                StatusCode::FORBIDDEN,
                "invalid_request_error",
                None,
                Some(*code),
            ),
            Self::UnsupportedMediaType(_) => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "invalid_request_error",
                None,
                Some("unsupported_media_type"),
            ),
            Self::ModelNotFound(_) => (
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                Some("model"),
                Some("model_not_found"),
            ),
            Self::RouteNotFound(_) => (StatusCode::NOT_FOUND, "invalid_request_error", None, None),
            Self::PayloadTooLarge(_) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "invalid_request_error",
                None,
                Some("payload_too_large"),
            ),
            Self::Overloaded { .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_error",
                None,
                Some("queue_full"),
            ),
            Self::BudgetExhausted { .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                "insufficient_quota",
                None,
                Some("budget_exhausted"),
            ),
            Self::Conflict(_) => (
                StatusCode::CONFLICT,
                "invalid_request_error",
                None,
                Some("conflict"),
            ),
            Self::Unavailable { code, .. } => (
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                None,
                Some(*code),
            ),
            Self::Timeout(_) => (
                StatusCode::GATEWAY_TIMEOUT,
                "server_error",
                None,
                Some("timeout"),
            ),
            Self::Internal { .. } => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                None,
                None,
            ),
        }
    }

    /// The error object alone, as sent inside a stream that already started.
    pub fn body(&self) -> serde_json::Value {
        let (_, kind, param, code) = self.parts();
        json!({"error": {"message": self.to_string(), "type": kind, "param": param, "code": code}})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, ..) = self.parts();
        if let Self::Internal {
            request_id,
            message,
        } = &self
        {
            tracing::error!(request_id, message, "internal error");
        }
        let mut response = (status, axum::Json(self.body())).into_response();
        if let Self::Overloaded { retry_after, .. } | Self::BudgetExhausted { retry_after, .. } =
            self
        {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
        }
        response
    }
}

impl From<crate::infer::InferError> for ApiError {
    fn from(e: crate::infer::InferError) -> Self {
        use crate::infer::InferError as E;
        match e {
            E::Invalid {
                message,
                param,
                code,
            } => Self::InvalidRequest {
                message,
                param,
                code,
            },
            E::ModelNotFound(m) => Self::ModelNotFound(m),
            E::Overloaded {
                message,
                retry_after,
            } => Self::Overloaded {
                message,
                retry_after,
            },
            E::BudgetExhausted {
                message,
                retry_after,
            } => Self::BudgetExhausted {
                message,
                retry_after,
            },
            E::Unavailable { message, code } => Self::Unavailable { message, code },
            E::Timeout(s) => Self::Timeout(s),
            E::Internal {
                request_id,
                message,
            } => Self::Internal {
                request_id,
                message,
            },
        }
    }
}

impl From<crate::infer::InferError> for OllamaError {
    fn from(e: crate::infer::InferError) -> Self {
        Self(e.into())
    }
}

/// An error in Anthropic's shape: the status, and `{"type": "error", "error": {"type",
/// "message"}}` with Anthropic's names for the kinds (the SDKs raise by status and read these).
#[derive(Debug)]
pub struct AnthropicError(pub ApiError);

impl<E: Into<ApiError>> From<E> for AnthropicError {
    fn from(e: E) -> Self {
        Self(e.into())
    }
}

impl AnthropicError {
    /// Anthropic's status and error type for one of ours: 529 when overloaded, as its API says.
    fn parts(&self) -> (StatusCode, &'static str) {
        match &self.0 {
            ApiError::Unauthorized | ApiError::AdminRequired => {
                (StatusCode::UNAUTHORIZED, "authentication_error")
            }
            ApiError::Forbidden { .. } => (StatusCode::FORBIDDEN, "permission_error"),
            ApiError::ModelNotFound(_) | ApiError::RouteNotFound(_) => {
                (StatusCode::NOT_FOUND, "not_found_error")
            }
            ApiError::PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "request_too_large"),
            ApiError::BudgetExhausted { .. } => (StatusCode::TOO_MANY_REQUESTS, "rate_limit_error"),
            ApiError::Overloaded { .. } | ApiError::Unavailable { .. } => (
                StatusCode::from_u16(529).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
                "overloaded_error",
            ),
            ApiError::Timeout(_) => (StatusCode::GATEWAY_TIMEOUT, "timeout_error"),
            ApiError::Internal { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "api_error"),
            other => (other.status(), "invalid_request_error"),
        }
    }

    /// The error object alone, as an `error` event inside a stream that already started.
    pub fn body(&self) -> serde_json::Value {
        json!({"type": "error", "error": {"type": self.parts().1, "message": self.0.to_string()}})
    }
}

impl IntoResponse for AnthropicError {
    fn into_response(self) -> Response {
        let body = self.body();
        let mut response = (self.parts().0, axum::Json(body)).into_response();
        if let ApiError::Overloaded { retry_after, .. }
        | ApiError::BudgetExhausted { retry_after, .. } = self.0
        {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
        }
        response
    }
}

/// An error in Ollama's shape: the status, and `{"error": message}`.
#[derive(Debug)]
pub struct OllamaError(pub ApiError);

impl From<ApiError> for OllamaError {
    fn from(e: ApiError) -> Self {
        Self(e)
    }
}

impl IntoResponse for OllamaError {
    fn into_response(self) -> Response {
        let status = self.0.status();
        (status, axum::Json(json!({"error": self.0.to_string()}))).into_response()
    }
}

/// An error as the API at `path` writes it: Ollama's shape on its routes, Anthropic's on its
/// own, OpenAI's elsewhere.
pub fn error_for(path: &str, e: ApiError) -> Response {
    if is_ollama_path(path) {
        OllamaError(e).into_response()
    } else if path.starts_with("/v1/messages") {
        AnthropicError(e).into_response()
    } else {
        e.into_response()
    }
}

/// Ollama's paths that any client may call (the rest of `/api/` is Lantern's admin API).
pub fn is_ollama_path(path: &str) -> bool {
    matches!(
        path,
        "/api/chat"
            | "/api/generate"
            | "/api/embed"
            | "/api/embeddings"
            | "/api/tags"
            | "/api/show"
            | "/api/ps"
            | "/api/version"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ollama_paths_are_named() {
        assert!(is_ollama_path("/api/chat") && is_ollama_path("/api/tags"));
        assert!(!is_ollama_path("/api/models") && !is_ollama_path("/api/engine"));
    }
}
