//! Attention on the CPU in plain loops over f32 rows.
//!
//! Two reasons over composing candle ops per sequence: a batched decode step ran some twenty
//! small ops per sequence per layer, and their dispatch cost more than the arithmetic; and
//! the result for a token must not depend on which other tokens share its pass. Here every
//! query row is computed the same way (scores in key order, softmax, weighted sum) whether it
//! comes in a prompt chunk of 256 or alone in a decode step, so a prompt computed in other
//! chunks (a prefix-cache hit, a batch) gives bit-identical logits. Products use f16-rounded
//! operands, as llama.cpp's attention does.

use half::f16;
use rayon::prelude::*;

use super::span::SeqSpan;

/// Rows of one query chunk: enough to keep both threads busy in a prefill, few enough to
/// split a long prompt.
const QUERY_CHUNK: usize = 16;

/// Shapes and settings of one attention layer.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub scale: f32,
    /// Sliding window: a query at position p sees keys p - window + 1 ..= p.
    pub window: Option<usize>,
}

#[inline]
fn f16_rounded(x: f32) -> f32 {
    half::f16::from_f32(x).to_f32()
}

/// Round queries to f16 precision (keys and values are stored as f16), as llama.cpp's f16 KV
/// cache and its f16 attention products do: on this model it brings the logits closer to
/// llama.cpp's than exact f32 does (mean |Δ logprob| 0.037 against 0.038; no decisive top-1
/// flips against one).
pub fn round_to_f16(x: &mut [f32]) {
    x.iter_mut().for_each(|v| *v = f16_rounded(*v));
}

/// Rotary embedding of one token's heads in place; `cos`, `sin` are its position's rows.
pub fn rotate(x: &mut [f32], head_dim: usize, cos: &[f32], sin: &[f32], interleaved: bool) {
    let half = head_dim / 2;
    for head in x.chunks_exact_mut(head_dim) {
        if interleaved {
            for i in 0..half {
                let (a, b) = (head[2 * i], head[2 * i + 1]);
                head[2 * i] = a * cos[i] - b * sin[i];
                head[2 * i + 1] = a * sin[i] + b * cos[i];
            }
        } else {
            for i in 0..half {
                let (a, b) = (head[i], head[i + half]);
                head[i] = a * cos[i] - b * sin[i];
                head[i + half] = a * sin[i] + b * cos[i];
            }
        }
    }
}

/// `Σ a·b` over an f16 row, with eight running sums (same order for every call of a length).
#[inline]
fn dot(a: &[f32], b: &[f16]) -> f32 {
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
    for (x, y) in a.chunks(8).zip(b.chunks(8)) {
        for i in 0..x.len() {
            acc[i] = x[i].mul_add(y[i].to_f32(), acc[i]);
        }
    }
    acc.iter().sum()
}

/// `out += w · x` over an f16 row.
#[inline]
fn axpy(out: &mut [f32], w: f32, x: &[f16]) {
    #[cfg(all(
        target_arch = "x86_64",
        target_feature = "f16c",
        target_feature = "fma"
    ))]
    if out.len().is_multiple_of(8) {
        // SAFETY: as in `dot`.
        return unsafe { simd::axpy(out, w, x) };
    }
    for (o, v) in out.iter_mut().zip(x) {
        *o = w.mul_add(v.to_f32(), *o);
    }
}

/// `out[c] = (q · key(first + c)) · scale` for each of `out.len()` keys; the key of position
/// j is `keys[j * stride + at..][..q.len()]`. Each score is the same sum, in the same order, as
/// `dot` gives: eight keys at a time only shares the loads and the horizontal sums.
fn key_scores(
    q: &[f32],
    keys: &[f16],
    (stride, at): (usize, usize),
    first: usize,
    scale: f32,
    out: &mut [f32],
) {
    let hd = q.len();
    let key = |c: usize| &keys[(first + c) * stride + at..][..hd];
    #[allow(unused_mut)]
    let mut done = 0;
    #[cfg(all(
        target_arch = "x86_64",
        target_feature = "f16c",
        target_feature = "fma"
    ))]
    if hd.is_multiple_of(8) {
        while done + 8 <= out.len() {
            let block: [&[f16]; 8] = std::array::from_fn(|k| key(done + k));
            // SAFETY: as in `dot`; every key row has q's length.
            unsafe { simd::dot8(q, block, scale, &mut out[done..done + 8]) };
            done += 8;
        }
    }
    for (c, o) in out.iter_mut().enumerate().skip(done) {
        *o = dot(q, key(c)) * scale;
    }
}

