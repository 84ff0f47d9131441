//! An architecture's hyper-parameters, read once from GGUF metadata under llama.cpp's key names
//! (`{arch}.block_count`, ...), optional keys optional as llama.cpp has them. An architecture's
//! loader reads one `Hparams` and names its parts; what it assumes where a file is silent is its
//! `Defaults`.

use super::moe::ExpertShape;
use super::{ModelError, ModelInfo};
use crate::engine::gguf::{GgufError, GgufFile};

/// Longest context any loader builds rotary tables for; longer files are served this much.
pub const MAX_CONTEXT: usize = 32_768;

/// What an architecture assumes where its file is silent.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Defaults {
    pub rms_eps: f64,
    pub rope_base: f64,
    pub context_length: usize,
}

/// Granite's multipliers (llama.cpp's `f_embedding_scale`, `f_residual_scale`,
/// `f_attention_scale`, `f_logit_scale`); absent or 0 is none.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Scales {
    pub embedding: Option<f64>,
    pub residual: Option<f64>,
    pub attention: Option<f64>,
    pub logit: Option<f64>,
}

/// Everything an architecture reads from the metadata, typed.
#[derive(Debug, Clone)]
pub(crate) struct Hparams {
    pub arch: String,
    pub heads: Heads,
    /// The dense MLP's width (`feed_forward_length`); None in a mixture-of-experts file that
    /// gives only its experts' width.
    pub ffn: Option<usize>,
    pub experts: Option<ExpertShape>,
    pub rms_eps: f64,
    pub rope_base: f64,
    /// The windowed layers' rotary base (`rope.freq_base_swa`), when the file gives one.
    pub rope_base_swa: Option<f64>,
    /// `attention.sliding_window`, when given and not 0.
    pub sliding_window: Option<usize>,
    /// The file's `context_length` (else the default), at most `MAX_CONTEXT`.
    pub context_length: usize,
    /// `attn_logit_softcapping` and `final_logit_softcapping`, as given (Gemma 2 defaults
    /// them where absent; 0 turns a cap off).
    pub attn_softcap: Option<f64>,
    pub final_softcap: Option<f64>,
    pub scales: Scales,
}

impl Hparams {
    pub fn read(gguf: &GgufFile, defaults: Defaults) -> Result<Self, ModelError> {
        let arch = gguf.architecture()?.to_string();
        let meta = Meta {
            gguf,
            prefix: arch.clone(),
        };
        let heads = meta.heads()?;
        let ffn = meta.usize("feed_forward_length").ok();
        let experts = ExpertShape::read(&meta, ffn.unwrap_or(0))?;
        if ffn.is_none() && experts.is_none() {
            // The error names the missing key.
            meta.usize("feed_forward_length")?;
        }
        let nonzero = |key: &str| meta.f64(key).ok().filter(|&v| v != 0.0);
        Ok(Self {
            heads,
            ffn,
            experts,
            rms_eps: meta.f64_or("attention.layer_norm_rms_epsilon", defaults.rms_eps),
            rope_base: meta.f64_or("rope.freq_base", defaults.rope_base),
            rope_base_swa: meta.f64("rope.freq_base_swa").ok(),
            sliding_window: meta
                .usize("attention.sliding_window")
                .ok()
                .filter(|&w| w > 0),
            context_length: meta
                .usize("context_length")
                .unwrap_or(defaults.context_length)
                .min(MAX_CONTEXT),
            attn_softcap: meta.f64("attn_logit_softcapping").ok(),
            final_softcap: meta.f64("final_logit_softcapping").ok(),
            scales: Scales {
                embedding: nonzero("embedding_scale"),
                residual: nonzero("residual_scale"),
                attention: nonzero("attention.scale"),
                logit: nonzero("logit_scale"),
            },
            arch,
        })
    }

    /// The dense MLP's width, or the experts' where the file gives only theirs.
    pub fn ffn(&self) -> usize {
        self.ffn
            .or(self.experts.map(|e| e.ffn))
            .expect("read: a dense or an expert width")
    }

