//! The inner loops of CPU attention: query-key scores and the weighted sum of values over the
//! KV cache's rows, f16 or q8_0 (`Rows`).
//!
//! The query heads that share a KV head (a group) are computed together: each key or value
//! row is converted from f16 once for the whole group rather than once per head, which was
//! the bound of these loops (one conversion per multiply-add). Every score and every output
//! element is still one running sum in a fixed order, so the result is the same to the bit
//! whatever the group size, the batch or the chunking of a prompt.

use half::f16;

use crate::engine::kv_rows::{Q8, Q8_BLOCK};

/// Keys or values as the kernels read them. A value is the same f32 on every path (scalar or
/// SIMD), so sums come out the same to the bit.
pub trait Rows: Copy + Send + Sync {
    fn len(&self) -> usize;
    /// `len` values from `start` (a multiple of the storage's block).
    fn slice(&self, start: usize, len: usize) -> Self;
    fn get(&self, i: usize) -> f32;
    /// Values `i..i + 8` (`i` a multiple of 8).
    ///
    /// # Safety
    /// `i + 8 <= len`; the CPU has AVX2, F16C and FMA.
    #[cfg(all(
        target_arch = "x86_64",
        target_feature = "f16c",
        target_feature = "fma"
    ))]
    unsafe fn load8(&self, i: usize) -> std::arch::x86_64::__m256;
}

impl Rows for &[f16] {
    fn len(&self) -> usize {
        <[f16]>::len(self)
    }
    fn slice(&self, start: usize, len: usize) -> Self {
        &self[start..start + len]
    }
    #[inline(always)]
    fn get(&self, i: usize) -> f32 {
        self[i].to_f32()
    }
    #[cfg(all(
        target_arch = "x86_64",
        target_feature = "f16c",
        target_feature = "fma"
    ))]
    #[inline(always)]
    unsafe fn load8(&self, i: usize) -> std::arch::x86_64::__m256 {
        use std::arch::x86_64::*;
        _mm256_cvtph_ps(_mm_loadu_si128(self.as_ptr().add(i) as *const __m128i))
    }
}

impl Rows for Q8<'_> {
    fn len(&self) -> usize {
        self.qs.len()
    }
    fn slice(&self, start: usize, len: usize) -> Self {
        debug_assert!(start.is_multiple_of(Q8_BLOCK));
        Q8 {
            qs: &self.qs[start..start + len],
            d: &self.d[start / Q8_BLOCK..(start + len).div_ceil(Q8_BLOCK)],
        }
    }
    #[inline(always)]
    fn get(&self, i: usize) -> f32 {
        Q8::get(self, i)
    }
    #[cfg(all(
        target_arch = "x86_64",
        target_feature = "f16c",
        target_feature = "fma"
    ))]
    #[inline(always)]
    unsafe fn load8(&self, i: usize) -> std::arch::x86_64::__m256 {
        use std::arch::x86_64::*;
        let bytes = _mm_loadl_epi64(self.qs.as_ptr().add(i) as *const __m128i);
        let values = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(bytes));
        let d = self.d.get_unchecked(i / Q8_BLOCK).to_f32();
        _mm256_mul_ps(values, _mm256_set1_ps(d))
    }
}

/// Where a sequence's rows sit in its cache: position j's row of this KV head starts at
/// `j * stride + at`.
pub type Layout = (usize, usize);

/// `Σ a·b` over a cache row, with eight running sums (same order for every call of a length).
#[inline]
pub fn dot<R: Rows>(a: &[f32], b: R) -> f32 {
    #[cfg(all(
        target_arch = "x86_64",
        target_feature = "f16c",
        target_feature = "fma"
    ))]
    if a.len().is_multiple_of(8) {
        // SAFETY: the crate is compiled for these features; lengths are checked multiples of
        // eight and equal.
        return unsafe { simd::dot(a, b) };
    }
    let mut acc = [0f32; 8];
    for (i, x) in a.iter().enumerate() {
        acc[i % 8] = x.mul_add(b.get(i), acc[i % 8]);
    }
    acc.iter().sum()
}

