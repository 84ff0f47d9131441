//! The request log against the real server: what is recorded adds up to what clients were told,
//! per session, and survives the server being killed.

mod common;

use common::server::{chat, get_json, start, Server};
use serde_json::{json, Value};

async fn get(s: &Server, path: &str) -> (u16, String) {
    let r = reqwest::get(format!("{}{path}", s.base)).await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// Poll until the monitor has written `n` rows (bounded: only guards against a hang).
async fn written(s: &Server, n: u64) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let m = get_json(s, "/api/sessions").await;
        if m["monitor"]["written"].as_u64() == Some(n) {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "{m}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// A request in `session`, streamed or not; returns the usage the client was told.
async fn ask(s: &Server, session: &str, i: usize, stream: bool) -> Value {
    let mut body = chat(
        &format!("Write one line about the number {i}."),
        json!({"temperature": 0.7, "seed": i, "max_tokens": 8 + i % 5}),
    );
    if stream {
        body["stream"] = json!(true);
        body["stream_options"] = json!({"include_usage": true});
    }
    let r = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", s.base))
        .header("x-session-id", session)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    if !stream {
        return serde_json::from_str::<Value>(&text).unwrap()["usage"].clone();
    }
    text.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str::<Value>(d).unwrap())
        .find(|c| !c["usage"].is_null())
        .unwrap()["usage"]
        .clone()
}

#[tokio::test]
async fn recorded_totals_equal_what_clients_were_told() {
    let s = start(&[]);
    let jobs = (0..20).map(|i| {
        let session = if i % 2 == 0 { "alpha" } else { "beta" };
        let s = &s;
        async move { (session, ask(s, session, i, i < 16).await) }
    });
    let told = futures_util::future::join_all(jobs).await;
    written(&s, 20).await;
    let sessions = get_json(&s, "/api/sessions?window=1h").await;
    for name in ["alpha", "beta"] {
        let mine: Vec<&Value> = told
            .iter()
            .filter(|(n, _)| *n == name)
            .map(|(_, u)| u)
            .collect();
        let sum = |k: &str| mine.iter().map(|u| u[k].as_u64().unwrap()).sum::<u64>();
        let entry = sessions["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["id"] == name)
            .unwrap_or_else(|| panic!("{sessions}"));
        let summary = &entry["summary"];
        assert_eq!(summary["requests"], 10, "{summary}");
        assert_eq!(summary["prompt_tokens"], sum("prompt_tokens"), "{name}");
        assert_eq!(
            summary["completion_tokens"],
            sum("completion_tokens"),
            "{name}"
        );
        assert!(summary["ttft_ms"]["p95"].as_f64().unwrap() > 0.0);
        assert!(
            summary["latency_ms"]["p99"].as_f64().unwrap()
                >= summary["latency_ms"]["p50"].as_f64().unwrap()
        );
    }

    let detail = get_json(&s, "/api/sessions/alpha?per_page=3&page=2").await;
    assert_eq!(
        (
            detail["total"].as_u64(),
            detail["requests"].as_array().unwrap().len()
        ),
        (Some(10), 3)
    );
    assert_eq!(detail["requests"][0]["session"], "alpha");
    let (status, _) = get(&s, "/api/sessions/nobody").await;
    assert_eq!(status, 404);

    // Embeddings are recorded too, under their session.
    let r = reqwest::Client::new()
        .post(format!("{}/v1/embeddings", s.base))
        .header("x-session-id", "alpha")
        .json(&json!({"model": "all-minilm", "input": ["one", "two"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    written(&s, 21).await;
    let by_model = get_json(&s, "/api/usage?group_by=model").await;
    assert_eq!(by_model["groups"][0]["key"], "all-minilm");
    assert_eq!(by_model["groups"][0]["summary"]["prompt_tokens"], 6);
    assert_eq!(by_model["groups"][1]["key"], "smollm2");
    assert_eq!(by_model["groups"][1]["summary"]["requests"], 20);
    let (status, csv) = get(&s, "/api/usage?group_by=session&format=csv").await;
    assert_eq!(status, 200);
    let lines: Vec<&str> = csv.lines().collect();
    assert!(lines[0].starts_with("key,requests,errors"), "{csv}");
    assert_eq!(lines.len(), 3, "{csv}");
    assert!(lines[1].starts_with("alpha,11,0,0,"), "{csv}");
    for bad in [
        "/api/sessions?window=2w",
        "/api/usage?group_by=week",
        "/api/usage?format=xml",
    ] {
        let (status, body) = get(&s, bad).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(body.contains("\"error\""), "{body}");
    }
}

#[tokio::test]
async fn rows_survive_the_server_being_killed() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("lantern.db");
    let db = db.to_str().unwrap();
    let mut s = start(&["--db", db]);
    for i in 0..3 {
        ask(&s, "survivor", i, false).await;
    }
    written(&s, 3).await;
    s.child.kill().unwrap(); // SIGKILL: no shutdown path runs
    s.child.wait().unwrap();
    let s = start(&["--db", db]);
    let detail = get_json(&s, "/api/sessions/survivor").await;
    assert_eq!(detail["total"], 3, "{detail}");
}
