//! Settings shared by every command: where data lives, which device, how many threads.
//! Each is a flag with a `LANTERN_*` environment variable and a default that works.

use std::path::PathBuf;

use clap::Args;

use crate::engine::device::DeviceRequest;

#[derive(Debug, Clone, Args)]
pub struct Config {
    /// Data directory (models, caches); default: $XDG_DATA_HOME/lantern.
    #[arg(long, env = "LANTERN_HOME", global = true)]
    pub home: Option<PathBuf>,
    /// Compute device: cpu, cuda:N or metal (falls back to cpu with a message).
    #[arg(long, env = "LANTERN_DEVICE", default_value = "cpu", global = true)]
    pub device: DeviceRequest,
    /// CPU threads for the engine (0: one per core).
    #[arg(long, env = "LANTERN_THREADS", default_value_t = 0, global = true)]
    pub threads: usize,
    /// Log lines as text or as one JSON object each (with the request's id, session, model).
    #[arg(
        long,
        env = "LANTERN_LOG_FORMAT",
        value_enum,
        default_value = "text",
        global = true
    )]
    pub log_format: crate::telemetry::LogFormat,
    /// Export OpenTelemetry traces to this OTLP/HTTP collector (`http://127.0.0.1:4318`).
    #[arg(long, env = "LANTERN_OTLP_ENDPOINT", global = true)]
    pub otlp_endpoint: Option<String>,
}

/// Log to stderr at the level `LANTERN_LOG` asks for (`info`, `lantern=debug`, ...; default:
/// warnings) in the configured format, and export traces when an OTLP endpoint is set. The
/// returned guard sends the spans still queued when dropped.
pub fn init_logging(config: &Config) -> anyhow::Result<crate::telemetry::Telemetry> {
    Ok(crate::telemetry::init(
        config.log_format,
        config.otlp_endpoint.as_deref(),
    )?)
}

impl Config {
    pub fn home(&self) -> PathBuf {
        self.home.clone().unwrap_or_else(crate::library::home)
    }
}

pub mod serve;
pub use serve::{ServeFlags, ServerSettings};
