//! The server's guards over HTTP: API keys, non-loopback refusal, CORS, rate limits.

mod common;

use std::process::Command;

use common::server::{chat, post, start};
use serde_json::{json, Value};

#[tokio::test]
async fn api_keys_are_required_when_configured() {
    let s = start(&["--api-key", "sk-test"]);
    let client = reqwest::Client::new();
    let url = format!("{}/v1/models", s.base);
    let none = client.get(&url).send().await.unwrap();
    assert_eq!(none.status(), 401);
    let body: Value = none.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_api_key");
    let wrong = client
        .get(&url)
        .bearer_auth("sk-nope")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let right = client
        .get(&url)
        .bearer_auth("sk-test")
        .send()
        .await
        .unwrap();
    assert_eq!(right.status(), 200);
    let health = client
        .get(format!("{}/health", s.base))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200, "health stays open for probes");
}

#[test]
fn non_loopback_addresses_are_refused_without_a_key() {
    let out = Command::new(env!("CARGO_BIN_EXE_lantern"))
        .args(["serve", "--host", "0.0.0.0", "--port", "0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("without an API key"));
}

#[tokio::test]
async fn cors_allows_the_app_and_configured_origins_only() {
    let s = start(&["--cors-origin", "http://localhost:5173"]);
    let client = reqwest::Client::new();
    let preflight = |origin: &'static str| {
        client
            .request(
                reqwest::Method::OPTIONS,
                format!("{}/v1/chat/completions", s.base),
            )
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "content-type,authorization",
            )
            .send()
    };
    for origin in ["tauri://localhost", "http://localhost:5173"] {
        let r = preflight(origin).await.unwrap();
        let allowed = r
            .headers()
            .get("access-control-allow-origin")
            .map(|v| v.to_str().unwrap().to_string());
        assert_eq!(allowed.as_deref(), Some(origin));
    }
    let r = preflight("http://evil.example").await.unwrap();
    assert!(r.headers().get("access-control-allow-origin").is_none());
}

#[tokio::test]
async fn rate_limits_per_key_with_headers() {
    let s = start(&[
        "--api-key",
        "sk-a",
        "--api-key",
        "sk-b",
        "--rate-limit-rpm",
        "2",
    ]);
    let client = reqwest::Client::new();
    let send = |key: &'static str| {
        client
            .post(format!("{}/v1/chat/completions", s.base))
            .bearer_auth(key)
            .json(&chat("Hi", json!({"max_tokens": 2})))
            .send()
    };
    let first = send("sk-a").await.unwrap();
    assert_eq!(first.status(), 200);
    assert_eq!(first.headers()["x-ratelimit-limit-requests"], "2");
    assert_eq!(first.headers()["x-ratelimit-remaining-requests"], "1");
    assert_eq!(send("sk-a").await.unwrap().status(), 200);
    let third = send("sk-a").await.unwrap();
    assert_eq!(third.status(), 429);
    assert!(third.headers().contains_key("retry-after"));
    let body: Value = third.json().await.unwrap();
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("requests per minute"));
    assert_eq!(
        send("sk-b").await.unwrap().status(),
        200,
        "each key has its own budget"
    );
}

#[tokio::test]
async fn token_rate_limits_count_prompt_and_completion() {
    let s = start(&["--rate-limit-tpm", "35"]);
    // The chat prompt alone is ~31 tokens: the first request fits, the second finds 35 spent.
    let (status, first) = post(
        &s,
        "/v1/chat/completions",
        &chat("Hi", json!({"max_tokens": 12})),
    )
    .await;
    assert_eq!(status, 200);
    assert!(
        first["usage"]["total_tokens"].as_u64().unwrap() >= 35,
        "{first}"
    );
    let r = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", s.base))
        .json(&chat("Hi", json!({"max_tokens": 2})))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["x-ratelimit-remaining-tokens"], "0");
    let body: Value = r.json().await.unwrap();
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("tokens per minute"));
}
