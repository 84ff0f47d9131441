//! Which models are loaded. A request names a model; the registry hands out its engine,
//! loading and warming it on first use. Loads run one at a time after two checks: at most
//! `max_loaded` models (the least recently used idle one is unloaded to make room) and enough
//! free memory (a clear error instead of swapping). Idle models unload when their keep-alive
//! runs out; the warm set (`--preload`) stays.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use candle_core::Device;
use serde::Serialize;

use super::draft_model::DraftModel;
use super::worker::{EngineConfig, EngineStatus};
use super::{EngineHandle, KeepAlive};
use crate::engine::generate::warm_up;
use crate::engine::models::ModelInfo;
use crate::engine::ChatModel;
use crate::library::Library;

/// Registry settings.
#[derive(Debug, Clone)]
pub struct RegistryConfig {
    pub engine: EngineConfig,
    /// Models loaded at once.
    pub max_loaded: usize,
    /// Keep-alive for requests that do not say.
    pub keep_alive: KeepAlive,
    /// A server-side keep-alive that wins over what requests say.
    pub keep_alive_override: Option<KeepAlive>,
    /// Memory to leave free besides a model being loaded.
    pub reserve_memory: u64,
    pub device: Device,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self {
            engine: EngineConfig::default(),
            max_loaded: 3,
            keep_alive: KeepAlive::For(Duration::from_secs(300)),
            keep_alive_override: None,
            reserve_memory: 256 << 20,
            device: Device::Cpu,
        }
    }
}

/// Why a model's engine could not be had.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// No installed chat model has that name.
    #[error("the model `{0}` does not exist or is not installed")]
    NotInstalled(String),
    /// Loading would not fit in free memory.
    #[error(
        "not enough free memory to load `{model}`: it needs about {needed_mib} MiB, {available_mib} MiB are available; unload a model or close other programs"
    )]
    InsufficientMemory {
        model: String,
        needed_mib: u64,
        available_mib: u64,
    },
    /// Every loaded model is busy and no more may be loaded.
    #[error("{0} models are loaded and busy; retry when one is idle")]
    Busy(usize),
    /// The file is there but is not a model Lantern can run.
    #[error("loading `{model}` failed: {message}")]
    Load { model: String, message: String },
}

/// A loaded model: its engine and how it came to be.
#[derive(Clone)]
struct Loaded {
    handle: EngineHandle,
    path: PathBuf,
    load_time: Duration,
    warmup_time: Duration,
    loaded_at: SystemTime,
}

struct Slot {
    cell: tokio::sync::OnceCell<Loaded>,
    last_used: Mutex<Instant>,
}

impl Slot {
    fn new() -> Self {
        Self {
            cell: tokio::sync::OnceCell::new(),
            last_used: Mutex::new(Instant::now()),
        }
    }

    fn touch(&self) {
        *self.last_used.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
    }

