//! Quantized linear layers, with Lantern's own CPU kernels for the common GGUF weight types.
//!
//! candle 0.11 has no SIMD path for Q4_1 at all (a scalar dot product was 78% of a profile of the
//! default model) and its quantized matmul does not reuse a weight block across the rows of a
//! batch. Here, on the CPU, Q4_1 and Q8_0 weights are repacked once at load with f32 scales, the
//! activations are quantized to 8 bits once per call, and every weight block that is loaded is
//! used for up to `ROW_GROUP` activation rows. Every output element is computed by the same code
//! in the same order whatever the number of rows, so a sequence gets bit-identical logits whether
//! it runs alone or in a batch (a GEMM on dequantized weights chooses its blocking by size, and
//! the 8-bit rounding of activations turns those last-bit differences into visible ones).
//! The SIMD path (AVX2 + FMA) is chosen at run time; a portable scalar path stays for other CPUs.
//! Other devices and other weight types use candle's `QMatMul`.

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Device, Module, Result, Tensor};
use half::f16;
use rayon::prelude::*;

const QK: usize = 32;
/// Activation rows that share one pass over the weights.
const ROW_GROUP: usize = 4;

/// A Q4_1 block with f32 scales (repacked from the GGUF's f16 ones, which cost 6% to convert).
#[derive(Clone, Copy)]
#[repr(C)]
struct Q4_1Block {
    d: f32,
    m: f32,
    qs: [u8; 16],
}

#[derive(Clone, Copy)]
#[repr(C)]
struct Q8_0Block {
    d: f32,
    qs: [i8; 32],
}

/// An activation block: 8-bit values, their scale and the scaled sum (for Q4_1's offset).
#[derive(Clone, Copy)]
#[repr(C)]
struct ActBlock {
    d: f32,
    s: f32,
    qs: [i8; 32],
}

enum CpuWeights {
    Q4_1(Vec<Q4_1Block>),
    Q8_0(Vec<Q8_0Block>),
}

/// `y = x Wᵀ` for a quantized `W` of shape (out_features, in_features).
pub struct QLinear {
    qtensor: std::sync::Arc<QTensor>,
    fallback: QMatMul,
    cpu: Option<CpuWeights>,
    out_features: usize,
    in_features: usize,
}

impl std::fmt::Debug for QLinear {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "QLinear({}x{}, {:?})",
            self.out_features,
            self.in_features,
            self.qtensor.dtype()
        )
    }
}

impl QLinear {
    pub fn new(qtensor: QTensor) -> Result<Self> {
        let (out_features, in_features) = qtensor.shape().dims2()?;
        let cpu = match (&qtensor.device(), qtensor.dtype()) {
            (Device::Cpu, GgmlDType::Q4_1) => Some(repack_q4_1(&qtensor.data()?)),
            (Device::Cpu, GgmlDType::Q8_0) => Some(repack_q8_0(&qtensor.data()?)),
            _ => None,
        };
        let qtensor = std::sync::Arc::new(qtensor);
        let fallback = QMatMul::from_arc(qtensor.clone())?;
        Ok(Self {
            qtensor,
            fallback,
            cpu,
            out_features,
            in_features,
        })
    }

    pub fn out_features(&self) -> usize {
        self.out_features
    }

    pub fn dtype(&self) -> GgmlDType {
        self.qtensor.dtype()
    }

