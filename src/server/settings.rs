//! `/api/settings`: the server's saved settings (`settings.toml`), changed from the UI. A change
//! is validated, saved, then applied: keys, CORS, keep-alive, batching budgets, limits and the
//! compression default at once; the rest (port, caches, ...) at the next start, and the answer
//! says which.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderValue;
use axum::Json;
use serde_json::{json, Value};

use super::errors::ApiError;
use super::AppState;
use crate::config::serve::{ServeFlags, ServerSettings, SettingsError, APPLIED_LIVE, FIELDS};
use crate::scheduler::batch::Budgets;
use crate::scheduler::{EngineConfig, RegistryConfig};

/// The settings file, what the running server started with, and the values read per request.
pub struct Settings {
    path: std::path::PathBuf,
    flags: ServeFlags,
    /// Keys from `--api-key-file`, accepted besides the saved ones.
    file_keys: Vec<String>,
    saved: Mutex<ServerSettings>,
    /// What this server started with (flags over the file), and where it listens.
    started: ServerSettings,
    address: std::net::SocketAddr,
    cors: Arc<RwLock<Vec<HeaderValue>>>,
    allowed_hosts: RwLock<Vec<String>>,
    timeout_ms: AtomicU64,
}

impl Settings {
    pub fn new(
        path: std::path::PathBuf,
        flags: ServeFlags,
        file_keys: Vec<String>,
        saved: ServerSettings,
        started: ServerSettings,
        address: std::net::SocketAddr,
    ) -> Self {
        let settings = Self {
            path,
            flags,
            file_keys,
            saved: Mutex::new(saved),
            cors: Arc::default(),
            allowed_hosts: RwLock::new(started.allowed_hosts.clone()),
            timeout_ms: AtomicU64::new(0),
            started: started.clone(),
            address,
        };
        settings.set_cors(&started.cors_origins);
        settings.set_timeout(&started);
        settings
    }

    /// What the server runs with now: the flags over the saved file.
    pub fn effective(&self) -> ServerSettings {
        let saved = self.saved.lock().unwrap_or_else(|e| e.into_inner()).clone();
        self.flags.over(&saved).unwrap_or(saved)
    }

    /// The database `--db` names, if it was given.
    pub fn db_flag(&self) -> Option<std::path::PathBuf> {
        self.flags.db.clone()
    }

    /// The port this server listens on.
    pub fn port(&self) -> u16 {
        self.address.port()
    }

    pub fn started(&self) -> &ServerSettings {
        &self.started
    }

    /// Every key accepted under `settings`: its own and the key file's.
    pub fn keys_of(&self, settings: &ServerSettings) -> Vec<String> {
        settings
            .api_keys
            .iter()
            .chain(&self.file_keys)
            .cloned()
            .collect()
    }

    /// The origins a browser may call from: the desktop app's and the configured ones.
    pub fn cors(&self) -> Arc<RwLock<Vec<HeaderValue>>> {
        self.cors.clone()
    }

    fn set_cors(&self, origins: &[String]) {
        let list = super::APP_ORIGINS
            .iter()
            .map(|s| s.to_string())
            .chain(origins.iter().cloned())
            .filter_map(|o| HeaderValue::from_str(&o).ok())
            .collect();
        *self.cors.write().unwrap_or_else(|e| e.into_inner()) = list;
    }

    /// Host names besides loopback's that requests may be addressed to.
    pub fn allowed_hosts(&self) -> Vec<String> {
        self.allowed_hosts
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms.load(Ordering::Relaxed))
    }

    fn set_timeout(&self, s: &ServerSettings) {
        self.timeout_ms
            .store(s.request_timeout.max(1) * 1000, Ordering::Relaxed);
    }

    fn view(&self) -> Value {
        let saved = self.saved.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let effective = self.flags.over(&saved).unwrap_or_else(|_| saved.clone());
        let waiting: Vec<String> = restart_only(&self.started.changed(&effective));
        json!({
            "settings": saved,
            "file": self.path,
            "defaults": ServerSettings::default(),
            "pinned_by_flags": self.flags.pinned(),
            "applied_live": APPLIED_LIVE,
            "restart_needed": waiting,
            "running": {"address": self.address, "model": self.started.model},
        })
    }
}

fn restart_only(changed: &[String]) -> Vec<String> {
    changed
        .iter()
        .filter(|f| !APPLIED_LIVE.contains(&f.as_str()) && f.as_str() != "compression")
        .cloned()
        .collect()
}

