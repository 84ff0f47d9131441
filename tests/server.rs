//! The real server on a loopback port, driven over HTTP as any OpenAI client would.

mod common;

use std::process::Command;

use common::server::{assert_serves, chat, post, start, stream, wait_for_engine};
use futures_util::StreamExt;
use serde_json::{json, Value};

#[tokio::test]
async fn health_models_and_routes() {
    let s = start(&[]);
    let health: Value = reqwest::get(format!("{}/health", s.base))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "ok");
    let models: Value = reqwest::get(format!("{}/v1/models", s.base))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(models["object"], "list");
    // Every installed model is listed, chat and embedding (a request for one loads it).
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert!(
        ids.contains(&"smollm2") && ids.contains(&"gemma3"),
        "{ids:?}"
    );
    let minilm = &models["data"][ids.iter().position(|&i| i == "all-minilm").unwrap()];
    assert_eq!(minilm["meta"]["kind"], "embedding");
    let smol = &models["data"][ids.iter().position(|&i| i == "smollm2").unwrap()];
    assert_eq!(smol["owned_by"], "lantern");
    assert_eq!(smol["meta"]["loaded"], true);
    assert!(smol["created"].as_u64().unwrap() > 1_600_000_000);
    let one = reqwest::get(format!("{}/v1/models/smollm2", s.base))
        .await
        .unwrap();
    assert_eq!(one.status(), 200);
    let missing = reqwest::get(format!("{}/v1/models/gpt-9", s.base))
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    let body: Value = missing.json().await.unwrap();
    assert_eq!(body["error"]["code"], "model_not_found");
    let route = reqwest::get(format!("{}/v1/no-such-route", s.base))
        .await
        .unwrap();
    assert_eq!(route.status(), 404);
}

#[tokio::test]
async fn chat_completion_shapes_and_seed() {
    let s = start(&[]);
    let (status, r) = post(
        &s,
        "/v1/chat/completions",
        &chat("What is 2+2?", json!({"temperature": 0, "max_tokens": 16})),
    )
    .await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["object"], "chat.completion");
    assert!(r["id"].as_str().unwrap().starts_with("chatcmpl-"));
    let msg = &r["choices"][0]["message"];
    assert_eq!(msg["role"], "assistant");
    assert!(!msg["content"].as_str().unwrap().is_empty());
    let u = &r["usage"];
    assert_eq!(
        u["total_tokens"],
        u["prompt_tokens"].as_u64().unwrap() + u["completion_tokens"].as_u64().unwrap()
    );
    assert_eq!(u["prompt_tokens_details"]["cached_tokens"], 0);
    assert!(r["timings"]["ttft_ms"].as_f64().unwrap() > 0.0);

    // Same seed, same sampled answer; n = 2 gives two choices; stop cuts the text.
    let seeded = chat(
        "Tell me a story.",
        json!({"seed": 7, "temperature": 1.0, "max_tokens": 12}),
    );
    let (_, a) = post(&s, "/v1/chat/completions", &seeded).await;
    let (_, b) = post(&s, "/v1/chat/completions", &seeded).await;
    assert_eq!(a["choices"][0]["message"], b["choices"][0]["message"]);
    let (_, two) = post(
        &s,
        "/v1/chat/completions",
        &chat("Hi", json!({"n": 2, "max_tokens": 4, "seed": 1})),
    )
    .await;
    assert_eq!(two["choices"].as_array().unwrap().len(), 2);
    assert_eq!(two["choices"][1]["index"], 1);

    let (_, lp) = post(
        &s,
        "/v1/chat/completions",
        &chat(
            "Hi",
            json!({"max_tokens": 3, "logprobs": true, "top_logprobs": 2, "temperature": 0}),
        ),
    )
    .await;
    let content = lp["choices"][0]["logprobs"]["content"].as_array().unwrap();
    assert_eq!(content.len(), 3);
    assert_eq!(content[0]["top_logprobs"].as_array().unwrap().len(), 2);
    assert!(content[0]["logprob"].as_f64().unwrap() <= 0.0);
}