    pub fn dims(&self) -> super::Dims {
        super::Dims {
            d_model: self.heads.d_model,
            n_heads: self.heads.n_heads,
            n_kv_heads: self.heads.n_kv_heads,
            head_dim: self.heads.head_dim,
            ffn: self.ffn(),
        }
    }

    /// Which layers attend within the window (see `Meta::sliding_layers`), `period` being the
    /// architecture's own pattern where the file has none.
    pub fn sliding_layers(&self, gguf: &GgufFile, period: usize) -> Vec<bool> {
        Meta {
            gguf,
            prefix: self.arch.clone(),
        }
        .sliding_layers(self.heads.n_layers, period)
    }

    /// What users see of the model, given its vocabulary.
    pub fn info(&self, vocab_size: usize) -> ModelInfo {
        self.heads.info(&self.arch, self.context_length, vocab_size)
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

    /// The attention sizes every architecture reads alike (llama.cpp's keys): KV heads default
    /// to the heads, the head width to `d_model / heads`; checked to group and divide.
    pub fn heads(&self) -> Result<Heads, ModelError> {
        let n_layers = self.usize("block_count")?;
        let d_model = self.usize("embedding_length")?;
        let n_heads = self.usize("attention.head_count")?;
        let n_kv_heads = self.usize("attention.head_count_kv").unwrap_or(n_heads);
        let key_length = self.usize("attention.key_length").ok();
        if n_heads == 0
            || n_kv_heads == 0
            || n_heads % n_kv_heads != 0
            || (key_length.is_none() && d_model % n_heads != 0)
        {
            return Err(ModelError::Inconsistent(format!(
                "{n_heads} heads, {n_kv_heads} KV heads, d_model {d_model}"
            )));
        }
        Ok(Heads {
            n_layers,
            d_model,
            n_heads,
            n_kv_heads,
            head_dim: key_length.unwrap_or(d_model / n_heads),
        })
    }

    /// Which layers attend within the sliding window, as llama.cpp's `load_swa_pattern` reads
    /// them: `attention.sliding_window_pattern` as one flag per layer, or as a period (layer `i`
    /// is windowed unless `i % period == period - 1`; 0 means every layer), else `period`.
    pub fn sliding_layers(&self, n_layers: usize, period: usize) -> Vec<bool> {
        let key = format!("{}.attention.sliding_window_pattern", self.prefix);
        if let Some(crate::engine::gguf::Value::Array(crate::engine::gguf::Array::Values(flags))) =
            self.gguf.get(&key)
        {
            let flags: Vec<bool> = flags
                .iter()
                .filter_map(|f| match f {
                    crate::engine::gguf::Value::Bool(b) => Some(*b),
                    other => other.as_u64().map(|n| n != 0),
                })
                .collect();
            if flags.len() == n_layers {
                return flags;
            }
        }
        let period = self
            .usize("attention.sliding_window_pattern")
            .unwrap_or(period);
        (0..n_layers)
            .map(|i| period == 0 || i % period < period - 1)
            .collect()
    }
}

/// The sizes `Meta::heads` reads.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Heads {
    pub n_layers: usize,
    pub d_model: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
}

impl Heads {
    /// What users see of a model with these sizes.
    pub fn info(self, architecture: &str, context_length: usize, vocab_size: usize) -> ModelInfo {
        ModelInfo {
            architecture: architecture.to_string(),
            n_layers: self.n_layers,
            d_model: self.d_model,
            n_heads: self.n_heads,
            n_kv_heads: self.n_kv_heads,
            head_dim: self.head_dim,
            context_length,
            vocab_size,
        }
    }
}

#[cfg(test)]
mod tests {
    use candle_core::quantized::gguf_file::{self, Value};

    use super::*;

