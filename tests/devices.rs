//! Devices and benchmarks through the CLI and the HTTP API, on the CPU.

mod common;

use std::process::Command;

use common::server::{get_json, post, start, wait_job};
use serde_json::{json, Value};

/// Benchmarks here run one at a time: a ceiling measured while another test computes would be
/// too low, and the roofline fraction is held to at most 1.
static ALONE: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn alone() -> std::sync::MutexGuard<'static, ()> {
    ALONE.lock().unwrap_or_else(|e| e.into_inner())
}

fn lantern() -> Command {
    let home = common::model_path("smollm2");
    let home = home.parent().unwrap().parent().unwrap().parent().unwrap();
    let mut c = Command::new(env!("CARGO_BIN_EXE_lantern"));
    c.env("LANTERN_HOME", home);
    c
}

#[test]
fn the_inventory_lists_the_cpu_and_says_why_there_is_no_gpu() {
    let out = lantern().args(["devices", "--json"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let inv: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(inv["cpu"]["threads"].as_u64().unwrap() >= 1);
    assert!(inv["cpu"]["memory_total_bytes"].as_u64().unwrap() > 0);
    let listed = inv["gpus"]["nvidia"]["gpus"]
        .as_array()
        .map_or(0, |g| g.len());
    if listed == 0 {
        assert!(inv["gpus"]["nvidia_unavailable"].is_string(), "{inv}");
    }
}

#[test]
fn a_cli_benchmark_of_the_default_model_is_sane_and_stored() {
    let _alone = alone();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("b.db");
    // A CUDA request on a machine without CUDA runs on the CPU and says so.
    let out = lantern()
        .args([
            "--device", "cuda:0", "bench", "smollm2", "--quick", "--output", "json", "--db",
        ])
        .arg(&db)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    if !lantern::devices::inventory::backends().cuda {
        assert!(stderr.contains("using the CPU"), "{stderr}");
        assert!(r["device_note"].as_str().unwrap().contains("using the CPU"));
        assert_eq!(r["device"], "cpu");
    }
    assert_eq!(r["model"]["quantization"], "Q4_1");
    assert!(r["id"].as_i64().unwrap() >= 1);
    assert_eq!(r["speeds"].as_array().unwrap().len(), 4);
    for s in r["speeds"].as_array().unwrap() {
        let tps = s["tokens_per_second"]["mean"].as_f64().unwrap();
        let fraction = s["roofline_fraction"].as_f64().unwrap();
        assert!(tps > 0.0 && fraction > 0.0 && fraction <= 1.0, "{s}");
    }
    assert!(r["peak_rss_bytes"].as_u64().unwrap() > 50 << 20);
    // A second run lands in the same history.
    let out = lantern()
        .args([
            "bench",
            "synthetic:tiny",
            "--quick",
            "--quantization",
            "q8_0",
            "--db",
        ])
        .arg(&db)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(
        table.starts_with("| model | size | params | backend |"),
        "{table}"
    );
    assert!(
        table.contains("| pp64 |") && table.contains("| tg16 |"),
        "{table}"
    );
}

/// A mixed-type file (Gemma 3's Q4_K_M: Q8_0, Q5_0, Q4_K and Q6_K tensors): the compute
/// ceiling is measured per weight type with the kernel each really runs, and no test reaches
/// more than its ceiling.
#[test]
fn a_mixed_type_model_is_held_to_ceilings_of_its_own_kernels() {
    let _alone = alone();
    let out = lantern()
        .args([
            "bench",
            "gemma3",
            "--quick",
            "--output",
            "json",
            "--no-store",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    let types: Vec<&str> = r["ceilings"]["matmul_by_type"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["dtype"].as_str().unwrap())
        .collect();
    for t in ["Q8_0", "Q5_0", "Q4_K", "Q6_K"] {
        assert!(types.contains(&t), "{t} missing from {types:?}");
    }
    for t in r["ceilings"]["matmul_by_type"].as_array().unwrap() {
        assert!(t["flops_per_s"].as_f64().unwrap() > 1e9, "{t}");
    }
    for s in r["speeds"].as_array().unwrap() {
        let fraction = s["roofline_fraction"].as_f64().unwrap();
        assert!(fraction > 0.0 && fraction <= 1.0, "{s}");
    }
}

/// `lantern bench --speculative`: every setting answers alike (the command fails otherwise), and
/// the figures say who drafted what.
#[test]
fn a_speculative_benchmark_compares_every_setting_on_the_same_answers() {
    let _alone = alone();
    let out = lantern()
        .args([
            "bench",
            "smollm2",
            "--speculative",
            "--draft",
            "smollm2",
            "--quick",
            "--n-gen",
            "48",
            "--output",
            "json",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["draft"], "smollm2", "{r}");
    let rows = r["rows"].as_array().unwrap();
    let settings = ["plain", "prompt lookup", "draft model", "both"];
    assert_eq!(rows.len(), 2 * settings.len(), "{r}");
    for row in rows {
        let (drafted, accepted) = (
            row["drafted_tokens"].as_u64().unwrap(),
            row["accepted_tokens"].as_u64().unwrap(),
        );
        assert!(accepted <= drafted, "{row}");
        assert!(row["tok_s"].as_f64().unwrap() > 0.0, "{row}");
        assert!(
            settings.contains(&row["setting"].as_str().unwrap()),
            "{row}"
        );
        if row["setting"] == "plain" {
            assert_eq!(
                (drafted, row["speedup"].as_f64().unwrap()),
                (0, 1.0),
                "{row}"
            );
        }
    }
    // The code edit's answer repeats its prompt: prompt lookup drafts there.
    let lookup = rows
        .iter()
        .find(|row| row["prompt"] == "code edit" && row["setting"] == "prompt lookup")
        .unwrap();
    assert!(lookup["accepted_tokens"].as_u64().unwrap() > 0, "{lookup}");
    let refused = lantern()
        .args([
            "bench",
            "smollm2",
            "--speculative",
            "--draft",
            "gemma3",
            "--quick",
        ])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("tokenizer"), "{stderr}");
}

// Each test has its own runtime: the lock only keeps the tests from overlapping.
#[allow(clippy::await_holding_lock)]
#[tokio::test]
async fn benchmarks_run_as_jobs_are_stored_exported_and_compared() {
    let _alone = alone();
    let s = start(&[]);
    let inv = get_json(&s, "/api/devices").await;
    assert!(inv["cpu"]["simd"].is_array(), "{inv}");

    let mut ids = Vec::new();
    for body in [
        json!({"model": "synthetic:tiny", "quantization": "q4_0", "quick": true}),
        json!({"model": "smollm2", "quick": true, "batches": [2]}),
    ] {
        let (status, started) = post(&s, "/api/bench", &body).await;
        assert_eq!(status, 202, "{started}");
        let job = wait_job(&s, started["job"].as_u64().unwrap()).await;
        assert_eq!(job["state"], "done", "{job}");
        assert_eq!(job["progress"], 1.0);
        ids.push(job["result"]["id"].as_i64().unwrap());
    }
    let history = get_json(&s, "/api/bench").await;
    let runs = history["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2);
    assert_eq!(runs[0]["model"], "smollm2");
    assert_eq!(runs[1]["quantization"], "Q4_0");
    let one = get_json(&s, &format!("/api/bench/{}", ids[1])).await;
    let tests: Vec<&str> = one["result"]["speeds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["test"].as_str().unwrap())
        .collect();
    assert_eq!(tests, ["pp64", "tg16", "tg8@b2"]);
    for s in one["result"]["speeds"].as_array().unwrap() {
        let fraction = s["roofline_fraction"].as_f64().unwrap();
        assert!(fraction > 0.0 && fraction <= 1.0, "{s}");
    }

    let compare = get_json(&s, &format!("/api/bench/compare?a={}&b={}", ids[0], ids[1])).await;
    let tg = compare["tests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["test"] == "tg16")
        .unwrap();
    let ratio =
        tg["b_tokens_per_second"].as_f64().unwrap() / tg["a_tokens_per_second"].as_f64().unwrap();
    assert!((tg["ratio"].as_f64().unwrap() - ratio).abs() < 1e-9);

    let csv = s.get("/api/bench?format=csv").await.text().await.unwrap();
    assert!(csv.starts_with("id,finished_at,model"), "{csv}");
    assert_eq!(csv.lines().count(), 1 + 3 + 4, "{csv}");

    // Bad requests are 400/404 in OpenAI's shape; a running job can be cancelled.
    for (body, param) in [
        (json!({"model": "synthetic:70b"}), "model"),
        (
            json!({"model": "synthetic:tiny", "quantization": "q9"}),
            "quantization",
        ),
        (
            json!({"model": "synthetic:tiny", "reps": 1, "colour": 1}),
            "",
        ),
    ] {
        let (status, err) = post(&s, "/api/bench", &body).await;
        assert_eq!(status, 400, "{err}");
        if !param.is_empty() {
            assert_eq!(err["error"]["param"], param);
        }
    }
    let (status, _) = post(&s, "/api/bench", &json!({"model": "nope"})).await;
    assert_eq!(status, 404);
    let (_, started) = post(&s, "/api/bench", &json!({"model": "smollm2", "reps": 50})).await;
    let id = started["job"].as_u64().unwrap();
    let r = s
        .client()
        .delete(format!("{}/api/jobs/{id}", s.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(wait_job(&s, id).await["state"], "cancelled");
    assert_eq!(
        get_json(&s, "/api/bench").await["runs"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
}
