//! Synthetic models: real llama shapes (1B, 3B, 8B, and a tiny one for tests) and Qwen3-30B-A3B's
//! mixture-of-experts shape, with random weights in any quantization, written as a GGUF on the
//! fly, so a device can be benchmarked at sizes nobody has downloaded. Every row of a matrix
//! repeats one random quantized row: the bytes read per token, and so the speed, are those of a
//! real model of that shape. A mixture-of-experts model's embedding rows and router are random
//! in full, so each token picks its own experts, as in a real model.

use std::path::{Path, PathBuf};

use candle_core::quantized::{gguf_file, GgmlDType, QStorage, QTensor};
use candle_core::{Device, Tensor};
use serde::Serialize;

/// A llama-family shape.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Shape {
    pub name: &'static str,
    pub layers: usize,
    pub d_model: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub ffn: usize,
    pub vocab: usize,
    /// The output head reuses the embedding table (Llama 3.2 1B and 3B do).
    pub tied: bool,
    /// Each head's width (Qwen3-MoE's 128 with 32 heads exceeds d_model / heads).
    pub head_dim: usize,
    /// Experts: (count, used per token, each one's width); None for a dense llama.
    pub experts: Option<(usize, usize, usize)>,
}

impl Shape {
    const fn dense(
        name: &'static str,
        (layers, d_model, heads, kv_heads, ffn, vocab): (usize, usize, usize, usize, usize, usize),
        tied: bool,
    ) -> Self {
        Shape {
            name,
            layers,
            d_model,
            heads,
            kv_heads,
            ffn,
            vocab,
            tied,
            head_dim: d_model / heads,
            experts: None,
        }
    }

    /// Qwen3-30B-A3B's shape (128 experts of width 768, 8 per token), with `layers` of its 48.
    const fn qwen3_30b_a3b(name: &'static str, layers: usize) -> Self {
        Shape {
            name,
            layers,
            d_model: 2048,
            heads: 32,
            kv_heads: 4,
            ffn: 6144,
            vocab: 49_152,
            tied: false,
            head_dim: 128,
            experts: Some((128, 8, 768)),
        }
    }

    fn architecture(&self) -> &'static str {
        if self.experts.is_some() {
            "qwen3moe"
        } else {
            "llama"
        }
    }
}

/// The shapes `synthetic:NAME` knows: Llama 3.2 1B and 3B, Llama 3.1 8B, a tiny one, and
/// Qwen3-30B-A3B (`30b-a3b`; `30b-a3b-12`: its first 12 layers, for machines without the 17 GB
/// its Q4_K takes).
pub const SHAPES: [Shape; 6] = [
    Shape::dense("tiny", (4, 256, 4, 2, 768, 4096), true),
    Shape::dense("1b", (16, 2048, 32, 8, 8192, 128_256), true),
    Shape::dense("3b", (28, 3072, 24, 8, 8192, 128_256), true),
    Shape::dense("8b", (32, 4096, 32, 8, 14_336, 128_256), false),
    Shape::qwen3_30b_a3b("30b-a3b", 48),
    Shape::qwen3_30b_a3b("30b-a3b-12", 12),
];

pub fn shape(name: &str) -> Option<Shape> {
    SHAPES.iter().copied().find(|s| s.name == name)
}

/// Quantization names as users write them (`q4_k`, `Q4_K_M`, `q8_0`, `f16`).
pub fn parse_dtype(name: &str) -> Option<GgmlDType> {
    let n = name.to_ascii_lowercase().replace('-', "_");
    let n = n.trim_end_matches("_m").trim_end_matches("_s");
    Some(match n {
        "f32" => GgmlDType::F32,
        "f16" => GgmlDType::F16,
        "q4_0" => GgmlDType::Q4_0,
        "q4_1" => GgmlDType::Q4_1,
        "q5_0" => GgmlDType::Q5_0,
        "q5_1" => GgmlDType::Q5_1,
        "q8_0" => GgmlDType::Q8_0,
        "q2_k" => GgmlDType::Q2K,
        "q3_k" => GgmlDType::Q3K,
        "q4_k" => GgmlDType::Q4K,
        "q5_k" => GgmlDType::Q5K,
        "q6_k" => GgmlDType::Q6K,
        _ => return None,
    })
}

/// A `dims` tensor of `dtype` random in every value.
fn random(dims: &[usize], dtype: GgmlDType, seed: u64) -> candle_core::Result<QTensor> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let n: usize = dims.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.random_range(-0.05f32..0.05)).collect();
    QTensor::quantize(&Tensor::from_vec(v, dims, &Device::Cpu)?, dtype)
}

