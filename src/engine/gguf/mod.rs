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

mod parse;

use parse::Parser;
#[cfg(test)]
use parse::MAGIC;

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
    Array(Array),
}

/// A metadata array, compact for the kinds vocabularies use: a 262k-token vocabulary held as
/// one `Value` per entry took 33 MB while loading.
#[derive(Debug, Clone, PartialEq)]
pub enum Array {
    /// Strings in one buffer: entry `i` is `text[ends[i - 1]..ends[i]]`.
    Strings {
        text: String,
        ends: Vec<usize>,
    },
    F32(Vec<f32>),
    I32(Vec<i32>),
    /// Any other element type (nested arrays included).
    Values(Vec<Value>),
}

impl Array {
    pub fn len(&self) -> usize {
        match self {
            Array::Strings { ends, .. } => ends.len(),
            Array::F32(v) => v.len(),
            Array::I32(v) => v.len(),
            Array::Values(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every entry, when this is an array of strings.
    pub fn strings(&self) -> Option<Vec<&str>> {
        match self {
            Array::Strings { text, ends } => {
                let starts = std::iter::once(0).chain(ends.iter().copied());
                Some(starts.zip(ends).map(|(a, &b)| &text[a..b]).collect())
            }
            Array::Values(v) if v.is_empty() => Some(Vec::new()),
            _ => None,
        }
    }

    /// Entry `i` as a number (None: not a number, or past the end).
    pub fn f64(&self, i: usize) -> Option<f64> {
        match self {
            Array::F32(v) => v.get(i).map(|&x| x as f64),
            Array::I32(v) => v.get(i).map(|&x| x as f64),
            Array::Values(v) => v.get(i).and_then(Value::as_f64),
            Array::Strings { .. } => None,
        }
    }

    /// Entry `i` as a non-negative integer.
    pub fn u64(&self, i: usize) -> Option<u64> {
        match self {
            Array::I32(v) => v.get(i).and_then(|&x| u64::try_from(x).ok()),
            Array::Values(v) => v.get(i).and_then(Value::as_u64),
            Array::F32(_) | Array::Strings { .. } => None,
        }
    }
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

    pub fn as_array(&self) -> Option<&Array> {
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

    pub fn get_array(&self, key: &str) -> Result<&Array, GgufError> {
        self.get(key)
            .ok_or_else(|| self.metadata_fault(key, "missing"))?
            .as_array()
            .ok_or_else(|| self.metadata_fault(key, "not an array"))
    }

    pub fn get_str_array(&self, key: &str) -> Result<Vec<&str>, GgufError> {
        self.get_array(key)?
            .strings()
            .ok_or_else(|| self.metadata_fault(key, "not an array of strings"))
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

    /// Hand back the mapped pages of a tensor's first `upto` bytes once a copy of them lives
    /// elsewhere (the pages stay in the page cache; a later read maps them in again), so loading
    /// a model never holds the file and its repacked weights in full at once.
    pub fn release(&self, name: &str, upto: usize) {
        /// The largest folio Linux maps file pages in (a huge page): release whole ones.
        const PAGE: usize = 2 << 20;
        let Some(info) = self.tensors.get(name) else {
            return;
        };
        // Rounded outwards: a read maps a whole folio, across tensor boundaries, so the ends of
        // the tensors before stay mapped unless they go too; a neighbour's page dropped is only
        // read in again.
        let start = info.offset / PAGE * PAGE;
        let end = (info.offset + upto.min(info.size))
            .next_multiple_of(PAGE)
            .min(self.mmap.len());
        if end > start {
            // SAFETY: the map is private and read-only, so dropping pages loses nothing: any
            // later access reads the same file bytes back in.
            let _ = unsafe {
                self.mmap.unchecked_advise_range(
                    memmap2::UncheckedAdvice::DontNeed,
                    start,
                    end - start,
                )
            };
        }
    }

    pub fn has_tensor(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// Load a tensor onto a device as a candle `QTensor` (copied out of the map, whose pages then
    /// go back).
    pub fn qtensor(&self, name: &str, device: &Device) -> Result<QTensor, GgufError> {
        let (info, bytes) = self.tensor_bytes(name)?;
        let fault = |source| GgufError::Tensor {
            path: self.path.clone(),
            name: name.to_string(),
            source: Box::new(source),
        };
        let storage =
            QStorage::from_data(Cow::Borrowed(bytes), device, info.dtype).map_err(fault)?;
        let tensor = QTensor::new(storage, info.shape.as_slice()).map_err(fault);
        self.release(name, usize::MAX);
        tensor
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
        named.or_else(|| self.dominant_dtype().map(|d| dtype_name(d).to_string()))
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

/// A weight type as llama.cpp names it (`Q4_K`, not candle's `Q4K`).
pub fn dtype_name(d: GgmlDType) -> &'static str {
    match d {
        GgmlDType::F32 => "F32",
        GgmlDType::F16 => "F16",
        GgmlDType::BF16 => "BF16",
        GgmlDType::Q4_0 => "Q4_0",
        GgmlDType::Q4_1 => "Q4_1",
        GgmlDType::Q5_0 => "Q5_0",
        GgmlDType::Q5_1 => "Q5_1",
        GgmlDType::Q8_0 => "Q8_0",
        GgmlDType::Q8_1 => "Q8_1",
        GgmlDType::Q2K => "Q2_K",
        GgmlDType::Q3K => "Q3_K",
        GgmlDType::Q4K => "Q4_K",
        GgmlDType::Q5K => "Q5_K",
        GgmlDType::Q6K => "Q6_K",
        GgmlDType::Q8K => "Q8_K",
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
