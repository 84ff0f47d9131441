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

use super::span::SeqSpan;

mod kernels;

use crate::engine::kv_rows::{HostRows, Q8};
use kernels::Rows;

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
    /// Gemma 2's soft cap on the scaled scores: `cap · tanh(score / cap)` before the softmax.
    pub softcap: Option<f32>,
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

/// One unit of work: a chunk of one sequence's query rows against one KV head.
struct Task {
    seq: usize,
    kv_head: usize,
    rows: std::ops::Range<usize>,
}

/// Attention for a flattened batch over caches of one storage type (`attend` per type).
pub fn attend_rows(
    q: &[f32],
    spans: &[SeqSpan],
    history: &[(HostRows<'_>, HostRows<'_>)],
    shape: Shape,
) -> Option<Vec<f32>> {
    let f16s: Option<Vec<(&[f16], &[f16])>> = history
        .iter()
        .map(|kv| match *kv {
            (HostRows::F16(k), HostRows::F16(v)) => Some((k, v)),
            _ => None,
        })
        .collect();
    if let Some(h) = f16s {
        return Some(attend(q, spans, &h, shape));
    }
    let q8s: Option<Vec<(Q8<'_>, Q8<'_>)>> = history
        .iter()
        .map(|kv| match *kv {
            (HostRows::Q8(k), HostRows::Q8(v)) => Some((k, v)),
            _ => None,
        })
        .collect();
    q8s.map(|h| attend(q, spans, &h, shape))
}

/// Attention for a flattened batch. `q`: (tokens, n_heads · head_dim) already rotated;
/// `history[s]`: sequence s's keys and values, position-major (positions, n_kv_heads ·
/// head_dim), the new tokens' included. Returns (tokens, n_heads · head_dim).
pub fn attend<R: Rows>(q: &[f32], spans: &[SeqSpan], history: &[(R, R)], shape: Shape) -> Vec<f32> {
    let Shape {
        n_heads,
        n_kv_heads,
        head_dim: hd,
        scale,
        window,
        softcap,
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
    let results: Vec<Vec<f32>> = crate::engine::pass_threads::map(tasks.len(), |t| {
        let task = &tasks[t];
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
            let keys_seen = (first, count);
            kernels::group_scores(qs, hd, keys, layout, keys_seen, scale, &mut scores, visible);
            let o = &mut out[n * group * hd..(n + 1) * group * hd];
            for g in 0..group {
                let sc = &mut scores[g * visible..g * visible + count];
                if let Some(cap) = softcap {
                    sc.iter_mut().for_each(|s| *s = cap * (*s / cap).tanh());
                }
                let max = sc.iter().fold(f32::NEG_INFINITY, |m, &s| m.max(s));
                let mut sum = 0f32;
                for s in sc.iter_mut() {
                    *s = (*s - max).exp();
                    sum += *s;
                }
                let inv = 1.0 / sum;
                sc.iter_mut().for_each(|s| *s = f16_rounded(*s * inv));
            }
            kernels::group_values(&scores, visible, values, layout, keys_seen, o);
        }
        out
    });
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
        softcap: Option<f32>,
    ) -> Vec<f32> {
        let first = window.map_or(0, |w| (pos + 1).saturating_sub(w));
        let scores: Vec<f64> = (first..=pos)
            .map(|j| (0..hd).map(|d| (q[d] * k[j * hd + d]) as f64).sum::<f64>() * 0.125)
            .map(|s| softcap.map_or(s, |c| c as f64 * (s / c as f64).tanh()))
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
        for (window, softcap) in [(None, None), (Some(5), None), (None, Some(0.3))] {
            let shape = Shape {
                n_heads: 1,
                n_kv_heads: 1,
                head_dim: hd,
                scale: 0.125,
                window,
                softcap,
            };
            let whole = attend(
                &q,
                &[SeqSpan {
                    start: 0,
                    len: n,
                    pos: 0,
                }],
                &[(&k16[..], &v16[..])],
                shape,
            );
            for pos in [0, 1, 17, 39] {
                let expect = naive(&q[pos * hd..], &k, &v, pos, hd, window, softcap);
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
