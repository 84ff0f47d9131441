//! Weights in Lantern's layout: each GGUF type repacked once at load into groups of eight
//! interleaved rows (the tiles the kernels read), and read back row by row.

use candle_core::quantized::GgmlDType;
use half::f16;

use super::tiles;
use super::tiles::{Q2Kx8, Q3Kx8, Q4Kx8, Q5Kx8, Q5x8, Q6Kx8};
use super::{Q4_1x8, Q8_0x8, LANES, QK};

pub(super) enum CpuWeights {
    Q4_1(Vec<Q4_1x8>),
    /// Q4_0 in the Q4_1 layout: `d·(q − 8) = d·q + m` with `m = −8d` (exact in f16); its offset
    /// uses the exact activation sum, as ggml's integer `(q − 8)·a` does.
    Q4_0(Vec<Q4_1x8>),
    Q8_0(Vec<Q8_0x8>),
    Q4K(Vec<Q4Kx8>),
    Q5K(Vec<Q5Kx8>),
    Q6K(Vec<Q6Kx8>),
    Q3K(Vec<Q3Kx8>),
    Q2K(Vec<Q2Kx8>),
    Q5_0(Vec<Q5x8<false>>),
    Q5_1(Vec<Q5x8<true>>),
}

impl CpuWeights {
    /// The K-quants that meet activations quantized as ggml's Q8_K, as llama.cpp's do. Q4_K keeps
    /// per-32 activations: with Q8_K it moved away from llama.cpp on SmolLM2 (mean |Δ logprob|
    /// 0.051 → 0.063) and from the float64 pass on Qwen3-MoE (past 0.05), where Q3_K, Q5_K and
    /// Q6_K moved closer (Q6_K's one disagreeing token with it).
    pub(super) fn takes_q8_k(&self) -> bool {
        matches!(
            self,
            Self::Q2K(_) | Self::Q3K(_) | Self::Q5K(_) | Self::Q6K(_)
        )
    }

    /// Lantern's layout of a CPU tensor, or None for a type its kernels do not cover.
    pub(super) fn repack(dtype: GgmlDType, bytes: &[u8], n: usize, k: usize) -> Option<Self> {
        Some(match dtype {
            GgmlDType::Q4_1 => Self::Q4_1(repack_q4_1(bytes, n, k)),
            GgmlDType::Q4_0 => Self::Q4_0(repack_q4_1(&q4_0_as_q4_1(bytes)?, n, k)),
            GgmlDType::Q8_0 => Self::Q8_0(repack_q8_0(bytes, n, k)),
            GgmlDType::Q4K => Self::Q4K(tiles::repack_q4_k(bytes, n, k)),
            GgmlDType::Q5K => Self::Q5K(tiles::repack_q5_k(bytes, n, k)),
            GgmlDType::Q6K => Self::Q6K(tiles::repack_q6_k(bytes, n, k)),
            GgmlDType::Q3K => Self::Q3K(tiles::repack_q3_k(bytes, n, k)),
            GgmlDType::Q2K => Self::Q2K(tiles::repack_q2_k(bytes, n, k)),
            GgmlDType::Q5_0 => Self::Q5_0(tiles::repack_q5_0(bytes, n, k)),
            GgmlDType::Q5_1 => Self::Q5_1(tiles::repack_q5_1(bytes, n, k)),
            _ => return None,
        })
    }

    /// `bytes` (GGUF rows of `k` values) repacked a slice of rows at a time, with room reserved
    /// for the whole: the caller learns through `done(consumed)` how many source bytes are
    /// finished with, so the mapped pages can go back while the rest is still being read.
    pub(super) fn repack_in_slices(
        dtype: GgmlDType,
        bytes: &[u8],
        n: usize,
        k: usize,
        slice_bytes: usize,
        mut done: impl FnMut(usize),
    ) -> Option<Self> {
        let row_bytes = bytes.len() / n.max(1);
        let slice_rows = (slice_bytes / row_bytes.max(1) / LANES * LANES).max(LANES);
        let mut all: Option<Self> = None;
        for r0 in (0..n).step_by(slice_rows) {
            let rows = slice_rows.min(n - r0);
            let part = Self::repack(
                dtype,
                &bytes[r0 * row_bytes..(r0 + rows) * row_bytes],
                rows,
                k,
            )?;
            match &mut all {
                None => {
                    let mut first = part;
                    first.reserve_groups(n.div_ceil(LANES) * first.blocks_per_row(k));
                    all = Some(first);
                }
                Some(w) => {
                    w.append(part);
                }
            }
            done((r0 + rows) * row_bytes);
        }
        all
    }

    /// Room for `total` tiles in all.
    fn reserve_groups(&mut self, total: usize) {
        macro_rules! reserve {
            ($($v:ident),*) => {
                match self { $(Self::$v(t) => t.reserve_exact(total.saturating_sub(t.len())),)* }
            };
        }
        reserve!(Q4_1, Q4_0, Q8_0, Q4K, Q5K, Q6K, Q3K, Q2K, Q5_0, Q5_1)
    }

    /// `other`'s rows after these; both hold whole groups of eight rows. False (and nothing
    /// changed) when the layouts differ.
    pub(super) fn append(&mut self, other: Self) -> bool {
        macro_rules! append {
            ($($v:ident),*) => {
                match (self, other) {
                    $((Self::$v(a), Self::$v(b)) => a.extend(b),)*
                    _ => return false,
                }
            };
        }
        append!(Q4_1, Q4_0, Q8_0, Q4K, Q5K, Q6K, Q3K, Q2K, Q5_0, Q5_1);
        true
    }