    fn last_used(&self) -> Instant {
        *self.last_used.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A loaded model as `/api/engine` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct LoadedModel {
    pub id: String,
    pub path: PathBuf,
    pub info: ModelInfo,
    /// In the warm set: never unloaded for being idle.
    pub pinned: bool,
    pub load_ms: f64,
    pub warmup_ms: f64,
    /// Unix seconds.
    pub loaded_at: u64,
    /// The keep-alive in force, in seconds (-1: forever).
    pub keep_alive_seconds: f64,
    /// Unix seconds when it unloads if no request comes (None: busy or kept forever).
    pub unload_at: Option<f64>,
    pub in_flight: usize,
    pub engine: EngineStatus,
}

/// A chat model this server can serve, loaded or not.
#[derive(Debug, Clone, Serialize)]
pub struct ServableModel {
    pub id: String,
    pub path: PathBuf,
    /// Unix seconds the file was written.
    pub created: u64,
    pub size_bytes: u64,
    pub quantization: String,
    pub architecture: String,
    pub context_length: Option<usize>,
    pub loaded: bool,
}

struct Inner {
    library: Library,
    /// Replaced whole by [`Registry::reconfigure`]; read fresh at every decision.
    config: Mutex<RegistryConfig>,
    /// Names served from a file path given at start.
    aliases: Mutex<HashMap<String, PathBuf>>,
    /// Draft models (name and file) by the name of the model they draft for.
    drafts: Mutex<HashMap<String, (String, PathBuf)>>,
    pinned: Mutex<HashSet<String>>,
    slots: Mutex<HashMap<String, Arc<Slot>>>,
    /// One load at a time: memory checks and the loaded count stay true while it runs.
    loading: tokio::sync::Mutex<()>,
}

/// The loaded models; cheap to clone.
#[derive(Clone)]
pub struct Registry {
    inner: Arc<Inner>,
}

fn unix(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Model names from HTTP are names, never paths.
fn is_plain_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'))
}

impl Registry {
    pub fn new(library: Library, config: RegistryConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                library,
                config: Mutex::new(config),
                aliases: Mutex::default(),
                drafts: Mutex::default(),
                pinned: Mutex::default(),
                slots: Mutex::default(),
                loading: tokio::sync::Mutex::new(()),
            }),
        }
    }

    /// The model library this registry serves from.
    pub fn library(&self) -> &Library {
        &self.inner.library
    }

    pub fn config(&self) -> RegistryConfig {
        lock(&self.inner.config).clone()
    }

    /// New keep-alives, budgets and limits: keep-alives and the loaded-model limit apply at the
    /// next decision, batching budgets to models loaded from now on. The device stays.
    pub fn reconfigure(&self, mut config: RegistryConfig) {
        let mut current = lock(&self.inner.config);
        config.device = current.device.clone();
        *current = config;
    }

    /// Serve the GGUF at `path` under `name` (for `lantern serve ./file.gguf`).
    pub fn add_alias(&self, name: &str, path: &Path) {
        lock(&self.inner.aliases).insert(name.to_string(), path.to_path_buf());
    }

    /// Let the model at `draft_path` draft tokens for `name` from its next load on (`--draft`).
    pub fn set_draft(&self, name: &str, draft: &str, draft_path: &Path) {
        let pair = (draft.to_string(), draft_path.to_path_buf());
        lock(&self.inner.drafts).insert(name.to_string(), pair);
    }

    /// Load `names` now and keep them loaded (the warm set).
    pub async fn preload(&self, names: &[String]) -> Result<(), RegistryError> {
        for name in names {
            lock(&self.inner.pinned).insert(name.clone());
            self.get(name).await?;
        }
        Ok(())
    }

    /// The engine of `name`, loading and warming the model first if needed.
    pub async fn get(&self, name: &str) -> Result<EngineHandle, RegistryError> {
        for _ in 0..2 {
            let slot = lock(&self.inner.slots)
                .entry(name.to_string())
                .or_insert_with(|| Arc::new(Slot::new()))
                .clone();
            match slot.cell.get_or_try_init(|| self.load(name)).await {
                Ok(loaded) if loaded.handle.is_stopped() => {
                    // Its thread died; forget it and load afresh.
                    self.forget(name, &slot);
                }
                Ok(loaded) => {
                    slot.touch();
                    return Ok(loaded.handle.clone());
                }
                Err(e) => {
                    self.forget(name, &slot);
                    return Err(e);
                }
            }
        }
        Err(RegistryError::Load {
            model: name.to_string(),
            message: "its engine stopped twice in a row".into(),
        })
    }

    fn forget(&self, name: &str, slot: &Arc<Slot>) {
        let mut slots = lock(&self.inner.slots);
        if slots.get(name).is_some_and(|s| Arc::ptr_eq(s, slot)) {
            slots.remove(name);
        }
    }

    fn resolve(&self, name: &str) -> Result<PathBuf, RegistryError> {
        if let Some(path) = lock(&self.inner.aliases).get(name) {
            return Ok(path.clone());
        }
        if !is_plain_name(name) {
            return Err(RegistryError::NotInstalled(name.to_string()));
        }
        self.inner
            .library
            .resolve_gguf(name)
            .map_err(|_| RegistryError::NotInstalled(name.to_string()))
    }

    async fn load(&self, name: &str) -> Result<Loaded, RegistryError> {
        let path = self.resolve(name)?;
        let _one_at_a_time = self.inner.loading.lock().await;
        self.make_room(name)?;
        let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        let draft = lock(&self.inner.drafts).get(name).cloned();
        let draft_size = draft.as_ref().map_or(0, |(_, p)| {
            std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
        });
        self.check_memory(name, size + draft_size)?;
        let (device, kv_type) = (self.config().device, self.config().engine.kv_type);
        let file = path.clone();
        let loaded = tokio::task::spawn_blocking(move || {
            let model = ChatModel::load(&file, &device).map_err(|e| e.to_string())?;
            let warmup = warm_up(&model).map_err(|e| e.to_string())?;
            // Identifies the weights for the response cache (tens of ms with SHA extensions).
            let sha = crate::library::pull::sha256_file(&file).map_err(|e| e.to_string())?;
            let draft = draft
                .map(|(n, p)| DraftModel::load(&n, &p, &model, size, &device, kv_type))
                .transpose()?;
            Ok::<_, String>((model, warmup, sha, draft))
        })
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r);
        let (model, warmup_time, weights_sha256, draft) =
            loaded.map_err(|message| RegistryError::Load {
                model: name.to_string(),
                message,
            })?;
        let load_time = model.load_time;
        tracing::info!(
            model = name,
            load_ms = load_time.as_millis() as u64,
            warmup_ms = warmup_time.as_millis() as u64,
            "model ready"
        );
        let mut handle = EngineHandle::start_with_draft(name, model, draft, self.config().engine);
        handle.weights_sha256 = Some(weights_sha256.into());
        Ok(Loaded {
            handle,
            path,
            load_time,
            warmup_time,
            loaded_at: SystemTime::now(),
        })
    }

    /// Unload the least recently used idle model when no more may be loaded.
    fn make_room(&self, loading: &str) -> Result<(), RegistryError> {
        let mut slots = lock(&self.inner.slots);
        let loaded: Vec<(String, Arc<Slot>)> = slots
            .iter()
            .filter(|(n, s)| n.as_str() != loading && s.cell.initialized())
            .map(|(n, s)| (n.clone(), s.clone()))
            .collect();
        if loaded.len() < self.config().max_loaded.max(1) {
            return Ok(());
        }
        let victim = loaded
            .iter()
            .filter(|(_, s)| s.cell.get().is_some_and(|l| l.handle.in_flight() == 0))
            .min_by_key(|(_, s)| s.last_used())
            .map(|(n, _)| n.clone());
        match victim {
            Some(name) => {
                tracing::info!(model = %name, "unloading the least recently used model");
                slots.remove(&name);
                Ok(())
            }
            None => Err(RegistryError::Busy(loaded.len())),
        }
    }

    fn check_memory(&self, name: &str, file_size: u64) -> Result<(), RegistryError> {
        let available = memory().map(|m| m.available).unwrap_or(0);
        // Weights, plus a tenth for scratch and the first KV caches, plus the reserve.
        let needed = file_size + file_size / 10 + self.config().reserve_memory;
        if available > 0 && available < needed {
            return Err(RegistryError::InsufficientMemory {
                model: name.to_string(),
                needed_mib: needed >> 20,
                available_mib: available >> 20,
            });
        }
        Ok(())
    }

    /// The keep-alive in force for an engine: the server's override, else what its last
    /// request asked, else the default.
    fn keep_alive_of(&self, status: &EngineStatus) -> KeepAlive {
        let c = self.config();
        c.keep_alive_override
            .or(status.requested_keep_alive)
            .unwrap_or(c.keep_alive)
    }

    /// Unload idle models whose keep-alive ran out, and engines whose thread died.
    pub fn reap(&self) {
        let pinned = lock(&self.inner.pinned).clone();
        let mut slots = lock(&self.inner.slots);
        let expired: Vec<String> = slots
            .iter()
            .filter_map(|(name, slot)| {
                let loaded = slot.cell.get()?;
                let status = loaded.handle.status();
                if status.stopped {
                    return Some(name.clone());
                }
                if pinned.contains(name) || loaded.handle.in_flight() > 0 {
                    return None;
                }
                let idle = status.idle_since?;
                match self.keep_alive_of(&status) {
                    KeepAlive::For(d) if idle.elapsed() >= d => Some(name.clone()),
                    _ => None,
                }
            })
            .collect();
        for name in expired {
            tracing::info!(model = %name, "keep-alive ran out: unloading");
            slots.remove(&name);
        }
    }

    /// Unload `name` now (also out of the warm set). Ok(false): it was not loaded; Err: it has
    /// requests in flight (they would fail), with how many.
    pub fn unload(&self, name: &str) -> Result<bool, usize> {
        let mut slots = lock(&self.inner.slots);
        let busy = slots
            .get(name)
            .and_then(|s| s.cell.get())
            .map_or(0, |l| l.handle.in_flight());
        if busy > 0 {
            return Err(busy);
        }
        lock(&self.inner.pinned).remove(name);
        let was = slots.remove(name).is_some_and(|s| s.cell.initialized());
        if was {
            tracing::info!(model = %name, "unloaded on request");
        }
        Ok(was)
    }

    /// Reap every `period` for as long as the runtime runs.
    pub fn spawn_reaper(&self, period: Duration) {
        let registry = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            loop {
                tick.tick().await;
                registry.reap();
            }
        });
    }

    /// The loaded models, by name.
    pub fn loaded(&self) -> Vec<LoadedModel> {
        let pinned = lock(&self.inner.pinned).clone();
        let slots = lock(&self.inner.slots);
        let mut out: Vec<LoadedModel> = slots
            .iter()
            .filter_map(|(name, slot)| {
                let l = slot.cell.get()?;
                let engine = l.handle.status();
                let is_pinned = pinned.contains(name);
                let keep_alive = if is_pinned {
                    KeepAlive::Forever
                } else {
                    self.keep_alive_of(&engine)
                };
                let unload_at = match (keep_alive, engine.idle_since) {
                    (KeepAlive::For(d), Some(idle)) if l.handle.in_flight() == 0 => {
                        let left = d.saturating_sub(idle.elapsed());
                        Some(unix(SystemTime::now() + left))
                    }
                    _ => None,
                };
                Some(LoadedModel {
                    id: name.clone(),
                    path: l.path.clone(),
                    info: (*l.handle.info).clone(),
                    pinned: is_pinned,
                    load_ms: l.load_time.as_secs_f64() * 1e3,
                    warmup_ms: l.warmup_time.as_secs_f64() * 1e3,
                    loaded_at: unix(l.loaded_at) as u64,
                    keep_alive_seconds: keep_alive.as_seconds(),
                    unload_at,
                    in_flight: l.handle.in_flight(),
                    engine,
                })
            })
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    /// Every chat model that a request may name: installed GGUF files and aliases.
    pub fn servable(&self) -> Vec<ServableModel> {
        let loaded: HashSet<String> = lock(&self.inner.slots)
            .iter()
            .filter(|(_, s)| s.cell.initialized())
            .map(|(n, _)| n.clone())
            .collect();
        let mut out: Vec<ServableModel> = self
            .inner
            .library
            .list()
            .unwrap_or_default()
            .into_iter()
            .filter(|m| m.format == "gguf" && m.error.is_none())
            .map(|m| ServableModel {
                created: created_of(&m.path),
                loaded: loaded.contains(&m.name),
                id: m.name,
                path: m.path,
                size_bytes: m.size_bytes,
                quantization: m.quantization,
                architecture: m.architecture,
                context_length: m.context_length,
            })
            .collect();
        for (name, path) in lock(&self.inner.aliases).iter() {
            if out.iter().any(|m| &m.id == name) {
                continue;
            }
            out.push(ServableModel {
                id: name.clone(),
                created: created_of(path),
                size_bytes: std::fs::metadata(path).map(|m| m.len()).unwrap_or(0),
                path: path.clone(),
                quantization: String::new(),
                architecture: String::new(),
                context_length: None,
                loaded: loaded.contains(name),
            });
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }
}

/// The machine's memory, in bytes.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Memory {
    pub total: u64,
    pub available: u64,
}

