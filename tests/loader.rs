//! The loader on fused layouts, in every weight type a GGUF can hold: Phi-3's one `attn_qkv` and
//! gate-and-up `ffn_up`, and a mixture-of-experts file's stacked `ffn_gate_up_exps`. Each file is
//! written twice with the same random weights, fused and as separate tensors (both layouts are
//! valid GGUF that llama.cpp loads); the fused one must load without a panic and give exactly the
//! separate one's logits, or be refused with an error naming a tensor.

use std::path::{Path, PathBuf};

use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use lantern::engine::gguf::GgufFile;
use lantern::engine::models::{SeqInput, Transformer};

const D: usize = 256;
const HEADS: usize = 4;
const KV_HEADS: usize = 2;
const HEAD_DIM: usize = 64;
const FFN: usize = 512;
const VOCAB: usize = 512;
const EXPERTS: usize = 4;

const TYPES: [GgmlDType; 13] = [
    GgmlDType::F32,
    GgmlDType::F16,
    GgmlDType::BF16,
    GgmlDType::Q4_0,
    GgmlDType::Q4_1,
    GgmlDType::Q5_0,
    GgmlDType::Q5_1,
    GgmlDType::Q8_0,
    GgmlDType::Q2K,
    GgmlDType::Q3K,
    GgmlDType::Q4K,
    GgmlDType::Q5K,
    GgmlDType::Q6K,
];

/// A random matrix from a fixed seed, (rows, cols) or (experts, rows, cols).
fn random(dims: &[usize], seed: u64) -> Tensor {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let n: usize = dims.iter().product();
    let scale = (*dims.last().unwrap() as f32).powf(-0.5);
    let v: Vec<f32> = (0..n)
        .map(|_| rng.random_range(-1.7f32..1.7) * scale)
        .collect();
    Tensor::from_vec(v, dims, &Device::Cpu).unwrap()
}

fn ones(n: usize) -> QTensor {
    QTensor::quantize(
        &Tensor::ones(n, candle_core::DType::F32, &Device::Cpu).unwrap(),
        GgmlDType::F32,
    )
    .unwrap()
}

/// Which layout of which architecture to write.
#[derive(Clone, Copy, Debug)]
enum Layout {
    Phi3 { fused: bool },
    Experts { fused: bool },
}

