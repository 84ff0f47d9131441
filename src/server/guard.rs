//! Who may call. With API keys configured every route but `/health` and the UI's static files
//! needs one (`Authorization: Bearer KEY`); without keys the server only listens on loopback
//! addresses (`lantern serve` enforces it). The admin API (`/api/*`: settings, the request log,
//! jobs, models, the lab) needs more: the admin token (`admin_token`), as a bearer token or the
//! cookie the UI's page load sets, or an API key when keys are set. The admin token also
//! passes where a key is asked for: whoever holds it holds the whole server.

use std::collections::HashSet;
use std::sync::{Arc, RwLock};

use axum::extract::{Request, State};
use axum::http::header::COOKIE;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::admin_token::AdminToken;
use super::errors::ApiError;
use super::AppState;

/// The accepted keys; empty means no key is asked for. Shared: the Settings page replaces them.
#[derive(Debug, Clone, Default)]
pub struct ApiKeys(Arc<RwLock<HashSet<String>>>);

fn key_set(keys: impl IntoIterator<Item = String>) -> HashSet<String> {
    keys.into_iter()
        .map(|k| k.trim().to_string())
        .filter(|k| !k.is_empty())
        .collect()
}

impl ApiKeys {
    pub fn new(keys: impl IntoIterator<Item = String>) -> Self {
        Self(Arc::new(RwLock::new(key_set(keys))))
    }

    /// Accept these keys from now on, and no others.
    pub fn replace(&self, keys: impl IntoIterator<Item = String>) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = key_set(keys);
    }

    /// Keys given on the command line plus one per non-empty, non-`#` line of a key file.
    pub fn from_sources(keys: &[String], file: Option<&std::path::Path>) -> std::io::Result<Self> {
        let mut all: Vec<String> = keys.to_vec();
        if let Some(path) = file {
            let text = std::fs::read_to_string(path)?;
            all.extend(
                text.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                    .map(String::from),
            );
        }
        Ok(Self::new(all))
    }

    /// The accepted keys, sorted.
    pub fn list(&self) -> Vec<String> {
        let mut keys: Vec<String> = self
            .0
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect();
        keys.sort();
        keys
    }

    pub fn is_empty(&self) -> bool {
        self.0.read().unwrap_or_else(|e| e.into_inner()).is_empty()
    }

    fn accepts(&self, header: Option<&str>) -> bool {
        header
            .and_then(|h| h.strip_prefix("Bearer "))
            .is_some_and(|k| {
                self.0
                    .read()
                    .unwrap_or_else(|e| e.into_inner())
                    .contains(k.trim())
            })
    }
}

/// The admin API: everything under `/api/` but Ollama's inference and listing routes, which
/// are asked for what `/v1/` is.
pub fn is_admin(path: &str) -> bool {
    (path.starts_with("/api/") || path == "/api") && !super::errors::is_ollama_path(path)
}

pub async fn require_access(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let path = request.uri().path();
    if path == "/health" || super::ui::is_public(path) {
        return next.run(request).await;
    }
    let headers = request.headers();
    // `Authorization: Bearer KEY` or Anthropic's `x-api-key: KEY`, the same key either way.
    let key_given = super::caller::api_key(headers);
    let bearer = key_given.map(|k| format!("Bearer {k}"));
    let admin = key_given.is_some_and(|t| state.admin.matches(t))
        || headers
            .get_all(COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .filter_map(|c| AdminToken::from_cookies(c, state.settings.port()))
            .any(|t| state.admin.matches(t));
    let key = !state.keys.is_empty() && state.keys.accepts(bearer.as_deref());
    let allowed = if is_admin(path) {
        admin || key
    } else {
        admin || key || state.keys.is_empty()
    };
    if allowed {
        next.run(request).await
    } else if is_admin(path) && state.keys.is_empty() {
        ApiError::AdminRequired.into_response()
    } else {
        super::errors::error_for(path, ApiError::Unauthorized)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_from_flags_and_files() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut file, b"# team keys\nsk-b\n\n  sk-c  \n").unwrap();
        let keys = ApiKeys::from_sources(&["sk-a".into()], Some(file.path())).unwrap();
        for k in ["sk-a", "sk-b", "sk-c"] {
            assert!(keys.accepts(Some(&format!("Bearer {k}"))), "{k}");
        }
        assert!(!keys.accepts(Some("Bearer sk-d")));
        assert!(!keys.accepts(Some("sk-a")));
        assert!(!keys.accepts(None));
        assert!(ApiKeys::new(Vec::new()).is_empty());
        keys.replace(["sk-new".to_string()]);
        assert!(keys.accepts(Some("Bearer sk-new")));
        assert!(!keys.accepts(Some("Bearer sk-a")));
    }
}
