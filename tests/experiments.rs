//! Experiments over HTTP on the real default model: run as a job that resumes after a restart
//! without redoing finished rows, blind votes, the summary, and `experiment:NAME` routing.

mod common;

use common::server::{get_json, post, start, wait_job};
use serde_json::{json, Value};

fn spec() -> Value {
    json!({
        "name": "sampling",
        "variants": [
            {"name": "greedy", "model": "smollm2"},
            {"name": "warm", "model": "smollm2", "temperature": 0.9, "weight": 3},
        ],
        "prompts": ["Name a fruit.", "Say hello.", "Count to three.", "Name a colour."],
        "max_tokens": 10,
    })
}

#[tokio::test]
async fn an_experiment_runs_resumes_votes_and_routes() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("lantern.db");
    let db = db.to_str().unwrap();
    let s = start(&["--db", db]);
    let (status, created) = post(&s, "/api/lab/experiments", &spec()).await;
    assert_eq!(status, 201, "{created}");
    let (status, _) = post(&s, "/api/lab/experiments", &spec()).await;
    assert_eq!(status, 400, "names are unique");
    let mut bad = spec();
    bad["name"] = json!("other");
    bad["variants"][1]["model"] = json!("not-installed");
    assert_eq!(post(&s, "/api/lab/experiments", &bad).await.0, 400);

    // Start, stop after the first rows, and kill the server.
    let (_, started) = post(&s, "/api/lab/experiments/sampling/run", &json!({})).await;
    let job = started["job"].as_u64().unwrap();
    loop {
        let e = get_json(&s, "/api/lab/experiments/sampling").await;
        if e["progress"]["done"].as_u64().unwrap() >= 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    s.client()
        .delete(format!("{}/api/jobs/{job}", s.base))
        .send()
        .await
        .unwrap();
    assert_eq!(wait_job(&s, job).await["state"], "cancelled");
    drop(s);

    let s = start(&["--db", db]);
    let before = get_json(&s, "/api/lab/experiments/sampling").await;
    let done_before = before["progress"]["done"].as_u64().unwrap();
    assert!((2..8).contains(&done_before), "{}", before["progress"]);
    let (_, started) = post(&s, "/api/lab/experiments/sampling/run", &json!({})).await;
    let finished = wait_job(&s, started["job"].as_u64().unwrap()).await;
    assert_eq!(finished["state"], "done", "{finished}");
    let after = get_json(&s, "/api/lab/experiments/sampling").await;
    assert_eq!(after["progress"], json!({"done": 8, "total": 8}));
    // Rows finished before the restart are the same rows (same output, same timings).
    for row in before["rows"].as_array().unwrap() {
        assert!(
            after["rows"].as_array().unwrap().contains(row),
            "redone: {row}"
        );
    }
    let summary = &after["summary"];
    assert_eq!(summary["reference"], "greedy");
    let greedy = &summary["variants"][0];
    assert_eq!(greedy["rows"], 4);
    assert!((greedy["similarity"]["mean"].as_f64().unwrap() - 1.0).abs() < 1e-6);
    let warm = &summary["variants"][1];
    let sim = &warm["similarity"];
    assert!(
        sim["low"].as_f64() <= sim["mean"].as_f64() && sim["mean"].as_f64() <= sim["high"].as_f64()
    );
    assert!(summary["pairs"][0]["similarity_p"].as_f64().unwrap() > 0.0);

    // Exported as CSV: a header and one line per row.
    let csv = s
        .get("/api/lab/experiments/sampling?format=csv")
        .await
        .text()
        .await
        .unwrap();
    assert!(
        csv.starts_with("experiment,prompt_index,prompt,variant,"),
        "{csv}"
    );
    assert_eq!(
        csv.lines().filter(|l| l.starts_with("sampling,")).count(),
        8,
        "{csv}"
    );

    // A blind vote: names hidden in the pair, revealed once voted; a pair is used once.
    let pair = get_json(&s, "/api/lab/experiments/sampling/pair").await;
    assert!(pair["a"].is_string() && pair["b"].is_string() && pair.get("variants").is_none());
    assert!(!pair.to_string().contains("greedy") && !pair.to_string().contains("warm"));
    let body = json!({"pair": pair["pair"], "winner": "a"});
    let (status, voted) = post(&s, "/api/lab/experiments/sampling/votes", &body).await;
    assert_eq!(status, 200, "{voted}");
    assert!(["greedy", "warm"].contains(&voted["recorded"]["a"].as_str().unwrap()));
    assert_eq!(
        post(&s, "/api/lab/experiments/sampling/votes", &body)
            .await
            .0,
        400
    );
    let after = get_json(&s, "/api/lab/experiments/sampling").await;
    assert_eq!(after["votes"], 1);
    let wins: u64 = after["summary"]["pairs"][0]["a_wins"].as_u64().unwrap()
        + after["summary"]["pairs"][0]["b_wins"].as_u64().unwrap();
    assert_eq!(wins, 1);

    // Traffic under experiment:NAME: a session stays on its variant, and the log says which.
    for _ in 0..2 {
        let r = reqwest::Client::new()
            .post(format!("{}/v1/chat/completions", s.base))
            .header("x-session-id", "routed-1")
            .json(&json!({"model": "experiment:sampling", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let log = loop {
        let d = get_json(&s, "/api/sessions/routed-1").await;
        if d["total"] == 2 {
            break d;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let variants: Vec<&str> = log["requests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["variant"].as_str().unwrap())
        .collect();
    assert_eq!(variants.len(), 2, "{log}");
    assert_eq!(variants[0], variants[1]);
    assert!(variants[0].starts_with("sampling/"), "{variants:?}");
    let (status, _) = post(
        &s,
        "/v1/chat/completions",
        &json!({"model": "experiment:nope", "messages": [{"role": "user", "content": "Hi"}]}),
    )
    .await;
    assert_eq!(status, 404);
}
