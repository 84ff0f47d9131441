//! The second architecture: Gemma 3 270M answers a simple question in English and stops.

mod common;

use candle_core::Device;
use lantern::engine::generate::{generate, Event, FinishReason, GenerateRequest};
use lantern::engine::sampler::SamplingParams;
use lantern::engine::template::ChatMessage;
use lantern::ChatModel;

#[test]
fn gemma3_answers_coherently_and_stops() {
    let model = ChatModel::load(&common::model_path("gemma3"), &Device::Cpu).unwrap();
    assert_eq!(model.transformer.info.architecture, "gemma3");
    let prompt = model
        .chat_prompt(&[ChatMessage::new("user", "What is the capital of France?")])
        .unwrap();
    let request = GenerateRequest {
        prompt,
        max_tokens: 64,
        sampling: SamplingParams::greedy(),
        stop: Vec::new(),
    };
    let mut text = String::new();
    let stats = generate(&model, &request, |e| {
        if let Event::Text(t) = e {
            text.push_str(t)
        }
    })
    .unwrap();
    eprintln!("gemma3: {text:?} ({stats:?})");
    assert!(text.contains("Paris"), "{text:?}");
    assert_eq!(stats.finish_reason, FinishReason::Stop, "{text:?}");
    let words = text.split_whitespace().count();
    let ascii_letters = text.chars().filter(|c| c.is_ascii_alphabetic()).count();
    assert!(words >= 2 && ascii_letters * 2 > text.len(), "{text:?}");
}
