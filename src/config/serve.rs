//! What `lantern serve` and the desktop app start the server with: saved in `settings.toml` in
//! the data directory (the UI's Settings page writes it), overridden by flags and `LANTERN_*`
//! variables, with defaults that serve.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::compress::Spec;
use crate::engine::kv_rows::KvType;
use crate::infer::backends::{AutoSpec, BackendSpec, BreakerSpec, ChainSpec};
use crate::scheduler::KeepAlive;

/// Bodies larger than this get a 413; a whole context of text fits with room to spare.
pub const DEFAULT_BODY_LIMIT: usize = 4 << 20;

/// The server's saved settings. Every field has a default; the file holds what the user set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSettings {
    /// The model served by default, loaded and warmed before the server listens.
    pub model: String,
    /// Address to listen on. Anything but loopback needs at least one API key.
    pub host: IpAddr,
    /// Port to listen on (0: any free port).
    pub port: u16,
    /// Accepted API keys (`Authorization: Bearer KEY`); none: no key is asked for.
    pub api_keys: Vec<String>,
    /// Browser origins allowed to call the API (CORS), besides the desktop app's own.
    pub cors_origins: Vec<String>,
    /// Host names besides loopback's that requests may be addressed to (`Host`); others get
    /// 403, which defeats DNS rebinding. Not checked when listening off loopback with keys.
    pub allowed_hosts: Vec<String>,
    /// Requests that may wait beyond the running set before new ones get 429.
    pub max_waiting: usize,
    /// Sequences batched together per model (continuous batching).
    pub max_seqs: usize,
    /// Tokens in one forward pass: decodes of every running sequence plus prefill chunks.
    pub max_step_tokens: usize,
    /// Prompt tokens of one sequence per step (long prompts never stall running streams).
    pub prefill_chunk: usize,
    /// Speculative decoding by prompt lookup: drafts copied from the prompt and the answer so
    /// far, checked in one pass; the output is the same, faster when the answer repeats.
    pub prompt_lookup: bool,
    /// Speculative decoding with a draft model: a smaller model with the same tokenizer that
    /// drafts tokens for the default model (`model`); the output is the default model's.
    pub draft: Option<String>,
    /// How the KV cache stores keys and values on the CPU: `f16`, or `q8_0` (about half the
    /// memory, for long contexts; models whose head width is not a multiple of 32 keep f16).
    pub kv_type: KvType,
    /// MiB of KV cache per model for running sequences.
    pub kv_memory_mib: usize,
    /// MiB of KV per model kept for prompt-prefix reuse (0: none).
    pub prefix_cache_mib: usize,
    /// Models loaded at once; the least recently used idle one unloads to make room.
    pub max_loaded: usize,
    /// How long a model stays loaded after its last request unless the request says:
    /// seconds, `5m`, `1h`, `-1` forever, `0` unload at once.
    pub keep_alive: String,
    /// A keep-alive that wins over what requests say.
    pub keep_alive_override: Option<String>,
    /// More models to load at start and keep loaded (the warm set).
    pub preload: Vec<String>,
    /// MiB of memory to leave free when loading a model.
    pub reserve_memory_mib: u64,
    /// Seconds a request may take before it is stopped with a 504.
    pub request_timeout: u64,
    /// Requests per minute per API key (0: unlimited).
    pub rate_limit_rpm: u64,
    /// Prompt + completion tokens per minute per API key (0: unlimited).
    pub rate_limit_tpm: u64,
    /// Largest accepted request body, in bytes.
    pub body_limit: usize,
    /// MiB of embedding vectors kept in memory (level 1 of the embedding cache).
    pub embedding_cache_mib: usize,
    /// MiB of embedding vectors kept in the database (level 2).
    pub embedding_store_mib: u64,
    /// MiB of whole responses kept for deterministic requests (temperature 0 or a seed); 0: off.
    pub response_cache_mib: usize,
    /// Seconds a cached response stays valid.
    pub response_cache_ttl: u64,
    /// MiB of answers the semantic cache keeps (on disk, and in memory); 0: off.
    pub semantic_cache_mib: usize,
    /// Prompt compression for sessions that set none of their own; none: off.
    pub compression: Option<Spec>,
    /// Where models are pulled from: Hugging Face or a mirror of it.
    pub hf_endpoint: String,
    /// Remote OpenAI-compatible engines, served as `NAME/MODEL` (their keys live apart, in
    /// `backend-keys.json`).
    pub backends: Vec<BackendSpec>,
    /// Model aliases answered by the first of their targets that can.
    pub chains: Vec<ChainSpec>,
    /// When a target's circuit opens after failures, and for how long.
    pub breaker: BreakerSpec,
    /// `model: "auto"`: the smallest candidate whose rules accept the prompt answers it.
    pub auto: AutoSpec,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            model: "smollm2".into(),
            host: IpAddr::from([127, 0, 0, 1]),
            port: 8080,
            api_keys: Vec::new(),
            cors_origins: Vec::new(),
            allowed_hosts: Vec::new(),
            max_waiting: 64,
            max_seqs: 32,
            max_step_tokens: 512,
            prefill_chunk: 256,
            prompt_lookup: true,
            draft: None,
            kv_type: KvType::F16,
            kv_memory_mib: 1024,
            prefix_cache_mib: 512,
            max_loaded: 3,
            keep_alive: "5m".into(),
            keep_alive_override: None,
            preload: Vec::new(),
            reserve_memory_mib: 256,
            request_timeout: 600,
            rate_limit_rpm: 0,
            rate_limit_tpm: 0,
            body_limit: DEFAULT_BODY_LIMIT,
            embedding_cache_mib: 64,
            embedding_store_mib: 1024,
            response_cache_mib: 64,
            response_cache_ttl: 3600,
            semantic_cache_mib: 64,
            compression: None,
            hf_endpoint: crate::library::pull::DEFAULT_ENDPOINT.into(),
            backends: Vec::new(),
            chains: Vec::new(),
            breaker: BreakerSpec::default(),
            auto: AutoSpec::default(),
        }
    }
}

