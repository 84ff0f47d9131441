//! Gemma 3: sandwich norms (before and after attention and MLP), per-head query/key norms, GELU,
//! embeddings scaled by √d, and sliding-window attention on five layers of six with their own
//! rotary base. Norm weights in GGUF already include Gemma's `1 +` offset. Keys as llama.cpp
//! reads them: the window is optional (none: every layer global), `rope.freq_base_swa` is the
//! windowed layers' base (10 000 by default), `attention.sliding_window_pattern` may name the
//! layers, and a `final_logit_softcapping` is honoured.

use std::sync::Arc;

use candle_core::{Device, Tensor};

use super::layers::{Activation, Attention, GatedMlp, QkNorm, RmsNorm, Rope, RopeStyle, SeqSpan};
use super::{
    attention_weights, embedding_and_head, gated_mlp, norm, Block, Defaults, Dims, Heads, Hparams,
    LogitAdjust, ModelError, Transformer,
};
use crate::engine::gguf::GgufFile;
use crate::engine::host_ops::add;
use crate::engine::kv::KvCache;

/// Every sixth layer attends globally; the others within the sliding window.
const SLIDING_WINDOW_PATTERN: usize = 6;
/// The 27B models' depth (Gemma 3: 62 layers, Gemma 2: 46), whose queries are scaled by
/// `1/√(d_model/heads)` rather than `1/√head_dim`.
pub(super) const LAYERS_OF_27B: [usize; 2] = [46, 62];

/// Gemma's block: norms before and after both attention and the MLP (Gemma 2 and 3).
pub(super) struct SandwichBlock {
    pub attn_norm: RmsNorm,
    pub attn: Attention,
    pub post_attn_norm: RmsNorm,
    pub ffn_norm: RmsNorm,
    pub mlp: GatedMlp,
    pub post_ffn_norm: RmsNorm,
}

impl SandwichBlock {
    /// Layer `i`'s norms and MLP around `attn`, as both Gemmas name them.
    pub fn load(
        gguf: &GgufFile,
        i: usize,
        dims: &Dims,
        attn: Attention,
        eps: f64,
        device: &Device,
    ) -> Result<Self, ModelError> {
        let p = |name: &str| format!("blk.{i}.{name}");
        Ok(Self {
            attn_norm: norm(gguf, &p("attn_norm.weight"), eps, device)?,
            attn,
            post_attn_norm: norm(gguf, &p("post_attention_norm.weight"), eps, device)?,
            ffn_norm: norm(gguf, &p("ffn_norm.weight"), eps, device)?,
            mlp: gated_mlp(gguf, i, dims, Activation::Gelu, device)?,
            post_ffn_norm: norm(gguf, &p("post_ffw_norm.weight"), eps, device)?,
        })
    }
}

/// Queries' scale: `1/√(d_model/heads)` for the 27B models, else `1/√head_dim`.
pub(super) fn query_scale(n_layers: usize, d_model: usize, n_heads: usize, head_dim: usize) -> f64 {
    let width = if LAYERS_OF_27B.contains(&n_layers) {
        d_model / n_heads
    } else {
        head_dim
    };
    1.0 / (width as f64).sqrt()
}

/// `cap · tanh(logit / cap)` on the logits where the file sets a positive cap.
pub(super) fn capped(model: Transformer, cap: f64) -> Transformer {
    if cap > 0.0 {
        model.with_logit_adjust(LogitAdjust::SoftCap(cap))
    } else {
        model
    }
}

impl Block for SandwichBlock {
    fn forward(
        &self,
        x: &Tensor,
        spans: &[SeqSpan],
        caches: &mut [&mut KvCache],
        layer: usize,
    ) -> candle_core::Result<Tensor> {
        let a = self
            .attn
            .forward(&self.attn_norm.forward(x)?, spans, caches, layer)?;
        let h = add(x, &self.post_attn_norm.forward(&a)?)?;
        let m = self.mlp.forward(&self.ffn_norm.forward(&h)?)?;
        add(&h, &self.post_ffn_norm.forward(&m)?)
    }
}

/// Where a Gemma 3 file is silent.
const DEFAULTS: Defaults = Defaults {
    rms_eps: 1e-6,
    rope_base: 1_000_000.0,
    context_length: 32_768,
};

pub fn load(gguf: &GgufFile, device: &Device) -> Result<Transformer, ModelError> {
    let hp = Hparams::read(gguf, DEFAULTS)?;
    let Heads {
        n_layers,
        d_model,
        n_heads,
        n_kv_heads,
        head_dim,
    } = hp.heads;
    let eps = hp.rms_eps;
    let window = hp.sliding_window;
    let sliding = match window {
        Some(_) => hp.sliding_layers(gguf, SLIDING_WINDOW_PATTERN),
        None => vec![false; n_layers],
    };
    let context_length = hp.context_length;
    let rope = |base| {
        Rope::new(
            head_dim,
            base,
            context_length,
            RopeStyle::Halves,
            None,
            device,
        )
    };
    let global_rope = Arc::new(rope(hp.rope_base)?);
    let local_rope = Arc::new(rope(hp.rope_base_swa.unwrap_or(10_000.0))?);

    let (embedding, head) =
        embedding_and_head(gguf, d_model, Some((d_model as f64).sqrt()), device)?;
    let vocab_size = embedding.vocab_size();
    let dims = hp.dims();
    let mut blocks: Vec<Box<dyn Block>> = Vec::with_capacity(n_layers);
    let scale = query_scale(n_layers, d_model, n_heads, head_dim);
    for (i, &local) in sliding.iter().enumerate() {
        let p = |name: &str| format!("blk.{i}.{name}");
        let (qkv, wo) = attention_weights(gguf, i, &dims, device)?;
        let attn = Attention {
            qkv,
            wo,
            bias: None,
            qk_norm: Some(QkNorm::PerHead(
                norm(gguf, &p("attn_q_norm.weight"), eps, device)?,
                norm(gguf, &p("attn_k_norm.weight"), eps, device)?,
            )),
            n_heads,
            n_kv_heads,
            head_dim,
            scale,
            window: window.filter(|_| local),
            softcap: None,
            rope: Some(if local {
                local_rope.clone()
            } else {
                global_rope.clone()
            }),
        };
        blocks.push(Box::new(SandwichBlock::load(
            gguf, i, &dims, attn, eps, device,
        )?));
    }
    let info = hp.info(vocab_size);
    let out_norm = norm(gguf, "output_norm.weight", eps, device)?;
    let model = Transformer::assemble(info, embedding, blocks, out_norm, head, device);
    Ok(capped(model, hp.final_softcap.unwrap_or(0.0)))
}
