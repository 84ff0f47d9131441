//! Quantized linear layers, with Lantern's own CPU kernels for the common GGUF weight types.
//!
//! candle 0.11 has no SIMD path for Q4_1 at all (a scalar dot product was 78% of a profile of the
//! default model) and its quantized matmul does not reuse a weight block across the rows of a
//! batch. Here, on the CPU, Q4_1 and Q8_0 weights are repacked once at load into groups of eight
//! output rows interleaved four bytes at a time (as llama.cpp's repacked kernels do): one
//! `vpdpbusd` then advances eight dot products at once, the weights are read as one sequential
//! stream, and the results land in a register already in output order, with no horizontal sums.
//! Activations are quantized to 8 bits once per call, as ggml's `quantize_row_q8_1` does, and
//! each weight block loaded serves up to `ROW_GROUP` activation rows.
//! Every output element is computed by the same code in the same order whatever the number of
//! rows, so a sequence gets bit-identical logits alone or in a batch.
//! The SIMD path (AVX-512 VNNI, else AVX2) is chosen at run time; a portable scalar path computes
//! the same layout. Other devices and weight types use candle's `QMatMul`.

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Module, Result, Tensor};

const QK: usize = 32;
/// Output rows interleaved in one group.
const LANES: usize = 8;
/// About this much of a GGUF tensor is read and resident at a time while it is repacked.
const SLICE_BYTES: usize = 2 << 20;
/// Most activation rows that share one pass over the weights (eight where AVX-512 gives the
/// registers for them, else four: see `Kernel::row_group`).
const ROW_GROUP: usize = 8;

/// Eight rows' Q4_1 block `b`: f16 scales and minimums, then 4 segments of 32 bytes where byte
/// `4 * row + e` of segment `p` is the source byte `qs[4p + e]` of that row (low nibble: element
/// `4p + e`, high nibble: element `16 + 4p + e`).
#[derive(Clone, Copy)]
#[repr(C, align(32))]
pub(crate) struct Q4_1x8 {
    qs: [u8; 128],
    d: [u16; LANES],
    m: [u16; LANES],
}

/// Eight rows' Q8_0 block: 8 segments of 32 bytes, byte `4 * row + e` of segment `k` holding
/// element `4k + e` plus 128 (unsigned, as `vpdpbusd` wants its first operand).
#[derive(Clone, Copy)]
#[repr(C, align(32))]
pub(crate) struct Q8_0x8 {
    qs: [u8; 256],
    d: [u16; LANES],
}

/// An activation block: 8-bit values, the f16-rounded scale, ggml's f16-rounded scaled sum
/// (Q4_1's offset term) and the exact scaled sum (Q8_0's +128 correction).
#[derive(Clone, Copy)]
#[repr(C, align(32))]
pub(crate) struct ActBlock {
    qs: [i8; 32],
    d: f32,
    s: f32,
    sum: f32,
    /// Integer sums of the two halves (elements 0..16 and 16..32), for zero points and
    /// per-16 scales.
    half: [i32; 2],
}

/// `y = x Wᵀ` for a quantized `W` of shape (out_features, in_features).
pub struct QLinear {
    weights: Weights,
    dtype: GgmlDType,
    out_features: usize,
    in_features: usize,
}

/// One copy of a layer's weights: Lantern's repacked layout on the CPU, or candle's tensor
/// (other devices, types the kernels do not cover). The GGUF bytes are not kept beside them.
enum Weights {
    Lantern(CpuWeights),
    /// f16 and bf16 rows as the file holds them (`float`).
    Float(FloatWeights),
    Candle(QMatMul),
}

impl std::fmt::Debug for QLinear {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "QLinear({}x{}, {:?})",
            self.out_features, self.in_features, self.dtype
        )
    }
}

impl QLinear {
    pub fn new(qtensor: QTensor) -> Result<Self> {
        let (out_features, in_features) = qtensor.shape().dims2()?;
        let dtype = qtensor.dtype();
        let on_cpu = qtensor.device().is_cpu();
        let repacked = if on_cpu && supported(dtype) {
            CpuWeights::repack(dtype, &qtensor.data()?, out_features, in_features)
                .map(Weights::Lantern)
        } else if let (true, Some(kind)) = (on_cpu, Half::of(dtype)) {
            Some(Weights::Float(FloatWeights::from_bytes(
                kind,
                &qtensor.data()?,
                out_features,
                in_features,
            )))
        } else {
            None
        };
        let weights = match repacked {
            Some(w) => w,
            None => Weights::Candle(QMatMul::from_qtensor(qtensor)?),
        };
        Ok(Self {
            weights,
            dtype,
            out_features,
            in_features,
        })
    }