/// An `(rows, cols)` matrix of `dtype` whose rows all repeat one random row.
fn matrix(rows: usize, cols: usize, dtype: GgmlDType, seed: u64) -> candle_core::Result<QTensor> {
    let row: Vec<f32> = {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        (0..cols)
            .map(|_| rng.random_range(-0.05f32..0.05))
            .collect()
    };
    let one = QTensor::quantize(&Tensor::from_vec(row, (1, cols), &Device::Cpu)?, dtype)?;
    let bytes = one.data()?;
    let mut data = Vec::with_capacity(bytes.len() * rows);
    for _ in 0..rows {
        data.extend_from_slice(&bytes);
    }
    QTensor::new(
        QStorage::from_data(std::borrow::Cow::Owned(data), &Device::Cpu, dtype)?,
        (rows, cols),
    )
}

/// `n` stacked experts' `(rows, cols)` matrices, each repeating one random row.
fn experts(
    n: usize,
    rows: usize,
    cols: usize,
    dtype: GgmlDType,
    seed: u64,
) -> candle_core::Result<QTensor> {
    let one = matrix(rows, cols, dtype, seed)?.data()?.into_owned();
    let mut data = Vec::with_capacity(one.len() * n);
    for _ in 0..n {
        data.extend_from_slice(&one);
    }
    QTensor::new(
        QStorage::from_data(std::borrow::Cow::Owned(data), &Device::Cpu, dtype)?,
        (n, rows, cols),
    )
}

fn ones(n: usize) -> candle_core::Result<QTensor> {
    QTensor::quantize(
        &Tensor::ones(n, candle_core::DType::F32, &Device::Cpu)?,
        GgmlDType::F32,
    )
}

