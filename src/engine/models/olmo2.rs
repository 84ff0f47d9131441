//! OLMo 2: norms after attention and after the MLP instead of before them
//! (`h = x + norm(attn(x)); y = h + norm(mlp(h))`), RMS norms over the whole query and key
//! projections (all heads together) before the half-split rotary.

use std::sync::Arc;

use candle_core::{Device, Tensor};

use super::layers::{Activation, Attention, GatedMlp, QkNorm, RmsNorm, Rope, RopeStyle, SeqSpan};
use super::{
    attention_weights, embedding_and_head, gated_mlp, norm, Block, Defaults, Heads, Hparams,
    ModelError, Transformer,
};
use crate::engine::gguf::GgufFile;
use crate::engine::host_ops::add;
use crate::engine::kv::KvCache;

struct Olmo2Block {
    attn: Attention,
    post_attn_norm: RmsNorm,
    mlp: GatedMlp,
    post_ffn_norm: RmsNorm,
}

impl Block for Olmo2Block {
    fn forward(
        &self,
        x: &Tensor,
        spans: &[SeqSpan],
        caches: &mut [&mut KvCache],
        layer: usize,
    ) -> candle_core::Result<Tensor> {
        let a = self.attn.forward(x, spans, caches, layer)?;
        let h = add(x, &self.post_attn_norm.forward(&a)?)?;
        add(&h, &self.post_ffn_norm.forward(&self.mlp.forward(&h)?)?)
    }
}

/// Where an OLMo 2 file is silent.
const DEFAULTS: Defaults = Defaults {
    rms_eps: 1e-6,
    rope_base: 500_000.0,
    context_length: 4096,
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
    if hp.sliding_window.is_some() {
        return Err(ModelError::Unsupported(
            "olmo2 with sliding-window layers (OLMo 3)".into(),
        ));
    }
    let eps = hp.rms_eps;
    let context_length = hp.context_length;
    let rope = Arc::new(Rope::new(
        head_dim,
        hp.rope_base,
        context_length,
        RopeStyle::Halves,
        None,
        device,
    )?);
    let (embedding, head) = embedding_and_head(gguf, d_model, None, device)?;
    let vocab_size = embedding.vocab_size();
    let dims = hp.dims();
    let mut blocks: Vec<Box<dyn Block>> = Vec::with_capacity(n_layers);
    for i in 0..n_layers {
        let p = |name: &str| format!("blk.{i}.{name}");
        let (qkv, wo) = attention_weights(gguf, i, &dims, device)?;
        let attn = Attention {
            qkv,
            wo,
            bias: None,
            qk_norm: Some(QkNorm::Whole(
                norm(gguf, &p("attn_q_norm.weight"), eps, device)?,
                norm(gguf, &p("attn_k_norm.weight"), eps, device)?,
            )),
            n_heads,
            n_kv_heads,
            head_dim,
            scale: 1.0 / (head_dim as f64).sqrt(),
            window: None,
            softcap: None,
            rope: Some(rope.clone()),
        };
        blocks.push(Box::new(Olmo2Block {
            attn,
            post_attn_norm: norm(gguf, &p("post_attention_norm.weight"), eps, device)?,
            mlp: gated_mlp(gguf, i, &dims, Activation::Silu, device)?,
            post_ffn_norm: norm(gguf, &p("post_ffw_norm.weight"), eps, device)?,
        }));
    }
    let info = hp.info(vocab_size);
    let out_norm = norm(gguf, "output_norm.weight", eps, device)?;
    Ok(Transformer::assemble(
        info, embedding, blocks, out_norm, head, device,
    ))
}