    /// `x`: (rows, in_features) f32 → (rows, out_features).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let rows = x.dim(0)?;
        if std::env::var_os("SCRATCH_F32").is_some() {
            let w = self.qtensor.dequantize(&Device::Cpu)?;
            return x.contiguous()?.matmul(&w.t()?);
        }
        if std::env::var_os("SCRATCH_CANDLE").is_some() {
            return self.fallback.forward(x);
        }
        match &self.cpu {
            Some(w) if x.dtype() == DType::F32 => {
                let x = x.contiguous()?;
                let input = x.flatten_all()?.to_vec1::<f32>()?;
                let mut out = vec![0f32; rows * self.out_features];
                matmul_cpu(
                    w,
                    &input,
                    rows,
                    self.in_features,
                    self.out_features,
                    &mut out,
                );
                Tensor::from_vec(out, (rows, self.out_features), x.device())
            }
            Some(_) => self.fallback.forward(x),
            None => self.fallback.forward(x),
        }
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
    pub fn new(parts: Vec<QTensor>) -> Result<Self> {
        let fusable = parts.iter().all(|p| {
            p.device().is_cpu()
                && p.dtype() == parts[0].dtype()
                && matches!(p.dtype(), GgmlDType::Q4_1 | GgmlDType::Q8_0)
                && p.shape().dims().get(1) == parts[0].shape().dims().get(1)
        });
        if !fusable || parts.len() < 2 {
            return Ok(Self::Separate(
                parts.into_iter().map(QLinear::new).collect::<Result<_>>()?,
            ));
        }
        let mut widths = Vec::with_capacity(parts.len());
        let mut bytes = Vec::new();
        for p in &parts {
            widths.push(p.shape().dims2()?.0);
            bytes.extend_from_slice(&p.data()?);
        }
        let k = parts[0].shape().dims2()?.1;
        let storage = candle_core::quantized::QStorage::from_data(
            std::borrow::Cow::Owned(bytes),
            &Device::Cpu,
            parts[0].dtype(),
        )?;
        let linear = QLinear::new(QTensor::new(storage, (widths.iter().sum::<usize>(), k))?)?;
        Ok(Self::Fused { linear, widths })
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

fn repack_q4_1(bytes: &[u8]) -> CpuWeights {
    CpuWeights::Q4_1(
        bytes
            .chunks_exact(20)
            .map(|b| Q4_1Block {
                d: f16::from_le_bytes([b[0], b[1]]).to_f32(),
                m: f16::from_le_bytes([b[2], b[3]]).to_f32(),
                qs: b[4..20].try_into().unwrap(),
            })
            .collect(),
    )
}

fn repack_q8_0(bytes: &[u8]) -> CpuWeights {
    CpuWeights::Q8_0(
        bytes
            .chunks_exact(34)
            .map(|b| Q8_0Block {
                d: f16::from_le_bytes([b[0], b[1]]).to_f32(),
                qs: std::array::from_fn(|i| b[2 + i] as i8),
            })
            .collect(),
    )
}

/// ggml's `quantize_row_q8_1`: scales rounded through f16 as ggml stores them, so Lantern's
/// products round exactly as llama.cpp's (and candle's) do.
fn quantize_activations(x: &[f32]) -> Vec<ActBlock> {
    x.chunks_exact(QK)
        .map(|v| {
            let amax = v.iter().fold(0f32, |m, &a| m.max(a.abs()));
            let d = amax / 127.0;
            let id = if d > 0.0 { 1.0 / d } else { 0.0 };
            let qs: [i8; 32] = std::array::from_fn(|i| (v[i] * id).round() as i8);
            let sum: i32 = qs.iter().map(|&q| q as i32).sum();
            ActBlock {
                d: f16::from_f32(d).to_f32(),
                s: f16::from_f32(d * sum as f32).to_f32(),
                qs,
            }
        })
        .collect()
}

/// A raw output pointer shared by tasks that write disjoint columns.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

fn matmul_cpu(w: &CpuWeights, x: &[f32], rows: usize, k: usize, n: usize, out: &mut [f32]) {
    let acts = quantize_activations(x);
    let kb = k / QK;
    let threads = rayon::current_num_threads().max(1);
    // A few chunks per thread balance the load without paying for many tiny tasks; a multiple of
    // 4 columns keeps the widest kernel busy.
    let chunk = n.div_ceil(threads * 4).max(16).div_ceil(COLS) * COLS;
    let out_ptr = OutPtr(out.as_mut_ptr());
    let kernel = select_kernel();
    (0..n.div_ceil(chunk)).into_par_iter().for_each(|c| {
        let cols = c * chunk..((c + 1) * chunk).min(n);
        for r0 in (0..rows).step_by(ROW_GROUP) {
            let nr = ROW_GROUP.min(rows - r0);
            let act = |i: usize| &acts[(r0 + i) * kb..(r0 + i + 1) * kb];
            let tile = Tile {
                w,
                kb,
                out: out_ptr,
                n,
                r0,
            };
            match nr {
                1 => tile.run::<1>(kernel, [act(0)], cols.clone()),
                2 => tile.run::<2>(kernel, [act(0), act(1)], cols.clone()),
                3 => tile.run::<3>(kernel, [act(0), act(1), act(2)], cols.clone()),
                _ => tile.run::<4>(kernel, [act(0), act(1), act(2), act(3)], cols.clone()),
            }
        }
    });
}

/// One task's share: some output columns for up to `ROW_GROUP` rows starting at `r0`.
struct Tile<'a> {
    w: &'a CpuWeights,
    kb: usize,
    out: OutPtr,
    n: usize,
    r0: usize,
}

impl Tile<'_> {
    fn run<const NR: usize>(
        &self,
        kernel: Kernel,
        acts: [&[ActBlock]; NR],
        cols: std::ops::Range<usize>,
    ) {
        let kb = self.kb;
        let mut j = cols.start;
        // Several weight rows at once give the CPU independent accumulation chains.
        while j + COLS <= cols.end {
            let mut res = [[0f32; NR]; COLS];
            match self.w {
                CpuWeights::Q4_1(b) => {
                    let w: [&[Q4_1Block]; COLS] =
                        std::array::from_fn(|c| &b[(j + c) * kb..(j + c + 1) * kb]);
                    kernel.q4_1::<COLS, NR>(&w, &acts, &mut res)
                }
                CpuWeights::Q8_0(b) => {
                    let w: [&[Q8_0Block]; COLS] =
                        std::array::from_fn(|c| &b[(j + c) * kb..(j + c + 1) * kb]);
                    kernel.q8_0::<COLS, NR>(&w, &acts, &mut res)
                }
            }
            self.store(j, &res);
            j += COLS;
        }
        while j < cols.end {
            let mut res = [[0f32; NR]; 1];
            match self.w {
                CpuWeights::Q4_1(b) => {
                    kernel.q4_1::<1, NR>(&[&b[j * kb..(j + 1) * kb]], &acts, &mut res)
                }
                CpuWeights::Q8_0(b) => {
                    kernel.q8_0::<1, NR>(&[&b[j * kb..(j + 1) * kb]], &acts, &mut res)
                }
            }
            self.store(j, &res);
            j += 1;
        }
    }

