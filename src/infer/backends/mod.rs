//! Routing beyond one local model: remote OpenAI-compatible backends served as `NAME/MODEL`,
//! fallback chains, a circuit breaker per target, and the rules of `model: "auto"`. The inference path asks
//! [`Backends`] what a model name means; the wire formats never learn which engine answered.
//!
//! - `spec`: what `settings.toml` holds (`[[backends]]`, `[[chains]]`, `[breaker]`, `[auto]`)
//! - `keys`: the backends' API keys, kept 0600 apart from the settings and never shown
//! - `remote`: one remote engine: opening a request on it, its health check, its slots
//! - `wire`: the typed request as the remote's OpenAI body
//! - `sse`: the remote's streamed answer read back into the engine's events
//! - `breaker`: one circuit per target

pub mod breaker;
pub mod keys;
pub mod remote;
pub mod spec;
mod sse;
pub mod wire;

use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde_json::{json, Value};

pub use breaker::Breakers;
pub use remote::Remote;
pub use spec::{AutoRoute, AutoSpec, BackendSpec, BreakerSpec, ChainSpec};

/// Every configured backend and chain, one pooled HTTP client, the breakers.
#[derive(Clone)]
pub struct Backends {
    inner: Arc<Inner>,
}

struct Inner {
    client: reqwest::Client,
    keys: keys::KeyFile,
    remotes: RwLock<Vec<Arc<Remote>>>,
    chains: RwLock<Vec<ChainSpec>>,
    auto: RwLock<AutoSpec>,
    breakers: Breakers,
}

impl Backends {
    /// The backends of a data directory (their keys read from its key file).
    pub fn new(
        home: &std::path::Path,
        backends: &[BackendSpec],
        chains: &[ChainSpec],
        breaker: &BreakerSpec,
        auto: &AutoSpec,
    ) -> std::io::Result<Self> {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .pool_idle_timeout(Duration::from_secs(90))
            .build()
            .map_err(std::io::Error::other)?;
        let this = Self {
            inner: Arc::new(Inner {
                client,
                keys: keys::KeyFile::new(home),
                remotes: RwLock::default(),
                chains: RwLock::default(),
                auto: RwLock::default(),
                breakers: Breakers::new(breaker.clone()),
            }),
        };
        this.configure(backends, chains, breaker, auto)?;
        Ok(this)
    }

    /// Put new settings in force; a backend whose spec did not change keeps its health and
    /// its requests in flight.
    pub fn configure(
        &self,
        backends: &[BackendSpec],
        chains: &[ChainSpec],
        breaker: &BreakerSpec,
        auto: &AutoSpec,
    ) -> std::io::Result<()> {
        let keys = self.inner.keys.load()?;
        let old = self.remotes();
        let remotes = backends
            .iter()
            .map(|spec| {
                let key = keys.get(&spec.name).cloned();
                match old
                    .iter()
                    .find(|r| r.spec == *spec && r.key() == key.as_ref())
                {
                    Some(r) => r.clone(),
                    None => Arc::new(Remote::new(spec.clone(), key)),
                }
            })
            .collect();
        *self
            .inner
            .remotes
            .write()
            .unwrap_or_else(|e| e.into_inner()) = remotes;
        *self.inner.chains.write().unwrap_or_else(|e| e.into_inner()) = chains.to_vec();
        self.inner.breakers.configure(breaker.clone());
        *self.inner.auto.write().unwrap_or_else(|e| e.into_inner()) = auto.clone();
        Ok(())
    }

    pub fn client(&self) -> &reqwest::Client {
        &self.inner.client
    }

    pub fn breakers(&self) -> &Breakers {
        &self.inner.breakers
    }

    pub fn remotes(&self) -> Vec<Arc<Remote>> {
        self.inner
            .remotes
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn remote(&self, name: &str) -> Option<Arc<Remote>> {
        self.remotes().into_iter().find(|r| r.spec.name == name)
    }

    /// `NAME/MODEL` of a configured backend: the backend and the model as it names it.
    pub fn resolve(&self, model: &str) -> Option<(Arc<Remote>, String)> {
        let (name, remote_model) = model.split_once('/')?;
        let remote = self.remote(name)?;
        remote
            .serves(remote_model)
            .then(|| (remote, remote_model.to_string()))
    }

    /// The targets of a chain named `name`.
    pub fn chain(&self, name: &str) -> Option<Vec<String>> {
        self.inner
            .chains
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|c| c.name == name)
            .map(|c| c.targets.clone())
    }

    /// `auto`'s candidates and rules.
    pub fn auto(&self) -> AutoSpec {
        self.inner
            .auto
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn chains(&self) -> Vec<ChainSpec> {
        self.inner
            .chains
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Every remote model, as clients name it.
    pub fn models(&self) -> Vec<String> {
        self.remotes()
            .iter()
            .flat_map(|r| {
                r.spec
                    .models
                    .iter()
                    .map(move |m| format!("{}/{m}", r.spec.name))
            })
            .collect()
    }

    /// Set or remove a backend's key (the file first, then the running backend).
    pub fn set_key(&self, name: &str, key: Option<&str>) -> std::io::Result<()> {
        self.inner.keys.set(name, key)
    }

    /// What the admin API shows of each backend: never its key, only whether it has one.
    pub fn views(&self) -> Vec<Value> {
        self.remotes()
            .iter()
            .map(|r| {
                let mut v = serde_json::to_value(&r.spec).unwrap_or_default();
                v["has_key"] = json!(r.has_key());
                v["health"] = json!(r.health());
                v["in_flight"] = json!(r.in_flight());
                v["circuits"] = r
                    .spec
                    .models
                    .iter()
                    .map(|m| {
                        let target = format!("{}/{m}", r.spec.name);
                        let state = self.inner.breakers.state(&target);
                        (target, json!(state))
                    })
                    .collect::<serde_json::Map<_, _>>()
                    .into();
                v
            })
            .collect()
    }

    /// Check each backend when its interval is due, for as long as the server runs.
    pub fn spawn_health_checks(&self) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                for r in this.remotes() {
                    if r.check_due() {
                        let client = this.inner.client.clone();
                        tokio::spawn(async move { r.check(&client).await });
                    }
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        })
    }
}
