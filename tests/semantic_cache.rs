//! The semantic response cache against the real server: a paraphrase above the threshold is
//! answered from an earlier answer (flagged, with its similarity), an unrelated question is not;
//! another model, another parameter set or another conversation never gets the answer; the
//! cache survives a restart; a session can turn it on for all its requests.

mod common;

use common::server::{engine_of, get_json, start, Server};
use serde_json::{json, Value};

const QUESTION: &str = "What is the capital of France?";
/// MiniLM puts this at about 0.957 from QUESTION.
const PARAPHRASE: &str = "What's the capital city of France?";
/// About 0.66 from QUESTION: close in words, another question.
const NEIGHBOUR: &str = "What is the capital of Germany?";

async fn completed(s: &Server, model: &str) -> u64 {
    engine_of(s, model)
        .await
        .map_or(0, |e| e["completed"].as_u64().unwrap())
}

/// A sampled chat (temperature 0.8, no seed: the exact cache never answers it) asking the
/// semantic cache at 0.95.
fn ask(question: &str, extra: Value) -> Value {
    let mut body = json!({
        "model": "smollm2",
        "messages": [{"role": "user", "content": question}],
        "max_tokens": 12,
        "temperature": 0.8,
        "cache": {"semantic": 0.95},
    });
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    body
}

