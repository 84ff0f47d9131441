//! Ollama's API on the real server over HTTP, for what the Python client's test
//! (`tests/clients/test_ollama.py`) does not reach: its routes need no admin token (but do need
//! an API key when keys are set), errors in Ollama's shape (400, 415, 401) while `/v1/` keeps
//! OpenAI's, NDJSON streams line by line, loading and unloading on a request without a prompt,
//! and what is refused (`think`, images, a prompt over `num_ctx`).

mod common;

use common::server::{start, Server};
use serde_json::{json, Value};

/// A request as an Ollama client sends it: no credential.
fn plain(s: &Server, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
    reqwest::Client::new().request(method, format!("{}{path}", s.base))
}

async fn answer(r: reqwest::RequestBuilder) -> (u16, Value) {
    let r = r.send().await.unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    (status, body)
}

async fn post(s: &Server, path: &str, body: Value) -> (u16, Value) {
    answer(plain(s, reqwest::Method::POST, path).json(&body)).await
}

async fn get(s: &Server, path: &str) -> (u16, Value) {
    answer(plain(s, reqwest::Method::GET, path)).await
}

fn chat(content: &str, extra: Value) -> Value {
    let mut body = json!({"model": "smollm2", "stream": false,
                          "messages": [{"role": "user", "content": content}],
                          "options": {"temperature": 0, "num_predict": 3}});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    body
}

/// Ollama's error: `{"error": "..."}` and nothing else, the message naming `mention`.
#[track_caller]
fn assert_ollama_error(body: &Value, mention: &str) {
    let obj = body.as_object().unwrap();
    assert_eq!(obj.len(), 1, "{body}");
    let message = body["error"].as_str().unwrap_or_else(|| panic!("{body}"));
    assert!(message.contains(mention), "{mention:?} in {body}");
}

#[tokio::test]
async fn the_ollama_routes_need_no_admin_token_and_the_admin_api_still_does() {
    let s = start(&[]);
    for path in ["/api/tags", "/api/ps", "/api/version"] {
        let (status, body) = get(&s, path).await;
        assert_eq!(status, 200, "{path}: {body}");
    }
    for (path, body) in [
        ("/api/chat", chat("Hi", json!({}))),
        (
            "/api/generate",
            json!({"model": "smollm2", "prompt": "Hi", "stream": false,
                                 "options": {"num_predict": 2}}),
        ),
        ("/api/show", json!({"model": "smollm2"})),
        ("/api/embed", json!({"model": "all-minilm", "input": "Hi"})),
        (
            "/api/embeddings",
            json!({"model": "all-minilm", "prompt": "Hi"}),
        ),
    ] {
        let (status, body) = post(&s, path, body).await;
        assert_eq!(status, 200, "{path}: {body}");
    }
    // The rest of /api/ is Lantern's admin API: the token, and OpenAI's error shape.
    for path in ["/api/engine", "/api/settings", "/api/usage"] {
        let (status, body) = get(&s, path).await;
        assert_eq!(status, 401, "{path}: {body}");
        assert_eq!(body["error"]["code"], "admin_token_required", "{path}");
        let (status, _) = answer(plain(&s, reqwest::Method::GET, path).bearer_auth(&s.admin)).await;
        assert_eq!(status, 200, "{path}");
    }
}

#[tokio::test]
async fn with_api_keys_the_ollama_routes_need_one_and_say_so_in_ollamas_shape() {
    let s = start(&["--api-key", "sk-ollama"]);
    let (status, body) = post(&s, "/api/chat", chat("Hi", json!({}))).await;
    assert_eq!(status, 401, "{body}");
    assert_ollama_error(&body, "");
    let (status, body) = get(&s, "/api/tags").await;
    assert_eq!(status, 401, "{body}");
    let (status, body) = answer(
        plain(&s, reqwest::Method::POST, "/api/chat")
            .bearer_auth("sk-ollama")
            .json(&chat("Hi", json!({}))),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["done"], true);
}

#[tokio::test]
async fn bad_bodies_get_ollamas_error_shape_and_v1_keeps_openais() {
    let s = start(&[]);
    let send = |path: &str, content_type: Option<&str>, body: &str| {
        let r = plain(&s, reqwest::Method::POST, path).body(body.to_string());
        answer(match content_type {
            Some(t) => r.header("content-type", t),
            None => r,
        })
    };
    let good = chat("Hi", json!({})).to_string();
    let (status, body) = send("/api/chat", Some("application/json"), "{not json").await;
    assert_eq!(status, 400, "{body}");
    assert_ollama_error(&body, "Invalid request body");
    for content_type in [None, Some("text/plain")] {
        let (status, body) = send("/api/chat", content_type, &good).await;
        assert_eq!(status, 415, "{content_type:?}: {body}");
        assert_ollama_error(&body, "Content-Type: application/json");
    }
    let (status, body) = send("/api/generate", None, &good).await;
    assert_eq!(status, 415, "{body}");
    assert_ollama_error(&body, "application/json");

    let (status, body) = send(
        "/v1/chat/completions",
        Some("application/json"),
        "{not json",
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["type"], "invalid_request_error");
    assert!(body["error"]["message"].is_string(), "{body}");
    let (status, body) = send("/v1/chat/completions", None, &good).await;
    assert_eq!(status, 415, "{body}");
    assert_eq!(body["error"]["code"], "unsupported_media_type");
}