/// Write `shape` with `dtype` weights as a GGUF in `dir`; returns its path.
pub fn write(shape: &Shape, dtype: GgmlDType, dir: &Path) -> anyhow::Result<PathBuf> {
    let block = dtype.block_size();
    let hd = shape.head_dim;
    let expert_ffn = shape.experts.map_or(shape.ffn, |e| e.2);
    for (what, n) in [("d_model", shape.d_model), ("ffn", expert_ffn)] {
        anyhow::ensure!(
            n % block == 0,
            "{what} {n} of shape {} is not a multiple of {dtype:?}'s block of {block}",
            shape.name
        );
    }
    let (d, ffn) = (shape.d_model, shape.ffn);
    let embedding = match shape.experts {
        // Tokens that differ from the start, so that each picks its own experts.
        Some(_) => random(&[shape.vocab, d], dtype, 1)?,
        None => matrix(shape.vocab, d, dtype, 1)?,
    };
    let mut tensors: Vec<(String, QTensor)> = vec![
        ("token_embd.weight".into(), embedding),
        ("output_norm.weight".into(), ones(d)?),
    ];
    if !shape.tied {
        tensors.push(("output.weight".into(), matrix(shape.vocab, d, dtype, 2)?));
    }
    for l in 0..shape.layers {
        let seed = 100 + 10 * l as u64;
        let p = |n: &str| format!("blk.{l}.{n}.weight");
        tensors.push((p("attn_norm"), ones(d)?));
        tensors.push((p("attn_q"), matrix(shape.heads * hd, d, dtype, seed)?));
        tensors.push((
            p("attn_k"),
            matrix(shape.kv_heads * hd, d, dtype, seed + 1)?,
        ));
        tensors.push((
            p("attn_v"),
            matrix(shape.kv_heads * hd, d, dtype, seed + 2)?,
        ));
        tensors.push((
            p("attn_output"),
            matrix(d, shape.heads * hd, dtype, seed + 3)?,
        ));
        tensors.push((p("ffn_norm"), ones(d)?));
        match shape.experts {
            Some((n, _, w)) => {
                tensors.push((p("attn_q_norm"), ones(hd)?));
                tensors.push((p("attn_k_norm"), ones(hd)?));
                // The router stays f32, as llama.cpp's quantize keeps it.
                tensors.push((
                    p("ffn_gate_inp"),
                    random(&[n, d], GgmlDType::F32, seed + 7)?,
                ));
                tensors.push((p("ffn_gate_exps"), experts(n, w, d, dtype, seed + 4)?));
                tensors.push((p("ffn_up_exps"), experts(n, w, d, dtype, seed + 5)?));
                tensors.push((p("ffn_down_exps"), experts(n, d, w, dtype, seed + 6)?));
            }
            None => {
                tensors.push((p("ffn_gate"), matrix(ffn, d, dtype, seed + 4)?));
                tensors.push((p("ffn_up"), matrix(ffn, d, dtype, seed + 5)?));
                tensors.push((p("ffn_down"), matrix(d, ffn, dtype, seed + 6)?));
            }
        }
    }
    use gguf_file::Value;
    let name = format!(
        "synthetic-{}-{}",
        shape.name,
        format!("{dtype:?}").to_lowercase()
    );
    let arch = shape.architecture();
    let key = |k: &str| format!("{arch}.{k}");
    let mut metadata: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String(arch.into())),
        ("general.name".into(), Value::String(name.clone())),
        (key("block_count"), Value::U32(shape.layers as u32)),
        (key("embedding_length"), Value::U32(d as u32)),
        (key("attention.head_count"), Value::U32(shape.heads as u32)),
        (
            key("attention.head_count_kv"),
            Value::U32(shape.kv_heads as u32),
        ),
        (key("attention.key_length"), Value::U32(hd as u32)),
        (key("attention.value_length"), Value::U32(hd as u32)),
        (key("feed_forward_length"), Value::U32(ffn as u32)),
        (key("context_length"), Value::U32(4096)),
        (key("attention.layer_norm_rms_epsilon"), Value::F32(1e-5)),
        (key("rope.freq_base"), Value::F32(500_000.0)),
        // No vocabulary but its size: llama.cpp's loader then takes the file (dummy tokens).
        ("tokenizer.ggml.model".into(), Value::String("none".into())),
        (key("vocab_size"), Value::U32(shape.vocab as u32)),
    ];
    if let Some((n, used, w)) = shape.experts {
        metadata.extend([
            (key("expert_count"), Value::U32(n as u32)),
            (key("expert_used_count"), Value::U32(used as u32)),
            (key("expert_feed_forward_length"), Value::U32(w as u32)),
        ]);
    }
    std::fs::create_dir_all(dir)?;
    let path = dir.join(format!("{name}.gguf"));
    let tmp = path.with_extension("gguf.partial");
    let mut file = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
    let meta: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    gguf_file::write(&mut file, &meta, &refs)?;
    use std::io::Write;
    file.flush()?;
    drop(file);
    std::fs::rename(&tmp, &path)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::gguf::GgufFile;
    use crate::engine::models::{SeqInput, Transformer};

    #[test]
    fn a_tiny_synthetic_model_loads_and_runs() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(&shape("tiny").unwrap(), GgmlDType::Q4K, dir.path()).unwrap();
        let gguf = GgufFile::open(&path).unwrap();
        let model = Transformer::load(&gguf, &Device::Cpu).unwrap();
        assert_eq!((model.info.n_layers, model.info.vocab_size), (4, 4096));
        let mut cache = model.new_cache();
        let logits = model
            .forward(&mut [SeqInput {
                tokens: &[1, 2, 3],
                cache: &mut cache,
                all_logits: false,
            }])
            .unwrap();
        assert_eq!(logits.dims(), [1, 4096]);
        assert_eq!(cache.len(), 3);
    }

    #[test]
    fn a_mixture_of_experts_shape_loads_and_routes_its_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let shape = Shape {
            name: "tiny-moe",
            layers: 2,
            experts: Some((8, 2, 256)),
            head_dim: 32,
            ..shape("tiny").unwrap()
        };
        let path = write(&shape, GgmlDType::Q8_0, dir.path()).unwrap();
        let gguf = GgufFile::open(&path).unwrap();
        assert_eq!(gguf.architecture().unwrap(), "qwen3moe");
        let model = Transformer::load(&gguf, &Device::Cpu).unwrap();
        let mut cache = model.new_cache();
        let logits = model
            .forward(&mut [SeqInput {
                tokens: &[1, 2, 3, 4],
                cache: &mut cache,
                all_logits: true,
            }])
            .unwrap();
        assert_eq!(logits.dims(), [4, 4096]);
        // Random embeddings: different tokens, different answers.
        let rows = logits.to_vec2::<f32>().unwrap();
        assert_ne!(rows[0], rows[1]);
    }

    #[test]
    fn dtypes_parse_as_users_write_them() {
        assert_eq!(parse_dtype("Q4_K_M"), Some(GgmlDType::Q4K));
        assert_eq!(parse_dtype("q8_0"), Some(GgmlDType::Q8_0));
        assert_eq!(parse_dtype("q9"), None);
    }
}
