//! Architectures proven against llama.cpp on tiny synthetic models (random weights, SmolLM2's
//! tokenizer): `tests/fixtures/make_arch_models.py` writes the same GGUF bytes on every run (the
//! test checks the sha256 the fixture recorded), and `tests/fixtures/architectures_llamacpp.json`
//! holds llama.cpp's top-5 log-probabilities on them (made by `make_arch_reference.py`). Teacher
//! forced through llama.cpp's greedy tokens, Lantern's top-1 must agree wherever llama.cpp's
//! margin is decisive, and the log-probability of its top token must stay close on average.
//! The models cover every architecture Lantern runs, mixture-of-experts ones included, in f32,
//! f16, Q8_0 and the K-quants (written ones requantized by `lantern quantize`'s code), with head
//! sizes, GQA ratios and layer counts varied. A position llama-server
//! withholds probabilities for (its token ends inside a UTF-8 character) is `null` and skipped;
//! the token ids themselves are all there. OLMo 2's and Qwen3-MoE's positions are also judged
//! against a float64 forward pass (`exact_top2`, `exact_forward.py`): held to the same bounds,
//! and against llama.cpp the mean bound widens by llama.cpp's own distance from that pass.
//!
//! The writer needs Python with the `gguf` package: `$LANTERN_PYTHON`, else `.venv/bin/python`
//! (`make test` installs it there), else `python3`.

mod common;

use lantern::engine::sampler::{argmax, log_softmax};
use serde_json::Value;

use common::ids;

/// A top-2 margin under this is a near-tie two correct engines may break either way.
const DECISIVE: f64 = 0.25;
const MEAN_LOGPROB_ERROR: f64 = 0.05;

/// (top-1 agreements, decisive positions, mean |Δ log-prob| of the reference's top token)
/// of Lantern's rows against a reference's ranked `[[id, logprob], ...]` per position (`null`
/// where the reference has none).
fn agreement(rows: &[Vec<f32>], reference: &[Value]) -> (usize, usize, f64) {
    let (mut agree, mut decisive, mut sum, mut judged) = (0, 0, 0f64, 0usize);
    for (row, top) in rows.iter().zip(reference) {
        if top.is_null() {
            continue;
        }
        judged += 1;
        let lp = |k: usize| top[k][1].as_f64().unwrap();
        let best = top[0][0].as_u64().unwrap() as usize;
        sum += (log_softmax(row)[best] as f64 - lp(0)).abs();
        if lp(0) - lp(1) >= DECISIVE {
            decisive += 1;
            agree += usize::from(argmax(row) as usize == best);
        }
    }
    (agree, decisive, sum / judged.max(1) as f64)
}

/// Mean |Δ log-prob| of llama.cpp's top-5 against the float64 pass's top token, where
/// llama.cpp's top 5 holds it.
fn reference_distance(llama: &[Value], exact: &[Value]) -> f64 {
    let (mut sum, mut n) = (0f64, 0usize);
    for (l, e) in llama.iter().zip(exact) {
        let (Some(l), Some(best)) = (l.as_array(), e[0].as_array()) else {
            continue;
        };
        if let Some(hit) = l.iter().find(|x| x[0] == best[0]) {
            sum += (hit[1].as_f64().unwrap() - best[1].as_f64().unwrap()).abs();
            n += 1;
        }
    }
    sum / n.max(1) as f64
}

#[test]
fn synthetic_models_of_each_architecture_agree_with_llama_cpp() {
    let fixture: Value = serde_json::from_str(
        &std::fs::read_to_string(common::reference_dir().join("architectures_llamacpp.json"))
            .unwrap(),
    )
    .unwrap();
    let dir = common::write_arch_models();
    let mut failures = Vec::new();
    for entry in fixture["models"].as_array().unwrap() {
        let name = entry["name"].as_str().unwrap();
        let model = common::arch_model(dir.path(), entry, &entry["sha256"]);
        let (mut llama, mut exact, mut llama_vs_exact) = (Vec::new(), Vec::new(), Vec::new());
        for c in entry["completions"].as_array().unwrap() {
            let greedy = ids(&c["greedy_ids"]);
            let rows = common::forced_logits(&model.transformer, &ids(&c["prompt_ids"]), &greedy);
            let top5 = c["top5_logprobs"].as_array().unwrap();
            llama.push(agreement(&rows, top5));
            if let Some(e) = c["exact_top2"].as_array() {
                exact.push(agreement(&rows, e));
                llama_vs_exact.push(reference_distance(top5, e));
            }
        }
        let total = |runs: &[(usize, usize, f64)]| {
            let n = runs.len().max(1) as f64;
            runs.iter()
                .fold((0, 0, 0.0), |(a, d, m), r| (a + r.0, d + r.1, m + r.2 / n))
        };
        let mut judged = vec![("llama.cpp", total(&llama))];
        if !exact.is_empty() {
            judged.push(("float64", total(&exact)));
        }
        // Where the float64 pass is there, llama.cpp's own distance from it widens the bound on
        // Lantern's distance from llama.cpp (their errors need not point the same way); the
        // float64 pass itself holds Lantern to the plain bound.
        let llama_error = llama_vs_exact.iter().sum::<f64>() / llama_vs_exact.len().max(1) as f64;
        if !llama_vs_exact.is_empty() {
            eprintln!("{name}: llama.cpp vs float64: mean |Δ logprob| {llama_error:.4}");
        }
        for (oracle, (agree, decisive, mean)) in judged {
            eprintln!("{name} vs {oracle}: top-1 {agree}/{decisive} where decisive; mean |Δ logprob| {mean:.4}");
            let bound = match oracle {
                "llama.cpp" => MEAN_LOGPROB_ERROR + llama_error,
                _ => MEAN_LOGPROB_ERROR,
            };
            if agree != decisive || mean > bound {
                failures.push(format!(
                    "{name} vs {oracle}: top-1 {agree}/{decisive}, mean |Δ| {mean:.4}"
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{failures:?}");
}