async fn post(s: &Server, path: &str, body: &Value) -> (u16, Option<String>, Value) {
    let r = reqwest::Client::new()
        .post(format!("{}{path}", s.base))
        .json(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let header = r
        .headers()
        .get("x-lantern-response-cache")
        .map(|v| v.to_str().unwrap().to_string());
    (status, header, r.json().await.unwrap())
}

fn content(r: &Value) -> &str {
    r["choices"][0]["message"]["content"].as_str().unwrap()
}

async fn semantic_stats(s: &Server) -> Value {
    get_json(s, "/api/cache").await["semantic"].clone()
}

#[tokio::test]
async fn a_paraphrase_is_answered_from_the_cache_and_an_unrelated_question_is_not() {
    let s = start(&[]);
    let (status, header, first) = post(&s, "/v1/chat/completions", &ask(QUESTION, json!({}))).await;
    assert_eq!(status, 200, "{first}");
    assert!(header.is_none() && first["usage"].get("response_cached").is_none());
    let runs = completed(&s, "smollm2").await;

    let (_, header, again) = post(&s, "/v1/chat/completions", &ask(PARAPHRASE, json!({}))).await;
    assert_eq!(again["usage"]["response_cached"], "semantic", "{again}");
    let similarity = again["usage"]["semantic_similarity"].as_f64().unwrap();
    assert!((0.95..1.0).contains(&similarity), "{similarity}");
    assert!(header.unwrap().starts_with("semantic; similarity=0.9"));
    assert_eq!(content(&again), content(&first));
    assert_eq!(
        again["usage"]["completion_tokens"],
        first["usage"]["completion_tokens"]
    );
    assert_ne!(
        again["usage"]["prompt_tokens"], first["usage"]["prompt_tokens"],
        "the prompt counted is this request's"
    );
    assert_eq!(
        completed(&s, "smollm2").await,
        runs,
        "the engine did not run"
    );

    // Streamed, the hit is a normal stream.
    let streamed = ask(
        PARAPHRASE,
        json!({"stream": true, "stream_options": {"include_usage": true}}),
    );
    let data = common::server::stream(&s, "/v1/chat/completions", &streamed).await;
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, content(&first));
    assert_eq!(
        chunks.last().unwrap()["usage"]["response_cached"],
        "semantic"
    );

    // Close in words, another question: a miss, and the engine answers.
    let (_, header, other) = post(&s, "/v1/chat/completions", &ask(NEIGHBOUR, json!({}))).await;
    assert!(header.is_none() && other["usage"].get("response_cached").is_none());
    assert_eq!(completed(&s, "smollm2").await, runs + 1);

    // A request that does not ask never reads it.
    let mut plain = ask(PARAPHRASE, json!({}));
    plain.as_object_mut().unwrap().remove("cache");
    let (_, header, _) = post(&s, "/v1/chat/completions", &plain).await;
    assert!(header.is_none());

    let stats = semantic_stats(&s).await;
    assert_eq!(stats["hits"], 2, "{stats}");
    assert!(stats["hit_rate"].as_f64().unwrap() > 0.0);
    let histogram: u64 = stats["similarity"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["count"].as_u64().unwrap())
        .sum();
    assert!(histogram >= 3, "{stats}");
    let metrics = s.get("/metrics").await.text().await.unwrap();
    assert!(metrics.contains("lantern_semantic_cache_similarity_bucket{le=\"0.98\"}"));
    assert!(metrics.contains("lantern_cache_hits_total{cache=\"semantic\",level=\"index\"} 2"));

    // Out of range is the request's error, in OpenAI's shape.
    let (status, _, bad) = post(
        &s,
        "/v1/chat/completions",
        &ask(QUESTION, json!({"cache": {"semantic": 1.5}})),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(bad["error"]["param"], "cache.semantic");
}

#[tokio::test]
async fn another_model_parameter_set_or_conversation_never_gets_the_answer() {
    let s = start(&[]);
    let (_, _, first) = post(&s, "/v1/chat/completions", &ask(QUESTION, json!({}))).await;
    assert!(first["usage"].get("response_cached").is_none());
    let others = [
        ("max_tokens", json!({"max_tokens": 13})),
        ("temperature", json!({"temperature": 0.7})),
        ("stop", json!({"stop": ["\n"]})),
        (
            "a system prompt",
            json!({"messages": [
                {"role": "system", "content": "Answer in French."},
                {"role": "user", "content": QUESTION},
            ]}),
        ),
        (
            "an earlier turn",
            json!({"messages": [
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello!"},
                {"role": "user", "content": QUESTION},
            ]}),
        ),
        ("another model", json!({"model": "gemma3"})),
    ];
    for (what, extra) in others {
        let (status, header, r) = post(&s, "/v1/chat/completions", &ask(QUESTION, extra)).await;
        assert_eq!(status, 200, "{what}: {r}");
        assert!(header.is_none(), "{what} got the kept answer: {r}");
        assert!(r["usage"].get("response_cached").is_none(), "{what}");
    }
    assert!(completed(&s, "gemma3").await >= 1);
    // The same settings again: the kept answer.
    let (_, header, _) = post(&s, "/v1/chat/completions", &ask(QUESTION, json!({}))).await;
    assert!(header.unwrap().starts_with("semantic"));
}

#[tokio::test]
async fn the_cache_survives_a_restart_and_a_session_can_turn_it_on() {
    let home = common::server::data_dir();
    let dir = home.path().to_str().unwrap().to_string();
    let s = start(&["--home", &dir]);
    let (_, _, first) = post(&s, "/v1/chat/completions", &ask(QUESTION, json!({}))).await;
    // The index is saved every two seconds while it changes.
    let index = home.path().join("semantic-cache.usearch");
    for _ in 0..50 {
        if index.exists() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert!(index.exists());
    drop(s);

    let s = start(&["--home", &dir]);
    assert_eq!(semantic_stats(&s).await["entries"], 1);
    let (_, header, again) = post(&s, "/v1/chat/completions", &ask(PARAPHRASE, json!({}))).await;
    assert!(header.unwrap().starts_with("semantic"), "{again}");
    assert_eq!(content(&again), content(&first));

    // A session's default (the `user` a body names is session `user-NAME`): its requests
    // need not ask, other sessions are not touched.
    let put = s
        .client()
        .put(format!("{}/api/sessions/user-team-a/cache", s.base))
        .json(&json!({"semantic": 0.9}))
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 200);
    let mut plain = ask(PARAPHRASE, json!({"user": "team-a"}));
    plain.as_object_mut().unwrap().remove("cache");
    let (_, header, _) = post(&s, "/v1/chat/completions", &plain).await;
    assert!(header.unwrap().starts_with("semantic"));
    plain["user"] = json!("team-b");
    let (_, header, _) = post(&s, "/v1/chat/completions", &plain).await;
    assert!(header.is_none());
    let bad = s
        .client()
        .put(format!("{}/api/sessions/user-team-a/cache", s.base))
        .json(&json!({"semantic": 0}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);

    // Ollama's API asks with the same field; the answer says so in the header.
    let body = json!({
        "model": "smollm2",
        "messages": [{"role": "user", "content": PARAPHRASE}],
        "options": {"num_predict": 12, "temperature": 0.8},
        "stream": false,
        "cache": {"semantic": 0.95},
    });
    let (_, _, seeded) = post(&s, "/api/chat", &body).await;
    assert!(seeded["message"]["content"].is_string());
    let mut again = body.clone();
    again["messages"][0]["content"] = json!(QUESTION);
    let (_, header, _) = post(&s, "/api/chat", &again).await;
    assert!(header.unwrap().starts_with("semantic"));

    // Cleared, nothing answers from it.
    let cleared = s
        .client()
        .delete(format!("{}/api/cache/semantic", s.base))
        .send()
        .await
        .unwrap();
    assert_eq!(cleared.status(), 200);
    let (_, header, _) = post(&s, "/v1/chat/completions", &ask(PARAPHRASE, json!({}))).await;
    assert!(header.is_none());
}
