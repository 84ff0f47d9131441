//! Benchmarks of one model variant on one device, with llama-bench's definitions: `pp512` is 512
//! prompt tokens in one pass, `tg128` is 128 tokens generated one at a time from an empty context,
//! each the mean ± sd of 5 repetitions. Also aggregate decode speed at batch 1/4/8/16, time to
//! first token and peak memory; and each speed as a fraction of its ceiling (decode: the read
//! bandwidth over the bytes of weights read per token; prompt: matmul throughput over the
//! FLOPs per token).

use std::path::Path;
use std::time::Instant;

use candle_core::{Device, Tensor};
use serde::Serialize;

use super::ceiling::{self, Ceilings};
use crate::engine::gguf::GgufFile;
use crate::engine::models::{SeqInput, Transformer};

/// What to run.
#[derive(Debug, Clone, Serialize)]
pub struct Options {
    pub reps: usize,
    pub n_prompt: usize,
    pub n_gen: usize,
    pub batches: Vec<usize>,
    /// Decode steps timed at each batch size.
    pub batch_steps: usize,
    /// Prompt length of the time-to-first-token test.
    pub ttft_prompt: usize,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            reps: 5,
            n_prompt: 512,
            n_gen: 128,
            batches: vec![1, 4, 8, 16],
            batch_steps: 32,
            ttft_prompt: 128,
        }
    }
}

impl Options {
    /// A short run (tests, a first look): the same tests at a fraction of the length.
    pub fn quick() -> Self {
        Self {
            reps: 2,
            n_prompt: 64,
            n_gen: 16,
            batches: vec![1, 4],
            batch_steps: 8,
            ttft_prompt: 32,
        }
    }

    /// What a user asked for: the quick or the full run, with any of its figures replaced.
    pub fn asked(
        quick: bool,
        reps: Option<usize>,
        n_prompt: Option<usize>,
        n_gen: Option<usize>,
        batches: Option<Vec<usize>>,
    ) -> Self {
        let base = if quick {
            Self::quick()
        } else {
            Self::default()
        };
        Self {
            reps: reps.unwrap_or(base.reps),
            n_prompt: n_prompt.unwrap_or(base.n_prompt),
            n_gen: n_gen.unwrap_or(base.n_gen),
            batches: batches.unwrap_or(base.batches),
            ..base
        }
    }

    fn validate(&self) -> Result<(), String> {
        let ok = (1..=100).contains(&self.reps)
            && (1..=8192).contains(&self.n_prompt)
            && (1..=4096).contains(&self.n_gen)
            && (1..=4096).contains(&self.batch_steps)
            && (1..=8192).contains(&self.ttft_prompt)
            && !self.batches.is_empty()
            && self.batches.iter().all(|b| (1..=256).contains(b));
        ok.then_some(()).ok_or_else(|| {
            "reps 1-100, n_prompt 1-8192, n_gen 1-4096, batch sizes 1-256, batch_steps 1-4096, \
             ttft_prompt 1-8192"
                .to_string()
        })
    }
}

pub use super::stat::Stat;

/// One speed and its ceiling.
#[derive(Debug, Clone, Serialize)]
pub struct Speed {
    /// llama-bench's test name: pp512, tg128, or tg32@b8 for aggregate decode at batch 8.
    pub test: String,
    pub tokens_per_second: Stat,
    /// The fastest the ceiling allows for this test (tokens/s).
    pub roofline_tokens_per_second: f64,
    /// `tokens_per_second.mean / roofline_tokens_per_second`.
    pub roofline_fraction: f64,
    /// What bounds it: `memory` (bandwidth) or `compute` (matmul throughput).
    pub bound: &'static str,
}

/// The model as the benchmark sees it.
#[derive(Debug, Clone, Serialize)]
pub struct ModelFacts {
    pub name: String,
    pub quantization: String,
    pub architecture: String,
    pub file_bytes: u64,
    /// Weights in matrix products per token (the output head included).
    pub params: u64,
    /// Bytes of weights read to generate one token.
    pub weight_bytes_per_token: u64,
}