    /// A CPU layer straight from a GGUF tensor's bytes (`n` rows of `k` values), repacked without
    /// an intermediate copy; `done(consumed)` reports the source bytes finished with. None for a
    /// type Lantern's kernels do not cover.
    pub fn from_gguf_rows(
        dtype: GgmlDType,
        bytes: &[u8],
        (n, k): (usize, usize),
        mut done: impl FnMut(usize),
    ) -> Option<Self> {
        if let Some(kind) = Half::of(dtype) {
            let weights = Weights::Float(FloatWeights::from_bytes(kind, bytes, n, k));
            done(bytes.len());
            return Some(Self {
                weights,
                dtype,
                out_features: n,
                in_features: k,
            });
        }
        if !supported(dtype) {
            return None;
        }
        Some(Self {
            weights: Weights::Lantern(CpuWeights::repack_in_slices(
                dtype,
                bytes,
                n,
                k,
                SLICE_BYTES,
                done,
            )?),
            dtype,
            out_features: n,
            in_features: k,
        })
    }

    pub fn out_features(&self) -> usize {
        self.out_features
    }

    pub fn in_features(&self) -> usize {
        self.in_features
    }

    pub fn dtype(&self) -> GgmlDType {
        self.dtype
    }

    /// Whether Lantern's kernels run this layer (false: candle's matmul on a device, or a type
    /// they do not cover).
    pub fn on_lantern_kernels(&self) -> bool {
        matches!(self.weights, Weights::Lantern(_) | Weights::Float(_))
    }

    /// Row `row` of `W` dequantized with ggml's formulas, when the weights are in Lantern's
    /// layout: a tied model's embedding lookup reads the head's copy of the table this way.
    pub fn row(&self, row: usize) -> Option<Vec<f32>> {
        match &self.weights {
            Weights::Lantern(w) if row < self.out_features => Some(w.row(row, self.in_features)),
            Weights::Float(w) if row < self.out_features => Some(w.row(row, self.in_features)),
            _ => None,
        }
    }

    /// `x`: (rows, in_features) → (rows, out_features), in `x`'s dtype.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self.forward_host(x)? {
            Some(out) => {
                let rows = x.dim(0)?;
                Tensor::from_vec(out, (rows, self.out_features), x.device())?.to_dtype(x.dtype())
            }
            None => match &self.weights {
                Weights::Candle(m) => m.forward(x),
                Weights::Lantern(_) | Weights::Float(_) => {
                    unreachable!("forward_host runs Lantern's weights")
                }
            },
        }
    }

    /// On Lantern's kernels: the (rows, out_features) result as plain f32 rows, for callers
    /// that go on working on the CPU; None for candle's weights.
    pub fn forward_host(&self, x: &Tensor) -> Result<Option<Vec<f32>>> {
        let rows = x.dim(0)?;
        let (k, n) = (self.in_features, self.out_features);
        let run = |input: &[f32], out: &mut [f32]| match &self.weights {
            Weights::Lantern(w) => matmul_cpu(w, input, rows, k, n, out),
            Weights::Float(w) => w.matmul(input, rows, k, n, out),
            Weights::Candle(_) => unreachable!("checked below"),
        };
        if matches!(self.weights, Weights::Candle(_)) {
            return Ok(None);
        }
        let mut out = vec![0f32; rows * n];
        // Read in place when the input is plain CPU f32 rows: a copy is a serial pass.
        if crate::engine::host_ops::with_f32(x, |input| run(input, &mut out)).is_none() {
            let input = x.to_dtype(DType::F32)?.contiguous()?.flatten_all()?;
            run(&input.to_vec1::<f32>()?, &mut out);
        }
        Ok(Some(out))
    }
}

/// Several linear layers over the same input (Q, K and V; gate and up), run as one matrix when
/// they share a weight type on the CPU: the input is quantized once and the threads are woken
/// once, instead of once per layer.
#[derive(Debug)]
pub enum LinearGroup {
    Fused { linear: QLinear, widths: Vec<usize> },
    Separate(Vec<QLinear>),
}

impl LinearGroup {
    /// Fused when every part runs on Lantern's kernels with one weight type and input width, and
    /// each part's rows fill whole groups of eight (so the repacked parts, one after another, are
    /// the repacked whole); else the parts run one by one.
    pub fn new(parts: Vec<QLinear>) -> Self {
        let fusable = parts.len() >= 2
            && parts.iter().all(|p| {
                p.on_lantern_kernels()
                    && p.dtype == parts[0].dtype
                    && p.in_features == parts[0].in_features
                    && p.out_features % LANES == 0
            });
        if !fusable {
            return Self::Separate(parts);
        }
        let widths: Vec<usize> = parts.iter().map(|p| p.out_features).collect();
        let mut parts = parts.into_iter();
        let Some(mut linear) = parts.next() else {
            return Self::Separate(Vec::new());
        };
        for part in parts {
            let appended = match (&mut linear.weights, part.weights) {
                (Weights::Lantern(all), Weights::Lantern(w)) => all.append(w),
                (Weights::Float(all), Weights::Float(w)) => all.append(w),
                _ => unreachable!("checked: every part is on Lantern's kernels, of one type"),
            };
            debug_assert!(appended, "checked: one weight type");
            linear.out_features += part.out_features;
        }
        Self::Fused { linear, widths }
    }

    /// A fused group on Lantern's kernels: the parts' outputs side by side in each row, as
    /// plain f32 rows (rows, sum of widths); None otherwise.
    pub fn forward_host(&self, x: &Tensor) -> Result<Option<Vec<f32>>> {
        match self {
            Self::Fused { linear, .. } => linear.forward_host(x),
            Self::Separate(_) => Ok(None),
        }
    }

