//! The trace spans of one choice's generation, as its events arrive: `prefill` until the first
//! token, then `decode` with the engine's figures.

use crate::scheduler::{GenEvent, Usage};

/// A choice's `prefill` span (scheduling to the first token: the queue and the prompt), then
/// its `decode` span (to the last), which gets the engine's figures at the end.
pub(super) struct Phase {
    prefill: Option<tracing::Span>,
    decode: Option<tracing::Span>,
    choice: usize,
}

impl Phase {
    pub(super) fn prefill(choice: usize) -> Self {
        Self {
            prefill: Some(tracing::info_span!("prefill", choice = choice as i64)),
            decode: None,
            choice,
        }
    }

    pub(super) fn saw(&mut self, event: &GenEvent) {
        let first = matches!(
            event,
            GenEvent::Token { .. } | GenEvent::NamedToken { .. } | GenEvent::Text(_)
        );
        if first && self.decode.is_none() {
            self.prefill = None;
            use tracing::field::Empty;
            self.decode = Some(tracing::info_span!(
                "decode",
                choice = self.choice as i64,
                completion_tokens = Empty,
                prompt_tokens = Empty,
                cached_tokens = Empty,
                queue_ms = Empty,
                prefill_ms = Empty
            ));
        }
    }

    pub(super) fn done(&mut self, usage: &Usage) {
        self.prefill = None;
        if let Some(d) = self.decode.take() {
            // As i64: OpenTelemetry's integers are signed (a u64 is exported as a string).
            d.record("completion_tokens", usage.completion_tokens as i64);
            d.record("prompt_tokens", usage.prompt_tokens as i64);
            d.record("cached_tokens", usage.cached_tokens as i64);
            d.record("queue_ms", usage.queue.as_secs_f64() * 1e3);
            d.record("prefill_ms", usage.prefill.as_secs_f64() * 1e3);
        }
    }
}
