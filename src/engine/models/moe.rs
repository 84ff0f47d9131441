//! Mixture-of-experts MLPs (Qwen3-MoE, OLMoE, Granite-MoE, Mixtral), as llama.cpp's
//! `build_moe_ffn` runs them: a router scores every expert, a softmax turns the scores into
//! probabilities, each token goes to its top `used` experts, weighted by their probabilities
//! (renormalised to sum to 1 where the architecture does), plus a shared expert where the file
//! has one. Only the chosen experts' weights are read, which is where a CPU shines: Qwen3-30B-A3B
//! reads 3B parameters' bytes per token. The experts stay in Lantern's quantized layouts, one
//! layer per expert, and the tokens routed to one expert run through it as one matrix product.

use candle_core::{Device, Result, Tensor};

use super::layers::{Activation, GatedMlp};
use super::weights::{expert_matrices, gated_mlp, linear, Dims};
use super::{Meta, ModelError};
use crate::engine::gguf::GgufFile;
use crate::engine::host_ops::to_f32_vec;
use crate::engine::qmatmul::{LinearGroup, QLinear};

/// A block's MLP: one gated MLP, or experts behind a router.
#[derive(Debug)]
pub enum Mlp {
    Gated(GatedMlp),
    Experts(MoeMlp),
}

impl Mlp {
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Mlp::Gated(mlp) => mlp.forward(x),
            Mlp::Experts(moe) => moe.forward(x),
        }
    }
}

/// The expert counts and widths a file's metadata gives (llama.cpp's key names).
#[derive(Debug, Clone, Copy)]
pub struct ExpertShape {
    pub count: usize,
    pub used: usize,
    /// Each expert's hidden width (`expert_feed_forward_length`, else `feed_forward_length`).
    pub ffn: usize,
    /// The shared expert's width (Granite-MoE-Shared), 0 for none.
    pub shared_ffn: usize,
}

impl ExpertShape {
    /// None for a dense model (no `expert_count`, or 0).
    pub(crate) fn read(
        meta: &Meta,
        dense_ffn: usize,
    ) -> std::result::Result<Option<Self>, ModelError> {
        let count = meta.usize("expert_count").unwrap_or(0);
        if count == 0 {
            return Ok(None);
        }
        let used = meta.usize("expert_used_count")?;
        if used == 0 || used > count {
            return Err(ModelError::Inconsistent(format!(
                "{used} experts used per token of {count}"
            )));
        }
        Ok(Some(Self {
            count,
            used,
            ffn: meta
                .usize("expert_feed_forward_length")
                .unwrap_or(dense_ffn),
            shared_ffn: meta.usize("expert_shared_feed_forward_length").unwrap_or(0),
        }))
    }
}

/// How the chosen experts' probabilities become their weights.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ExpertWeights {
    /// Divided by their sum (Mixtral, Qwen3-MoE, Granite-MoE: `norm_topk_prob`).
    Normalized,
    /// The softmax probabilities as they are (OLMoE).
    Raw,
}

/// Experts behind a router.
#[derive(Debug)]
pub struct MoeMlp {
    /// (experts, d_model): one score per expert.
    router: QLinear,
    experts: Vec<GatedMlp>,
    used: usize,
    weights: ExpertWeights,
    /// Run on every token and added (Granite-MoE-Shared).
    shared: Option<GatedMlp>,
    layer: usize,
}

impl MoeMlp {
    /// `x`: (tokens, d_model) → (tokens, d_model).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (tokens, d) = x.dims2()?;
        let scores = to_f32_vec(&self.router.forward(x)?)?;
        let routes = route(&scores, self.experts.len(), self.used, self.weights);
        self.log(&routes, tokens);
        let input = to_f32_vec(x)?;
        // The chosen experts run side by side on the pool, each on its tokens as one matrix
        // product: one fork and join a layer, not one per projection of each expert (in decode
        // those waits cost half as much as the kernels did).
        let active: Vec<(&GatedMlp, Vec<(usize, f32)>)> = self
            .experts
            .iter()
            .zip(routes.by_expert())
            .filter(|(_, routed)| !routed.is_empty())
            .collect();
        let run = |a: usize| {
            let (expert, routed) = &active[a];
            let mut rows = Vec::with_capacity(routed.len() * d);
            for &(t, _) in routed {
                rows.extend_from_slice(&input[t * d..(t + 1) * d]);
            }
            let rows = Tensor::from_vec(rows, (routed.len(), d), &Device::Cpu)?;
            to_f32_vec(&expert.forward(&rows.to_device(x.device())?)?)
        };
        // Fewer experts than threads (Mixtral's two): one after another, each on every thread.
        let outputs: Vec<Vec<f32>> = if active.len() >= rayon::current_num_threads() {
            crate::engine::pass_threads::map(active.len(), run)
                .into_iter()
                .collect::<Result<_>>()?
        } else {
            (0..active.len()).map(run).collect::<Result<_>>()?
        };
        // Summed expert by expert in ascending order: each token's sum runs in the same order
        // whatever else is in the batch, so batching leaves every answer as it is alone.
        let mut out = vec![0f32; tokens * d];
        for ((_, routed), y) in active.iter().zip(&outputs) {
            for (&(t, w), y) in routed.iter().zip(y.chunks_exact(d)) {
                for (o, v) in out[t * d..(t + 1) * d].iter_mut().zip(y) {
                    *o += w * v;
                }
            }
        }
        let out = Tensor::from_vec(out, (tokens, d), x.device())?.to_dtype(x.dtype())?;
        match &self.shared {
            Some(shared) => crate::engine::host_ops::add(&out, &shared.forward(x)?),
            None => Ok(out),
        }
    }

    /// At `LANTERN_LOG=debug`: each token's experts and each expert's token count, per layer.
    fn log(&self, routes: &Routes, tokens: usize) {
        if !tracing::enabled!(tracing::Level::DEBUG) {
            return;
        }
        let chosen: Vec<&[u32]> = (0..tokens).map(|t| routes.experts_of(t)).collect();
        let counts: Vec<usize> = routes.by_expert().iter().map(Vec::len).collect();
        tracing::debug!(layer = self.layer, ?chosen, ?counts, "experts chosen");
    }
}

