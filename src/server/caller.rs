//! Who a request is, from its headers, the same for every wire format: its API key
//! (`Authorization: Bearer` or Anthropic's `x-api-key`), its session, its rate-limit key, what
//! its `Cache-Control` allows, and the server's time limit.

use axum::http::HeaderMap;

use super::AppState;
use crate::infer::{CacheUse, Caller};

/// The API key a request carries: `Authorization: Bearer KEY`, or `x-api-key: KEY` as
/// Anthropic's clients send it.
pub fn api_key(headers: &HeaderMap) -> Option<&str> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    header("authorization")
        .and_then(|h| h.strip_prefix("Bearer "))
        .or_else(|| header("x-api-key"))
        .map(str::trim)
        .filter(|k| !k.is_empty())
}

/// The rate-limit key of a request: its API key, hashed, or `anonymous`.
pub fn key_of(headers: &HeaderMap) -> String {
    match api_key(headers) {
        Some(key) => {
            use sha2::Digest;
            let digest = sha2::Sha256::digest(key.as_bytes());
            format!("key-{}", &format!("{digest:x}")[..12])
        }
        None => "anonymous".into(),
    }
}

/// The session a request belongs to: an `X-Session-Id` header, else the API key (as a short
/// hash, never the key itself), else the `user` the body names, else `anonymous`.
pub fn session_of(headers: &HeaderMap, user: Option<&str>) -> String {
    if let Some(id) = headers
        .get("x-session-id")
        .and_then(|v| v.to_str().ok())
        .filter(|s| !s.is_empty())
    {
        return id.to_string();
    }
    if api_key(headers).is_some() {
        return key_of(headers);
    }
    user.filter(|u| !u.is_empty())
        .map(|u| format!("user-{u}"))
        .unwrap_or_else(|| "anonymous".into())
}

/// What a request's `Cache-Control` allows the response cache.
pub fn cache_use(headers: &HeaderMap) -> CacheUse {
    let directives: Vec<String> = headers
        .get_all(axum::http::header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|d| d.trim().to_ascii_lowercase())
        .collect();
    let has = |d: &str| directives.iter().any(|x| x == d);
    CacheUse {
        read: !has("no-cache") && !has("no-store"),
        write: !has("no-store"),
    }
}

/// The caller of a request with these headers; `user`: the body's own user field, if any.
pub fn caller(state: &AppState, headers: &HeaderMap, user: Option<&str>) -> Caller {
    Caller {
        session: session_of(headers, user),
        rate_key: key_of(headers),
        cache: cache_use(headers),
        timeout: state.settings.request_timeout(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_come_from_header_key_or_user() {
        let mut h = HeaderMap::new();
        assert_eq!(session_of(&h, None), "anonymous");
        assert_eq!(session_of(&h, Some("ada")), "user-ada");
        h.insert("x-api-key", "sk-secret".parse().unwrap());
        let by_key = session_of(&h, Some("ada"));
        assert!(by_key.starts_with("key-") && !by_key.contains("secret"));
        h.insert("authorization", "Bearer sk-secret".parse().unwrap());
        assert_eq!(session_of(&h, Some("ada")), by_key, "one key, one session");
        h.insert("x-session-id", "chat-42".parse().unwrap());
        assert_eq!(session_of(&h, Some("ada")), "chat-42");
    }

    #[test]
    fn cache_control_directives() {
        let mut h = HeaderMap::new();
        assert!(cache_use(&h).read && cache_use(&h).write);
        h.insert("cache-control", "no-cache".parse().unwrap());
        assert!(!cache_use(&h).read && cache_use(&h).write);
        h.insert("cache-control", "max-age=0, No-Store".parse().unwrap());
        assert!(!cache_use(&h).read && !cache_use(&h).write);
    }
}
