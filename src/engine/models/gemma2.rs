//! Gemma 2: Gemma's sandwich block without query/key norms, soft caps on the attention scores
//! and on the final logits, and sliding-window attention on every other layer (the even ones).
//! The 27B model scales queries by `1/√(d_model/heads)` rather than `1/√head_dim`.

use std::sync::Arc;

use candle_core::Device;

use super::gemma3::{capped, query_scale, SandwichBlock};
use super::layers::{Attention, Rope, RopeStyle};
use super::llama::MAX_CONTEXT;
use super::{
    attention_weights, embedding_and_head, norm, Block, Dims, Heads, Meta, ModelError, Transformer,
};
use crate::engine::gguf::GgufFile;

/// Layers 0, 2, 4, ... use the sliding window.
const SLIDING_WINDOW_PATTERN: usize = 2;

pub fn load(gguf: &GgufFile, device: &Device) -> Result<Transformer, ModelError> {
    let meta = Meta {
        gguf,
        prefix: "gemma2".into(),
    };
    let heads = meta.heads()?;
    let Heads {
        n_layers,
        d_model,
        n_heads,
        n_kv_heads,
        head_dim,
    } = heads;
    let ffn = meta.usize("feed_forward_length")?;
    let eps = meta.f64_or("attention.layer_norm_rms_epsilon", 1e-6);
    let window = meta.usize("attention.sliding_window").unwrap_or(4096);
    let attn_cap = meta.f64_or("attn_logit_softcapping", 50.0);
    let final_cap = meta.f64_or("final_logit_softcapping", 30.0);
    let context_length = meta
        .usize("context_length")
        .unwrap_or(8192)
        .min(MAX_CONTEXT);
    let scale = query_scale(n_layers, d_model, n_heads, head_dim);
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
    let base = meta.f64_or("rope.freq_base", 10_000.0);
    let global_rope = Arc::new(rope(base)?);
    let local_rope = match meta.f64("rope.freq_base_swa") {
        Ok(b) if b != base => Arc::new(rope(b)?),
        _ => global_rope.clone(),
    };

    let (embedding, head) =
        embedding_and_head(gguf, d_model, Some((d_model as f64).sqrt()), device)?;
    let vocab_size = embedding.vocab_size();
    let dims = Dims {
        d_model,
        n_heads,
        n_kv_heads,
        head_dim,
        ffn,
    };
    let sliding = meta.sliding_layers(n_layers, SLIDING_WINDOW_PATTERN);
    let mut blocks: Vec<Box<dyn Block>> = Vec::with_capacity(n_layers);
    for (i, &local) in sliding.iter().enumerate() {
        let (qkv, wo) = attention_weights(gguf, i, &dims, device)?;
        let attn = Attention {
            qkv,
            wo,
            bias: None,
            qk_norm: None,
            n_heads,
            n_kv_heads,
            head_dim,
            scale,
            window: local.then_some(window),
            softcap: (attn_cap > 0.0).then_some(attn_cap),
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
    let info = heads.info("gemma2", context_length, vocab_size);
    let out_norm = norm(gguf, "output_norm.weight", eps, device)?;
    let model = Transformer::assemble(info, embedding, blocks, out_norm, head, device);
    Ok(capped(model, final_cap))
}
