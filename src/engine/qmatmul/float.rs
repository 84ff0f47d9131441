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

/// Weight rows interleaved in a group, and activation rows of one tile: eight sums in flight.
const GROUP: usize = 4;
const X_ROWS: usize = 2;
/// Groups read once for every activation row: 64 rows of 4096 values take 512 KiB.
const BLOCK_GROUPS: usize = 16;
/// Values of a row in one chunk: one vector.
const CHUNK: usize = 8;

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

/// `n` rows of `k` 16-bit values, in groups of four rows: for each eight values along k, the
/// four rows' eight in turn (one 64-byte line), so a tile reads one stream; rows past `n` are
/// zeros. The last `k % 8` values of each row are kept apart.
pub(super) struct FloatWeights {
    kind: Half,
    body: Vec<u16>,
    tail: Vec<u16>,
    n: usize,
    k: usize,
}

impl FloatWeights {
    /// `bytes`: `n` rows of `k` values as the GGUF file stores them.
    pub(super) fn from_bytes(kind: Half, bytes: &[u8], n: usize, k: usize) -> Self {
        let value = |r: usize, i: usize| {
            let at = 2 * (r * k + i);
            u16::from_le_bytes([bytes[at], bytes[at + 1]])
        };
        let chunks = k / CHUNK;
        let mut body = Vec::with_capacity(n.div_ceil(GROUP) * chunks * GROUP * CHUNK);
        for g in 0..n.div_ceil(GROUP) {
            for c in 0..chunks {
                for lane in 0..GROUP {
                    let r = g * GROUP + lane;
                    body.extend(
                        (0..CHUNK).map(|e| if r < n { value(r, c * CHUNK + e) } else { 0 }),
                    );
                }
            }
        }
        let tail = (0..n)
            .flat_map(|r| (chunks * CHUNK..k).map(move |i| (r, i)))
            .map(|(r, i)| value(r, i))
            .collect();
        Self {
            kind,
            body,
            tail,
            n,
            k,
        }
    }

    /// `other`'s rows after these; false (and nothing changed) when the types or widths differ or
    /// these rows do not fill their last group.
    pub(super) fn append(&mut self, other: Self) -> bool {
        if self.kind != other.kind || self.k != other.k || !self.n.is_multiple_of(GROUP) {
            return false;
        }
        self.body.extend(other.body);
        self.tail.extend(other.tail);
        self.n += other.n;
        true
    }

    fn group(&self, g: usize) -> &[u16] {
        let len = self.k / CHUNK * GROUP * CHUNK;
        &self.body[g * len..(g + 1) * len]
    }

    fn tail_of(&self, row: usize) -> &[u16] {
        let t = self.k % CHUNK;
        let row = row.min(self.n - 1);
        &self.tail[row * t..(row + 1) * t]
    }

    pub(super) fn row(&self, row: usize, k: usize) -> Vec<f32> {
        let (g, lane) = (row / GROUP, row % GROUP);
        let group = self.group(g);
        let mut out: Vec<f32> = (0..k / CHUNK)
            .flat_map(|c| &group[(c * GROUP + lane) * CHUNK..][..CHUNK])
            .map(|&b| self.kind.to_f32(b))
            .collect();
        out.extend(self.tail_of(row).iter().map(|&b| self.kind.to_f32(b)));
        out
    }

