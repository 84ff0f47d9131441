//! W3C trace context on the request path: a client's `traceparent` is honoured (the request's
//! span becomes its child), the trace id is the request id returned in `X-Request-Id`, and
//! calls to remote engines carry the current span's `traceparent` on.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::trace::TraceContextExt;
use tracing_opentelemetry::OpenTelemetrySpanExt;

static TRACING: AtomicBool = AtomicBool::new(false);

pub(super) fn set_tracing(on: bool) {
    TRACING.store(on, Ordering::Relaxed);
}

/// The trace id in a `traceparent` header (`00-<32 hex>-<16 hex>-<2 hex>`), when it is one.
pub fn trace_id_of(traceparent: &str) -> Option<String> {
    let parts: Vec<&str> = traceparent.trim().split('-').collect();
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    match parts[..] {
        [version, trace, span, flags]
            if hex(version, 2)
                && version != "ff"
                && hex(trace, 32)
                && trace.bytes().any(|b| b != b'0')
                && hex(span, 16)
                && hex(flags, 2) =>
        {
            Some(trace.to_ascii_lowercase())
        }
        _ => None,
    }
}

/// Make `span` a child of the client's `traceparent` (when traces are exported), and return the
/// request's id: the trace id, the client's when it sent one, else a fresh one.
pub fn adopt(span: &tracing::Span, traceparent: Option<&str>) -> String {
    if TRACING.load(Ordering::Relaxed) {
        if let Some(header) = traceparent {
            let carrier = HashMap::from([("traceparent".to_string(), header.to_string())]);
            let parent = opentelemetry::global::get_text_map_propagator(|p| p.extract(&carrier));
            span.set_parent(parent);
        }
        let id = span.context().span().span_context().trace_id();
        if id != opentelemetry::trace::TraceId::INVALID {
            return format!("{id:032x}");
        }
    }
    traceparent
        .and_then(trace_id_of)
        .unwrap_or_else(|| format!("{:032x}", rand::random::<u128>()))
}

/// The current span's `traceparent`, for a call to a remote engine (none when traces are off).
pub fn traceparent() -> Option<String> {
    if !TRACING.load(Ordering::Relaxed) {
        return None;
    }
    let context = tracing::Span::current().context();
    let mut carrier = HashMap::new();
    opentelemetry::global::get_text_map_propagator(|p| p.inject_context(&context, &mut carrier));
    carrier.remove("traceparent")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparents_are_read_as_the_w3c_spec_writes_them() {
        let id = "4bf92f3577b34da6a3ce929d0e0e4736";
        assert_eq!(
            trace_id_of(&format!("00-{id}-00f067aa0ba902b7-01")).as_deref(),
            Some(id)
        );
        for bad in [
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "garbage",
        ] {
            assert_eq!(trace_id_of(bad), None, "{bad}");
        }
        // Without one (and traces off) a request still gets an id of the same shape.
        let fresh = adopt(&tracing::Span::none(), None);
        assert_eq!(fresh.len(), 32);
        assert_eq!(
            adopt(
                &tracing::Span::none(),
                Some(&format!("00-{id}-00f067aa0ba902b7-01"))
            ),
            id
        );
    }
}
