//! The lab on the real default model: quantize into variants that load and generate, measure
//! their drift from the source, through the CLI and as jobs over HTTP.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::server::{get_json, post, start, wait_job};
use serde_json::{json, Value};

/// A data directory holding only the default model (linked), so variants are written there and
/// not beside the user's models.
fn home() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let src = common::model_path("smollm2");
    let models = dir.path().join("models/smollm2");
    std::fs::create_dir_all(&models).unwrap();
    std::os::unix::fs::symlink(&src, models.join(src.file_name().unwrap())).unwrap();
    let path = dir.path().to_path_buf();
    (dir, path)
}

fn lantern(home: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_lantern"));
    c.env("LANTERN_HOME", home);
    c
}

fn ok(c: &mut Command) -> String {
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn every_target_type_round_trips_and_q8_0_drifts_less_than_q4_0() {
    let (_dir, home) = home();
    let targets = ["q8_0", "q6_k", "q5_k", "q5_0", "q4_k", "q4_1", "q4_0"];
    let out = ok(lantern(&home).args(["quantize", "smollm2", "--to", &targets.join(",")]));
    for t in targets {
        let variant = format!("smollm2-{t}");
        assert!(out.contains(&format!("{variant}: ")), "{out}");
        let answer = ok(lantern(&home).args([
            "run",
            &variant,
            "Name a colour.",
            "--max-tokens",
            "8",
            "--temperature",
            "0",
        ]));
        assert!(!answer.trim().is_empty(), "{variant} generated nothing");
    }
    // The variant list shows them; the source is named in each file.
    let models = ok(lantern(&home).args(["models", "--json"]));
    let models: Value = serde_json::from_str(&models).unwrap();
    assert_eq!(models.as_array().unwrap().len(), 1 + targets.len());

    let quality = |variant: &str| -> Value {
        let out = ok(lantern(&home).args([
            "quality",
            "smollm2",
            variant,
            "--limit",
            "4",
            "--max-tokens",
            "16",
            "--json",
        ]));
        serde_json::from_str(&out).unwrap()
    };
    let itself = quality("smollm2");
    assert_eq!(itself["kl_mean"], 0.0);
    assert_eq!(itself["top1_agreement"], 1.0);
    assert_eq!(itself["perplexity_variant"], itself["perplexity_reference"]);
    let (q8, q4) = (quality("smollm2-q8_0"), quality("smollm2-q4_0"));
    let kl = |r: &Value| r["kl_mean"].as_f64().unwrap();
    assert!(kl(&q8) > 0.0 && kl(&q8) < kl(&q4), "q8_0 {q8} / q4_0 {q4}");
    assert!(q8["top1_agreement"].as_f64() >= q4["top1_agreement"].as_f64());
}

#[tokio::test]
async fn quantize_and_measure_as_jobs_over_http() {
    let (_dir, home) = home();
    let s = start(&["--home", home.to_str().unwrap()]);
    let (status, started) =
        post(&s, "/api/models/smollm2/quantize", &json!({"to": ["q8_0"]})).await;
    assert_eq!(status, 202, "{started}");
    let job = wait_job(&s, started["job"].as_u64().unwrap()).await;
    assert_eq!(job["state"], "done", "{job}");
    let report = &job["result"]["variants"][0]["report"];
    assert_eq!(report["target"], "Q8_0");
    assert!(report["warning"]
        .as_str()
        .unwrap()
        .contains("itself quantized (Q4_1)"));

    // The variant is served like any model.
    let models = get_json(&s, "/v1/models").await;
    assert!(models.to_string().contains("\"smollm2-q8_0\""), "{models}");
    let (status, answer) = post(
        &s,
        "/v1/chat/completions",
        &json!({"model": "smollm2-q8_0", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}),
    )
    .await;
    assert_eq!(status, 200, "{answer}");

    let (status, started) = post(
        &s,
        "/api/lab/quality",
        &json!({"reference": "smollm2", "variant": "smollm2-q8_0", "prompts": ["Say hi.", "Count to three."], "max_tokens": 8}),
    )
    .await;
    assert_eq!(status, 202, "{started}");
    let job = wait_job(&s, started["job"].as_u64().unwrap()).await;
    assert_eq!(job["state"], "done", "{job}");
    assert_eq!(job["result"]["prompts"], 2);
    let runs = get_json(&s, "/api/lab/quality").await;
    assert_eq!(runs["runs"][0]["variant"], "smollm2-q8_0");
    assert!(
        runs["runs"][0]["report"]["top1_agreement"]
            .as_f64()
            .unwrap()
            > 0.5
    );
    let csv = s
        .get("/api/lab/quality?format=csv")
        .await
        .text()
        .await
        .unwrap();
    assert!(
        csv.starts_with("id,finished_at,reference,variant,"),
        "{csv}"
    );
    assert!(
        csv.lines().nth(1).unwrap().contains(",smollm2-q8_0,"),
        "{csv}"
    );

    // The variant loads, unloads and is deleted on request; the served default model is not.
    let (status, loaded) = post(&s, "/api/models/smollm2-q8_0/load", &json!({})).await;
    assert_eq!(
        (status, loaded["loaded"].as_bool()),
        (200, Some(true)),
        "{loaded}"
    );
    assert!(common::server::engine_of(&s, "smollm2-q8_0")
        .await
        .is_some());
    let (_, unloaded) = post(&s, "/api/models/smollm2-q8_0/unload", &json!({})).await;
    assert_eq!(unloaded["unloaded"], true);
    let (_, again) = post(&s, "/api/models/smollm2-q8_0/unload", &json!({})).await;
    assert_eq!(again["unloaded"], false);
    let client = s.client();
    let delete = |id: &str| client.delete(format!("{}/api/models/{id}", s.base)).send();
    assert_eq!(delete("smollm2-q8_0").await.unwrap().status(), 200);
    assert!(!home.join("models/smollm2-q8_0").exists());
    assert!(!get_json(&s, "/v1/models")
        .await
        .to_string()
        .contains("\"smollm2-q8_0\""));
    assert_eq!(delete("smollm2").await.unwrap().status(), 409);
    assert_eq!(delete("nope").await.unwrap().status(), 404);
    assert!(
        common::model_path("smollm2").exists(),
        "the source is untouched"
    );

    for (path, body, code) in [
        ("/api/models/smollm2/quantize", json!({"to": ["q9_9"]}), 400),
        ("/api/models/nope/quantize", json!({"to": ["q8_0"]}), 404),
        (
            "/api/lab/quality",
            json!({"reference": "smollm2", "variant": "smollm2-q8_0", "jsonl": "{\"q\": 1}"}),
            400,
        ),
    ] {
        let (status, err) = post(&s, path, &body).await;
        assert_eq!(status, code, "{path}: {err}");
        assert!(err["error"]["message"].is_string());
    }
}
