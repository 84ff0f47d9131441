//! The pieces every architecture shares, written once: RMS norm, rotary embeddings, masks,
//! attention over a flattened batch with per-sequence KV caches, and the gated MLP.
//!
//! A flattened batch is a (tokens, d_model) matrix holding the new tokens of every sequence one
//! after another; `SeqSpan` says which rows belong to whom and where each starts in its sequence.
//! Linear layers see the whole matrix at once (one pass over the weights for the whole batch);
//! attention runs per sequence against that sequence's own cache.

use std::borrow::Cow;

use candle_core::quantized::{QStorage, QTensor};
use std::sync::Arc;

use candle_core::{DType, Device, Result, Tensor};

use super::host_attention;
pub use super::span::SeqSpan;
use crate::engine::kv::KvCache;
use crate::engine::qmatmul::{LinearGroup, QLinear};

#[derive(Debug, Clone)]
pub struct RmsNorm {
    weight: Tensor,
    eps: f32,
}

impl RmsNorm {
    pub fn new(weight: QTensor, eps: f64, device: &Device) -> Result<Self> {
        Ok(Self {
            weight: weight.dequantize(device)?,
            eps: eps as f32,
        })
    }

    /// Normalizes over the last dimension, whatever the rank.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        candle_nn::ops::rms_norm(&x.contiguous()?, &self.weight, self.eps)
    }
}

/// How a model pairs the dimensions it rotates.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RopeStyle {
    /// Adjacent pairs (llama.cpp's "normal" rope; GGUF llama weights are permuted for it).
    Interleaved,
    /// First half with second half (GPT-NeoX, Qwen2, Gemma).
    Halves,
}

#[derive(Debug, Clone)]
pub struct Rope {
    cos: Tensor,
    sin: Tensor,
    style: RopeStyle,
    /// The same tables as plain rows (max_positions × head_dim / 2) on the CPU.
    host: Option<(Vec<f32>, Vec<f32>)>,
}

impl Rope {
    /// `freq_factors` divide each frequency (Llama 3.1's `rope_freqs.weight`).
    pub fn new(
        head_dim: usize,
        base: f64,
        max_positions: usize,
        style: RopeStyle,
        freq_factors: Option<Vec<f32>>,
        device: &Device,
    ) -> Result<Self> {
        let half = head_dim / 2;
        let inv_freq: Vec<f32> = (0..half)
            .map(|i| {
                let f = 1.0 / base.powf(2.0 * i as f64 / head_dim as f64) as f32;
                f / freq_factors
                    .as_ref()
                    .and_then(|ff| ff.get(i))
                    .copied()
                    .unwrap_or(1.0)
            })
            .collect();
        let mut angles = Vec::with_capacity(max_positions * half);
        for p in 0..max_positions {
            angles.extend(inv_freq.iter().map(|f| p as f32 * f));
        }
        let angles = Tensor::from_vec(angles, (max_positions, half), device)?;
        let (cos, sin) = (angles.cos()?, angles.sin()?);
        let host = if device.is_cpu() {
            Some((
                cos.flatten_all()?.to_vec1::<f32>()?,
                sin.flatten_all()?.to_vec1::<f32>()?,
            ))
        } else {
            None
        };
        Ok(Self {
            cos,
            sin,
            style,
            host,
        })
    }

    /// Rotate one token's heads (CPU rows) for position `pos`.
    fn rotate_host(&self, x: &mut [f32], head_dim: usize, pos: usize) -> Result<()> {
        let Some((cos, sin)) = &self.host else {
            candle_core::bail!("rotary tables are not on the CPU");
        };
        let half = head_dim / 2;
        let at = pos * half;
        if at + half > cos.len() {
            candle_core::bail!("position {pos} is past the rotary table");
        }
        host_attention::rotate(
            x,
            head_dim,
            &cos[at..at + half],
            &sin[at..at + half],
            self.style == RopeStyle::Interleaved,
        );
        Ok(())
    }

    pub fn max_positions(&self) -> usize {
        self.cos.dim(0).unwrap_or(0)
    }

