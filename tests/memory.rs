//! Memory of a loaded, warmed model: the weights are held once, in their quantized form
//! (repacked from the map, whose pages go back as they are read), the tied embedding table
//! is the output head's, and the rotary tables grow with the positions used. Peak resident
//! memory of the transformer stays within 1.3 × its weights once loaded, and within 1.3 ×
//! (weights + the KV cache used) once serving on Gemma 3, the prompt fed in the server's
//! prefill chunks. (The tokenizer is not counted: it is the `tokenizers` crate's.)
//! Each model is measured in a child process, so the high-water mark is that model's.

mod common;

use candle_core::Device;
use lantern::config::serve::ServerSettings;
use lantern::engine::gguf::GgufFile;
use lantern::engine::kv::KvCache;
use lantern::engine::models::{SeqInput, Transformer};

/// `VmHWM` and `VmRSS` from `/proc/self/status`, in bytes.
fn memory() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let field = |name: &str| -> u64 {
        let line = status.lines().find(|l| l.starts_with(name)).unwrap();
        let kb: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        kb * 1024
    };
    (field("VmHWM:"), field("VmRSS:"))
}

/// What one model's load and first requests cost in resident memory.
struct Footprint {
    weights: u64,
    kv: u64,
    /// High-water mark growth once loaded (the file's map gone, as `ChatModel::load` leaves it).
    loaded: u64,
    /// ... and after a 512-token prompt in the server's prefill chunks and 16 decode steps.
    served: u64,
}

fn footprint(name: &str) -> Footprint {
    let path = common::model_path(name);
    let weights = {
        let gguf = GgufFile::open(&path).unwrap();
        gguf.tensors.values().map(|t| t.size as u64).sum()
    };
    let (_, before) = memory();
    let gguf = GgufFile::open(&path).unwrap();
    let t = Transformer::load(&gguf, &Device::Cpu).unwrap();
    drop(gguf);
    let (loaded, _) = memory();
    let chunk = ServerSettings::default().prefill_chunk;
    let mut cache = t.new_cache();
    let vocab = t.info.vocab_size as u32;
    let prompt: Vec<u32> = (0..512u32).map(|i| (i * 7919 + 11) % vocab).collect();
    let step = |tokens: &[u32], cache: &mut KvCache| {
        let input = SeqInput {
            tokens,
            cache,
            all_logits: false,
        };
        t.forward(&mut [input]).unwrap();
    };
    for part in prompt.chunks(chunk) {
        step(part, &mut cache);
    }
    for i in 0..16 {
        step(&[i], &mut cache);
    }
    let (served, _) = memory();
    Footprint {
        weights,
        kv: cache.bytes() as u64,
        loaded: loaded - before,
        served: served - before,
    }
}

/// Set in the child processes the test starts, one per model.
const MODEL_VAR: &str = "LANTERN_MEMORY_TEST_MODEL";

#[test]
fn a_loaded_warmed_model_holds_its_weights_once() {
    if let Ok(name) = std::env::var(MODEL_VAR) {
        let f = footprint(&name);
        println!("footprint {} {} {} {}", f.weights, f.kv, f.loaded, f.served);
        return;
    }
    let mib = |b: u64| b as f64 / 1048576.0;
    for name in ["smollm2", "gemma3"] {
        // Each model in a process of its own: the high-water mark and the allocator's heap are
        // then that model's alone.
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "a_loaded_warmed_model_holds_its_weights_once",
                "--nocapture",
            ])
            .env(MODEL_VAR, name)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{name}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let line = stdout
            .lines()
            .find_map(|l| l.strip_prefix("footprint "))
            .unwrap();
        let v: Vec<u64> = line.split(' ').map(|x| x.parse().unwrap()).collect();
        let f = Footprint {
            weights: v[0],
            kv: v[1],
            loaded: v[2],
            served: v[3],
        };
        let loaded = f.loaded as f64 / f.weights as f64;
        let served = f.served as f64 / (f.weights + f.kv) as f64;
        eprintln!(
            "{name}: {:.0} MiB of weights; loaded {:.0} MiB ({loaded:.2}×); served with {:.0} MiB \
             of KV: {:.0} MiB ({served:.2}×)",
            mib(f.weights),
            mib(f.loaded),
            mib(f.kv),
            mib(f.served)
        );
        // A second copy of any large tensor (the table, the head, the map kept) breaks these.
        assert!(loaded <= 1.3, "{name}: loaded at {loaded:.2}× its weights");
        assert!(served <= 1.3, "{name}: served at {served:.2}× weights + KV");
    }
}
