//! Property-based fuzzing of the parsers that take untrusted input: chat and completion request
//! bodies through validation (schemas, grammars and tools compiled), GGUF files, the tokenizer
//! on arbitrary bytes, and chat templates written to hurt (endless loops, huge outputs,
//! attribute probing, recursion).
//!
//! Each target runs generated cases (proptest strategies, seeded differently each batch) until
//! its time budget is spent: `LANTERN_FUZZ_SECONDS` (CI: 30 per target; `benches/fuzz.sh` runs
//! 600). Every case must end in Ok or an error, never a panic, and the process's peak memory
//! stays bounded. A failing case is shrunk by proptest and printed.
//! (cargo-fuzz needs a nightly toolchain, which these machines cannot install.)

mod common;

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use serde_json::{json, Value};

fn budget() -> Duration {
    let seconds = std::env::var("LANTERN_FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .unwrap_or(30.0);
    Duration::from_secs_f64(seconds)
}

/// Run `strategy` cases through `check` until the budget is spent; returns the cases run.
fn fuzz<S: Strategy>(
    name: &str,
    strategy: S,
    check: impl Fn(S::Value) -> Result<(), TestCaseError>,
) -> u64
where
    S::Value: std::fmt::Debug,
{
    let deadline = Instant::now() + budget();
    let (mut cases, mut batch) = (0u64, 0u64);
    while Instant::now() < deadline {
        let mut seed = [0u8; 32];
        seed[..8].copy_from_slice(&batch.to_le_bytes());
        seed[8..16].copy_from_slice(&(name.len() as u64).to_le_bytes());
        let mut runner = TestRunner::new_with_rng(
            Config {
                cases: 64,
                failure_persistence: None,
                ..Config::default()
            },
            TestRng::from_seed(RngAlgorithm::ChaCha, &seed),
        );
        if let Err(e) = runner.run(&strategy, &check) {
            panic!("{name}: {e}");
        }
        cases += 64;
        batch += 1;
    }
    let peak = peak_rss_mib();
    eprintln!(
        "fuzz {name}: {cases} cases in {:?}, peak RSS {peak} MiB",
        budget()
    );
    assert!(peak < 3072, "{name}: peak RSS {peak} MiB");
    cases
}

/// The process's peak resident memory (VmHWM), MiB.
fn peak_rss_mib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map(|kb| kb / 1024)
        .unwrap_or(0)
}

/// A panic inside the code under test is the failure; anything it returns is fine.
fn no_panic<R>(f: impl FnOnce() -> R) -> Result<R, TestCaseError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|e| {
        let msg = e
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        TestCaseError::fail(format!("panicked: {msg}"))
    })
}

// ---- chat and completion requests ----

/// JSON leaves a client could send, extremes included.
fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        prop_oneof![
            Just(0.0f64),
            Just(-1.0),
            Just(1e308),
            Just(f64::MIN_POSITIVE),
            any::<f64>()
        ]
        .prop_map(|f| serde_json::Number::from_f64(f)
            .map(Value::Number)
            .unwrap_or(Value::Null)),
        prop_oneof![
            Just(String::new()),
            Just("smollm2".to_string()),
            Just("user".to_string()),
            Just("assistant".to_string()),
            Just("system".to_string()),
            Just("tool".to_string()),
            Just("text".to_string()),
            Just("image_url".to_string()),
            Just("<|im_start|>".to_string()),
            Just("prune".to_string()),
            "\\PC{0,40}",
        ]
        .prop_map(Value::from),
    ]
}

const KEYS: &[&str] = &[
    "model",
    "messages",
    "role",
    "content",
    "type",
    "text",
    "prompt",
    "max_tokens",
    "max_completion_tokens",
    "n",
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "stop",
    "seed",
    "stream",
    "stream_options",
    "include_usage",
    "logprobs",
    "top_logprobs",
    "logit_bias",
    "presence_penalty",
    "frequency_penalty",
    "repeat_penalty",
    "response_format",
    "user",
    "compression",
    "method",
    "ratio",
    "scorer",
    "keep_alive",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "tool_calls",
    "tool_call_id",
    "function",
    "arguments",
    "parameters",
    "json_schema",
    "schema",
    "strict",
    "type",
    "properties",
    "required",
    "items",
    "enum",
    "grammar",
    "regex",
    "echo",
    "suffix",
    "name",
];

