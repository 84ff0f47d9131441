//! Model code. Every architecture has one shape: a config read from GGUF metadata, `load`, and a
//! block `forward` over a flattened batch; the shared pieces live in `layers`.

mod activation;
pub mod bert;
pub mod gemma3;
pub mod host_attention;
pub mod layers;
pub mod llama;
pub mod olmo2;
pub mod span;

use std::sync::Arc;

use candle_core::{Device, Tensor};

use super::gguf::{GgufError, GgufFile};
use super::kv::KvCache;
use super::kv_rows::KvType;
use crate::engine::qmatmul::{LinearGroup, QLinear};
use candle_core::quantized::QTensor;
use layers::{Embedding, RmsNorm, SeqSpan};

/// Why a model could not be loaded or run.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The file is unreadable or lacks what the architecture needs.
    #[error(transparent)]
    Gguf(#[from] GgufError),
    /// No model code for this `general.architecture`.
    #[error("unsupported architecture `{0}` (supported: llama, mistral, qwen2, qwen3, smollm3, granite, phi3, olmo2, gemma3)")]
    Unsupported(String),
    /// A tensor has a shape the metadata does not explain.
    #[error("inconsistent model: {0}")]
    Inconsistent(String),
    /// A sequence would run past the model's context window.
    #[error("context length exceeded: {needed} tokens, the model holds {limit}")]
    ContextExceeded { needed: usize, limit: usize },
    /// A tensor operation failed.
    #[error("tensor operation failed: {0}")]
    Candle(Box<candle_core::Error>),
}

impl From<candle_core::Error> for ModelError {
    fn from(e: candle_core::Error) -> Self {
        Self::Candle(Box::new(e))
    }
}

/// What users and schedulers need to know about a loaded model.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ModelInfo {
    pub architecture: String,
    pub n_layers: usize,
    pub d_model: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub context_length: usize,
    pub vocab_size: usize,
}

/// One sequence's part of a forward pass.
pub struct SeqInput<'a> {
    pub tokens: &'a [u32],
    pub cache: &'a mut KvCache,
    /// Logits for every new token (scoring) rather than only the last (generation).
    pub all_logits: bool,
}

/// A transformer block of some architecture.
pub trait Block: Send + Sync {
    fn forward(
        &self,
        x: &Tensor,
        spans: &[SeqSpan],
        caches: &mut [&mut KvCache],
        layer: usize,
    ) -> candle_core::Result<Tensor>;
}

/// Embedding, blocks, final norm and output head: the part all architectures share.
pub struct Transformer {
    pub info: ModelInfo,
    embedding: Embedding,
    blocks: Vec<Box<dyn Block>>,
    norm: RmsNorm,
    head: Arc<QLinear>,
    /// Logits are divided by this (Granite's `logit_scale`).
    logit_divisor: Option<f64>,
    device: Device,
}

impl Transformer {
    /// Open the right architecture for a GGUF file.
    pub fn load(gguf: &GgufFile, device: &Device) -> Result<Self, ModelError> {
        match gguf.architecture()? {
            "llama" | "mistral" | "qwen2" | "qwen3" | "smollm3" | "granite" | "phi3" => {
                llama::load(gguf, device)
            }
            "gemma3" => gemma3::load(gguf, device),
            "olmo2" => olmo2::load(gguf, device),
            other => Err(ModelError::Unsupported(other.to_string())),
        }
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn new_cache(&self) -> KvCache {
        KvCache::new(self.info.n_layers)
    }

    /// A cache storing its CPU rows as `kind`, or as f16 where this model's heads do not split
    /// into `kind`'s blocks (q8_0 needs head widths that are multiples of 32).
    pub fn new_cache_of(&self, kind: KvType) -> KvCache {
        let kind = if kind.fits(self.info.head_dim) {
            kind
        } else {
            KvType::F16
        };
        KvCache::of_type(self.info.n_layers, kind)
    }

    /// One forward pass over the new tokens of several sequences at once. Returns logits
    /// (rows, vocab): one row per sequence, or one per token for sequences with `all_logits`,
    /// in input order. Each cache moves on by its sequence's token count.
    pub fn forward(&self, seqs: &mut [SeqInput]) -> Result<Tensor, ModelError> {
        crate::engine::device::on_compute_pool(|| self.forward_on_pool(seqs))
    }

    fn forward_on_pool(&self, seqs: &mut [SeqInput]) -> Result<Tensor, ModelError> {
        let mut spans = Vec::with_capacity(seqs.len());
        let mut ids = Vec::new();
        for s in seqs.iter() {
            if s.tokens.is_empty() {
                return Err(ModelError::Inconsistent("a sequence with no tokens".into()));
            }
            let needed = s.cache.len() + s.tokens.len();
            if needed > self.info.context_length {
                return Err(ModelError::ContextExceeded {
                    needed,
                    limit: self.info.context_length,
                });
            }
            if let Some(&bad) = s
                .tokens
                .iter()
                .find(|&&t| t as usize >= self.info.vocab_size)
            {
                return Err(ModelError::Inconsistent(format!(
                    "token id {bad} is outside the vocabulary of {}",
                    self.info.vocab_size
                )));
            }
            spans.push(SeqSpan {
                start: ids.len(),
                len: s.tokens.len(),
                pos: s.cache.len(),
            });
            ids.extend_from_slice(s.tokens);
        }
        let all: Vec<bool> = seqs.iter().map(|s| s.all_logits).collect();
        let mut caches: Vec<&mut KvCache> = seqs.iter_mut().map(|s| &mut *s.cache).collect();
        let mut x = self.embedding.forward(&ids, &self.device)?;
        for (i, block) in self.blocks.iter().enumerate() {
            x = block.forward(&x, &spans, &mut caches, i)?;
        }
        for (cache, span) in caches.iter_mut().zip(&spans) {
            cache.advance(span.len);
        }
        let rows = layers::output_rows(&spans, &all, &self.device)?;
        let x = layers::select_rows(&x, &rows)?;
        let logits = layers::lm_head(&self.norm, &self.head, &x)?;
        Ok(match self.logit_divisor {
            Some(d) => (logits / d)?,
            None => logits,
        })
    }
}

/// Metadata lookups under the architecture's prefix (`llama.block_count`, ...).
pub(crate) struct Meta<'a> {
    pub gguf: &'a GgufFile,
    pub prefix: String,
}

