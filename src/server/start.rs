//! Starting and stopping the whole server in-process: the same code path for `lantern serve` and
//! the desktop app. [`Launch`] reads the settings and binds the port (so a caller can offer
//! another when it is taken), [`Launch::start`] loads the default model and serves, and
//! [`Server::shutdown`] finishes in-flight requests and flushes the request log.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use anyhow::{Context, Result};
use tokio::net::TcpListener;

use super::guard::ApiKeys;
use super::settings::{rate_limits, registry_config, Settings};
use super::AppState;
use crate::config::{Config, ServeFlags, ServerSettings};
use crate::engine::device;
use crate::library::manifest::Manifest;
use crate::library::{served_name, Library, LibraryError};
use crate::scheduler::Registry;

/// Settings read and checked, not yet started.
pub struct Launch {
    pub config: Config,
    pub flags: ServeFlags,
    /// What `settings.toml` holds.
    pub saved: ServerSettings,
    /// What the server will run with: the flags over the file.
    pub settings: ServerSettings,
}

impl Launch {
    /// Read `settings.toml` from the data directory and put the flags over it.
    pub fn new(config: Config, flags: ServeFlags) -> Result<Self> {
        let saved = ServerSettings::load(&ServerSettings::path(&config.home()))?;
        let settings = flags
            .over(&saved)
            .context("the flags and LANTERN_* variables over settings.toml")?;
        Ok(Self {
            config,
            flags,
            saved,
            settings,
        })
    }

    /// Listen on the configured address (an error when the port is taken:
    /// `std::io::ErrorKind::AddrInUse`).
    pub async fn bind(&self) -> std::io::Result<TcpListener> {
        TcpListener::bind((self.settings.host, self.settings.port)).await
    }