fn json_value() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((prop::sample::select(KEYS), inner), 0..8).prop_map(|kv| {
                Value::Object(kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
            }),
        ]
    })
}

/// A request near a valid one: a real shape with fields replaced, added or dropped.
fn request() -> impl Strategy<Value = Value> {
    let base = prop_oneof![
        Just(json!({"model": "smollm2", "messages": [{"role": "user", "content": "Hi"}]})),
        Just(json!({"model": "smollm2", "prompt": "Once upon", "max_tokens": 4})),
        Just(
            json!({"model": "smollm2", "messages": [{"role": "system", "content": "x"},
                    {"role": "user", "content": [{"type": "text", "text": "Hi"}]}],
                    "stop": ["\n"], "logprobs": true, "top_logprobs": 3, "seed": 1})
        ),
        Just(
            json!({"model": "smollm2", "messages": [{"role": "user", "content": "Hi"}],
                    "response_format": {"type": "json_schema", "json_schema": {"name": "x", "strict": true,
                    "schema": {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}}}})
        ),
        Just(
            json!({"model": "smollm2", "messages": [{"role": "user", "content": "Hi"},
                    {"role": "assistant", "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
                    {"role": "tool", "tool_call_id": "c", "content": "1"}],
                    "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
                    "tool_choice": "required"})
        ),
    ];
    (
        base,
        prop::collection::vec((prop::sample::select(KEYS), json_value()), 0..4),
        prop::collection::vec(prop::sample::select(KEYS), 0..2),
    )
        .prop_map(|(mut base, set, drop)| {
            let object = base.as_object_mut().unwrap();
            for (k, v) in set {
                object.insert(k.to_string(), v);
            }
            for k in drop {
                object.remove(k);
            }
            base
        })
}

fn engine() -> &'static lantern::scheduler::EngineHandle {
    static ENGINE: OnceLock<lantern::scheduler::EngineHandle> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let model =
            lantern::ChatModel::load(&common::model_path("smollm2"), &candle_core::Device::Cpu)
                .unwrap();
        let settings = lantern::config::ServerSettings::default();
        let config = lantern::server::settings::registry_config(&settings).unwrap();
        lantern::scheduler::EngineHandle::start("smollm2", model, config.engine)
    })
}

#[test]
fn request_bodies_never_panic_the_validators() {
    use lantern::infer::validate::validate;
    use lantern::server::anthropic::wire::MessagesBody;
    use lantern::server::openai::wire::{ChatRequest, CompletionRequest};
    let engine = engine();
    let caller = || lantern::infer::Caller {
        session: "fuzz".into(),
        rate_key: "anonymous".into(),
        cache: Default::default(),
        timeout: std::time::Duration::from_secs(60),
    };
    let cases = fuzz(
        "requests",
        prop_oneof![
            request().prop_map(|v| v.to_string().into_bytes()),
            json_value().prop_map(|v| v.to_string().into_bytes()),
            prop::collection::vec(any::<u8>(), 0..256),
        ],
        |bytes| {
            no_panic(|| {
                let body = || Ok(axum::body::Bytes::from(bytes.clone()));
                let parsed = lantern::server::body::parse_body::<ChatRequest>(body(), 1 << 20);
                if let Ok(req) = parsed.map(|r| r.into_request(caller())) {
                    let _ = req.map(|r| validate(engine, r));
                }
                let parsed =
                    lantern::server::body::parse_body::<CompletionRequest>(body(), 1 << 20);
                if let Ok(req) = parsed.map(|r| r.into_request(caller())) {
                    let _ = req.map(|r| validate(engine, r));
                }
                let parsed = lantern::server::body::parse_body::<MessagesBody>(body(), 1 << 20);
                if let Ok(req) = parsed.map(|r| r.into_request(caller(), false)) {
                    let _ = req.map(|r| validate(engine, r));
                }
            })
        },
    );
    assert!(cases > 0);
}

// ---- GGUF files ----