/// `out = Σ_c w[c] · value(first + c)`, summed in key order from zero (the same sums as
/// `axpy` over the keys into a zeroed `out`). Values are laid out as keys in `key_scores`.
fn weighted_values(
    w: &[f32],
    values: &[f16],
    (stride, at): (usize, usize),
    first: usize,
    out: &mut [f32],
) {
    let hd = out.len();
    #[cfg(all(
        target_arch = "x86_64",
        target_feature = "f16c",
        target_feature = "fma"
    ))]
    if hd.is_multiple_of(32) && !w.is_empty() {
        let start = first * stride + at;
        assert!(start + (w.len() - 1) * stride + hd <= values.len());
        for (i, o) in out.chunks_exact_mut(32).enumerate() {
            // SAFETY: as in `dot`; the bound on the last value row is checked above.
            unsafe { simd::weighted32(w, values, stride, start + 32 * i, o) };
        }
        return;
    }
    out.fill(0.0);
    for (c, &wc) in w.iter().enumerate() {
        axpy(out, wc, &values[(first + c) * stride + at..][..hd]);
    }
}

#[cfg(all(
    target_arch = "x86_64",
    target_feature = "f16c",
    target_feature = "fma"
))]
mod simd {
    use half::f16;
    use std::arch::x86_64::*;

    #[inline(always)]
    unsafe fn load(x: &[f16], i: usize) -> __m256 {
        _mm256_cvtph_ps(_mm_loadu_si128(x.as_ptr().add(i) as *const __m128i))
    }

    /// Same order as the scalar path: lane i sums elements i, i + 8, ...; then lanes 0..8.
    #[inline(always)]
    pub unsafe fn dot(a: &[f32], b: &[f16]) -> f32 {
        debug_assert_eq!(a.len(), b.len());
        let mut acc = _mm256_setzero_ps();
        for i in (0..a.len()).step_by(8) {
            acc = _mm256_fmadd_ps(_mm256_loadu_ps(a.as_ptr().add(i)), load(b, i), acc);
        }
        let mut lanes = [0f32; 8];
        _mm256_storeu_ps(lanes.as_mut_ptr(), acc);
        lanes.iter().sum()
    }

    /// `dot(a, b[k]) · scale` for eight rows at once: eight running sums as in `dot`, then an
    /// 8×8 transpose so that lane k of the result adds row k's lanes in the order 0..8.
    #[inline(always)]
    pub unsafe fn dot8(a: &[f32], b: [&[f16]; 8], scale: f32, out: &mut [f32]) {
        debug_assert!(b.iter().all(|r| r.len() == a.len()) && out.len() == 8);
        let mut acc = [_mm256_setzero_ps(); 8];
        for i in (0..a.len()).step_by(8) {
            let av = _mm256_loadu_ps(a.as_ptr().add(i));
            for k in 0..8 {
                acc[k] = _mm256_fmadd_ps(av, load(b[k], i), acc[k]);
            }
        }
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
        _mm256_storeu_ps(out.as_mut_ptr(), _mm256_mul_ps(sum, _mm256_set1_ps(scale)));
    }

    /// 32 columns of `Σ_c w[c] · x[start + c · stride ..][..32]`, four independent chains
    /// held in registers over all the keys.
    #[inline(always)]
    pub unsafe fn weighted32(w: &[f32], x: &[f16], stride: usize, start: usize, out: &mut [f32]) {
        debug_assert_eq!(out.len(), 32);
        let mut acc = [_mm256_setzero_ps(); 4];
        for (c, &wc) in w.iter().enumerate() {
            let wv = _mm256_set1_ps(wc);
            let base = start + c * stride;
            for (k, a) in acc.iter_mut().enumerate() {
                *a = _mm256_fmadd_ps(wv, load(x, base + 8 * k), *a);
            }
        }
        for (k, a) in acc.iter().enumerate() {
            _mm256_storeu_ps(out.as_mut_ptr().add(8 * k), *a);
        }
    }

