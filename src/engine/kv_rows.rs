//! How the CPU KV cache stores its rows: f16 (as llama.cpp's default cache), or 8-bit blocks of
//! 32 values with one f16 scale (ggml's q8_0, llama.cpp's `--cache-type-k q8_0`), which holds a
//! long context in about half the memory of f16 and reads half the bytes per decode step.

use half::f16;
use serde::{Deserialize, Serialize};

/// Values per q8_0 block (one scale each).
pub const Q8_BLOCK: usize = 32;

/// The cache's storage type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
pub enum KvType {
    #[default]
    #[serde(rename = "f16")]
    #[value(name = "f16")]
    F16,
    #[serde(rename = "q8_0")]
    #[value(name = "q8_0")]
    Q8_0,
}

impl KvType {
    pub fn name(self) -> &'static str {
        match self {
            Self::F16 => "f16",
            Self::Q8_0 => "q8_0",
        }
    }

    /// Whether rows of `head_dim` values per head can be stored this way: q8_0 blocks must not
    /// straddle two heads.
    pub fn fits(self, head_dim: usize) -> bool {
        match self {
            Self::F16 => true,
            Self::Q8_0 => head_dim.is_multiple_of(Q8_BLOCK),
        }
    }
}

/// A layer's keys or values on the CPU, position-major, in one storage type.
pub trait RowStore {
    fn with_capacity(values: usize) -> Self;
    /// Keep the first `values` (whole rows).
    fn keep_rows(&mut self, values: usize);
    /// Append whole rows, rounded to the store's type.
    fn push_rows(&mut self, x: &[f32]);
}

impl RowStore for Vec<f16> {
    fn with_capacity(values: usize) -> Self {
        Vec::with_capacity(values)
    }
    fn keep_rows(&mut self, values: usize) {
        self.truncate(values);
    }
    fn push_rows(&mut self, x: &[f32]) {
        self.extend(x.iter().map(|&v| f16::from_f32(v)));
    }
}

impl RowStore for Q8Rows {
    fn with_capacity(values: usize) -> Self {
        Q8Rows::with_capacity(values)
    }
    fn keep_rows(&mut self, values: usize) {
        self.truncate(values);
    }
    fn push_rows(&mut self, x: &[f32]) {
        self.extend(x);
    }
}

/// Rows of q8_0 blocks: `qs[i]` is value i, `d[i / 32]` its block's scale.
#[derive(Debug, Clone, Default)]
pub struct Q8Rows {
    pub qs: Vec<i8>,
    pub d: Vec<f16>,
}

impl Q8Rows {
    pub fn with_capacity(values: usize) -> Self {
        Self {
            qs: Vec::with_capacity(values),
            d: Vec::with_capacity(values / Q8_BLOCK),
        }
    }

    /// Keep the first `values` (a multiple of the block).
    pub fn truncate(&mut self, values: usize) {
        self.qs.truncate(values);
        self.d.truncate(values / Q8_BLOCK);
    }

    /// Append `x` (a multiple of the block) quantized as ggml's `quantize_row_q8_0_ref` does:
    /// `d = max |x| / 127`, each value `round(x / d)`, the scale kept as f16.
    pub fn extend(&mut self, x: &[f32]) {
        debug_assert!(x.len().is_multiple_of(Q8_BLOCK));
        for block in x.chunks_exact(Q8_BLOCK) {
            let amax = block.iter().fold(0f32, |m, v| m.max(v.abs()));
            let d = amax / 127.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            self.qs.extend(block.iter().map(|v| (v * id).round() as i8));
            self.d.push(f16::from_f32(d));
        }
    }

    pub fn prefix(&self, values: usize, reserve: usize) -> Self {
        let mut out = Self::with_capacity(reserve.max(values));
        out.qs.extend_from_slice(&self.qs[..values]);
        out.d.extend_from_slice(&self.d[..values / Q8_BLOCK]);
        out
    }

    pub fn bytes(&self) -> usize {
        self.qs.capacity() + 2 * self.d.capacity()
    }

    pub fn view(&self) -> Q8<'_> {
        Q8 {
            qs: &self.qs,
            d: &self.d,
        }
    }
}

/// A borrowed run of q8_0 values starting at a block boundary.
#[derive(Debug, Clone, Copy)]
pub struct Q8<'a> {
    pub qs: &'a [i8],
    pub d: &'a [f16],
}

impl Q8<'_> {
    /// Value `i`: its 8-bit value times its block's scale.
    #[inline(always)]
    pub fn get(&self, i: usize) -> f32 {
        self.qs[i] as f32 * self.d[i / Q8_BLOCK].to_f32()
    }
}

/// One layer's keys or values on the CPU, as attention reads them.
#[derive(Debug, Clone, Copy)]
pub enum HostRows<'a> {
    F16(&'a [f16]),
    Q8(Q8<'a>),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q8_0_rows_are_ggmls_blocks_and_truncate_by_block() {
        let x: Vec<f32> = (0..64).map(|i| (i as f32 - 20.0) / 7.0).collect();
        let mut rows = Q8Rows::default();
        rows.extend(&x);
        assert_eq!((rows.qs.len(), rows.d.len()), (64, 2));
        let view = rows.view();
        for (i, v) in x.iter().enumerate() {
            let step = view.d[i / 32].to_f32();
            assert!((view.get(i) - v).abs() <= 0.5 * step + 1e-3, "{i}: {v}");
        }
        // The largest value of a block maps to ±127.
        assert_eq!(rows.qs[0], -127);
        assert_eq!(rows.qs[63], 127);
        rows.extend(&[0.0; 32]);
        assert_eq!(rows.view().get(70), 0.0, "an all-zero block has scale 0");
        rows.truncate(32);
        assert_eq!((rows.qs.len(), rows.d.len()), (32, 1));
        let copy = rows.prefix(32, 128);
        assert_eq!(copy.qs, rows.qs);
        assert!(copy.qs.capacity() >= 128);
        assert!(KvType::Q8_0.fits(64) && !KvType::Q8_0.fits(80) && KvType::F16.fits(80));
    }
}
