//! Forced tool calls on the default model (SmolLM2 135M), the model small enough to go wrong: a
//! named function is one call and then the end for every seed, streamed or not; an answer that
//! `max_tokens` cuts inside a second call keeps the first; the forced grammars compile against
//! the model's vocabulary and bound what a call can write.

mod common;

use common::server::{chat, start, Server};
use futures_util::StreamExt;
use lantern::engine::constrain::MAX_STRING_CHARS;
use lantern::engine::tools::{
    forced_grammar, ToolChoice, ToolFormat, ToolSpec, MAX_PARALLEL_CALLS,
};
use serde_json::{json, Value};

/// `get_weather(city)`, the city a string with no `maxLength`: the bound is the server's.
fn weather_tools() -> Value {
    json!([{"type": "function", "function": {
        "name": "get_weather",
        "description": "The current weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    }}])
}

fn named() -> Value {
    json!({"type": "function", "function": {"name": "get_weather"}})
}

/// A request that neither reads nor fills the response cache: each must be generated.
fn no_store(s: &Server, body: &Value) -> reqwest::RequestBuilder {
    reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", s.base))
        .header("cache-control", "no-store")
        .json(body)
}

async fn complete(s: &Server, body: &Value) -> Value {
    let r = no_store(s, body).send().await.unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

/// A streamed answer put back together as a non-streamed one reads: its first choice's
/// `message` (content and calls from the deltas), `finish_reason` and the usage chunk's `usage`.
async fn streamed(s: &Server, body: &Value) -> Value {
    let mut body = body.clone();
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let r = no_store(s, &body).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    let (mut content, mut calls, mut finish, mut usage) =
        (String::new(), Vec::<Value>::new(), Value::Null, Value::Null);
    for data in text.lines().filter_map(|l| l.strip_prefix("data: ")) {
        if data == "[DONE]" {
            continue;
        }
        let chunk: Value = serde_json::from_str(data).unwrap();
        if !chunk["usage"].is_null() {
            usage = chunk["usage"].clone();
        }
        let Some(choice) = chunk["choices"].get(0) else {
            continue;
        };
        if !choice["finish_reason"].is_null() {
            finish = choice["finish_reason"].clone();
        }
        let delta = &choice["delta"];
        content.push_str(delta["content"].as_str().unwrap_or(""));
        for d in delta["tool_calls"].as_array().into_iter().flatten() {
            let k = d["index"].as_u64().unwrap() as usize;
            if k == calls.len() {
                calls.push(json!({"function": {"name": d["function"]["name"], "arguments": ""}}));
            }
            let piece = d["function"]["arguments"].as_str().unwrap_or("");
            let args = format!(
                "{}{piece}",
                calls[k]["function"]["arguments"].as_str().unwrap()
            );
            calls[k]["function"]["arguments"] = json!(args);
        }
    }
    let mut message = json!({"content": content});
    if !calls.is_empty() {
        message["tool_calls"] = json!(calls);
    }
    json!({"choices": [{"message": message, "finish_reason": finish}], "usage": usage})
}

/// The answer is one call of `get_weather` with a string `city`, and nothing else; its
/// completion tokens.
fn one_weather_call(r: &Value, what: &str) -> u64 {
    let choice = &r["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls", "{what}: {r}");
    let calls = choice["message"]["tool_calls"].as_array().unwrap();
    assert_eq!(calls.len(), 1, "{what}: {r}");
    assert_eq!(calls[0]["function"]["name"], "get_weather", "{what}: {r}");
    let args: Value =
        serde_json::from_str(calls[0]["function"]["arguments"].as_str().unwrap()).unwrap();
    assert!(args["city"].is_string(), "{what}: {args}");
    let content = choice["message"]["content"].as_str().unwrap_or("");
    assert!(!content.contains("tool_call"), "{what}: {r}");
    let tokens = r["usage"]["completion_tokens"].as_u64().unwrap();
    assert!(tokens <= 200, "{what}: {tokens} tokens: {r}");
    tokens
}

#[tokio::test]
async fn a_named_function_is_one_call_then_the_end_for_every_seed() {
    let s = start(&[]);
    // Seeded requests are cached; `no-store` (in `complete`) makes each one run.
    let body = |seed: u64| {
        chat(
            "What is the weather like in Paris today?",
            json!({"tools": weather_tools(), "tool_choice": named(), "temperature": 1, "seed": seed}),
        )
    };
    let s = &s;
    let tokens: Vec<u64> = futures_util::stream::iter(0..32)
        .map(|seed| async move {
            let r = complete(s, &body(seed)).await;
            one_weather_call(&r, &format!("seed {seed}"))
        })
        .buffer_unordered(8)
        .collect()
        .await;
    let streamed_tokens: Vec<u64> = futures_util::stream::iter(0..8)
        .map(|seed| async move {
            let r = streamed(s, &body(seed)).await;
            one_weather_call(&r, &format!("seed {seed}, streamed"))
        })
        .buffer_unordered(8)
        .collect()
        .await;
    eprintln!(
        "completion tokens of a named call over 32 seeds: {:?}; streamed over 8: {:?}",
        (tokens.iter().min(), tokens.iter().max()),
        (streamed_tokens.iter().min(), streamed_tokens.iter().max()),
    );
}

#[tokio::test]
async fn a_calls_tokens_come_with_their_log_probabilities() {
    let s = start(&[]);
    let body = chat(
        "What is the weather like in Paris today?",
        json!({"tools": weather_tools(), "tool_choice": named(), "temperature": 0,
               "logprobs": true, "top_logprobs": 2}),
    );
    let r = complete(&s, &body).await;
    let tokens = one_weather_call(&r, "with logprobs") as usize;
    let content = r["choices"][0]["logprobs"]["content"].as_array().unwrap();
    assert_eq!(content.len(), tokens, "one entry per generated token: {r}");
    assert!(content
        .iter()
        .all(|t| t["logprob"].as_f64().unwrap() <= 0.0));
    assert!(content
        .iter()
        .all(|t| t["top_logprobs"].as_array().unwrap().len() == 2));
}

/// The calls of an answer as `(name, arguments)`, the arguments parsed.
fn calls_of(r: &Value) -> Vec<(Value, Value)> {
    r["choices"][0]["message"]["tool_calls"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            let args = c["function"]["arguments"].as_str().unwrap();
            (
                c["function"]["name"].clone(),
                serde_json::from_str(args).unwrap(),
            )
        })
        .collect()
}

/// The fewest tokens in `lo..=hi` after which `answer(k)` holds `calls` calls or more (`hi`
/// does). Greedy or seeded, a request repeats its tokens, so an answer cut at `k` is the first
/// `k` tokens of the whole one and the count of complete calls only grows with `k`.
async fn fewest_tokens_for<F, Fut>(calls: usize, mut lo: usize, mut hi: usize, answer: F) -> usize
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Value>,
{
    while lo < hi {
        let k = (lo + hi) / 2;
        if calls_of(&answer(k).await).len() >= calls {
            hi = k;
        } else {
            lo = k + 1;
        }
    }
    hi
}

#[tokio::test]
async fn an_answer_cut_inside_a_second_call_keeps_the_first() {
    let s = start(&[]);
    let body = |temperature: f64, seed: u64, max_tokens: usize| {
        chat(
            "What is the weather in Paris, in Oslo and in Rome? Call get_weather once for each city.",
            json!({"tools": weather_tools(), "tool_choice": "required", "temperature": temperature,
                   "seed": seed, "max_tokens": max_tokens}),
        )
    };
    // An answer with two calls or more: greedy, else the first seed that writes one. Requests go
    // one at a time so that each runs alone and repeats its tokens.
    let s = &s;
    let mut found = None;
    for (temperature, seed) in std::iter::once((0.0, 0)).chain((0..32).map(|s| (1.0, s))) {
        let r = complete(s, &body(temperature, seed, 400)).await;
        if calls_of(&r).len() >= 2 {
            found = Some((temperature, seed));
            break;
        }
    }
    let (temperature, seed) = found.expect("some seed writes two calls");
    let answer = |k: usize| {
        let b = body(temperature, seed, k);
        async move { complete(s, &b).await }
    };
    // Asked again, now that the prompt is cached as it will be for every cut below.
    let whole = answer(400).await;
    let first = calls_of(&whole)[0].clone();
    let total = whole["usage"]["completion_tokens"].as_u64().unwrap() as usize;
    // The first call's JSON is whole after `one` tokens; the second's after `two`. Any cut in
    // between ends inside the first call's closing tag, the gap, or the second call; `two - 1`
    // is one token short of the second call's end.
    let two = fewest_tokens_for(2, 1, total, answer).await;
    let one = fewest_tokens_for(1, 1, two - 1, answer).await;
    assert!(two - one > 8, "the second call takes {} tokens", two - one);
    let cuts = [(one + two) / 2, two - 3, two - 1];
    eprintln!(
        "temperature {temperature} seed {seed}: {} calls in {total} tokens; the first whole at \
         {one} tokens, the second at {two}; cuts at {cuts:?}",
        calls_of(&whole).len()
    );
    for k in cuts {
        let r = answer(k).await;
        let what = format!("cut at {k}");
        assert_eq!(r["usage"]["completion_tokens"], k, "{what}: {r}");
        assert_eq!(
            r["choices"][0]["finish_reason"], "tool_calls",
            "{what}: {r}"
        );
        assert_eq!(calls_of(&r), vec![first.clone()], "{what}: {r}");
        let content = r["choices"][0]["message"]["content"].as_str().unwrap_or("");
        assert!(!content.contains('<'), "{what}: {r}");
    }
    // Cut before any call is whole (inside the first one's opening tag or its JSON): no call,
    // and none of its markup as content either.
    for k in [2, one - 1] {
        let r = answer(k).await;
        let what = format!("cut at {k}");
        assert_eq!(r["choices"][0]["finish_reason"], "length", "{what}: {r}");
        assert!(calls_of(&r).is_empty(), "{what}: {r}");
        let content = r["choices"][0]["message"]["content"].as_str().unwrap_or("");
        assert_eq!(content, "", "{what}: {r}");
    }
    // Streamed, the cut answer's deltas hold the same call and no markup.
    let r = streamed(s, &body(temperature, seed, two - 1)).await;
    assert_eq!(r["choices"][0]["finish_reason"], "tool_calls", "{r}");
    assert_eq!(calls_of(&r), vec![first], "streamed: {r}");
    assert_eq!(r["usage"]["completion_tokens"], two - 1, "{r}");
    let content = r["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(!content.contains('<'), "{r}");
}

fn spec(name: &str, parameters: Value) -> ToolSpec {
    ToolSpec {
        name: name.into(),
        description: None,
        parameters,
        strict: false,
    }
}

/// Feed `text` as the tokenizer splits it: every token must be allowed.
fn walk(c: &mut lantern::engine::constrain::Constraint, text: &str) {
    let model = common::smollm2();
    for id in model.tokenizer.encode_plain(text).unwrap() {
        assert!(c.allowed().unwrap().allows(id), "{id} refused in {text:?}");
        c.accept(id).unwrap();
    }
}

#[test]
fn forced_grammars_compile_and_end_where_they_should() {
    let model = common::smollm2();
    let rich = json!({
        "type": "object",
        "properties": {
            "city": {"type": "string"},
            "code": {"type": "string", "pattern": "^[A-Z]{3}$"},
            "slug": {"type": "string", "pattern": "^[a-z-]+$"},
            "when": {"type": "string", "format": "date-time"},
            "mail": {"type": "string", "format": "email"},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            "tags": {"type": "array", "items": {"type": "string"}},
            "near": {"type": "array", "items": {"$ref": "#/$defs/place"}},
            "note": {"anyOf": [{"type": "string"}, {"type": "null"}]},
            "extra": {"type": "object", "additionalProperties": {"type": "string"}},
        },
        "required": ["city"],
        "$defs": {"place": {"type": "object", "properties": {"name": {"type": "string"}}}},
    });
    // A second tool whose `$ref`s must follow its schema to `/anyOf/1` of the call schema.
    let tree = json!({
        "type": "object",
        "properties": {"root": {"$ref": "#/definitions/node"}},
        "definitions": {"node": {"type": "object", "properties": {
            "label": {"type": "string"},
            "children": {"type": "array", "items": {"$ref": "#/definitions/node"}},
        }}},
    });
    let tools = [spec("get_weather", rich), spec("walk_tree", tree)];
    for format in [ToolFormat::Hermes, ToolFormat::Json] {
        for (choice, parallel) in [
            (ToolChoice::Function("get_weather".into()), true),
            (ToolChoice::Required, true),
            (ToolChoice::Required, false),
        ] {
            let g = forced_grammar(&tools, &choice, parallel, format).unwrap();
            if let Err(e) = model.constrain(&g) {
                panic!("{format:?} {choice:?} {parallel}: {e}\n{g:?}");
            }
        }
    }

    let tools = [spec(
        "get_weather",
        json!({"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}),
    )];
    let call = "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>";
    let compile = |choice: ToolChoice| {
        let g = forced_grammar(&tools, &choice, true, ToolFormat::Hermes).unwrap();
        model.constrain(&g).unwrap()
    };
    // A named function: one call, then nothing more, though parallel calls are allowed.
    let mut c = compile(ToolChoice::Function("get_weather".into()));
    walk(&mut c, call);
    assert!(c.is_finished());
    // `required`: more calls may follow, up to the limit, then nothing more.
    let mut c = compile(ToolChoice::Required);
    walk(&mut c, call);
    assert!(!c.is_finished());
    for _ in 1..MAX_PARALLEL_CALLS {
        walk(&mut c, &format!("\n{call}"));
    }
    assert!(c.is_finished());
    let token = |text: &str| {
        let [id] = model.tokenizer.encode_plain(text).unwrap()[..] else {
            panic!("{text:?} is one token")
        };
        id
    };
    let start = "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"";
    // A string without `maxLength` ends at the bound: no more letters, only its closing quote.
    let mut c = compile(ToolChoice::Function("get_weather".into()));
    walk(&mut c, start);
    walk(&mut c, &"a".repeat(MAX_STRING_CHARS as usize));
    let mask = c.allowed().unwrap();
    assert!(!mask.allows(token("a")) && mask.allows(token("\"")));
    // The arguments hold the declared properties and no others.
    let mut c = compile(ToolChoice::Function("get_weather".into()));
    walk(&mut c, &format!("{start}Paris\""));
    let mask = c.allowed().unwrap();
    assert!(!mask.allows(token(",")));
    walk(&mut c, "}}\n</tool_call>");
    assert!(c.is_finished());
}
