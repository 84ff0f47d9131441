//! The seam between the one request path and the local scheduler: `trait Backend`. A remote
//! OpenAI-compatible engine (vLLM, llama-server) is reached a step earlier, at the typed request
//! (`super::backends::Remote::open`), since it tokenizes for itself; both give the same
//! [`Generation`]s to the one loop, and the wire formats never see which one served them.

use tokio::sync::mpsc;

use super::error::InferError;
use crate::scheduler::{EngineHandle, GenEvent, ScheduleError, ValidatedRequest};

/// One choice's events, in order: tokens and text, then exactly one `Done` or `Failed`.
/// Dropping it cancels the generation and frees what it held.
pub type Generation = mpsc::UnboundedReceiver<GenEvent>;

/// Whether a backend can take work now, as `/api/engine` and routing see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Health {
    /// It answers at all (a stopped engine thread, an unreachable host: false).
    pub up: bool,
    /// Sequences running and waiting.
    pub load: usize,
}

/// What runs a model for the inference path.
pub trait Backend: Send + Sync {
    /// The model it serves, as clients name it.
    fn model_id(&self) -> &str;
    /// Queue one choice; a full queue is an error now (a 429), not an event later.
    fn schedule(&self, request: ValidatedRequest) -> Result<Generation, InferError>;
    /// A token's text, for log-probabilities.
    fn token_text(&self, id: u32) -> String;
    fn health(&self) -> Health;
    /// A request was answered without running (from the response cache): it still counts as
    /// use for keep-alive.
    fn served_without_running(&self, keep_alive: Option<crate::scheduler::KeepAlive>);
}

impl Backend for EngineHandle {
    fn model_id(&self) -> &str {
        &self.model_id
    }

    fn schedule(&self, request: ValidatedRequest) -> Result<Generation, InferError> {
        EngineHandle::schedule(self, request).map_err(|e| match e {
            ScheduleError::QueueFull(_) => InferError::Overloaded {
                message: format!("Server busy: {e}; retry shortly"),
                retry_after: 1,
            },
            ScheduleError::EngineStopped => InferError::internal(e),
        })
    }

    fn token_text(&self, id: u32) -> String {
        self.tokenizer
            .tokenizer
            .decode(&[id], false)
            .unwrap_or_default()
    }

    fn health(&self) -> Health {
        Health {
            up: !self.is_stopped(),
            load: self.in_flight(),
        }
    }

    fn served_without_running(&self, keep_alive: Option<crate::scheduler::KeepAlive>) {
        self.served_without_engine(keep_alive)
    }
}
