//! Constrained decoding on both tokenizer families (SmolLM2's byte-level BPE, Gemma 3's
//! SentencePiece): the grammar sees the tokens' true bytes, a schema's output parses and
//! validates, forced tool calls are well-formed, and a grammar cannot be broken by the sampler.

mod common;

use std::sync::OnceLock;

use candle_core::Device;
use lantern::engine::constrain::Grammar;
use lantern::ChatModel;
use serde_json::{json, Value};

fn gemma() -> &'static ChatModel {
    static MODEL: OnceLock<ChatModel> = OnceLock::new();
    MODEL.get_or_init(|| ChatModel::load(&common::model_path("gemma3"), &Device::Cpu).unwrap())
}

/// A text the grammar spells exactly, fed as the tokenizer splits it: every token's bytes must
/// be what the grammar expects, or the constraint refuses it.
fn walks_its_own_text(model: &ChatModel) {
    let text = "Hello, world!\n  Tabs\tand ünïcode — 日本語 {\"a\": [1, 2.5]}";
    let escaped: String = text
        .chars()
        .map(|c| match c {
            '\n' => "\\n".to_string(),
            '\t' => "\\t".to_string(),
            c if c.is_ascii_punctuation() || c == ' ' => format!("\\x{:02x}", c as u32),
            c => c.to_string(),
        })
        .collect();
    let mut constraint = model.constrain(&Grammar::Regex(escaped)).unwrap();
    let ids = model.tokenizer.encode_plain(text).unwrap();
    for (i, &id) in ids.iter().enumerate() {
        let mask = constraint.allowed().unwrap();
        assert!(mask.allows(id), "token {i} ({id}) refused");
        constraint.accept(id).unwrap();
    }
    assert!(constraint.is_finished() || constraint.allowed().unwrap().count() <= 4);
}

#[test]
fn token_bytes_are_right_for_byte_level_bpe() {
    walks_its_own_text(common::smollm2());
}

#[test]
fn token_bytes_are_right_for_sentencepiece() {
    walks_its_own_text(gemma());
}

#[test]
fn bad_grammars_are_errors_not_panics() {
    let model = common::smollm2();
    for g in [
        Grammar::Lark("start: %json {not json}".into()),
        Grammar::Lark("start: undefined_rule".into()),
        Grammar::Regex("(unclosed".into()),
        Grammar::JsonSchema {
            schema: json!({"type": "object", "properties": {"a": {"$ref": "#/missing"}}}),
            strict: true,
        },
        Grammar::JsonSchema {
            schema: json!({"type": "integer", "minimum": 5, "maximum": 1}),
            strict: true,
        },
    ] {
        let compiled = model.constrain(&g);
        assert!(compiled.is_err(), "{g:?} compiled");
    }
}

fn content(body: &Value) -> &str {
    body["choices"][0]["message"]["content"].as_str().unwrap()
}

#[tokio::test]
async fn gemma3_answers_in_schema_and_calls_tools() {
    let s = common::server::start(&[]);
    let schema = json!({
        "type": "object",
        "properties": {
            "city": {"type": "string", "maxLength": 30},
            "population": {"type": "integer", "minimum": 0, "maximum": 100000000},
            "coastal": {"type": "boolean"},
        },
        "required": ["city", "population", "coastal"],
        "additionalProperties": false,
    });
    let mut body = common::server::chat(
        "Describe Paris as JSON.",
        json!({"response_format": {"type": "json_schema", "json_schema": {"name": "c", "schema": schema, "strict": true}}, "temperature": 0, "max_tokens": 200}),
    );
    body["model"] = json!("gemma3");
    let (status, r) = common::server::post(&s, "/v1/chat/completions", &body).await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["choices"][0]["finish_reason"], "stop", "{r}");
    let v: Value = serde_json::from_str(content(&r)).unwrap();
    assert!(v["city"].is_string() && v["population"].is_u64() && v["coastal"].is_boolean());
    assert_eq!(v.as_object().unwrap().len(), 3);

    let mut body = common::server::chat(
        "What is the weather in Oslo?",
        json!({
            "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 30}}, "required": ["city"]}}}],
            "tool_choice": "required",
            "parallel_tool_calls": false,
            "temperature": 0,
            "max_tokens": 100,
        }),
    );
    body["model"] = json!("gemma3");
    let (status, r) = common::server::post(&s, "/v1/chat/completions", &body).await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["choices"][0]["finish_reason"], "tool_calls", "{r}");
    let calls = r["choices"][0]["message"]["tool_calls"].as_array().unwrap();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0]["function"]["name"], "get_weather");
    let args: Value =
        serde_json::from_str(calls[0]["function"]["arguments"].as_str().unwrap()).unwrap();
    assert!(args["city"].is_string(), "{args}");
}

#[tokio::test]
async fn grammars_hold_under_sampling_and_n() {
    let s = common::server::start(&[]);
    let body = common::server::chat(
        "Pick a colour.",
        json!({"grammar": "start: \"red\" | \"green\" | \"blue\"", "temperature": 2.0, "top_p": 1, "n": 8, "seed": 3}),
    );
    let (status, r) = common::server::post(&s, "/v1/chat/completions", &body).await;
    assert_eq!(status, 200, "{r}");
    let choices = r["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 8);
    for c in choices {
        let text = c["message"]["content"].as_str().unwrap();
        assert!(["red", "green", "blue"].contains(&text), "{text:?}");
        assert_eq!(c["finish_reason"], "stop");
    }
    // The schema is part of the response cache's key: a different grammar is a different answer.
    let other = common::server::chat(
        "Pick a colour.",
        json!({"grammar": "start: \"cyan\"", "temperature": 2.0, "top_p": 1, "n": 8, "seed": 3}),
    );
    let (_, r) = common::server::post(&s, "/v1/chat/completions", &other).await;
    assert_eq!(r["choices"][0]["message"]["content"], "cyan");
    // A schema that cannot compile is the client's 400, naming the field.
    let bad = common::server::chat(
        "x",
        json!({"response_format": {"type": "json_schema", "json_schema": {"schema": {"type": "nope"}}}}),
    );
    let (status, r) = common::server::post(&s, "/v1/chat/completions", &bad).await;
    assert_eq!(status, 400, "{r}");
    assert_eq!(r["error"]["param"], "response_format");
    let both = common::server::chat("x", json!({"regex": "a", "grammar": "start: \"a\""}));
    let (status, _) = common::server::post(&s, "/v1/chat/completions", &both).await;
    assert_eq!(status, 400);
}
