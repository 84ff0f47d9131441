//! What an engine thread is handed: a request to generate for, or work that needs the model to
//! itself between two steps. Prompt-compression scoring runs a forward pass of its own; as a job
//! on the engine thread it queues with everything else instead of racing the step loop for the
//! same weights and cores.

use std::time::Instant;

use tokio::sync::mpsc::UnboundedSender;

use super::{GenEvent, ValidatedRequest};
use crate::engine::ChatModel;

/// A request on its way to the engine thread.
pub(crate) struct Generate {
    pub request: ValidatedRequest,
    pub events: UnboundedSender<GenEvent>,
    pub queued_at: Instant,
    /// The request's trace span where it was scheduled: the engine's spans for it go under.
    pub trace: tracing::Span,
    /// Open from scheduling to the first step that includes it.
    pub queue: tracing::Span,
}

/// Work run on the engine thread with the model, between two steps.
pub(crate) type Exclusive = Box<dyn FnOnce(&ChatModel) + Send>;

pub(crate) enum Job {
    /// Boxed: a request is large, and the channel holds every job at the size of the largest.
    Generate(Box<Generate>),
    Exclusive(Exclusive),
}