/// `out += w · x` over a cache row.
#[inline]
pub fn axpy<R: Rows>(out: &mut [f32], w: f32, x: R) {
    #[cfg(all(
        target_arch = "x86_64",
        target_feature = "f16c",
        target_feature = "fma"
    ))]
    if out.len().is_multiple_of(8) {
        // SAFETY: as in `dot`.
        return unsafe { simd::axpy(out, w, x) };
    }
    for (i, o) in out.iter_mut().enumerate() {
        *o = w.mul_add(x.get(i), *o);
    }
}

/// Heads computed together when `left` of a group remain: 4, 2 or 1, so that a block of
/// heads times its keys (or value columns) fills the eight accumulators.
#[allow(dead_code)]
fn heads_per_block(left: usize) -> usize {
    match left {
        0 | 1 => 1,
        2 | 3 => 2,
        _ => 4,
    }
}

/// Scores of a group of query heads against keys `first..first + count`: `qs` holds the
/// heads one after another (`hd` values each); head g's scores go to `scores[g * visible..]`
/// in key order, `(q · key) · scale`, each the sum `dot` gives.
#[allow(clippy::too_many_arguments)]
pub fn group_scores<R: Rows>(
    qs: &[f32],
    hd: usize,
    keys: R,
    (stride, at): Layout,
    (first, count): (usize, usize),
    scale: f32,
    scores: &mut [f32],
    visible: usize,
) {
    let group = qs.len() / hd;
    let key = |c: usize| keys.slice((first + c) * stride + at, hd);
    let query = |g: usize| &qs[g * hd..(g + 1) * hd];
    let mut g = 0;
    while g < group {
        #[allow(unused_mut)]
        let mut heads = 1;
        #[allow(unused_mut)]
        let mut done = 0;
        #[cfg(all(
            target_arch = "x86_64",
            target_feature = "f16c",
            target_feature = "fma"
        ))]
        if hd.is_multiple_of(8) {
            heads = heads_per_block(group - g);
            let mut block = [0f32; 8];
            let keys_per_block = 8 / heads;
            while done + keys_per_block <= count {
                // SAFETY: compiled for these features; every row has hd values, a multiple of 8.
                unsafe {
                    match heads {
                        1 => simd::dot_block::<_, 1, 8>(
                            [query(g)],
                            std::array::from_fn(|k| key(done + k)),
                            scale,
                            &mut block,
                        ),
                        2 => simd::dot_block::<_, 2, 4>(
                            std::array::from_fn(|h| query(g + h)),
                            std::array::from_fn(|k| key(done + k)),
                            scale,
                            &mut block,
                        ),
                        _ => simd::dot_block::<_, 4, 2>(
                            std::array::from_fn(|h| query(g + h)),
                            std::array::from_fn(|k| key(done + k)),
                            scale,
                            &mut block,
                        ),
                    }
                }
                for (i, s) in block.iter().enumerate() {
                    scores[(g + i / keys_per_block) * visible + done + i % keys_per_block] = *s;
                }
                done += keys_per_block;
            }
        }
        for h in g..g + heads {
            for c in done..count {
                scores[h * visible + c] = dot(query(h), key(c)) * scale;
            }
        }
        g += heads;
    }
}