#[tokio::test]
async fn streaming_chunks_as_openai_sends_them() {
    let s = start(&[]);
    let body = chat(
        "Count to three.",
        json!({"stream": true, "max_tokens": 8, "temperature": 0, "stream_options": {"include_usage": true}}),
    );
    let data = stream(&s, "/v1/chat/completions", &body).await;
    assert_eq!(data.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let usage = chunks.last().unwrap();
    assert_eq!(usage["choices"].as_array().unwrap().len(), 0);
    assert_eq!(usage["usage"]["completion_tokens"], 8);
    let finish = &chunks[chunks.len() - 2];
    assert_eq!(finish["choices"][0]["finish_reason"], "length");
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    let (_, whole) = post(
        &s,
        "/v1/chat/completions",
        &chat(
            "Count to three.",
            json!({"max_tokens": 8, "temperature": 0}),
        ),
    )
    .await;
    assert_eq!(
        text,
        whole["choices"][0]["message"]["content"].as_str().unwrap()
    );

    // Without include_usage there is no usage chunk.
    let plain = stream(
        &s,
        "/v1/chat/completions",
        &chat("Hi", json!({"stream": true, "max_tokens": 2})),
    )
    .await;
    assert!(plain.iter().all(|d| !d.contains("\"usage\"")));
}

#[tokio::test]
async fn completions_with_logprobs() {
    let s = start(&[]);
    let body = json!({"model": "smollm2", "prompt": ["The capital of France is", "1, 2, 3,"], "max_tokens": 4, "temperature": 0, "logprobs": 2});
    let (status, r) = post(&s, "/v1/completions", &body).await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["object"], "text_completion");
    assert_eq!(r["choices"].as_array().unwrap().len(), 2);
    assert!(
        r["choices"][0]["text"].as_str().unwrap().contains("Paris"),
        "{r}"
    );
    assert_eq!(
        r["choices"][0]["logprobs"]["tokens"]
            .as_array()
            .unwrap()
            .len(),
        4
    );
    let data = stream(
        &s,
        "/v1/completions",
        &json!({"model": "smollm2", "prompt": "Hello", "max_tokens": 3, "stream": true}),
    )
    .await;
    assert_eq!(data.last().unwrap(), "[DONE]");
}

#[tokio::test]
async fn bad_requests_get_openai_errors() {
    let s = start(&["--body-limit", "2000"]);
    let cases = [
        (json!({"model": "smollm2", "messages": []}), 400, "messages"),
        (chat("x", json!({"temperature": 3})), 400, "temperature"),
        (chat("x", json!({"max_tokens": 0})), 400, "max_tokens"),
        (chat("x", json!({"n": 99})), 400, "n"),
        (chat("x", json!({"top_logprobs": 2})), 400, "top_logprobs"),
        (
            chat("x", json!({"logit_bias": {"999999": 1}})),
            400,
            "logit_bias",
        ),
        (
            chat("x", json!({"stop": ["a", "b", "c", "d", "e"]})),
            400,
            "stop",
        ),
        (
            json!({"model": "smollm2", "messages": [{"role": "robot", "content": "x"}]}),
            400,
            "messages",
        ),
        (
            json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}]}),
            404,
            "model",
        ),
    ];
    for (body, status, param) in cases {
        let (got, r) = post(&s, "/v1/chat/completions", &body).await;
        assert_eq!(got, status, "{body} -> {r}");
        assert_eq!(r["error"]["param"], param, "{r}");
        assert!(!r["error"]["message"].as_str().unwrap().is_empty());
    }
    let raw = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", s.base))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status(), 400);
    let r: Value = raw.json().await.unwrap();
    assert_eq!(r["error"]["type"], "invalid_request_error");
    let (got, r) = post(
        &s,
        "/v1/chat/completions",
        &chat(&"long ".repeat(1000), json!({})),
    )
    .await;
    assert_eq!(
        (got, r["error"]["code"].as_str()),
        (413, Some("payload_too_large"))
    );
}

#[tokio::test]
async fn a_dropped_stream_cancels_its_generation() {
    let s = start(&[]);
    let body = chat(
        "Write a very long essay about the sea.",
        json!({"stream": true, "max_tokens": 4000, "temperature": 0}),
    );
    let response = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", s.base))
        .json(&body)
        .send()
        .await
        .unwrap();
    let mut bytes = response.bytes_stream();
    bytes.next().await.unwrap().unwrap();
    wait_for_engine(&s, "smollm2", "the generation runs", |e| {
        let e = e.unwrap();
        e["running"] == 1 && e["kv_tokens"].as_u64().unwrap() > 0
    })
    .await;
    drop(bytes);
    // The engine reports the cancellation and the sequence's KV cache is freed.
    wait_for_engine(&s, "smollm2", "the generation was not cancelled", |e| {
        let e = e.unwrap();
        e["cancelled"] == 1 && e["running"] == 0 && e["kv_tokens"] == 0 && e["kv_bytes"] == 0
    })
    .await;
    assert_serves(&s).await;
}

#[tokio::test]
async fn slow_requests_time_out_and_free_the_engine() {
    let s = start(&["--request-timeout", "1"]);
    let long = chat(
        "Write a very long essay about the sea.",
        json!({"max_tokens": 4000, "temperature": 0}),
    );
    let (status, r) = post(&s, "/v1/chat/completions", &long).await;
    assert_eq!(status, 504, "{r}");
    assert_eq!(r["error"]["code"], "timeout");
    let mut streamed = long.clone();
    streamed["stream"] = json!(true);
    let data = stream(&s, "/v1/chat/completions", &streamed).await;
    assert!(
        data.iter().any(|d| d.contains("\"timeout\"")),
        "{:?}",
        data.last()
    );
    assert_eq!(data.last().unwrap(), "[DONE]");
    assert_serves(&s).await;
}

