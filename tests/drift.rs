//! Drift and consistency monitors against the real server: a model's probe answers are compared
//! with its first run's, so a model swapped under the same name raises the `drift` alert; a
//! session whose answers change raises the `consistency` alert, and its answers chart as
//! distributions over time.

mod common;

use common::server::{get_json, start, Server};
use serde_json::{json, Value};

async fn alerts_until(s: &Server, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    for _ in 0..300 {
        let a = get_json(s, "/api/alerts").await;
        if pred(&a) {
            return a;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    panic!("{what}: {}", get_json(s, "/api/alerts").await);
}

fn active(alerts: &Value, rule: &str, subject: &str) -> bool {
    alerts["active"]
        .as_array()
        .unwrap()
        .iter()
        .any(|a| a["rule"] == rule && a["subject"] == subject)
}

async fn probe(s: &Server, model: &str) -> Value {
    let r = s
        .client()
        .post(format!("{}/api/monitor/drift/{model}", s.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

/// `models/probe/` holding the named installed model's GGUF (linked, with its checksum).
fn install_as_probe(home: &std::path::Path, from: &str) {
    let dir = home.join("models/probe");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let gguf = common::model_path(from);
    for file in [gguf.clone(), gguf.with_extension("gguf.sha256")] {
        if file.exists() {
            std::os::unix::fs::symlink(&file, dir.join(file.file_name().unwrap())).unwrap();
        }
    }
}

#[tokio::test]
async fn a_model_swapped_under_the_same_name_raises_the_drift_alert() {
    let home = common::server::data_dir();
    let dir = home.path().to_str().unwrap().to_string();
    install_as_probe(home.path(), "smollm2");
    let s = start(&["--home", &dir]);
    // Greedy answers of the same weights are the same: hold drift to near-identity.
    let mut settings = get_json(&s, "/api/monitor/settings").await;
    settings["alerts"]["drift_similarity"] = json!(0.97);
    let put = s
        .client()
        .put(format!("{}/api/monitor/settings", s.base))
        .json(&settings)
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 200, "{}", put.text().await.unwrap());

    let baseline = probe(&s, "probe").await;
    assert_eq!(baseline["answers"].as_array().unwrap().len(), 8);
    assert!(
        baseline["similarity"].is_null(),
        "the first run is the baseline"
    );
    assert!(baseline["answers"][0]["answer"].as_str().unwrap().len() > 3);
    let same = probe(&s, "probe").await;
    assert!(same["similarity"].as_f64().unwrap() > 0.99, "{same}");
    assert!((same["length_ratio"].as_f64().unwrap() - 1.0).abs() < 1e-9);
    assert_eq!(same["drifted"], false);
    assert!(!active(
        &get_json(&s, "/api/alerts").await,
        "drift",
        "probe"
    ));
    drop(s);

    // Another model's file under the same name.
    install_as_probe(home.path(), "gemma3");
    let s = start(&["--home", &dir]);
    let swapped = probe(&s, "probe").await;
    assert_eq!(swapped["drifted"], true, "{swapped}");
    assert!(swapped["similarity"].as_f64().unwrap() < 0.97);
    assert_ne!(swapped["weights_sha256"], baseline["weights_sha256"]);
    let alerts = alerts_until(&s, "the drift alert", |a| active(a, "drift", "probe")).await;
    let alert = alerts["active"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["rule"] == "drift")
        .unwrap()
        .clone();
    assert!(alert["message"]
        .as_str()
        .unwrap()
        .contains("probe answers drifted"));
    let runs = get_json(&s, "/api/monitor/drift?model=probe").await;
    assert_eq!(runs["runs"].as_array().unwrap().len(), 3);
    assert_eq!(runs["probes"].as_array().unwrap().len(), 8);

    // Forgetting the runs resolves the alert; the next run is a new baseline.
    let forgot = s
        .client()
        .delete(format!("{}/api/monitor/drift/probe", s.base))
        .send()
        .await
        .unwrap();
    assert_eq!(forgot.status(), 200);
    assert!(!active(
        &get_json(&s, "/api/alerts").await,
        "drift",
        "probe"
    ));
    assert!(probe(&s, "probe").await["similarity"].is_null());
}

async fn ask(s: &Server, session: &str, prompt: &str, max_tokens: u64) {
    let r = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", s.base))
        .header("x-session-id", session)
        .json(&json!({
            "model": "smollm2",
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": max_tokens,
            "temperature": 0,
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn a_session_whose_answers_change_raises_the_consistency_alert() {
    let s = start(&[]);
    let topics = [
        "the ocean",
        "mountains",
        "a forest",
        "the city",
        "winter",
        "a river",
        "the desert",
        "a library",
        "the moon",
        "a garden",
        "a storm",
        "the harbour",
    ];
    for t in topics {
        ask(&s, "steady", &format!("Write a paragraph about {t}."), 32).await;
    }
    // The worker measures answers as they finish: wait for all twelve.
    let mut points = Value::Null;
    for _ in 0..300 {
        points = get_json(&s, "/api/monitor/consistency?session=steady").await;
        if points["answers"] == 12 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert_eq!(points["answers"], 12, "{points}");
    let buckets = points["buckets"].as_array().unwrap();
    assert_eq!(buckets.len(), 24);
    let last = buckets.last().unwrap();
    assert_eq!(last["n"], 12);
    assert!(last["tokens"]["p50"].as_f64().unwrap() >= 20.0, "{last}");
    let similarity = last["similarity"]["p50"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&similarity), "{last}");
    assert_eq!(points["sessions"], json!(["steady"]));
    assert!(!active(
        &get_json(&s, "/api/alerts").await,
        "consistency",
        "steady"
    ));

    // The same session's answers turn terse.
    for t in &topics[..5] {
        ask(&s, "steady", &format!("Write a paragraph about {t}."), 2).await;
    }
    let alerts = alerts_until(&s, "the consistency alert", |a| {
        active(a, "consistency", "steady")
    })
    .await;
    let alert = alerts["active"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["rule"] == "consistency")
        .unwrap()
        .clone();
    assert!(
        alert["message"].as_str().unwrap().contains("tokens"),
        "{alert}"
    );
}
