//! Continuous batching, prefix cache, queue limits and keep-alive, against the real server.

mod common;

use common::server::{chat, engine, engine_of, post, start, wait_for_engine, Server};
use futures_util::future::join_all;
use serde_json::{json, Value};

const TOPICS: [&str; 16] = [
    "the sea",
    "mountains",
    "a robot",
    "bread",
    "the moon",
    "a library",
    "trains",
    "winter",
    "a garden",
    "music",
    "a lighthouse",
    "bees",
    "a desert",
    "rain",
    "a clock",
    "friendship",
];

fn story(topic: &str, max_tokens: u32) -> Value {
    chat(
        &format!("Write a short story about {topic}."),
        json!({"temperature": 0, "max_tokens": max_tokens}),
    )
}

/// Stream one request; returns its text and the usage chunk.
async fn streamed(s: &Server, mut body: Value) -> (String, Value) {
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let data = common::server::stream(s, "/v1/chat/completions", &body).await;
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{data:?}");
    let mut text = String::new();
    let mut usage = Value::Null;
    for d in &data[..data.len() - 1] {
        let chunk: Value = serde_json::from_str(d).unwrap();
        assert!(chunk.get("error").is_none(), "{chunk}");
        if let Some(content) = chunk["choices"][0]["delta"]["content"].as_str() {
            text.push_str(content);
        }
        if !chunk["usage"].is_null() {
            usage = chunk["usage"].clone();
        }
    }
    (text, usage)
}

#[tokio::test]
async fn sixteen_concurrent_greedy_streams_equal_the_same_requests_run_alone() {
    // Default settings: the batched run also reuses the alone runs' prompts from the prefix
    // cache and splits prompts across steps; a token's logits depend on none of that. Only the
    // response cache is off: it would answer the repeats without running the engine at all.
    let s = start(&["--response-cache-mib", "0"]);
    // Alone, one after another.
    let mut alone = Vec::new();
    for topic in TOPICS {
        let (status, r) = post(&s, "/v1/chat/completions", &story(topic, 24)).await;
        assert_eq!(status, 200, "{r}");
        alone.push(r);
    }
    // All sixteen at once, streamed.
    let together = join_all(TOPICS.iter().map(|t| streamed(&s, story(t, 24)))).await;
    for ((topic, one), (text, usage)) in TOPICS.iter().zip(&alone).zip(&together) {
        assert_eq!(
            one["choices"][0]["message"]["content"].as_str().unwrap(),
            text,
            "{topic}: batched output differs from the output alone"
        );
        for field in ["prompt_tokens", "completion_tokens", "total_tokens"] {
            assert_eq!(one["usage"][field], usage[field], "{topic}: {field}");
        }
        assert!(usage["completion_tokens"].as_u64().unwrap() > 0);
    }
    let e = engine_of(&s, "smollm2").await.unwrap();
    assert_eq!(e["completed"], 32, "{e}");
    assert_eq!(
        (e["running"].clone(), e["waiting"].clone()),
        (json!(0), json!(0))
    );
    assert_eq!(e["kv_tokens"], 0, "finished sequences hold no KV: {e}");
}

/// The first token's five best alternatives and their log-probabilities.
fn top5(r: &Value) -> Vec<(String, f64)> {
    r["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["token"].as_str().unwrap().to_string(),
                t["logprob"].as_f64().unwrap(),
            )
        })
        .collect()
}

