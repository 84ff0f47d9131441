//! One behaviour table run through all four wire formats (OpenAI's chat, Responses, Ollama's
//! `/api/chat`, Anthropic's Messages): the same logical request gives the same answer in each
//! (greedy text, whole and streamed; stop strings; a forced tool call; a JSON-schema
//! constraint), the response cache answers a repeat in each, a timeout and a dropped stream are
//! reported in each format's own shape, and the request log and `/metrics` count every request
//! once, under its API's name.
//!
//! Where a format cannot say a thing the row leaves it out, with the reason beside the row.

mod common;
#[path = "common/wire.rs"]
mod wire;

use std::collections::BTreeMap;

use common::server::{assert_serves, engine_of, get_json, start, wait_for_engine, Server};
use serde_json::{json, Value};
use wire::{ask, open, read, send, Answer, Ask, Finish, Sent, Tool, Wire};

/// Enough for the model to talk past any time limit.
const ESSAY: &str = "Write a very long essay about the sea.";

/// Every request a test made, one session each: the session and the API it went to.
#[derive(Default)]
struct Ledger(Vec<(String, &'static str)>);

impl Ledger {
    /// A fresh session for one request to `api`.
    fn session(&mut self, api: &'static str) -> String {
        let id = format!("wire-{}-{api}", self.0.len());
        self.0.push((id.clone(), api));
        id
    }

    fn by_api(&self) -> BTreeMap<String, u64> {
        let mut by = BTreeMap::new();
        for (_, api) in &self.0 {
            *by.entry(api.to_string()).or_default() += 1;
        }
        by
    }
}

/// `ask` in `wire`'s format, computed afresh (`no-cache`): each row exercises the engine.
async fn fresh(s: &Server, ledger: &mut Ledger, wire: Wire, request: &Ask) -> Answer {
    let session = ledger.session(wire.api());
    ask(s, wire, request, &session, "no-cache").await
}

/// The same request in each of `wires`, whole then streamed: every answer equals the first.
async fn same_everywhere(
    s: &Server,
    ledger: &mut Ledger,
    row: &str,
    wires: &[Wire],
    request: &Ask,
) -> Answer {
    let mut first: Option<(Wire, bool, Answer)> = None;
    for stream in [false, true] {
        let request = request.clone().streamed(stream);
        for &w in wires {
            let answer = fresh(s, ledger, w, &request).await;
            match &first {
                None => first = Some((w, stream, answer)),
                Some((w0, s0, a0)) => assert_eq!(
                    &answer, a0,
                    "{row}: {w:?} (stream {stream}) differs from {w0:?} (stream {s0})"
                ),
            }
        }
    }
    first.unwrap().2
}

fn weather() -> Tool {
    Tool {
        name: "get_weather",
        description: "The weather in a city",
        parameters: json!({"type": "object", "required": ["city"],
            "properties": {"city": {"type": "string", "maxLength": 20}}}),
    }
}

/// A stop string taken from `text`: its first word of three letters or more that does not open
/// it, and the text before that word.
fn stop_within(text: &str) -> (&str, &str) {
    text.split_whitespace()
        .filter(|w| w.len() >= 3)
        .find_map(|w| text.find(w).filter(|&at| at > 0).map(|at| (w, &text[..at])))
        .unwrap_or_else(|| panic!("no word to stop at in {text:?}"))
}

async fn cache_hits(s: &Server) -> u64 {
    get_json(s, "/api/cache").await["responses"]["hits"]
        .as_u64()
        .unwrap()
}

async fn completed(s: &Server) -> u64 {
    engine_of(s, "smollm2").await.unwrap()["completed"]
        .as_u64()
        .unwrap()
}

/// `lantern_requests_total`, summed over models, outcomes and statuses, by `api`.
async fn metrics_by_api(s: &Server) -> BTreeMap<String, u64> {
    let text = s.get("/metrics").await.text().await.unwrap();
    let mut by = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| l.starts_with("lantern_requests_total{"))
    {
        let api = line
            .split("api=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .unwrap_or_else(|| panic!("no api label: {line}"));
        let n: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
        *by.entry(api.to_string()).or_default() += n as u64;
    }
    by
}

/// Once the monitor has written every request of the ledger: each session's one row (so each
/// request was logged exactly once, under its API's name), and `/metrics` counted the same.
async fn logged_once(s: &Server, ledger: &Ledger) -> BTreeMap<String, Value> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let m = get_json(s, "/api/sessions").await;
        if m["monitor"]["written"].as_u64() == Some(ledger.0.len() as u64) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{m}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let mut rows = BTreeMap::new();
    for (session, api) in &ledger.0 {
        let detail = get_json(s, &format!("/api/sessions/{session}")).await;
        assert_eq!(detail["total"], 1, "{session}: {detail}");
        let row = detail["requests"][0].clone();
        assert_eq!(row["api"], *api, "{session}: {row}");
        rows.insert(session.clone(), row);
    }
    assert_eq!(metrics_by_api(s).await, ledger.by_api(), "/metrics");
    rows
}

#[tokio::test]
async fn one_request_behaves_the_same_in_every_wire_format() {
    let s = start(&[]);
    let mut ledger = Ledger::default();

    // Greedy text: equal in all four, whole and streamed (text, finish, both token counts).
    let greedy = Ask::new("Name three colours.", 16).with_system("You are a helpful assistant.");
    let plain = same_everywhere(&s, &mut ledger, "greedy", &Wire::ALL, &greedy).await;
    assert!(
        !plain.text.is_empty() && plain.calls.is_empty(),
        "{plain:?}"
    );
    assert!(plain.completion_tokens > 0 && plain.prompt_tokens > 0);

    // Stop strings: the text ends before the first match, which is not part of it. Not in
    // Responses: OpenAI's Responses API has no `stop` field.
    let (word, before) = stop_within(&plain.text);
    let stopped = same_everywhere(
        &s,
        &mut ledger,
        "stop",
        &[Wire::Chat, Wire::Ollama, Wire::Messages],
        &greedy.clone().with_stop(word),
    )
    .await;
    assert_eq!(
        (stopped.text.as_str(), stopped.finish),
        (before, Finish::Stop),
        "stop at {word:?} in {:?}",
        plain.text
    );

    // A forced call: one call of the function, its arguments valid for its schema. Not in
    // Ollama: its API has no `tool_choice`, so a call cannot be forced there.
    let call = same_everywhere(
        &s,
        &mut ledger,
        "tool",
        &[Wire::Chat, Wire::Responses, Wire::Messages],
        &Ask::new("What is the weather in Paris?", 64).with_tool(weather()),
    )
    .await;
    assert_eq!(call.finish, Finish::Tool, "{call:?}");
    assert_eq!(call.calls.len(), 1, "{call:?}");
    assert_eq!(call.calls[0].name, "get_weather");
    let city = call.calls[0].arguments["city"].as_str();
    assert!(city.is_some_and(|c| c.chars().count() <= 20), "{call:?}");

    // A JSON-schema constraint: the text parses and fits. Not in Messages: Anthropic's API has
    // no JSON-schema output format (clients force a tool for structured output instead, the
    // row above).
    let schema = json!({"type": "object", "additionalProperties": false,
        "required": ["city", "sunny"],
        "properties": {"city": {"type": "string", "maxLength": 20}, "sunny": {"type": "boolean"}}});
    let shaped = same_everywhere(
        &s,
        &mut ledger,
        "schema",
        &[Wire::Chat, Wire::Responses, Wire::Ollama],
        &Ask::new("Describe the weather in Paris as JSON.", 64).with_schema(schema),
    )
    .await;
    let v: Value =
        serde_json::from_str(&shaped.text).unwrap_or_else(|e| panic!("{e}: {:?}", shaped.text));
    assert!(
        v["city"].as_str().is_some_and(|c| c.chars().count() <= 20),
        "{v}"
    );
    assert!(
        v["sunny"].is_boolean() && v.as_object().unwrap().len() == 2,
        "{v}"
    );
    assert_eq!(shaped.finish, Finish::Stop);

    // The response cache: a greedy repeat is a hit in every format, whole or streamed; the
    // engine does not run again, and the request is still logged with its tokens.
    let mut hits = Vec::new();
    for w in Wire::ALL {
        let repeat = Ask::new("Count to five.", 12);
        let first = ask(&s, w, &repeat, &ledger.session(w.api()), "").await;
        for stream in [false, true] {
            let (h0, runs) = (cache_hits(&s).await, completed(&s).await);
            let session = ledger.session(w.api());
            let sent = send(&s, w, &repeat.clone().streamed(stream), &session, "").await;
            assert_eq!(sent.status, 200, "{w:?}: {}", sent.body);
            assert_eq!(
                read(w, &sent),
                first,
                "{w:?} stream {stream}: from the cache"
            );
            assert_eq!(cache_hits(&s).await, h0 + 1, "{w:?} stream {stream}: a hit");
            assert_eq!(completed(&s).await, runs, "{w:?}: the engine did not run");
            if w == Wire::Chat && !stream {
                assert_eq!(sent.body["usage"]["response_cached"], true, "{}", sent.body);
            }
            hits.push((session, first.clone()));
        }
    }

    // A client that drops its stream after the first chunk: the generation stops, and the
    // request is logged as cancelled.
    let mut dropped = Vec::new();
    for w in Wire::ALL {
        let session = ledger.session(w.api());
        let long = Ask::new(ESSAY, 4000).streamed(true);
        let mut r = open(&s, w, &long, &session, "no-store").await;
        assert_eq!(r.status(), 200, "{w:?}");
        r.chunk().await.unwrap().expect("a first chunk");
        wait_for_engine(&s, "smollm2", "the generation runs", |e| {
            let e = e.unwrap();
            e["running"] == 1 && e["kv_tokens"].as_u64().unwrap() > 0
        })
        .await;
        drop(r);
        wait_for_engine(&s, "smollm2", "the dropped stream stops", |e| {
            e.unwrap()["running"] == 0
        })
        .await;
        dropped.push(session);
    }

    // The two APIs outside the table are counted under their own names too.
    for (api, path, body) in [
        (
            "completions",
            "/v1/completions",
            json!({"model": "smollm2", "prompt": "One, two,", "max_tokens": 3}),
        ),
        (
            "ollama_generate",
            "/api/generate",
            json!({"model": "smollm2", "prompt": "Hi", "stream": false,
                   "options": {"num_predict": 3}}),
        ),
    ] {
        let r = reqwest::Client::new()
            .post(format!("{}{path}", s.base))
            .header("x-session-id", ledger.session(api))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
    }

    // Every request above once in the log and in /metrics, each under its API's name.
    let rows = logged_once(&s, &ledger).await;
    for (session, row) in &rows {
        let expected = if dropped.contains(session) {
            "cancelled"
        } else {
            "ok"
        };
        assert_eq!(row["outcome"], expected, "{session}: {row}");
    }
    for (session, answer) in &hits {
        let row = &rows[session];
        assert_eq!(row["response_cached"], true, "{session}: {row}");
        assert_eq!(
            row["prompt_tokens"], answer.prompt_tokens,
            "{session}: {row}"
        );
        assert_eq!(
            row["completion_tokens"], answer.completion_tokens,
            "{session}: {row}"
        );
    }
    assert_serves(&s).await;
}

/// The error a format reports a timeout with, whole (504) or inside a started stream: true
/// when `sent` is one.
fn is_timeout(wire: Wire, sent: &Sent) -> bool {
    if sent.events.is_empty() {
        let b = &sent.body;
        return sent.status == 504
            && match wire {
                Wire::Chat | Wire::Responses => b["error"]["code"] == "timeout",
                Wire::Ollama => {
                    b.as_object().is_some_and(|o| o.len() == 1) && b["error"].is_string()
                }
                Wire::Messages => b["type"] == "error" && b["error"]["type"] == "timeout_error",
            };
    }
    let e = sent
        .events
        .iter()
        .rev()
        .find(|e| e.data != "[DONE]")
        .unwrap();
    match wire {
        Wire::Chat => e.data["error"]["code"] == "timeout",
        // OpenAI's Responses streams end a failure with either an `error` event or a
        // `response.failed` one carrying the error: either is the Responses shape.
        Wire::Responses => {
            (e.name == "error" && e.data["code"] == "timeout")
                || (e.name == "response.failed" && e.data["response"]["error"]["code"] == "timeout")
        }
        Wire::Ollama => e.data["error"].is_string() && e.data.get("done").is_none(),
        Wire::Messages => {
            e.name == "error"
                && e.data["type"] == "error"
                && e.data["error"]["type"] == "timeout_error"
        }
    }
}

#[tokio::test]
async fn a_timeout_is_reported_in_each_formats_own_shape() {
    let s = start(&["--request-timeout", "1"]);
    let mut ledger = Ledger::default();
    for w in Wire::ALL {
        for stream in [false, true] {
            let long = Ask::new(ESSAY, 4000).streamed(stream);
            // no-store: a long answer must be generated, never replayed.
            let sent = send(&s, w, &long, &ledger.session(w.api()), "no-store").await;
            assert!(
                is_timeout(w, &sent),
                "{w:?} stream {stream}: {} {} {:?}",
                sent.status,
                sent.body,
                sent.events.iter().rev().take(2).collect::<Vec<_>>()
            );
        }
    }
    for (session, row) in logged_once(&s, &ledger).await {
        assert_eq!(row["outcome"], "timeout", "{session}: {row}");
    }
    assert_serves(&s).await;
}