    /// Load and warm the default model and the warm set, then serve on `listener` in the
    /// background. Requests that arrive while models load wait in the listen queue.
    pub async fn start(self, listener: TcpListener) -> Result<Server> {
        let Launch {
            config,
            flags,
            saved,
            settings: s,
        } = self;
        let file_keys = match &flags.api_key_file {
            Some(path) => ApiKeys::from_sources(&[], Some(path))
                .with_context(|| format!("reading --api-key-file {}", path.display()))?
                .list(),
            None => Vec::new(),
        };
        let addr = listener.local_addr()?;
        let settings = Arc::new(Settings::new(
            ServerSettings::path(&config.home()),
            flags,
            file_keys,
            saved,
            s.clone(),
            addr,
        ));
        let keys = ApiKeys::new(settings.keys_of(&s));
        let admin = super::admin_token::AdminToken::load_or_create(&config.home())
            .context("the admin token in the data directory")?;
        anyhow::ensure!(
            s.host.is_loopback() || !keys.is_empty(),
            "refusing to listen on {} without an API key: anyone on the network could use it; \
             give --api-key or --api-key-file, or use --host 127.0.0.1",
            s.host
        );
        device::set_cpu_threads(config.threads);
        let (device, note) = device::open(&config.device);
        if let Some(note) = note {
            crate::telemetry::notice(note);
        }
        let library = Library::new(&config.home());
        // A first run (the default is a manifest model not installed yet) starts with no model,
        // as Ollama does: the UI offers the manifest's models to pull.
        let path = match library.resolve_gguf(&s.model) {
            Ok(path) => Some(path),
            Err(e @ LibraryError::NotInstalled { .. })
                if Manifest::builtin().get(&s.model).is_some() =>
            {
                crate::telemetry::notice(format!(
                    "warning: {e}; serving with no model until one is pulled"
                ));
                None
            }
            Err(e) => return Err(e.into()),
        };
        let name = match &path {
            Some(path) => served_name(&s.model, path),
            None => s.model.clone(),
        };
        let draft = match &s.draft {
            Some(draft) => {
                let draft_path = library
                    .resolve_gguf(draft)
                    .with_context(|| format!("the draft model `{draft}`"))?;
                Some((served_name(draft, &draft_path), draft_path))
            }
            None => None,
        };
        let embedders = crate::scheduler::embedder::Embedders::new(library.clone(), device.clone());
        let mut registry = registry_config(&s)?;
        registry.device = device;
        let engines = Registry::new(library, registry);
        if let Some(path) = &path {
            engines.add_alias(&name, path);
            if let Some((draft, draft_path)) = &draft {
                engines.set_draft(&name, draft, draft_path);
            }
        }

        let db_path = settings_db(&config, &settings);
        let store = match crate::store::Store::open(&db_path).await {
            Ok(store) => {
                // Answers a stopped server was writing keep what arrived, marked interrupted.
                if let Err(e) = store.messages_interrupt_streaming().await {
                    crate::telemetry::notice(format!("warning: {e}"));
                }
                Some(store)
            }
            Err(e) => {
                crate::telemetry::notice(format!(
                    "warning: {e}; running without the database (no embedding cache on disk, \
                     no request log)"
                ));
                None
            }
        };
        let (monitor, monitor_writer) = crate::monitor::Monitor::open(store.clone()).await;
        let caches = crate::cache::Caches {
            embeddings: Arc::new(crate::cache::EmbeddingCache::new(
                s.embedding_cache_mib << 20,
                store.clone(),
                s.embedding_store_mib << 20,
            )),
            responses: Arc::new(crate::cache::ResponseCache::new(
                s.response_cache_mib << 20,
                std::time::Duration::from_secs(s.response_cache_ttl),
            )),
            semantic: Arc::new(
                crate::cache::SemanticCache::open(
                    s.semantic_cache_mib << 20,
                    store.clone(),
                    Some(monitor.metrics().semantic_similarity.clone()),
                )
                .await,
            ),
        };
        let semantic_saver = caches.semantic.spawn_saver();
        let cache_defaults = Arc::new(
            crate::store::session_defaults::SessionDefaults::open(store.clone(), "cache.sessions")
                .await,
        );
        let compression = Arc::new(
            crate::store::session_defaults::SessionDefaults::open(
                store.clone(),
                crate::compress::SETTINGS_KEY,
            )
            .await,
        );
        compression.set_fallback(s.compression.clone());
        let rate = super::rate::RateLimiter::new(rate_limits(&s));
        let limiter = rate.clone();
        let infer = crate::infer::Infer {
            engines: engines.clone(),
            responses: caches.responses.clone(),
            semantic: caches.semantic.clone(),
            cache_defaults,
            monitor: monitor.clone(),
            compression: compression.clone(),
            charge: Arc::new(move |key: &str, tokens: u64| limiter.add_tokens(key, tokens)),
            backends: crate::infer::backends::Backends::new(
                &config.home(),
                &s.backends,
                &s.chains,
                &s.breaker,
                &s.auto,
            )
            .context("the remote backends' key file in the data directory")?,
            canaries: Default::default(),
            embedders: embedders.clone(),
            embeddings: caches.embeddings.clone(),
        };
        let health_checks = infer.backends.spawn_health_checks();
        let state = AppState {
            engines: engines.clone(),
            infer,
            embedders,
            caches,
            monitor,
            default_model: name.clone(),
            body_limit: s.body_limit,
            keys,
            admin,
            rate,
            jobs: crate::jobs::Jobs::default(),
            pairs: Default::default(),
            compression,
            settings,
        };
        // The default model and the warm set load (and warm up) before requests are served.
        let mut warm_set: Vec<String> = path.iter().map(|_| name.clone()).collect();
        warm_set.extend(s.preload.iter().filter(|p| **p != name).cloned());
        engines.preload(&warm_set).await?;
        for m in engines.loaded() {
            crate::telemetry::notice(format!(
                "loaded {} in {:.2} s, warmed up in {:.2} s",
                m.id,
                m.load_ms / 1e3,
                m.warmup_ms / 1e3
            ));
        }
        engines.spawn_reaper(std::time::Duration::from_millis(200));
        let watchers = vec![
            super::drift::spawn_schedule(state.clone()),
            super::consistency::spawn_worker(state.clone()),
        ];
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let router = super::router(state.clone());
        let task = tokio::spawn(async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                    tracing::info!("shutting down: finishing in-flight requests");
                })
                .await
        });
        Ok(Server {
            addr,
            state,
            stop,
            task,
            monitor_writer,
            health_checks,
            semantic_saver,
            watchers,
        })
    }
}