#[tokio::test]
async fn a_repeated_system_prompt_is_served_from_the_prefix_cache() {
    let system: String = (1..=60)
        .map(|i| format!("Rule {i}: answer politely and briefly. "))
        .collect();
    let ask = |question: &str, extra: Value| {
        let mut body = json!({
            "model": "smollm2",
            "messages": [
                {"role": "system", "content": system},
                {"role": "user", "content": question},
            ],
            "temperature": 0,
            "max_tokens": 1,
            "logprobs": true,
            "top_logprobs": 5,
        });
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        body
    };
    let s = start(&[]);
    let (_, first) = post(
        &s,
        "/v1/chat/completions",
        &ask("What is the capital of France?", json!({})),
    )
    .await;
    assert_eq!(
        first["usage"]["prompt_tokens_details"]["cached_tokens"], 0,
        "{first}"
    );
    let question = "Name a colour of the rainbow.";
    let (status, cached) = post(&s, "/v1/chat/completions", &ask(question, json!({}))).await;
    assert_eq!(status, 200, "{cached}");
    let prompt = cached["usage"]["prompt_tokens"].as_u64().unwrap();
    let hit = cached["usage"]["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .unwrap();
    assert!(
        hit >= 600 && hit < prompt,
        "cached {hit} of {prompt}: {cached}"
    );
    assert_eq!(cached["timings"]["cached_n"], hit);
    // `cache_prompt: false` computes it all: the reused KV gives the same log-probabilities.
    let (_, computed) = post(
        &s,
        "/v1/chat/completions",
        &ask(question, json!({"cache_prompt": false})),
    )
    .await;
    assert_eq!(
        computed["usage"]["prompt_tokens_details"]["cached_tokens"],
        0
    );
    assert_eq!(top5(&cached), top5(&computed));
    let status = engine_of(&s, "smollm2").await.unwrap();
    let p = &status["prefix_cache"];
    assert!(
        p["hits"].as_u64().unwrap() >= 1 && p["hit_rate"].as_f64().unwrap() > 0.0,
        "{p}"
    );
    assert!(p["bytes"].as_u64().unwrap() > 0 && p["bytes"].as_u64() <= p["max_bytes"].as_u64());
}

#[tokio::test]
async fn a_full_queue_answers_429_with_retry_after() {
    let s = start(&["--max-seqs", "1", "--max-waiting", "1"]);
    let long = story("the history of the world, in great detail", 2000);
    let client = reqwest::Client::new();
    let url = format!("{}/v1/chat/completions", s.base);
    let mut body = long.clone();
    body["stream"] = json!(true);
    // One running, one waiting: both accepted (their streams stay open).
    let running = client.post(&url).json(&body).send().await.unwrap();
    assert_eq!(running.status(), 200);
    let waiting = client.post(&url).json(&body).send().await.unwrap();
    assert_eq!(waiting.status(), 200);
    let refused = client.post(&url).json(&long).send().await.unwrap();
    assert_eq!(refused.status(), 429);
    assert!(refused.headers().get("retry-after").is_some());
    let err: Value = refused.json().await.unwrap();
    assert_eq!(err["error"]["code"], "queue_full", "{err}");
    // Closing both streams cancels them and frees the places.
    drop((running, waiting));
    wait_for_engine(&s, "smollm2", "cancelled requests left the queue", |e| {
        let e = e.unwrap();
        e["running"] == 0 && e["waiting"] == 0 && e["cancelled"] == 2
    })
    .await;
    let (status, r) = post(&s, "/v1/chat/completions", &story("tea", 4)).await;
    assert_eq!(status, 200, "{r}");
}

#[tokio::test]
async fn models_load_on_demand_unload_after_keep_alive_and_come_back() {
    let s = start(&[]);
    assert!(
        engine_of(&s, "gemma3").await.is_none(),
        "only the default is loaded"
    );
    let ask = |keep_alive: Value| {
        json!({"model": "gemma3", "prompt": "The capital of France is", "max_tokens": 4,
               "temperature": 0, "keep_alive": keep_alive})
    };
    let (status, first) = post(&s, "/v1/completions", &ask(json!("2s"))).await;
    assert_eq!(status, 200, "{first}");
    let e = engine(&s).await;
    let gemma = e["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == "gemma3")
        .unwrap();
    assert_eq!(gemma["keep_alive_seconds"], 2.0, "{gemma}");
    assert!(gemma["unload_at"].as_f64().is_some(), "{gemma}");
    assert!(gemma["load_ms"].as_f64().unwrap() > 0.0 && gemma["warmup_ms"].as_f64().unwrap() > 0.0);
    wait_for_engine(&s, "gemma3", "gemma3 unloads after its keep-alive", |e| {
        e.is_none()
    })
    .await;
    // The default model is in the warm set: it stays.
    assert!(engine_of(&s, "smollm2").await.is_some());
    // Back on demand, same answer; keep_alive 0 unloads right after the request.
    let (status, again) = post(&s, "/v1/completions", &ask(json!(0))).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(first["choices"][0]["text"], again["choices"][0]["text"]);
    wait_for_engine(&s, "gemma3", "keep_alive 0 unloads", |e| e.is_none()).await;
    let (status, bad) = post(&s, "/v1/completions", &ask(json!("soon"))).await;
    assert_eq!(
        (status, bad["error"]["param"].clone()),
        (400, json!("keep_alive"))
    );
}

#[tokio::test]
async fn the_server_keep_alive_override_wins_and_max_loaded_unloads_the_least_recent() {
    // The same request comes back after reloads: the response cache must not answer it.
    let s = start(&[
        "--keep-alive-override",
        "-1",
        "--max-loaded",
        "1",
        "--response-cache-mib",
        "0",
    ]);
    let (status, r) = post(
        &s,
        "/v1/completions",
        &json!({"model": "gemma3", "prompt": "Hello", "max_tokens": 2, "keep_alive": 0}),
    )
    .await;
    assert_eq!(status, 200, "{r}");
    let e = engine(&s).await;
    let ids: Vec<&str> = e["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    // One model at most: smollm2 made room for gemma3, which stays despite keep_alive 0.
    assert_eq!(ids, vec!["gemma3"], "{e}");
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    assert!(engine_of(&s, "gemma3").await.is_some());
    // smollm2 comes back on demand.
    let (status, r) = post(&s, "/v1/chat/completions", &story("tea", 4)).await;
    assert_eq!(status, 200, "{r}");
}

#[test]
fn a_load_that_would_not_fit_in_memory_is_refused_with_a_clear_error() {
    let home = common::model_path("smollm2");
    let home = home.parent().unwrap().parent().unwrap().parent().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_lantern"))
        .args([
            "serve",
            "smollm2",
            "--port",
            "0",
            "--reserve-memory-mib",
            "100000000",
        ])
        .env("LANTERN_HOME", home)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not enough free memory to load `smollm2`"),
        "{err}"
    );
}
