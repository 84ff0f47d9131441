//! f16 and bf16 weights on the CPU. candle's matmul for them costs four times as much for two
//! rows as for one (a batched decode, a draft being checked) and its sums depend on the row
//! count; here each weight row is read once while it meets every activation row, two weight rows
//! and four activation rows at a time.
//!
//! As ggml's `vec_dot_f16` and `vec_dot_bf16`, activations are rounded to the weights' type and
//! products are summed in f32. Every output is one dot product summed in one fixed order (eight
//! lanes along k, then the lanes, then the tail), whatever the number of rows in the pass, so a
//! sequence's logits do not depend on what shares its batch.

use candle_core::quantized::GgmlDType;
use half::{bf16, f16};
use rayon::prelude::*;

/// Weight rows and activation rows of one tile at most (four by one, four by two, two by
/// three, two by four: eight sums in flight at most).
const W_ROWS: usize = 4;
const X_ROWS: usize = 4;
/// Weight rows read once for all activation rows: 64 rows of 4096 values take 512 KiB.
const BLOCK: usize = 64;

#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum Half {
    F16,
    Bf16,
}

impl Half {
    pub(super) fn of(dtype: GgmlDType) -> Option<Self> {
        match dtype {
            GgmlDType::F16 => Some(Self::F16),
            GgmlDType::BF16 => Some(Self::Bf16),
            _ => None,
        }
    }

    fn to_f32(self, bits: u16) -> f32 {
        match self {
            Self::F16 => f16::from_bits(bits).to_f32(),
            Self::Bf16 => bf16::from_bits(bits).to_f32(),
        }
    }

    /// `v` as the weights' type reads it.
    fn round(self, v: f32) -> f32 {
        match self {
            Self::F16 => f16::from_f32(v).to_f32(),
            Self::Bf16 => bf16::from_f32(v).to_f32(),
        }
    }
}

/// `n` rows of `k` 16-bit values, as the GGUF file stores them.
pub(super) struct FloatWeights {
    kind: Half,
    bits: Vec<u16>,
}

impl FloatWeights {
    pub(super) fn from_bytes(kind: Half, bytes: &[u8]) -> Self {
        let bits = bytes
            .chunks_exact(2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
            .collect();
        Self { kind, bits }
    }

    /// `other`'s rows after these; false (and nothing changed) when the types differ.
    pub(super) fn append(&mut self, other: Self) -> bool {
        if self.kind != other.kind {
            return false;
        }
        self.bits.extend(other.bits);
        true
    }

    pub(super) fn row(&self, row: usize, k: usize) -> Vec<f32> {
        let bits = &self.bits[row * k..(row + 1) * k];
        bits.iter().map(|&b| self.kind.to_f32(b)).collect()
    }

    /// `out` (rows × n) = `x` (rows × k) times the weights' transpose.
    pub(super) fn matmul(&self, x: &[f32], rows: usize, k: usize, n: usize, out: &mut [f32]) {
        let kind = self.kind;
        let x: Vec<f32> = if x.len() >= 2 * crate::engine::host_ops::CHUNK {
            x.par_iter().map(|&v| kind.round(v)).collect()
        } else {
            x.iter().map(|&v| kind.round(v)).collect()
        };
        let dot = Dot::select(kind);
        let threads = rayon::current_num_threads().max(1);
        let per_task = n.div_ceil(threads * 4).div_ceil(W_ROWS).max(1) * W_ROWS;
        let out_ptr = super::OutPtr(out.as_mut_ptr());
        (0..n.div_ceil(per_task)).into_par_iter().for_each(|t| {
            let out = out_ptr;
            let task = t * per_task..((t + 1) * per_task).min(n);
            // A block of weight rows stays in cache while every activation row meets it.
            for c0 in task.clone().step_by(BLOCK) {
                let columns = c0..(c0 + BLOCK).min(task.end);
                for r0 in (0..rows).step_by(X_ROWS) {
                    let nx = X_ROWS.min(rows - r0);
                    let a = |i: usize| &x[(r0 + i.min(nx - 1)) * k..][..k];
                    // With few activation rows, more weight rows keep enough sums in flight.
                    let nw = if nx <= 2 { W_ROWS } else { W_ROWS / 2 };
                    for j0 in columns.clone().step_by(nw) {
                        let w = |i: usize| &self.bits[(j0 + i).min(columns.end - 1) * k..][..k];
                        let res = match nx {
                            1 => dot.tile::<4, 1>([w(0), w(1), w(2), w(3)], [a(0)]),
                            2 => dot.tile::<4, 2>([w(0), w(1), w(2), w(3)], [a(0), a(1)]),
                            3 => dot.tile::<2, 3>([w(0), w(1)], [a(0), a(1), a(2)]),
                            _ => dot.tile::<2, 4>([w(0), w(1)], [a(0), a(1), a(2), a(3)]),
                        };
                        for (wi, sums) in res.iter().enumerate().take(nw.min(columns.end - j0)) {
                            for (xi, &v) in sums.iter().enumerate().take(nx) {
                                // SAFETY: output columns in `columns` belong to this task alone,
                                // and r0 + xi < rows, j0 + wi < n.
                                unsafe { *out.0.add((r0 + xi) * n + j0 + wi) = v };
                            }
                        }
                    }
                }
            }
        });
    }
}

/// The tile's dot products on the best path this CPU has; every path sums in the same order.
#[derive(Clone, Copy)]
enum Dot {
    Scalar(Half),
    #[cfg(target_arch = "x86_64")]
    Avx2(Half),
}

/// Each weight row's sums against each activation row (as many as the pass has, up to four).
type Tile = [[f32; X_ROWS]; W_ROWS];

impl Dot {
    fn select(kind: Half) -> Self {
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx2")
            && std::is_x86_feature_detected!("fma")
            && std::is_x86_feature_detected!("f16c")
        {
            return Self::Avx2(kind);
        }
        Self::Scalar(kind)
    }