/// A small, valid GGUF (the synthetic tiny llama shape in Q8_0, with tensor data): every parser
/// path, small enough to mutate quickly.
fn gguf_seed() -> &'static [u8] {
    static SEED: OnceLock<Vec<u8>> = OnceLock::new();
    SEED.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let shape = lantern::devices::synthetic::shape("tiny").unwrap();
        let path = lantern::devices::synthetic::write(
            &shape,
            candle_core::quantized::GgmlDType::Q8_0,
            dir.path(),
        )
        .unwrap();
        std::fs::read(path).unwrap()
    })
}

#[derive(Debug, Clone)]
enum Mutation {
    Flip(usize, u8),
    Word(usize, u64),
    Truncate(usize),
    Splice(usize, Vec<u8>),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    // Offsets are biased to the front, where the header and the counts live.
    let offset = prop_oneof![0usize..64, 0usize..4096, 0usize..(8 << 20)];
    prop_oneof![
        (offset.clone(), any::<u8>()).prop_map(|(o, b)| Mutation::Flip(o, b)),
        (
            offset.clone(),
            prop_oneof![
                Just(0u64),
                Just(u64::MAX),
                Just(u32::MAX as u64),
                Just(1 << 40),
                any::<u64>()
            ]
        )
            .prop_map(|(o, w)| Mutation::Word(o, w)),
        offset.clone().prop_map(Mutation::Truncate),
        (offset, prop::collection::vec(any::<u8>(), 1..32))
            .prop_map(|(o, b)| Mutation::Splice(o, b)),
    ]
}

fn apply(seed: &[u8], mutations: &[Mutation]) -> Vec<u8> {
    let mut bytes = seed.to_vec();
    for m in mutations {
        let n = bytes.len().max(1);
        match m {
            Mutation::Flip(o, b) => {
                if let Some(x) = bytes.get_mut(o % n) {
                    *x ^= b;
                }
            }
            Mutation::Word(o, w) => {
                let o = o % n;
                for (i, b) in w.to_le_bytes().iter().enumerate() {
                    if let Some(x) = bytes.get_mut(o + i) {
                        *x = *b;
                    }
                }
            }
            Mutation::Truncate(o) => bytes.truncate(o % n),
            Mutation::Splice(o, more) => {
                let o = (o % n).min(bytes.len());
                bytes.splice(o..o, more.iter().copied());
            }
        }
    }
    bytes
}

#[test]
fn mutated_gguf_files_are_errors_not_panics() {
    use lantern::engine::gguf::GgufFile;
    let seed = gguf_seed();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("case.gguf");
    let cases = fuzz(
        "gguf",
        prop::collection::vec(mutation(), 1..6),
        |mutations| {
            std::fs::write(&path, apply(seed, &mutations)).unwrap();
            no_panic(|| {
                if let Ok(file) = GgufFile::open(&path) {
                    let _ = file.architecture();
                    let _ = file.quantization();
                    let _ = file.dominant_dtype();
                    let _ = lantern::engine::tokenizer::GgufTokenizer::from_gguf(&file);
                    for name in file.tensor_order.iter().take(8) {
                        let _ = file.tensor_bytes(name);
                        let _ = file.qtensor(name, &candle_core::Device::Cpu);
                    }
                    let _ = lantern::engine::template::ChatTemplate::from_gguf(&file);
                }
            })
        },
    );
    assert!(cases > 0);
}

// ---- the tokenizer ----

#[test]
fn the_tokenizer_takes_any_bytes_and_any_ids() {
    let model = common::smollm2();
    let tokenizer = &model.tokenizer;
    let vocab = tokenizer.vocab_size() as u32;
    let cases = fuzz(
        "tokenizer",
        (
            prop_oneof![
                prop::collection::vec(any::<u8>(), 0..512),
                "\\PC{0,200}".prop_map(String::into_bytes),
                Just(b"<|im_start|>user\n<|im_end|><|endoftext|>".to_vec()),
            ],
            prop::collection::vec(
                prop_oneof![0..vocab, vocab..vocab + 1000, Just(u32::MAX)],
                0..64,
            ),
        ),
        |(bytes, ids)| {
            no_panic(|| {
                let text = String::from_utf8_lossy(&bytes);
                let _ = tokenizer.encode(&text, true);
                let _ = tokenizer.encode_plain(&text);
                let _ = tokenizer.tokenizer.decode(&ids, false);
                let mut stream =
                    lantern::engine::stops::StreamDecoder::new(tokenizer.tokenizer.clone());
                for id in ids.iter().filter(|&&id| id < vocab) {
                    let _ = stream.push(*id);
                }
                let _ = stream.finish();
            })
        },
    );
    assert!(cases > 0);
}