    /// Row `row` dequantized with ggml's formulas (an embedding lookup, the tests' oracle).
    pub(super) fn row(&self, row: usize, k: usize) -> Vec<f32> {
        let (g, lane, kb) = (row / LANES, row % LANES, self.blocks_per_row(k));
        let f = |bits: u16| f16::from_bits(bits).to_f32();
        let mut out = Vec::with_capacity(k);
        match self {
            Self::Q4_1(b) | Self::Q4_0(b) => {
                for x in &b[g * kb..(g + 1) * kb] {
                    let (d, m) = (f(x.d[lane]), f(x.m[lane]));
                    let byte = |e: usize| x.qs[32 * (e / 4) + 4 * lane + e % 4];
                    out.extend((0..16).map(|e| d * (byte(e) & 0xF) as f32 + m));
                    out.extend((0..16).map(|e| d * (byte(e) >> 4) as f32 + m));
                }
            }
            Self::Q8_0(b) => {
                for x in &b[g * kb..(g + 1) * kb] {
                    let d = f(x.d[lane]);
                    out.extend((0..QK).map(|e| {
                        let q = x.qs[32 * (e / 4) + 4 * lane + e % 4] as i32 - 128;
                        d * q as f32
                    }));
                }
            }
            Self::Q4K(b) => tiles::dequantize_row(&b[g * kb..(g + 1) * kb], lane, &mut out),
            Self::Q5K(b) => tiles::dequantize_row(&b[g * kb..(g + 1) * kb], lane, &mut out),
            Self::Q6K(b) => tiles::dequantize_row(&b[g * kb..(g + 1) * kb], lane, &mut out),
            Self::Q3K(b) => tiles::dequantize_row(&b[g * kb..(g + 1) * kb], lane, &mut out),
            Self::Q2K(b) => tiles::dequantize_row(&b[g * kb..(g + 1) * kb], lane, &mut out),
            Self::Q5_0(b) => tiles::dequantize_row(&b[g * kb..(g + 1) * kb], lane, &mut out),
            Self::Q5_1(b) => tiles::dequantize_row(&b[g * kb..(g + 1) * kb], lane, &mut out),
        }
        out
    }

    /// Weight blocks per row in one group of eight rows.
    pub(super) fn blocks_per_row(&self, k: usize) -> usize {
        match self {
            Self::Q4K(_) | Self::Q5K(_) | Self::Q6K(_) | Self::Q3K(_) | Self::Q2K(_) => k / 256,
            _ => k / QK,
        }
    }
}

/// GGUF Q4_1 blocks (f16 d, f16 m, 16 bytes) → groups of eight interleaved rows; rows past
/// `n` (padding to a multiple of eight) are zero.
pub(super) fn repack_q4_1(bytes: &[u8], n: usize, k: usize) -> Vec<Q4_1x8> {
    let kb = k / QK;
    let block = |row: usize, b: usize| -> Option<&[u8]> {
        (row < n).then(|| &bytes[(row * kb + b) * 20..(row * kb + b + 1) * 20])
    };
    let mut out = Vec::with_capacity(n.div_ceil(LANES) * kb);
    for g in 0..n.div_ceil(LANES) {
        for b in 0..kb {
            let mut x = Q4_1x8 {
                qs: [0; 128],
                d: [0; LANES],
                m: [0; LANES],
            };
            for r in 0..LANES {
                let Some(src) = block(g * LANES + r, b) else {
                    continue;
                };
                x.d[r] = u16::from_le_bytes([src[0], src[1]]);
                x.m[r] = u16::from_le_bytes([src[2], src[3]]);
                for p in 0..4 {
                    for e in 0..4 {
                        x.qs[32 * p + 4 * r + e] = src[4 + 4 * p + e];
                    }
                }
            }
            out.push(x);
        }
    }
    out
}

/// GGUF Q4_0 blocks (f16 d, 16 bytes) rewritten as Q4_1 blocks (f16 d, f16 m = −8d, the same
/// nibbles); None when a scale is so large that −8d leaves f16's range.
pub(super) fn q4_0_as_q4_1(bytes: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(bytes.len() / 18 * 20);
    for block in bytes.chunks_exact(18) {
        let d = f16::from_bits(u16::from_le_bytes([block[0], block[1]]));
        let m = f16::from_f32(-8.0 * d.to_f32());
        if !m.is_finite() || m.to_f32() != -8.0 * d.to_f32() {
            return None;
        }
        out.extend_from_slice(&block[..2]);
        out.extend_from_slice(&m.to_bits().to_le_bytes());
        out.extend_from_slice(&block[2..]);
    }
    Some(out)
}

/// GGUF Q8_0 blocks (f16 d, 32 signed bytes) → groups of eight interleaved rows, values + 128.
pub(super) fn repack_q8_0(bytes: &[u8], n: usize, k: usize) -> Vec<Q8_0x8> {
    let kb = k / QK;
    let mut out = Vec::with_capacity(n.div_ceil(LANES) * kb);
    for g in 0..n.div_ceil(LANES) {
        for b in 0..kb {
            let mut x = Q8_0x8 {
                qs: [128; 256],
                d: [0; LANES],
            };
            for r in 0..LANES {
                let row = g * LANES + r;
                if row >= n {
                    continue;
                }
                let src = &bytes[(row * kb + b) * 34..(row * kb + b + 1) * 34];
                x.d[r] = u16::from_le_bytes([src[0], src[1]]);
                for kk in 0..8 {
                    for e in 0..4 {
                        x.qs[32 * kk + 4 * r + e] = (src[2 + 4 * kk + e] as i8 as i16 + 128) as u8;
                    }
                }
            }
            out.push(x);
        }
    }
    out
}