/// Every line of an NDJSON response, parsed; the content type checked.
async fn ndjson(s: &Server, path: &str, body: Value) -> Vec<Value> {
    let r = plain(s, reqwest::Method::POST, path)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/x-ndjson");
    let text = r.text().await.unwrap();
    assert!(text.ends_with('\n'), "{text:?}");
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
        .collect()
}

#[tokio::test]
async fn streams_are_ndjson_by_default_one_object_a_line_the_last_done() {
    let s = start(&[]);
    let options = json!({"temperature": 0, "num_predict": 8});
    for (path, body, field) in [
        (
            "/api/chat",
            json!({"model": "smollm2", "options": options,
                             "messages": [{"role": "user", "content": "Count to ten."}]}),
            "message",
        ),
        (
            "/api/generate",
            json!({"model": "smollm2", "options": options,
                                 "prompt": "Count to ten."}),
            "response",
        ),
    ] {
        let lines = ndjson(&s, path, body).await;
        let (last, pieces) = lines.split_last().unwrap();
        assert!(!pieces.is_empty(), "{path}");
        for p in pieces {
            assert_eq!(p["done"], false, "{path}: {p}");
            assert_eq!(p["model"], "smollm2");
            assert!(
                p.get(field).is_some() && p.get("eval_count").is_none(),
                "{path}: {p}"
            );
        }
        assert_eq!(last["done"], true, "{path}: {last}");
        assert_eq!(last["done_reason"], "length");
        assert_eq!(last["eval_count"], 8);
        assert!(last["total_duration"].as_u64().unwrap() > 0);
    }
}

#[tokio::test]
async fn a_request_without_a_prompt_loads_or_unloads_the_model() {
    let s = start(&[]);
    let loaded = |ps: &Value| {
        ps["models"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["name"] == "smollm2")
    };
    let (status, body) = post(
        &s,
        "/api/generate",
        json!({"model": "smollm2", "prompt": ""}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["done_reason"], "load");
    assert_eq!(body["done"], true);
    assert_eq!(body["response"], "");
    assert!(loaded(&get(&s, "/api/ps").await.1));

    let (status, body) = post(
        &s,
        "/api/generate",
        json!({"model": "smollm2:latest", "keep_alive": 0}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["done_reason"], "unload");
    assert!(!loaded(&get(&s, "/api/ps").await.1));

    let (status, body) = post(&s, "/api/chat", json!({"model": "smollm2", "messages": []})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["done_reason"], "load");
    assert_eq!(body["message"], json!({"role": "assistant", "content": ""}));
    assert!(loaded(&get(&s, "/api/ps").await.1));

    let (status, body) = post(&s, "/api/generate", json!({"model": "nope", "prompt": ""})).await;
    assert_eq!(status, 404, "{body}");
    assert_ollama_error(&body, "nope");
}

#[tokio::test]
async fn thinking_images_and_a_prompt_over_num_ctx_are_refused() {
    let s = start(&[]);
    for think in [json!(true), json!("high")] {
        let (status, body) = post(&s, "/api/chat", chat("Hi", json!({"think": think}))).await;
        assert_eq!(status, 400, "{body}");
        assert_ollama_error(&body, "does not support thinking");
    }
    let (status, body) = post(
        &s,
        "/api/generate",
        json!({"model": "smollm2", "prompt": "Hi", "think": true}),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_ollama_error(&body, "thinking");
    let (status, body) = post(&s, "/api/chat", chat("Hi", json!({"think": false}))).await;
    assert_eq!(status, 200, "{body}");

    let image = json!([{"role": "user", "content": "What is this?", "images": ["aGVsbG8="]}]);
    let (status, body) = post(&s, "/api/chat", chat("", json!({"messages": image}))).await;
    assert_eq!(status, 400, "{body}");
    assert_ollama_error(&body, "images");
    let (status, body) = post(
        &s,
        "/api/generate",
        json!({"model": "smollm2", "prompt": "What is this?", "images": ["aGVsbG8="]}),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_ollama_error(&body, "images");

    let long = "Tell me about the history of the Roman Empire in great detail, please.";
    let (status, body) = post(
        &s,
        "/api/chat",
        chat(long, json!({"options": {"num_ctx": 8}})),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_ollama_error(&body, "context length");
    // Streamed too: refused before the stream starts, with a status.
    let (status, body) = post(
        &s,
        "/api/chat",
        chat(long, json!({"stream": true, "options": {"num_ctx": 8}})),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = post(
        &s,
        "/api/chat",
        chat(long, json!({"options": {"num_ctx": 0}})),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_ollama_error(&body, "num_ctx");
    let (status, _) = post(
        &s,
        "/api/chat",
        chat(long, json!({"options": {"num_ctx": 2048}})),
    )
    .await;
    assert_eq!(status, 200);
}