/// A finished benchmark.
#[derive(Debug, Clone, Serialize)]
pub struct BenchResult {
    pub model: ModelFacts,
    pub device: String,
    /// Set when the asked device was unavailable and the CPU ran it instead.
    pub device_note: Option<String>,
    pub threads: usize,
    /// The GPUs NVML lists, when the run was on one (their theoretical bandwidth beside the
    /// measured ceiling).
    pub gpus: Option<Vec<super::nvidia::Gpu>>,
    pub software: String,
    pub options: Options,
    pub ceilings: Ceilings,
    pub speeds: Vec<Speed>,
    pub ttft_ms: Stat,
    /// Most resident memory of the process sampled during the tests (Linux; in a server it
    /// includes the other loaded models).
    pub peak_rss_bytes: Option<u64>,
    /// Unix seconds.
    pub finished_at: f64,
}

/// Why a benchmark stopped.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("invalid options: {0}")]
    Options(String),
    #[error("the model could not be loaded: {0}")]
    Load(String),
    #[error("the model failed while running: {0}")]
    Run(String),
    #[error("cancelled")]
    Cancelled,
}

impl From<candle_core::Error> for BenchError {
    fn from(e: candle_core::Error) -> Self {
        Self::Run(e.to_string())
    }
}

impl From<crate::engine::models::ModelError> for BenchError {
    fn from(e: crate::engine::models::ModelError) -> Self {
        Self::Run(e.to_string())
    }
}

/// Progress reports and the cancel check, from whoever runs the benchmark.
pub trait Observer {
    fn progress(&mut self, fraction: f64, message: &str);
    fn cancelled(&self) -> bool;
}

/// What the weights cost per token, from the file's tensor table. Of a mixture-of-experts
/// file's stacked experts (`*_exps`), a token reads only the share its experts make up.
fn facts(name: &str, gguf: &GgufFile) -> ModelFacts {
    let tied = !gguf.has_tensor("output.weight");
    let (mut params, mut bytes) = (0u64, 0u64);
    let arch = gguf.architecture().unwrap_or("unknown");
    let count = |key: &str| gguf.get_usize(&format!("{arch}.{key}")).unwrap_or(0) as u64;
    let (experts, used) = (count("expert_count"), count("expert_used_count"));
    for (tensor, info) in &gguf.tensors {
        let is_embedding = tensor == "token_embd.weight";
        if is_embedding && !tied {
            continue; // only one row of it is read per token
        }
        if tensor.contains("_exps.") && experts > 0 {
            bytes += info.size as u64 * used.min(experts) / experts;
        } else {
            bytes += info.size as u64;
        }
        if info.shape.len() >= 2 {
            params += info.shape.iter().product::<usize>() as u64;
        }
    }
    ModelFacts {
        name: name.to_string(),
        quantization: gguf.quantization().unwrap_or_else(|| "unknown".into()),
        architecture: gguf.architecture().unwrap_or("unknown").to_string(),
        file_bytes: gguf.file_size(),
        params,
        weight_bytes_per_token: bytes,
    }
}

/// The model's weight types, most block weights first: how many weights of each a token
/// multiplies in the blocks and in the head, and the type's largest matrix (where its matmul
/// ceiling is measured).
fn weight_types(gguf: &GgufFile) -> Vec<ceiling::WeightType> {
    let head = if gguf.has_tensor("output.weight") {
        "output.weight"
    } else {
        "token_embd.weight"
    };
    let mut types: Vec<ceiling::WeightType> = Vec::new();
    for (name, t) in &gguf.tensors {
        let is_head = name == head;
        if t.shape.len() != 2 || (!is_head && !name.starts_with("blk.")) {
            continue;
        }
        let params = (t.shape[0] * t.shape[1]) as u64;
        let i = match types.iter().position(|w| w.0 == t.dtype) {
            Some(i) => i,
            None => {
                types.push((t.dtype, 0, 0, 0, 0));
                types.len() - 1
            }
        };
        let w = &mut types[i];
        if is_head {
            w.2 += params;
        } else {
            w.1 += params;
        }
        if t.shape[0] * t.shape[1] > w.3 * w.4 {
            (w.3, w.4) = (t.shape[0], t.shape[1]);
        }
    }
    types.sort_by_key(|w| std::cmp::Reverse((w.1, w.2)));
    types
}

