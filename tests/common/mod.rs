//! Shared by the integration tests: the installed default models and the reference outputs.
#![allow(dead_code)]

pub mod server;

use std::path::PathBuf;
use std::sync::OnceLock;

use candle_core::Device;
use lantern::library::Library;
use lantern::ChatModel;

/// The reference outputs, checked in beside the tests (`tests/fixtures/README.md` says how each was made).
pub fn reference_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

pub fn reference() -> serde_json::Value {
    let path = reference_dir().join("smollm2_q4_1_llamacpp.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

/// A fixture's array of token ids.
pub fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// An installed model; the test setup (`models/fetch`) installs the defaults.
pub fn model_path(name: &str) -> PathBuf {
    Library::new(&lantern::library::home())
        .resolve_gguf(name)
        .unwrap_or_else(|e| panic!("{e} (the test setup runs models/fetch)"))
}

pub fn smollm2() -> &'static ChatModel {
    static MODEL: OnceLock<ChatModel> = OnceLock::new();
    MODEL.get_or_init(|| ChatModel::load(&model_path("smollm2"), &Device::Cpu).unwrap())
}

/// Teacher forcing as the references were made: the prompt in one pass, then each forced token
/// alone; the logits before each forced token and after the last one but one.
pub fn forced_logits(
    t: &lantern::engine::models::Transformer,
    prompt: &[u32],
    forced: &[u32],
) -> Vec<Vec<f32>> {
    use lantern::engine::models::SeqInput;
    let mut cache = t.new_cache();
    let mut step = |tokens: &[u32]| {
        let input = SeqInput {
            tokens,
            cache: &mut cache,
            all_logits: false,
        };
        t.forward(&mut [input])
            .unwrap()
            .to_vec2::<f32>()
            .unwrap()
            .remove(0)
    };
    let mut rows = vec![step(prompt)];
    for &f in &forced[..forced.len().saturating_sub(1)] {
        rows.push(step(&[f]));
    }
    rows
}

/// The installed default embedding model (all-MiniLM-L6-v2).
pub fn minilm() -> &'static lantern::engine::models::bert::EmbeddingModel {
    static MODEL: OnceLock<lantern::engine::models::bert::EmbeddingModel> = OnceLock::new();
    MODEL.get_or_init(|| {
        let dir = Library::new(&lantern::library::home())
            .models_dir()
            .join("all-minilm");
        lantern::engine::models::bert::EmbeddingModel::load(&dir, &Device::Cpu)
            .unwrap_or_else(|e| panic!("{e} (the test setup runs models/fetch)"))
    })
}

/// Python with the `gguf` package: `$LANTERN_PYTHON`, else `.venv/bin/python` (`make test`
/// installs it there), else `python3`.
pub fn python() -> String {
    if let Ok(p) = std::env::var("LANTERN_PYTHON") {
        return p;
    }
    let venv = concat!(env!("CARGO_MANIFEST_DIR"), "/.venv/bin/python");
    if std::path::Path::new(venv).exists() {
        venv.into()
    } else {
        "python3".into()
    }
}

/// The synthetic models of every architecture `tests/fixtures/make_arch_models.py` writes (the
/// same bytes on every run), in a scratch directory.
pub fn write_arch_models() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/make_arch_models.py"
    );
    let out = std::process::Command::new(python())
        .arg(script)
        .arg(dir.path())
        .arg(model_path("smollm2"))
        .output()
        .expect("python runs");
    assert!(
        out.status.success(),
        "{script} failed (it needs the `gguf` package):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    dir
}

/// A fixture entry's synthetic model from `dir` (`file`; a K-quant one first requantized from
/// `requantized.from` as `lantern quantize` does), checked against `sha256`, loaded.
pub fn arch_model(
    dir: &std::path::Path,
    entry: &serde_json::Value,
    sha256: &serde_json::Value,
) -> ChatModel {
    use sha2::{Digest, Sha256};
    let name = entry["name"].as_str().unwrap();
    let file = dir.join(entry["file"].as_str().unwrap());
    if let Some(q) = entry.get("requantized") {
        let from = dir.join(q["from"].as_str().unwrap());
        let to = lantern::engine::quant::parse_target(q["to"].as_str().unwrap()).unwrap();
        lantern::engine::quant::requantize(&from, &file, to, &mut |_, _| true).unwrap();
    }
    let sha = format!("{:x}", Sha256::digest(std::fs::read(&file).unwrap()));
    assert_eq!(&sha, sha256, "{name}: the writer made another file");
    ChatModel::load(&file, &Device::Cpu).unwrap()
}
