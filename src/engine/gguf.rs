//! Open and validate GGUF files.
//!
//! GGUF files come from the internet, so this is a parser for untrusted input: every count, length,
//! offset and size is checked against the bytes that are really there before anything is
//! allocated or read, and a fault is an error naming the file and what is wrong, never a panic.
//! The file is memory-mapped; tensors are turned into candle `QTensor`s on demand.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use candle_core::quantized::{GgmlDType, QStorage, QTensor};
use candle_core::Device;
use memmap2::Mmap;

const MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;
/// Bounds that no real model reaches; they stop a lying header from asking for absurd work.
const MAX_TENSORS: u64 = 1 << 20;
const MAX_METADATA: u64 = 1 << 20;
const MAX_DIMS: u32 = 4;
const MAX_NESTING: usize = 4;

/// What can be wrong with a GGUF file.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    /// The file could not be opened or mapped.
    #[error("{path}: cannot read: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The bytes are not a well-formed GGUF file.
    #[error("{path}: not a valid GGUF file: {fault}")]
    Invalid { path: PathBuf, fault: String },
    /// A metadata key the caller needs is absent or has another type.
    #[error("{path}: metadata key `{key}`: {fault}")]
    Metadata {
        path: PathBuf,
        key: String,
        fault: String,
    },
    /// A tensor the model needs is absent.
    #[error("{path}: tensor `{name}` is missing")]
    MissingTensor { path: PathBuf, name: String },
    /// Candle refused the tensor data.
    #[error("{path}: tensor `{name}`: {source}")]
    Tensor {
        path: PathBuf,
        name: String,
        source: Box<candle_core::Error>,
    },
}

/// One metadata value, as typed in the file.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(Vec<Value>),
}

impl Value {
    /// Any integer type that fits, as GGUF writers are not consistent about widths.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v as u64),
            Value::U16(v) => Some(v as u64),
            Value::U32(v) => Some(v as u64),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Value::I8(v) => Some(v as i64),
            Value::I16(v) => Some(v as i64),
            Value::I32(v) => Some(v as i64),
            Value::I64(v) => Some(v),
            _ => self.as_u64().and_then(|v| i64::try_from(v).ok()),
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v as f64),
            Value::F64(v) => Some(v),
            _ => self.as_i64().map(|v| v as f64),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// Where one tensor lies in the file.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub dtype: GgmlDType,
    /// Candle order: slowest dimension first (GGUF stores them the other way round).
    pub shape: Vec<usize>,
    /// Absolute byte offset in the file.
    pub offset: usize,
    pub size: usize,
}

