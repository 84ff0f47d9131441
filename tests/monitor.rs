//! The request log against the real server: what is recorded adds up to what clients were told,
//! per session, and survives the server being killed.

mod common;

use common::server::{chat, get_json, start, Server};
use serde_json::{json, Value};

async fn get(s: &Server, path: &str) -> (u16, String) {
    let r = s.get(path).await;
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

/// A chat request in `session`; the status, the response headers and the body.
async fn ask_raw(s: &Server, session: &str) -> (u16, reqwest::header::HeaderMap, Value) {
    let r = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", s.base))
        .header("x-session-id", session)
        .json(&chat("Say hi.", json!({"max_tokens": 4, "temperature": 0})))
        .send()
        .await
        .unwrap();
    let (status, headers) = (r.status().as_u16(), r.headers().clone());
    (status, headers, r.json().await.unwrap())
}

async fn put(s: &Server, path: &str, body: &Value) -> (u16, Value) {
    let r = s
        .client_for(path)
        .put(format!("{}{path}", s.base))
        .json(body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

/// Poll `/api/alerts` until `pred` holds (bounded: only guards against a hang).
async fn alerts_until(s: &Server, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let a = get_json(s, "/api/alerts").await;
        if pred(&a) {
            return a;
        }
        assert!(std::time::Instant::now() < deadline, "{a}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

fn has_active(alerts: &Value, rule: &str, subject: &str) -> bool {
    alerts["active"]
        .as_array()
        .unwrap()
        .iter()
        .any(|a| a["rule"] == rule && a["subject"] == subject)
}

#[tokio::test]
async fn a_budget_warns_then_stops_with_429_until_it_is_raised_and_persists() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("lantern.db");
    let db = db.to_str().unwrap();
    let s = start(&["--db", db]);
    let (status, body) = put(
        &s,
        "/api/sessions/capped/budget",
        &json!({"daily_tokens": 150}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["budget"]["daily_tokens"], 150);
    assert_eq!(body["budget"]["source"], "session");

    // Spend the budget: every answer says what is left; past 80% they carry the warning.
    let (mut used, mut warned, mut rejected) = (0u64, false, None);
    for _ in 0..50 {
        let (status, headers, body) = ask_raw(&s, "capped").await;
        if status == 429 {
            rejected = Some((headers, body));
            break;
        }
        assert_eq!(status, 200, "{body}");
        let remaining: u64 = headers["x-lantern-budget-remaining"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(
            remaining,
            150u64.saturating_sub(used),
            "admitted with {used} used"
        );
        let warning = headers.get("x-lantern-budget-warning");
        assert_eq!(warning.is_some(), used >= 120, "{used}: {warning:?}");
        warned |= warning.is_some();
        used += body["usage"]["total_tokens"].as_u64().unwrap();
    }
    let (headers, body) = rejected.expect("the budget never stopped the session");
    assert!(used >= 150);
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("Session 'capped' daily token budget of 150 tokens is used up"),
        "{message}"
    );
    assert!(
        message.contains(&format!("({used} used today)")),
        "{message}"
    );
    assert!(
        message.contains("resets at") && message.contains("UTC"),
        "{message}"
    );
    assert_eq!(body["error"]["code"], "budget_exhausted");
    let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=86_400).contains(&retry), "{retry}");
    // About 35 tokens an answer: at least one was admitted between 120 and 150 used.
    assert!(warned, "no answer carried the budget warning");

    // Both thresholds are alerts; other sessions are not held back.
    let alerts = alerts_until(&s, |a| has_active(a, "budget_exhausted", "capped")).await;
    assert!(has_active(&alerts, "budget_warning", "capped"), "{alerts}");
    assert!(alerts["active"].to_string().contains("used up"), "{alerts}");
    assert_eq!(ask_raw(&s, "someone-else").await.0, 200);

    // Raising the budget lets the session back in, and the alert resolves.
    let (status, _) = put(
        &s,
        "/api/sessions/capped/budget",
        &json!({"daily_tokens": 1_000_000}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(ask_raw(&s, "capped").await.0, 200);
    alerts_until(&s, |a| !has_active(a, "budget_exhausted", "capped")).await;

    // A default budget applies to sessions without their own, and is saved with the settings.
    let mut settings = get_json(&s, "/api/monitor/settings").await;
    settings["default_daily_tokens"] = json!(5);
    let (status, saved) = put(&s, "/api/monitor/settings", &settings).await;
    assert_eq!(status, 200, "{saved}");
    assert_eq!(ask_raw(&s, "fresh").await.0, 200);
    let (status, _, body) = ask_raw(&s, "fresh").await;
    assert_eq!(status, 429);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("The default daily token budget (session 'fresh') of 5 tokens"),
        "{body}"
    );

    // Sessions show their budget and what their tokens would have cost in the cloud.
    written(
        &s,
        get_json(&s, "/api/sessions").await["monitor"]["recorded"]
            .as_u64()
            .unwrap(),
    )
    .await;
    let sessions = get_json(&s, "/api/sessions").await;
    let capped = sessions["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["id"] == "capped")
        .unwrap();
    assert_eq!(capped["budget"]["daily_tokens"], 1_000_000);
    assert!(
        capped["cloud_cost_usd"]["gpt-4o"].as_f64().unwrap() > 0.0,
        "{capped}"
    );

    // Bad settings and budgets are 400s naming the field; nothing is changed by them.
    let mut bad = settings.clone();
    bad["alerts"]["error_rate"] = json!(2.0);
    let (status, body) = put(&s, "/api/monitor/settings", &bad).await;
    assert_eq!(
        (status, body["error"]["param"].as_str()),
        (400, Some("alerts.error_rate"))
    );
    let (status, _) = put(&s, "/api/sessions/x/budget", &json!({"daily_tokens": 0})).await;
    assert_eq!(status, 400);
    let (status, _) = put(&s, "/api/sessions/x/budget", &json!({"tokens": 5})).await;
    assert_eq!(status, 400);
    assert_eq!(
        get_json(&s, "/api/monitor/settings").await["default_daily_tokens"],
        5
    );

    // After a restart the settings, the session's own budget and today's use are all back.
    drop(s);
    let s = start(&["--db", db]);
    assert_eq!(
        get_json(&s, "/api/monitor/settings").await["default_daily_tokens"],
        5
    );
    assert_eq!(ask_raw(&s, "fresh").await.0, 429);
    let budget = get_json(&s, "/api/sessions/capped/budget").await;
    assert_eq!(budget["budget"]["daily_tokens"], 1_000_000);
    assert!(budget["budget"]["used_today"].as_u64().unwrap() >= used);
    // Deleting the session's own budget puts it back on the default (spent already).
    let r = s
        .client()
        .delete(format!("{}/api/sessions/capped/budget", s.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(ask_raw(&s, "capped").await.0, 429);
}

#[tokio::test]
async fn the_live_stream_pushes_snapshots_and_alerts() {
    let s = start(&[]);
    // Any latency is over 1 ms: the first request fires the p95 alert.
    let mut settings = get_json(&s, "/api/monitor/settings").await;
    settings["alerts"]["p95_latency_ms"] = json!(1.0);
    settings["alerts"]["min_requests"] = json!(1);
    assert_eq!(put(&s, "/api/monitor/settings", &settings).await.0, 200);

    let mut live = s.get("/api/monitor/stream").await;
    assert_eq!(live.status(), 200);
    assert_eq!(ask_raw(&s, "watched").await.0, 200);

    let (mut saw_session, mut saw_alert, mut snapshots) = (false, false, 0);
    let mut buffer = String::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !(saw_session && saw_alert) {
        assert!(std::time::Instant::now() < deadline, "{buffer}");
        let chunk = tokio::time::timeout(std::time::Duration::from_secs(5), live.chunk())
            .await
            .expect("the stream went quiet")
            .unwrap()
            .expect("the stream ended");
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buffer.find("\n\n") {
            let event: String = buffer.drain(..end + 2).collect();
            let name = event.lines().find_map(|l| l.strip_prefix("event: "));
            let Some(data) = event.lines().find_map(|l| l.strip_prefix("data: ")) else {
                continue;
            };
            let data: Value = serde_json::from_str(data).unwrap();
            match name {
                Some("snapshot") => {
                    snapshots += 1;
                    assert!(
                        data["running"].is_u64() && data["waiting"].is_u64(),
                        "{data}"
                    );
                    assert!(data["tokens_per_second"].as_f64().unwrap() >= 0.0);
                    if data["sessions"]["watched"]["requests"] == 1 {
                        saw_session = true;
                        assert!(
                            data["sessions"]["watched"]["completion_tokens"].as_u64() > Some(0)
                        );
                        assert!(data["last_minute"]["ttft_ms"]["p50"].as_f64().unwrap() > 0.0);
                    }
                }
                Some("alert") => {
                    if data["state"] == "fired" && data["alert"]["rule"] == "p95_latency" {
                        saw_alert = true;
                        assert_eq!(data["alert"]["subject"], "smollm2");
                    }
                }
                other => panic!("unexpected event {other:?}: {event}"),
            }
        }
    }
    assert!(snapshots >= 1);
    let alerts = get_json(&s, "/api/alerts").await;
    assert!(has_active(&alerts, "p95_latency", "smollm2"), "{alerts}");
}
