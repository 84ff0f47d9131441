//! The Chat page's threads on the real server: an answer is written as it streams, a client that
//! leaves (a stop, a reload) leaves what arrived marked interrupted, a restart marks answers a
//! stopped server was writing, `continue` goes on with an answer cut short (as vLLM's
//! `continue_final_message` and Anthropic's prefill do on their APIs), and bad input gets the
//! API's error shape.

mod common;

use std::time::Duration;

use common::server::{get_json, post, start, Server};
use futures_util::StreamExt;
use serde_json::{json, Value};

async fn thread_with_question(s: &Server, question: &str) -> (String, String) {
    let (status, thread) = post(s, "/api/threads", &json!({"settings": {"system": "x"}})).await;
    assert_eq!(status, 201, "{thread}");
    let id = thread["id"].as_str().unwrap().to_string();
    let (status, m) = post(
        s,
        &format!("/api/threads/{id}/messages"),
        &json!({"content": question}),
    )
    .await;
    assert_eq!(status, 201, "{m}");
    (id, m["id"].as_str().unwrap().to_string())
}

/// The reply's streamed text, read to the end.
async fn reply_text(s: &Server, thread: &str, body: Value) -> String {
    let r = s
        .client()
        .post(format!("{}/api/threads/{thread}/reply", s.base))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status();
    assert!(r.headers().contains_key("x-lantern-message") || status != 200);
    assert_eq!(status, 200, "{}", r.text().await.unwrap());
    let text = r.text().await.unwrap();
    text.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .map(String::from)
        })
        .collect()
}

/// A new thread whose long answer is streaming, `bytes` of it read: the thread and the rest
/// of the stream.
async fn long_answer_under_way(
    s: &Server,
    bytes: usize,
) -> (
    String,
    impl futures_util::Stream<Item = reqwest::Result<axum::body::Bytes>>,
) {
    let (thread, question) = thread_with_question(s, "Write a long story about the sea.").await;
    let r = s
        .client()
        .post(format!("{}/api/threads/{thread}/reply", s.base))
        .json(&json!({"parent": question, "request": {"max_tokens": 400}}))
        .send()
        .await
        .unwrap();
    let mut body = Box::pin(r.bytes_stream());
    let mut seen = 0;
    while seen < bytes {
        seen += body.next().await.unwrap().unwrap().len();
    }
    (thread, body)
}

async fn messages(s: &Server, thread: &str) -> Vec<Value> {
    get_json(s, &format!("/api/threads/{thread}")).await["messages"]
        .as_array()
        .unwrap()
        .clone()
}