/// `out[g] = Σ_c w[g][c] · value(first + c)` for a group of heads, with head g's weights at
/// `w[g * visible..][..count]` and its output at `out[g * hd..][..hd]`; each element summed in
/// key order from zero (the sums `axpy` over the keys into a zeroed row gives).
pub fn group_values<R: Rows>(
    w: &[f32],
    visible: usize,
    values: R,
    (stride, at): Layout,
    (first, count): (usize, usize),
    out: &mut [f32],
) {
    let group = w.len() / visible;
    let hd = out.len() / group;
    let weights = |g: usize| &w[g * visible..g * visible + count];
    let mut g = 0;
    while g < group {
        #[allow(unused_mut)]
        let mut heads = 0;
        #[cfg(all(
            target_arch = "x86_64",
            target_feature = "f16c",
            target_feature = "fma"
        ))]
        if count > 0 {
            let take = heads_per_block(group - g);
            // Eight registers of sums: `take` heads × `columns` / 8 vectors.
            let columns = 64 / take;
            let start = first * stride + at;
            if hd.is_multiple_of(columns) {
                assert!(start + (count - 1) * stride + hd <= values.len());
                let block = &mut out[g * hd..(g + take) * hd];
                for col in (0..hd).step_by(columns) {
                    let mut outs = block
                        .chunks_exact_mut(hd)
                        .map(|o| &mut o[col..col + columns]);
                    let mut next = || outs.next().expect("take heads");
                    let at = start + col;
                    // SAFETY: compiled for these features; the last value row read ends within
                    // `values` (asserted above) and each output slice has `columns` values.
                    unsafe {
                        match take {
                            1 => simd::weighted_block::<_, 1, 8>(
                                [weights(g)],
                                values,
                                stride,
                                at,
                                [next()],
                            ),
                            2 => simd::weighted_block::<_, 2, 4>(
                                [weights(g), weights(g + 1)],
                                values,
                                stride,
                                at,
                                [next(), next()],
                            ),
                            _ => simd::weighted_block::<_, 4, 2>(
                                std::array::from_fn(|h| weights(g + h)),
                                values,
                                stride,
                                at,
                                [next(), next(), next(), next()],
                            ),
                        }
                    }
                }
                heads = take;
            }
        }
        if heads == 0 {
            plain_values(
                weights(g),
                values,
                (stride, at),
                first,
                &mut out[g * hd..(g + 1) * hd],
            );
            heads = 1;
        }
        g += heads;
    }
}

/// `Σ_c w[c] · value(first + c)` one row at a time.
fn plain_values<R: Rows>(
    w: &[f32],
    values: R,
    (stride, at): Layout,
    first: usize,
    out: &mut [f32],
) {
    let hd = out.len();
    out.fill(0.0);
    for (c, &wc) in w.iter().enumerate() {
        axpy(out, wc, values.slice((first + c) * stride + at, hd));
    }
}

#[cfg(all(
    target_arch = "x86_64",
    target_feature = "f16c",
    target_feature = "fma"
))]
mod simd {
    use super::Rows;
    use std::arch::x86_64::*;

    /// Same order as the scalar path: lane i sums elements i, i + 8, ...; then lanes 0..8.
    #[inline(always)]
    pub unsafe fn dot<R: Rows>(a: &[f32], b: R) -> f32 {
        debug_assert_eq!(a.len(), b.len());
        let mut acc = _mm256_setzero_ps();
        for i in (0..a.len()).step_by(8) {
            acc = _mm256_fmadd_ps(_mm256_loadu_ps(a.as_ptr().add(i)), b.load8(i), acc);
        }
        let mut lanes = [0f32; 8];
        _mm256_storeu_ps(lanes.as_mut_ptr(), acc);
        lanes.iter().sum()
    }