/// Settings a running server takes without a restart (the rest wait for the next start).
pub const APPLIED_LIVE: [&str; 19] = [
    "api_keys",
    "cors_origins",
    "allowed_hosts",
    "keep_alive",
    "keep_alive_override",
    "max_loaded",
    "max_waiting",
    "max_seqs",
    "max_step_tokens",
    "prefill_chunk",
    "request_timeout",
    "rate_limit_rpm",
    "rate_limit_tpm",
    "reserve_memory_mib",
    "hf_endpoint",
    "backends",
    "chains",
    "breaker",
    "auto",
];

/// Every setting's name, as the file and the API spell it.
pub const FIELDS: [&str; 36] = [
    "model",
    "host",
    "port",
    "api_keys",
    "cors_origins",
    "allowed_hosts",
    "max_waiting",
    "max_seqs",
    "max_step_tokens",
    "prefill_chunk",
    "prompt_lookup",
    "draft",
    "kv_type",
    "kv_memory_mib",
    "prefix_cache_mib",
    "max_loaded",
    "keep_alive",
    "keep_alive_override",
    "preload",
    "reserve_memory_mib",
    "request_timeout",
    "rate_limit_rpm",
    "rate_limit_tpm",
    "body_limit",
    "embedding_cache_mib",
    "embedding_store_mib",
    "response_cache_mib",
    "response_cache_ttl",
    "semantic_cache_mib",
    "compression",
    "hf_endpoint",
    "backends",
    "chains",
    "breaker",
    "auto",
    "settings",
];

/// Why settings could not be read, saved or used.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("{path}: {message}")]
    Read { path: PathBuf, message: String },
    #[error("saving {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A value is out of range; the message names the field.
    #[error("{0}")]
    Invalid(String),
}

impl ServerSettings {
    /// The file in a data directory.
    pub fn path(home: &Path) -> PathBuf {
        home.join("settings.toml")
    }