    fn store<const C: usize, const NR: usize>(&self, j: usize, res: &[[f32; NR]; C]) {
        for (c, col) in res.iter().enumerate() {
            for (r, v) in col.iter().enumerate() {
                // SAFETY: columns j..j+C belong to this task alone; r0 + r < rows.
                unsafe { *self.out.0.add((self.r0 + r) * self.n + j + c) = *v };
            }
        }
    }
}

/// Weight rows per kernel call.
const COLS: usize = 4;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kernel {
    Scalar,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    /// AVX-512 VNNI on 256-bit registers: one `vpdpbusd` per block instead of two instructions.
    #[cfg(target_arch = "x86_64")]
    Vnni,
}

fn select_kernel() -> Kernel {
    #[cfg(target_arch = "x86_64")]
    {
        let avx2 = std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma");
        if avx2
            && std::is_x86_feature_detected!("avx512vnni")
            && std::is_x86_feature_detected!("avx512vl")
            && std::env::var_os("LANTERN_NO_VNNI").is_none()
        {
            return Kernel::Vnni;
        }
        if avx2 {
            return Kernel::Avx2;
        }
    }
    Kernel::Scalar
}

type Rows<'a, const NR: usize> = [&'a [ActBlock]; NR];

impl Kernel {
    #[inline]
    fn q4_1<const C: usize, const NR: usize>(
        self,
        w: &[&[Q4_1Block]; C],
        a: &Rows<NR>,
        out: &mut [[f32; NR]; C],
    ) {
        match self {
            Kernel::Scalar => scalar::q4_1(w, a, out),
            // SAFETY: chosen only when the CPU reports these features.
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => unsafe { x86::q4_1_avx2(w, a, out) },
            #[cfg(target_arch = "x86_64")]
            Kernel::Vnni => unsafe { x86::q4_1_vnni(w, a, out) },
        }
    }