    /// `x`: (heads, t, head_dim) for positions `pos..pos + t`.
    pub fn apply(&self, x: &Tensor, pos: usize) -> Result<Tensor> {
        let t = x.dim(1)?;
        let cos = self.cos.narrow(0, pos, t)?;
        let sin = self.sin.narrow(0, pos, t)?;
        let x = x.unsqueeze(0)?.contiguous()?;
        let y = match self.style {
            RopeStyle::Interleaved => candle_nn::rotary_emb::rope_i(&x, &cos, &sin)?,
            RopeStyle::Halves => candle_nn::rotary_emb::rope(&x, &cos, &sin)?,
        };
        y.squeeze(0)
    }
}

/// The additive mask for `t` new tokens at `pos` against `pos + t` cached ones: causal, and
/// limited to the last `window` positions where the layer uses sliding-window attention.
/// `None` when nothing is masked (a single token with no window in reach).
fn attention_mask(
    t: usize,
    pos: usize,
    window: Option<usize>,
    device: &Device,
) -> Result<Option<Tensor>> {
    let total = pos + t;
    let window_hides = window.is_some_and(|w| total > w);
    if t == 1 && !window_hides {
        return Ok(None);
    }
    let mut mask = vec![0f32; t * total];
    for i in 0..t {
        let q = pos + i;
        for (j, m) in mask[i * total..(i + 1) * total].iter_mut().enumerate() {
            let future = j > q;
            let too_old = window.is_some_and(|w| q >= w && j <= q - w);
            if future || too_old {
                *m = f32::NEG_INFINITY;
            }
        }
    }
    Ok(Some(Tensor::from_vec(mask, (t, total), device)?))
}

/// Self-attention with grouped KV heads.
#[derive(Debug)]
pub struct Attention {
    /// Q, K and V projections.
    pub qkv: LinearGroup,
    pub wo: QLinear,
    /// Qwen2's QKV biases.
    pub bias: Option<(Tensor, Tensor, Tensor)>,
    /// Gemma 3's per-head norms on queries and keys, before rotation.
    pub qk_norm: Option<(RmsNorm, RmsNorm)>,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub scale: f64,
    pub window: Option<usize>,
    /// Shared by the layers that use the same base (Gemma 3 has a local and a global one).
    pub rope: Arc<Rope>,
}

impl Attention {
    /// `x`: the flattened batch (tokens, d_model) → (tokens, d_model).
    pub fn forward(
        &self,
        x: &Tensor,
        spans: &[SeqSpan],
        caches: &mut [&mut KvCache],
        layer: usize,
    ) -> Result<Tensor> {
        let mut qkv = self.qkv.forward(x)?.into_iter();
        let (Some(mut q), Some(mut k), Some(mut v)) = (qkv.next(), qkv.next(), qkv.next()) else {
            candle_core::bail!("the QKV group has three parts");
        };
        if let Some((bq, bk, bv)) = &self.bias {
            q = q.broadcast_add(bq)?;
            k = k.broadcast_add(bk)?;
            v = v.broadcast_add(bv)?;
        }
        if x.device().is_cpu() {
            return self.forward_host(q, k, v, spans, caches, layer);
        }
        let mut outputs = Vec::with_capacity(spans.len());
        for (span, cache) in spans.iter().zip(caches.iter_mut()) {
            let heads = |m: &Tensor, n: usize| -> Result<Tensor> {
                m.narrow(0, span.start, span.len)?
                    .reshape((span.len, n, self.head_dim))?
                    .transpose(0, 1)?
                    .contiguous()
            };
            let mut qs = heads(&q, self.n_heads)?;
            let mut ks = heads(&k, self.n_kv_heads)?;
            let vs = heads(&v, self.n_kv_heads)?;
            if let Some((qn, kn)) = &self.qk_norm {
                qs = qn.forward(&qs)?;
                ks = kn.forward(&ks)?;
            }
            let qs = self.rope.apply(&qs, span.pos)?;
            let ks = self.rope.apply(&ks, span.pos)?;
            let (k_all, v_all) = cache.append(layer, &ks, &vs)?;
            outputs.push(self.attend(&qs, &k_all, &v_all, span)?);
        }
        let out = if outputs.len() == 1 {
            outputs.pop().expect("one output")
        } else {
            Tensor::cat(&outputs, 0)?
        };
        self.wo.forward(&out)
    }