/// Each token's chosen experts (best first) and their weights.
#[derive(Debug)]
pub struct Routes {
    used: usize,
    n_experts: usize,
    experts: Vec<u32>,
    weights: Vec<f32>,
}

impl Routes {
    pub fn experts_of(&self, token: usize) -> &[u32] {
        &self.experts[token * self.used..(token + 1) * self.used]
    }

    pub fn weights_of(&self, token: usize) -> &[f32] {
        &self.weights[token * self.used..(token + 1) * self.used]
    }

    /// Per expert, the (token, weight) pairs routed to it, tokens ascending.
    fn by_expert(&self) -> Vec<Vec<(usize, f32)>> {
        let mut out = vec![Vec::new(); self.n_experts];
        for (i, (&e, &w)) in self.experts.iter().zip(&self.weights).enumerate() {
            out[e as usize].push((i / self.used, w));
        }
        out
    }
}

/// ggml's routing: softmax over each token's `n_experts` scores (f32, max subtracted), the
/// `used` most probable (ties to the lower index), their probabilities as weights, renormalised
/// with the sum clamped at f16's smallest normal as llama.cpp does.
pub fn route(scores: &[f32], n_experts: usize, used: usize, how: ExpertWeights) -> Routes {
    let tokens = scores.len() / n_experts.max(1);
    let mut experts = Vec::with_capacity(tokens * used);
    let mut weights = Vec::with_capacity(tokens * used);
    let mut probs = vec![0f32; n_experts];
    let mut order: Vec<u32> = Vec::with_capacity(n_experts);
    for row in scores.chunks_exact(n_experts) {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0f32;
        for (p, &s) in probs.iter_mut().zip(row) {
            *p = (s - max).exp();
            sum += *p;
        }
        probs.iter_mut().for_each(|p| *p /= sum);
        order.clear();
        order.extend(0..n_experts as u32);
        order.sort_by(|&a, &b| {
            probs[b as usize]
                .total_cmp(&probs[a as usize])
                .then(a.cmp(&b))
        });
        let top = &order[..used];
        let total: f32 = top.iter().map(|&e| probs[e as usize]).sum();
        let divisor = match how {
            ExpertWeights::Normalized => total.max(6.103_515_6e-5),
            ExpertWeights::Raw => 1.0,
        };
        experts.extend_from_slice(top);
        weights.extend(top.iter().map(|&e| probs[e as usize] / divisor));
    }
    Routes {
        used,
        n_experts,
        experts,
        weights,
    }
}

/// Layer `i`'s MLP: experts where the file has a router (`ffn_gate_inp`), else a gated MLP.
pub(crate) fn mlp(
    gguf: &GgufFile,
    i: usize,
    dims: &Dims,
    experts: Option<ExpertShape>,
    how: ExpertWeights,
    activation: Activation,
    device: &Device,
) -> std::result::Result<Mlp, ModelError> {
    let p = |name: &str| format!("blk.{i}.{name}");
    let Some(shape) = experts.filter(|_| gguf.has_tensor(&p("ffn_gate_inp.weight"))) else {
        return Ok(Mlp::Gated(gated_mlp(gguf, i, dims, activation, device)?));
    };
    let (d, ffn, n) = (dims.d_model, shape.ffn, shape.count);
    let router = linear(gguf, &p("ffn_gate_inp.weight"), (n, d), device)?;
    let experts = expert_layers(gguf, i, shape, d, activation, device)?;
    let shared = if shape.shared_ffn > 0 {
        let shared_dims = Dims {
            ffn: shape.shared_ffn,
            ..*dims
        };
        Some(shared_mlp(gguf, i, &shared_dims, activation, device)?)
    } else {
        None
    };
    tracing::trace!(layer = i, experts = n, ffn, "experts loaded");
    Ok(Mlp::Experts(MoeMlp {
        router,
        experts,
        used: shape.used,
        weights: how,
        shared,
        layer: i,
    }))
}