// ---- chat templates ----

/// Pieces of templates written to hurt: loops without end, outputs without bound, probes of
/// the host, recursion, and syntax cut in half.
const HOSTILE: &[&str] = &[
    "{% for i in range(1000000000) %}x{% endfor %}",
    "{% for i in range(100000) %}{% for j in range(100000) %}{{ i }}{% endfor %}{% endfor %}",
    "{{ 'a' * 1000000000 }}",
    "{{ ('ab' * 100000) * 100000 }}",
    "{{ messages * 100000000 }}",
    "{{ [messages] * 1000000 }}",
    "{% set s = namespace(x='a') %}{% for i in range(60) %}{% set s.x = s.x ~ s.x %}{% endfor %}{{ s.x|length }}",
    "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
    "{% include 'chat' %}",
    "{% extends 'chat' %}",
    "{% import 'chat' as me %}",
    "{{ messages[0].content.__class__.__mro__ }}",
    "{{ messages.__len__() }}",
    "{{ self }}{{ self.__dict__ }}",
    "{{ cycler }}{{ joiner }}{{ lipsum(1000000) }}",
    "{{ raise_exception('no') }}",
    "{{ strftime_now('%Y' * 100000) }}",
    "{{ messages[0]['content'] | replace('', 'x' * 1000) }}",
    "{{ messages | tojson(indent=1000000) }}",
    "{{ range(10)|join('x' * 100000000) }}",
    "{{ (messages[0].content * 100000).split('') }}",
    "{{ '%s' % messages }}{{ '{:>1000000000}'.format(1) }}",
    "{{ 1 / 0 }}{{ 10 ** 100000 }}{{ 2 ** 64 * 2 ** 64 }}",
    "{{ messages[-100000000] }}{{ messages[0:1000000000:0] }}",
    "{% for m in messages recursive %}{{ loop(messages) }}{% endfor %}",
    "{% filter upper %}{% for i in range(100000) %}{{ bos_token * 100 }}{% endfor %}{% endfilter %}",
    "{% if %}", "{% for %}", "{{", "{% endfor %}", "{{ messages[ }}", "{% raw %}",
    "{% set x = x %}{{ x.y.z() }}",
    "{{ messages[0].content.strip().upper().lower().title().capitalize() }}",
];

const BENIGN: &[&str] = &[
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endfor %}",
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}",
    "{{ bos_token }}{{ eos_token }}",
    "{{ messages | length }}",
    "{% for m in messages %}{{ loop.index }}{{ m.content | trim }}{% endfor %}",
];

fn template() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            3 => prop::sample::select(HOSTILE),
            2 => prop::sample::select(BENIGN),
            1 => Just("{{ messages[0].content }}"),
        ],
        1..4,
    )
    .prop_map(|parts| parts.concat())
}

#[test]
fn hostile_templates_end_with_bounded_output_and_memory() {
    use lantern::engine::template::{ChatMessage, ChatTemplate};
    let cases = fuzz(
        "templates",
        (
            template(),
            prop::collection::vec("\\PC{0,64}", 1..4),
            any::<bool>(),
        ),
        |(source, contents, generation)| {
            let messages: Vec<ChatMessage> = contents
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    ChatMessage::new(if i % 2 == 0 { "user" } else { "assistant" }, c.clone())
                })
                .collect();
            let started = Instant::now();
            let rendered = no_panic(|| {
                ChatTemplate::new(&source, "<s>", "</s>").map(|t| t.render(&messages, generation))
            })?;
            if let Ok(Ok(text)) = &rendered {
                prop_assert!(
                    text.len() <= lantern::engine::template::MAX_OUTPUT,
                    "{} bytes from {source}",
                    text.len()
                );
            }
            // A bound on hangs, not a speed test: fuel ends every template, but a lazily
            // repeated sequence (`messages * 100000000`) is walked item by item after the
            // output limit is hit, which took 36 s on a loaded 2-core machine.
            prop_assert!(
                started.elapsed() < Duration::from_secs(120),
                "{source} took {:?}",
                started.elapsed()
            );
            Ok(())
        },
    );
    assert!(cases > 0);
}
