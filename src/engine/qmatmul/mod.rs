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
use half::f16;
use rayon::prelude::*;

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
        let repacked = if qtensor.device().is_cpu() && supported(dtype) {
            CpuWeights::repack(dtype, &qtensor.data()?, out_features, in_features)
        } else {
            None
        };
        let weights = match repacked {
            Some(w) => Weights::Lantern(w),
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
        done: impl FnMut(usize),
    ) -> Option<Self> {
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
        matches!(self.weights, Weights::Lantern(_))
    }

    /// Row `row` of `W` dequantized with ggml's formulas, when the weights are in Lantern's
    /// layout: a tied model's embedding lookup reads the head's copy of the table this way.
    pub fn row(&self, row: usize) -> Option<Vec<f32>> {
        match &self.weights {
            Weights::Lantern(w) if row < self.out_features => Some(w.row(row, self.in_features)),
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
                Weights::Lantern(_) => unreachable!("forward_host runs Lantern's weights"),
            },
        }
    }

    /// On Lantern's kernels: the (rows, out_features) result as plain f32 rows, for callers
    /// that go on working on the CPU; None for candle's weights.
    pub fn forward_host(&self, x: &Tensor) -> Result<Option<Vec<f32>>> {
        let Weights::Lantern(w) = &self.weights else {
            return Ok(None);
        };
        let rows = x.dim(0)?;
        let mut out = vec![0f32; rows * self.out_features];
        let (k, n) = (self.in_features, self.out_features);
        // Read in place when the input is plain CPU f32 rows: a copy is a serial pass.
        if crate::engine::host_ops::with_f32(x, |input| matmul_cpu(w, input, rows, k, n, &mut out))
            .is_none()
        {
            let input = x.to_dtype(DType::F32)?.contiguous()?.flatten_all()?;
            matmul_cpu(w, &input.to_vec1::<f32>()?, rows, k, n, &mut out);
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
            let (Weights::Lantern(all), Weights::Lantern(w)) = (&mut linear.weights, part.weights)
            else {
                unreachable!("checked: every part is on Lantern's kernels");
            };
            let appended = all.append(w);
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

/// ggml's x86 `quantize_row_q8_1`: `d = max / 127` kept as f16, `s = d · Σq` kept as f16.
/// Blocks are independent: a long input is quantized on every thread, in the same order.
fn quantize_activations(kernel: kernels::Kernel, x: &[f32]) -> Vec<ActBlock> {
    let block = |v: &[f32]| {
        let (d, qs) = kernel.quantize_block(v.try_into().expect("chunks of QK"));
        let half = |h: usize| qs[16 * h..16 * h + 16].iter().map(|&q| q as i32).sum();
        let half = [half(0), half(1)];
        let isum = half[0] + half[1];
        let d16 = f16::from_f32(d).to_f32();
        ActBlock {
            qs,
            d: d16,
            s: f16::from_f32(d * isum as f32).to_f32(),
            sum: d16 * isum as f32,
            half,
        }
    };
    if x.len() < 2 * crate::engine::host_ops::CHUNK {
        return x.chunks_exact(QK).map(block).collect();
    }
    let mut out = Vec::with_capacity(x.len() / QK);
    x.par_chunks_exact(QK)
        .with_min_len(256)
        .map(block)
        .collect_into_vec(&mut out);
    out
}

/// A raw output pointer shared by tasks that write disjoint columns.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

fn matmul_cpu(w: &CpuWeights, x: &[f32], rows: usize, k: usize, n: usize, out: &mut [f32]) {
    let kernel = select_kernel();
    let acts = quantize_activations(kernel, x);
    let kb = k / QK;
    let wb = w.blocks_per_row(k);
    let groups = n.div_ceil(LANES);
    let threads = rayon::current_num_threads().max(1);
    // A few tasks per thread balance the load without paying for many tiny ones.
    let per_task = groups.div_ceil(threads * 4).max(2);
    let out_ptr = OutPtr(out.as_mut_ptr());
    let row_group = kernel.row_group();
    (0..groups.div_ceil(per_task))
        .into_par_iter()
        .for_each(|t| {
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
                            std::slice::from_raw_parts_mut(
                                out.0.add((r0 + r) * n + g * LANES),
                                cols,
                            )
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

mod kernels;
mod tiles;
mod weights;

use weights::CpuWeights;

use kernels::{select_kernel, Out};
#[cfg(test)]
use kernels::{Kernel, Rows};

#[cfg(test)]
mod tests {
    use super::weights::{q4_0_as_q4_1, repack_q4_1, repack_q8_0};
    use super::*;
    use candle_core::Device;

    fn random(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 33) as f32 / (1u64 << 31) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    fn check(dtype: GgmlDType, rows: usize) {
        // 70 outputs: eight full groups and a padded one.
        let k = if dtype.block_size() == 256 { 512 } else { 96 };
        let n = 70;
        let w = Tensor::from_vec(random(n * k, 1), (n, k), &Device::Cpu).unwrap();
        let x = Tensor::from_vec(random(rows * k, 2), (rows, k), &Device::Cpu).unwrap();
        let q = QTensor::quantize(&w, dtype).unwrap();
        let q_dequantized = q.dequantize(&Device::Cpu).unwrap();
        let reference = x.matmul(&q_dequantized.t().unwrap()).unwrap();
        let linear = QLinear::new(q).unwrap();
        let ours = linear.forward(&x).unwrap();
        // Only the 8-bit rounding of the activations separates the two.
        let d = max_diff(&ours, &reference);
        let tolerance = 0.05 * (k as f32 / 96.0).sqrt();
        assert!(d < tolerance, "{dtype:?} rows={rows}: max diff {d}");
        // Against the activations as the kernel rounded them, only the order of the float sums.
        let acts =
            quantize_activations(Kernel::Scalar, &x.flatten_all().unwrap().to_vec1().unwrap());
        let x8: Vec<f32> = acts
            .iter()
            .flat_map(|a| a.qs.iter().map(move |&q| q as f32 * a.d))
            .collect();
        let x8 = Tensor::from_vec(x8, (rows, k), &Device::Cpu).unwrap();
        let exact = x8.matmul(&q_dequantized.t().unwrap()).unwrap();
        let d = max_diff(&ours, &exact);
        // Q4_1 takes ggml's f16-rounded activation sums on purpose.
        let tight = if dtype == GgmlDType::Q4_1 { 1e-2 } else { 2e-4 };
        assert!(
            d < tight,
            "{dtype:?} rows={rows}: {d} from the exact product"
        );
        // A row's result does not depend on the other rows of the batch.
        let alone = linear.forward(&x.narrow(0, rows - 1, 1).unwrap()).unwrap();
        let last = ours.narrow(0, rows - 1, 1).unwrap();
        assert_eq!(max_diff(&last, &alone), 0.0, "{dtype:?} rows={rows}");
    }

    #[test]
    fn q4_1_matches_dequantized_matmul() {
        for rows in [1, 3, 5, 8, 30] {
            check(GgmlDType::Q4_1, rows);
        }
    }

    #[test]
    fn q4_0_matches_dequantized_matmul() {
        for rows in [1, 3, 5, 8, 30] {
            check(GgmlDType::Q4_0, rows);
        }
        let w = Tensor::from_vec(random(16 * 64, 7), (16, 64), &Device::Cpu).unwrap();
        let q = QLinear::new(QTensor::quantize(&w, GgmlDType::Q4_0).unwrap()).unwrap();
        assert!(
            matches!(q.weights, Weights::Lantern(CpuWeights::Q4_0(_))),
            "runs on Lantern's kernel"
        );
    }

    #[test]
    fn q8_0_matches_dequantized_matmul() {
        for rows in [1, 4, 7, 30] {
            check(GgmlDType::Q8_0, rows);
        }
    }

    const TILE_TYPES: [GgmlDType; 7] = [
        GgmlDType::Q4K,
        GgmlDType::Q5K,
        GgmlDType::Q6K,
        GgmlDType::Q3K,
        GgmlDType::Q2K,
        GgmlDType::Q5_0,
        GgmlDType::Q5_1,
    ];

    /// Each tile type against candle's dequantization (ggml's formulas), on Lantern's kernel.
    #[test]
    fn tile_types_match_dequantized_matmul() {
        for dtype in TILE_TYPES {
            for rows in [1, 3, 8, 13] {
                check(dtype, rows);
            }
            let w = Tensor::from_vec(random(16 * 256, 7), (16, 256), &Device::Cpu).unwrap();
            let q = QLinear::new(QTensor::quantize(&w, dtype).unwrap()).unwrap();
            assert!(q.on_lantern_kernels(), "{dtype:?} runs on Lantern's kernel");
        }
    }

    /// The scalar decoders read back exactly the values ggml's dequantization gives.
    #[test]
    fn tile_values_are_ggml_values() {
        for dtype in TILE_TYPES {
            let (n, k) = (9, 512);
            let w = Tensor::from_vec(random(n * k, 21), (n, k), &Device::Cpu).unwrap();
            let q = QTensor::quantize(&w, dtype).unwrap();
            let expected = q
                .dequantize(&Device::Cpu)
                .unwrap()
                .to_vec2::<f32>()
                .unwrap();
            let cpu = CpuWeights::repack(dtype, &q.data().unwrap(), n, k).unwrap();
            for (row, want) in expected.iter().enumerate() {
                let got = cpu.row(row, k);
                for (c, (g, e)) in got.iter().zip(want).enumerate() {
                    assert!(
                        (g - e).abs() <= 1e-6 * e.abs().max(1.0),
                        "{dtype:?} [{row},{c}]: {g} vs {e}"
                    );
                }
            }
        }
    }

    #[test]
    fn scalar_and_simd_tile_kernels_agree() {
        let (n, k) = (8, 512);
        let rows_x: Vec<Vec<ActBlock>> = (0..3)
            .map(|s| quantize_activations(Kernel::Scalar, &random(k, 30 + s)))
            .collect();
        let rows: Rows<3> = [&rows_x[0], &rows_x[1], &rows_x[2]];
        for dtype in TILE_TYPES {
            let w = Tensor::from_vec(random(n * k, 3), (n, k), &Device::Cpu).unwrap();
            let q = QTensor::quantize(&w, dtype).unwrap();
            let cpu = CpuWeights::repack(dtype, &q.data().unwrap(), n, k).unwrap();
            let run = |kernel: Kernel| {
                let mut out = [[0f32; LANES]; ROW_GROUP];
                group_rows::<3>(
                    kernel,
                    &cpu,
                    0,
                    cpu.blocks_per_row(k),
                    |i| rows[i],
                    &mut out,
                );
                out
            };
            let expected = run(Kernel::Scalar);
            let mut kernels = vec![select_kernel()];
            #[cfg(target_arch = "x86_64")]
            if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("f16c") {
                kernels.push(Kernel::Avx2);
            }
            for kernel in kernels {
                let got = run(kernel);
                for r in 0..3 {
                    for c in 0..LANES {
                        let (g, e) = (got[r][c], expected[r][c]);
                        assert!((g - e).abs() < 1e-4, "{dtype:?} {kernel:?}: {g} vs {e}");
                    }
                }
            }
        }
    }

    #[test]
    fn scalar_and_simd_kernels_agree() {
        let (n, k) = (8, 64);
        let acts = quantize_activations(Kernel::Scalar, &random(k, 4));
        let acts2 = quantize_activations(Kernel::Scalar, &random(k, 5));
        let rows: Rows<2> = [&acts, &acts2];
        for dtype in [GgmlDType::Q4_0, GgmlDType::Q4_1, GgmlDType::Q8_0] {
            let w = Tensor::from_vec(random(n * k, 3), (n, k), &Device::Cpu).unwrap();
            let q = QTensor::quantize(&w, dtype).unwrap();
            let data = q.data().unwrap();
            let run = |kernel: Kernel| {
                let mut out = [[0f32; LANES]; ROW_GROUP];
                match dtype {
                    GgmlDType::Q4_0 => {
                        let q41 = q4_0_as_q4_1(&data).unwrap();
                        kernel.q4_1::<2, true>(&repack_q4_1(&q41, n, k), rows, &mut out)
                    }
                    GgmlDType::Q4_1 => {
                        kernel.q4_1::<2, false>(&repack_q4_1(&data, n, k), rows, &mut out)
                    }
                    _ => kernel.q8_0::<2>(&repack_q8_0(&data, n, k), rows, &mut out),
                }
                out
            };
            let expected = run(Kernel::Scalar);
            let mut kernels = vec![select_kernel()];
            #[cfg(target_arch = "x86_64")]
            if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("f16c") {
                kernels.push(Kernel::Avx2);
            }
            for kernel in kernels {
                let got = run(kernel);
                for r in 0..2 {
                    for c in 0..LANES {
                        let (g, e) = (got[r][c], expected[r][c]);
                        assert!((g - e).abs() < 1e-4, "{dtype:?} {kernel:?}: {g} vs {e}");
                    }
                }
            }
        }
    }

    #[test]
    fn simd_activation_quantizer_gives_the_scalar_bytes() {
        let mut blocks: Vec<[f32; QK]> = random(QK * 64, 12)
            .chunks(QK)
            .enumerate()
            .map(|(i, c)| std::array::from_fn(|j| c[j] * (1 + i) as f32))
            .collect();
        // Exact halves (max 127 makes the scale 1): rounding ties must go away from zero.
        blocks.push(std::array::from_fn(|j| match j {
            0 => 127.0,
            _ => (j as f32 - 16.0) + 0.5,
        }));
        blocks.push([0.0; QK]);
        blocks.push(std::array::from_fn(|j| -(j as f32) * 1e-3));
        let simd = select_kernel();
        for b in &blocks {
            let (d, qs) = Kernel::Scalar.quantize_block(b);
            assert_eq!(simd.quantize_block(b), (d, qs), "{simd:?} on {b:?}");
        }
        let ties = Kernel::Scalar.quantize_block(&blocks[64]).1;
        assert_eq!((ties[1], ties[16], ties[17]), (-15, 1, 2));
    }

    #[test]
    fn fused_groups_equal_separate_layers() {
        let x = Tensor::from_vec(random(3 * 256, 9), (3, 256), &Device::Cpu).unwrap();
        for dtype in [GgmlDType::Q4_1, GgmlDType::Q4K, GgmlDType::Q6K] {
            let layers = |widths: &[usize]| -> Vec<QLinear> {
                widths
                    .iter()
                    .enumerate()
                    .map(|(i, &n)| {
                        let w = random(n * 256, 10 + i as u64);
                        let w = Tensor::from_vec(w, (n, 256), &Device::Cpu).unwrap();
                        QLinear::new(QTensor::quantize(&w, dtype).unwrap()).unwrap()
                    })
                    .collect()
            };
            let separate: Vec<Tensor> = layers(&[32, 64, 16])
                .iter()
                .map(|l| l.forward(&x).unwrap())
                .collect();
            let group = LinearGroup::new(layers(&[32, 64, 16]));
            assert!(matches!(group, LinearGroup::Fused { .. }), "{dtype:?}");
            for (a, b) in group.forward(&x).unwrap().iter().zip(&separate) {
                assert_eq!(max_diff(a, b), 0.0, "{dtype:?}");
            }
            // A part that ends inside a group of eight rows cannot be appended.
            let ragged = LinearGroup::new(layers(&[12, 64]));
            assert!(matches!(ragged, LinearGroup::Separate(_)));
        }
    }

    #[test]
    fn slices_repack_to_the_whole() {
        let (n, k) = (45, 512);
        let w = Tensor::from_vec(random(n * k, 21), (n, k), &Device::Cpu).unwrap();
        let x = Tensor::from_vec(random(2 * k, 22), (2, k), &Device::Cpu).unwrap();
        for dtype in [
            GgmlDType::Q4_0,
            GgmlDType::Q8_0,
            GgmlDType::Q5K,
            GgmlDType::Q2K,
        ] {
            let q = QTensor::quantize(&w, dtype).unwrap();
            let bytes = q.data().unwrap().into_owned();
            let whole = QLinear::new(q).unwrap().forward(&x).unwrap();
            let mut reported = Vec::new();
            let row_bytes = bytes.len() / n;
            // Eight rows a slice: six slices, the last one ragged.
            let weights = CpuWeights::repack_in_slices(dtype, &bytes, n, k, 8 * row_bytes, |at| {
                reported.push(at)
            })
            .unwrap();
            assert_eq!(reported, [8, 16, 24, 32, 40, 45].map(|r| r * row_bytes));
            let sliced = QLinear {
                weights: Weights::Lantern(weights),
                dtype,
                out_features: n,
                in_features: k,
            };
            assert_eq!(
                max_diff(&sliced.forward(&x).unwrap(), &whole),
                0.0,
                "{dtype:?}"
            );
            let direct = QLinear::from_gguf_rows(dtype, &bytes, (n, k), |_| ()).unwrap();
            assert_eq!(
                max_diff(&direct.forward(&x).unwrap(), &whole),
                0.0,
                "{dtype:?}"
            );
            assert_eq!(direct.row(3).unwrap(), sliced.row(3).unwrap());
            assert!(direct.row(n).is_none());
        }
    }
}
