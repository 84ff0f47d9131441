//! The q8_0 KV cache (`--kv-type q8_0`): what it costs in the quality lab against the f16 cache,
//! and served: about half the bytes per token, answers unchanged by prompt lookup, batching or
//! prefix reuse.

mod common;

use std::process::Command;

use common::server::{chat, engine_of, post, start};
use futures_util::future::join_all;
use serde_json::{json, Value};

fn quality(model: &str, variant_kv: &str) -> Value {
    let home = common::server::data_dir();
    let out = Command::new(env!("CARGO_BIN_EXE_lantern"))
        .env("LANTERN_HOME", home.path())
        .args([
            "quality",
            model,
            model,
            "--variant-kv-type",
            variant_kv,
            "--limit",
            "4",
            "--max-tokens",
            "24",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn the_lab_measures_what_the_q8_0_cache_costs() {
    for model in ["smollm2", "gemma3"] {
        let same = quality(model, "f16");
        assert_eq!(same["kl_mean"], 0.0, "{same}");
        let q8 = quality(model, "q8_0");
        assert_eq!(q8["variant"], format!("{model} (KV q8_0)"), "{q8}");
        let kl = q8["kl_mean"].as_f64().unwrap();
        let top1 = q8["top1_agreement"].as_f64().unwrap();
        // Rounding keys and values to 8 bits moves the distributions a little, never a lot.
        assert!(kl > 0.0 && kl < 0.02, "{model}: {q8}");
        assert!(top1 >= 0.9, "{model}: {q8}");
    }
}

fn requests() -> Vec<Value> {
    [
        "Repeat this list exactly: apples, pears, plums, apples, pears, plums, figs.",
        "Write a short story about a lighthouse.",
        "What is the capital of France?",
    ]
    .iter()
    .map(|p| chat(p, json!({"temperature": 0, "max_tokens": 48})))
    .collect()
}

async fn answers(s: &common::server::Server, bodies: &[Value]) -> Vec<String> {
    let replies = join_all(bodies.iter().map(|b| post(s, "/v1/chat/completions", b))).await;
    replies
        .into_iter()
        .map(|(status, r)| {
            assert_eq!(status, 200, "{r}");
            r["choices"][0]["message"]["content"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect()
}

#[tokio::test]
async fn a_q8_0_cache_serves_in_half_the_bytes_with_the_same_answers_however_batched() {
    let off = ["--response-cache-mib", "0"];
    let f16 = start(&off);
    let q8 = start(&[&off[..], &["--kv-type", "q8_0"]].concat());
    let plain = start(&[&off[..], &["--kv-type", "q8_0", "--prompt-lookup", "false"]].concat());
    let bodies = requests();
    // One at a time without drafts: the reference answers of the q8_0 cache.
    let mut alone = Vec::new();
    for b in &bodies {
        alone.extend(answers(&plain, std::slice::from_ref(b)).await);
    }
    assert!(alone.iter().all(|a| !a.trim().is_empty()), "{alone:?}");
    // With drafts, batched, and again (the prompts now come from the prefix cache).
    for round in 0..2 {
        assert_eq!(answers(&q8, &bodies).await, alone, "round {round}");
    }
    let (q8_figures, f16_figures) = (
        engine_of(&q8, "smollm2").await.unwrap(),
        engine_of(&f16, "smollm2").await.unwrap(),
    );
    assert_eq!(q8_figures["kv_type"], "q8_0", "{q8_figures}");
    assert_eq!(f16_figures["kv_type"], "f16", "{f16_figures}");
    assert!(
        q8_figures["drafted_tokens"].as_u64().unwrap() > 0,
        "{q8_figures}"
    );
    // The same MiB hold 2 / (34 / 32) times the positions.
    let budget = |f: &Value| f["kv_tokens_budget"].as_f64().unwrap();
    let ratio = budget(&q8_figures) / budget(&f16_figures);
    assert!((ratio - 64.0 / 34.0).abs() < 0.01, "{ratio}");
    // The f16 server answers too; its answers may differ from the q8_0 ones by rounding.
    assert_eq!(answers(&f16, &bodies).await.len(), bodies.len());
}