    /// Lane k holds the sum of accumulator k's lanes, added in the order 0..8 (as `dot` adds
    /// its lanes): an 8×8 transpose, then the rows added one after another.
    #[inline(always)]
    unsafe fn lane_sums(acc: [__m256; 8]) -> __m256 {
        let [v0, v1, v2, v3, v4, v5, v6, v7] = acc;
        let (t0, t1) = (_mm256_unpacklo_ps(v0, v1), _mm256_unpackhi_ps(v0, v1));
        let (t2, t3) = (_mm256_unpacklo_ps(v2, v3), _mm256_unpackhi_ps(v2, v3));
        let (t4, t5) = (_mm256_unpacklo_ps(v4, v5), _mm256_unpackhi_ps(v4, v5));
        let (t6, t7) = (_mm256_unpacklo_ps(v6, v7), _mm256_unpackhi_ps(v6, v7));
        let s0 = _mm256_shuffle_ps::<0x44>(t0, t2);
        let s1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
        let s2 = _mm256_shuffle_ps::<0x44>(t1, t3);
        let s3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
        let s4 = _mm256_shuffle_ps::<0x44>(t4, t6);
        let s5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
        let s6 = _mm256_shuffle_ps::<0x44>(t5, t7);
        let s7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
        // Row j holds lane j of every accumulator.
        let rows = [
            _mm256_permute2f128_ps::<0x20>(s0, s4),
            _mm256_permute2f128_ps::<0x20>(s1, s5),
            _mm256_permute2f128_ps::<0x20>(s2, s6),
            _mm256_permute2f128_ps::<0x20>(s3, s7),
            _mm256_permute2f128_ps::<0x31>(s0, s4),
            _mm256_permute2f128_ps::<0x31>(s1, s5),
            _mm256_permute2f128_ps::<0x31>(s2, s6),
            _mm256_permute2f128_ps::<0x31>(s3, s7),
        ];
        let mut sum = rows[0];
        for r in &rows[1..] {
            sum = _mm256_add_ps(sum, *r);
        }
        sum
    }

    /// `dot(q[i], k[j]) · scale` for `Q` queries against `K` keys (`Q · K = 8`), as
    /// `out[i * K + j]`: each pair has a running sum of its own in `dot`'s order, so every score
    /// is `dot`'s to the bit, while a key row converted from f16 once serves `Q` queries.
    #[inline(always)]
    pub unsafe fn dot_block<R: Rows, const Q: usize, const K: usize>(
        q: [&[f32]; Q],
        k: [R; K],
        scale: f32,
        out: &mut [f32; 8],
    ) {
        debug_assert_eq!(Q * K, 8);
        let len = q[0].len();
        debug_assert!(q.iter().all(|r| r.len() == len) && k.iter().all(|r| r.len() == len));
        let mut acc = [_mm256_setzero_ps(); 8];
        for i in (0..len).step_by(8) {
            let kv: [__m256; K] = std::array::from_fn(|j| k[j].load8(i));
            for (a, qa) in q.iter().enumerate() {
                let qv = _mm256_loadu_ps(qa.as_ptr().add(i));
                for (j, kj) in kv.iter().enumerate() {
                    acc[a * K + j] = _mm256_fmadd_ps(qv, *kj, acc[a * K + j]);
                }
            }
        }
        let sums = _mm256_mul_ps(lane_sums(acc), _mm256_set1_ps(scale));
        _mm256_storeu_ps(out.as_mut_ptr(), sums);
    }

    /// `out[h][8v..8v + 8] = Σ_c w[h][c] · x[row(c) + 8v..]` for `H` heads and `V` vectors of
    /// columns (`H · V = 8`), `row(c) = start + c · stride`: a value row converted once serves
    /// `H` heads; each sum runs from zero in key order, as `axpy` into a zeroed row does.
    #[inline(always)]
    pub unsafe fn weighted_block<R: Rows, const H: usize, const V: usize>(
        w: [&[f32]; H],
        x: R,
        stride: usize,
        start: usize,
        out: [&mut [f32]; H],
    ) {
        debug_assert_eq!(H * V, 8);
        let mut acc = [_mm256_setzero_ps(); 8];
        for c in 0..w[0].len() {
            let base = start + c * stride;
            let xv: [__m256; V] = std::array::from_fn(|v| x.load8(base + 8 * v));
            for (h, wh) in w.iter().enumerate() {
                let wv = _mm256_set1_ps(*wh.get_unchecked(c));
                for (v, xv) in xv.iter().enumerate() {
                    acc[h * V + v] = _mm256_fmadd_ps(wv, *xv, acc[h * V + v]);
                }
            }
        }
        for (h, o) in out.into_iter().enumerate() {
            debug_assert_eq!(o.len(), 8 * V);
            for v in 0..V {
                _mm256_storeu_ps(o.as_mut_ptr().add(8 * v), acc[h * V + v]);
            }
        }
    }