    #[inline]
    fn q8_0<const C: usize, const NR: usize>(
        self,
        w: &[&[Q8_0Block]; C],
        a: &Rows<NR>,
        out: &mut [[f32; NR]; C],
    ) {
        match self {
            Kernel::Scalar => scalar::q8_0(w, a, out),
            // SAFETY: as above.
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => unsafe { x86::q8_0_avx2(w, a, out) },
            #[cfg(target_arch = "x86_64")]
            Kernel::Vnni => unsafe { x86::q8_0_vnni(w, a, out) },
        }
    }
}

mod scalar {
    use super::*;

    pub(super) fn q4_1<const C: usize, const NR: usize>(
        w: &[&[Q4_1Block]; C],
        a: &Rows<NR>,
        out: &mut [[f32; NR]; C],
    ) {
        for c in 0..C {
            for r in 0..NR {
                let mut sum = 0f32;
                for (wb, ab) in w[c].iter().zip(a[r].iter()) {
                    let mut isum = 0i32;
                    for i in 0..16 {
                        isum += (wb.qs[i] & 0x0F) as i32 * ab.qs[i] as i32;
                        isum += (wb.qs[i] >> 4) as i32 * ab.qs[i + 16] as i32;
                    }
                    sum += wb.d * ab.d * isum as f32 + wb.m * ab.s;
                }
                out[c][r] = sum;
            }
        }
    }

