//! What the inference path can fail with, whichever wire format asked. Each adapter in
//! `server/` turns it into its own error shape (OpenAI's, Ollama's, Anthropic's).

use std::borrow::Cow;

/// Everything planning or running a request can fail with, as a client sees it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum InferError {
    /// A field has an out-of-range value or means nothing for the chosen model.
    #[error("{message}")]
    Invalid {
        message: String,
        /// The field at fault, as the OpenAI API names it (`messages[2].content`).
        param: Option<Cow<'static, str>>,
        code: Option<&'static str>,
    },
    /// The `model` names nothing this server serves.
    #[error("The model `{0}` does not exist or is not loaded")]
    ModelNotFound(String),
    /// The server is too busy to queue the request; retry after the given seconds.
    #[error("{message}")]
    Overloaded { message: String, retry_after: u64 },
    /// The session's daily token budget is spent; retry after the given seconds (its reset).
    #[error("{message}")]
    BudgetExhausted { message: String, retry_after: u64 },
    /// The server cannot take the request now for want of a resource (memory to load a model).
    #[error("{message}")]
    Unavailable { message: String, code: &'static str },
    /// The request took longer than the server allows.
    #[error("The request took longer than {0} s and was stopped")]
    Timeout(u64),
    /// A fault in the server or the engine; details are in the log under the request id.
    #[error("Internal error (request {request_id}): {message}")]
    Internal { request_id: String, message: String },
}

impl InferError {
    pub fn invalid(message: impl Into<String>, param: impl Into<Cow<'static, str>>) -> Self {
        Self::Invalid {
            message: message.into(),
            param: Some(param.into()),
            code: None,
        }
    }

    /// A fault in the server, under a fresh request id.
    pub fn internal(e: impl std::fmt::Display) -> Self {
        Self::Internal {
            request_id: format!("req-{:016x}", rand::random::<u64>()),
            message: e.to_string(),
        }
    }
}
