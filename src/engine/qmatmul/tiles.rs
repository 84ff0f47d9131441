//! The K-quants and the 5-bit types, repacked at load into tiles of eight interleaved rows that
//! one generic kernel reads (see `kernels::tiles`).
//!
//! Every type is expressed the same way: an unsigned stored value `u` per element, and per group
//! of 32 (or 16) elements an integer scale `sc` and minimum `mn`, with f16 `d` and `dmin` per
//! block, so that an element is `d · sc · (u − ZERO) − dmin · mn` (ggml's formulas rearranged,
//! exact in f32). The dot product with 8-bit activations then stays in the integer domain per
//! group, as ggml's does, and the tile keeps the file's bits: a tile is as large as the GGUF
//! blocks it came from, plus the 6-bit scales unpacked to bytes.
//!
//! Layout of a tile's values, shared by the types: a "segment" is 32 bytes whose byte
//! `4 · row + e` belongs to element `4p + e` of that row (segment `p` of a 32-element sub-block),
//! so one broadcast of four activation bytes meets eight rows at once.
//! - `qs` (4 bits): sub-blocks in pairs, 8 segments per pair; low nibble: the even sub-block, high
//!   nibble: the odd one.
//! - `hi1` (1 bit): 8 segments; bit `j` of a byte belongs to sub-block `j`.
//! - `hi2` (2 bits): two groups of four sub-blocks, 8 segments each; bits `2s, 2s + 1` belong to
//!   sub-block `4g + s`.
//! - The 32-element types (Q5_0, Q5_1) keep the GGUF nibble order in 4 segments (low nibble:
//!   element `i`, high: `16 + i`) and their fifth bits in one segment, bit `p` of byte `4·row + e`
//!   belonging to element `4p + e`.

use super::unpack::{
    parse_q2_k, parse_q3_k, parse_q4_k, parse_q5_0, parse_q5_1, parse_q5_k, parse_q6_k, Unpacked,
};
use super::LANES;

/// What the generic kernel needs to know of a tile type.
pub(crate) trait Tile: Copy + Send + Sync + 'static {
    /// 32-element sub-blocks in one tile, per row.
    const SUBS: usize;
    /// A scale per 16 elements (Q6_K, Q3_K, Q2_K), else per 32.
    const HALVES: bool;
    /// The integer zero point of the stored values.
    const ZERO: i32;
    /// Has a float minimum term.
    const MIN: bool;
    fn d(&self) -> &[u16; LANES];
    fn dmin(&self) -> &[u16; LANES];
    /// Integer scales of group `i` (sub-block `j`, or `2j + half`), one per row.
    fn sc(&self, i: usize) -> &[i8; LANES];
    fn mn(&self, i: usize) -> &[i8; LANES];
    /// Stored value of element `e` of sub-block `j` in row `lane` (the scalar path).
    fn value(&self, j: usize, lane: usize, e: usize) -> i32;
    /// The 8 value segments of sub-block `j`, one unsigned byte per element.
    /// # Safety
    /// AVX2 must be available.
    #[cfg(target_arch = "x86_64")]
    unsafe fn values(&self, j: usize) -> [std::arch::x86_64::__m256i; 8];
}

/// Element `e` of sub-block `j`: its byte in a segment of the interleaved layout.
fn seg_index(lane: usize, e: usize) -> usize {
    32 * (e / 4) + 4 * lane + e % 4
}

fn pack_qs(rows: &[Unpacked; LANES], qs: &mut [u8]) {
    for (lane, x) in rows.iter().enumerate() {
        for j in 0..qs.len() / 128 {
            for e in 0..32 {
                let at = 256 * (j / 2) + seg_index(lane, e);
                qs[at] |= (x.u[32 * j + e] & 0xF) << (4 * (j % 2));
            }
        }
    }
}

fn pack_hi1(rows: &[Unpacked; LANES], bit: u32, out: &mut [u8; 256]) {
    for (lane, x) in rows.iter().enumerate() {
        for j in 0..8 {
            for e in 0..32 {
                out[seg_index(lane, e)] |= ((x.u[32 * j + e] >> bit) & 1) << j;
            }
        }
    }
}

fn pack_hi2(rows: &[Unpacked; LANES], shift: u32, out: &mut [u8; 512]) {
    for (lane, x) in rows.iter().enumerate() {
        for j in 0..8 {
            for e in 0..32 {
                let at = 256 * (j / 4) + seg_index(lane, e);
                out[at] |= ((x.u[32 * j + e] >> shift) & 3) << (2 * (j % 4));
            }
        }
    }
}