    pub(super) fn q8_0<const C: usize, const NR: usize>(
        w: &[&[Q8_0Block]; C],
        a: &Rows<NR>,
        out: &mut [[f32; NR]; C],
    ) {
        for c in 0..C {
            for r in 0..NR {
                let mut sum = 0f32;
                for (wb, ab) in w[c].iter().zip(a[r].iter()) {
                    let isum: i32 = (0..32).map(|i| wb.qs[i] as i32 * ab.qs[i] as i32).sum();
                    sum += wb.d * ab.d * isum as f32;
                }
                out[c][r] = sum;
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::*;
    use std::arch::x86_64::*;

    #[inline(always)]
    unsafe fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }

    /// u8 × i8 products summed to 8 i32 lanes, as f32 (AVX2).
    #[inline(always)]
    unsafe fn dot_avx2(w: __m256i, a: __m256i) -> __m256 {
        let p16 = _mm256_maddubs_epi16(w, a);
        _mm256_cvtepi32_ps(_mm256_madd_epi16(p16, _mm256_set1_epi16(1)))
    }

    /// The same with one VNNI instruction.
    #[inline(always)]
    unsafe fn dot_vnni(w: __m256i, a: __m256i) -> __m256 {
        _mm256_cvtepi32_ps(_mm256_dpbusd_epi32(_mm256_setzero_si256(), w, a))
    }

    #[inline(always)]
    unsafe fn q4_1_body<const C: usize, const NR: usize>(
        w: &[&[Q4_1Block]; C],
        a: &Rows<NR>,
        out: &mut [[f32; NR]; C],
        dot: impl Fn(__m256i, __m256i) -> __m256,
    ) {
        let mask = _mm_set1_epi8(0x0F);
        let mut acc = [[_mm256_setzero_ps(); NR]; C];
        let mut offset = [[0f32; NR]; C];
        let blocks = a[0].len();
        for b in 0..blocks {
            let mut aq = [_mm256_setzero_si256(); NR];
            for r in 0..NR {
                aq[r] = _mm256_loadu_si256(a[r].get_unchecked(b).qs.as_ptr() as *const __m256i);
            }
            for c in 0..C {
                let wb = w[c].get_unchecked(b);
                let raw = _mm_loadu_si128(wb.qs.as_ptr() as *const __m128i);
                let lo = _mm_and_si128(raw, mask);
                let hi = _mm_and_si128(_mm_srli_epi16(raw, 4), mask);
                let wq = _mm256_set_m128i(hi, lo);
                for r in 0..NR {
                    let ab = a[r].get_unchecked(b);
                    acc[c][r] =
                        _mm256_fmadd_ps(_mm256_set1_ps(wb.d * ab.d), dot(wq, aq[r]), acc[c][r]);
                    offset[c][r] += wb.m * ab.s;
                }
            }
        }
        for c in 0..C {
            for r in 0..NR {
                out[c][r] = hsum(acc[c][r]) + offset[c][r];
            }
        }
    }

    #[inline(always)]
    unsafe fn q8_0_body<const C: usize, const NR: usize>(
        w: &[&[Q8_0Block]; C],
        a: &Rows<NR>,
        out: &mut [[f32; NR]; C],
        dot: impl Fn(__m256i, __m256i) -> __m256,
    ) {
        let mut acc = [[_mm256_setzero_ps(); NR]; C];
        let blocks = a[0].len();
        for b in 0..blocks {
            for c in 0..C {
                let wb = w[c].get_unchecked(b);
                let wq = _mm256_loadu_si256(wb.qs.as_ptr() as *const __m256i);
                // The unsigned operand must be |w|: move w's sign onto a.
                let wabs = _mm256_sign_epi8(wq, wq);
                for r in 0..NR {
                    let ab = a[r].get_unchecked(b);
                    let aq = _mm256_loadu_si256(ab.qs.as_ptr() as *const __m256i);
                    let asgn = _mm256_sign_epi8(aq, wq);
                    acc[c][r] =
                        _mm256_fmadd_ps(_mm256_set1_ps(wb.d * ab.d), dot(wabs, asgn), acc[c][r]);
                }
            }
        }
        for c in 0..C {
            for r in 0..NR {
                out[c][r] = hsum(acc[c][r]);
            }
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn q4_1_avx2<const C: usize, const NR: usize>(
        w: &[&[Q4_1Block]; C],
        a: &Rows<NR>,
        out: &mut [[f32; NR]; C],
    ) {
        q4_1_body(w, a, out, |x, y| dot_avx2(x, y))
    }

    #[target_feature(enable = "avx2,fma,avx512vnni,avx512vl")]
    pub(super) unsafe fn q4_1_vnni<const C: usize, const NR: usize>(
        w: &[&[Q4_1Block]; C],
        a: &Rows<NR>,
        out: &mut [[f32; NR]; C],
    ) {
        q4_1_body(w, a, out, |x, y| dot_vnni(x, y))
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn q8_0_avx2<const C: usize, const NR: usize>(
        w: &[&[Q8_0Block]; C],
        a: &Rows<NR>,
        out: &mut [[f32; NR]; C],
    ) {
        q8_0_body(w, a, out, |x, y| dot_avx2(x, y))
    }

    #[target_feature(enable = "avx2,fma,avx512vnni,avx512vl")]
    pub(super) unsafe fn q8_0_vnni<const C: usize, const NR: usize>(
        w: &[&[Q8_0Block]; C],
        a: &Rows<NR>,
        out: &mut [[f32; NR]; C],
    ) {
        q8_0_body(w, a, out, |x, y| dot_vnni(x, y))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    fn check(dtype: GgmlDType, rows: usize) {
        let (n, k) = (70, 96);
        let w = Tensor::from_vec(random(n * k, 1), (n, k), &Device::Cpu).unwrap();
        let x = Tensor::from_vec(random(rows * k, 2), (rows, k), &Device::Cpu).unwrap();
        let q = QTensor::quantize(&w, dtype).unwrap();
        let reference = x
            .matmul(&q.dequantize(&Device::Cpu).unwrap().t().unwrap())
            .unwrap();
        let ours = QLinear::new(q).unwrap().forward(&x).unwrap();
        let diff = (&ours - &reference)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        // Only the 8-bit rounding of the activations separates the two.
        assert!(diff < 0.05, "{dtype:?} rows={rows}: max diff {diff}");
        // A row's result does not depend on the other rows of the batch.
        let alone = QLinear::new(QTensor::quantize(&w, dtype).unwrap())
            .unwrap()
            .forward(&x.narrow(0, rows - 1, 1).unwrap())
            .unwrap();
        let last = ours.narrow(0, rows - 1, 1).unwrap();
        let diff = (last - alone).unwrap().abs().unwrap().max_all().unwrap();
        assert_eq!(
            diff.to_scalar::<f32>().unwrap(),
            0.0,
            "{dtype:?} rows={rows}"
        );
    }

    #[test]
    fn q4_1_matches_dequantized_matmul() {
        for rows in [1, 3, 5, 8, 30] {
            check(GgmlDType::Q4_1, rows);
        }
    }

    #[test]
    fn fused_groups_equal_separate_layers() {
        let x = Tensor::from_vec(random(3 * 64, 9), (3, 64), &Device::Cpu).unwrap();
        let parts: Vec<QTensor> = [(32, 10), (64, 11)]
            .iter()
            .map(|&(n, seed)| {
                let w = Tensor::from_vec(random(n * 64, seed), (n, 64), &Device::Cpu).unwrap();
                QTensor::quantize(&w, GgmlDType::Q4_1).unwrap()
            })
            .collect();
        let separate: Vec<Tensor> = parts
            .iter()
            .map(|p| {
                let q = QTensor::quantize(&p.dequantize(&Device::Cpu).unwrap(), GgmlDType::Q4_1);
                QLinear::new(q.unwrap()).unwrap().forward(&x).unwrap()
            })
            .collect();
        let group = LinearGroup::new(parts).unwrap();
        assert!(matches!(group, LinearGroup::Fused { .. }));
        for (a, b) in group.forward(&x).unwrap().iter().zip(&separate) {
            let d = (a - b).unwrap().abs().unwrap().max_all().unwrap();
            assert_eq!(d.to_scalar::<f32>().unwrap(), 0.0);
        }
    }

    #[test]
    fn q8_0_matches_dequantized_matmul() {
        for rows in [1, 4, 7, 30] {
            check(GgmlDType::Q8_0, rows);
        }
    }

    #[test]
    fn scalar_and_simd_kernels_agree() {
        let w = QTensor::quantize(
            &Tensor::from_vec(random(4 * 64, 3), (4, 64), &Device::Cpu).unwrap(),
            GgmlDType::Q4_1,
        )
        .unwrap();
        let CpuWeights::Q4_1(blocks) = repack_q4_1(&w.data().unwrap()) else {
            unreachable!()
        };
        let acts = quantize_activations(&random(64, 4));
        let acts2 = quantize_activations(&random(64, 5));
        let w4: [&[Q4_1Block]; 4] = std::array::from_fn(|c| &blocks[c * 2..(c + 1) * 2]);
        let rows: Rows<2> = [&acts, &acts2];
        let mut expected = [[0f32; 2]; 4];
        Kernel::Scalar.q4_1::<4, 2>(&w4, &rows, &mut expected);
        let mut kernels = vec![select_kernel()];
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            kernels.push(Kernel::Avx2);
        }
        for k in kernels {
            let mut got = [[0f32; 2]; 4];
            k.q4_1::<4, 2>(&w4, &rows, &mut got);
            for c in 0..4 {
                for r in 0..2 {
                    assert!(
                        (got[c][r] - expected[c][r]).abs() < 1e-4,
                        "{k:?}: {got:?} vs {expected:?}"
                    );
                }
            }
        }
    }
}
