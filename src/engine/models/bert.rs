//! Sentence embeddings with a BERT-family encoder (all-MiniLM-L6-v2 and its kin) from a
//! sentence-transformers directory: `model.safetensors`, `config.json`, `tokenizer.json`, and
//! the pooling settings (`1_Pooling/config.json`, `sentence_bert_config.json`, `modules.json`).
//! The output is what sentence-transformers gives: the encoder's last hidden states pooled over
//! the real tokens (mean or [CLS]) and L2-normalized when the model has a Normalize module.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
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

/// Most token positions (padding included) in one forward pass: bounds the attention scores'
/// memory (heads × rows × len²) whatever the request sends.
const MAX_BATCH_POSITIONS: usize = 16 * 1024;

/// A loaded sentence-embedding model.
pub struct EmbeddingModel {
    bert: BertModel,
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
        let bert = BertModel::load(vb, &config)?;
        Ok(Self {
            bert,
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
                self.forward(&batch.iter().map(|&i| inputs[i]).collect::<Vec<_>>())
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
        let types = ids.zeros_like()?;
        let states = self.bert.forward(&ids, &types, Some(&mask))?; // (rows, len, dims)
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
