//! Speculative decoding, by prompt lookup (drafts from the prompt) and by a draft model: the same
//! answers as plain decoding, token for token and log-probability for log-probability, alone and
//! batched, greedy and seeded; and drafts are made and confirmed.

mod common;

use common::server::{chat, data_dir, engine_of, post, spawn_with_log, start, Server};
use futures_util::future::join_all;
use serde_json::{json, Value};

const CODE: &str = "Rewrite this Python code with the variable x renamed to value. \
Answer with the code only.\n\n```python\ndef area(x):\n    return x * x * 3.14159\n\n\
def perimeter(x):\n    return 2 * x * 3.14159\n\ndef scaled(x, factor):\n    \
return area(x) * factor + perimeter(x) * factor\n```";

/// The requests compared: a code edit (the answer repeats the prompt) and free-form text,
/// greedy with log-probabilities and seeded at a temperature.
fn requests_to(model: &str) -> Vec<Value> {
    let mut out = Vec::new();
    for prompt in [CODE, "Write a short story about a lighthouse keeper."] {
        out.push(chat(
            prompt,
            json!({"temperature": 0, "max_tokens": 96, "logprobs": true, "top_logprobs": 2}),
        ));
        out.push(chat(
            prompt,
            json!({"temperature": 0.9, "top_p": 0.95, "seed": 7, "max_tokens": 64}),
        ));
    }
    for body in &mut out {
        body["model"] = json!(model);
    }
    out
}

/// What must match: the text, why it ended, the usage, every token's log-probabilities.
fn answer(r: &Value) -> Value {
    let choice = &r["choices"][0];
    json!({
        "text": choice["message"]["content"],
        "finish": choice["finish_reason"],
        "completion_tokens": r["usage"]["completion_tokens"],
        "logprobs": choice["logprobs"],
    })
}

async fn answer_of(s: &Server, body: &Value) -> Value {
    let (status, r) = post(s, "/v1/chat/completions", body).await;
    assert_eq!(status, 200, "{r}");
    answer(&r)
}

async fn answers_alone(s: &Server) -> Vec<Value> {
    answers_alone_to(s, "smollm2").await
}

async fn answers_alone_to(s: &Server, model: &str) -> Vec<Value> {
    let mut out = Vec::new();
    for body in requests_to(model) {
        let (status, r) = post(s, "/v1/chat/completions", &body).await;
        assert_eq!(status, 200, "{r}");
        out.push(answer(&r));
    }
    out
}

/// Every request at once, twice over, so drafts and plain decodes share passes: each answer is
/// still the one it gets alone.
async fn answers_batched(s: &Server, model: &str, expected: &[Value]) {
    let bodies: Vec<Value> = requests_to(model)
        .into_iter()
        .chain(requests_to(model))
        .collect();
    let together = join_all(bodies.iter().map(|b| post(s, "/v1/chat/completions", b))).await;
    for (i, (status, r)) in together.iter().enumerate() {
        assert_eq!(*status, 200, "{r}");
        assert_eq!(
            answer(r),
            expected[i % expected.len()],
            "batched request {i}"
        );
    }
}