fn argmax(logits: &Tensor) -> Result<Vec<u32>, BenchError> {
    Ok(logits
        .argmax(candle_core::D::Minus1)?
        .to_dtype(candle_core::DType::U32)?
        .to_vec1::<u32>()?)
}

/// Deterministic token ids below `vocab` (the content does not change the speed).
fn ids(n: usize, vocab: usize, seed: usize) -> Vec<u32> {
    (0..n)
        .map(|i| ((i * 7919 + seed * 104_729 + 17) % vocab.max(1)) as u32)
        .collect()
}

/// Resident memory now (Linux: `/proc/self/statm`).
fn rss() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

/// The most resident memory seen at the samples taken during the tests (the ceilings' buffers
/// and a synthetic model's writing are over by then).
#[derive(Default)]
struct Peak(Option<u64>);

impl Peak {
    fn sample(&mut self) {
        if let Some(now) = rss() {
            self.0 = Some(self.0.map_or(now, |p| p.max(now)));
        }
    }
}

/// Benchmark the GGUF at `path` (named `name`) on `device`.
pub fn run(
    name: &str,
    path: &Path,
    device: &Device,
    device_note: Option<String>,
    options: Options,
    observer: &mut dyn Observer,
) -> Result<BenchResult, BenchError> {
    options.validate().map_err(BenchError::Options)?;
    observer.progress(0.0, "loading the model");
    let gguf = GgufFile::open(path).map_err(|e| BenchError::Load(e.to_string()))?;
    let model = Transformer::load(&gguf, device).map_err(|e| BenchError::Load(e.to_string()))?;
    let facts = facts(name, &gguf);
    let vocab = model.info.vocab_size;
    let context = model.info.context_length;
    let longest = options
        .n_prompt
        .max(options.n_gen)
        .max(options.ttft_prompt)
        .max(16 + options.batch_steps);
    if longest > context {
        return Err(BenchError::Options(format!(
            "a test needs {longest} positions; the model holds {context}"
        )));
    }
    let check = |o: &dyn Observer| {
        if o.cancelled() {
            Err(BenchError::Cancelled)
        } else {
            Ok(())
        }
    };

    observer.progress(
        0.05,
        "measuring the ceilings: memory bandwidth and matmul throughput",
    );
    let types = weight_types(&gguf);
    // The map goes before the tests: resident memory counts the model, not the file.
    drop(gguf);
    if types.is_empty() {
        return Err(BenchError::Load("the model has no weight matrices".into()));
    }
    let before = ceiling::measure(device, facts.weight_bytes_per_token, &types)?;
    check(observer)?;
    let mut peak = Peak::default();

    // One warm-up pass (first touches of the mapped weights are page faults, not speed).
    let mut cache = model.new_cache();
    model.forward(&mut [SeqInput {
        tokens: &ids(8, vocab, 0),
        cache: &mut cache,
        all_logits: false,
    }])?;

    let reps = options.reps;
    let mut pp = Vec::new();
    for rep in 0..reps {
        observer.progress(
            0.2 + 0.25 * rep as f64 / reps as f64,
            &format!("pp{} rep {}", options.n_prompt, rep + 1),
        );
        let prompt = ids(options.n_prompt, vocab, rep + 1);
        let mut cache = model.new_cache();
        let start = Instant::now();
        let logits = model.forward(&mut [SeqInput {
            tokens: &prompt,
            cache: &mut cache,
            all_logits: false,
        }])?;
        argmax(&logits)?;
        pp.push(options.n_prompt as f64 / start.elapsed().as_secs_f64());
        peak.sample();
        check(observer)?;
    }

    let mut tg = Vec::new();
    for rep in 0..reps {
        observer.progress(
            0.45 + 0.3 * rep as f64 / reps as f64,
            &format!("tg{} rep {}", options.n_gen, rep + 1),
        );
        let mut cache = model.new_cache();
        let mut token = ids(1, vocab, rep + 1)[0];
        let start = Instant::now();
        for _ in 0..options.n_gen {
            let logits = model.forward(&mut [SeqInput {
                tokens: &[token],
                cache: &mut cache,
                all_logits: false,
            }])?;
            token = argmax(&logits)?[0];
        }
        tg.push(options.n_gen as f64 / start.elapsed().as_secs_f64());
        peak.sample();
        check(observer)?;
    }

    let mut ttft = Vec::new();
    for rep in 0..reps {
        let prompt = ids(options.ttft_prompt, vocab, 100 + rep);
        let mut cache = model.new_cache();
        let start = Instant::now();
        let logits = model.forward(&mut [SeqInput {
            tokens: &prompt,
            cache: &mut cache,
            all_logits: false,
        }])?;
        argmax(&logits)?;
        ttft.push(start.elapsed().as_secs_f64() * 1e3);
    }
    check(observer)?;

    let mut batched = Vec::new();
    let batch_reps = reps.min(3);
    for (i, &b) in options.batches.iter().enumerate() {
        observer.progress(
            0.8 + 0.2 * i as f64 / options.batches.len() as f64,
            &format!("decode at batch {b}"),
        );
        let mut samples = Vec::new();
        for rep in 0..batch_reps {
            let mut caches: Vec<_> = (0..b).map(|_| model.new_cache()).collect();
            let prompts: Vec<Vec<u32>> = (0..b).map(|s| ids(16, vocab, 1000 + s + rep)).collect();
            let mut seqs: Vec<SeqInput> = caches
                .iter_mut()
                .zip(&prompts)
                .map(|(cache, p)| SeqInput {
                    tokens: p,
                    cache,
                    all_logits: false,
                })
                .collect();
            let mut next = argmax(&model.forward(&mut seqs)?)?;
            drop(seqs);
            let start = Instant::now();
            for _ in 0..options.batch_steps {
                let tokens: Vec<[u32; 1]> = next.iter().map(|&t| [t]).collect();
                let mut seqs: Vec<SeqInput> = caches
                    .iter_mut()
                    .zip(&tokens)
                    .map(|(cache, t)| SeqInput {
                        tokens: t,
                        cache,
                        all_logits: false,
                    })
                    .collect();
                next = argmax(&model.forward(&mut seqs)?)?;
            }
            samples.push((b * options.batch_steps) as f64 / start.elapsed().as_secs_f64());
            peak.sample();
            check(observer)?;
        }
        batched.push((b, samples));
    }

    // Measured again after the tests, keeping the best of each: a ceiling taken while something
    // else ran on the machine would be too low.
    observer.progress(0.98, "measuring the ceilings again");
    let after = ceiling::measure(device, facts.weight_bytes_per_token, &types)?;
    let ceilings = before.best_with(&after);
    let bandwidth_bound = ceilings.read_bandwidth_bytes_per_s / facts.weight_bytes_per_token as f64;
    // A prompt computes the head once (for its last token); a decode step once per sequence.
    let prompt_bound = ceilings.compute_bound(options.n_prompt);
    let compute_bound = ceilings.compute_bound(1);
    let mut speeds = vec![
        speed(
            format!("pp{}", options.n_prompt),
            Stat::of(pp),
            prompt_bound,
            "compute",
        ),
        speed(
            format!("tg{}", options.n_gen),
            Stat::of(tg),
            bandwidth_bound,
            "memory",
        ),
    ];
    for (b, samples) in batched {
        // Each step reads the weights once for all b sequences, until compute runs out.
        let (limit, bound) = if b as f64 * bandwidth_bound < compute_bound {
            (b as f64 * bandwidth_bound, "memory")
        } else {
            (compute_bound, "compute")
        };
        speeds.push(speed(
            format!("tg{}@b{b}", options.batch_steps),
            Stat::of(samples),
            limit,
            bound,
        ));
    }
    observer.progress(1.0, "done");
    Ok(BenchResult {
        model: facts,
        device: device_name(device),
        device_note,
        threads: crate::engine::device::cpu_threads(),
        gpus: (!device.is_cpu())
            .then(|| super::nvidia::probe().ok().map(|r| r.gpus))
            .flatten(),
        software: format!("lantern {}", env!("CARGO_PKG_VERSION")),
        options,
        ceilings,
        speeds,
        ttft_ms: Stat::of(ttft),
        peak_rss_bytes: peak.0,
        finished_at: crate::clock::unix_seconds(),
    })
}

