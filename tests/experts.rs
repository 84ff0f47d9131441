//! The experts Lantern's routers choose are llama.cpp's. On each mixture-of-experts synthetic
//! model (`make_arch_models.py`, the same bytes as `tests/architectures.rs` checks) and two short
//! prompts, `tests/fixtures/experts_llamacpp.json` holds the experts llama.cpp picks per layer
//! and token (`make_experts_reference.py`, from llama-eval-callback's `ffn_moe_topk` tensors).
//! Lantern's choices are read where a user reads them: the `experts chosen` events it logs at
//! `LANTERN_LOG=debug`. The routers' scores are spread wide so that no two experts tie; each
//! token's set of experts must be llama.cpp's, in every layer (llama.cpp runs its last layer
//! for the output token alone, so that layer is compared on that token).

mod common;

use std::sync::Mutex;

use lantern::engine::models::SeqInput;
use serde_json::Value;
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::Layer;

use common::ids;

/// Every `experts chosen` event: (layer, each token's experts).
static CHOSEN: Mutex<Vec<(u64, Vec<Vec<u32>>)>> = Mutex::new(Vec::new());

struct Capture;

#[derive(Default)]
struct Fields {
    layer: Option<u64>,
    chosen: Option<String>,
}

impl Visit for Fields {
    fn record_u64(&mut self, field: &Field, value: u64) {
        if field.name() == "layer" {
            self.layer = Some(value);
        }
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.record_u64(field, value as u64);
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "chosen" {
            self.chosen = Some(format!("{value:?}"));
        }
    }
}

impl<S: tracing::Subscriber> Layer<S> for Capture {
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        let mut fields = Fields::default();
        event.record(&mut fields);
        if let (Some(layer), Some(chosen)) = (fields.layer, fields.chosen) {
            // `[[1, 5, 3], [2, 0, 7]]`: the Debug form of a list of id lists is JSON.
            let chosen = serde_json::from_str(&chosen).expect("a list of id lists");
            CHOSEN.lock().unwrap().push((layer, chosen));
        }
    }
}

fn fixture(name: &str) -> Value {
    let path = common::reference_dir().join(name);
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn each_token_goes_to_llama_cpps_experts() {
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(Capture))
        .expect("the only subscriber of this test binary");
    let experts = fixture("experts_llamacpp.json");
    // The same files the architectures test checks, by the sha256 it recorded.
    let architectures = fixture("architectures_llamacpp.json");
    let sha_of = |file: &str| {
        architectures["models"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["file"] == file)
            .map(|m| m["sha256"].clone())
            .expect("the model is in the architectures fixture")
    };
    let dir = common::write_arch_models();
    let mut failures = Vec::new();
    let mut compared = 0;
    for entry in experts["models"].as_array().unwrap() {
        let name = entry["name"].as_str().unwrap();
        let model = common::arch_model(dir.path(), entry, &sha_of(entry["file"].as_str().unwrap()));
        for prompt in entry["prompts"].as_array().unwrap() {
            let tokens = ids(&prompt["prompt_ids"]);
            CHOSEN.lock().unwrap().clear();
            let mut cache = model.transformer.new_cache();
            model
                .transformer
                .forward(&mut [SeqInput {
                    tokens: &tokens,
                    cache: &mut cache,
                    all_logits: false,
                }])
                .unwrap();
            let ours = std::mem::take(&mut *CHOSEN.lock().unwrap());
            let theirs = prompt["experts"].as_array().unwrap();
            assert_eq!(ours.len(), theirs.len(), "{name}: one event per layer");
            for ((layer, chosen), rows) in ours.iter().zip(theirs) {
                let rows = rows.as_array().unwrap();
                // llama.cpp's rows are the prompt's last tokens (all but in the last layer).
                let first = tokens.len() - rows.len();
                for (k, row) in rows.iter().enumerate() {
                    let mut want = ids(row);
                    let mut got = chosen[first + k].clone();
                    want.sort_unstable();
                    got.sort_unstable();
                    compared += 1;
                    if got != want {
                        failures.push(format!(
                            "{name} layer {layer} token {}: Lantern {got:?}, llama.cpp {want:?}",
                            first + k
                        ));
                    }
                }
            }
        }
    }
    eprintln!("{compared} (model, layer, token) choices compared");
    assert!(compared >= 100, "only {compared} choices compared");
    assert!(failures.is_empty(), "{failures:#?}");
}
