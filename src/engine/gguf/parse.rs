//! The GGUF byte format: header, metadata, tensor table, every field bounds-checked.

use std::collections::HashMap;

use candle_core::quantized::GgmlDType;

use super::{Array, TensorInfo, Value};

pub(super) const MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;
/// Bounds that no real model reaches; they stop a lying header from asking for absurd work.
const MAX_TENSORS: u64 = 1 << 20;
const MAX_METADATA: u64 = 1 << 20;
const MAX_DIMS: u32 = 4;
const MAX_NESTING: usize = 4;

/// GGML's type ids (`ggml_type`), for the types candle can hold.
fn dtype_from_u32(ty: u32) -> Option<GgmlDType> {
    Some(match ty {
        0 => GgmlDType::F32,
        1 => GgmlDType::F16,
        2 => GgmlDType::Q4_0,
        3 => GgmlDType::Q4_1,
        6 => GgmlDType::Q5_0,
        7 => GgmlDType::Q5_1,
        8 => GgmlDType::Q8_0,
        9 => GgmlDType::Q8_1,
        10 => GgmlDType::Q2K,
        11 => GgmlDType::Q3K,
        12 => GgmlDType::Q4K,
        13 => GgmlDType::Q5K,
        14 => GgmlDType::Q6K,
        15 => GgmlDType::Q8K,
        30 => GgmlDType::BF16,
        _ => return None,
    })
}

pub(super) struct Parsed {
    pub version: u32,
    pub metadata: HashMap<String, Value>,
    pub tensors: HashMap<String, TensorInfo>,
    pub tensor_order: Vec<String>,
}