fn pack_scales<const G: usize>(
    rows: &[Unpacked; LANES],
    from: fn(&Unpacked) -> &[i8; 16],
) -> [[i8; LANES]; G] {
    std::array::from_fn(|i| std::array::from_fn(|lane| from(&rows[lane])[i]))
}

fn pack_d(rows: &[Unpacked; LANES], from: fn(&Unpacked) -> u16) -> [u16; LANES] {
    std::array::from_fn(|lane| from(&rows[lane]))
}

/// Q5_0/Q5_1 nibbles in the GGUF order: byte `i` holds elements `i` and `16 + i`.
fn pack_qs32(rows: &[Unpacked; LANES]) -> [u8; 128] {
    let mut qs = [0u8; 128];
    for (lane, x) in rows.iter().enumerate() {
        for i in 0..16 {
            qs[seg_index(lane, i)] = (x.u[i] & 0xF) | ((x.u[16 + i] & 0xF) << 4);
        }
    }
    qs
}

fn pack_qh32(rows: &[Unpacked; LANES]) -> [u8; 32] {
    let mut qh = [0u8; 32];
    for (lane, x) in rows.iter().enumerate() {
        for e in 0..32 {
            qh[4 * lane + e % 4] |= ((x.u[e] >> 4) & 1) << (e / 4);
        }
    }
    qh
}

const NO_SCALE: [i8; LANES] = [0; LANES];

#[derive(Clone, Copy)]
#[repr(C, align(32))]
pub(crate) struct Q4Kx8 {
    qs: [u8; 1024],
    sc: [[i8; LANES]; 8],
    mn: [[i8; LANES]; 8],
    d: [u16; LANES],
    dmin: [u16; LANES],
}

#[derive(Clone, Copy)]
#[repr(C, align(32))]
pub(crate) struct Q5Kx8 {
    qs: [u8; 1024],
    hi1: [u8; 256],
    sc: [[i8; LANES]; 8],
    mn: [[i8; LANES]; 8],
    d: [u16; LANES],
    dmin: [u16; LANES],
}

#[derive(Clone, Copy)]
#[repr(C, align(32))]
pub(crate) struct Q6Kx8 {
    qs: [u8; 1024],
    hi2: [u8; 512],
    sc: [[i8; LANES]; 16],
    d: [u16; LANES],
}

#[derive(Clone, Copy)]
#[repr(C, align(32))]
pub(crate) struct Q3Kx8 {
    lo2: [u8; 512],
    hi1: [u8; 256],
    sc: [[i8; LANES]; 16],
    d: [u16; LANES],
}

#[derive(Clone, Copy)]
#[repr(C, align(32))]
pub(crate) struct Q2Kx8 {
    lo2: [u8; 512],
    sc: [[i8; LANES]; 16],
    mn: [[i8; LANES]; 16],
    d: [u16; LANES],
    dmin: [u16; LANES],
}

/// Q5_0 (`MIN = false`, zero point 16) and Q5_1 (`MIN`, its `m` as `dmin`).
#[derive(Clone, Copy)]
#[repr(C, align(32))]
pub(crate) struct Q5x8<const MIN: bool> {
    qs: [u8; 128],
    qh: [u8; 32],
    sc: [[i8; LANES]; 1],
    mn: [[i8; LANES]; 1],
    d: [u16; LANES],
    dmin: [u16; LANES],
}

fn nib_pair(qs: &[u8], j: usize, lane: usize, e: usize) -> i32 {
    ((qs[256 * (j / 2) + seg_index(lane, e)] >> (4 * (j % 2))) & 0xF) as i32
}

fn bit1(hi1: &[u8], j: usize, lane: usize, e: usize) -> i32 {
    ((hi1[seg_index(lane, e)] >> j) & 1) as i32
}

fn bits2(hi2: &[u8], j: usize, lane: usize, e: usize) -> i32 {
    ((hi2[256 * (j / 4) + seg_index(lane, e)] >> (2 * (j % 4))) & 3) as i32
}