    fn tile<const NW: usize, const NX: usize>(self, w: [&[u16]; NW], x: [&[f32]; NX]) -> Tile {
        match self {
            Self::Scalar(kind) => scalar_tile(kind, w, x),
            // SAFETY: selected only where the CPU has AVX2, FMA and F16C.
            #[cfg(target_arch = "x86_64")]
            Self::Avx2(kind) => unsafe { avx2::tile::<NW, NX>(kind, w, x) },
        }
    }
}

/// Eight lanes along k, the lanes summed pairwise, then the tail: the order the SIMD path keeps.
fn scalar_tile<const NW: usize, const NX: usize>(
    kind: Half,
    w: [&[u16]; NW],
    x: [&[f32]; NX],
) -> Tile {
    let k = x[0].len();
    let body = k / 8 * 8;
    let mut res = [[0f32; X_ROWS]; W_ROWS];
    for (wi, wr) in w.iter().enumerate() {
        for (xi, xr) in x.iter().enumerate() {
            let mut lanes = [0f32; 8];
            for i in (0..body).step_by(8) {
                for (l, lane) in lanes.iter_mut().enumerate() {
                    *lane = kind.to_f32(wr[i + l]).mul_add(xr[i + l], *lane);
                }
            }
            let mut sum = reduce(lanes);
            for i in body..k {
                sum = kind.to_f32(wr[i]).mul_add(xr[i], sum);
            }
            res[wi][xi] = sum;
        }
    }
    res
}

/// ((l0+l4)+(l2+l6)) + ((l1+l5)+(l3+l7)): the order of the SIMD reduction.
fn reduce(l: [f32; 8]) -> f32 {
    let q = [l[0] + l[4], l[1] + l[5], l[2] + l[6], l[3] + l[7]];
    let p = [q[0] + q[2], q[1] + q[3]];
    p[0] + p[1]
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{Half, Tile, W_ROWS, X_ROWS};

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load(kind: Half, p: *const u16) -> __m256 {
        let h = _mm_loadu_si128(p as *const __m128i);
        match kind {
            Half::F16 => _mm256_cvtph_ps(h),
            Half::Bf16 => _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16)),
        }
    }

    /// Lanes l0..l7 summed as `super::reduce` does.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn reduce(v: __m256) -> f32 {
        let q = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let p = _mm_add_ps(q, _mm_movehl_ps(q, q));
        _mm_cvtss_f32(_mm_add_ss(p, _mm_shuffle_ps(p, p, 1)))
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn tile<const NW: usize, const NX: usize>(
        kind: Half,
        w: [&[u16]; NW],
        x: [&[f32]; NX],
    ) -> Tile {
        let k = x[0].len();
        let body = k / 8 * 8;
        let mut acc = [[_mm256_setzero_ps(); NX]; NW];
        let mut i = 0;
        while i < body {
            if i % 32 == 0 {
                // The same place in the next tile's rows: one line per row, a tile ahead.
                for row in w {
                    let ahead = row.as_ptr().wrapping_add(i + NW * k) as *const i8;
                    _mm_prefetch::<_MM_HINT_T0>(ahead);
                }
            }
            let wv: [__m256; NW] = std::array::from_fn(|wi| load(kind, w[wi].as_ptr().add(i)));
            for xi in 0..NX {
                let xv = _mm256_loadu_ps(x[xi].as_ptr().add(i));
                for wi in 0..NW {
                    acc[wi][xi] = _mm256_fmadd_ps(wv[wi], xv, acc[wi][xi]);
                }
            }
            i += 8;
        }
        let mut res = [[0f32; X_ROWS]; W_ROWS];
        for wi in 0..NW {
            for xi in 0..NX {
                let mut sum = reduce(acc[wi][xi]);
                for j in body..k {
                    sum = kind.to_f32(w[wi][j]).mul_add(x[xi][j], sum);
                }
                res[wi][xi] = sum;
            }
        }
        res
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn weights(kind: Half, n: usize, k: usize) -> (FloatWeights, Vec<f32>) {
        let vals: Vec<f32> = (0..n * k)
            .map(|i| ((i * 7919 % 1000) as f32 - 500.0) / 300.0)
            .collect();
        let bits: Vec<u16> = vals
            .iter()
            .map(|&v| match kind {
                Half::F16 => f16::from_f32(v).to_bits(),
                Half::Bf16 => bf16::from_f32(v).to_bits(),
            })
            .collect();
        let bytes: Vec<u8> = bits.iter().flat_map(|b| b.to_le_bytes()).collect();
        (FloatWeights::from_bytes(kind, &bytes), vals)
    }

    #[test]
    fn products_match_a_float64_sum_and_do_not_depend_on_the_row_count() {
        for kind in [Half::F16, Half::Bf16] {
            // Odd sizes: a weight row without a pair, a tail past the last eight, 1-9 rows.
            for (n, k) in [(7, 35), (16, 64), (5, 576)] {
                let (w, _) = weights(kind, n, k);
                let rows = 9;
                let x: Vec<f32> = (0..rows * k)
                    .map(|i| ((i % 13) as f32 - 6.0) / 7.0)
                    .collect();
                let mut all = vec![0f32; rows * n];
                w.matmul(&x, rows, k, n, &mut all);
                for r in 0..rows {
                    let xr = &x[r * k..(r + 1) * k];
                    for j in 0..n {
                        let exact: f64 = w
                            .row(j, k)
                            .iter()
                            .zip(xr)
                            .map(|(&a, &b)| a as f64 * kind.round(b) as f64)
                            .sum();
                        let got = all[r * n + j] as f64;
                        assert!((got - exact).abs() < 1e-4 * (1.0 + exact.abs()), "{kind:?}");
                    }
                }
                // Any prefix of the rows, alone or batched: the same bits.
                for take in 1..rows {
                    let mut some = vec![0f32; take * n];
                    w.matmul(&x[..take * k], take, k, n, &mut some);
                    assert_eq!(some, all[..take * n], "{kind:?} {take} rows");
                }
                let dot = Dot::select(kind);
                let scalar = Dot::Scalar(kind);
                let (wr, xr) = ([w.row_bits(0, k), w.row_bits(1, k)], [&x[..k]; X_ROWS]);
                assert_eq!(
                    dot.tile(wr, xr),
                    scalar.tile(wr, xr),
                    "{kind:?} paths agree"
                );
                let one = dot.tile([wr[1]; 4], [&x[..k]]);
                assert_eq!(
                    one[3][0],
                    dot.tile(wr, xr)[1][3],
                    "{kind:?} one row or four"
                );
            }
        }
    }

    impl FloatWeights {
        fn row_bits(&self, row: usize, k: usize) -> &[u16] {
            &self.bits[row * k..][..k]
        }
    }
}