impl Meta<'_> {
    pub fn usize(&self, key: &str) -> Result<usize, GgufError> {
        self.gguf.get_usize(&format!("{}.{key}", self.prefix))
    }
    pub fn f64(&self, key: &str) -> Result<f64, GgufError> {
        self.gguf.get_f64(&format!("{}.{key}", self.prefix))
    }
    pub fn f64_or(&self, key: &str, default: f64) -> f64 {
        self.f64(key).unwrap_or(default)
    }
}

/// A named weight, checked to have the expected (out, in) shape.
fn weight(
    gguf: &GgufFile,
    name: &str,
    shape: (usize, usize),
    device: &Device,
) -> Result<QTensor, ModelError> {
    let t = gguf.qtensor(name, device)?;
    if t.shape().dims() != [shape.0, shape.1] {
        return Err(ModelError::Inconsistent(format!(
            "{name} has shape {:?}, expected {shape:?}",
            t.shape().dims()
        )));
    }
    Ok(t)
}

/// A named (out, in) linear layer. On the CPU, for the types Lantern's kernels cover, it is
/// repacked straight from the map, whose pages go back as it goes: the layer is then the only
/// copy of those weights in memory.
pub(crate) fn linear(
    gguf: &GgufFile,
    name: &str,
    shape: (usize, usize),
    device: &Device,
) -> Result<QLinear, ModelError> {
    let (info, bytes) = gguf.tensor_bytes(name)?;
    if info.shape != [shape.0, shape.1] {
        return Err(ModelError::Inconsistent(format!(
            "{name} has shape {:?}, expected {shape:?}",
            info.shape
        )));
    }
    let repacked = if device.is_cpu() {
        QLinear::from_gguf_rows(info.dtype, bytes, shape, |upto| gguf.release(name, upto))
    } else {
        None
    };
    let layer = match repacked {
        Some(layer) => layer,
        None => QLinear::new(weight(gguf, name, shape, device)?)?,
    };
    gguf.release(name, usize::MAX);
    Ok(layer)
}

/// Consecutive row ranges of one (out, in) weight as their own layers: Phi-3's fused
/// `attn_qkv` and gate-and-up `ffn_up`. GGUF rows are contiguous, so each part is a byte range.
pub(crate) fn split_rows(
    gguf: &GgufFile,
    name: &str,
    parts: &[usize],
    cols: usize,
    device: &Device,
) -> Result<Vec<QLinear>, ModelError> {
    let rows: usize = parts.iter().sum();
    let (info, bytes) = gguf.tensor_bytes(name)?;
    if info.shape != [rows, cols] {
        return Err(ModelError::Inconsistent(format!(
            "{name} has shape {:?}, expected {:?}",
            info.shape,
            [rows, cols]
        )));
    }
    let row_bytes = cols / info.dtype.block_size() * info.dtype.type_size();
    let mut out = Vec::with_capacity(parts.len());
    let mut start = 0;
    for &n in parts {
        let part = &bytes[start * row_bytes..(start + n) * row_bytes];
        let layer = match device
            .is_cpu()
            .then(|| QLinear::from_gguf_rows(info.dtype, part, (n, cols), |_| {}))
            .flatten()
        {
            Some(layer) => layer,
            None => {
                let whole = gguf.qtensor(name, device)?.dequantize(device)?;
                let rows = whole.narrow(0, start, n)?.contiguous()?;
                QLinear::new(QTensor::quantize(&rows, info.dtype)?)?
            }
        };
        out.push(layer);
        start += n;
    }
    gguf.release(name, usize::MAX);
    Ok(out)
}