/// How the registry runs under `s` (the device is the registry's own).
pub fn registry_config(s: &ServerSettings) -> Result<RegistryConfig, SettingsError> {
    Ok(RegistryConfig {
        engine: EngineConfig {
            budgets: Budgets {
                max_seqs: s.max_seqs.max(1),
                max_step_tokens: s.max_step_tokens.max(s.max_seqs).max(1),
                prefill_chunk: s.prefill_chunk.max(1),
                kv_tokens: 0,
            },
            kv_memory: s.kv_memory_mib.max(1) << 20,
            prefix_cache_memory: s.prefix_cache_mib << 20,
            max_waiting: s.max_waiting,
            prompt_lookup: s.prompt_lookup,
            kv_type: s.kv_type,
        },
        max_loaded: s.max_loaded.max(1),
        keep_alive: s.keep_alive()?,
        keep_alive_override: s.keep_alive_override()?,
        reserve_memory: s.reserve_memory_mib << 20,
        device: candle_core::Device::Cpu,
    })
}

pub fn rate_limits(s: &ServerSettings) -> super::rate::Limits {
    super::rate::Limits {
        requests_per_minute: s.rate_limit_rpm,
        tokens_per_minute: s.rate_limit_tpm,
    }
}

/// `GET /api/settings`: the saved settings, the defaults, which are pinned by flags, and which
/// wait for a restart.
pub async fn get_settings(State(state): State<AppState>) -> Json<Value> {
    Json(state.settings.view())
}

/// `PUT /api/settings`: change the saved settings (fields left out keep their saved values;
/// `null` puts one back to its default), then apply what a running server can.
pub async fn put_settings(
    State(state): State<AppState>,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let saved = state
        .settings
        .saved
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let new: ServerSettings = super::body::parse_patch(body, state.body_limit, &saved)?;
    let invalid = |e: SettingsError| {
        let message = e.to_string();
        let named = message.split(':').next().unwrap_or_default();
        let param = FIELDS.iter().find(|f| **f == named).unwrap_or(&"settings");
        ApiError::invalid(message, *param)
    };
    new.validate().map_err(invalid)?;
    let settings = &state.settings;
    let effective = settings.flags.over(&new).map_err(invalid)?;
    if !effective.host.is_loopback() && settings.keys_of(&effective).is_empty() {
        return Err(ApiError::invalid(
            "api_keys: listening on a network address needs at least one API key (anyone on the \
             network could use it); add a key or set host to 127.0.0.1",
            "api_keys",
        ));
    }
    if let Some(spec) = &effective.compression {
        if let Some(scorer) = &spec.scorer {
            if state.engines.library().resolve_gguf(scorer).is_err() {
                return Err(ApiError::invalid(
                    format!("compression: the scorer model `{scorer}` is not installed"),
                    "compression",
                ));
            }
        }
    }
    if let Some(draft) = &effective.draft {
        if state.engines.library().resolve_gguf(draft).is_err() {
            return Err(ApiError::invalid(
                format!("draft: the model `{draft}` is not installed"),
                "draft",
            ));
        }
    }
    new.save(&settings.path).map_err(ApiError::internal)?;
    let before = settings.effective();
    *settings.saved.lock().unwrap_or_else(|e| e.into_inner()) = new;
    apply(&state, &effective).map_err(invalid)?;
    let mut answer = settings.view();
    answer["applied"] = json!(before
        .changed(&effective)
        .into_iter()
        .filter(|f| !restart_only(std::slice::from_ref(f)).contains(f))
        .collect::<Vec<_>>());
    Ok(Json(answer))
}

/// Change one part of the saved settings (the admin API's own pages: backends), then save and
/// apply them as `PUT /api/settings` does.
pub fn change(
    state: &AppState,
    edit: impl FnOnce(&mut ServerSettings) -> Result<(), ApiError>,
) -> Result<(), ApiError> {
    let settings = &state.settings;
    let mut saved = settings.saved.lock().unwrap_or_else(|e| e.into_inner());
    let mut new = saved.clone();
    edit(&mut new)?;
    let invalid = |e: SettingsError| ApiError::invalid(e.to_string(), "settings");
    new.validate().map_err(invalid)?;
    let effective = settings.flags.over(&new).map_err(invalid)?;
    new.save(&settings.path).map_err(ApiError::internal)?;
    *saved = new;
    drop(saved);
    apply(state, &effective).map_err(invalid)
}

/// Put what a running server can change into force.
fn apply(state: &AppState, s: &ServerSettings) -> Result<(), SettingsError> {
    let settings = &state.settings;
    state.keys.replace(settings.keys_of(s));
    settings.set_cors(&s.cors_origins);
    *settings
        .allowed_hosts
        .write()
        .unwrap_or_else(|e| e.into_inner()) = s.allowed_hosts.clone();
    settings.set_timeout(s);
    state.rate.set_limits(rate_limits(s));
    state.engines.reconfigure(registry_config(s)?);
    state.compression.set_fallback(s.compression.clone());
    state
        .infer
        .backends
        .configure(&s.backends, &s.chains, &s.breaker, &s.auto)
        .map_err(|e| SettingsError::Invalid(format!("backends: {e}")))?;
    Ok(())
}
