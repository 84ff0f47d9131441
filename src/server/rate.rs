//! Per-key rate limits: requests and tokens per minute over a sliding window, reported in
//! OpenAI's `x-ratelimit-*` headers, refused with 429 and `Retry-After` when spent.
//! The key is the API key (hashed), or `anonymous` for requests without one.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;

use super::errors::ApiError;

const WINDOW: Duration = Duration::from_secs(60);

/// Limits per key and minute; 0 switches a limit off.
#[derive(Debug, Clone, Copy, Default)]
pub struct Limits {
    pub requests_per_minute: u64,
    pub tokens_per_minute: u64,
}

#[derive(Default)]
struct Usage {
    requests: VecDeque<Instant>,
    tokens: VecDeque<(Instant, u64)>,
}

impl Usage {
    fn prune(&mut self, now: Instant) {
        while self.requests.front().is_some_and(|t| now - *t >= WINDOW) {
            self.requests.pop_front();
        }
        while self.tokens.front().is_some_and(|(t, _)| now - *t >= WINDOW) {
            self.tokens.pop_front();
        }
    }

    fn tokens_used(&self) -> u64 {
        self.tokens.iter().map(|(_, n)| n).sum()
    }

    /// Time until the oldest entry leaves the window.
    fn reset(&self, now: Instant) -> Duration {
        let oldest = [
            self.requests.front().copied(),
            self.tokens.front().map(|(t, _)| *t),
        ]
        .into_iter()
        .flatten()
        .min();
        oldest.map_or(Duration::ZERO, |t| WINDOW.saturating_sub(now - t))
    }
}

/// Shared by the middleware (requests) and the handlers (tokens, once they are counted).
#[derive(Clone, Default)]
pub struct RateLimiter {
    /// Shared: the Settings page changes them on a running server.
    limits: Arc<Mutex<Limits>>,
    // std Mutex, not tokio's: no await while it is held.
    usage: Arc<Mutex<HashMap<String, Usage>>>,
}

impl RateLimiter {
    pub fn new(limits: Limits) -> Self {
        Self {
            limits: Arc::new(Mutex::new(limits)),
            usage: Arc::default(),
        }
    }

    pub fn limits(&self) -> Limits {
        *self.limits.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// New limits from the next request on; what was counted stays counted.
    pub fn set_limits(&self, limits: Limits) {
        *self.limits.lock().unwrap_or_else(|e| e.into_inner()) = limits;
    }

    fn enabled(&self) -> bool {
        let l = self.limits();
        l.requests_per_minute > 0 || l.tokens_per_minute > 0
    }

    /// Count a request, or say how long to wait.
    fn admit(&self, key: &str) -> Result<HeaderMap, Box<(ApiError, HeaderMap)>> {
        let now = Instant::now();
        let mut all = self.usage.lock().expect("rate limiter lock");
        let usage = all.entry(key.to_string()).or_default();
        usage.prune(now);
        let l = self.limits();
        let over_requests =
            l.requests_per_minute > 0 && usage.requests.len() as u64 >= l.requests_per_minute;
        let over_tokens = l.tokens_per_minute > 0 && usage.tokens_used() >= l.tokens_per_minute;
        if over_requests || over_tokens {
            let wait = usage.reset(now).as_secs().max(1);
            let which = if over_requests { "requests" } else { "tokens" };
            let error = ApiError::Overloaded {
                message: format!(
                    "Rate limit reached for {which} per minute on this key; retry in {wait} s"
                ),
                retry_after: wait,
            };
            return Err(Box::new((error, self.headers(usage, now))));
        }
        usage.requests.push_back(now);
        Ok(self.headers(usage, now))
    }

    /// Charge the tokens of a finished request to its key.
    pub fn add_tokens(&self, key: &str, tokens: u64) {
        if !self.enabled() {
            return;
        }
        let mut all = self.usage.lock().expect("rate limiter lock");
        all.entry(key.to_string())
            .or_default()
            .tokens
            .push_back((Instant::now(), tokens));
    }

    fn headers(&self, usage: &Usage, now: Instant) -> HeaderMap {
        let mut h = HeaderMap::new();
        let reset = format!("{}s", usage.reset(now).as_secs());
        let mut put = |name: &'static str, value: String| {
            if let Ok(v) = HeaderValue::from_str(&value) {
                h.insert(name, v);
            }
        };
        let l = self.limits();
        if l.requests_per_minute > 0 {
            put(
                "x-ratelimit-limit-requests",
                l.requests_per_minute.to_string(),
            );
            put(
                "x-ratelimit-remaining-requests",
                l.requests_per_minute
                    .saturating_sub(usage.requests.len() as u64)
                    .to_string(),
            );
            put("x-ratelimit-reset-requests", reset.clone());
        }
        if l.tokens_per_minute > 0 {
            put("x-ratelimit-limit-tokens", l.tokens_per_minute.to_string());
            put(
                "x-ratelimit-remaining-tokens",
                l.tokens_per_minute
                    .saturating_sub(usage.tokens_used())
                    .to_string(),
            );
            put("x-ratelimit-reset-tokens", reset);
        }
        h
    }
}

pub use super::caller::key_of;

pub async fn limit(State(limiter): State<RateLimiter>, request: Request, next: Next) -> Response {
    if !limiter.enabled() || !request.uri().path().starts_with("/v1/") {
        return next.run(request).await;
    }
    match limiter.admit(&key_of(request.headers())) {
        Ok(headers) => {
            let mut response = next.run(request).await;
            response.headers_mut().extend(headers);
            response
        }
        Err(refused) => {
            let (error, headers) = *refused;
            let mut response = super::errors::error_for(request.uri().path(), error);
            response.headers_mut().extend(headers);
            response
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_tokens_are_limited_per_key() {
        let limiter = RateLimiter::new(Limits {
            requests_per_minute: 2,
            tokens_per_minute: 100,
        });
        let h = limiter.admit("a").unwrap();
        assert_eq!(h["x-ratelimit-remaining-requests"], "1");
        limiter.admit("a").unwrap();
        let (err, h) = *limiter.admit("a").unwrap_err();
        assert!(err.to_string().contains("requests per minute"), "{err}");
        assert_eq!(h["x-ratelimit-remaining-requests"], "0");
        // Another key has its own budget; tokens count once charged.
        limiter.admit("b").unwrap();
        limiter.add_tokens("b", 100);
        let (err, h) = *limiter.admit("b").unwrap_err();
        assert!(err.to_string().contains("tokens per minute"), "{err}");
        assert_eq!(h["x-ratelimit-remaining-tokens"], "0");
    }

    #[test]
    fn keys_are_hashed() {
        let mut h = HeaderMap::new();
        assert_eq!(key_of(&h), "anonymous");
        h.insert("authorization", "Bearer sk-secret".parse().unwrap());
        let k = key_of(&h);
        assert!(k.starts_with("key-") && !k.contains("secret"));
    }
}
