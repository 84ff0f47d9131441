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
}

/// Log to stderr at the level `LANTERN_LOG` asks for (`info`, `lantern=debug`, ...; default:
/// warnings), for every binary.
pub fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("LANTERN_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
}

impl Config {
    pub fn home(&self) -> PathBuf {
        self.home.clone().unwrap_or_else(crate::library::home)
    }
}

pub mod serve;
pub use serve::{ServeFlags, ServerSettings};
