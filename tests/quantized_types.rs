//! Every weight type Lantern's kernels cover, end to end against llama.cpp: SmolLM2 requantized
//! by `lantern quantize` to each type (the very files the reference was made from: the sha256
//! is checked) loads; with llama.cpp's tokens fed back, the top choice agrees wherever llama.cpp
//! is decisive (top-2 margin ≥ 0.3) and its log-probability stays close; greedy text equals
//! llama.cpp's up to its first position under that margin
//! (`tests/fixtures/make_types_reference.py` made the reference). A position llama-server
//! withholds probabilities for (its token ends inside a UTF-8 character) is `null` and skipped.

mod common;

use common::ids;

use candle_core::Device;
use lantern::engine::generate::{generate, Event, GenerateRequest};
use lantern::engine::quant::{parse_target, requantize};
use lantern::engine::sampler::{argmax, log_softmax, SamplingParams};
use lantern::ChatModel;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// A top-2 margin under this is a near-tie two correct engines may break either way.
const DECISIVE: f64 = 0.3;

/// Types held to a looser bound, as no exact computation does better on this file: at Q2_K,
/// SmolLM2's tokens flip with rounding near float32's own (1e-6 relative noise on the matmul
/// outputs moves llama.cpp's maths from 43 to 40-42 of 44 decisive tokens, and llama.cpp flips
/// a position by batching alone). The float64 pass (`fixtures/exact_forward.py`) agrees with
/// llama.cpp on 41 of 44 decisive tokens, mean |Δ logprob| 0.147; Lantern's Q2_K unpacking and
/// dot products equal ggml's formulas and gguf-py's dequantizer on every `ffn_down` tensor to
/// float32 accumulation error. So these are held where the float64 pass stands: at least 90%
/// of decisive tokens and a mean within 0.15, and their greedy text is not compared.
const NEAR_CHAOTIC: [&str; 1] = ["q2_k"];

#[test]
fn every_quantized_type_agrees_with_llama_cpp() {
    let path = common::reference_dir().join("quantized_types_llamacpp.json");
    let fixture: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let source = common::model_path("smollm2");
    let dir = tempfile::tempdir().unwrap();
    let mut rates = Vec::new();
    for entry in fixture["types"].as_array().unwrap() {
        let name = entry["type"].as_str().unwrap();
        let file = dir.path().join(entry["file"].as_str().unwrap());
        requantize(&source, &file, parse_target(name).unwrap(), &mut |_, _| {
            true
        })
        .unwrap();
        let sha = format!("{:x}", Sha256::digest(std::fs::read(&file).unwrap()));
        assert_eq!(
            sha, entry["sha256"],
            "{name}: lantern quantize wrote another file"
        );
        let model = ChatModel::load(&file, &Device::Cpu).unwrap();
        let (mut agree, mut decisive, mut sum, mut n) = (0, 0, 0f64, 0);
        for c in entry["completions"].as_array().unwrap() {
            let prompt = ids(&c["prompt_ids"]);
            let greedy = ids(&c["greedy_ids"]);
            let top2 = c["top2_logprobs"].as_array().unwrap();
            // None where the reference withholds the position.
            let margin = |i: usize| {
                top2[i]
                    .as_array()
                    .map(|t| t[0][1].as_f64().unwrap() - t[1][1].as_f64().unwrap())
            };
            let stable = (0..greedy.len())
                .find(|&i| margin(i).is_none_or(|m| m < DECISIVE))
                .unwrap_or(greedy.len());
            if stable > 0 && !NEAR_CHAOTIC.contains(&name) {
                let request = GenerateRequest {
                    prompt: prompt.clone(),
                    max_tokens: stable,
                    sampling: SamplingParams::greedy(),
                    stop: Vec::new(),
                };
                let mut tokens = Vec::new();
                generate(&model, &request, |e| {
                    if let Event::Token(s) = e {
                        tokens.push(s.token)
                    }
                })
                .unwrap();
                assert_eq!(
                    tokens,
                    greedy[..stable],
                    "{name}: {:?} → llama.cpp {:?}",
                    c["prompt"],
                    c["greedy_text"]
                );
            }
            let rows = common::forced_logits(&model.transformer, &prompt, &greedy);
            for (i, row) in rows.iter().enumerate() {
                let Some(m) = margin(i) else { continue };
                let best = top2[i][0][0].as_u64().unwrap() as u32;
                sum += (log_softmax(row)[best as usize] as f64 - top2[i][0][1].as_f64().unwrap())
                    .abs();
                n += 1;
                if m >= DECISIVE {
                    decisive += 1;
                    agree += usize::from(argmax(row) == best);
                }
            }
        }
        let mean = sum / n as f64;
        eprintln!("{name}: top-1 {agree}/{decisive} where llama.cpp is decisive; mean |Δ logprob| {mean:.4} over {n}");
        rates.push((name.to_string(), agree, decisive, mean));
    }
    for (name, agree, decisive, mean) in &rates {
        if NEAR_CHAOTIC.contains(&name.as_str()) {
            assert!(
                *agree as f64 >= 0.9 * *decisive as f64,
                "{name}: top-1 {agree}/{decisive} where llama.cpp is decisive"
            );
            assert!(*mean <= 0.15, "{name}: mean |Δ logprob| {mean}");
            continue;
        }
        assert!(
            *agree == *decisive,
            "{name}: top-1 {agree}/{decisive} where llama.cpp is decisive"
        );
        assert!(*mean <= 0.1, "{name}: mean |Δ logprob| {mean}");
    }
}
