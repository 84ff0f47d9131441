//! Prompt compression on the real default model: each method reaches its ratio (within ±5% of
//! the prompt's tokens) and keeps the question; requests report what was done.

mod common;

use common::server::{post, start};
use lantern::compress::{compress_chat, Method, Spec};
use lantern::engine::template::ChatMessage;
use serde_json::json;

/// A long, repetitive context (so there is plenty to drop) and a question at the end.
fn long_prompt() -> String {
    let mut context = String::new();
    for i in 0..12 {
        context.push_str(&format!(
            "In the year {}, the small town of Harbourview held its annual lantern festival by \
             the river, and the mayor, as always, gave a long speech about the importance of \
             light, community and the fishing fleet. ",
            1990 + i
        ));
    }
    context.push_str("What is the name of the town?");
    context
}

#[test]
fn truncate_and_prune_hit_their_ratio_and_keep_the_question() {
    let model = common::smollm2();
    let question = "What is the name of the town?";
    for method in [Method::Truncate, Method::Prune] {
        for ratio in [0.3, 0.5, 0.7] {
            let spec = Spec {
                method,
                ratio,
                scorer: None,
            };
            let messages = vec![
                ChatMessage::new("system", "Answer briefly."),
                ChatMessage::new("user", long_prompt()),
            ];
            let (out, report) = compress_chat(model, None, messages, &spec).unwrap();
            assert!(
                (report.ratio - ratio).abs() <= 0.05,
                "{method:?}@{ratio}: {report:?}"
            );
            assert_eq!(out[0].content, "Answer briefly.", "the instruction is kept");
            assert!(
                out[1].content.ends_with(question),
                "{method:?}: {}",
                out[1].content
            );
            assert!(out[1].content.contains("Harbourview") || method == Method::Truncate);
        }
    }
    // Normalize removes only what is redundant.
    let spec = Spec {
        method: Method::Normalize,
        ratio: 1.0,
        scorer: None,
    };
    let messy = vec![ChatMessage::new(
        "user",
        "Hello   there.\n\n\n\nHello   there.\nWhat now?",
    )];
    let (out, report) = compress_chat(model, None, messy, &spec).unwrap();
    assert_eq!(out[0].content, "Hello there.\n\nHello there. What now?");
    assert!(report.compressed_tokens < report.original_tokens);
}

#[tokio::test]
async fn a_request_asks_for_compression_and_the_log_records_it() {
    let s = start(&[]);
    let body = json!({
        "model": "smollm2",
        "messages": [{"role": "user", "content": long_prompt()}],
        "max_tokens": 8,
        "compression": {"method": "prune", "ratio": 0.5},
    });
    let plain = {
        let mut b = body.clone();
        b.as_object_mut().unwrap().remove("compression");
        post(&s, "/v1/chat/completions", &b).await.1
    };
    let r = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", s.base))
        .header("x-session-id", "squeezed")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let header = r.headers()["x-lantern-compression"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(header.starts_with("prune@0.5 "), "{header}");
    let answer: serde_json::Value = r.json().await.unwrap();
    let (full, squeezed) = (
        plain["usage"]["prompt_tokens"].as_u64().unwrap(),
        answer["usage"]["prompt_tokens"].as_u64().unwrap(),
    );
    assert!(squeezed < full * 2 / 3, "{squeezed} of {full}");

    // The request log has the compression and the variant (the weight type).
    let detail = loop {
        let d = common::server::get_json(&s, "/api/sessions/squeezed").await;
        if d["total"] == 1 {
            break d;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(detail["requests"][0]["compression"], "prune@0.5");
    assert_eq!(detail["requests"][0]["variant"], "Q4_1");

    for bad in [
        json!({"method": "zip", "ratio": 0.5}),
        json!({"method": "prune", "ratio": 1.5}),
    ] {
        let mut b = body.clone();
        b["compression"] = bad;
        let (status, err) = post(&s, "/v1/chat/completions", &b).await;
        assert_eq!(status, 400, "{err}");
    }
}

#[tokio::test]
async fn a_session_default_applies_until_cleared_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("lantern.db");
    let db = db.to_str().unwrap();
    let s = start(&["--db", db]);
    let client = s.client();
    let r = client
        .put(format!("{}/api/sessions/reader/compression", s.base))
        .json(&json!({"method": "truncate", "ratio": 0.4}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let ask = |base: String| {
        let client = client.clone();
        async move {
            client
                .post(format!("{base}/v1/chat/completions"))
                .header("x-session-id", "reader")
                .json(&json!({"model": "smollm2", "max_tokens": 4,
                              "messages": [{"role": "user", "content": long_prompt()}]}))
                .send()
                .await
                .unwrap()
        }
    };
    let r = ask(s.base.clone()).await;
    assert_eq!(r.status(), 200);
    assert!(r.headers()["x-lantern-compression"]
        .to_str()
        .unwrap()
        .starts_with("truncate@0.4 "));
    drop(s);
    let s = start(&["--db", db]);
    let r = ask(s.base.clone()).await;
    assert!(
        r.headers().contains_key("x-lantern-compression"),
        "saved across a restart"
    );
    let client = s.client();
    client
        .delete(format!("{}/api/sessions/reader/compression", s.base))
        .send()
        .await
        .unwrap();
    let r = ask(s.base.clone()).await;
    assert!(!r.headers().contains_key("x-lantern-compression"));
    let bad = client
        .put(format!("{}/api/sessions/reader/compression", s.base))
        .json(&json!({"method": "prune", "ratio": 0}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
}
