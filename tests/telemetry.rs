//! Traces and JSON logs from the real server: an OTLP/HTTP collector written here, on loopback,
//! receives the spans of one chat request, in the client's trace (its `traceparent`), linked
//! parent to child; the request id in `X-Request-Id` is that trace id; and with
//! `--log-format json` every line of the log parses, the request's carrying its id, session
//! and model.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::routing::post;
use serde_json::{json, Value};

/// Spans the collector received, as OTLP/JSON's `resourceSpans[].scopeSpans[].spans[]`.
type Spans = Arc<Mutex<Vec<Value>>>;

async fn collector() -> (String, Spans) {
    let spans: Spans = Arc::default();
    let kept = spans.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        post(move |body: axum::body::Bytes| {
            let kept = kept.clone();
            async move {
                let request: Value = serde_json::from_slice(&body).expect("OTLP/JSON");
                for resource in request["resourceSpans"].as_array().into_iter().flatten() {
                    for scope in resource["scopeSpans"].as_array().into_iter().flatten() {
                        let mut kept = kept.lock().unwrap();
                        kept.extend(scope["spans"].as_array().into_iter().flatten().cloned());
                    }
                }
                axum::Json(json!({}))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, spans)
}

fn named<'a>(spans: &'a [Value], name: &str) -> Vec<&'a Value> {
    spans.iter().filter(|s| s["name"] == name).collect()
}