    /// The CPU path: norms on the whole batch, then rotation, cache appends and attention in
    /// plain loops (`host_attention`).
    fn forward_host(
        &self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        spans: &[SeqSpan],
        caches: &mut [&mut KvCache],
        layer: usize,
    ) -> Result<Tensor> {
        let (tokens, hd) = (q.dim(0)?, self.head_dim);
        let (q, k) = match &self.qk_norm {
            Some((qn, kn)) => (
                qn.forward(&q.reshape((tokens, self.n_heads, hd))?)?,
                kn.forward(&k.reshape((tokens, self.n_kv_heads, hd))?)?,
            ),
            None => (q, k),
        };
        let rows = |t: Tensor| -> Result<Vec<f32>> { t.contiguous()?.flatten_all()?.to_vec1() };
        let (mut q, mut k, v) = (rows(q)?, rows(k)?, rows(v)?);
        let (q_row, kv_row) = (self.n_heads * hd, self.n_kv_heads * hd);
        for span in spans {
            for i in 0..span.len {
                let r = span.start + i;
                self.rope
                    .rotate_host(&mut q[r * q_row..(r + 1) * q_row], hd, span.pos + i)?;
                self.rope
                    .rotate_host(&mut k[r * kv_row..(r + 1) * kv_row], hd, span.pos + i)?;
            }
        }
        host_attention::round_to_f16(&mut q);
        for (span, cache) in spans.iter().zip(caches.iter_mut()) {
            let at = span.start * kv_row..(span.start + span.len) * kv_row;
            cache.append_host(layer, &k[at.clone()], &v[at], kv_row)?;
        }
        let history: Vec<(&[half::f16], &[half::f16])> = caches
            .iter()
            .map(|c| c.host(layer).expect("appended above"))
            .collect();
        let out = host_attention::attend(
            &q,
            spans,
            &history,
            host_attention::Shape {
                n_heads: self.n_heads,
                n_kv_heads: self.n_kv_heads,
                head_dim: hd,
                scale: self.scale as f32,
                window: self.window,
            },
        );
        self.wo
            .forward(&Tensor::from_vec(out, (tokens, q_row), &Device::Cpu)?)
    }

    /// One sequence: `q` (heads, t, dim) against its whole history (kv_heads, total, dim).
    fn attend(&self, q: &Tensor, k: &Tensor, v: &Tensor, span: &SeqSpan) -> Result<Tensor> {
        let t = span.len;
        let group = self.n_heads / self.n_kv_heads;
        let total = k.dim(1)?;
        // Query heads that share a KV head are stacked as rows, so K and V are never copied per
        // head: (kv_heads, group * t, dim) · (kv_heads, dim, total).
        let q = q.reshape((self.n_kv_heads, group * t, self.head_dim))?;
        let scores = (q.matmul(&k.t()?)? * self.scale)?;
        let scores = match attention_mask(t, span.pos, self.window, q.device())? {
            None => scores,
            Some(mask) => scores
                .reshape((self.n_kv_heads, group, t, total))?
                .broadcast_add(&mask)?
                .reshape((self.n_kv_heads, group * t, total))?,
        };
        let weights = candle_nn::ops::softmax_last_dim(&scores)?;
        weights
            .matmul(v)?
            .reshape((self.n_heads, t, self.head_dim))?
            .transpose(0, 1)?
            .reshape((t, self.n_heads * self.head_dim))
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Activation {
    Silu,
    /// tanh approximation, as Gemma uses.
    Gelu,
}

/// `down(act(gate(x)) * up(x))`.
#[derive(Debug)]
pub struct GatedMlp {
    /// Gate and up projections.
    pub gate_up: LinearGroup,
    pub down: QLinear,
    pub activation: Activation,
}

impl GatedMlp {
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut gate_up = self.gate_up.forward(x)?.into_iter();
        let (Some(gate), Some(up)) = (gate_up.next(), gate_up.next()) else {
            candle_core::bail!("the gate/up group has two parts");
        };
        let gate = match self.activation {
            Activation::Silu => candle_nn::ops::silu(&gate)?,
            Activation::Gelu => gate.gelu()?,
        };
        self.down.forward(&(gate * up)?)
    }
}

/// Token ids → embedding rows, dequantizing only the rows asked for (candle's CPU
/// `QTensor::embedding` dequantizes the whole table per call: 670 MB for Gemma 3's vocabulary).
#[derive(Debug)]
pub struct Embedding {
    table: QTensor,
    /// The raw rows on the CPU, where rows are picked by hand.
    cpu_rows: Option<(Vec<u8>, usize)>,
    scale: Option<f64>,
}

impl Embedding {
    pub fn new(table: QTensor, scale: Option<f64>) -> Result<Self> {
        let cpu_rows = if table.device().is_cpu() {
            let (rows, hidden) = table.shape().dims2()?;
            let row_bytes = hidden / table.dtype().block_size() * table.dtype().type_size();
            let data = table.data()?.into_owned();
            debug_assert_eq!(data.len(), rows * row_bytes);
            Some((data, row_bytes))
        } else {
            None
        };
        Ok(Self {
            table,
            cpu_rows,
            scale,
        })
    }