fn settings_db(config: &Config, settings: &Settings) -> std::path::PathBuf {
    settings
        .db_flag()
        .unwrap_or_else(|| config.home().join("lantern.db"))
}

/// A running server.
pub struct Server {
    addr: SocketAddr,
    state: AppState,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
    monitor_writer: Option<tokio::task::JoinHandle<()>>,
    /// The remote backends' health checks, stopped with the server.
    health_checks: tokio::task::JoinHandle<()>,
    /// Saves the semantic cache's index while it changes; stopped (after a last save) with it.
    semantic_saver: tokio::task::JoinHandle<()>,
    /// The drift probes' schedule and the consistency worker, stopped with the server.
    watchers: Vec<tokio::task::JoinHandle<()>>,
}

impl Server {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The URL of the UI (and, under `/v1`, of the API), on loopback when listening on all
    /// addresses.
    pub fn url(&self) -> String {
        let host = match self.addr.ip() {
            ip if ip.is_unspecified() => IpAddr::from([127, 0, 0, 1]),
            ip => ip,
        };
        format!("http://{}/", SocketAddr::new(host, self.addr.port()))
    }

    /// The admin token the UI and local tools send to the admin API.
    pub fn admin_token(&self) -> &str {
        self.state.admin.secret()
    }

    /// The name of the model served by default.
    pub fn default_model(&self) -> &str {
        &self.state.default_model
    }

    /// The models loaded now.
    pub fn loaded_models(&self) -> Vec<String> {
        self.state
            .engines
            .loaded()
            .into_iter()
            .map(|m| m.id)
            .collect()
    }

    /// Requests running and waiting, over every loaded model.
    pub fn busy(&self) -> (usize, usize) {
        self.state
            .engines
            .loaded()
            .iter()
            .fold((0, 0), |(r, w), m| {
                (r + m.engine.running, w + m.engine.waiting)
            })
    }

    /// Stop accepting, let in-flight requests finish, and write what the request log has queued.
    pub async fn shutdown(self) -> Result<()> {
        let Server {
            state,
            stop,
            task,
            monitor_writer,
            health_checks,
            semantic_saver,
            watchers,
            ..
        } = self;
        health_checks.abort();
        watchers.iter().for_each(|w| w.abort());
        let _ = stop.send(());
        let served = task.await.context("the server task")?;
        state.jobs.cancel_all();
        semantic_saver.abort();
        let semantic = state.caches.semantic.clone();
        let _ = tokio::task::spawn_blocking(move || semantic.save_index()).await;
        drop(state);
        // Every handle is gone with the server: the request log writes what is queued.
        if let Some(writer) = monitor_writer {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(10), writer).await;
        }
        Ok(served?)
    }

    /// Serve until `signal` (from [`super::shutdown_signal`], taken before the server said it
    /// listens), then shut down.
    pub async fn run_until(self, signal: impl std::future::Future<Output = ()>) -> Result<()> {
        signal.await;
        self.shutdown().await
    }
}

/// The first free port after `port` on `host` (for "8080 is taken; use 8081?").
pub fn next_free_port(host: IpAddr, port: u16) -> Option<u16> {
    (port.saturating_add(1)..=u16::MAX)
        .take(100)
        .find(|p| std::net::TcpListener::bind((host, *p)).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_next_free_port_skips_a_taken_one() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        let next = next_free_port(IpAddr::from([127, 0, 0, 1]), port - 1).unwrap();
        assert_ne!(next, port);
        assert!(next > port - 1);
    }
}