/// Every expert of layer `i` as a gated MLP: from the stacked `ffn_{gate,up,down}_exps` (or a
/// fused `ffn_gate_up_exps`), or from an older file's one tensor per expert (`ffn_gate.E`).
fn expert_layers(
    gguf: &GgufFile,
    i: usize,
    shape: ExpertShape,
    d: usize,
    activation: Activation,
    device: &Device,
) -> std::result::Result<Vec<GatedMlp>, ModelError> {
    let p = |name: &str| format!("blk.{i}.{name}");
    let (n, ffn) = (shape.count, shape.ffn);
    if gguf.has_tensor(&p("ffn_down_exps.weight")) {
        let gate_up: Vec<Vec<QLinear>> = if gguf.has_tensor(&p("ffn_gate_up_exps.weight")) {
            expert_matrices(
                gguf,
                &p("ffn_gate_up_exps.weight"),
                n,
                &[ffn, ffn],
                d,
                device,
            )?
        } else {
            let gate = expert_matrices(gguf, &p("ffn_gate_exps.weight"), n, &[ffn], d, device)?;
            let up = expert_matrices(gguf, &p("ffn_up_exps.weight"), n, &[ffn], d, device)?;
            gate.into_iter()
                .zip(up)
                .map(|(g, u)| g.into_iter().chain(u).collect())
                .collect()
        };
        let down = expert_matrices(gguf, &p("ffn_down_exps.weight"), n, &[d], ffn, device)?;
        return Ok(gate_up
            .into_iter()
            .zip(down)
            .map(|(gate_up, mut down)| GatedMlp {
                gate_up: LinearGroup::new(gate_up),
                down: down.remove(0),
                activation,
            })
            .collect());
    }
    (0..n)
        .map(|e| {
            let part =
                |what: &str, shape| linear(gguf, &p(&format!("{what}.{e}.weight")), shape, device);
            Ok(GatedMlp {
                gate_up: LinearGroup::new(vec![
                    part("ffn_gate", (ffn, d))?,
                    part("ffn_up", (ffn, d))?,
                ]),
                down: part("ffn_down", (d, ffn))?,
                activation,
            })
        })
        .collect()
}

/// The shared expert (`ffn_{gate,up,down}_shexp`), run on every token.
fn shared_mlp(
    gguf: &GgufFile,
    i: usize,
    dims: &Dims,
    activation: Activation,
    device: &Device,
) -> std::result::Result<GatedMlp, ModelError> {
    let p = |name: &str| format!("blk.{i}.{name}");
    let (d, ffn) = (dims.d_model, dims.ffn);
    Ok(GatedMlp {
        gate_up: LinearGroup::new(vec![
            linear(gguf, &p("ffn_gate_shexp.weight"), (ffn, d), device)?,
            linear(gguf, &p("ffn_up_shexp.weight"), (ffn, d), device)?,
        ]),
        down: linear(gguf, &p("ffn_down_shexp.weight"), (d, ffn), device)?,
        activation,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routing_takes_the_most_probable_experts_and_weights_them_as_llama_cpp_does() {
        // Two tokens over four experts.
        let scores = [0.0, 2.0, 1.0, -1.0, 3.0, 3.0, 0.0, 5.0];
        let soft = |row: &[f32]| {
            let e: Vec<f64> = row.iter().map(|&s| (s as f64).exp()).collect();
            let sum: f64 = e.iter().sum();
            e.into_iter().map(|v| v / sum).collect::<Vec<_>>()
        };
        let raw = route(&scores, 4, 2, ExpertWeights::Raw);
        assert_eq!(raw.experts_of(0), [1, 2]);
        // A tie (experts 0 and 1 at 3.0) goes to the lower index.
        assert_eq!(raw.experts_of(1), [3, 0]);
        let p0 = soft(&scores[..4]);
        assert!((raw.weights_of(0)[0] as f64 - p0[1]).abs() < 1e-6);
        let norm = route(&scores, 4, 2, ExpertWeights::Normalized);
        let w = norm.weights_of(0);
        assert!((w[0] + w[1] - 1.0).abs() < 1e-6);
        assert!((w[0] as f64 - p0[1] / (p0[1] + p0[2])).abs() < 1e-6);
        let by_expert = norm.by_expert();
        assert_eq!(by_expert[0].iter().map(|r| r.0).collect::<Vec<_>>(), [1]);
        assert_eq!(by_expert[1].iter().map(|r| r.0).collect::<Vec<_>>(), [0]);
        assert!(by_expert[2].len() == 1 && by_expert[3].len() == 1);
    }
}
