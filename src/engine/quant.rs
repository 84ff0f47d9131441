//! Requantize a GGUF to another weight type and write it back: every matrix is dequantized to
//! f32 and quantized again with candle's quantizers; vectors (norms, biases) stay as they are;
//! the metadata is kept. A matrix whose rows do not split into the target's blocks (K-quants
//! need multiples of 256) takes llama.cpp's fallback type for it, and the report says how many.

use std::path::{Path, PathBuf};

use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::Device;
use serde::Serialize;

use super::gguf::{dtype_name, GgufFile};

/// Why a file could not be requantized.
#[derive(Debug, thiserror::Error)]
pub enum QuantError {
    #[error("{0}")]
    Source(#[from] super::gguf::GgufError),
    #[error("unknown target type `{0}` (q8_0, q6_k, q5_k, q5_1, q5_0, q4_k, q4_1, q4_0, q3_k, q2_k, f16, bf16)")]
    UnknownType(String),
    #[error("tensor {name}: {source}")]
    Tensor {
        name: String,
        source: candle_core::Error,
    },
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cancelled")]
    Cancelled,
}

/// Target types users can ask for, by the names llama.cpp's `quantize` uses.
pub fn parse_target(name: &str) -> Result<GgmlDType, QuantError> {
    Ok(match name.to_ascii_lowercase().replace('-', "_").as_str() {
        "q8_0" => GgmlDType::Q8_0,
        "q6_k" | "q6k" => GgmlDType::Q6K,
        "q5_k" | "q5k" | "q5_k_m" | "q5_k_s" => GgmlDType::Q5K,
        "q5_1" => GgmlDType::Q5_1,
        "q5_0" => GgmlDType::Q5_0,
        "q4_k" | "q4k" | "q4_k_m" | "q4_k_s" => GgmlDType::Q4K,
        "q4_1" => GgmlDType::Q4_1,
        "q4_0" => GgmlDType::Q4_0,
        "q3_k" | "q3k" | "q3_k_m" => GgmlDType::Q3K,
        "q2_k" | "q2k" => GgmlDType::Q2K,
        "f16" => GgmlDType::F16,
        "bf16" => GgmlDType::BF16,
        _ => return Err(QuantError::UnknownType(name.to_string())),
    })
}

/// llama.cpp's choice when a row does not split into the target's blocks.
fn fallback(to: GgmlDType) -> GgmlDType {
    match to {
        GgmlDType::Q2K | GgmlDType::Q3K => GgmlDType::Q4_0,
        GgmlDType::Q4K => GgmlDType::Q5_0,
        GgmlDType::Q5K => GgmlDType::Q5_1,
        GgmlDType::Q6K => GgmlDType::Q8_0,
        other => other,
    }
}

/// llama.cpp's `general.file_type` for a file made of one type (None for the K-quants, whose
/// llama.cpp files mix types and name the mix).
fn file_type(to: GgmlDType) -> Option<u32> {
    Some(match to {
        GgmlDType::F16 => 1,
        GgmlDType::BF16 => 32,
        GgmlDType::Q4_0 => 2,
        GgmlDType::Q4_1 => 3,
        GgmlDType::Q8_0 => 7,
        GgmlDType::Q5_0 => 8,
        GgmlDType::Q5_1 => 9,
        GgmlDType::Q6K => 18,
        _ => return None,
    })
}

/// What a requantization did.
#[derive(Debug, Clone, Serialize)]
pub struct QuantReport {
    pub source: PathBuf,
    pub output: PathBuf,
    pub source_quantization: String,
    pub target: String,
    pub tensors: usize,
    pub requantized: usize,
    /// Matrices written in the fallback type (rows not a multiple of the target's block).
    pub fallback: usize,
    pub fallback_type: Option<String>,
    /// Vectors and matrices kept as they were.
    pub kept: usize,
    pub source_bytes: u64,
    pub output_bytes: u64,
    /// Set when the source is itself quantized: the result cannot be better than it.
    pub warning: Option<String>,
}

/// Requantize `src` to `to`, writing `dst` (through a temporary file renamed at the end, so a
/// failure or cancel leaves nothing half-written). `progress(fraction, tensor)` returns false to
/// cancel.
pub fn requantize(
    src: &Path,
    dst: &Path,
    to: GgmlDType,
    progress: &mut dyn FnMut(f64, &str) -> bool,
) -> Result<QuantReport, QuantError> {
    let gguf = GgufFile::open(src)?;
    let mut reader = std::fs::File::open(src).map_err(|source| QuantError::Write {
        path: src.to_path_buf(),
        source,
    })?;
    let content = gguf_file::Content::read(&mut reader).map_err(|source| QuantError::Tensor {
        name: "(header)".into(),
        source,
    })?;
    let source_quantization = gguf.quantization().unwrap_or_else(|| "unknown".into());
    let total = gguf.tensor_order.len();
    let (mut requantized, mut fallback_count, mut kept) = (0, 0, 0);
    let mut tensors: Vec<(String, QTensor)> = Vec::with_capacity(total);
    for (i, name) in gguf.tensor_order.iter().enumerate() {
        if !progress(i as f64 / total as f64, name) {
            return Err(QuantError::Cancelled);
        }
        let err = |source| QuantError::Tensor {
            name: name.clone(),
            source,
        };
        let q = gguf.qtensor(name, &Device::Cpu)?;
        let dims = q.shape().dims().to_vec();
        // Vectors, and mixture-of-experts routers, stay as they are, as llama.cpp's quantize
        // keeps them: a router's scores pick the experts, and a small error there flips a pick.
        let target = if dims.len() < 2 || name.contains("ffn_gate_inp") {
            None
        } else if dims[dims.len() - 1] % to.block_size() == 0 {
            Some(to)
        } else {
            let f = fallback(to);
            (dims[dims.len() - 1] % f.block_size() == 0).then_some(f)
        };
        let out = match target {
            Some(t) if t == q.dtype() => {
                kept += 1;
                q
            }
            Some(t) => {
                if t != to {
                    fallback_count += 1;
                } else {
                    requantized += 1;
                }
                let f32s = q.dequantize(&Device::Cpu).map_err(err)?;
                QTensor::quantize(&f32s, t).map_err(err)?
            }
            None => {
                kept += 1;
                q
            }
        };
        tensors.push((name.clone(), out));
    }
    let mut metadata: Vec<(String, gguf_file::Value)> = content
        .metadata
        .into_iter()
        .filter(|(k, _)| k != "general.file_type" && k != "lantern.quantized_from")
        .collect();
    // The type's name only when it is the truth for every matrix.
    if let Some(ft) = file_type(to).filter(|_| fallback_count == 0) {
        metadata.push(("general.file_type".into(), gguf_file::Value::U32(ft)));
    }
    metadata.push((
        "lantern.quantized_from".into(),
        gguf_file::Value::String(source_quantization.clone()),
    ));
    metadata.sort_by(|a, b| a.0.cmp(&b.0));

    if !progress(1.0, "writing") {
        return Err(QuantError::Cancelled);
    }
    let write_err = |source| QuantError::Write {
        path: dst.to_path_buf(),
        source,
    };
    if let Some(dir) = dst.parent() {
        std::fs::create_dir_all(dir).map_err(write_err)?;
    }
    let partial = dst.with_extension("gguf.partial");
    let result = (|| {
        let mut file = std::io::BufWriter::new(std::fs::File::create(&partial)?);
        let meta: Vec<(&str, &gguf_file::Value)> =
            metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
        gguf_file::write(&mut file, &meta, &refs).map_err(std::io::Error::other)?;
        use std::io::Write;
        file.flush()?;
        file.get_ref().sync_all()?;
        drop(file);
        std::fs::rename(&partial, dst)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&partial);
        return Err(write_err(e));
    }
    // The written file must open as a model file before anyone is told it exists.
    let written = GgufFile::open(dst)?;
    let is_float = matches!(
        gguf.dominant_dtype(),
        Some(GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16)
    );
    Ok(QuantReport {
        source: src.to_path_buf(),
        output: dst.to_path_buf(),
        warning: (!is_float).then(|| {
            format!(
                "the source is itself quantized ({source_quantization}): the {} result can be \
                 no closer to the original weights than the source is",
                dtype_name(to)
            )
        }),
        source_quantization,
        target: dtype_name(to).to_string(),
        tensors: total,
        requantized,
        fallback: fallback_count,
        fallback_type: (fallback_count > 0).then(|| dtype_name(fallback(to)).to_string()),
        kept,
        source_bytes: gguf.file_size(),
        output_bytes: written.file_size(),
    })
}

/// Where a variant of the model installed at `src` (in `models/<name>/`) goes:
/// `models/<name>-<type>/<stem>.<TYPE>.gguf`, the variant's name being `<name>-<type>`.
pub fn variant_path(models_dir: &Path, name: &str, src: &Path, to: GgmlDType) -> (String, PathBuf) {
    let label = dtype_name(to);
    let variant = format!("{name}-{}", label.to_ascii_lowercase());
    let stem = src
        .file_stem()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_else(|| name.to_string());
    // SmolLM2-135M-Instruct.Q4_1 → SmolLM2-135M-Instruct
    let base = match stem.rsplit_once('.') {
        Some((base, suffix))
            if parse_target(suffix).is_ok() || suffix.eq_ignore_ascii_case("f32") =>
        {
            base.to_string()
        }
        _ => stem,
    };
    let file = models_dir
        .join(&variant)
        .join(format!("{base}.{label}.gguf"));
    (variant, file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_and_variants_are_named() {
        assert_eq!(parse_target("Q4_K_M").unwrap(), GgmlDType::Q4K);
        assert!(parse_target("q9_0").is_err());
        let (name, path) = variant_path(
            Path::new("/m"),
            "smollm2",
            Path::new("/m/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
            GgmlDType::Q8_0,
        );
        assert_eq!(name, "smollm2-q8_0");
        assert_eq!(
            path,
            Path::new("/m/smollm2-q8_0/SmolLM2-135M-Instruct.Q8_0.gguf")
        );
    }

    #[test]
    fn a_synthetic_model_requantizes_and_keeps_its_metadata() {
        let dir = tempfile::tempdir().unwrap();
        let shape = crate::devices::synthetic::shape("tiny").unwrap();
        let src = crate::devices::synthetic::write(&shape, GgmlDType::F16, dir.path()).unwrap();
        let dst = dir.path().join("out/tiny.Q4_K.gguf");
        let mut seen = 0;
        let report = requantize(&src, &dst, GgmlDType::Q4K, &mut |_, _| {
            seen += 1;
            true
        })
        .unwrap();
        assert!(report.warning.is_none(), "an f16 source is not quantized");
        assert_eq!(report.fallback, 0);
        assert_eq!(report.requantized, 4 * 7 + 1);
        assert!(seen > report.tensors);
        let out = GgufFile::open(&dst).unwrap();
        assert_eq!(out.quantization().as_deref(), Some("Q4_K"));
        assert_eq!(out.get_str("general.architecture").unwrap(), "llama");
        assert!(report.output_bytes < report.source_bytes / 2);
        // Cancelling leaves nothing behind.
        let other = dir.path().join("out/cancelled.gguf");
        let err = requantize(&src, &other, GgmlDType::Q8_0, &mut |f, _| f < 0.5).unwrap_err();
        assert!(matches!(err, QuantError::Cancelled));
        assert!(!other.exists() && !other.with_extension("gguf.partial").exists());
    }
}
