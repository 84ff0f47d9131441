//! GGUF blocks of the K-quants and the 5-bit types read into one form (`Unpacked`): stored
//! values, integer scales and minimums, and the raw f16 `d` and `dmin`, with ggml's formulas;
//! `tiles` packs eight rows of these into the kernels' layout.

/// One GGUF block of one row, unpacked: the stored values, integer scales and minimums, and
/// the raw f16 `d` and `dmin`.
#[derive(Clone)]
pub(super) struct Unpacked {
    pub u: [u8; 256],
    pub sc: [i8; 16],
    pub mn: [i8; 16],
    pub d: u16,
    pub dmin: u16,
}

impl Default for Unpacked {
    fn default() -> Self {
        Self {
            u: [0; 256],
            sc: [0; 16],
            mn: [0; 16],
            d: 0,
            dmin: 0,
        }
    }
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

/// ggml's `get_scale_min_k4`: the 6-bit scale and minimum of sub-block `j` of Q4_K and Q5_K.
fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

pub(super) fn parse_q4_k(b: &[u8]) -> Unpacked {
    let mut x = Unpacked {
        d: le16(b, 0),
        dmin: le16(b, 2),
        ..Default::default()
    };
    for j in 0..8 {
        let (sc, mn) = scale_min_k4(j, &b[4..16]);
        (x.sc[j], x.mn[j]) = (sc as i8, mn as i8);
    }
    let qs = &b[16..144];
    for i in 0..4 {
        for l in 0..32 {
            x.u[64 * i + l] = qs[32 * i + l] & 0xF;
            x.u[64 * i + 32 + l] = qs[32 * i + l] >> 4;
        }
    }
    x
}

pub(super) fn parse_q5_k(b: &[u8]) -> Unpacked {
    let mut x = Unpacked {
        d: le16(b, 0),
        dmin: le16(b, 2),
        ..Default::default()
    };
    for j in 0..8 {
        let (sc, mn) = scale_min_k4(j, &b[4..16]);
        (x.sc[j], x.mn[j]) = (sc as i8, mn as i8);
    }
    let (qh, qs) = (&b[16..48], &b[48..176]);
    for i in 0..4 {
        for l in 0..32 {
            x.u[64 * i + l] = (qs[32 * i + l] & 0xF) | (((qh[l] >> (2 * i)) & 1) << 4);
            x.u[64 * i + 32 + l] = (qs[32 * i + l] >> 4) | (((qh[l] >> (2 * i + 1)) & 1) << 4);
        }
    }
    x
}

pub(super) fn parse_q6_k(b: &[u8]) -> Unpacked {
    let mut x = Unpacked {
        d: le16(b, 208),
        ..Default::default()
    };
    for (i, s) in b[192..208].iter().enumerate() {
        x.sc[i] = *s as i8;
    }
    for n in 0..2 {
        let (ql, qh) = (&b[64 * n..64 * n + 64], &b[128 + 32 * n..160 + 32 * n]);
        for l in 0..32 {
            let u = &mut x.u[128 * n..128 * n + 128];
            u[l] = (ql[l] & 0xF) | ((qh[l] & 3) << 4);
            u[32 + l] = (ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4);
            u[64 + l] = (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4);
            u[96 + l] = (ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4);
        }
    }
    x
}

pub(super) fn parse_q3_k(b: &[u8]) -> Unpacked {
    let mut x = Unpacked {
        d: le16(b, 108),
        ..Default::default()
    };
    let (hmask, qs, s) = (&b[0..32], &b[32..96], &b[96..108]);
    // ggml's unpacking of the 16 six-bit scales: low nibbles from bytes 0..8, high pairs of
    // bits from bytes 8..12.
    for i in 0..16 {
        let low = if i < 8 { s[i] & 0xF } else { s[i - 8] >> 4 };
        let high = (s[8 + i % 4] >> (2 * (i / 4))) & 3;
        x.sc[i] = (low | (high << 4)) as i8 - 32;
    }
    for n in 0..2 {
        for j in 0..4 {
            for l in 0..32 {
                let low = (qs[32 * n + l] >> (2 * j)) & 3;
                let high = (hmask[l] >> (4 * n + j)) & 1;
                x.u[128 * n + 32 * j + l] = low | (high << 2);
            }
        }
    }
    x
}

pub(super) fn parse_q2_k(b: &[u8]) -> Unpacked {
    let mut x = Unpacked {
        d: le16(b, 80),
        dmin: le16(b, 82),
        ..Default::default()
    };
    for (i, s) in b[0..16].iter().enumerate() {
        (x.sc[i], x.mn[i]) = ((s & 0xF) as i8, (s >> 4) as i8);
    }
    let qs = &b[16..80];
    for n in 0..2 {
        for j in 0..4 {
            for l in 0..32 {
                x.u[128 * n + 32 * j + l] = (qs[32 * n + l] >> (2 * j)) & 3;
            }
        }
    }
    x
}

/// Q5_0 and Q5_1: `qh` (32 fifth bits, bit `i` for element `i`), then 16 nibble bytes.
fn five_bit_values(x: &mut Unpacked, qh: &[u8], qs: &[u8]) {
    let qh = u32::from_le_bytes([qh[0], qh[1], qh[2], qh[3]]);
    for (l, &q) in qs[..16].iter().enumerate() {
        x.u[l] = (q & 0xF) | ((((qh >> l) & 1) as u8) << 4);
        x.u[l + 16] = (q >> 4) | ((((qh >> (l + 16)) & 1) as u8) << 4);
    }
}

pub(super) fn parse_q5_0(b: &[u8]) -> Unpacked {
    let mut x = Unpacked {
        d: le16(b, 0),
        ..Default::default()
    };
    x.sc[0] = 1;
    five_bit_values(&mut x, &b[2..6], &b[6..22]);
    x
}

pub(super) fn parse_q5_1(b: &[u8]) -> Unpacked {
    // `d · u + m` = `d · 1 · u − m · (−1)`.
    let mut x = Unpacked {
        d: le16(b, 0),
        dmin: le16(b, 2),
        ..Default::default()
    };
    (x.sc[0], x.mn[0]) = (1, -1);
    five_bit_values(&mut x, &b[4..8], &b[8..24]);
    x
}
