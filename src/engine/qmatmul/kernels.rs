//! The SIMD kernels over the interleaved layout, and a scalar twin that computes the same thing
//! lane by lane (the portable path, and the oracle the SIMD kernels are tested against).

use half::f16;

use super::tiles::Tile;
use super::{ActBlock, Q4_1x8, Q8_0x8, LANES, QK, ROW_GROUP};

#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum Kernel {
    Scalar,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    /// AVX-512 VNNI on 256-bit registers: `vpdpbusd` instead of three AVX2 instructions.
    #[cfg(target_arch = "x86_64")]
    Vnni,
}

pub(super) fn select_kernel() -> Kernel {
    #[cfg(target_arch = "x86_64")]
    {
        let avx2 = std::is_x86_feature_detected!("avx2")
            && std::is_x86_feature_detected!("fma")
            && std::is_x86_feature_detected!("f16c");
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

pub(super) type Rows<'a, const NR: usize> = [&'a [ActBlock]; NR];
pub(super) type Out = [[f32; LANES]; ROW_GROUP];

impl Kernel {
    /// Activation rows per pass over a weight group: eight accumulators per row pair need the
    /// 32 vector registers of AVX-512; with 16, four rows keep everything in registers.
    pub(super) fn row_group(self) -> usize {
        match self {
            #[cfg(target_arch = "x86_64")]
            Kernel::Vnni => ROW_GROUP,
            _ => 4,
        }
    }

    /// One block of activations to 8 bits: `d = max |v| / 127` and `round(v / d)`, rounding
    /// half away from zero as `f32::round` does (every path gives the same bytes).
    #[inline]
    pub(super) fn quantize_block(self, v: &[f32; QK]) -> (f32, [i8; QK]) {
        match self {
            Kernel::Scalar => scalar::quantize_block(v),
            // SAFETY: as above (AVX2 is part of both).
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 | Kernel::Vnni => unsafe { x86::quantize_block(v) },
        }
    }

    /// `EXACT`: the offset term takes the exact activation sum (Q4_0's `m = −8d`) rather than
    /// ggml's f16-rounded one (Q4_1's own minimum).
    #[inline]
    pub(super) fn q4_1<const NR: usize, const EXACT: bool>(
        self,
        w: &[Q4_1x8],
        a: Rows<NR>,
        out: &mut Out,
    ) {
        match self {
            Kernel::Scalar => scalar::q4_1::<NR, EXACT>(w, a, out),
            // SAFETY: chosen only when the CPU reports these features.
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => unsafe { x86::q4_1_avx2::<NR, EXACT>(w, a, out) },
            #[cfg(target_arch = "x86_64")]
            Kernel::Vnni => unsafe { x86::q4_1_vnni::<NR, EXACT>(w, a, out) },
        }
    }

    /// Any tile type (the K-quants, Q5_0, Q5_1).
    #[inline]
    pub(super) fn tiles<T: Tile, const NR: usize>(self, w: &[T], a: Rows<NR>, out: &mut Out) {
        match self {
            Kernel::Scalar => scalar::tiles(w, a, out),
            // SAFETY: as above.
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => unsafe { x86::tiles_avx2(w, a, out) },
            #[cfg(target_arch = "x86_64")]
            Kernel::Vnni => unsafe { x86::tiles_vnni(w, a, out) },
        }
    }

    #[inline]
    pub(super) fn q8_0<const NR: usize>(self, w: &[Q8_0x8], a: Rows<NR>, out: &mut Out) {
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

/// The same arithmetic as the SIMD kernels, lane by lane, for CPUs without AVX2.
mod scalar {
    use super::*;

    pub(super) fn quantize_block(v: &[f32; QK]) -> (f32, [i8; QK]) {
        let amax = v.iter().fold(0f32, |m, &a| m.max(a.abs()));
        let d = amax / 127.0;
        let id = if d > 0.0 { 1.0 / d } else { 0.0 };
        (d, std::array::from_fn(|i| (v[i] * id).round() as i8))
    }

    pub(super) fn q4_1<const NR: usize, const EXACT: bool>(
        w: &[Q4_1x8],
        a: Rows<NR>,
        out: &mut Out,
    ) {
        for r in 0..NR {
            let mut acc = [0f32; LANES];
            let mut off = [0f32; LANES];
            for (g, ab) in w.iter().zip(a[r]) {
                for lane in 0..LANES {
                    let mut isum = 0i32;
                    for p in 0..4 {
                        for e in 0..4 {
                            let byte = g.qs[32 * p + 4 * lane + e];
                            isum += (byte & 0x0F) as i32 * ab.qs[4 * p + e] as i32;
                            isum += (byte >> 4) as i32 * ab.qs[16 + 4 * p + e] as i32;
                        }
                    }
                    let d = f16::from_bits(g.d[lane]).to_f32();
                    let m = f16::from_bits(g.m[lane]).to_f32();
                    acc[lane] += isum as f32 * (d * ab.d);
                    off[lane] += m * if EXACT { ab.sum } else { ab.s };
                }
            }
            for lane in 0..LANES {
                out[r][lane] = acc[lane] + off[lane];
            }
        }
    }

    /// Per group: the integer dot product less the zero point times the activation sum, scaled
    /// by `d · sc` and the activation scale; the minimum term from the exact activation sum.
    pub(super) fn tiles<T: Tile, const NR: usize>(w: &[T], a: Rows<NR>, out: &mut Out) {
        for r in 0..NR {
            let mut acc = [0f32; LANES];
            let mut off = [0f32; LANES];
            for (t, tile) in w.iter().enumerate() {
                for j in 0..T::SUBS {
                    let ab = &a[r][t * T::SUBS + j];
                    for lane in 0..LANES {
                        let d = f16::from_bits(tile.d()[lane]).to_f32();
                        let dmin = f16::from_bits(tile.dmin()[lane]).to_f32();
                        let mut s = [0i32; 2];
                        for e in 0..QK {
                            s[e / 16] += tile.value(j, lane, e) * ab.qs[e] as i32;
                        }
                        if T::HALVES {
                            for (h, &sh) in s.iter().enumerate() {
                                let i = 2 * j + h;
                                let t = sh - T::ZERO * ab.half[h];
                                let dsc = d * tile.sc(i)[lane] as f32;
                                acc[lane] += t as f32 * (dsc * ab.d);
                                if T::MIN {
                                    let dmn = dmin * tile.mn(i)[lane] as f32;
                                    off[lane] += dmn * (ab.d * ab.half[h] as f32);
                                }
                            }
                        } else {
                            let t = s[0] + s[1] - T::ZERO * (ab.half[0] + ab.half[1]);
                            let dsc = d * tile.sc(j)[lane] as f32;
                            acc[lane] += t as f32 * (dsc * ab.d);
                            if T::MIN {
                                off[lane] += dmin * tile.mn(j)[lane] as f32 * ab.sum;
                            }
                        }
                    }
                }
            }
            for lane in 0..LANES {
                out[r][lane] = acc[lane] - off[lane];
            }
        }
    }

    pub(super) fn q8_0<const NR: usize>(w: &[Q8_0x8], a: Rows<NR>, out: &mut Out) {
        for r in 0..NR {
            let mut acc = [0f32; LANES];
            let mut off = [0f32; LANES];
            for (g, ab) in w.iter().zip(a[r]) {
                for lane in 0..LANES {
                    let mut isum = 0i32;
                    for kk in 0..8 {
                        for e in 0..4 {
                            isum += g.qs[32 * kk + 4 * lane + e] as i32 * ab.qs[4 * kk + e] as i32;
                        }
                    }
                    let d = f16::from_bits(g.d[lane]).to_f32();
                    acc[lane] += isum as f32 * (d * ab.d);
                    off[lane] += (d * -128.0) * ab.sum;
                }
            }
            for lane in 0..LANES {
                out[r][lane] = acc[lane] + off[lane];
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::*;
    use std::arch::x86_64::*;

    /// `acc + Σ` of four u8 × i8 products per i32 lane (AVX2: three instructions).
    #[inline(always)]
    unsafe fn dot_avx2(acc: __m256i, w: __m256i, a: __m256i) -> __m256i {
        let p16 = _mm256_maddubs_epi16(w, a);
        _mm256_add_epi32(acc, _mm256_madd_epi16(p16, _mm256_set1_epi16(1)))
    }

    /// The same in one VNNI instruction.
    #[inline(always)]
    unsafe fn dot_vnni(acc: __m256i, w: __m256i, a: __m256i) -> __m256i {
        _mm256_dpbusd_epi32(acc, w, a)
    }

    /// The scalar `quantize_block` eight lanes at a time. Rounding half away from zero:
    /// truncate, then step away from zero where the (exact) remainder is at least one half.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn quantize_block(v: &[f32; QK]) -> (f32, [i8; QK]) {
        let p = v.as_ptr();
        let x = [
            _mm256_loadu_ps(p),
            _mm256_loadu_ps(p.add(8)),
            _mm256_loadu_ps(p.add(16)),
            _mm256_loadu_ps(p.add(24)),
        ];
        let sign = _mm256_set1_ps(-0.0);
        let mut m = _mm256_andnot_ps(sign, x[0]);
        for xi in &x[1..] {
            m = _mm256_max_ps(m, _mm256_andnot_ps(sign, *xi));
        }
        let m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps::<1>(m));
        let m2 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        let amax = _mm_cvtss_f32(_mm_max_ss(m2, _mm_movehdup_ps(m2)));
        let d = amax / 127.0;
        let id = _mm256_set1_ps(if d > 0.0 { 1.0 / d } else { 0.0 });
        let (half, one) = (_mm256_set1_ps(0.5), _mm256_set1_ps(1.0));
        let mut ints = [_mm256_setzero_si256(); 4];
        for (int, xi) in ints.iter_mut().zip(x) {
            let s = _mm256_mul_ps(xi, id);
            let t = _mm256_round_ps::<{ _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC }>(s);
            let away =
                _mm256_cmp_ps::<_CMP_GE_OQ>(_mm256_andnot_ps(sign, _mm256_sub_ps(s, t)), half);
            let step = _mm256_and_ps(away, _mm256_or_ps(one, _mm256_and_ps(s, sign)));
            *int = _mm256_cvtps_epi32(_mm256_add_ps(t, step));
        }
        // The packs work within 128-bit halves: put the four-byte groups back in order.
        let bytes = _mm256_packs_epi16(
            _mm256_packs_epi32(ints[0], ints[1]),
            _mm256_packs_epi32(ints[2], ints[3]),
        );
        let ordered = _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        let mut qs = [0i8; QK];
        _mm256_storeu_si256(qs.as_mut_ptr() as *mut __m256i, ordered);
        (d, qs)
    }

    /// Four activation bytes starting at `i`, in every lane.
    #[inline(always)]
    unsafe fn bcast4(qs: &[i8; 32], i: usize) -> __m256i {
        _mm256_set1_epi32((qs.as_ptr().add(i) as *const i32).read_unaligned())
    }

    #[inline(always)]
    unsafe fn scales(bits: &[u16; LANES]) -> __m256 {
        _mm256_cvtph_ps(_mm_loadu_si128(bits.as_ptr() as *const __m128i))
    }

    #[inline(always)]
    unsafe fn q4_1_body<const NR: usize, const EXACT: bool>(
        w: &[Q4_1x8],
        a: Rows<NR>,
        out: &mut Out,
        dot: impl Fn(__m256i, __m256i, __m256i) -> __m256i,
    ) {
        let mask = _mm256_set1_epi8(0x0F);
        let mut acc = [_mm256_setzero_ps(); NR];
        let mut off = [_mm256_setzero_ps(); NR];
        for (b, g) in w.iter().enumerate() {
            let mut lo = [_mm256_setzero_si256(); 4];
            let mut hi = [_mm256_setzero_si256(); 4];
            for p in 0..4 {
                let raw = _mm256_load_si256(g.qs.as_ptr().add(32 * p) as *const __m256i);
                lo[p] = _mm256_and_si256(raw, mask);
                hi[p] = _mm256_and_si256(_mm256_srli_epi16(raw, 4), mask);
            }
            let d = scales(&g.d);
            let m = scales(&g.m);
            for r in 0..NR {
                let ab = a[r].get_unchecked(b);
                // Two independent chains (exact: integer sums), so the dot products of a row
                // do not wait on each other's latency.
                let (mut s0, mut s1) = (_mm256_setzero_si256(), _mm256_setzero_si256());
                for p in 0..4 {
                    s0 = dot(s0, lo[p], bcast4(&ab.qs, 4 * p));
                    s1 = dot(s1, hi[p], bcast4(&ab.qs, 16 + 4 * p));
                }
                let isum = _mm256_add_epi32(s0, s1);
                let scale = _mm256_mul_ps(d, _mm256_set1_ps(ab.d));
                acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), scale, acc[r]);
                let s = if EXACT { ab.sum } else { ab.s };
                off[r] = _mm256_fmadd_ps(m, _mm256_set1_ps(s), off[r]);
            }
        }
        for r in 0..NR {
            _mm256_storeu_ps(out[r].as_mut_ptr(), _mm256_add_ps(acc[r], off[r]));
        }
    }

    /// AVX2's `maddubs` saturates 255 × 127 × 2, so the biased weights go back to signed and
    /// their sign moves onto the activations instead.
    #[inline(always)]
    unsafe fn dot_signed_avx2(acc: __m256i, biased_w: __m256i, a: __m256i) -> __m256i {
        let w = _mm256_xor_si256(biased_w, _mm256_set1_epi8(-128));
        dot_avx2(acc, _mm256_sign_epi8(w, w), _mm256_sign_epi8(a, w))
    }

    /// `UNBIASED`: the dot product already undid the +128 bias, so no correction is added.
    #[inline(always)]
    unsafe fn q8_0_body<const NR: usize, const UNBIASED: bool>(
        w: &[Q8_0x8],
        a: Rows<NR>,
        out: &mut Out,
        dot: impl Fn(__m256i, __m256i, __m256i) -> __m256i,
    ) {
        let mut acc = [_mm256_setzero_ps(); NR];
        let mut off = [_mm256_setzero_ps(); NR];
        let minus128 = _mm256_set1_ps(-128.0);
        for (b, g) in w.iter().enumerate() {
            let d = scales(&g.d);
            let correction = _mm256_mul_ps(d, minus128);
            for r in 0..NR {
                let ab = a[r].get_unchecked(b);
                let mut sums = [_mm256_setzero_si256(); 2];
                for kk in 0..8 {
                    let wq = _mm256_load_si256(g.qs.as_ptr().add(32 * kk) as *const __m256i);
                    sums[kk % 2] = dot(sums[kk % 2], wq, bcast4(&ab.qs, 4 * kk));
                }
                let isum = _mm256_add_epi32(sums[0], sums[1]);
                let scale = _mm256_mul_ps(d, _mm256_set1_ps(ab.d));
                acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), scale, acc[r]);
                if !UNBIASED {
                    off[r] = _mm256_fmadd_ps(correction, _mm256_set1_ps(ab.sum), off[r]);
                }
            }
        }
        for r in 0..NR {
            _mm256_storeu_ps(out[r].as_mut_ptr(), _mm256_add_ps(acc[r], off[r]));
        }
    }

    /// Eight i8 scales as f32.
    #[inline(always)]
    unsafe fn int8s(v: &[i8; LANES]) -> __m256 {
        let bytes = _mm_loadl_epi64(v.as_ptr() as *const __m128i);
        _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(bytes))
    }

    /// The scalar `tiles`, eight rows at once; each sub-block's values are decoded once for all
    /// `NR` activation rows.
    #[inline(always)]
    unsafe fn tiles_body<T: Tile, const NR: usize>(
        w: &[T],
        a: Rows<NR>,
        out: &mut Out,
        dot: impl Fn(__m256i, __m256i, __m256i) -> __m256i,
    ) {
        let mut acc = [_mm256_setzero_ps(); NR];
        let mut off = [_mm256_setzero_ps(); NR];
        for (t, tile) in w.iter().enumerate() {
            let d = scales(tile.d());
            let dmin = if T::MIN {
                scales(tile.dmin())
            } else {
                _mm256_setzero_ps()
            };
            for j in 0..T::SUBS {
                let v = tile.values(j);
                let groups = if T::HALVES { 2 } else { 1 };
                let mut dsc = [_mm256_setzero_ps(); 2];
                let mut dmn = [_mm256_setzero_ps(); 2];
                for h in 0..groups {
                    let i = if T::HALVES { 2 * j + h } else { j };
                    dsc[h] = _mm256_mul_ps(d, int8s(tile.sc(i)));
                    if T::MIN {
                        dmn[h] = _mm256_mul_ps(dmin, int8s(tile.mn(i)));
                    }
                }
                for r in 0..NR {
                    let ab = a[r].get_unchecked(t * T::SUBS + j);
                    let (mut s0, mut s1) = (_mm256_setzero_si256(), _mm256_setzero_si256());
                    for p in 0..4 {
                        s0 = dot(s0, v[p], bcast4(&ab.qs, 4 * p));
                        s1 = dot(s1, v[4 + p], bcast4(&ab.qs, 16 + 4 * p));
                    }
                    let ad = _mm256_set1_ps(ab.d);
                    if T::HALVES {
                        let t0 = _mm256_sub_epi32(s0, _mm256_set1_epi32(T::ZERO * ab.half[0]));
                        let t1 = _mm256_sub_epi32(s1, _mm256_set1_epi32(T::ZERO * ab.half[1]));
                        let sc0 = _mm256_mul_ps(dsc[0], ad);
                        let sc1 = _mm256_mul_ps(dsc[1], ad);
                        acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(t0), sc0, acc[r]);
                        acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(t1), sc1, acc[r]);
                        if T::MIN {
                            let h0 = _mm256_set1_ps(ab.d * ab.half[0] as f32);
                            let h1 = _mm256_set1_ps(ab.d * ab.half[1] as f32);
                            off[r] = _mm256_fmadd_ps(dmn[0], h0, off[r]);
                            off[r] = _mm256_fmadd_ps(dmn[1], h1, off[r]);
                        }
                    } else {
                        let zero = T::ZERO * (ab.half[0] + ab.half[1]);
                        let t = _mm256_sub_epi32(_mm256_add_epi32(s0, s1), _mm256_set1_epi32(zero));
                        let sc = _mm256_mul_ps(dsc[0], ad);
                        acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(t), sc, acc[r]);
                        if T::MIN {
                            off[r] = _mm256_fmadd_ps(dmn[0], _mm256_set1_ps(ab.sum), off[r]);
                        }
                    }
                }
            }
        }
        for r in 0..NR {
            _mm256_storeu_ps(out[r].as_mut_ptr(), _mm256_sub_ps(acc[r], off[r]));
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn tiles_avx2<T: Tile, const NR: usize>(w: &[T], a: Rows<NR>, out: &mut Out) {
        tiles_body::<T, NR>(w, a, out, |acc, x, y| dot_avx2(acc, x, y))
    }

    #[target_feature(enable = "avx2,fma,f16c,avx512vnni,avx512vl")]
    pub(super) unsafe fn tiles_vnni<T: Tile, const NR: usize>(w: &[T], a: Rows<NR>, out: &mut Out) {
        tiles_body::<T, NR>(w, a, out, |acc, x, y| dot_vnni(acc, x, y))
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn q4_1_avx2<const NR: usize, const EXACT: bool>(
        w: &[Q4_1x8],
        a: Rows<NR>,
        out: &mut Out,
    ) {
        q4_1_body::<NR, EXACT>(w, a, out, |acc, x, y| dot_avx2(acc, x, y))
    }

    #[target_feature(enable = "avx2,fma,f16c,avx512vnni,avx512vl")]
    pub(super) unsafe fn q4_1_vnni<const NR: usize, const EXACT: bool>(
        w: &[Q4_1x8],
        a: Rows<NR>,
        out: &mut Out,
    ) {
        q4_1_body::<NR, EXACT>(w, a, out, |acc, x, y| dot_vnni(acc, x, y))
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn q8_0_avx2<const NR: usize>(w: &[Q8_0x8], a: Rows<NR>, out: &mut Out) {
        q8_0_body::<NR, true>(w, a, out, |acc, x, y| dot_signed_avx2(acc, x, y))
    }

    #[target_feature(enable = "avx2,fma,f16c,avx512vnni,avx512vl")]
    pub(super) unsafe fn q8_0_vnni<const NR: usize>(w: &[Q8_0x8], a: Rows<NR>, out: &mut Out) {
        q8_0_body::<NR, false>(w, a, out, |acc, x, y| dot_vnni(acc, x, y))
    }
}