/// A validated, memory-mapped GGUF file.
pub struct GgufFile {
    path: PathBuf,
    mmap: Mmap,
    pub version: u32,
    pub metadata: HashMap<String, Value>,
    pub tensors: HashMap<String, TensorInfo>,
    /// Tensor names in file order, for tools that rewrite the file.
    pub tensor_order: Vec<String>,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

impl GgufFile {
    /// Map and validate the whole header and tensor table; no tensor data is read yet.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, GgufError> {
        let path = path.as_ref().to_path_buf();
        let io = |source| GgufError::Io {
            path: path.clone(),
            source,
        };
        let file = File::open(&path).map_err(io)?;
        // SAFETY: the map is read-only; a file truncated underneath us is the same hazard every
        // mmap-based loader (llama.cpp included) accepts.
        let mmap = unsafe { Mmap::map(&file) }.map_err(io)?;
        let parsed = Parser::new(&mmap)
            .parse()
            .map_err(|fault| GgufError::Invalid {
                path: path.clone(),
                fault,
            })?;
        Ok(Self {
            path,
            mmap,
            version: parsed.version,
            metadata: parsed.metadata,
            tensors: parsed.tensors,
            tensor_order: parsed.tensor_order,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn file_size(&self) -> u64 {
        self.mmap.len() as u64
    }

    fn metadata_fault(&self, key: &str, fault: &str) -> GgufError {
        GgufError::Metadata {
            path: self.path.clone(),
            key: key.to_string(),
            fault: fault.to_string(),
        }
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    pub fn get_str(&self, key: &str) -> Result<&str, GgufError> {
        self.get(key)
            .ok_or_else(|| self.metadata_fault(key, "missing"))?
            .as_str()
            .ok_or_else(|| self.metadata_fault(key, "not a string"))
    }

    pub fn get_usize(&self, key: &str) -> Result<usize, GgufError> {
        self.get(key)
            .ok_or_else(|| self.metadata_fault(key, "missing"))?
            .as_u64()
            .and_then(|v| usize::try_from(v).ok())
            .ok_or_else(|| self.metadata_fault(key, "not an unsigned integer"))
    }

    pub fn get_f64(&self, key: &str) -> Result<f64, GgufError> {
        self.get(key)
            .ok_or_else(|| self.metadata_fault(key, "missing"))?
            .as_f64()
            .ok_or_else(|| self.metadata_fault(key, "not a number"))
    }

    pub fn get_array(&self, key: &str) -> Result<&[Value], GgufError> {
        self.get(key)
            .ok_or_else(|| self.metadata_fault(key, "missing"))?
            .as_array()
            .ok_or_else(|| self.metadata_fault(key, "not an array"))
    }

    pub fn get_str_array(&self, key: &str) -> Result<Vec<&str>, GgufError> {
        self.get_array(key)?
            .iter()
            .map(|v| {
                v.as_str()
                    .ok_or_else(|| self.metadata_fault(key, "not an array of strings"))
            })
            .collect()
    }

    /// `general.architecture`, e.g. `llama` or `gemma3`.
    pub fn architecture(&self) -> Result<&str, GgufError> {
        self.get_str("general.architecture")
    }

    /// The raw bytes of a tensor, already bounds-checked at open.
    pub fn tensor_bytes(&self, name: &str) -> Result<(&TensorInfo, &[u8]), GgufError> {
        let info = self
            .tensors
            .get(name)
            .ok_or_else(|| GgufError::MissingTensor {
                path: self.path.clone(),
                name: name.to_string(),
            })?;
        Ok((info, &self.mmap[info.offset..info.offset + info.size]))
    }

    pub fn has_tensor(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// Load a tensor onto a device as a candle `QTensor` (copied out of the map).
    pub fn qtensor(&self, name: &str, device: &Device) -> Result<QTensor, GgufError> {
        let (info, bytes) = self.tensor_bytes(name)?;
        let fault = |source| GgufError::Tensor {
            path: self.path.clone(),
            name: name.to_string(),
            source: Box::new(source),
        };
        let storage =
            QStorage::from_data(Cow::Borrowed(bytes), device, info.dtype).map_err(fault)?;
        QTensor::new(storage, info.shape.as_slice()).map_err(fault)
    }

    /// The file's quantization as users name it: `general.file_type` (llama.cpp's `llama_ftype`),
    /// or else the weight type holding the most bytes.
    pub fn quantization(&self) -> Option<String> {
        const FTYPES: &[(u64, &str)] = &[
            (0, "F32"),
            (1, "F16"),
            (2, "Q4_0"),
            (3, "Q4_1"),
            (7, "Q8_0"),
            (8, "Q5_0"),
            (9, "Q5_1"),
            (10, "Q2_K"),
            (11, "Q3_K_S"),
            (12, "Q3_K_M"),
            (13, "Q3_K_L"),
            (14, "Q4_K_S"),
            (15, "Q4_K_M"),
            (16, "Q5_K_S"),
            (17, "Q5_K_M"),
            (18, "Q6_K"),
            (32, "BF16"),
        ];
        let named = self
            .get("general.file_type")
            .and_then(Value::as_u64)
            .and_then(|ft| FTYPES.iter().find(|(id, _)| *id == ft))
            .map(|(_, name)| name.to_string());
        named.or_else(|| self.dominant_dtype().map(|d| format!("{d:?}")))
    }

    /// The weight type holding the most bytes.
    pub fn dominant_dtype(&self) -> Option<GgmlDType> {
        let mut bytes: HashMap<String, (usize, GgmlDType)> = HashMap::new();
        for info in self.tensors.values().filter(|t| t.shape.len() >= 2) {
            let e = bytes
                .entry(format!("{:?}", info.dtype))
                .or_insert((0, info.dtype));
            e.0 += info.size;
        }
        bytes.into_values().max_by_key(|(n, _)| *n).map(|(_, d)| d)
    }
}

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

struct Parsed {
    version: u32,
    metadata: HashMap<String, Value>,
    tensors: HashMap<String, TensorInfo>,
    tensor_order: Vec<String>,
}

/// A cursor over the mapped bytes that never reads past the end.
struct Parser<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Parser<'a> {
    fn new(bytes: &'a [u8]) -> Self {
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
        let len = self.count(1, what)?;
        let at = self.pos;
        let raw = self.take(len, what)?;
        String::from_utf8(raw.to_vec()).map_err(|_| format!("{what} at offset {at} is not UTF-8"))
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
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.value(elem_ty, depth + 1)?);
                }
                Value::Array(items)
            }
            10 => Value::U64(self.u64()?),
            11 => Value::I64(self.u64()? as i64),
            12 => Value::F64(f64::from_bits(self.u64()?)),
            t => return Err(format!("unknown metadata value type {t}")),
        })
    }

    fn parse(mut self) -> Result<Parsed, String> {
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::Write;

    /// A tiny but valid GGUF: one metadata string and one 2x32 F32 tensor.
    pub(crate) fn tiny_gguf() -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(MAGIC);
        b.extend_from_slice(&3u32.to_le_bytes());
        b.extend_from_slice(&1u64.to_le_bytes()); // tensors
        b.extend_from_slice(&1u64.to_le_bytes()); // metadata
        let key = b"general.architecture";
        b.extend_from_slice(&(key.len() as u64).to_le_bytes());
        b.extend_from_slice(key);
        b.extend_from_slice(&8u32.to_le_bytes());
        b.extend_from_slice(&5u64.to_le_bytes());
        b.extend_from_slice(b"llama");
        let name = b"w";
        b.extend_from_slice(&(name.len() as u64).to_le_bytes());
        b.extend_from_slice(name);
        b.extend_from_slice(&2u32.to_le_bytes());
        b.extend_from_slice(&32u64.to_le_bytes());
        b.extend_from_slice(&2u64.to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes()); // F32
        b.extend_from_slice(&0u64.to_le_bytes());
        while b.len() % 32 != 0 {
            b.push(0);
        }
        for i in 0..64 {
            b.extend_from_slice(&(i as f32).to_le_bytes());
        }
        b
    }

    fn write(bytes: &[u8]) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(bytes).unwrap();
        f
    }

    fn open_err(bytes: &[u8]) -> String {
        let f = write(bytes);
        let err = GgufFile::open(f.path()).unwrap_err().to_string();
        assert!(
            err.contains(&f.path().display().to_string()),
            "error names the file: {err}"
        );
        err
    }

    #[test]
    fn reads_a_valid_file() {
        let f = write(&tiny_gguf());
        let g = GgufFile::open(f.path()).unwrap();
        assert_eq!(g.architecture().unwrap(), "llama");
        let t = g.qtensor("w", &Device::Cpu).unwrap();
        assert_eq!(t.shape().dims(), &[2, 32]);
        let v = t.dequantize(&Device::Cpu).unwrap();
        assert_eq!(v.flatten_all().unwrap().to_vec1::<f32>().unwrap()[63], 63.0);
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let full = tiny_gguf();
        for len in 0..full.len() {
            let err = open_err(&full[..len]);
            assert!(err.contains("not a valid GGUF"), "{len}: {err}");
        }
    }

    #[test]
    fn corrupt_fields_are_named() {
        let mut bad_magic = tiny_gguf();
        bad_magic[0] = b'X';
        assert!(open_err(&bad_magic).contains("bad magic"));

        let mut bad_version = tiny_gguf();
        bad_version[4] = 9;
        assert!(open_err(&bad_version).contains("version 9"));

        let mut huge_count = tiny_gguf();
        huge_count[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(open_err(&huge_count).contains("implausible"));

        // The metadata string length claims more bytes than exist.
        let mut long_string = tiny_gguf();
        let at = 24 + 8 + "general.architecture".len() + 4;
        long_string[at..at + 8].copy_from_slice(&(1u64 << 40).to_le_bytes());
        assert!(open_err(&long_string).contains("exceeds the file"));

        // Unknown tensor type.
        let mut bad_type = tiny_gguf();
        let type_at = 24 + 8 + 20 + 4 + 8 + 5 + 8 + 1 + 4 + 16;
        bad_type[type_at..type_at + 4].copy_from_slice(&99u32.to_le_bytes());
        assert!(open_err(&bad_type).contains("unknown type 99"));

        // A tensor offset past the end of the file.
        let mut bad_offset = tiny_gguf();
        bad_offset[type_at + 4..type_at + 12].copy_from_slice(&(1u64 << 20).to_le_bytes());
        assert!(open_err(&bad_offset).contains("truncated: tensor `w`"));
    }

    #[test]
    fn missing_file_is_an_io_error() {
        let err = GgufFile::open("/nonexistent/model.gguf").unwrap_err();
        assert!(matches!(err, GgufError::Io { .. }));
    }
}
