//! Sentence embeddings with a BERT-family encoder (all-MiniLM-L6-v2 and its kin) from a
//! sentence-transformers directory: `model.safetensors`, `config.json`, `tokenizer.json`, and
//! the pooling settings (`1_Pooling/config.json`, `sentence_bert_config.json`, `modules.json`).
//! The output is what sentence-transformers gives: the encoder's last hidden states pooled over
//! the real tokens (mean or [CLS]) and L2-normalized when the model has a Normalize module.
//!
//! Weights stay f32: 8-bit activations (the chat models' kernels) moved the vectors to cosine
//! 0.998 of sentence-transformers' on short texts, BERT's LayerNorm outputs have outliers. Speed
//! comes from gemm's AVX-512 kernels (Cargo.toml) and a vectorized GELU.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Embedding, LayerNorm, Linear, VarBuilder};
use candle_transformers::models::bert::{Config, HiddenAct};
use serde::Serialize;

/// Why an embedding model could not be loaded or run.
#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    #[error("cannot read {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("unsupported embedding model: {0}")]
    Unsupported(String),
    #[error("tokenizer failed: {0}")]
    Tokenizer(String),
    #[error("input of {tokens} tokens is longer than the model's window of {limit}")]
    TooLong { tokens: usize, limit: usize },
    #[error("an input with no tokens")]
    Empty,
    #[error("token id {id} is outside the vocabulary of {vocab}")]
    BadToken { id: u32, vocab: usize },
    #[error("tensor operation failed: {0}")]
    Candle(Box<candle_core::Error>),
}

impl From<candle_core::Error> for EmbedError {
    fn from(e: candle_core::Error) -> Self {
        Self::Candle(Box::new(e))
    }
}

/// How token states become one vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Pooling {
    /// Mean over the real tokens (the attention mask), sentence-transformers' default.
    Mean,
    /// The first token's state.
    Cls,
}

/// What users need to know about a loaded embedding model.
#[derive(Debug, Clone, Serialize)]
pub struct EmbeddingInfo {
    pub architecture: String,
    pub dimensions: usize,
    /// Longest input in tokens, [CLS] and [SEP] included (sentence-transformers' max_seq_length).
    pub max_tokens: usize,
    pub pooling: Pooling,
    pub normalize: bool,
    pub vocab_size: usize,
}

/// One input ready for the encoder.
#[derive(Debug, Clone, PartialEq)]
pub struct Tokenized {
    pub ids: Vec<u32>,
    /// The length before truncation, when the input was cut to the window.
    pub truncated_from: Option<usize>,
}

/// Most token positions (padding included) in one forward pass. It bounds memory whatever a
/// request sends, and smaller passes run faster here: activations of tens of MB are fresh
/// pages on every op (256 short texts: 414 embeddings/s at 16,384 positions, 590 at 2,048).
const MAX_BATCH_POSITIONS: usize = 2048;

/// erf(x) as a rational function of x (Eigen's `generic_fast_erf_float`, within 2e-6 of
/// libm's over all f32): plain arithmetic the compiler vectorizes, where libm's scalar `erff`
/// took a sixth of a batch.
#[inline(always)]
fn erf(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = x2.mul_add(-2.726_142_3e-10, 2.770_681_4e-8);
    p = x2.mul_add(p, -2.101_024e-6);
    p = x2.mul_add(p, -5.692_506_4e-5);
    p = x2.mul_add(p, -7.349_906_3e-4);
    p = x2.mul_add(p, -2.954_6e-3);
    p = x2.mul_add(p, -1.609_603_3e-2);
    let mut q = x2.mul_add(-1.456_607_2e-5, -2.133_740_6e-4);
    q = x2.mul_add(q, -1.682_827e-3);
    q = x2.mul_add(q, -7.373_329e-3);
    q = x2.mul_add(q, -1.426_474e-2);
    x * p / q
}

/// GELU with the exact (erf) form, as BERT's `hidden_act = "gelu"` means.
fn gelu_erf(x: &Tensor) -> candle_core::Result<Tensor> {
    let shape = x.shape().clone();
    let mut v = x.flatten_all()?.to_vec1::<f32>()?;
    crate::engine::pass_threads::for_each_chunk_mut(&mut v, 4096, |_, c| {
        for y in c {
            *y = 0.5 * *y * (1.0 + erf(*y * std::f32::consts::FRAC_1_SQRT_2));
        }
    });
    Tensor::from_vec(v, shape, x.device())
}

struct EncoderLayer {
    query: Linear,
    key: Linear,
    value: Linear,
    attention_out: Linear,
    attention_norm: LayerNorm,
    up: Linear,
    down: Linear,
    output_norm: LayerNorm,
}