    /// A GGUF holding only `metadata` (no tensors: `Hparams` reads none).
    fn file(metadata: &[(&str, Value)]) -> (tempfile::TempDir, GgufFile) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.gguf");
        let meta: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (*k, v)).collect();
        let mut out = std::fs::File::create(&path).unwrap();
        gguf_file::write(&mut out, &meta, &[]).unwrap();
        drop(out);
        let gguf = GgufFile::open(&path).unwrap();
        (dir, gguf)
    }

    const DEFAULTS: Defaults = Defaults {
        rms_eps: 1e-5,
        rope_base: 10_000.0,
        context_length: 4096,
    };

    fn base(arch: &str) -> Vec<(String, Value)> {
        let k = |key: &str| format!("{arch}.{key}");
        vec![
            ("general.architecture".into(), Value::String(arch.into())),
            (k("block_count"), Value::U32(2)),
            (k("embedding_length"), Value::U32(64)),
            (k("attention.head_count"), Value::U32(4)),
            (k("attention.head_count_kv"), Value::U32(2)),
        ]
    }

    fn read(entries: Vec<(String, Value)>) -> Result<Hparams, ModelError> {
        let pairs: Vec<(&str, Value)> = entries
            .iter()
            .map(|(k, v)| (k.as_str(), v.clone()))
            .collect();
        let (_dir, gguf) = file(&pairs);
        Hparams::read(&gguf, DEFAULTS)
    }

    #[test]
    fn optional_keys_take_the_architectures_defaults() {
        let mut m = base("llama");
        m.push(("llama.feed_forward_length".into(), Value::U32(128)));
        let hp = read(m).unwrap();
        assert_eq!((hp.heads.head_dim, hp.heads.n_kv_heads), (16, 2));
        assert_eq!(
            (hp.rms_eps, hp.rope_base, hp.context_length),
            (1e-5, 1e4, 4096)
        );
        assert_eq!((hp.ffn(), hp.experts.is_none()), (128, true));
        assert!(hp.sliding_window.is_none() && hp.rope_base_swa.is_none());
        assert!(hp.scales.embedding.is_none() && hp.attn_softcap.is_none());
    }

    #[test]
    fn given_keys_are_read_and_a_long_context_is_capped() {
        let mut m = base("gemma2");
        for (k, v) in [
            ("feed_forward_length", Value::U32(96)),
            ("context_length", Value::U32(131_072)),
            ("attention.layer_norm_rms_epsilon", Value::F32(1e-6)),
            ("rope.freq_base", Value::F32(1e6)),
            ("rope.freq_base_swa", Value::F32(1e4)),
            ("attention.sliding_window", Value::U32(512)),
            ("attn_logit_softcapping", Value::F32(0.0)),
            ("final_logit_softcapping", Value::F32(30.0)),
            ("residual_scale", Value::F32(0.0)),
            ("logit_scale", Value::F32(8.0)),
        ] {
            m.push((format!("gemma2.{k}"), v));
        }
        let hp = read(m).unwrap();
        assert_eq!(hp.context_length, MAX_CONTEXT);
        assert!((hp.rms_eps - 1e-6).abs() < 1e-12);
        assert_eq!((hp.rope_base, hp.rope_base_swa), (1e6, Some(1e4)));
        assert_eq!(hp.sliding_window, Some(512));
        // Soft caps as given (0 switches one off); a Granite scale of 0 is none.
        assert_eq!((hp.attn_softcap, hp.final_softcap), (Some(0.0), Some(30.0)));
        assert_eq!((hp.scales.residual, hp.scales.logit), (None, Some(8.0)));
    }

    #[test]
    fn an_expert_file_needs_no_dense_width_and_a_dense_one_names_the_missing_key() {
        let mut m = base("qwen3moe");
        m.push(("qwen3moe.expert_count".into(), Value::U32(8)));
        m.push(("qwen3moe.expert_used_count".into(), Value::U32(2)));
        m.push(("qwen3moe.expert_feed_forward_length".into(), Value::U32(48)));
        m.push(("qwen3moe.attention.sliding_window".into(), Value::U32(0)));
        let hp = read(m).unwrap();
        assert_eq!(hp.ffn(), 48);
        assert_eq!(hp.experts.map(|e| (e.count, e.used)), Some((8, 2)));
        assert!(hp.sliding_window.is_none(), "a window of 0 is none");
        let err = read(base("llama")).unwrap_err().to_string();
        assert!(err.contains("llama.feed_forward_length"), "{err}");
    }
}