    pub fn vocab_size(&self) -> usize {
        self.table.shape().dims()[0]
    }

    pub fn forward(&self, ids: &[u32], device: &Device) -> Result<Tensor> {
        let x = match &self.cpu_rows {
            Some((data, row_bytes)) => {
                let hidden = self.table.shape().dims()[1];
                let dtype = self.table.dtype();
                let mut rows = Vec::with_capacity(ids.len());
                for &id in ids {
                    let at = id as usize * row_bytes;
                    let bytes = data.get(at..at + row_bytes).ok_or_else(|| {
                        candle_core::Error::Msg(format!("token id {id} outside the embedding"))
                    })?;
                    let storage = QStorage::from_data(Cow::Borrowed(bytes), &Device::Cpu, dtype)?;
                    rows.push(QTensor::new(storage, (1, hidden))?.dequantize(&Device::Cpu)?);
                }
                Tensor::cat(&rows, 0)?.to_device(device)?
            }
            None => self
                .table
                .embedding(&Tensor::new(ids, device)?)?
                .to_dtype(DType::F32)?,
        };
        match self.scale {
            Some(s) => x * s,
            None => Ok(x),
        }
    }
}

/// Rows of the flattened batch whose logits are wanted: the last of each sequence, or all of a
/// sequence's rows when `all` is set for it (teacher-forced scoring).
pub fn output_rows(spans: &[SeqSpan], all: &[bool], device: &Device) -> Result<Tensor> {
    let mut rows = Vec::new();
    for (s, &all) in spans.iter().zip(all) {
        if all {
            rows.extend((s.start..s.start + s.len).map(|r| r as u32));
        } else {
            rows.push((s.start + s.len - 1) as u32);
        }
    }
    Tensor::new(rows.as_slice(), device)
}

/// Gather `rows` of `x` (tokens, d) → (rows, d).
pub fn select_rows(x: &Tensor, rows: &Tensor) -> Result<Tensor> {
    if rows.dim(0)? == x.dim(0)? {
        return Ok(x.clone());
    }
    x.index_select(rows, 0)
}

/// Logits for every row of `x` (rows, vocab), as f32 on the CPU-visible device.
pub fn lm_head(norm: &RmsNorm, head: &QLinear, x: &Tensor) -> Result<Tensor> {
    head.forward(&norm.forward(x)?)?.to_dtype(DType::F32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mask_is_causal_and_windowed() {
        let m = attention_mask(3, 2, None, &Device::Cpu).unwrap().unwrap();
        let m = m.to_vec2::<f32>().unwrap();
        assert_eq!(m[0][..3], [0.0, 0.0, 0.0]);
        assert!(m[0][3].is_infinite() && m[1][4].is_infinite());
        assert_eq!(m[2], vec![0.0; 5]);
        assert!(attention_mask(1, 10, None, &Device::Cpu).unwrap().is_none());
        let w = attention_mask(1, 10, Some(4), &Device::Cpu)
            .unwrap()
            .unwrap();
        let w = w.to_vec2::<f32>().unwrap();
        // Position 10 sees 7..=10.
        assert!(w[0][6].is_infinite());
        assert_eq!(w[0][7..], [0.0; 4]);
    }
}