macro_rules! common_accessors {
    (d) => {
        fn d(&self) -> &[u16; LANES] {
            &self.d
        }
        fn sc(&self, i: usize) -> &[i8; LANES] {
            &self.sc[i]
        }
    };
    (dmin) => {
        fn dmin(&self) -> &[u16; LANES] {
            &self.dmin
        }
        fn mn(&self, i: usize) -> &[i8; LANES] {
            &self.mn[i]
        }
    };
    (no_min) => {
        fn dmin(&self) -> &[u16; LANES] {
            &[0; LANES]
        }
        fn mn(&self, _: usize) -> &[i8; LANES] {
            &NO_SCALE
        }
    };
}

impl Tile for Q4Kx8 {
    const SUBS: usize = 8;
    const HALVES: bool = false;
    const ZERO: i32 = 0;
    const MIN: bool = true;
    common_accessors!(d);
    common_accessors!(dmin);
    fn value(&self, j: usize, lane: usize, e: usize) -> i32 {
        nib_pair(&self.qs, j, lane, e)
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn values(&self, j: usize) -> [std::arch::x86_64::__m256i; 8] {
        simd::nib_pair(&self.qs, j)
    }
}

impl Tile for Q5Kx8 {
    const SUBS: usize = 8;
    const HALVES: bool = false;
    const ZERO: i32 = 0;
    const MIN: bool = true;
    common_accessors!(d);
    common_accessors!(dmin);
    fn value(&self, j: usize, lane: usize, e: usize) -> i32 {
        nib_pair(&self.qs, j, lane, e) | (bit1(&self.hi1, j, lane, e) << 4)
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn values(&self, j: usize) -> [std::arch::x86_64::__m256i; 8] {
        let lo = simd::nib_pair(&self.qs, j);
        std::array::from_fn(|p| simd::or(lo[p], simd::bit_to(&self.hi1, p, j, 4)))
    }
}

impl Tile for Q6Kx8 {
    const SUBS: usize = 8;
    const HALVES: bool = true;
    const ZERO: i32 = 32;
    const MIN: bool = false;
    common_accessors!(d);
    common_accessors!(no_min);
    fn value(&self, j: usize, lane: usize, e: usize) -> i32 {
        nib_pair(&self.qs, j, lane, e) | (bits2(&self.hi2, j, lane, e) << 4)
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn values(&self, j: usize) -> [std::arch::x86_64::__m256i; 8] {
        let lo = simd::nib_pair(&self.qs, j);
        std::array::from_fn(|p| simd::or(lo[p], simd::bits2_to(&self.hi2, p, j, 4)))
    }
}

impl Tile for Q3Kx8 {
    const SUBS: usize = 8;
    const HALVES: bool = true;
    const ZERO: i32 = 4;
    const MIN: bool = false;
    common_accessors!(d);
    common_accessors!(no_min);
    fn value(&self, j: usize, lane: usize, e: usize) -> i32 {
        bits2(&self.lo2, j, lane, e) | (bit1(&self.hi1, j, lane, e) << 2)
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn values(&self, j: usize) -> [std::arch::x86_64::__m256i; 8] {
        std::array::from_fn(|p| {
            simd::or(
                simd::bits2_to(&self.lo2, p, j, 0),
                simd::bit_to(&self.hi1, p, j, 2),
            )
        })
    }
}

impl Tile for Q2Kx8 {
    const SUBS: usize = 8;
    const HALVES: bool = true;
    const ZERO: i32 = 0;
    const MIN: bool = true;
    common_accessors!(d);
    common_accessors!(dmin);
    fn value(&self, j: usize, lane: usize, e: usize) -> i32 {
        bits2(&self.lo2, j, lane, e)
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn values(&self, j: usize) -> [std::arch::x86_64::__m256i; 8] {
        std::array::from_fn(|p| simd::bits2_to(&self.lo2, p, j, 0))
    }
}

impl<const M: bool> Tile for Q5x8<M> {
    const SUBS: usize = 1;
    const HALVES: bool = false;
    const ZERO: i32 = if M { 0 } else { 16 };
    const MIN: bool = M;
    common_accessors!(d);
    common_accessors!(dmin);
    fn value(&self, _: usize, lane: usize, e: usize) -> i32 {
        let byte = self.qs[seg_index(lane, e % 16)];
        let nib = if e < 16 { byte & 0xF } else { byte >> 4 };
        nib as i32 | ((((self.qh[4 * lane + e % 4] >> (e / 4)) & 1) as i32) << 4)
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn values(&self, _: usize) -> [std::arch::x86_64::__m256i; 8] {
        simd::five_bits(&self.qs, &self.qh)
    }
}

/// Row `lane` of a group's tiles as f32: `(d · sc) · (u − ZERO) − dmin · mn`, ggml's order.
pub(crate) fn dequantize_row<T: Tile>(tiles: &[T], lane: usize, out: &mut Vec<f32>) {
    let f = |bits: u16| half::f16::from_bits(bits).to_f32();
    for t in tiles {
        let (d, dmin) = (f(t.d()[lane]), f(t.dmin()[lane]));
        for j in 0..T::SUBS {
            for e in 0..32 {
                let i = if T::HALVES { 2 * j + e / 16 } else { j };
                let scale = d * t.sc(i)[lane] as f32;
                let q = (t.value(j, lane, e) - T::ZERO) as f32;
                out.push(if T::MIN {
                    scale * q - dmin * t.mn(i)[lane] as f32
                } else {
                    scale * q
                });
            }
        }
    }
}

/// GGUF blocks of the rows of a (n, k) tensor → tiles of eight rows (rows past `n` zero).
fn repack<T>(
    bytes: &[u8],
    n: usize,
    k: usize,
    block: (usize, usize),
    parse: fn(&[u8]) -> Unpacked,
    pack: fn(&[Unpacked; LANES]) -> T,
) -> Vec<T> {
    let (elems, size) = block;
    let per_row = k / elems;
    let mut out = Vec::with_capacity(n.div_ceil(LANES) * per_row);
    for g in 0..n.div_ceil(LANES) {
        for b in 0..per_row {
            let rows: [Unpacked; LANES] = std::array::from_fn(|r| {
                let row = g * LANES + r;
                if row < n {
                    let at = (row * per_row + b) * size;
                    parse(&bytes[at..at + size])
                } else {
                    Unpacked::default()
                }
            });
            out.push(pack(&rows));
        }
    }
    out
}

pub(crate) fn repack_q4_k(bytes: &[u8], n: usize, k: usize) -> Vec<Q4Kx8> {
    repack(bytes, n, k, (256, 144), parse_q4_k, |rows| {
        let mut qs = [0; 1024];
        pack_qs(rows, &mut qs);
        Q4Kx8 {
            qs,
            sc: pack_scales(rows, |x| &x.sc),
            mn: pack_scales(rows, |x| &x.mn),
            d: pack_d(rows, |x| x.d),
            dmin: pack_d(rows, |x| x.dmin),
        }
    })
}

pub(crate) fn repack_q5_k(bytes: &[u8], n: usize, k: usize) -> Vec<Q5Kx8> {
    repack(bytes, n, k, (256, 176), parse_q5_k, |rows| {
        let (mut qs, mut hi1) = ([0; 1024], [0; 256]);
        pack_qs(rows, &mut qs);
        pack_hi1(rows, 4, &mut hi1);
        Q5Kx8 {
            qs,
            hi1,
            sc: pack_scales(rows, |x| &x.sc),
            mn: pack_scales(rows, |x| &x.mn),
            d: pack_d(rows, |x| x.d),
            dmin: pack_d(rows, |x| x.dmin),
        }
    })
}

pub(crate) fn repack_q6_k(bytes: &[u8], n: usize, k: usize) -> Vec<Q6Kx8> {
    repack(bytes, n, k, (256, 210), parse_q6_k, |rows| {
        let (mut qs, mut hi2) = ([0; 1024], [0; 512]);
        pack_qs(rows, &mut qs);
        pack_hi2(rows, 4, &mut hi2);
        Q6Kx8 {
            qs,
            hi2,
            sc: pack_scales(rows, |x| &x.sc),
            d: pack_d(rows, |x| x.d),
        }
    })
}

pub(crate) fn repack_q3_k(bytes: &[u8], n: usize, k: usize) -> Vec<Q3Kx8> {
    repack(bytes, n, k, (256, 110), parse_q3_k, |rows| {
        let (mut lo2, mut hi1) = ([0; 512], [0; 256]);
        pack_hi2(rows, 0, &mut lo2);
        pack_hi1(rows, 2, &mut hi1);
        Q3Kx8 {
            lo2,
            hi1,
            sc: pack_scales(rows, |x| &x.sc),
            d: pack_d(rows, |x| x.d),
        }
    })
}

pub(crate) fn repack_q2_k(bytes: &[u8], n: usize, k: usize) -> Vec<Q2Kx8> {
    repack(bytes, n, k, (256, 84), parse_q2_k, |rows| {
        let mut lo2 = [0; 512];
        pack_hi2(rows, 0, &mut lo2);
        Q2Kx8 {
            lo2,
            sc: pack_scales(rows, |x| &x.sc),
            mn: pack_scales(rows, |x| &x.mn),
            d: pack_d(rows, |x| x.d),
            dmin: pack_d(rows, |x| x.dmin),
        }
    })
}

fn pack_q5<const M: bool>(rows: &[Unpacked; LANES]) -> Q5x8<M> {
    Q5x8 {
        qs: pack_qs32(rows),
        qh: pack_qh32(rows),
        sc: [std::array::from_fn(|lane| rows[lane].sc[0])],
        mn: [std::array::from_fn(|lane| rows[lane].mn[0])],
        d: pack_d(rows, |x| x.d),
        dmin: pack_d(rows, |x| x.dmin),
    }
}

pub(crate) fn repack_q5_0(bytes: &[u8], n: usize, k: usize) -> Vec<Q5x8<false>> {
    repack(bytes, n, k, (32, 22), parse_q5_0, pack_q5::<false>)
}

pub(crate) fn repack_q5_1(bytes: &[u8], n: usize, k: usize) -> Vec<Q5x8<true>> {
    repack(bytes, n, k, (32, 24), parse_q5_1, pack_q5::<true>)
}

/// The SIMD decoders: each returns the 8 value segments of one sub-block.
#[cfg(target_arch = "x86_64")]
mod simd {
    use std::arch::x86_64::*;