    /// The saved settings, or the defaults when nothing was saved. A file that cannot be read is
    /// an error (never silently replaced: it holds what the user set).
    pub fn load(path: &Path) -> Result<Self, SettingsError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => {
                return Err(SettingsError::Read {
                    path: path.into(),
                    message: e.to_string(),
                })
            }
        };
        let settings: Self = toml::from_str(&text).map_err(|e| SettingsError::Read {
            path: path.into(),
            message: e.to_string(),
        })?;
        settings.validate().map_err(|e| SettingsError::Read {
            path: path.into(),
            message: e.to_string(),
        })?;
        Ok(settings)
    }

    /// Write the settings whole: to a temporary file first, then renamed over the old one, so a
    /// crash mid-write leaves the previous file intact.
    pub fn save(&self, path: &Path) -> Result<(), SettingsError> {
        let write = |path: &Path| -> std::io::Result<()> {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let text = toml::to_string_pretty(self).map_err(std::io::Error::other)?;
            let tmp = path.with_extension("toml.tmp");
            std::fs::write(
                &tmp,
                format!("# Lantern server settings (the Settings page writes this file)\n{text}"),
            )?;
            std::fs::rename(&tmp, path)
        };
        write(path).map_err(|source| SettingsError::Write {
            path: path.into(),
            source,
        })
    }

    /// Every value in range; the message names the field.
    pub fn validate(&self) -> Result<(), SettingsError> {
        let bad = |m: String| Err(SettingsError::Invalid(m));
        if self.model.trim().is_empty() {
            return bad("model: give a model name".into());
        }
        if self.draft.as_ref().is_some_and(|d| d.trim().is_empty()) {
            return bad("draft: give a model name or leave it out".into());
        }
        // A network address without any key is refused where key files are known too
        // (`Launch::start`, `PUT /api/settings`).
        for key in &self.api_keys {
            if key.trim().is_empty() || key.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return bad("api_keys: a key may not be empty or contain spaces".into());
            }
        }
        for origin in &self.cors_origins {
            let ok = origin.split_once("://").is_some_and(|(scheme, rest)| {
                matches!(scheme, "http" | "https") && !rest.is_empty() && !rest.contains(['/', ' '])
            });
            if !ok || axum::http::HeaderValue::from_str(origin).is_err() {
                return bad(format!(
                    "cors_origins: `{origin}` is not an origin like http://localhost:3000"
                ));
            }
        }
        for host in &self.allowed_hosts {
            let ok = !host.is_empty()
                && host.len() <= 253
                && host
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':'));
            if !ok {
                return bad(format!(
                    "allowed_hosts: `{host}` is not a host name like lantern.lan (no port, no \
                     scheme)"
                ));
            }
        }
        let ranges: [(&str, u64, u64, u64); 14] = [
            ("max_waiting", self.max_waiting as u64, 0, 100_000),
            ("max_seqs", self.max_seqs as u64, 1, 1024),
            ("max_step_tokens", self.max_step_tokens as u64, 1, 65_536),
            ("prefill_chunk", self.prefill_chunk as u64, 1, 65_536),
            ("kv_memory_mib", self.kv_memory_mib as u64, 1, 1 << 20),
            ("prefix_cache_mib", self.prefix_cache_mib as u64, 0, 1 << 20),
            ("max_loaded", self.max_loaded as u64, 1, 64),
            ("request_timeout", self.request_timeout, 1, 86_400),
            ("body_limit", self.body_limit as u64, 1024, 1 << 30),
            (
                "embedding_cache_mib",
                self.embedding_cache_mib as u64,
                0,
                1 << 20,
            ),
            ("embedding_store_mib", self.embedding_store_mib, 0, 1 << 24),
            (
                "response_cache_mib",
                self.response_cache_mib as u64,
                0,
                1 << 20,
            ),
            (
                "response_cache_ttl",
                self.response_cache_ttl,
                1,
                365 * 86_400,
            ),
            (
                "semantic_cache_mib",
                self.semantic_cache_mib as u64,
                0,
                1 << 20,
            ),
        ];
        for (field, value, min, max) in ranges {
            if value < min || value > max {
                return bad(format!("{field}: {value} is out of range ({min}..={max})"));
            }
        }
        if self.max_step_tokens < self.max_seqs {
            return bad(format!(
                "max_step_tokens: {} is less than max_seqs ({}); every running sequence needs \
                 a token each step",
                self.max_step_tokens, self.max_seqs
            ));
        }
        if !(self.hf_endpoint.starts_with("http://") || self.hf_endpoint.starts_with("https://")) {
            return bad(format!(
                "hf_endpoint: `{}` is not an http(s) URL",
                self.hf_endpoint
            ));
        }
        self.keep_alive()?;
        self.keep_alive_override()?;
        if let Some(spec) = &self.compression {
            spec.validate()
                .map_err(|e| SettingsError::Invalid(format!("compression: {e}")))?;
        }
        crate::infer::backends::spec::validate(&self.backends, &self.chains, &self.breaker)
            .map_err(SettingsError::Invalid)?;
        self.auto.validate().map_err(SettingsError::Invalid)?;
        Ok(())
    }

    pub fn keep_alive(&self) -> Result<KeepAlive, SettingsError> {
        parse_keep_alive("keep_alive", &self.keep_alive)
    }

    pub fn keep_alive_override(&self) -> Result<Option<KeepAlive>, SettingsError> {
        self.keep_alive_override
            .as_deref()
            .map(|s| parse_keep_alive("keep_alive_override", s))
            .transpose()
    }

    /// The fields whose values differ between two settings.
    pub fn changed(&self, other: &Self) -> Vec<String> {
        let (a, b) = (as_map(self), as_map(other));
        let mut keys: Vec<String> = a.keys().chain(b.keys()).cloned().collect();
        keys.sort();
        keys.dedup();
        keys.retain(|k| a.get(k) != b.get(k));
        keys
    }
}