#[tokio::test]
async fn one_chat_request_is_one_trace_and_its_log_lines_are_json() {
    let (endpoint, spans) = collector().await;
    let data = common::server::data_dir();
    let log_path = data.path().join("server.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let child = common::server::spawn_with_log(
        data.path(),
        &["--otlp-endpoint", &endpoint, "--log-format", "json"],
        &[("LANTERN_LOG", "info")],
        log,
    );
    let s = common::server::started(child, data.path(), None);

    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let client_span = "00f067aa0ba902b7";
    let r = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", s.base))
        .header("traceparent", format!("00-{trace}-{client_span}-01"))
        .header("x-session-id", "traced")
        .json(&common::server::chat(
            "Hi",
            json!({"max_tokens": 4, "stream": true}),
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-request-id"], trace);
    r.text().await.unwrap();

    // Exported within a second; wait until the request's whole tree is in.
    let mut got = Vec::new();
    for _ in 0..100 {
        got = spans.lock().unwrap().clone();
        if !named(&got, "decode").is_empty() && !named(&got, "request").is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let one = |name: &str| {
        let found = named(&got, name);
        assert_eq!(found.len(), 1, "{name}: {found:?} among {got:?}");
        found[0].clone()
    };
    let (request, infer, plan, lookup, generate, prefill, decode) = (
        one("request"),
        one("infer"),
        one("plan"),
        one("cache_lookup"),
        one("generate"),
        one("prefill"),
        one("decode"),
    );
    for span in [
        &request, &infer, &plan, &lookup, &generate, &prefill, &decode,
    ] {
        assert_eq!(span["traceId"], trace, "{span}");
    }
    let child_of = |child: &Value, parent: &Value| {
        assert_eq!(
            child["parentSpanId"], parent["spanId"],
            "{} under {}",
            child["name"], parent["name"]
        );
    };
    assert_eq!(request["parentSpanId"], client_span);
    child_of(&infer, &request);
    child_of(&plan, &infer);
    child_of(&lookup, &infer);
    child_of(&generate, &infer);
    child_of(&prefill, &generate);
    child_of(&decode, &generate);
    // The engine's own spans of the request: its wait in the queue, each prompt chunk it ran.
    child_of(&one("queue"), &infer);
    child_of(&one("validate"), &plan);
    let chunks = named(&got, "prefill_chunk");
    assert!(!chunks.is_empty(), "{got:?}");
    for chunk in &chunks {
        child_of(chunk, &infer);
        assert_eq!(chunk["traceId"], trace);
    }
    let attribute = |span: &Value, key: &str| {
        span["attributes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["key"] == key)
            .map(|a| a["value"].clone())
            .unwrap_or_else(|| panic!("{key} not in {span}"))
    };
    assert_eq!(attribute(&request, "session")["stringValue"], "traced");
    let fed = attribute(chunks[0], "tokens");
    assert!(
        fed["intValue"]
            .to_string()
            .trim_matches('"')
            .parse::<u64>()
            .is_ok_and(|n| n > 0),
        "{fed}"
    );
    assert_eq!(attribute(&request, "model")["stringValue"], "smollm2");
    // OTLP/JSON writes 64-bit integers as strings.
    let tokens = attribute(&decode, "completion_tokens");
    assert_eq!(
        tokens["intValue"].to_string().trim_matches('"'),
        "4",
        "{tokens}"
    );

    // Without a traceparent a request still gets an id, a fresh trace's.
    let r = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", s.base))
        .json(&common::server::chat("Hi", json!({"max_tokens": 2})))
        .send()
        .await
        .unwrap();
    let fresh = r.headers()["x-request-id"].to_str().unwrap().to_string();
    assert!(fresh.len() == 32 && fresh != trace, "{fresh}");

    drop(s);
    let text = std::fs::read_to_string(&log_path).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(lines.iter().any(|l| l["fields"]["message"]
        .as_str()
        .is_some_and(|m| m.starts_with("loaded smollm2"))));
    let finished: Vec<&Value> = lines
        .iter()
        .filter(|l| l["fields"]["event"] == "request.finished")
        .collect();
    assert_eq!(finished.len(), 2, "{text}");
    let request_span = finished[0]["spans"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "request")
        .unwrap_or_else(|| panic!("{}", finished[0]));
    assert_eq!(request_span["request_id"], trace);
    assert_eq!(request_span["session"], "traced");
    assert_eq!(request_span["model"], "smollm2");
}

#[test]
fn a_bad_otlp_endpoint_is_a_clear_error_at_start() {
    let data = common::server::data_dir();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_lantern"))
        .args([
            "serve",
            "smollm2",
            "--port",
            "0",
            "--otlp-endpoint",
            "localhost:4318",
        ])
        .env("LANTERN_HOME", data.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--otlp-endpoint localhost:4318") && err.contains("http://"),
        "{err}"
    );
}

/// Start a server serving `home` that exports traces to `endpoint`.
fn traced(home: &std::path::Path, endpoint: &str) -> common::server::Server {
    let child = common::server::spawn_in(home, &["--otlp-endpoint", endpoint], &[]);
    common::server::started(child, home, None)
}

#[tokio::test]
async fn a_remote_engines_spans_join_the_callers_trace() {
    let (endpoint, spans) = collector().await;
    let edge_home = common::server::data_dir();
    let edge = traced(edge_home.path(), &endpoint);
    let front_home = common::server::data_dir();
    let settings = format!(
        "[[backends]]\nname = \"edge\"\nurl = \"{}/v1\"\nmodels = [\"smollm2\"]\n",
        edge.base
    );
    std::fs::write(front_home.path().join("settings.toml"), settings).unwrap();
    let front = traced(front_home.path(), &endpoint);
    let trace = "0af7651916cd43dd8448eb211c80319c";
    let r = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", front.base))
        .header("traceparent", format!("00-{trace}-b7ad6b7169203331-01"))
        .json(&json!({"model": "edge/smollm2", "max_tokens": 3,
                      "messages": [{"role": "user", "content": "Hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    // The edge's request is a child of the front's remote call (its health checks are traces
    // of their own).
    let under_remote = |got: &[Value]| {
        let remote = named(got, "remote");
        named(got, "request")
            .into_iter()
            .find(|s| remote.iter().any(|r| s["parentSpanId"] == r["spanId"]))
            .cloned()
    };
    let mut got = Vec::new();
    for _ in 0..100 {
        got = spans.lock().unwrap().clone();
        if under_remote(&got).is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let remote = named(&got, "remote");
    assert_eq!(remote.len(), 1, "{got:?}");
    let edge_request =
        under_remote(&got).unwrap_or_else(|| panic!("no request under the remote span: {got:?}"));
    assert_eq!(edge_request["traceId"], trace);
    assert_eq!(edge_request["parentSpanId"], remote[0]["spanId"]);
    assert_eq!(remote[0]["traceId"], trace);
    assert!(named(&got, "decode").iter().all(|s| s["traceId"] == trace));
}
