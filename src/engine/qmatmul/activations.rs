//! Activations quantized to 8 bits for the integer dot products, each weight type meeting the
//! activation type ggml gives it: Q8_1 blocks of 32 (f16-rounded scales) for the 32-element
//! types, Q8_K blocks of 256 (one f32 scale) for the K-quants but Q4_K (see
//! `CpuWeights::takes_q8_k`), so Lantern's sums carry the same rounding as llama.cpp's.

use crate::engine::pass_threads;
use half::f16;

use super::kernels::Kernel;
use super::{ActBlock, QK};

/// Values per Q8_K block.
const QK_K: usize = 256;

/// ggml's x86 `quantize_row_q8_1`: `d = max / 127` kept as f16, `s = d · Σq` kept as f16.
/// Blocks are independent: a long input is quantized on every thread, in the same order.
pub(super) fn q8_1(kernel: Kernel, x: &[f32]) -> Vec<ActBlock> {
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
    let per_task = 256 * QK;
    pass_threads::map(x.len().div_ceil(per_task), |t| {
        let part = &x[t * per_task..((t + 1) * per_task).min(x.len())];
        part.chunks_exact(QK).map(block).collect::<Vec<_>>()
    })
    .concat()
}

/// ggml's `quantize_row_q8_K_ref` (x86 uses it as is): per 256 values the one with the largest
/// magnitude `max` (sign kept) sets `iscale = -127 / max`, values are `min(127, round(iscale ·
/// v))` rounding half to even, and the scale is `1 / iscale`, unrounded. Its blocks of 32 all
/// carry that scale, which is how the tile kernels read it.
pub(super) fn q8_k(x: &[f32]) -> Vec<ActBlock> {
    let block = |v: &[f32]| -> [ActBlock; QK_K / QK] {
        let (mut max, mut amax) = (0f32, 0f32);
        for &e in v {
            if e.abs() > amax {
                amax = e.abs();
                max = e;
            }
        }
        let (iscale, d) = if amax == 0.0 {
            (0.0, 0.0)
        } else {
            let iscale = -127.0 / max;
            (iscale, 1.0 / iscale)
        };
        std::array::from_fn(|j| {
            let qs: [i8; QK] = std::array::from_fn(|e| {
                ((iscale * v[QK * j + e]).round_ties_even() as i32).min(127) as i8
            });
            let half = |h: usize| qs[16 * h..16 * h + 16].iter().map(|&q| q as i32).sum();
            let half = [half(0), half(1)];
            let isum = (half[0] + half[1]) as f32;
            ActBlock {
                qs,
                d,
                s: d * isum,
                sum: d * isum,
                half,
            }
        })
    };
    let blocks: Vec<[ActBlock; QK_K / QK]> = if x.len() < 2 * crate::engine::host_ops::CHUNK {
        x.chunks_exact(QK_K).map(block).collect()
    } else {
        let per_task = 32 * QK_K;
        pass_threads::map(x.len().div_ceil(per_task), |t| {
            let part = &x[t * per_task..((t + 1) * per_task).min(x.len())];
            part.chunks_exact(QK_K).map(block).collect::<Vec<_>>()
        })
        .concat()
    };
    blocks.into_iter().flatten().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q8_k_blocks_are_ggml_blocks() {
        // A block whose largest magnitude is negative, one whose largest is positive (its
        // scale negative), one of zeros, and a tie rounded to even.
        let mut x: Vec<f32> = (0..QK_K).map(|i| (i as f32 - 100.0) / 10.0).collect();
        x.extend((0..QK_K).map(|i| (i as f32) / 7.0));
        x.extend([0.0; QK_K]);
        let blocks = q8_k(&x);
        assert_eq!(blocks.len(), 3 * QK_K / QK);
        // Block 0: max is 15.5 (i = 255): iscale = -127/15.5.
        let iscale = -127.0f32 / 15.5;
        assert_eq!(blocks[0].d, 1.0 / iscale);
        for (i, &v) in x[..QK_K].iter().enumerate() {
            let want = ((iscale * v).round_ties_even() as i32).min(127) as i8;
            assert_eq!(blocks[i / QK].qs[i % QK], want, "{i}");
        }
        assert_eq!(blocks[7].qs[31], -127);
        let back: f32 = blocks[8].d * blocks[8].qs[QK - 1] as f32;
        let step = blocks[8].d.abs();
        assert!(
            (back - x[QK_K + QK - 1]).abs() <= step / 2.0,
            "{back} {step}"
        );
        assert!(blocks[16..].iter().all(|b| b.d == 0.0 && b.qs == [0; QK]));
        assert_eq!(
            2.5f32.round_ties_even(),
            2.0,
            "half to even, as ggml's nearest_int"
        );
        for b in &blocks {
            let isum: i32 = b.qs.iter().map(|&q| q as i32).sum();
            assert_eq!(b.half[0] + b.half[1], isum);
        }
    }
}
