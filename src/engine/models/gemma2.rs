//! Gemma 2: Gemma's sandwich block without query/key norms, soft caps on the attention scores
//! and on the final logits, and sliding-window attention on every other layer (the even ones).
//! The 27B model scales queries by `1/√(d_model/heads)` rather than `1/√head_dim`.

use std::sync::Arc;

use candle_core::Device;

use super::gemma3::{capped, query_scale, SandwichBlock};
use super::layers::{Attention, Rope, RopeStyle};
use super::{
    attention_weights, embedding_and_head, norm, Block, Defaults, Heads, Hparams, ModelError,
    Transformer,
};
use crate::engine::gguf::GgufFile;

/// Layers 0, 2, 4, ... use the sliding window.
const SLIDING_WINDOW_PATTERN: usize = 2;

/// Where a Gemma 2 file is silent.
const DEFAULTS: Defaults = Defaults {
    rms_eps: 1e-6,
    rope_base: 10_000.0,
    context_length: 8192,
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
    // llama.cpp's defaults for Gemma 2 files that leave these out.
    let window = hp.sliding_window.unwrap_or(4096);
    let attn_cap = hp.attn_softcap.unwrap_or(50.0);
    let final_cap = hp.final_softcap.unwrap_or(30.0);
    let context_length = hp.context_length;
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
    let base = hp.rope_base;
    let global_rope = Arc::new(rope(base)?);
    let local_rope = match hp.rope_base_swa {
        Some(b) if b != base => Arc::new(rope(b)?),
        _ => global_rope.clone(),
    };

    let (embedding, head) =
        embedding_and_head(gguf, d_model, Some((d_model as f64).sqrt()), device)?;
    let vocab_size = embedding.vocab_size();
    let dims = hp.dims();
    let sliding = hp.sliding_layers(gguf, SLIDING_WINDOW_PATTERN);
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
    let info = hp.info(vocab_size);
    let out_norm = norm(gguf, "output_norm.weight", eps, device)?;
    let model = Transformer::assemble(info, embedding, blocks, out_norm, head, device);
    Ok(capped(model, final_cap))
}