    #[inline(always)]
    pub unsafe fn axpy<R: Rows>(out: &mut [f32], w: f32, x: R) {
        debug_assert_eq!(out.len(), x.len());
        let wv = _mm256_set1_ps(w);
        for i in (0..out.len()).step_by(8) {
            let o = out.as_mut_ptr().add(i);
            _mm256_storeu_ps(o, _mm256_fmadd_ps(wv, x.load8(i), _mm256_loadu_ps(o)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::kv_rows::Q8Rows;

    fn val(i: usize) -> f32 {
        ((i * 7919 % 113) as f32 - 56.0) / 37.0
    }

    /// Grouped scores and values over `kv` (n positions of `stride` values, this head's at
    /// `at`) against `dot` and `axpy` one head and one key at a time, to the bit.
    fn check<R: Rows>(kv: R, hd: usize, group: usize, (stride, at): Layout, n: usize) {
        let qs: Vec<f32> = (0..group * hd).map(|i| val(i + 5)).collect();
        let visible = n + 2;
        for first in [0, 3] {
            let count = n - first;
            let row = |c: usize| kv.slice((first + c) * stride + at, hd);
            let mut scores = vec![0f32; group * visible];
            let keys_seen = (first, count);
            group_scores(
                &qs,
                hd,
                kv,
                (stride, at),
                keys_seen,
                0.125,
                &mut scores,
                visible,
            );
            let mut out = vec![1f32; group * hd];
            group_values(&scores, visible, kv, (stride, at), keys_seen, &mut out);
            for g in 0..group {
                let q = &qs[g * hd..(g + 1) * hd];
                let mut plain = vec![0f32; hd];
                for c in 0..count {
                    let s = scores[g * visible + c];
                    let want = dot(q, row(c)) * 0.125;
                    assert_eq!(
                        s.to_bits(),
                        want.to_bits(),
                        "hd {hd} group {group} head {g} key {c}"
                    );
                    axpy(&mut plain, s, row(c));
                }
                assert_eq!(
                    &out[g * hd..(g + 1) * hd],
                    &plain[..],
                    "hd {hd} group {group} head {g}"
                );
            }
        }
    }

    /// Every group size and head width (SIMD blocks, partial blocks, the plain path) gives the
    /// plain per-head sums to the bit, over f16 rows and over q8_0 rows.
    #[test]
    fn grouped_scores_and_values_are_the_plain_sums_bit_for_bit() {
        let n = 29;
        for (hd, group, n_kv) in [
            (64, 1, 3),
            (64, 3, 2),
            (64, 4, 1),
            (256, 4, 1),
            (72, 5, 2),
            (12, 2, 1),
        ] {
            let stride = n_kv * hd;
            let layout = (stride, (n_kv - 1) * hd);
            let values: Vec<f32> = (0..n * stride).map(val).collect();
            let kv: Vec<f16> = values.iter().map(|&v| f16::from_f32(v)).collect();
            check(&kv[..], hd, group, layout, n);
            if hd.is_multiple_of(Q8_BLOCK) {
                let mut q8 = Q8Rows::default();
                q8.extend(&values);
                check(q8.view(), hd, group, layout, n);
            }
        }
    }

    #[test]
    fn q8_0_values_read_the_same_on_every_path() {
        let values: Vec<f32> = (0..64).map(val).collect();
        let mut q8 = Q8Rows::default();
        q8.extend(&values);
        let rows = q8.view();
        let ones = vec![1f32; 64];
        let mut summed = vec![0f32; 64];
        axpy(&mut summed, 1.0, rows);
        for (i, (s, v)) in summed.iter().zip(&values).enumerate() {
            assert_eq!(*s, rows.get(i));
            assert!((s - v).abs() < 0.02, "{i}: {s} vs {v}");
        }
        let total: f32 = (0..64).map(|i| rows.get(i)).sum();
        assert!((dot(&ones, rows) - total).abs() < 1e-4);
    }
}