fn parse_keep_alive(field: &str, s: &str) -> Result<KeepAlive, SettingsError> {
    KeepAlive::parse_str(s).ok_or_else(|| {
        SettingsError::Invalid(format!(
            "{field}: `{s}` is not seconds, -1, or a duration like 5m, 90s, 1h"
        ))
    })
}

fn as_map(s: &ServerSettings) -> serde_json::Map<String, serde_json::Value> {
    match serde_json::to_value(s) {
        Ok(serde_json::Value::Object(map)) => map,
        _ => serde_json::Map::new(),
    }
}

/// Flags and `LANTERN_*` variables for `lantern serve`: each one given wins over the saved
/// setting of the same name (shown as such on the Settings page).
#[derive(Debug, Clone, Default, clap::Args, Serialize)]
pub struct ServeFlags {
    /// Installed model name or a path to a .gguf file [saved default: smollm2].
    #[arg(env = "LANTERN_MODEL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Address to listen on; anything but loopback needs an API key [default: 127.0.0.1].
    #[arg(long, env = "LANTERN_HOST")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<IpAddr>,
    /// Port to listen on (0: any free port, printed at start) [default: 8080].
    #[arg(long, env = "LANTERN_PORT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// An accepted API key (`Authorization: Bearer KEY`); repeatable.
    #[arg(long = "api-key", env = "LANTERN_API_KEY")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_keys: Option<Vec<String>>,
    /// A file with one accepted API key per line (`#` starts a comment); added to the others.
    #[arg(long, env = "LANTERN_API_KEY_FILE")]
    #[serde(skip)]
    pub api_key_file: Option<PathBuf>,
    /// Browser origins allowed to call the API (CORS), besides the desktop app's own; repeatable.
    #[arg(long = "cors-origin", env = "LANTERN_CORS_ORIGIN")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cors_origins: Option<Vec<String>>,
    /// A host name besides loopback's that requests may be addressed to; repeatable.
    #[arg(long = "allowed-host", env = "LANTERN_ALLOWED_HOST")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allowed_hosts: Option<Vec<String>>,
    /// Requests that may wait beyond the running set before new ones get 429 [default: 64].
    #[arg(long, env = "LANTERN_MAX_WAITING")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_waiting: Option<usize>,
    /// Sequences batched together per model [default: 32].
    #[arg(long, env = "LANTERN_MAX_SEQS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_seqs: Option<usize>,
    /// Tokens in one forward pass [default: 512].
    #[arg(long, env = "LANTERN_MAX_STEP_TOKENS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_step_tokens: Option<usize>,
    /// Prompt tokens of one sequence per step [default: 256].
    #[arg(long, env = "LANTERN_PREFILL_CHUNK")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefill_chunk: Option<usize>,
    /// Speculative decoding by prompt lookup: true or false [default: true].
    #[arg(long, env = "LANTERN_PROMPT_LOOKUP")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt_lookup: Option<bool>,
    /// A smaller model with the same tokenizer that drafts tokens for MODEL (speculative
    /// decoding; the output is MODEL's): an installed name or a .gguf path.
    #[arg(long, env = "LANTERN_DRAFT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub draft: Option<String>,
    /// KV cache storage on the CPU: f16 or q8_0 (about half the memory) [default: f16].
    #[arg(long, env = "LANTERN_KV_TYPE", value_enum)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kv_type: Option<KvType>,
    /// MiB of KV cache per model for running sequences [default: 1024].
    #[arg(long, env = "LANTERN_KV_MEMORY_MIB")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kv_memory_mib: Option<usize>,
    /// MiB of KV per model kept for prompt-prefix reuse (0: none) [default: 512].
    #[arg(long, env = "LANTERN_PREFIX_CACHE_MIB")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefix_cache_mib: Option<usize>,
    /// Models loaded at once [default: 3].
    #[arg(long, env = "LANTERN_MAX_LOADED")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_loaded: Option<usize>,
    /// How long a model stays loaded after its last request unless the request says: seconds,
    /// `5m`, `1h`, `-1` forever, `0` unload at once [default: 5m].
    #[arg(long, env = "LANTERN_KEEP_ALIVE", allow_hyphen_values = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keep_alive: Option<String>,
    /// A keep-alive that wins over what requests say.
    #[arg(long, env = "LANTERN_KEEP_ALIVE_OVERRIDE", allow_hyphen_values = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keep_alive_override: Option<String>,
    /// More models to load at start and keep loaded (the warm set), comma-separated.
    #[arg(long, env = "LANTERN_PRELOAD", value_delimiter = ',')]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub preload: Option<Vec<String>>,
    /// MiB of memory to leave free when loading a model [default: 256].
    #[arg(long, env = "LANTERN_RESERVE_MEMORY_MIB")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reserve_memory_mib: Option<u64>,
    /// Seconds a request may take before it is stopped with a 504 [default: 600].
    #[arg(long, env = "LANTERN_REQUEST_TIMEOUT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_timeout: Option<u64>,
    /// Requests per minute per API key (0: unlimited) [default: 0].
    #[arg(long, env = "LANTERN_RATE_LIMIT_RPM")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limit_rpm: Option<u64>,
    /// Prompt + completion tokens per minute per API key (0: unlimited) [default: 0].
    #[arg(long, env = "LANTERN_RATE_LIMIT_TPM")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limit_tpm: Option<u64>,
    /// Largest accepted request body, in bytes [default: 32 MiB].
    #[arg(long, env = "LANTERN_BODY_LIMIT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body_limit: Option<usize>,
    /// Where models are pulled from: Hugging Face or a mirror [default: https://huggingface.co].
    #[arg(long, env = "LANTERN_HF_ENDPOINT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hf_endpoint: Option<String>,
    /// The SQLite database (default: lantern.db in the data directory). If it cannot be opened
    /// the server still runs, without what it keeps there.
    #[arg(long, env = "LANTERN_DB")]
    #[serde(skip)]
    pub db: Option<PathBuf>,
    /// MiB of embedding vectors kept in memory [default: 64].
    #[arg(long, env = "LANTERN_EMBEDDING_CACHE_MIB")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub embedding_cache_mib: Option<usize>,
    /// MiB of embedding vectors kept in the database [default: 1024].
    #[arg(long, env = "LANTERN_EMBEDDING_STORE_MIB")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub embedding_store_mib: Option<u64>,
    /// MiB of whole responses kept for deterministic requests; 0: off [default: 64].
    #[arg(long, env = "LANTERN_RESPONSE_CACHE_MIB")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_cache_mib: Option<usize>,
    /// Seconds a cached response stays valid [default: 3600].
    #[arg(long, env = "LANTERN_RESPONSE_CACHE_TTL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_cache_ttl: Option<u64>,
}

impl ServeFlags {
    /// The names of the settings these flags pin.
    pub fn pinned(&self) -> Vec<String> {
        match serde_json::to_value(self) {
            Ok(serde_json::Value::Object(map)) => map.keys().cloned().collect(),
            _ => Vec::new(),
        }
    }

    /// `saved` with every given flag in place of its setting.
    pub fn over(&self, saved: &ServerSettings) -> Result<ServerSettings, SettingsError> {
        let mut map = as_map(saved);
        if let Ok(serde_json::Value::Object(flags)) = serde_json::to_value(self) {
            map.extend(flags);
        }
        let merged: ServerSettings = serde_json::from_value(serde_json::Value::Object(map))
            .map_err(|e| SettingsError::Invalid(e.to_string()))?;
        merged.validate()?;
        Ok(merged)
    }
}

#[cfg(test)]
#[path = "serve_tests.rs"]
mod tests;