fn write(layout: Layout, dtype: GgmlDType, dir: &Path) -> PathBuf {
    use gguf_file::Value;
    let q = |t: &Tensor| QTensor::quantize(t, dtype).unwrap();
    let (arch, fused) = match layout {
        Layout::Phi3 { fused } => ("phi3", fused),
        Layout::Experts { fused } => ("qwen3moe", fused),
    };
    let (qw, kvw) = (HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM);
    let mut tensors: Vec<(String, QTensor)> = vec![
        ("token_embd.weight".into(), q(&random(&[VOCAB, D], 1))),
        ("output_norm.weight".into(), ones(D)),
        ("output.weight".into(), q(&random(&[VOCAB, D], 2))),
    ];
    let p = |n: &str| format!("blk.0.{n}.weight");
    let (wq, wk, wv) = (
        random(&[qw, D], 3),
        random(&[kvw, D], 4),
        random(&[kvw, D], 5),
    );
    if fused && matches!(layout, Layout::Phi3 { .. }) {
        tensors.push((p("attn_qkv"), q(&Tensor::cat(&[&wq, &wk, &wv], 0).unwrap())));
    } else {
        tensors.push((p("attn_q"), q(&wq)));
        tensors.push((p("attn_k"), q(&wk)));
        tensors.push((p("attn_v"), q(&wv)));
    }
    tensors.push((p("attn_output"), q(&random(&[D, qw], 6))));
    tensors.push((p("attn_norm"), ones(D)));
    tensors.push((p("ffn_norm"), ones(D)));
    let mut metadata = vec![(
        format!("{arch}.feed_forward_length"),
        Value::U32(FFN as u32),
    )];
    match layout {
        Layout::Phi3 { fused } => {
            let (gate, up) = (random(&[FFN, D], 7), random(&[FFN, D], 8));
            if fused {
                tensors.push((p("ffn_up"), q(&Tensor::cat(&[&gate, &up], 0).unwrap())));
            } else {
                tensors.push((p("ffn_gate"), q(&gate)));
                tensors.push((p("ffn_up"), q(&up)));
            }
            tensors.push((p("ffn_down"), q(&random(&[D, FFN], 9))));
        }
        Layout::Experts { fused } => {
            let (gate, up) = (random(&[EXPERTS, FFN, D], 7), random(&[EXPERTS, FFN, D], 8));
            if fused {
                let both = Tensor::cat(&[&gate, &up], 1).unwrap();
                tensors.push((p("ffn_gate_up_exps"), q(&both)));
            } else {
                tensors.push((p("ffn_gate_exps"), q(&gate)));
                tensors.push((p("ffn_up_exps"), q(&up)));
            }
            tensors.push((p("ffn_down_exps"), q(&random(&[EXPERTS, D, FFN], 9))));
            let router = random(&[EXPERTS, D], 10);
            tensors.push((
                p("ffn_gate_inp"),
                QTensor::quantize(&router, GgmlDType::F32).unwrap(),
            ));
            metadata.push((format!("{arch}.expert_count"), Value::U32(EXPERTS as u32)));
            metadata.push((format!("{arch}.expert_used_count"), Value::U32(2)));
            metadata.push((
                format!("{arch}.expert_feed_forward_length"),
                Value::U32(FFN as u32),
            ));
        }
    }
    metadata.extend([
        ("general.architecture".into(), Value::String(arch.into())),
        (format!("{arch}.block_count"), Value::U32(1)),
        (format!("{arch}.embedding_length"), Value::U32(D as u32)),
        (
            format!("{arch}.attention.head_count"),
            Value::U32(HEADS as u32),
        ),
        (
            format!("{arch}.attention.head_count_kv"),
            Value::U32(KV_HEADS as u32),
        ),
        (format!("{arch}.context_length"), Value::U32(256)),
    ]);
    let path = dir.join(format!("{layout:?}-{dtype:?}.gguf").replace([' ', '{', '}', ':'], ""));
    let mut file = std::fs::File::create(&path).unwrap();
    let meta: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    gguf_file::write(&mut file, &meta, &refs).unwrap();
    path
}

/// The logits of a short prompt, or the load error's message.
fn logits(path: &Path) -> Result<Vec<f32>, String> {
    let gguf = GgufFile::open(path).map_err(|e| e.to_string())?;
    let model = Transformer::load(&gguf, &Device::Cpu).map_err(|e| e.to_string())?;
    let mut cache = model.new_cache();
    let out = model
        .forward(&mut [SeqInput {
            tokens: &[1, 7, 42, 300, 5],
            cache: &mut cache,
            all_logits: true,
        }])
        .map_err(|e| e.to_string())?;
    Ok(out.flatten_all().unwrap().to_vec1::<f32>().unwrap())
}

#[test]
fn fused_layouts_load_in_every_type_as_their_separate_tensors_do() {
    let dir = tempfile::tempdir().unwrap();
    let mut loaded = Vec::new();
    for dtype in TYPES {
        for (fused, separate) in [
            (Layout::Phi3 { fused: true }, Layout::Phi3 { fused: false }),
            (
                Layout::Experts { fused: true },
                Layout::Experts { fused: false },
            ),
        ] {
            let case = format!("{fused:?} in {dtype:?}");
            let path = write(fused, dtype, dir.path());
            let got = std::panic::catch_unwind(|| logits(&path))
                .unwrap_or_else(|_| panic!("{case}: the loader panicked"));
            match got {
                Ok(got) => {
                    let want = logits(&write(separate, dtype, dir.path()))
                        .unwrap_or_else(|e| panic!("{case}: the separate layout failed: {e}"));
                    assert!(got.iter().all(|v| v.is_finite()), "{case}");
                    assert_eq!(got, want, "{case}: fused and separate disagree");
                    loaded.push(case);
                }
                Err(e) => assert!(
                    e.contains("blk.0."),
                    "{case}: an error naming no tensor: {e}"
                ),
            }
        }
    }
    // Every type Lantern runs, f16 and f32 among them, loads in both fused layouts.
    assert!(loaded.len() >= 2 * 12, "only {loaded:?} loaded");
}
