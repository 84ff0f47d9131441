//! A thinking model's reasoning, separated on every API. The model is SmolLM2 with a thinking
//! template of the DeepSeek-R1 kind (its generation prompt opens `<think>`, so everything the
//! model writes before `</think>` is reasoning) that honours Qwen3's `enable_thinking` (false
//! writes an empty `<think></think>`, and the model answers at once). SmolLM2 never closes the
//! tag, so with thinking on its whole answer is reasoning: the test checks where each API puts
//! it, and that switching thinking off gives a plain answer. Where a tag breaks between chunks
//! is `infer::reasoning`'s unit tests.

mod common;

use candle_core::quantized::gguf_file;
use common::server::post;
use serde_json::{json, Value};

const TEMPLATE: &str = "{%- for message in messages -%}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}{%- endfor -%}{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\n' }}{%- if enable_thinking is defined and enable_thinking is false -%}{{ '<think>\n\n</think>\n\n' }}{%- else -%}{{ '<think>\n' }}{%- endif -%}{%- endif -%}";

/// SmolLM2's file with the thinking template, as `models/thinker/thinker.gguf` under `home`.
fn install_thinker(home: &std::path::Path) {
    let source = common::model_path("smollm2");
    let mut reader = std::fs::File::open(&source).unwrap();
    let content = gguf_file::Content::read(&mut reader).unwrap();
    let mut metadata: Vec<(String, gguf_file::Value)> = content
        .metadata
        .iter()
        .filter(|(k, _)| k.as_str() != "tokenizer.chat_template")
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    metadata.push((
        "tokenizer.chat_template".into(),
        gguf_file::Value::String(TEMPLATE.into()),
    ));
    let tensors: Vec<(String, candle_core::quantized::QTensor)> = content
        .tensor_infos
        .keys()
        .map(|name| {
            let t = content
                .tensor(&mut reader, name, &candle_core::Device::Cpu)
                .unwrap();
            (name.clone(), t)
        })
        .collect();
    let dir = home.join("models/thinker");
    std::fs::create_dir_all(&dir).unwrap();
    let mut out = std::fs::File::create(dir.join("thinker.gguf")).unwrap();
    let meta: Vec<(&str, &gguf_file::Value)> =
        metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let refs: Vec<(&str, &candle_core::quantized::QTensor)> =
        tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    gguf_file::write(&mut out, &meta, &refs).unwrap();
}

fn server() -> common::server::Server {
    let data = common::server::data_dir();
    install_thinker(data.path());
    let child = common::server::spawn_in(data.path(), &[], &[]);
    let home = data.path().to_path_buf();
    common::server::started(child, &home, Some(data))
}

