//! Model code. Every architecture has one shape: its `Hparams` read from GGUF metadata, `load`, and a
//! block `forward` over a flattened batch; the shared pieces live in `layers`.

mod activation;
pub mod bert;
pub mod gemma2;
pub mod gemma3;
pub mod host_attention;
mod hparams;
pub mod layers;
pub mod llama;
pub mod moe;
pub mod olmo2;
pub mod span;
mod weights;

use std::sync::Arc;

use candle_core::{Device, Tensor};

use super::gguf::{GgufError, GgufFile};
use super::kv::KvCache;
use super::kv_rows::KvType;
use crate::engine::qmatmul::QLinear;
pub(crate) use hparams::{Defaults, Heads, Hparams, Meta};
use layers::{Embedding, RmsNorm, SeqSpan};
pub(crate) use weights::{attention_weights, embedding_and_head, gated_mlp, norm, Dims};

/// Why a model could not be loaded or run.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The file is unreadable or lacks what the architecture needs.
    #[error(transparent)]
    Gguf(#[from] GgufError),
    /// No model code for this `general.architecture`.
    #[error("unsupported architecture `{0}` (supported: llama, mistral, mixtral, qwen2, qwen3, qwen3moe, smollm3, granite, granitemoe, phi3, olmo2, olmoe, gemma2, gemma3)")]
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
    /// What the architecture does to the raw logits, if anything.
    logit_adjust: Option<LogitAdjust>,
    device: Device,
}

impl Transformer {
    /// Open the right architecture for a GGUF file.
    pub fn load(gguf: &GgufFile, device: &Device) -> Result<Self, ModelError> {
        match gguf.architecture()? {
            "llama" | "mistral" | "qwen2" | "qwen3" | "qwen3moe" | "smollm3" | "granite"
            | "granitemoe" | "phi3" | "olmoe" => llama::load(gguf, device),
            "gemma2" => gemma2::load(gguf, device),
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
        crate::engine::device::on_compute_pool(|| {
            crate::engine::pass_threads::hold(|| self.forward_on_pool(seqs))
        })
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
        Ok(match self.logit_adjust {
            Some(LogitAdjust::Divide(d)) => (logits / d)?,
            Some(LogitAdjust::SoftCap(cap)) => ((logits / cap)?.tanh()? * cap)?,
            None => logits,
        })
    }
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
            logit_adjust: None,
            device: device.clone(),
        }
    }

    pub(crate) fn with_logit_adjust(mut self, adjust: LogitAdjust) -> Self {
        self.logit_adjust = Some(adjust);
        self
    }
}

/// A last step on the logits some architectures take.
#[derive(Debug, Clone, Copy)]
pub(crate) enum LogitAdjust {
    /// Divide by this (Granite's `logit_scale`).
    Divide(f64),
    /// `cap · tanh(logit / cap)` (Gemma 2's final soft cap).
    SoftCap(f64),
}