/// Linear layers over the same input, fused where the weights allow.
pub(crate) fn group(
    gguf: &GgufFile,
    parts: &[(&str, (usize, usize))],
    device: &Device,
) -> Result<LinearGroup, ModelError> {
    let layers = parts
        .iter()
        .map(|(name, shape)| linear(gguf, name, *shape, device))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(LinearGroup::new(layers))
}

pub(crate) fn norm(
    gguf: &GgufFile,
    name: &str,
    eps: f64,
    device: &Device,
) -> Result<RmsNorm, ModelError> {
    Ok(RmsNorm::new(gguf.qtensor(name, device)?, eps, device)?)
}

/// The sizes every block of a model shares.
pub(crate) struct Dims {
    pub d_model: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub ffn: usize,
}

/// Layer `i`'s fused Q/K/V projections and output projection, as every architecture names them.
pub(crate) fn attention_weights(
    gguf: &GgufFile,
    i: usize,
    d: &Dims,
    device: &Device,
) -> Result<(LinearGroup, QLinear), ModelError> {
    let p = |name: &str| format!("blk.{i}.{name}");
    let (q, kv) = (d.n_heads * d.head_dim, d.n_kv_heads * d.head_dim);
    // One fused `attn_qkv` (Phi-3) or three.
    let qkv = if gguf.has_tensor(&p("attn_qkv.weight")) {
        LinearGroup::new(split_rows(
            gguf,
            &p("attn_qkv.weight"),
            &[q, kv, kv],
            d.d_model,
            device,
        )?)
    } else {
        group(
            gguf,
            &[
                (&p("attn_q.weight"), (q, d.d_model)),
                (&p("attn_k.weight"), (kv, d.d_model)),
                (&p("attn_v.weight"), (kv, d.d_model)),
            ],
            device,
        )?
    };
    let wo = linear(
        gguf,
        &p("attn_output.weight"),
        (d.d_model, d.n_heads * d.head_dim),
        device,
    )?;
    Ok((qkv, wo))
}

/// Layer `i`'s gated MLP.
pub(crate) fn gated_mlp(
    gguf: &GgufFile,
    i: usize,
    d: &Dims,
    activation: layers::Activation,
    device: &Device,
) -> Result<layers::GatedMlp, ModelError> {
    let p = |name: &str| format!("blk.{i}.{name}");
    // Without `ffn_gate`, `ffn_up` holds the gate rows and then the up rows (Phi-3).
    let gate_up = if gguf.has_tensor(&p("ffn_gate.weight")) {
        group(
            gguf,
            &[
                (&p("ffn_gate.weight"), (d.ffn, d.d_model)),
                (&p("ffn_up.weight"), (d.ffn, d.d_model)),
            ],
            device,
        )?
    } else {
        LinearGroup::new(split_rows(
            gguf,
            &p("ffn_up.weight"),
            &[d.ffn, d.ffn],
            d.d_model,
            device,
        )?)
    };
    Ok(layers::GatedMlp {
        gate_up,
        down: linear(gguf, &p("ffn_down.weight"), (d.d_model, d.ffn), device)?,
        activation,
    })
}

/// The token embedding and the output head (`output.weight`, or the embedding table when the
/// model ties them). A tied table is held once, in the head's repacked layout.
pub(crate) fn embedding_and_head(
    gguf: &GgufFile,
    d_model: usize,
    scale: Option<f64>,
    device: &Device,
) -> Result<(Embedding, Arc<QLinear>), ModelError> {
    const TABLE: &str = "token_embd.weight";
    let (info, _) = gguf.tensor_bytes(TABLE)?;
    let vocab = match info.shape.as_slice() {
        [vocab, d] if *d == d_model => *vocab,
        shape => {
            return Err(ModelError::Inconsistent(format!(
                "{TABLE} has shape {shape:?}, expected (vocab, {d_model})"
            )))
        }
    };
    if gguf.has_tensor("output.weight") {
        let head = linear(gguf, "output.weight", (vocab, d_model), device)?;
        let embedding = Embedding::new(gguf.qtensor(TABLE, device)?, scale)?;
        return Ok((embedding, Arc::new(head)));
    }
    let head = Arc::new(linear(gguf, TABLE, (vocab, d_model), device)?);
    let embedding = match Embedding::tied(&head, scale) {
        Some(e) => e,
        None => Embedding::new(gguf.qtensor(TABLE, device)?, scale)?,
    };
    Ok((embedding, head))
}

impl Transformer {
    pub(crate) fn assemble(
        info: ModelInfo,
        embedding: Embedding,
        blocks: Vec<Box<dyn Block>>,
        norm: RmsNorm,
        head: Arc<QLinear>,
        device: &Device,
    ) -> Self {
        Self {
            info,
            embedding,
            blocks,
            norm,
            head,
            logit_divisor: None,
            device: device.clone(),
        }
    }

    /// Divide the logits by `d` (Granite's `logit_scale`).
    pub(crate) fn with_logit_divisor(mut self, d: f64) -> Self {
        self.logit_divisor = Some(d);
        self
    }
}