/// BERT's encoder (post-norm), as Hugging Face's `BertModel` computes it.
struct Encoder {
    words: Embedding,
    positions: Embedding,
    token_types: Embedding,
    embedding_norm: LayerNorm,
    layers: Vec<EncoderLayer>,
    heads: usize,
    hidden: usize,
    act: HiddenAct,
}

impl Encoder {
    fn load(vb: VarBuilder, c: &Config) -> candle_core::Result<Self> {
        let vb = if vb.contains_tensor("bert.embeddings.word_embeddings.weight") {
            vb.pp("bert")
        } else {
            vb
        };
        let h = c.hidden_size;
        let ln = |vb: VarBuilder| candle_nn::layer_norm(h, c.layer_norm_eps, vb);
        let e = vb.pp("embeddings");
        let layers = (0..c.num_hidden_layers)
            .map(|i| {
                let l = vb.pp(format!("encoder.layer.{i}"));
                let a = l.pp("attention");
                let qkv = |p: &str| candle_nn::linear(h, h, a.pp("self").pp(p));
                Ok(EncoderLayer {
                    query: qkv("query")?,
                    key: qkv("key")?,
                    value: qkv("value")?,
                    attention_out: candle_nn::linear(h, h, a.pp("output.dense"))?,
                    attention_norm: ln(a.pp("output.LayerNorm"))?,
                    up: candle_nn::linear(h, c.intermediate_size, l.pp("intermediate.dense"))?,
                    down: candle_nn::linear(c.intermediate_size, h, l.pp("output.dense"))?,
                    output_norm: ln(l.pp("output.LayerNorm"))?,
                })
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Self {
            words: candle_nn::embedding(c.vocab_size, h, e.pp("word_embeddings"))?,
            positions: candle_nn::embedding(
                c.max_position_embeddings,
                h,
                e.pp("position_embeddings"),
            )?,
            token_types: candle_nn::embedding(c.type_vocab_size, h, e.pp("token_type_embeddings"))?,
            embedding_norm: ln(e.pp("LayerNorm"))?,
            layers,
            heads: c.num_attention_heads,
            hidden: h,
            act: c.hidden_act,
        })
    }

    /// `ids`, `mask`: (rows, len) → hidden states (rows, len, hidden).
    fn forward(&self, ids: &Tensor, mask: &Tensor) -> candle_core::Result<Tensor> {
        let (rows, len) = ids.dims2()?;
        let (h, heads) = (self.hidden, self.heads);
        let hd = h / heads;
        let positions = Tensor::arange(0u32, len as u32, ids.device())?;
        let x = self
            .words
            .forward(ids)?
            .broadcast_add(&self.positions.forward(&positions)?)?
            .broadcast_add(&self.token_types.forward(&ids.zeros_like()?)?)?;
        let mut x = self.embedding_norm.forward(&x)?.reshape((rows * len, h))?;
        // Padding gets the most negative score: after the softmax it weighs exactly nothing.
        let pad =
            ((mask.ones_like()? - mask)? * f64::from(f32::MIN))?.reshape((rows, 1, 1, len))?;
        let scale = 1.0 / (hd as f64).sqrt();
        let split = |t: Tensor| {
            t.reshape((rows, len, heads, hd))?
                .transpose(1, 2)?
                .contiguous()
        };
        for l in &self.layers {
            let q = split(l.query.forward(&x)?)?;
            let k = split(l.key.forward(&x)?)?;
            let v = split(l.value.forward(&x)?)?;
            let scores = (q.matmul(&k.t()?)? * scale)?.broadcast_add(&pad)?;
            let weights = candle_nn::ops::softmax_last_dim(&scores)?;
            let context = weights
                .matmul(&v)?
                .transpose(1, 2)?
                .contiguous()?
                .reshape((rows * len, h))?;
            let attended = l.attention_out.forward(&context)?;
            x = l.attention_norm.forward(&(attended + &x)?)?;
            let up = l.up.forward(&x)?;
            let up = match self.act {
                HiddenAct::Gelu if up.device().is_cpu() => gelu_erf(&up)?,
                HiddenAct::Gelu => up.gelu_erf()?,
                HiddenAct::GeluApproximate => up.gelu()?,
                HiddenAct::Relu => up.relu()?,
            };
            let down = l.down.forward(&up)?;
            x = l.output_norm.forward(&(down + &x)?)?;
        }
        x.reshape((rows, len, h))
    }
}

/// A loaded sentence-embedding model.
pub struct EmbeddingModel {
    encoder: Encoder,
    tokenizer: tokenizers::Tokenizer,
    pub info: EmbeddingInfo,
    device: Device,
}

fn read(path: &Path) -> Result<Vec<u8>, EmbedError> {
    std::fs::read(path).map_err(|e| EmbedError::Read {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

fn json_file(path: &Path) -> Result<serde_json::Value, EmbedError> {
    serde_json::from_slice(&read(path)?).map_err(|e| EmbedError::Read {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// Pooling and normalization from the sentence-transformers files; a plain BERT directory
/// without them gets sentence-transformers' defaults (mean, no normalization).
fn pooling_of(dir: &Path) -> Result<(Pooling, bool), EmbedError> {
    let modules = dir.join("modules.json");
    let (mut pooling_dir, mut normalize) = (dir.join("1_Pooling"), false);
    if modules.is_file() {
        let list = json_file(&modules)?;
        for m in list.as_array().into_iter().flatten() {
            let kind = m.get("type").and_then(|t| t.as_str()).unwrap_or("");
            let path = m.get("path").and_then(|p| p.as_str()).unwrap_or("");
            match kind.rsplit('.').next() {
                Some("Pooling") => pooling_dir = dir.join(path),
                Some("Normalize") => normalize = true,
                Some("Transformer") => {}
                _ => {
                    return Err(EmbedError::Unsupported(format!(
                        "sentence-transformers module `{kind}`"
                    )))
                }
            }
        }
    }
    let config = pooling_dir.join("config.json");
    if !config.is_file() {
        return Ok((Pooling::Mean, normalize));
    }
    let c = json_file(&config)?;
    let on = |k: &str| c.get(k).and_then(|v| v.as_bool()).unwrap_or(false);
    let pooling = match (on("pooling_mode_mean_tokens"), on("pooling_mode_cls_token")) {
        (true, false) => Pooling::Mean,
        (false, true) => Pooling::Cls,
        _ => {
            return Err(EmbedError::Unsupported(format!(
                "pooling in {} (mean or cls token only)",
                config.display()
            )))
        }
    };
    for other in [
        "pooling_mode_max_tokens",
        "pooling_mode_mean_sqrt_len_tokens",
        "pooling_mode_weightedmean_tokens",
        "pooling_mode_lasttoken",
    ] {
        if on(other) {
            return Err(EmbedError::Unsupported(format!("`{other}`")));
        }
    }
    Ok((pooling, normalize))
}

impl EmbeddingModel {
    /// Load a sentence-transformers (or plain BERT) directory.
    pub fn load(dir: &Path, device: &Device) -> Result<Self, EmbedError> {
        let config_path = dir.join("config.json");
        let raw = json_file(&config_path)?;
        let model_type = raw.get("model_type").and_then(|t| t.as_str()).unwrap_or("");
        if model_type != "bert" {
            return Err(EmbedError::Unsupported(format!(
                "model_type `{model_type}` in {} (supported: bert)",
                config_path.display()
            )));
        }
        let config: Config = serde_json::from_value(raw).map_err(|e| EmbedError::Read {
            path: config_path.clone(),
            reason: e.to_string(),
        })?;
        let (pooling, normalize) = pooling_of(dir)?;
        let st_max = dir
            .join("sentence_bert_config.json")
            .is_file()
            .then(|| json_file(&dir.join("sentence_bert_config.json")))
            .transpose()?
            .and_then(|c| c.get("max_seq_length").and_then(|v| v.as_u64()));
        let max_tokens = st_max
            .map_or(config.max_position_embeddings, |m| m as usize)
            .min(config.max_position_embeddings);

        let tok_path = dir.join("tokenizer.json");
        let mut tokenizer = tokenizers::Tokenizer::from_bytes(read(&tok_path)?)
            .map_err(|e| EmbedError::Tokenizer(format!("{}: {e}", tok_path.display())))?;
        // tokenizer.json often carries a fixed padding and a shorter truncation (128 for
        // all-MiniLM-L6-v2); the window and the padding are ours to apply.
        tokenizer
            .with_truncation(None)
            .map_err(|e| EmbedError::Tokenizer(e.to_string()))?;
        tokenizer.with_padding(None);

        let weights = dir.join("model.safetensors");
        if !weights.is_file() {
            return Err(EmbedError::Read {
                path: weights,
                reason: "missing".into(),
            });
        }
        // SAFETY: the file is mapped read-only; Lantern never writes model files while serving.
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[weights], DType::F32, device)? };
        let encoder = Encoder::load(vb, &config)?;
        Ok(Self {
            encoder,
            tokenizer,
            info: EmbeddingInfo {
                architecture: "bert".into(),
                dimensions: config.hidden_size,
                max_tokens,
                pooling,
                normalize,
                vocab_size: config.vocab_size,
            },
            device: device.clone(),
        })
    }

    /// Token ids of a text with [CLS] and [SEP]; past the window the text is cut and [SEP] kept
    /// (as sentence-transformers truncates), or refused when `truncate` is false.
    pub fn tokenize(&self, text: &str, truncate: bool) -> Result<Tokenized, EmbedError> {
        let enc = self
            .tokenizer
            .encode(text, true)
            .map_err(|e| EmbedError::Tokenizer(e.to_string()))?;
        self.fit(enc.get_ids().to_vec(), truncate)
    }

    /// Token ids given by the caller, checked against the vocabulary and fitted to the window
    /// the same way (the caller supplies the special tokens it wants).
    pub fn fit(&self, mut ids: Vec<u32>, truncate: bool) -> Result<Tokenized, EmbedError> {
        if ids.is_empty() {
            return Err(EmbedError::Empty);
        }
        if let Some(&id) = ids.iter().find(|&&id| id as usize >= self.info.vocab_size) {
            return Err(EmbedError::BadToken {
                id,
                vocab: self.info.vocab_size,
            });
        }
        let limit = self.info.max_tokens;
        if ids.len() <= limit {
            return Ok(Tokenized {
                ids,
                truncated_from: None,
            });
        }
        if !truncate {
            return Err(EmbedError::TooLong {
                tokens: ids.len(),
                limit,
            });
        }
        let n = ids.len();
        let last = ids[n - 1];
        ids.truncate(limit - 1);
        ids.push(last);
        Ok(Tokenized {
            ids,
            truncated_from: Some(n),
        })
    }

    /// One vector per input, in input order. Inputs are sorted by length and cut into batches
    /// of similar lengths so padding wastes little, each batch one forward pass.
    pub fn embed(&self, inputs: &[&[u32]]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let mut order: Vec<usize> = (0..inputs.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(inputs[i].len()));
        let mut out = vec![Vec::new(); inputs.len()];
        let mut start = 0;
        while start < order.len() {
            // Longest first: the first input of a batch sets its padded length.
            let len = inputs[order[start]].len().max(1);
            let rows = (MAX_BATCH_POSITIONS / len).clamp(1, order.len() - start);
            let batch = &order[start..start + rows];
            let vectors = crate::engine::device::on_compute_pool(|| {
                crate::engine::pass_threads::hold(|| {
                    self.forward(&batch.iter().map(|&i| inputs[i]).collect::<Vec<_>>())
                })
            })?;
            for (&i, v) in batch.iter().zip(vectors) {
                out[i] = v;
            }
            start += rows;
        }
        Ok(out)
    }

    /// One padded forward pass.
    fn forward(&self, batch: &[&[u32]]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let len = batch.iter().map(|s| s.len()).max().unwrap_or(0).max(1);
        let mut ids = vec![0u32; batch.len() * len];
        let mut mask = vec![0f32; batch.len() * len];
        for (r, seq) in batch.iter().enumerate() {
            ids[r * len..r * len + seq.len()].copy_from_slice(seq);
            mask[r * len..r * len + seq.len()].fill(1.0);
        }
        let shape = (batch.len(), len);
        let ids = Tensor::from_vec(ids, shape, &self.device)?;
        let mask = Tensor::from_vec(mask, shape, &self.device)?;
        let states = self.encoder.forward(&ids, &mask)?; // (rows, len, dims)
        let pooled = match self.info.pooling {
            Pooling::Mean => {
                let m = mask.unsqueeze(2)?;
                let sum = states.broadcast_mul(&m)?.sum(1)?;
                let count = m.sum(1)?.clamp(1e-9f32, f32::MAX)?;
                sum.broadcast_div(&count)?
            }
            Pooling::Cls => states.narrow(1, 0, 1)?.squeeze(1)?,
        };
        let pooled = if self.info.normalize {
            let norm = pooled
                .sqr()?
                .sum_keepdim(1)?
                .sqrt()?
                .clamp(1e-12f32, f32::MAX)?;
            pooled.broadcast_div(&norm)?
        } else {
            pooled
        };
        Ok(pooled.to_dtype(DType::F32)?.to_vec2()?)
    }
}

/// Whether a directory holds an embedding model this module can load.
pub fn is_embedding_dir(dir: &Path) -> bool {
    dir.join("model.safetensors").is_file()
        && dir.join("tokenizer.json").is_file()
        && json_file(&dir.join("config.json"))
            .ok()
            .is_some_and(|c| c.get("model_type").and_then(|t| t.as_str()) == Some("bert"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_erf_matches_libm() {
        let mut worst = 0f32;
        for i in -60_000..=60_000 {
            let x = i as f32 * 1e-4;
            worst = worst.max((erf(x) - candle_core::cpu::erf::erf_f32(x)).abs());
        }
        assert!(worst < 2e-6, "max |erf error| {worst}");
        assert_eq!(erf(10.0), erf(4.0));
        assert!((erf(4.0) - 1.0).abs() < 1e-6 && (erf(-4.0) + 1.0).abs() < 1e-6);
    }
}
