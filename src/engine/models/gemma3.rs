//! Gemma 3: sandwich norms (before and after attention and MLP), per-head query/key norms, GELU,
//! embeddings scaled by √d, and sliding-window attention on five layers of six with their own
//! rotary base. Norm weights in GGUF already include Gemma's `1 +` offset.

use std::sync::Arc;

use candle_core::{Device, Tensor};

use super::layers::{Activation, Attention, GatedMlp, QkNorm, RmsNorm, Rope, RopeStyle, SeqSpan};
use super::llama::MAX_CONTEXT;
use super::{
    attention_weights, embedding_and_head, gated_mlp, norm, Block, Dims, Meta, ModelError,
    ModelInfo, Transformer,
};
use crate::engine::gguf::GgufFile;
use crate::engine::host_ops::add;
use crate::engine::kv::KvCache;

/// Every sixth layer attends globally; the others within the sliding window.
const SLIDING_WINDOW_PATTERN: usize = 6;

struct GemmaBlock {
    attn_norm: RmsNorm,
    attn: Attention,
    post_attn_norm: RmsNorm,
    ffn_norm: RmsNorm,
    mlp: GatedMlp,
    post_ffn_norm: RmsNorm,
}

impl Block for GemmaBlock {
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

pub fn load(gguf: &GgufFile, device: &Device) -> Result<Transformer, ModelError> {
    let meta = Meta {
        gguf,
        prefix: "gemma3".into(),
    };
    let n_layers = meta.usize("block_count")?;
    let d_model = meta.usize("embedding_length")?;
    let n_heads = meta.usize("attention.head_count")?;
    let n_kv_heads = meta.usize("attention.head_count_kv")?;
    let head_dim = meta.usize("attention.key_length")?;
    let ffn = meta.usize("feed_forward_length")?;
    if n_kv_heads == 0 || n_heads % n_kv_heads != 0 {
        return Err(ModelError::Inconsistent(format!(
            "{n_heads} heads, {n_kv_heads} KV heads"
        )));
    }
    let eps = meta.f64_or("attention.layer_norm_rms_epsilon", 1e-6);
    let window = meta.usize("attention.sliding_window")?;
    let context_length = meta
        .usize("context_length")
        .unwrap_or(32_768)
        .min(MAX_CONTEXT);
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
    let global_rope = Arc::new(rope(meta.f64_or("rope.freq_base", 1_000_000.0))?);
    let local_rope = Arc::new(rope(meta.f64_or("rope.local_freq_base", 10_000.0))?);

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
    let mut blocks: Vec<Box<dyn Block>> = Vec::with_capacity(n_layers);
    for i in 0..n_layers {
        let p = |name: &str| format!("blk.{i}.{name}");
        let global = (i + 1) % SLIDING_WINDOW_PATTERN == 0;
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
            scale: 1.0 / (head_dim as f64).sqrt(),
            window: (!global).then_some(window),
            rope: Some(if global {
                global_rope.clone()
            } else {
                local_rope.clone()
            }),
        };
        let mlp = gated_mlp(gguf, i, &dims, Activation::Gelu, device)?;
        blocks.push(Box::new(GemmaBlock {
            attn_norm: norm(gguf, &p("attn_norm.weight"), eps, device)?,
            attn,
            post_attn_norm: norm(gguf, &p("post_attention_norm.weight"), eps, device)?,
            ffn_norm: norm(gguf, &p("ffn_norm.weight"), eps, device)?,
            mlp,
            post_ffn_norm: norm(gguf, &p("post_ffw_norm.weight"), eps, device)?,
        }));
    }
    let info = ModelInfo {
        architecture: "gemma3".into(),
        n_layers,
        d_model,
        n_heads,
        n_kv_heads,
        head_dim,
        context_length,
        vocab_size,
    };
    let out_norm = norm(gguf, "output_norm.weight", eps, device)?;
    Ok(Transformer::assemble(
        info, embedding, blocks, out_norm, head, device,
    ))
}