    #[inline(always)]
    unsafe fn seg(bytes: &[u8], at: usize) -> __m256i {
        _mm256_load_si256(bytes.as_ptr().add(at) as *const __m256i)
    }

    #[inline(always)]
    pub(super) unsafe fn or(a: __m256i, b: __m256i) -> __m256i {
        _mm256_or_si256(a, b)
    }

    /// Moves bit `from` of every byte to bit `to` (shifting 32-bit lanes: with `|to − from|`
    /// under 8 no bit crosses into the selected one from a neighbouring byte).
    #[inline(always)]
    unsafe fn move_bits(v: __m256i, from: usize, to: usize, width_mask: u8) -> __m256i {
        let moved = if to >= from {
            _mm256_sllv_epi32(v, _mm256_set1_epi32((to - from) as i32))
        } else {
            _mm256_srlv_epi32(v, _mm256_set1_epi32((from - to) as i32))
        };
        _mm256_and_si256(moved, _mm256_set1_epi8((width_mask << to) as i8))
    }

    #[inline(always)]
    pub(super) unsafe fn nib_pair(qs: &[u8], j: usize) -> [__m256i; 8] {
        let mask = _mm256_set1_epi8(0x0F);
        let base = 256 * (j / 2);
        std::array::from_fn(|p| {
            let raw = seg(qs, base + 32 * p);
            if j.is_multiple_of(2) {
                _mm256_and_si256(raw, mask)
            } else {
                _mm256_and_si256(_mm256_srli_epi16(raw, 4), mask)
            }
        })
    }