/// Poll until the thread's last answer is no longer being written.
async fn settled(s: &Server, thread: &str) -> Value {
    for _ in 0..100 {
        let all = messages(s, thread).await;
        let last = all.last().unwrap().clone();
        if last["state"] != "streaming" {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the answer stayed streaming");
}

#[tokio::test]
async fn answers_are_kept_as_they_stream_and_a_client_that_leaves_interrupts_them() {
    let s = start(&[]);
    let (thread, question) = thread_with_question(&s, "Name three colours.").await;
    let greedy = json!({"max_tokens": 12, "temperature": 0});
    let streamed = reply_text(&s, &thread, json!({"parent": question, "request": greedy})).await;
    let answer = settled(&s, &thread).await;
    assert_eq!(answer["state"], "complete");
    assert_eq!(answer["content"], streamed);
    assert_eq!(answer["model"], "smollm2");
    assert_eq!(answer["figures"]["completion_tokens"], 12);
    assert_eq!(answer["figures"]["finish_reason"], "length");
    // A regeneration is a second answer to the same question, beside the first.
    reply_text(&s, &thread, json!({"parent": question, "request": greedy})).await;
    let all = messages(&s, &thread).await;
    let answers: Vec<&Value> = all.iter().filter(|m| m["parent_id"] == question).collect();
    assert_eq!(answers.len(), 2);

    // A client that reads one chunk and leaves.
    let (thread, body) = long_answer_under_way(&s, 600).await;
    drop(body);
    let cut = settled(&s, &thread).await;
    assert_eq!(cut["state"], "interrupted", "{cut}");
    let kept = cut["content"].as_str().unwrap().to_string();
    assert!(!kept.is_empty());

    // `continue` goes on with it, in place.
    let more = reply_text(
        &s,
        &thread,
        json!({"continue": cut["id"], "request": {"max_tokens": 6, "temperature": 0}}),
    )
    .await;
    let done = settled(&s, &thread).await;
    assert_eq!(done["id"], cut["id"]);
    assert_eq!(done["state"], "complete");
    assert_eq!(done["content"], format!("{}{more}", kept.trim_end()));
    assert!(!more.is_empty());
}

#[tokio::test]
async fn a_restart_marks_the_answers_a_stopped_server_was_writing() {
    let db = tempfile::tempdir().unwrap();
    let db_path = db.path().join("lantern.db");
    let db_arg = db_path.to_str().unwrap();
    let mut s = start(&["--db", db_arg]);
    let (thread, body) = long_answer_under_way(&s, 2000).await;
    // Killed while it writes: nothing runs to mark the answer.
    s.child.kill().unwrap();
    s.child.wait().unwrap();
    drop(body);
    let s = start(&["--db", db_arg]);
    let all = messages(&s, &thread).await;
    assert_eq!(all.len(), 2);
    assert_eq!(all[1]["state"], "interrupted", "{}", all[1]);
    assert_eq!(all[0]["content"], "Write a long story about the sea.");
}

#[tokio::test]
async fn continue_final_message_and_an_anthropic_prefill_go_on_from_the_given_text() {
    let s = start(&[]);
    let question = "Name three colours.";
    let (_, whole) = post(
        &s,
        "/v1/chat/completions",
        &json!({"model": "smollm2", "messages": [{"role": "user", "content": question}],
                "max_tokens": 24, "temperature": 0}),
    )
    .await;
    let whole = whole["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string();
    let prefix: String = whole.split(' ').take(3).collect::<Vec<_>>().join(" ");
    let conversation = json!([
        {"role": "user", "content": question},
        {"role": "assistant", "content": prefix},
    ]);
    let (status, more) = post(
        &s,
        "/v1/chat/completions",
        &json!({"model": "smollm2", "messages": conversation, "max_tokens": 6,
                "temperature": 0, "continue_final_message": true}),
    )
    .await;
    assert_eq!(status, 200, "{more}");
    let more = more["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(
        whole.starts_with(&format!("{prefix}{more}")),
        "{prefix:?} + {more:?} is not how {whole:?} goes on"
    );
    let (status, prefill) = post(
        &s,
        "/v1/messages",
        &json!({"model": "smollm2", "messages": conversation, "max_tokens": 6,
                "temperature": 0}),
    )
    .await;
    assert_eq!(status, 200, "{prefill}");
    assert_eq!(prefill["content"][0]["text"], more);
    // Only an assistant's message goes on.
    let (status, err) = post(
        &s,
        "/v1/chat/completions",
        &json!({"model": "smollm2", "messages": [{"role": "user", "content": "hi"}],
                "continue_final_message": true}),
    )
    .await;
    assert_eq!(status, 400);
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("assistant"),
        "{err}"
    );
}

#[tokio::test]
async fn bad_thread_input_gets_the_api_error_shape() {
    let s = start(&[]);
    let (thread, question) = thread_with_question(&s, "hi").await;
    let reply = format!("/api/threads/{thread}/reply");
    for (body, param) in [
        (json!({"parent": "msg_nope"}), "parent"),
        (json!({"parent": question, "continue": question}), "parent"),
        (json!({"continue": question}), "continue"),
        (
            json!({"parent": question, "request": {"messages": []}}),
            "request.messages",
        ),
        (json!({"parent": question, "compare": "a b"}), "compare"),
    ] {
        let (status, err) = post(&s, &reply, &body).await;
        assert_eq!(status, 400, "{body}: {err}");
        assert_eq!(err["error"]["param"], param, "{body}: {err}");
    }
    let (status, err) = post(
        &s,
        "/api/threads/thr_nope/reply",
        &json!({"parent": question}),
    )
    .await;
    assert_eq!(status, 404, "{err}");
    let (status, err) = post(
        &s,
        &format!("/api/threads/{thread}/messages"),
        &json!({"content": " "}),
    )
    .await;
    assert_eq!(
        (status, err["error"]["param"].clone()),
        (400, json!("content"))
    );
    let (status, err) = post(&s, "/api/threads", &json!({"settings": [1]})).await;
    assert_eq!(
        (status, err["error"]["param"].clone()),
        (400, json!("settings"))
    );
    let patch = s
        .client()
        .patch(format!("{}/api/threads/{thread}", s.base))
        .json(&json!({"leaf": "msg_elsewhere"}))
        .send()
        .await
        .unwrap();
    assert_eq!(patch.status(), 400);
    // A vote needs two answers of one compare.
    let (status, err) = post(
        &s,
        &format!("/api/threads/{thread}/votes"),
        &json!({"a": question, "b": question, "winner": "a"}),
    )
    .await;
    assert_eq!(status, 400, "{err}");
    let r = s
        .get(&format!("/api/threads/{thread}/export?format=pdf"))
        .await;
    assert_eq!(r.status(), 400);
}