#[tokio::test]
async fn sigterm_finishes_in_flight_streams_then_exits() {
    let mut s = start(&[]);
    let body = chat(
        "Count to twenty.",
        json!({"stream": true, "max_tokens": 48, "temperature": 0}),
    );
    let response = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", s.base))
        .json(&body)
        .send()
        .await
        .unwrap();
    let pid = s.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let text = response.text().await.unwrap();
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
    // The stream ran to its own end (the answer or max_tokens), not cut by the shutdown.
    assert!(
        text.contains("\"finish_reason\":\"length\"")
            || text.contains("\"finish_reason\":\"stop\""),
        "{text}"
    );
    let status = s.child.wait().unwrap();
    assert!(status.success(), "{status}");
    let refused = reqwest::get(format!("{}/health", s.base)).await;
    assert!(refused.is_err(), "the server stopped listening");
}

#[tokio::test]
async fn a_corpus_of_malformed_bodies_never_breaks_the_server() {
    let s = start(&[]);
    let client = reqwest::Client::new();
    let raw_bodies: Vec<String> = vec![
        "".into(),
        "null".into(),
        "[]".into(),
        "42".into(),
        "\"text\"".into(),
        "{".into(),
        "{\"model\": }".into(),
        "{\"model\": \"smollm2\", \"messages\": [{\"role\": \"user\", \"content\": \"\\ud800\"}]}".into(),
        String::from_utf8_lossy(&[0xff, 0xfe, 0x00, 0x7b]).into_owned(),
        "{\"model\": \"smollm2\", \"messages\": \"hello\"}".into(),
        "{\"model\": \"smollm2\", \"messages\": [null]}".into(),
        "{\"model\": \"smollm2\", \"messages\": [{\"role\": 5, \"content\": \"x\"}]}".into(),
        "{\"model\": \"smollm2\", \"messages\": [{\"role\": \"user\", \"content\": [{\"type\": \"image_url\"}]}]}".into(),
        "{\"model\": \"smollm2\", \"messages\": [{\"role\": \"user\", \"content\": {\"a\": 1}}]}".into(),
        "{\"model\": 7, \"messages\": []}".into(),
        "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}]}".into(),
    ];
    let field_cases = [
        ("max_tokens", json!(-1)),
        ("max_tokens", json!(1e30)),
        ("max_tokens", json!("ten")),
        ("max_completion_tokens", json!(100000000)),
        ("temperature", json!(-0.5)),
        ("temperature", json!(null)),
        ("top_p", json!(1.5)),
        ("top_k", json!(-3)),
        ("min_p", json!(2)),
        ("frequency_penalty", json!(9)),
        ("presence_penalty", json!("a lot")),
        ("repetition_penalty", json!(0)),
        ("logit_bias", json!({"abc": 1})),
        ("logit_bias", json!({"1": 500})),
        ("logit_bias", json!([1, 2])),
        ("seed", json!("lucky")),
        ("stop", json!(5)),
        ("stop", json!([1, 2])),
        ("n", json!(0)),
        ("n", json!(1.5)),
        ("logprobs", json!("yes")),
        ("top_logprobs", json!(50)),
        ("stream", json!("true")),
        ("stream_options", json!(3)),
        (
            "messages",
            json!([{"role": "user", "content": "x ".repeat(10_000)}]),
        ),
    ];
    let mut bodies = raw_bodies;
    for (field, value) in field_cases {
        let mut body = chat("Hi", json!({"logprobs": true, "max_tokens": 2}));
        body[field] = value;
        if field != "logprobs" && field != "top_logprobs" {
            body.as_object_mut().unwrap().remove("logprobs");
        }
        bodies.push(body.to_string());
    }
    for (i, body) in bodies.iter().enumerate() {
        for path in ["/v1/chat/completions", "/v1/completions"] {
            let r = client
                .post(format!("{}{path}", s.base))
                .header("content-type", "application/json")
                .body(body.clone())
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            let json: Value = r.json().await.unwrap_or(Value::Null);
            let ok = status == 200 && path == "/v1/chat/completions" && i >= 16;
            assert!(
                ok || matches!(status, 400 | 404 | 413),
                "{path} body #{i} {body:.200} -> {status} {json}"
            );
            if status != 200 {
                assert!(json["error"]["message"].is_string(), "{path} #{i}: {json}");
                assert!(json["error"]["type"].is_string(), "{path} #{i}: {json}");
            }
        }
    }
    let health = reqwest::get(format!("{}/health", s.base)).await.unwrap();
    assert_eq!(health.status(), 200);
}
