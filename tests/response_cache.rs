//! The response cache against the real server: deterministic requests come back from it, as a
//! response or as a stream, counted and flagged; sampled requests without a seed never touch it;
//! `Cache-Control` and the TTL are honoured.

mod common;

use common::server::{chat, delete_json, engine_of, get_json, post, start, stream, Server};
use serde_json::{json, Value};

async fn completed(s: &Server) -> u64 {
    engine_of(s, "smollm2").await.unwrap()["completed"]
        .as_u64()
        .unwrap()
}

async fn responses_stats(s: &Server) -> Value {
    get_json(s, "/api/cache").await["responses"].clone()
}

async fn post_with(s: &Server, body: &Value, cache_control: &str) -> Value {
    reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", s.base))
        .header("cache-control", cache_control)
        .json(body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

fn content(r: &Value) -> &str {
    r["choices"][0]["message"]["content"].as_str().unwrap()
}

#[tokio::test]
async fn greedy_repeats_come_from_the_cache_as_responses_and_streams() {
    let s = start(&[]);
    let body = chat(
        "Name three colours.",
        json!({"temperature": 0, "max_tokens": 12}),
    );
    let (_, first) = post(&s, "/v1/chat/completions", &body).await;
    let runs = completed(&s).await;
    let (status, again) = post(&s, "/v1/chat/completions", &body).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(content(&again), content(&first));
    assert_eq!(again["usage"]["response_cached"], true, "{again}");
    assert!(first["usage"].get("response_cached").is_none());
    for f in ["prompt_tokens", "completion_tokens", "total_tokens"] {
        assert_eq!(again["usage"][f], first["usage"][f], "{f}: still counted");
    }
    assert_ne!(again["id"], first["id"]);
    assert_eq!(completed(&s).await, runs, "the engine did not run again");

    // The same request streamed: a normal stream, from the cache.
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    streamed["stream_options"] = json!({"include_usage": true});
    let data = stream(&s, "/v1/chat/completions", &streamed).await;
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, content(&first));
    let usage = &chunks.last().unwrap()["usage"];
    assert_eq!(usage["response_cached"], true);
    assert_eq!(
        usage["completion_tokens"],
        first["usage"]["completion_tokens"]
    );
    assert_eq!(completed(&s).await, runs);

    // Anything that changes the output is a different entry.
    let mut longer = body.clone();
    longer["max_tokens"] = json!(13);
    let (_, r) = post(&s, "/v1/chat/completions", &longer).await;
    assert!(r["usage"].get("response_cached").is_none());

    let stats = responses_stats(&s).await;
    assert_eq!(
        (stats["hits"].as_u64(), stats["entries"].as_u64()),
        (Some(2), Some(2)),
        "{stats}"
    );
    let cleared = delete_json(&s, "/api/cache/responses").await;
    assert_eq!(cleared["deleted"], 2);
    let (_, r) = post(&s, "/v1/chat/completions", &body).await;
    assert!(r["usage"].get("response_cached").is_none());
}

#[tokio::test]
async fn only_deterministic_requests_use_it_and_cache_control_is_honoured() {
    let s = start(&[]);
    // Sampled without a seed: never read, never stored.
    let sampled = chat(
        "Tell me a word.",
        json!({"temperature": 0.9, "max_tokens": 6}),
    );
    for _ in 0..2 {
        let (_, r) = post(&s, "/v1/chat/completions", &sampled).await;
        assert!(r["usage"].get("response_cached").is_none(), "{r}");
    }
    let stats = responses_stats(&s).await;
    assert_eq!(
        (stats["hits"].as_u64(), stats["misses"].as_u64()),
        (Some(0), Some(0))
    );
    assert_eq!(stats["entries"], 0);

    // Sampled with a seed is deterministic: cached.
    let seeded = chat(
        "Tell me a word.",
        json!({"temperature": 0.9, "seed": 7, "max_tokens": 6}),
    );
    let (_, a) = post(&s, "/v1/chat/completions", &seeded).await;
    let (_, b) = post(&s, "/v1/chat/completions", &seeded).await;
    assert_eq!(content(&a), content(&b));
    assert_eq!(b["usage"]["response_cached"], true);

    // no-cache: computed afresh (and kept); no-store: computed, not kept.
    let greedy = chat("Say yes.", json!({"temperature": 0, "max_tokens": 4}));
    let runs = completed(&s).await;
    let fresh = post_with(&s, &greedy, "no-cache").await;
    assert!(fresh["usage"].get("response_cached").is_none(), "{fresh}");
    let (_, kept) = post(&s, "/v1/chat/completions", &greedy).await;
    assert_eq!(
        kept["usage"]["response_cached"], true,
        "no-cache still stores"
    );
    let forced = post_with(&s, &greedy, "no-cache").await;
    assert!(forced["usage"].get("response_cached").is_none());
    assert_eq!(completed(&s).await, runs + 2);
    let other = chat("Say no.", json!({"temperature": 0, "max_tokens": 4}));
    post_with(&s, &other, "no-store").await;
    let (_, r) = post(&s, "/v1/chat/completions", &other).await;
    assert!(
        r["usage"].get("response_cached").is_none(),
        "no-store kept nothing"
    );
    assert_eq!(responses_stats(&s).await["bypassed"], 3);

    // The completions API is cached as well.
    let body =
        json!({"model": "smollm2", "prompt": "One, two,", "max_tokens": 4, "temperature": 0});
    let (_, a) = post(&s, "/v1/completions", &body).await;
    let (_, b) = post(&s, "/v1/completions", &body).await;
    assert_eq!(a["choices"][0]["text"], b["choices"][0]["text"]);
    assert_eq!(b["usage"]["response_cached"], true);
    assert_eq!(b["object"], "text_completion");
}

#[tokio::test]
async fn entries_expire_after_the_ttl() {
    let s = start(&["--response-cache-ttl", "1"]);
    let body = chat(
        "Count to three.",
        json!({"temperature": 0, "max_tokens": 5}),
    );
    post(&s, "/v1/chat/completions", &body).await;
    let (_, hit) = post(&s, "/v1/chat/completions", &body).await;
    assert_eq!(hit["usage"]["response_cached"], true);
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    let (_, late) = post(&s, "/v1/chat/completions", &body).await;
    assert!(late["usage"].get("response_cached").is_none(), "{late}");
    assert_eq!(responses_stats(&s).await["expired"], 1);
}
