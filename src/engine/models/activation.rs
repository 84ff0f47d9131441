//! The gate activations of gated MLPs, in f32 formulas the compiler vectorizes.

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Activation {
    Silu,
    /// tanh approximation, as Gemma uses.
    Gelu,
}

/// GELU's tanh approximation with `tanh(x) = 1 − 2 / (e^{2x} + 1)` and `e^y` from Cephes'
/// `expf` polynomial, in plain f32 arithmetic the compiler turns into SIMD: libm's `tanhf` (with
/// its `expm1f`) was 13% of a Gemma 3 prefill on two threads. Within 1e-6 of candle's formula
/// (tested); llama.cpp itself reads GELU from an f16 table.
#[inline(always)]
pub(super) fn gelu_vectorizable(v: f32) -> f32 {
    const SQRT_TWO_OVER_PI: f32 =
        std::f32::consts::FRAC_2_SQRT_PI * std::f32::consts::FRAC_1_SQRT_2;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let x = (SQRT_TWO_OVER_PI * v * (1.0 + 0.044715 * v * v)).clamp(-9.0, 9.0);
    let y = 2.0 * x;
    // e^y = 2^n · e^r with |r| ≤ ln 2 / 2.
    let n = (y * std::f32::consts::LOG2_E + 0.5).floor();
    let r = y - n * LN2_HI - n * LN2_LO;
    let p = 1.987_569_1e-4;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 0.5;
    let er = p * r * r + r + 1.0;
    let e = er * f32::from_bits(((n as i32 + 127) as u32) << 23);
    let tanh = 1.0 - 2.0 / (e + 1.0);
    0.5 * v * (1.0 + tanh)
}

impl Activation {
    /// candle's f32 definitions (`silu`, and `gelu`'s tanh approximation).
    pub(super) fn apply(self, v: f32) -> f32 {
        match self {
            Activation::Silu => v / (1.0 + (-v).exp()),
            Activation::Gelu => {
                let sqrt_two_over_pi =
                    std::f32::consts::FRAC_2_SQRT_PI * std::f32::consts::FRAC_1_SQRT_2;
                0.5 * v * (1.0 + f32::tanh(sqrt_two_over_pi * v * (1.0 + 0.044715 * v * v)))
            }
        }
    }
}
