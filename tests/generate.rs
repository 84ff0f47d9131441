//! Generation on the default model: streaming text never splits a character, stop strings end
//! the reply before them, and limits are honoured.

mod common;

use lantern::engine::generate::{generate, Event, FinishReason, GenerateRequest};
use lantern::engine::sampler::SamplingParams;
use lantern::engine::stops::StreamDecoder;
use lantern::engine::template::ChatMessage;

fn run(request: &GenerateRequest) -> (String, Vec<String>, FinishReason, usize) {
    let model = common::smollm2();
    let mut pieces = Vec::new();
    let stats = generate(model, request, |e| {
        if let Event::Text(t) = e {
            pieces.push(t.to_string())
        }
    })
    .unwrap();
    (
        pieces.concat(),
        pieces,
        stats.finish_reason,
        stats.completion_tokens,
    )
}

fn chat(prompt: &str) -> Vec<u32> {
    common::smollm2()
        .chat_prompt(&[ChatMessage::new("user", prompt)])
        .unwrap()
}

#[test]
fn the_stream_decoder_never_splits_a_character() {
    let tok = &common::smollm2().tokenizer;
    let text = "Zürich café 東京 🚀🌍 naïve — ok";
    let ids = tok.encode_plain(text).unwrap();
    assert!(ids.len() > 10);
    let mut decoder = StreamDecoder::new(tok.tokenizer.clone());
    let mut out = String::new();
    for id in ids {
        if let Some(piece) = decoder.push(id) {
            assert!(!piece.contains('\u{FFFD}'), "{piece:?}");
            out.push_str(&piece);
        }
    }
    out.push_str(&decoder.finish());
    assert_eq!(out, text);
}

#[test]
fn a_stop_string_ends_the_reply_before_it() {
    let greedy = GenerateRequest {
        prompt: chat("Why is the sky blue?"),
        max_tokens: 40,
        sampling: SamplingParams::greedy(),
        stop: Vec::new(),
    };
    let (full, _, _, _) = run(&greedy);
    let cut = full.find("light").expect("the answer mentions light");
    let (text, _, finish, _) = run(&GenerateRequest {
        stop: vec!["light".into()],
        ..greedy
    });
    assert_eq!(finish, FinishReason::Stop);
    assert_eq!(text, full[..cut]);
}

#[test]
fn max_tokens_is_a_length_finish() {
    let (text, pieces, finish, n) = run(&GenerateRequest {
        prompt: chat("Count from one to fifty."),
        max_tokens: 7,
        sampling: SamplingParams::greedy(),
        stop: Vec::new(),
    });
    assert_eq!((finish, n), (FinishReason::Length, 7));
    assert!(!text.is_empty() && pieces.len() <= 7);
}

#[test]
fn eos_ends_a_short_answer() {
    let (text, _, finish, n) = run(&GenerateRequest {
        prompt: chat("Reply with one word: yes or no. Is water wet?"),
        max_tokens: 64,
        sampling: SamplingParams::greedy(),
        stop: Vec::new(),
    });
    assert_eq!(finish, FinishReason::Stop, "{text:?}");
    assert!(n < 64 && !text.contains("<|im_end|>"), "{text:?}");
}
