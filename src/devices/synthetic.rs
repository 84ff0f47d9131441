//! Synthetic models: real llama shapes (1B, 3B, 8B, and a tiny one for tests) with random weights
//! in any quantization, written as a GGUF on the fly, so a device can be benchmarked at sizes
//! nobody has downloaded. Every row of a matrix repeats one random quantized row: the bytes read
//! per token, and so the speed, are those of a real model of that shape.

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
}

/// The shapes `synthetic:NAME` knows: Llama 3.2 1B and 3B, Llama 3.1 8B, and a tiny one.
pub const SHAPES: [Shape; 4] = [
    Shape {
        name: "tiny",
        layers: 4,
        d_model: 256,
        heads: 4,
        kv_heads: 2,
        ffn: 768,
        vocab: 4096,
        tied: true,
    },
    Shape {
        name: "1b",
        layers: 16,
        d_model: 2048,
        heads: 32,
        kv_heads: 8,
        ffn: 8192,
        vocab: 128_256,
        tied: true,
    },
    Shape {
        name: "3b",
        layers: 28,
        d_model: 3072,
        heads: 24,
        kv_heads: 8,
        ffn: 8192,
        vocab: 128_256,
        tied: true,
    },
    Shape {
        name: "8b",
        layers: 32,
        d_model: 4096,
        heads: 32,
        kv_heads: 8,
        ffn: 14_336,
        vocab: 128_256,
        tied: false,
    },
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

fn ones(n: usize) -> candle_core::Result<QTensor> {
    QTensor::quantize(
        &Tensor::ones(n, candle_core::DType::F32, &Device::Cpu)?,
        GgmlDType::F32,
    )
}

/// Write `shape` with `dtype` weights as a GGUF in `dir`; returns its path.
pub fn write(shape: &Shape, dtype: GgmlDType, dir: &Path) -> anyhow::Result<PathBuf> {
    let block = dtype.block_size();
    let hd = shape.d_model / shape.heads;
    for (what, n) in [("d_model", shape.d_model), ("ffn", shape.ffn)] {
        anyhow::ensure!(
            n % block == 0,
            "{what} {n} of shape {} is not a multiple of {dtype:?}'s block of {block}",
            shape.name
        );
    }
    let (d, ffn) = (shape.d_model, shape.ffn);
    let mut tensors: Vec<(String, QTensor)> = vec![
        (
            "token_embd.weight".into(),
            matrix(shape.vocab, d, dtype, 1)?,
        ),
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
        tensors.push((p("ffn_gate"), matrix(ffn, d, dtype, seed + 4)?));
        tensors.push((p("ffn_up"), matrix(ffn, d, dtype, seed + 5)?));
        tensors.push((p("ffn_down"), matrix(d, ffn, dtype, seed + 6)?));
    }
    use gguf_file::Value;
    let name = format!(
        "synthetic-{}-{}",
        shape.name,
        format!("{dtype:?}").to_lowercase()
    );
    let metadata: Vec<(&str, Value)> = vec![
        ("general.architecture", Value::String("llama".into())),
        ("general.name", Value::String(name.clone())),
        ("llama.block_count", Value::U32(shape.layers as u32)),
        ("llama.embedding_length", Value::U32(d as u32)),
        ("llama.attention.head_count", Value::U32(shape.heads as u32)),
        (
            "llama.attention.head_count_kv",
            Value::U32(shape.kv_heads as u32),
        ),
        ("llama.feed_forward_length", Value::U32(ffn as u32)),
        ("llama.context_length", Value::U32(4096)),
        ("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-5)),
        ("llama.rope.freq_base", Value::F32(500_000.0)),
    ];
    std::fs::create_dir_all(dir)?;
    let path = dir.join(format!("{name}.gguf"));
    let tmp = path.with_extension("gguf.partial");
    let mut file = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
    let meta: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (*k, v)).collect();
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
    fn dtypes_parse_as_users_write_them() {
        assert_eq!(parse_dtype("Q4_K_M"), Some(GgmlDType::Q4K));
        assert_eq!(parse_dtype("q8_0"), Some(GgmlDType::Q8_0));
        assert_eq!(parse_dtype("q9"), None);
    }
}
