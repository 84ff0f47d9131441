//! Prompt lookup (speculative decoding with drafts from the prompt): the same answers as plain
//! decoding, token for token and log-probability for log-probability, alone and batched, greedy
//! and seeded; and drafts are made and confirmed where the answer repeats the prompt.

mod common;

use common::server::{chat, engine_of, post, start, Server};
use futures_util::future::join_all;
use serde_json::{json, Value};

const CODE: &str = "Rewrite this Python code with the variable x renamed to value. \
Answer with the code only.\n\n```python\ndef area(x):\n    return x * x * 3.14159\n\n\
def perimeter(x):\n    return 2 * x * 3.14159\n\ndef scaled(x, factor):\n    \
return area(x) * factor + perimeter(x) * factor\n```";

/// The requests compared: a code edit (the answer repeats the prompt) and free-form text,
/// greedy with log-probabilities and seeded at a temperature.
fn requests() -> Vec<Value> {
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
    let mut out = Vec::new();
    for body in requests() {
        let (status, r) = post(s, "/v1/chat/completions", &body).await;
        assert_eq!(status, 200, "{r}");
        out.push(answer(&r));
    }
    out
}

#[tokio::test]
async fn drafts_change_the_speed_never_the_answer() {
    // The response cache would answer repeats without the engine.
    let plain = start(&["--prompt-lookup", "false", "--response-cache-mib", "0"]);
    let drafting = start(&["--response-cache-mib", "0"]);
    let expected = answers_alone(&plain).await;
    assert_eq!(answers_alone(&drafting).await, expected, "alone");
    // Batched: every request at once, twice over, so drafts and plain decodes share passes.
    let bodies: Vec<Value> = requests().into_iter().chain(requests()).collect();
    let together = join_all(
        bodies
            .iter()
            .map(|b| post(&drafting, "/v1/chat/completions", b)),
    )
    .await;
    for (i, (status, r)) in together.iter().enumerate() {
        assert_eq!(*status, 200, "{r}");
        assert_eq!(
            answer(r),
            expected[i % expected.len()],
            "batched request {i}"
        );
    }

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
