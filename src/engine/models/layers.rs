//! The pieces every architecture shares, written once: RMS norm, rotary embeddings, masks,
//! attention over a flattened batch with per-sequence KV caches, and the gated MLP.
//!
//! A flattened batch is a (tokens, d_model) matrix holding the new tokens of every sequence one
//! after another; `SeqSpan` says which rows belong to whom and where each starts in its sequence.
//! Linear layers see the whole matrix at once (one pass over the weights for the whole batch);
//! attention runs per sequence against that sequence's own cache.

use std::borrow::Cow;

use candle_core::quantized::{GgmlDType, QStorage, QTensor};
use std::sync::{Arc, RwLock};

use candle_core::{DType, Device, Result, Tensor};

use super::activation::gelu_vectorizable;
pub use super::activation::Activation;
use super::host_attention;
pub use super::span::SeqSpan;
use crate::engine::host_ops;
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

#[derive(Debug)]
pub struct Rope {
    tables: RopeTables,
    max_positions: usize,
    style: RopeStyle,
}

/// cos and sin of every (position, frequency), as rows of head_dim / 2.
#[derive(Debug)]
enum RopeTables {
    /// On the CPU, grown on demand to the furthest position asked for: whole tables for a 32k
    /// context hold 33 MB per frequency base, most chats use a few thousand positions.
    Host {
        inv_freq: Vec<f32>,
        rows: RwLock<Arc<HostRope>>,
    },
    /// On an accelerator, whole tensors.
    Device { cos: Tensor, sin: Tensor },
}

/// The rotary rows for positions `0..cos.len() / half` on the CPU.
#[derive(Debug, Default)]
pub struct HostRope {
    cos: Vec<f32>,
    sin: Vec<f32>,
    interleaved: bool,
}