/// The JSON objects of a streamed body: SSE's `data:` payloads or NDJSON's lines (the common
/// helper reads SSE only).
async fn stream(s: &common::server::Server, path: &str, body: Value) -> Vec<Value> {
    let text = s
        .client()
        .post(format!("{}{path}", s.base))
        .json(&body)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .map(|l| l.strip_prefix("data: ").unwrap_or(l))
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn user(text: &str) -> Value {
    json!([{"role": "user", "content": text}])
}

#[tokio::test(flavor = "multi_thread")]
async fn reasoning_comes_apart_from_the_answer_on_every_api() {
    let s = server();
    let ask = "What is the capital of France?";
    let greedy =
        json!({"model": "thinker", "messages": user(ask), "max_tokens": 12, "temperature": 0});

    // OpenAI chat: `reasoning_content`, whole and streamed, the same text.
    let (status, whole) = post(&s, "/v1/chat/completions", &greedy).await;
    assert_eq!(status, 200, "{whole}");
    let message = &whole["choices"][0]["message"];
    let reasoning = message["reasoning_content"].as_str().unwrap().to_string();
    assert!(!reasoning.is_empty(), "{whole}");
    assert_eq!(
        message["content"], "",
        "an answer never closed is all reasoning: {whole}"
    );
    let mut streamed = greedy.clone();
    streamed["stream"] = json!(true);
    let chunks = stream(&s, "/v1/chat/completions", streamed).await;
    let joined: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["reasoning_content"].as_str())
        .collect();
    assert_eq!(joined, reasoning);
    assert!(chunks.iter().all(|c| c["choices"][0]["delta"]["content"]
        .as_str()
        .unwrap_or("")
        .is_empty()));

    // Thinking off through the template's switch: a plain answer, no reasoning.
    let mut off = greedy.clone();
    off["chat_template_kwargs"] = json!({"enable_thinking": false});
    let (status, plain) = post(&s, "/v1/chat/completions", &off).await;
    assert_eq!(status, 200, "{plain}");
    assert!(
        plain["choices"][0]["message"]
            .get("reasoning_content")
            .is_none(),
        "{plain}"
    );
    assert!(!plain["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .is_empty());
    // OpenAI's `reasoning_effort`: `none` is the same switch off, `high` leaves it on.
    let mut none = greedy.clone();
    none["reasoning_effort"] = json!("none");
    let (status, by_effort) = post(&s, "/v1/chat/completions", &none).await;
    assert_eq!(status, 200, "{by_effort}");
    assert_eq!(
        by_effort["choices"][0]["message"],
        plain["choices"][0]["message"]
    );
    none["reasoning_effort"] = json!("high");
    let (_, high) = post(&s, "/v1/chat/completions", &none).await;
    assert_eq!(
        high["choices"][0]["message"]["reasoning_content"],
        reasoning.as_str()
    );
    none["reasoning_effort"] = json!("extreme");
    let (status, error) = post(&s, "/v1/chat/completions", &none).await;
    assert_eq!(
        (status, &error["error"]["param"]),
        (400, &json!("reasoning_effort"))
    );
    let mut bad = greedy.clone();
    bad["chat_template_kwargs"] = json!({"enable_thinking": "yes"});
    let (status, error) = post(&s, "/v1/chat/completions", &bad).await;
    assert_eq!(status, 400, "{error}");

    // Ollama: `thinking` beside the message's content; `think: false` turns it off.
    let body = json!({"model": "thinker", "messages": user(ask), "stream": false,
        "options": {"temperature": 0, "num_predict": 12}});
    let (status, ollama) = post(&s, "/api/chat", &body).await;
    assert_eq!(status, 200, "{ollama}");
    assert_eq!(
        ollama["message"]["thinking"],
        reasoning.as_str(),
        "{ollama}"
    );
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let lines = stream(&s, "/api/chat", streamed).await;
    let joined: String = lines
        .iter()
        .filter_map(|l| l["message"]["thinking"].as_str())
        .collect();
    assert_eq!(joined, reasoning);
    let mut off = body.clone();
    off["think"] = json!(false);
    let (_, plain) = post(&s, "/api/chat", &off).await;
    assert!(plain["message"].get("thinking").is_none(), "{plain}");
    assert!(!plain["message"]["content"].as_str().unwrap().is_empty());

    // Anthropic: a thinking block before any text, whole and streamed.
    let body = json!({"model": "thinker", "max_tokens": 12, "temperature": 0,
        "thinking": {"type": "enabled", "budget_tokens": 1024}, "messages": user(ask)});
    let (status, msg) = post(&s, "/v1/messages", &body).await;
    assert_eq!(status, 200, "{msg}");
    assert_eq!(msg["content"][0]["type"], "thinking", "{msg}");
    assert_eq!(msg["content"][0]["thinking"], reasoning.as_str());
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let events = stream(&s, "/v1/messages", streamed).await;
    let joined: String = events
        .iter()
        .filter(|e| e["delta"]["type"] == "thinking_delta")
        .filter_map(|e| e["delta"]["thinking"].as_str())
        .collect();
    assert_eq!(joined, reasoning);

    // A budget: after `budget_tokens` of reasoning the engine closes the block, and the model
    // (which never closes it itself) answers. Without one, the whole answer is reasoning.
    let budgeted = |budget: Value| {
        json!({"model": "thinker", "max_tokens": 40, "temperature": 0,
            "thinking": {"type": "enabled", "budget_tokens": budget}, "messages": user(ask)})
    };
    let (status, unbounded) = post(&s, "/v1/messages", &budgeted(json!(1024))).await;
    assert_eq!(status, 200, "{unbounded}");
    assert_eq!(
        unbounded["content"].as_array().unwrap().len(),
        1,
        "{unbounded}"
    );
    let (status, bounded) = post(&s, "/v1/messages", &budgeted(json!(6))).await;
    assert_eq!(status, 200, "{bounded}");
    let blocks = bounded["content"].as_array().unwrap();
    assert_eq!(blocks[0]["type"], "thinking", "{bounded}");
    assert_eq!(blocks[1]["type"], "text", "{bounded}");
    assert!(
        !blocks[1]["text"].as_str().unwrap().trim().is_empty(),
        "{bounded}"
    );
    let thought = blocks[0]["thinking"].as_str().unwrap();
    assert!(
        unbounded["content"][0]["thinking"]
            .as_str()
            .unwrap()
            .starts_with(thought.trim_end()),
        "the budget cut the same reasoning short: {thought:?}"
    );
    assert!(thought.len() < unbounded["content"][0]["thinking"].as_str().unwrap().len());
    let (status, bad) = post(&s, "/v1/messages", &budgeted(json!(0))).await;
    assert_eq!(status, 400, "{bad}");
    assert!(bad["error"]["message"]
        .as_str()
        .unwrap()
        .contains("budget_tokens"));

    // Responses: a reasoning item first.
    let body = json!({"model": "thinker", "input": ask, "max_output_tokens": 12, "temperature": 0});
    let (status, resp) = post(&s, "/v1/responses", &body).await;
    assert_eq!(status, 200, "{resp}");
    assert_eq!(resp["output"][0]["type"], "reasoning", "{resp}");
    assert_eq!(resp["output"][0]["content"][0]["text"], reasoning.as_str());
    let mut none = body.clone();
    none["reasoning"] = json!({"effort": "none"});
    let (status, resp) = post(&s, "/v1/responses", &none).await;
    assert_eq!(status, 200, "{resp}");
    assert_eq!(resp["output"][0]["type"], "message", "{resp}");
    assert_eq!(resp["reasoning"]["effort"], "none", "{resp}");

    // Ollama's `show` names the capability; a model whose template has no thinking lacks it
    // and says so when asked to think, as Ollama does.
    let (_, shown) = post(&s, "/api/show", &json!({"model": "thinker"})).await;
    assert!(
        shown["capabilities"]
            .as_array()
            .unwrap()
            .contains(&json!("thinking")),
        "{shown}"
    );
    let (_, shown) = post(&s, "/api/show", &json!({"model": "smollm2"})).await;
    assert!(!shown["capabilities"]
        .as_array()
        .unwrap()
        .contains(&json!("thinking")));
    let body = json!({"model": "smollm2", "messages": user(ask), "stream": false, "think": true});
    let (status, error) = post(&s, "/api/chat", &body).await;
    assert_eq!(status, 400, "{error}");
    assert!(error["error"]
        .as_str()
        .unwrap()
        .contains("does not support thinking"));
}