    /// `out` (rows × n) = `x` (rows × k) times the weights' transpose.
    pub(super) fn matmul(&self, x: &[f32], rows: usize, k: usize, n: usize, out: &mut [f32]) {
        let kind = self.kind;
        let x: Vec<f32> = if x.len() >= 2 * crate::engine::host_ops::CHUNK {
            let chunk = crate::engine::host_ops::CHUNK;
            let mut rounded = vec![0f32; x.len()];
            crate::engine::pass_threads::for_each_chunk_mut(&mut rounded, chunk, |i, o| {
                for (o, &v) in o.iter_mut().zip(&x[i * chunk..]) {
                    *o = kind.round(v);
                }
            });
            rounded
        } else {
            x.iter().map(|&v| kind.round(v)).collect()
        };
        let dot = Dot::select(kind);
        let threads = rayon::current_num_threads().max(1);
        let groups = n.div_ceil(GROUP);
        let per_task = groups.div_ceil(threads * 4).max(1);
        let out_ptr = super::OutPtr(out.as_mut_ptr());
        crate::engine::pass_threads::for_each(groups.div_ceil(per_task), |t| {
            let out = out_ptr;
            let task = t * per_task..((t + 1) * per_task).min(groups);
            // A block of groups stays in cache while every activation row meets it.
            for b0 in task.clone().step_by(BLOCK_GROUPS) {
                for r0 in (0..rows).step_by(X_ROWS) {
                    let nx = X_ROWS.min(rows - r0);
                    let a = |i: usize| &x[(r0 + i.min(nx - 1)) * k..][..k];
                    for g in b0..(b0 + BLOCK_GROUPS).min(task.end) {
                        let tails = std::array::from_fn(|l| self.tail_of(g * GROUP + l));
                        let res = match nx {
                            1 => dot.tile::<1>(self.group(g), tails, [a(0)]),
                            _ => dot.tile::<2>(self.group(g), tails, [a(0), a(1)]),
                        };
                        for (lane, sums) in res.iter().enumerate() {
                            let j = g * GROUP + lane;
                            if j >= n {
                                break;
                            }
                            for (xi, &v) in sums.iter().enumerate().take(nx) {
                                // SAFETY: group g's columns belong to this task alone, and
                                // r0 + xi < rows, j < n.
                                unsafe { *out.0.add((r0 + xi) * n + j) = v };
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

/// Each of a group's rows' sums against each activation row (one or two).
type Tile = [[f32; X_ROWS]; GROUP];
type Tails<'a> = [&'a [u16]; GROUP];

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

    fn tile<const NX: usize>(self, group: &[u16], tails: Tails, x: [&[f32]; NX]) -> Tile {
        match self {
            Self::Scalar(kind) => scalar_tile(kind, group, tails, x),
            // SAFETY: selected only where the CPU has AVX2, FMA and F16C.
            #[cfg(target_arch = "x86_64")]
            Self::Avx2(kind) => unsafe { avx2::tile::<NX>(kind, group, tails, x) },
        }
    }
}

/// Eight lanes along k, the lanes summed pairwise, then the tail: the order the SIMD path keeps.
fn scalar_tile<const NX: usize>(kind: Half, group: &[u16], tails: Tails, x: [&[f32]; NX]) -> Tile {
    let chunks = group.len() / (GROUP * CHUNK);
    let mut res = [[0f32; X_ROWS]; GROUP];
    for (lane, tail) in tails.iter().enumerate() {
        for (xi, xr) in x.iter().enumerate() {
            let mut lanes = [0f32; CHUNK];
            for c in 0..chunks {
                let w = &group[(c * GROUP + lane) * CHUNK..][..CHUNK];
                for (l, acc) in lanes.iter_mut().enumerate() {
                    *acc = kind.to_f32(w[l]).mul_add(xr[c * CHUNK + l], *acc);
                }
            }
            let mut sum = reduce(lanes);
            for (i, &w) in tail.iter().enumerate() {
                sum = kind.to_f32(w).mul_add(xr[chunks * CHUNK + i], sum);
            }
            res[lane][xi] = sum;
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

    use super::{Half, Tails, Tile, CHUNK, GROUP, X_ROWS};

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
    pub(super) unsafe fn tile<const NX: usize>(
        kind: Half,
        group: &[u16],
        tails: Tails,
        x: [&[f32]; NX],
    ) -> Tile {
        let chunks = group.len() / (GROUP * CHUNK);
        let mut acc = [[_mm256_setzero_ps(); NX]; GROUP];
        let w = group.as_ptr();
        for c in 0..chunks {
            let line = w.add(c * GROUP * CHUNK);
            let wv: [__m256; GROUP] = std::array::from_fn(|l| load(kind, line.add(l * CHUNK)));
            for xi in 0..NX {
                let xv = _mm256_loadu_ps(x[xi].as_ptr().add(c * CHUNK));
                for l in 0..GROUP {
                    acc[l][xi] = _mm256_fmadd_ps(wv[l], xv, acc[l][xi]);
                }
            }
        }
        let mut res = [[0f32; X_ROWS]; GROUP];
        for l in 0..GROUP {
            for xi in 0..NX {
                let mut sum = reduce(acc[l][xi]);
                for (i, &t) in tails[l].iter().enumerate() {
                    sum = kind.to_f32(t).mul_add(x[xi][chunks * CHUNK + i], sum);
                }
                res[l][xi] = sum;
            }
        }
        res
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bits(kind: Half, n: usize, k: usize, seed: usize) -> (Vec<u8>, Vec<f32>) {
        let vals: Vec<f32> = (0..n * k)
            .map(|i| (((i + seed) * 7919 % 1000) as f32 - 500.0) / 300.0)
            .map(|v| kind.round(v))
            .collect();
        let bytes = vals
            .iter()
            .flat_map(|&v| match kind {
                Half::F16 => f16::from_f32(v).to_bits().to_le_bytes(),
                Half::Bf16 => bf16::from_f32(v).to_bits().to_le_bytes(),
            })
            .collect();
        (bytes, vals)
    }

    #[test]
    fn products_match_a_float64_sum_and_do_not_depend_on_the_row_count() {
        for kind in [Half::F16, Half::Bf16] {
            // Odd sizes: a group short of rows, a tail past the last eight, 1-9 rows.
            for (n, k) in [(7, 35), (16, 64), (5, 576)] {
                let (bytes, vals) = bits(kind, n, k, 0);
                let w = FloatWeights::from_bytes(kind, &bytes, n, k);
                for j in 0..n {
                    assert_eq!(w.row(j, k), vals[j * k..(j + 1) * k], "{kind:?} row {j}");
                }
                let rows = 9;
                let x: Vec<f32> = (0..rows * k)
                    .map(|i| ((i % 13) as f32 - 6.0) / 7.0)
                    .collect();
                let mut all = vec![0f32; rows * n];
                w.matmul(&x, rows, k, n, &mut all);
                for r in 0..rows {
                    let xr = &x[r * k..(r + 1) * k];
                    for j in 0..n {
                        let exact: f64 = vals[j * k..(j + 1) * k]
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
                let tails = std::array::from_fn(|l| w.tail_of(l));
                let xr = [&x[..k], &x[k..2 * k]];
                let simd = Dot::select(kind).tile(w.group(0), tails, xr);
                let scalar = Dot::Scalar(kind).tile(w.group(0), tails, xr);
                assert_eq!(simd, scalar, "{kind:?} paths agree");
                let one = Dot::select(kind).tile(w.group(0), tails, [&x[k..2 * k]]);
                for l in 0..GROUP {
                    assert_eq!(one[l][0], simd[l][1], "{kind:?} one row or two");
                }
            }
        }
    }

    #[test]
    fn appended_parts_are_the_whole() {
        let kind = Half::F16;
        let (k, n) = (40, 16);
        let (bytes, _) = bits(kind, n, k, 3);
        let whole = FloatWeights::from_bytes(kind, &bytes, n, k);
        let half = bytes.len() / 2;
        let mut parts = FloatWeights::from_bytes(kind, &bytes[..half], n / 2, k);
        assert!(parts.append(FloatWeights::from_bytes(kind, &bytes[half..], n / 2, k)));
        assert_eq!(
            (parts.body, parts.tail, parts.n),
            (whole.body, whole.tail, whole.n)
        );
        let mut short = FloatWeights::from_bytes(kind, &bytes[..2 * k * 3], 3, k);
        assert!(!short.append(FloatWeights::from_bytes(kind, &bytes[..2 * k], 1, k)));
    }
}