    #[inline(always)]
    pub unsafe fn axpy(out: &mut [f32], w: f32, x: &[f16]) {
        debug_assert_eq!(out.len(), x.len());
        let wv = _mm256_set1_ps(w);
        for i in (0..out.len()).step_by(8) {
            let o = out.as_mut_ptr().add(i);
            _mm256_storeu_ps(o, _mm256_fmadd_ps(wv, load(x, i), _mm256_loadu_ps(o)));
        }
    }
}

/// One unit of work: a chunk of one sequence's query rows against one KV head.
struct Task {
    seq: usize,
    kv_head: usize,
    rows: std::ops::Range<usize>,
}

/// Attention for a flattened batch. `q`: (tokens, n_heads · head_dim) already rotated;
/// `history[s]`: sequence s's keys and values, position-major (positions, n_kv_heads ·
/// head_dim), the new tokens' included. Returns (tokens, n_heads · head_dim).
pub fn attend(
    q: &[f32],
    spans: &[SeqSpan],
    history: &[(&[f16], &[f16])],
    shape: Shape,
) -> Vec<f32> {
    let Shape {
        n_heads,
        n_kv_heads,
        head_dim: hd,
        scale,
        window,
    } = shape;
    let group = n_heads / n_kv_heads;
    let q_row = n_heads * hd;
    let kv_row = n_kv_heads * hd;
    let tokens = q.len() / q_row;
    let mut tasks = Vec::new();
    for (seq, span) in spans.iter().enumerate() {
        for kv_head in 0..n_kv_heads {
            let mut r = 0;
            while r < span.len {
                let end = (r + QUERY_CHUNK).min(span.len);
                tasks.push(Task {
                    seq,
                    kv_head,
                    rows: r..end,
                });
                r = end;
            }
        }
    }
    // Each task's output: its rows × its group of heads × head_dim, scattered below.
    let results: Vec<Vec<f32>> = tasks
        .par_iter()
        .map(|task| {
            let span = spans[task.seq];
            let (keys, values) = history[task.seq];
            let mut out = vec![0f32; task.rows.len() * group * hd];
            let visible = span.pos + span.len;
            // Scores of the group's heads, head-major.
            let mut scores = vec![0f32; group * visible];
            let layout = (kv_row, task.kv_head * hd);
            for (n, i) in task.rows.clone().enumerate() {
                let p = span.pos + i;
                let first = window.map_or(0, |w| (p + 1).saturating_sub(w));
                let count = p + 1 - first;
                let q_at = (span.start + i) * q_row + task.kv_head * group * hd;
                let qs = &q[q_at..q_at + group * hd];
                for (g, qv) in qs.chunks_exact(hd).enumerate() {
                    let sc = &mut scores[g * visible..g * visible + count];
                    key_scores(qv, keys, layout, first, scale, sc);
                }
                let o = &mut out[n * group * hd..(n + 1) * group * hd];
                for g in 0..group {
                    let sc = &mut scores[g * visible..g * visible + count];
                    let max = sc.iter().fold(f32::NEG_INFINITY, |m, &s| m.max(s));
                    let mut sum = 0f32;
                    for s in sc.iter_mut() {
                        *s = (*s - max).exp();
                        sum += *s;
                    }
                    let inv = 1.0 / sum;
                    sc.iter_mut().for_each(|s| *s = f16_rounded(*s * inv));
                }
                for (g, og) in o.chunks_exact_mut(hd).enumerate() {
                    let w = &scores[g * visible..g * visible + count];
                    weighted_values(w, values, layout, first, og);
                }
            }
            out
        })
        .collect();
    let mut out = vec![0f32; tokens * q_row];
    for (task, r) in tasks.iter().zip(results) {
        let span = spans[task.seq];
        for (n, i) in task.rows.clone().enumerate() {
            let dst = (span.start + i) * q_row + task.kv_head * group * hd;
            out[dst..dst + group * hd].copy_from_slice(&r[n * group * hd..(n + 1) * group * hd]);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(
        q: &[f32],
        k: &[f32],
        v: &[f32],
        pos: usize,
        hd: usize,
        window: Option<usize>,
    ) -> Vec<f32> {
        let first = window.map_or(0, |w| (pos + 1).saturating_sub(w));
        let scores: Vec<f64> = (first..=pos)
            .map(|j| (0..hd).map(|d| (q[d] * k[j * hd + d]) as f64).sum::<f64>() * 0.125)
            .collect();
        let max = scores.iter().cloned().fold(f64::MIN, f64::max);
        let e: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
        let z: f64 = e.iter().sum();
        (0..hd)
            .map(|d| {
                (first..=pos)
                    .zip(&e)
                    .map(|(j, w)| w / z * v[j * hd + d] as f64)
                    .sum::<f64>() as f32
            })
            .collect()
    }

    #[test]
    fn matches_a_naive_softmax_attention_and_ignores_its_batch() {
        let hd = 16;
        let n = 40;
        let val = |i: usize| ((i * 7919 % 113) as f32 - 56.0) / 50.0;
        let q: Vec<f32> = (0..n * hd).map(val).collect();
        let k: Vec<f32> = (0..n * hd).map(|i| f16_rounded(val(i + 3))).collect();
        let v: Vec<f32> = (0..n * hd).map(|i| f16_rounded(val(i + 11))).collect();
        let halves = |x: &[f32]| x.iter().map(|&v| f16::from_f32(v)).collect::<Vec<_>>();
        let (k16, v16) = (halves(&k), halves(&v));
        for window in [None, Some(5)] {
            let shape = Shape {
                n_heads: 1,
                n_kv_heads: 1,
                head_dim: hd,
                scale: 0.125,
                window,
            };
            let whole = attend(
                &q,
                &[SeqSpan {
                    start: 0,
                    len: n,
                    pos: 0,
                }],
                &[(&k16, &v16)],
                shape,
            );
            for pos in [0, 1, 17, 39] {
                let expect = naive(&q[pos * hd..], &k, &v, pos, hd, window);
                let got = &whole[pos * hd..(pos + 1) * hd];
                for (a, b) in got.iter().zip(&expect) {
                    // Softmax weights are f16-rounded: about three decimal digits.
                    assert!((a - b).abs() < 2e-3, "pos {pos}: {a} vs {b}");
                }
                // The same row alone, in a batch with another sequence: bit-identical.
                let alone = attend(
                    &[&q[..hd], &q[pos * hd..(pos + 1) * hd]].concat(),
                    &[
                        SeqSpan {
                            start: 0,
                            len: 1,
                            pos: 0,
                        },
                        SeqSpan {
                            start: 1,
                            len: 1,
                            pos,
                        },
                    ],
                    &[
                        (&k16[..hd], &v16[..hd]),
                        (&k16[..(pos + 1) * hd], &v16[..(pos + 1) * hd]),
                    ],
                    shape,
                );
                assert_eq!(&alone[hd..], got, "pos {pos}");
            }
        }
    }

    #[test]
    fn blocked_scores_and_values_give_the_plain_sums_bit_for_bit() {
        let (hd, stride, at, n) = (64, 3 * 64, 64, 29);
        let val = |i: usize| ((i * 7919 % 113) as f32 - 56.0) / 37.0;
        let q: Vec<f32> = (0..hd).map(|i| val(i + 5)).collect();
        let kv: Vec<f16> = (0..n * stride).map(|i| f16::from_f32(val(i))).collect();
        for first in [0, 3] {
            let count = n - first;
            let row = |c: usize| &kv[(first + c) * stride + at..][..hd];
            let mut scores = vec![0f32; count];
            key_scores(&q, &kv, (stride, at), first, 0.125, &mut scores);
            for (c, s) in scores.iter().enumerate() {
                assert_eq!(s.to_bits(), (dot(&q, row(c)) * 0.125).to_bits(), "key {c}");
            }
            let mut plain = vec![0f32; hd];
            for (c, &w) in scores.iter().enumerate() {
                axpy(&mut plain, w, row(c));
            }
            let mut blocked = vec![1f32; hd];
            weighted_values(&scores, &kv, (stride, at), first, &mut blocked);
            assert_eq!(blocked, plain);
        }
    }

    #[test]
    fn rotation_pairs_adjacent_or_halves() {
        let (cos, sin) = ([0.0, 1.0], [1.0, 0.0]);
        let mut x = [1.0, 2.0, 3.0, 4.0];
        rotate(&mut x, 4, &cos, &sin, true);
        assert_eq!(x, [-2.0, 1.0, 3.0, 4.0]);
        let mut x = [1.0, 2.0, 3.0, 4.0];
        rotate(&mut x, 4, &cos, &sin, false);
        assert_eq!(x, [-3.0, 2.0, 1.0, 4.0]);
    }
}