#[tokio::test]
async fn drafts_change_the_speed_never_the_answer() {
    // The response cache would answer repeats without the engine.
    let plain = start(&["--prompt-lookup", "false", "--response-cache-mib", "0"]);
    let drafting = start(&["--response-cache-mib", "0"]);
    let expected = answers_alone(&plain).await;
    assert_eq!(answers_alone(&drafting).await, expected, "alone");
    answers_batched(&drafting, "smollm2", &expected).await;

    // Ends inside a run of drafts (a stop string, a token limit), then a next turn that reuses
    // the finished answer's KV from the prefix cache: no row of a draft that did not stand may
    // be kept.
    let code = expected[0]["text"].as_str().unwrap().to_string();
    let cut = code.char_indices().nth(code.chars().count() / 2).unwrap().0;
    let stop: String = code[cut..].chars().take(5).collect();
    for body in [
        chat(
            CODE,
            json!({"temperature": 0, "max_tokens": 96, "stop": [stop]}),
        ),
        chat(CODE, json!({"temperature": 0, "max_tokens": 37})),
    ] {
        let first = answer_of(&plain, &body).await;
        assert_eq!(answer_of(&drafting, &body).await, first, "{body}");
        let mut next = body.clone();
        let said = first["text"].as_str().unwrap();
        next["messages"] = json!([
            {"role": "user", "content": CODE},
            {"role": "assistant", "content": said},
            {"role": "user", "content": "Now do the same for y in this code: def f(y): return y * 2"},
        ]);
        assert_eq!(
            answer_of(&drafting, &next).await,
            answer_of(&plain, &next).await,
            "{next}"
        );
    }

    let figures = engine_of(&drafting, "smollm2").await.expect("loaded");
    let (drafted, accepted) = (
        figures["drafted_tokens"].as_u64().unwrap(),
        figures["accepted_tokens"].as_u64().unwrap(),
    );
    assert!(drafted > 0 && accepted > 0, "{figures}");
    assert!(accepted <= drafted, "{figures}");
    let off = engine_of(&plain, "smollm2").await.expect("loaded");
    assert_eq!(off["drafted_tokens"], 0, "{off}");
}

/// SmolLM2 in f16, as `lantern quantize smollm2 --to f16` writes it: served with the installed
/// Q4_1 file as its draft model, the pair a user gets from one download.
fn f16_smollm2(dir: &std::path::Path) -> std::path::PathBuf {
    use lantern::engine::quant::{parse_target, requantize};
    let file = dir.join("smollm2-f16.gguf");
    let source = common::model_path("smollm2");
    requantize(&source, &file, parse_target("f16").unwrap(), &mut |_, _| {
        true
    })
    .unwrap();
    file
}

#[tokio::test]
async fn a_draft_model_changes_the_speed_never_the_answer() {
    let dir = tempfile::tempdir().unwrap();
    let target = f16_smollm2(dir.path());
    let target = target.to_str().unwrap();
    // Prompt lookup off on both sides: every draft comes from the draft model.
    let common = ["--prompt-lookup", "false", "--response-cache-mib", "0"];
    let plain = start(&[&[target][..], &common].concat());
    let drafting = start(&[&[target, "--draft", "smollm2"][..], &common].concat());
    let model = "smollm2-f16";
    let expected = answers_alone_to(&plain, model).await;
    assert_eq!(answers_alone_to(&drafting, model).await, expected, "alone");
    answers_batched(&drafting, model, &expected).await;
    // A second turn: the draft model catches up on a prompt whose KV the prefix cache held.
    let said = expected[0]["text"].as_str().unwrap();
    let mut next = requests_to(model)[0].clone();
    next["messages"] = json!([
        {"role": "user", "content": CODE},
        {"role": "assistant", "content": said},
        {"role": "user", "content": "Now rename value to side."},
    ]);
    assert_eq!(
        answer_of(&drafting, &next).await,
        answer_of(&plain, &next).await,
        "{next}"
    );

    let figures = engine_of(&drafting, model).await.expect("loaded");
    let by_model = &figures["draft_model"];
    assert_eq!(by_model["name"], "smollm2", "{figures}");
    let (drafted, accepted) = (
        by_model["drafted_tokens"].as_u64().unwrap(),
        by_model["accepted_tokens"].as_u64().unwrap(),
    );
    assert!(drafted > 0 && accepted > 0, "{figures}");
    assert!(accepted <= drafted, "{figures}");
    assert_eq!(
        figures["drafted_tokens"], drafted,
        "every draft was the model's"
    );
    let off = engine_of(&plain, model).await.expect("loaded");
    assert!(off["draft_model"].is_null(), "{off}");
}

#[test]
fn a_draft_model_with_another_vocabulary_is_refused_at_start() {
    let data = data_dir();
    let log = std::process::Stdio::piped();
    let child = spawn_with_log(data.path(), &["--draft", "gemma3"], &[], log);
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("the draft model `gemma3`") && err.contains("tokenizer"),
        "{err}"
    );
}