/// A cursor over the mapped bytes that never reads past the end.
pub(super) struct Parser<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Parser<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, pos: 0 }
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], String> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len())
            .ok_or_else(|| {
                format!(
                    "truncated: {what} needs {n} bytes at offset {} but the file has {}",
                    self.pos,
                    self.bytes.len()
                )
            })?;
        let s = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1, "u8")?[0])
    }
    fn u16(&mut self) -> Result<u16, String> {
        Ok(u16::from_le_bytes(self.take(2, "u16")?.try_into().unwrap()))
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4, "u32")?.try_into().unwrap()))
    }
    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.take(8, "u64")?.try_into().unwrap()))
    }

    /// A count whose elements need at least `min_elem_bytes` each: refuse counts the remaining
    /// bytes cannot hold before allocating anything for them.
    fn count(&mut self, min_elem_bytes: usize, what: &str) -> Result<usize, String> {
        let n = self.u64()?;
        let remaining = (self.bytes.len() - self.pos) as u64;
        if n.saturating_mul(min_elem_bytes as u64) > remaining {
            return Err(format!(
                "{what} count {n} at offset {} exceeds the file",
                self.pos - 8
            ));
        }
        Ok(n as usize)
    }

    fn string(&mut self, what: &str) -> Result<String, String> {
        self.str(what).map(str::to_string)
    }

    fn str(&mut self, what: &str) -> Result<&str, String> {
        let len = self.count(1, what)?;
        let at = self.pos;
        let raw = self.take(len, what)?;
        std::str::from_utf8(raw).map_err(|_| format!("{what} at offset {at} is not UTF-8"))
    }

    fn value(&mut self, ty: u32, depth: usize) -> Result<Value, String> {
        Ok(match ty {
            0 => Value::U8(self.u8()?),
            1 => Value::I8(self.u8()? as i8),
            2 => Value::U16(self.u16()?),
            3 => Value::I16(self.u16()? as i16),
            4 => Value::U32(self.u32()?),
            5 => Value::I32(self.u32()? as i32),
            6 => Value::F32(f32::from_bits(self.u32()?)),
            7 => match self.u8()? {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => return Err(format!("bool value {b} at offset {}", self.pos - 1)),
            },
            8 => Value::String(self.string("string")?),
            9 => {
                if depth >= MAX_NESTING {
                    return Err("arrays nested too deeply".into());
                }
                let elem_ty = self.u32()?;
                let min = match elem_ty {
                    0 | 1 | 7 => 1,
                    2 | 3 => 2,
                    4..=6 => 4,
                    8 | 10..=12 => 8,
                    9 => 12,
                    t => return Err(format!("unknown array element type {t}")),
                };
                let n = self.count(min, "array")?;
                Value::Array(match elem_ty {
                    8 => {
                        let (mut text, mut ends) = (String::new(), Vec::with_capacity(n));
                        for _ in 0..n {
                            text.push_str(self.str("string")?);
                            ends.push(text.len());
                        }
                        text.shrink_to_fit();
                        Array::Strings { text, ends }
                    }
                    6 => Array::F32(
                        (0..n)
                            .map(|_| self.u32().map(f32::from_bits))
                            .collect::<Result<_, _>>()?,
                    ),
                    5 => Array::I32(
                        (0..n)
                            .map(|_| self.u32().map(|v| v as i32))
                            .collect::<Result<_, _>>()?,
                    ),
                    _ => {
                        let mut items = Vec::with_capacity(n);
                        for _ in 0..n {
                            items.push(self.value(elem_ty, depth + 1)?);
                        }
                        Array::Values(items)
                    }
                })
            }
            10 => Value::U64(self.u64()?),
            11 => Value::I64(self.u64()? as i64),
            12 => Value::F64(f64::from_bits(self.u64()?)),
            t => return Err(format!("unknown metadata value type {t}")),
        })
    }

    pub fn parse(mut self) -> Result<Parsed, String> {
        if self
            .take(4, "magic")
            .map_err(|_| "file too short for a GGUF header")?
            != MAGIC
        {
            return Err("bad magic: expected `GGUF`".into());
        }
        let version = self.u32()?;
        if !(2..=3).contains(&version) {
            return Err(format!("unsupported GGUF version {version} (2 and 3 are)"));
        }
        let n_tensors = self.u64()?;
        let n_kv = self.u64()?;
        if n_tensors > MAX_TENSORS || n_kv > MAX_METADATA {
            return Err(format!(
                "implausible counts: {n_tensors} tensors, {n_kv} metadata keys"
            ));
        }
        let mut metadata = HashMap::new();
        for _ in 0..n_kv {
            let key = self.string("metadata key")?;
            let ty = self.u32()?;
            let value = self
                .value(ty, 0)
                .map_err(|e| format!("metadata `{key}`: {e}"))?;
            metadata.insert(key, value);
        }
        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(v) => match v.as_u64() {
                Some(a) if a > 0 && a.is_power_of_two() && a <= 1 << 16 => a,
                _ => return Err(format!("bad general.alignment {v:?}")),
            },
        };
        let mut raw = Vec::with_capacity(n_tensors as usize);
        for _ in 0..n_tensors {
            let name = self.string("tensor name")?;
            let n_dims = self.u32()?;
            if n_dims == 0 || n_dims > MAX_DIMS {
                return Err(format!("tensor `{name}`: {n_dims} dimensions"));
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                dims.push(self.u64()?);
            }
            let ty = self.u32()?;
            let offset = self.u64()?;
            raw.push((name, dims, ty, offset));
        }
        let data_start = (self.pos as u64).div_ceil(alignment) * alignment;
        let file_len = self.bytes.len() as u64;
        let mut tensors = HashMap::with_capacity(raw.len());
        let mut tensor_order = Vec::with_capacity(raw.len());
        for (name, dims, ty, offset) in raw {
            let dtype =
                dtype_from_u32(ty).ok_or_else(|| format!("tensor `{name}`: unknown type {ty}"))?;
            let elems = dims
                .iter()
                .try_fold(1u64, |acc, &d| acc.checked_mul(d))
                .filter(|&n| n > 0)
                .ok_or_else(|| format!("tensor `{name}`: bad dimensions {dims:?}"))?;
            let block = dtype.block_size() as u64;
            if dims[0] % block != 0 {
                return Err(format!(
                    "tensor `{name}`: row of {} is not a multiple of the {dtype:?} block of {block}",
                    dims[0]
                ));
            }
            let size = (elems / block)
                .checked_mul(dtype.type_size() as u64)
                .ok_or_else(|| format!("tensor `{name}`: size overflows"))?;
            if offset % alignment != 0 {
                return Err(format!("tensor `{name}`: offset {offset} is not aligned"));
            }
            let start = data_start
                .checked_add(offset)
                .ok_or_else(|| format!("tensor `{name}`: offset overflows"))?;
            let end = start
                .checked_add(size)
                .ok_or_else(|| format!("tensor `{name}`: offset overflows"))?;
            if end > file_len {
                return Err(format!(
                    "truncated: tensor `{name}` spans bytes {start}..{end} but the file has {file_len}"
                ));
            }
            let shape = dims.iter().rev().map(|&d| d as usize).collect();
            tensor_order.push(name.clone());
            let info = TensorInfo {
                dtype,
                shape,
                offset: start as usize,
                size: size as usize,
            };
            if tensors.insert(name.clone(), info).is_some() {
                return Err(format!("tensor `{name}` appears twice"));
            }
        }
        Ok(Parsed {
            version,
            metadata,
            tensors,
            tensor_order,
        })
    }
}