    /// Bit `j` of segment `p` of a 1-bit plane, at bit `to`.
    #[inline(always)]
    pub(super) unsafe fn bit_to(hi1: &[u8], p: usize, j: usize, to: usize) -> __m256i {
        move_bits(seg(hi1, 32 * p), j, to, 1)
    }

    /// Sub-block `j`'s two bits in segment `p` of a 2-bit plane, at bits `to, to + 1`.
    #[inline(always)]
    pub(super) unsafe fn bits2_to(hi2: &[u8], p: usize, j: usize, to: usize) -> __m256i {
        move_bits(seg(hi2, 256 * (j / 4) + 32 * p), 2 * (j % 4), to, 3)
    }

    /// Q5_0/Q5_1: GGUF-ordered nibbles and one segment of fifth bits.
    #[inline(always)]
    pub(super) unsafe fn five_bits(qs: &[u8], qh: &[u8]) -> [__m256i; 8] {
        let mask = _mm256_set1_epi8(0x0F);
        let h = seg(qh, 0);
        std::array::from_fn(|v| {
            let raw = seg(qs, 32 * (v % 4));
            let nib = if v < 4 {
                _mm256_and_si256(raw, mask)
            } else {
                _mm256_and_si256(_mm256_srli_epi16(raw, 4), mask)
            };
            or(nib, move_bits(h, v, 4, 1))
        })
    }
}