/// None where the platform does not tell.
pub fn memory() -> Option<Memory> {
    let mut system = sysinfo::System::new().ok()?;
    system.refresh_memory();
    Some(Memory {
        total: system.total_memory(),
        available: system.available_memory(),
    })
}

/// Unix seconds a model file was written (OpenAI's `created`).
pub fn created_of(path: &Path) -> u64 {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .map(|t| unix(t) as u64)
        .unwrap_or(0)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_from_requests_are_never_paths() {
        for ok in ["smollm2", "gemma3", "qwen2.5:7b", "my_model-1"] {
            assert!(is_plain_name(ok), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            "../x",
            "/etc/passwd",
            "a/b",
            "C:\\m.gguf",
            "x y",
        ] {
            assert!(!is_plain_name(bad), "{bad}");
        }
    }

    #[tokio::test]
    async fn an_unknown_model_is_not_installed_and_leaves_no_slot() {
        let dir = tempfile::tempdir().unwrap();
        let registry = Registry::new(Library::new(dir.path()), RegistryConfig::default());
        let err = registry.get("nothing-here").await.err().unwrap();
        assert!(matches!(err, RegistryError::NotInstalled(_)), "{err}");
        let err = registry.get("../../etc/x.gguf").await.err().unwrap();
        assert!(matches!(err, RegistryError::NotInstalled(_)), "{err}");
        assert!(registry.loaded().is_empty());
        assert!(lock(&registry.inner.slots).is_empty());
    }
}
