//! Logs and traces. Logs go to stderr as text or, with `--log-format json`, one JSON object a
//! line carrying the request's span fields (request id, API, session, model). With
//! `--otlp-endpoint URL` the same `tracing` spans (request, route, plan, cache look-up,
//! generate with its prefill and decode, remote calls) are exported over OTLP/HTTP as
//! OpenTelemetry traces; without it no exporter exists, and spans below the log level cost a
//! branch.

pub mod context;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor, SdkTracerProvider};
use tracing_subscriber::filter::{EnvFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Why telemetry could not start.
#[derive(Debug, thiserror::Error)]
#[error("--otlp-endpoint {endpoint}: {message}")]
pub struct TelemetryError {
    endpoint: String,
    message: String,
}

/// Keeps the trace exporter alive; dropping it sends the spans still queued.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            let _ = provider.shutdown();
        }
    }
}

static JSON: AtomicBool = AtomicBool::new(false);
const NOTICE_DIRECTIVE: &str = "lantern::notice=info";

/// A message for the person who started the server (a model loaded, a warning at start): a
/// plain line on stderr, or with `--log-format json` a JSON line like every other, so each line
/// of the log parses.
pub fn notice(message: impl std::fmt::Display) {
    if JSON.load(Ordering::Relaxed) {
        tracing::info!(target: "lantern::notice", "{message}");
    } else {
        eprintln!("{message}");
    }
}

/// How often queued spans are sent: a request's trace reaches the collector within this.
const EXPORT_EVERY: Duration = Duration::from_millis(500);

/// The OTLP/HTTP traces URL of a collector's base URL (`http://host:4318`), as the
/// OpenTelemetry SDKs read `OTEL_EXPORTER_OTLP_ENDPOINT`.
pub fn traces_url(endpoint: &str) -> String {
    let base = endpoint.trim_end_matches('/');
    if base.ends_with("/v1/traces") {
        base.to_string()
    } else {
        format!("{base}/v1/traces")
    }
}

/// Start logging at `LANTERN_LOG`'s level (default: warnings) in `format`, and export traces to
/// `otlp` when given. Call once, before any async runtime starts (the exporter's HTTP client
/// runs on a thread of its own).
pub fn init(format: LogFormat, otlp: Option<&str>) -> Result<Telemetry, TelemetryError> {
    let mut filter = EnvFilter::try_from_env("LANTERN_LOG").unwrap_or_else(|_| "warn".into());
    if format == LogFormat::Json {
        JSON.store(true, Ordering::Relaxed);
        filter = filter.add_directive(NOTICE_DIRECTIVE.parse().expect("a valid directive"));
    }
    let logs = match format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(false)
            .with_span_list(true)
            .with_writer(std::io::stderr)
            .boxed(),
    }
    .with_filter(filter);
    let provider = otlp.map(exporter).transpose()?;
    let traces = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("lantern"))
            .with_filter(Targets::new().with_target("lantern", tracing::Level::INFO))
    });
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
    // A second init (tests starting servers in one process) keeps the first.
    let _ = tracing_subscriber::registry()
        .with(logs)
        .with(traces)
        .try_init();
    context::set_tracing(provider.is_some());
    Ok(Telemetry { provider })
}

fn exporter(endpoint: &str) -> Result<SdkTracerProvider, TelemetryError> {
    let fail = |message: String| TelemetryError {
        endpoint: endpoint.to_string(),
        message,
    };
    if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
        return Err(fail("an http:// or https:// URL is needed".into()));
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpJson)
        .with_endpoint(traces_url(endpoint))
        .with_timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| fail(e.to_string()))?;
    let batches = BatchSpanProcessor::builder(exporter)
        .with_batch_config(
            BatchConfigBuilder::default()
                .with_scheduled_delay(EXPORT_EVERY)
                .build(),
        )
        .build();
    Ok(SdkTracerProvider::builder()
        .with_span_processor(batches)
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name("lantern")
                .build(),
        )
        .build())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_collector_base_gets_the_traces_path_once() {
        assert_eq!(
            traces_url("http://127.0.0.1:4318"),
            "http://127.0.0.1:4318/v1/traces"
        );
        assert_eq!(traces_url("http://h:4318/"), "http://h:4318/v1/traces");
        assert_eq!(traces_url("http://h/v1/traces"), "http://h/v1/traces");
    }

    #[test]
    fn an_endpoint_that_is_not_a_url_is_refused() {
        let err = exporter("localhost:4318").unwrap_err();
        assert!(err.to_string().contains("http://"), "{err}");
    }
}