    /// One output per part, in order.
    pub fn forward(&self, x: &Tensor) -> Result<Vec<Tensor>> {
        match self {
            Self::Separate(parts) => parts.iter().map(|p| p.forward(x)).collect(),
            Self::Fused { linear, widths } => {
                let y = linear.forward(x)?;
                let mut at = 0;
                widths
                    .iter()
                    .map(|&w| {
                        let part = y.narrow(1, at, w);
                        at += w;
                        part
                    })
                    .collect()
            }
        }
    }
}

/// The weight types Lantern's CPU kernels run.
pub fn supported(dtype: GgmlDType) -> bool {
    use GgmlDType::*;
    matches!(
        dtype,
        Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q8_0 | Q2K | Q3K | Q4K | Q5K | Q6K
    )
}

/// A raw output pointer shared by tasks that write disjoint columns.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

fn matmul_cpu(w: &CpuWeights, x: &[f32], rows: usize, k: usize, n: usize, out: &mut [f32]) {
    let kernel = select_kernel();
    // Most K-quants meet activations quantized per 256 values, as ggml's Q8_K; the rest per 32.
    let acts = if w.takes_q8_k() {
        activations::q8_k(x)
    } else {
        activations::q8_1(kernel, x)
    };
    let kb = k / QK;
    let wb = w.blocks_per_row(k);
    let groups = n.div_ceil(LANES);
    let threads = rayon::current_num_threads().max(1);
    // A few tasks per thread balance the load without paying for many tiny ones.
    let per_task = groups.div_ceil(threads * 4).max(2);
    let out_ptr = OutPtr(out.as_mut_ptr());
    let row_group = kernel.row_group();
    crate::engine::pass_threads::for_each(groups.div_ceil(per_task), |t| {
        let out = out_ptr;
        for g in t * per_task..((t + 1) * per_task).min(groups) {
            for r0 in (0..rows).step_by(row_group) {
                let nr = row_group.min(rows - r0);
                let act = |i: usize| &acts[(r0 + i) * kb..(r0 + i + 1) * kb];
                let mut res = [[0f32; LANES]; ROW_GROUP];
                let run = |res: &mut Out| match nr {
                    1 => group_rows::<1>(kernel, w, g, wb, act, res),
                    2 => group_rows::<2>(kernel, w, g, wb, act, res),
                    3 => group_rows::<3>(kernel, w, g, wb, act, res),
                    4 => group_rows::<4>(kernel, w, g, wb, act, res),
                    5 => group_rows::<5>(kernel, w, g, wb, act, res),
                    6 => group_rows::<6>(kernel, w, g, wb, act, res),
                    7 => group_rows::<7>(kernel, w, g, wb, act, res),
                    _ => group_rows::<8>(kernel, w, g, wb, act, res),
                };
                run(&mut res);
                let cols = LANES.min(n - g * LANES);
                for (r, vals) in res.iter().enumerate().take(nr) {
                    // SAFETY: group g's columns belong to this task alone; r0 + r < rows and
                    // g * LANES + cols <= n.
                    let dst = unsafe {
                        std::slice::from_raw_parts_mut(out.0.add((r0 + r) * n + g * LANES), cols)
                    };
                    dst.copy_from_slice(&vals[..cols]);
                }
            }
        }
    });
}

/// `NR` activation rows against weight group `g` (`kb` weight blocks per row).
#[inline]
fn group_rows<'a, const NR: usize>(
    kernel: kernels::Kernel,
    w: &CpuWeights,
    g: usize,
    kb: usize,
    act: impl Fn(usize) -> &'a [ActBlock],
    res: &mut Out,
) {
    let a = std::array::from_fn(act);
    macro_rules! tiles {
        ($b:expr) => {
            kernel.tiles::<_, NR>(&$b[g * kb..(g + 1) * kb], a, res)
        };
    }
    match w {
        CpuWeights::Q4K(b) => tiles!(b),
        CpuWeights::Q5K(b) => tiles!(b),
        CpuWeights::Q6K(b) => tiles!(b),
        CpuWeights::Q3K(b) => tiles!(b),
        CpuWeights::Q2K(b) => tiles!(b),
        CpuWeights::Q5_0(b) => tiles!(b),
        CpuWeights::Q5_1(b) => tiles!(b),
        CpuWeights::Q4_1(b) => kernel.q4_1::<NR, false>(&b[g * kb..(g + 1) * kb], a, res),
        CpuWeights::Q4_0(b) => kernel.q4_1::<NR, true>(&b[g * kb..(g + 1) * kb], a, res),
        CpuWeights::Q8_0(b) => kernel.q8_0::<NR>(&b[g * kb..(g + 1) * kb], a, res),
    }
}

mod activations;
mod float;
mod kernels;
mod tiles;
mod unpack;
mod weights;

use float::{FloatWeights, Half};
use weights::CpuWeights;

use kernels::{select_kernel, Out};
#[cfg(test)]
use kernels::{Kernel, Rows};

#[cfg(test)]
mod tests;