impl HostRope {
    /// Rotate the heads of every token row of `x` (`row` values each) for its position,
    /// on every thread for a long prompt.
    fn rotate_rows(
        &self,
        x: &mut [f32],
        row: usize,
        head_dim: usize,
        positions: &[usize],
    ) -> Result<()> {
        let half = head_dim / 2;
        if let Some(&pos) = positions.iter().find(|&&p| (p + 1) * half > self.cos.len()) {
            candle_core::bail!("position {pos} is past the rotary table");
        }
        host_ops::for_rows(x, row, |r, x| {
            let at = positions[r] * half;
            host_attention::rotate(
                x,
                head_dim,
                &self.cos[at..at + half],
                &self.sin[at..at + half],
                self.interleaved,
            );
        });
        Ok(())
    }
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
        let tables = if device.is_cpu() {
            RopeTables::Host {
                inv_freq,
                rows: RwLock::new(Arc::new(HostRope {
                    interleaved: style == RopeStyle::Interleaved,
                    ..HostRope::default()
                })),
            }
        } else {
            let mut angles = Vec::with_capacity(max_positions * half);
            for p in 0..max_positions {
                angles.extend(inv_freq.iter().map(|f| p as f32 * f));
            }
            let angles = Tensor::from_vec(angles, (max_positions, half), device)?;
            RopeTables::Device {
                cos: angles.cos()?,
                sin: angles.sin()?,
            }
        };
        Ok(Self {
            tables,
            max_positions,
            style,
        })
    }

    /// The CPU rows for positions `0..upto` at least (grown to the next power of two, so a
    /// conversation growing a token at a time extends them rarely). Each value is `cos(p·f)`
    /// in f32, as candle's elementwise `cos` computes the accelerator's table.
    fn host_rows(&self, upto: usize) -> Result<Arc<HostRope>> {
        let RopeTables::Host { inv_freq, rows } = &self.tables else {
            candle_core::bail!("rotary tables are not on the CPU");
        };
        let half = inv_freq.len();
        let held = |r: &HostRope| r.cos.len() / half.max(1);
        {
            let current = rows.read().unwrap_or_else(|e| e.into_inner());
            if held(&current) >= upto {
                return Ok(current.clone());
            }
        }
        let mut current = rows.write().unwrap_or_else(|e| e.into_inner());
        if held(&current) < upto {
            let positions = upto.next_power_of_two().min(self.max_positions).max(upto);
            let mut grown = HostRope {
                cos: Vec::with_capacity(positions * half),
                sin: Vec::with_capacity(positions * half),
                interleaved: current.interleaved,
            };
            for p in 0..positions {
                for f in inv_freq {
                    let angle = p as f32 * f;
                    grown.cos.push(angle.cos());
                    grown.sin.push(angle.sin());
                }
            }
            *current = Arc::new(grown);
        }
        Ok(current.clone())
    }

    pub fn max_positions(&self) -> usize {
        self.max_positions
    }

    /// `x`: (heads, t, head_dim) for positions `pos..pos + t`, on an accelerator.
    pub fn apply(&self, x: &Tensor, pos: usize) -> Result<Tensor> {
        let RopeTables::Device { cos, sin } = &self.tables else {
            candle_core::bail!("rotary tables are on the CPU: rotate rows with the host path");
        };
        let t = x.dim(1)?;
        let cos = cos.narrow(0, pos, t)?;
        let sin = sin.narrow(0, pos, t)?;
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

/// RMS norms of the queries and keys (query norm, key norm).
#[derive(Debug)]
pub enum QkNorm {
    /// Over each head (Gemma 3, Qwen3).
    PerHead(RmsNorm, RmsNorm),
    /// Over all heads together, the whole projection (OLMo 2).
    Whole(RmsNorm, RmsNorm),
}

/// Self-attention with grouped KV heads.
#[derive(Debug)]
pub struct Attention {
    /// Q, K and V projections.
    pub qkv: LinearGroup,
    pub wo: QLinear,
    /// Qwen2's QKV biases.
    pub bias: Option<(Tensor, Tensor, Tensor)>,
    /// Norms on queries and keys, before rotation.
    pub qk_norm: Option<QkNorm>,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub scale: f64,
    pub window: Option<usize>,
    /// Gemma 2's soft cap on the scaled scores: `cap · tanh(score / cap)`.
    pub softcap: Option<f64>,
    /// Shared by the layers that use the same base (Gemma 3 has a local and a global one);
    /// None for layers without positions (SmolLM3's NoPE layers).
    pub rope: Option<Arc<Rope>>,
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
        if let Some(QkNorm::Whole(qn, kn)) = &self.qk_norm {
            q = qn.forward(&q)?;
            k = kn.forward(&k)?;
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
            if let Some(QkNorm::PerHead(qn, kn)) = &self.qk_norm {
                qs = qn.forward(&qs)?;
                ks = kn.forward(&ks)?;
            }
            let (qs, ks) = match &self.rope {
                Some(rope) => (rope.apply(&qs, span.pos)?, rope.apply(&ks, span.pos)?),
                None => (qs, ks),
            };
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
            Some(QkNorm::PerHead(qn, kn)) => (
                qn.forward(&q.reshape((tokens, self.n_heads, hd))?)?,
                kn.forward(&k.reshape((tokens, self.n_kv_heads, hd))?)?,
            ),
            _ => (q, k),
        };
        let rows = |t: Tensor| host_ops::to_f32_vec(&t.contiguous()?);
        let (mut q, mut k, v) = (rows(q)?, rows(k)?, rows(v)?);
        let (q_row, kv_row) = (self.n_heads * hd, self.n_kv_heads * hd);
        if let Some(rope) = &self.rope {
            // Spans lie one after another in the batch: row r is token r - start of its span.
            let positions: Vec<usize> = spans
                .iter()
                .flat_map(|s| (0..s.len).map(move |i| s.pos + i))
                .collect();
            let furthest = positions.iter().max().map_or(0, |p| p + 1);
            let rope = rope.host_rows(furthest)?;
            rope.rotate_rows(&mut q, q_row, hd, &positions)?;
            rope.rotate_rows(&mut k, kv_row, hd, &positions)?;
        }
        host_ops::for_rows(&mut q, q_row, |_, r| host_attention::round_to_f16(r));
        for (span, cache) in spans.iter().zip(caches.iter_mut()) {
            let at = span.start * kv_row..(span.start + span.len) * kv_row;
            cache.append_host(layer, &k[at.clone()], &v[at], kv_row)?;
        }
        let history: Vec<_> = caches
            .iter()
            .map(|c| c.host(layer).expect("appended above"))
            .collect();
        let shape = host_attention::Shape {
            n_heads: self.n_heads,
            n_kv_heads: self.n_kv_heads,
            head_dim: hd,
            scale: self.scale as f32,
            window: self.window,
            softcap: self.softcap.map(|c| c as f32),
        };
        let Some(out) = host_attention::attend_rows(&q, spans, &history, shape) else {
            candle_core::bail!("one pass over KV caches of different types");
        };
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
        let scores = match self.softcap {
            Some(cap) => ((scores / cap)?.tanh()? * cap)?,
            None => scores,
        };
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
        if let Some(gate_up) = self.gate_up.forward_host(x)? {
            return self
                .down
                .forward(&self.gate_host(&gate_up, x.dim(0)?, x.device())?);
        }
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

    /// `act(gate) * up` over fused CPU rows (gate then up in each row), on every thread at once:
    /// candle's element-wise ops run on one, which held back a prompt's scaling across cores.
    /// The activations are candle's f32 formulas, so the values are the same.
    fn gate_host(&self, gate_up: &[f32], rows: usize, device: &Device) -> Result<Tensor> {
        let ffn = gate_up.len() / rows.max(1) / 2;
        let mut out = vec![0f32; rows * ffn];
        let activation = self.activation;
        crate::engine::pass_threads::for_each_chunk_mut(&mut out, ffn, |r, o| {
            let (gate, up) = gate_up[r * 2 * ffn..(r + 1) * 2 * ffn].split_at(ffn);
            // One loop per activation, so each is a straight line the compiler vectorizes.
            match activation {
                Activation::Gelu => {
                    for ((o, &g), &u) in o.iter_mut().zip(gate).zip(up) {
                        *o = gelu_vectorizable(g) * u;
                    }
                }
                Activation::Silu => {
                    for ((o, &g), &u) in o.iter_mut().zip(gate).zip(up) {
                        *o = activation.apply(g) * u;
                    }
                }
            }
        });
        Tensor::from_vec(out, (rows, ffn), device)
    }
}

/// Token ids → embedding rows, dequantizing only the rows asked for (candle's CPU
/// `QTensor::embedding` dequantizes the whole table per call: 670 MB for Gemma 3's vocabulary).
/// The table is held once: a tied model reads the output head's repacked rows.
#[derive(Debug)]
pub struct Embedding {
    rows: Rows,
    vocab: usize,
    hidden: usize,
    scale: Option<f64>,
}

#[derive(Debug)]
enum Rows {
    /// The output head's weights, which a tied model shares (Lantern's layout on the CPU).
    Head(Arc<QLinear>),
    /// The GGUF rows as stored, dequantized one at a time.
    Raw {
        bytes: Vec<u8>,
        row_bytes: usize,
        dtype: GgmlDType,
    },
    /// On an accelerator: candle's gather over the table there.
    Device(QTensor),
}

impl Embedding {
    /// A table of its own (an untied model, or a type the head cannot share).
    pub fn new(table: QTensor, scale: Option<f64>) -> Result<Self> {
        let (vocab, hidden) = table.shape().dims2()?;
        let rows = if table.device().is_cpu() {
            let dtype = table.dtype();
            let row_bytes = hidden / dtype.block_size() * dtype.type_size();
            let bytes = table.data()?.into_owned();
            debug_assert_eq!(bytes.len(), vocab * row_bytes);
            Rows::Raw {
                bytes,
                row_bytes,
                dtype,
            }
        } else {
            Rows::Device(table)
        };
        Ok(Self {
            rows,
            vocab,
            hidden,
            scale,
        })
    }

    /// The output head's rows as the table, or None when its weights cannot give rows back.
    pub fn tied(head: &Arc<QLinear>, scale: Option<f64>) -> Option<Self> {
        head.on_lantern_kernels().then(|| Self {
            rows: Rows::Head(head.clone()),
            vocab: head.out_features(),
            hidden: head.in_features(),
            scale,
        })
    }

    pub fn vocab_size(&self) -> usize {
        self.vocab
    }

    pub fn forward(&self, ids: &[u32], device: &Device) -> Result<Tensor> {
        let outside =
            |id: u32| candle_core::Error::Msg(format!("token id {id} outside the embedding"));
        let x = match &self.rows {
            Rows::Head(head) => {
                let mut values = Vec::with_capacity(ids.len() * self.hidden);
                for &id in ids {
                    values.extend(head.row(id as usize).ok_or_else(|| outside(id))?);
                }
                Tensor::from_vec(values, (ids.len(), self.hidden), device)?
            }
            Rows::Raw {
                bytes,
                row_bytes,
                dtype,
            } => {
                let mut rows = Vec::with_capacity(ids.len());
                for &id in ids {
                    let at = id as usize * row_bytes;
                    let row = bytes.get(at..at + row_bytes).ok_or_else(|| outside(id))?;
                    let storage = QStorage::from_data(Cow::Borrowed(row), &Device::Cpu, *dtype)?;
                    rows.push(QTensor::new(storage, (1, self.hidden))?.dequantize(&Device::Cpu)?);
                }
                Tensor::cat(&rows, 0)?.to_device(device)?
            }
            Rows::Device(table) => table
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
#[path = "layers_tests.rs"]
mod tests;