fn speed(test: String, tokens_per_second: Stat, roofline: f64, bound: &'static str) -> Speed {
    Speed {
        roofline_fraction: tokens_per_second.mean / roofline,
        test,
        tokens_per_second,
        roofline_tokens_per_second: roofline,
        bound,
    }
}

pub fn device_name(device: &Device) -> String {
    match device {
        Device::Cpu => "cpu".into(),
        Device::Cuda(_) => "cuda".into(),
        Device::Metal(_) => "metal".into(),
    }
}

/// What to benchmark: an installed GGUF at `path`, or (`path` None) `synthetic:SHAPE` with
/// `quantization` weights.
pub struct Target<'a> {
    pub model: &'a str,
    pub path: Option<&'a Path>,
    pub quantization: Option<&'a str>,
    /// Keep a synthetic model's file in this directory (and reuse it when it is there), so
    /// another engine can be measured on the very same file.
    pub keep_synthetic: Option<&'a Path>,
}

/// Benchmark `target`; a synthetic model is written into `scratch` and deleted afterwards,
/// unless the target keeps it.
pub fn run_model(
    target: &Target,
    scratch: &Path,
    device: &Device,
    device_note: Option<String>,
    options: Options,
    observer: &mut dyn Observer,
) -> Result<BenchResult, BenchError> {
    let model = target.model;
    if let Some(path) = target.path {
        return run(model, path, device, device_note, options, observer);
    }
    let shape_name = model.strip_prefix("synthetic:").ok_or_else(|| {
        BenchError::Load(format!(
            "`{model}` is neither installed nor synthetic:SHAPE"
        ))
    })?;
    let names: Vec<&str> = super::synthetic::SHAPES.iter().map(|s| s.name).collect();
    let shape = super::synthetic::shape(shape_name).ok_or_else(|| {
        BenchError::Options(format!(
            "unknown synthetic shape `{shape_name}` (known: {})",
            names.join(", ")
        ))
    })?;
    let q = target.quantization.unwrap_or("q4_k");
    let dtype = super::synthetic::parse_dtype(q).ok_or_else(|| {
        BenchError::Options(format!(
            "unknown quantization `{q}` (f32, f16, q4_0, q4_1, q5_0, q5_1, q8_0, q2_k … q6_k)"
        ))
    })?;
    observer.progress(
        0.0,
        &format!("writing a synthetic {shape_name} model in {q}"),
    );
    let written = |dir: &Path| {
        super::synthetic::write(&shape, dtype, dir)
            .map_err(|e| BenchError::Load(format!("writing the synthetic model: {e:#}")))
    };
    if let Some(keep) = target.keep_synthetic {
        // Synthetic weights are seeded: the same shape and type are the same file.
        let dir = keep.join(format!("{shape_name}-{}", q.to_ascii_lowercase()));
        let existing = std::fs::read_dir(&dir).ok().and_then(|entries| {
            entries
                .flatten()
                .map(|e| e.path())
                .find(|p| p.extension().is_some_and(|x| x == "gguf"))
        });
        let path = match existing {
            Some(path) => path,
            None => written(&dir)?,
        };
        return run(model, &path, device, device_note, options, observer);
    }
    let dir = scratch.join(format!("synthetic-{}", std::process::id()));
    let path = written(&dir)?;
    let result = run(model, &path, device, device_note, options, observer);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

#[cfg(test)]
#[path = "bench_tests.rs"]
mod tests;
