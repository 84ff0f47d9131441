//! The llama family: Llama 2/3 (3.1/3.2's rope scaling as `rope_freqs.weight`), SmolLM2, Mistral
//! (as `llama` or `mistral` GGUFs), Qwen2 (QKV biases, half-split rotary) and Qwen3 (RMS norm of
//! each query and key head before the rotary, half-split rotary), SmolLM3 (every fourth layer
//! without rotary, "NoPE") and Granite (scaled embeddings, residual branches, attention and
//! logits, by its `*_scale` keys) and Phi-3 (fused QKV and gate-and-up weights, half-split
//! rotary; LongRoPE's per-frequency factors are refused, not run wrong). Their mixture-of-experts
//! kin share the block with experts for the MLP (`moe`): Mixtral (a `llama` file with experts),
//! Qwen3-MoE, Granite-MoE, and OLMoE (RMS norms over the whole query and key projections).
//! Pre-norm blocks: `h = x + s·attn(norm(x)); y = h + s·mlp(norm(h))`, with s = 1 but for
//! Granite.

use std::sync::Arc;

use candle_core::{Device, Tensor};

use super::layers::{Activation, Attention, QkNorm, RmsNorm, Rope, RopeStyle, SeqSpan};
use super::moe::{self, ExpertWeights, Mlp};
use super::{
    attention_weights, embedding_and_head, norm, Block, Defaults, Heads, Hparams, LogitAdjust,
    ModelError, Transformer,
};
use crate::engine::gguf::GgufFile;
use crate::engine::host_ops::add;
use crate::engine::kv::KvCache;

struct LlamaBlock {
    attn_norm: RmsNorm,
    attn: Attention,
    ffn_norm: RmsNorm,
    mlp: Mlp,
    /// Granite's `residual_scale`: each branch is scaled before it joins the residual stream.
    residual_scale: Option<f64>,
}

/// SmolLM3 leaves the rotary out of every fourth layer (llama.cpp's `n_no_rope_layer_step`).
const SMOLLM3_NO_ROPE_EVERY: usize = 4;

impl Block for LlamaBlock {
    fn forward(
        &self,
        x: &Tensor,
        spans: &[SeqSpan],
        caches: &mut [&mut KvCache],
        layer: usize,
    ) -> candle_core::Result<Tensor> {
        let scaled = |t: Tensor| match self.residual_scale {
            Some(s) => t * s,
            None => Ok(t),
        };
        let a = self
            .attn
            .forward(&self.attn_norm.forward(x)?, spans, caches, layer)?;
        let h = add(x, &scaled(a)?)?;
        add(&h, &scaled(self.mlp.forward(&self.ffn_norm.forward(&h)?)?)?)
    }
}

/// Where a llama-family file is silent (llama.cpp's defaults).
const DEFAULTS: Defaults = Defaults {
    rms_eps: 1e-5,
    rope_base: 10_000.0,
    context_length: 4096,
};

pub fn load(gguf: &GgufFile, device: &Device) -> Result<Transformer, ModelError> {
    let hp = Hparams::read(gguf, DEFAULTS)?;
    let arch = hp.arch.as_str();
    let Heads {
        n_layers,
        d_model,
        n_heads,
        n_kv_heads,
        head_dim,
    } = hp.heads;
    // Qwen3-MoE and Mixtral renormalise the chosen experts' weights; OLMoE does not.
    let expert_weights = if arch == "olmoe" {
        ExpertWeights::Raw
    } else {
        ExpertWeights::Normalized
    };
    let eps = hp.rms_eps;
    if arch == "phi3" && gguf.has_tensor("rope_factors_long.weight") {
        return Err(ModelError::Unsupported(
            "phi3 with LongRoPE scaling (Phi-3.5, Phi-4-mini)".into(),
        ));
    }
    let style = if matches!(arch, "qwen2" | "qwen3" | "qwen3moe" | "phi3" | "olmoe") {
        RopeStyle::Halves
    } else {
        RopeStyle::Interleaved
    };
    let freq_factors = if gguf.has_tensor("rope_freqs.weight") {
        let t = gguf.qtensor("rope_freqs.weight", &Device::Cpu)?;
        Some(
            t.dequantize(&Device::Cpu)?
                .flatten_all()?
                .to_vec1::<f32>()?,
        )
    } else {
        None
    };
    let rope = Arc::new(Rope::new(
        head_dim,
        hp.rope_base,
        hp.context_length,
        style,
        freq_factors,
        device,
    )?);

    let scales = hp.scales;
    let (embedding, head) = embedding_and_head(gguf, d_model, scales.embedding, device)?;
    let vocab_size = embedding.vocab_size();
    let dims = hp.dims();
    let mut blocks: Vec<Box<dyn Block>> = Vec::with_capacity(n_layers);
    for i in 0..n_layers {
        let p = |name: &str| format!("blk.{i}.{name}");
        let bias = if gguf.has_tensor(&p("attn_q.bias")) {
            let b = |name: &str| -> Result<Tensor, ModelError> {
                Ok(gguf.qtensor(&p(name), device)?.dequantize(device)?)
            };
            Some((b("attn_q.bias")?, b("attn_k.bias")?, b("attn_v.bias")?))
        } else {
            None
        };
        let (qkv, wo) = attention_weights(gguf, i, &dims, device)?;
        // Per head (Qwen3) or over the whole projection (OLMoE), by the norm's width.
        let qk_norm = if gguf.has_tensor(&p("attn_q_norm.weight")) {
            let (q, k) = (
                norm(gguf, &p("attn_q_norm.weight"), eps, device)?,
                norm(gguf, &p("attn_k_norm.weight"), eps, device)?,
            );
            let (info, _) = gguf.tensor_bytes(&p("attn_q_norm.weight"))?;
            Some(if info.shape.iter().product::<usize>() == head_dim {
                QkNorm::PerHead(q, k)
            } else {
                QkNorm::Whole(q, k)
            })
        } else {
            None
        };
        let attn = Attention {
            qkv,
            wo,
            bias,
            qk_norm,
            n_heads,
            n_kv_heads,
            head_dim,
            scale: scales.attention.unwrap_or(1.0 / (head_dim as f64).sqrt()),
            window: None,
            softcap: None,
            rope: (arch != "smollm3" || (i + 1) % SMOLLM3_NO_ROPE_EVERY != 0).then(|| rope.clone()),
        };
        let mlp = moe::mlp(
            gguf,
            i,
            &dims,
            hp.experts,
            expert_weights,
            Activation::Silu,
            device,
        )?;
        blocks.push(Box::new(LlamaBlock {
            attn_norm: norm(gguf, &p("attn_norm.weight"), eps, device)?,
            attn,
            ffn_norm: norm(gguf, &p("ffn_norm.weight"), eps, device)?,
            mlp,
            residual_scale: scales.residual,
        }));
    }
    let info = hp.info(vocab_size);
    let out_norm = norm(gguf, "output_norm.weight", eps, device)?;
    let model = Transformer::assemble(info, embedding, blocks, out_norm, head, device);
    Ok(match scales.logit {
        Some(s) => model.with_logit_adjust(LogitAdjust::Divide(s)),
        None => model,
    })
}
