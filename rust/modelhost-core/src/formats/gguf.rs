//! GGUF header parser (versions 2 and 3) over a byte slice, normally the file's memory map.
//!
//! Every count, length, shape and offset is checked against the bytes that are really there before
//! anything is allocated, so a lying header costs nothing proportional to its lie.

use std::collections::HashMap;
use std::path::Path;

use crate::kernels::types::WeightType;

use crate::error::{Error, Result};

const MAGIC: &[u8; 4] = b"GGUF";
/// Strings and arrays longer than this are refused outright (as candle and llama.cpp do).
const MAX_LEN: u64 = 1 << 30;
/// ggml tensors have at most four dimensions.
const MAX_DIMS: u32 = 4;
/// Arrays of arrays deeper than this are refused (no real file nests at all).
const MAX_NESTING: u32 = 8;
const DEFAULT_ALIGNMENT: u64 = 32;

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// uint8
    U8(u8),
    /// int8
    I8(i8),
    /// uint16
    U16(u16),
    /// int16
    I16(i16),
    /// uint32
    U32(u32),
    /// int32
    I32(i32),
    /// uint64
    U64(u64),
    /// int64
    I64(i64),
    /// float32
    F32(f32),
    /// float64
    F64(f64),
    /// bool
    Bool(bool),
    /// UTF-8 string
    String(String),
    /// array of one type
    Array(Vec<Value>),
}

impl Value {
    /// The value as an unsigned integer, if it is a non-negative integer of any width.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v.into()),
            Value::U16(v) => Some(v.into()),
            Value::U32(v) => Some(v.into()),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as a float, if it is a number.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v.into()),
            Value::F64(v) => Some(v),
            Value::I8(v) => Some(v.into()),
            Value::I16(v) => Some(v.into()),
            Value::I32(v) => Some(v.into()),
            Value::I64(v) => Some(v as f64),
            _ => self.as_u64().map(|v| v as f64),
        }
    }

    /// The value as a string slice.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// The value as a bool.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }

    /// The value as an array.
    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// One tensor's header entry, with its byte range already validated.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    /// Tensor name.
    pub name: String,
    /// Dimensions in ggml order (fastest-varying first).
    pub dims: Vec<usize>,
    /// Element type.
    pub dtype: WeightType,
    /// Absolute byte offset of the data in the file.
    pub offset: usize,
    /// Byte length of the data.
    pub size: usize,
}

impl TensorInfo {
    /// Dimensions in row-major order (slowest first), as candle wants them.
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().copied().collect()
    }
}

/// A parsed GGUF header.
#[derive(Debug, Clone)]
pub struct GgufHeader {
    /// Format version (2 or 3).
    pub version: u32,
    /// Metadata key-value pairs.
    pub metadata: HashMap<String, Value>,
    /// Tensor entries in file order.
    pub tensors: Vec<TensorInfo>,
    /// Absolute offset of the tensor data section.
    pub data_offset: usize,
}

impl GgufHeader {
    /// A metadata value.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    /// A metadata value under the model's architecture prefix (`llama.context_length`, …).
    pub fn arch_get(&self, suffix: &str) -> Option<&Value> {
        let arch = self.get("general.architecture")?.as_str()?;
        self.get(&format!("{arch}.{suffix}"))
    }

    /// A tensor by name.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// Total bytes of tensor data.
    pub fn tensor_bytes(&self) -> u64 {
        self.tensors.iter().map(|t| t.size as u64).sum()
    }

    /// Number of elements over all tensors (the parameter count).
    pub fn param_count(&self) -> u64 {
        self.tensors.iter().map(|t| t.dims.iter().map(|&d| d as u64).product::<u64>()).sum()
    }

    /// The quantization that names the file (`Q4_1`, `F16`, …): the type holding the most bytes among the 2-D
    /// weights, as llama.cpp's `file_type` does; "unknown" when there are none.
    pub fn quantization(&self) -> String {
        let mut counts = HashMap::new();
        for t in self.tensors.iter().filter(|t| t.dims.len() == 2) {
            *counts.entry(t.dtype.name()).or_insert(0u64) += t.size as u64;
        }
        counts.into_iter().max_by_key(|&(_, n)| n).map_or("unknown", |(q, _)| q).to_string()
    }
}

/// A bounds-checked little-endian reader over the header bytes.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
    /// When false, arrays are validated but stored empty (the catalog needs scalars only).
    keep_arrays: bool,
}

type ParseResult<T> = std::result::Result<T, String>;

impl<'a> Reader<'a> {
    fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    fn take(&mut self, n: usize, what: &str) -> ParseResult<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&end| end <= self.bytes.len());
        let Some(end) = end else {
            return Err(format!("truncated: {what} at offset {} needs {n} bytes", self.pos));
        };
        let out = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn array<const N: usize>(&mut self, what: &str) -> ParseResult<[u8; N]> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, what)?);
        Ok(out)
    }

    fn u32(&mut self, what: &str) -> ParseResult<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> ParseResult<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A length or count, checked against a hard cap and against the bytes left
    /// (each item needs at least `min_item_bytes`).
    fn count(&mut self, what: &str, min_item_bytes: usize) -> ParseResult<usize> {
        self.count_of(what, "", min_item_bytes)
    }

    /// `count` for `what` + `suffix`, joined only for the error message (this runs once per string of a
    /// 50k-token vocabulary).
    fn count_of(&mut self, what: &str, suffix: &str, min_item_bytes: usize) -> ParseResult<usize> {
        let n = self.u64(what)?;
        let fits = n <= MAX_LEN && n.saturating_mul(min_item_bytes as u64) <= self.remaining() as u64;
        if !fits {
            return Err(format!("{what}{suffix} {n} is larger than the {} bytes left in the file", self.remaining()));
        }
        Ok(n as usize)
    }

    /// A length-prefixed UTF-8 string, borrowed from the header bytes.
    fn str(&mut self, what: &str) -> ParseResult<&'a str> {
        let len = self.count_of(what, " length", 1)?;
        let bytes = self.take(len, what)?;
        std::str::from_utf8(bytes).map_err(|_| format!("{what} at offset {} is not valid UTF-8", self.pos - len))
    }

    fn string(&mut self, what: &str) -> ParseResult<String> {
        self.str(what).map(str::to_owned)
    }

    /// Step over an array of `n` items without keeping them: the summary's path through vocabularies
    /// and merges (100k strings in SmolLM2). Lengths and bounds are checked; the strings' UTF-8 is
    /// checked when the model loads (a full `parse`), not for a listing.
    fn skip_array(&mut self, item_type: u32, n: usize, depth: u32) -> ParseResult<()> {
        match item_type {
            8 => (0..n).try_for_each(|_| {
                let len = self.count_of("string", " length", 1)?;
                self.take(len, "string").map(drop)
            }),
            // Bools (checked to be 0 or 1) and nested arrays (skipped the same way) go through `value`.
            7 | 9 => (0..n).try_for_each(|_| self.value(item_type, depth).map(drop)),
            // Every other type is a fixed-size number: its minimum size is its size.
            _ => {
                let size = value_min_size(item_type).ok_or_else(|| format!("unknown array value type {item_type}"))?;
                self.take(n * size, "array").map(drop) // `count` checked that n * size fits
            }
        }
    }

    fn value(&mut self, type_id: u32, depth: u32) -> ParseResult<Value> {
        Ok(match type_id {
            0 => Value::U8(self.array::<1>("u8")?[0]),
            1 => Value::I8(self.array::<1>("i8")?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(self.array("u16")?)),
            3 => Value::I16(i16::from_le_bytes(self.array("i16")?)),
            4 => Value::U32(self.u32("u32")?),
            5 => Value::I32(i32::from_le_bytes(self.array("i32")?)),
            6 => Value::F32(f32::from_le_bytes(self.array("f32")?)),
            7 => match self.array::<1>("bool")?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => return Err(format!("bool value {b} is neither 0 nor 1")),
            },
            8 => Value::String(self.string("string")?),
            9 => {
                if depth >= MAX_NESTING {
                    return Err(format!("arrays nested deeper than {MAX_NESTING}"));
                }
                let item_type = self.u32("array type")?;
                let min_item =
                    value_min_size(item_type).ok_or_else(|| format!("unknown array value type {item_type}"))?;
                let n = self.count("array length", min_item)?;
                if !self.keep_arrays {
                    self.skip_array(item_type, n, depth + 1)?;
                    return Ok(Value::Array(Vec::new()));
                }
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.value(item_type, depth + 1)?);
                }
                Value::Array(items)
            }
            10 => Value::U64(self.u64("u64")?),
            11 => Value::I64(i64::from_le_bytes(self.array("i64")?)),
            12 => Value::F64(f64::from_le_bytes(self.array("f64")?)),
            other => return Err(format!("unknown metadata value type {other}")),
        })
    }
}

/// The fewest bytes one value of a type occupies (used to cap counts before allocating).
fn value_min_size(type_id: u32) -> Option<usize> {
    Some(match type_id {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        8 => 8,
        9 => 12,
        10..=12 => 8,
        _ => return None,
    })
}

/// `parse_summary` of the file at `path`, through a temporary read-only map: only the header's pages
/// are read, whatever the file's size.
pub fn read_summary(path: &Path) -> Result<GgufHeader> {
    let (file, _) = crate::storage::open_model_file(path)?;
    // SAFETY: read-only map, dropped before returning; only the header pages are touched, under the
    // SIGBUS guard (a file truncated meanwhile reads as zeros and is reported below).
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::load(path, e.to_string()))?;
    #[cfg(target_os = "linux")]
    let guard = crate::storage::sigbus::Guard::new(map.as_ptr(), map.len());
    let header = parse_summary(&map, path);
    #[cfg(target_os = "linux")]
    if guard.is_some_and(|g| g.damaged()) {
        return Err(Error::load(path, "the file was truncated while its header was read"));
    }
    header
}

/// Parse and validate a GGUF file's header; `bytes` is the whole file.
pub fn parse(bytes: &[u8], path: &Path) -> Result<GgufHeader> {
    parse_inner(bytes, true).map_err(|reason| Error::load(path, reason))
}

/// Like `parse`, but metadata arrays (vocabularies, merges) are stepped over and come back empty:
/// every count, length and offset is still checked, the UTF-8 of array strings is not (`parse` does).
pub fn parse_summary(bytes: &[u8], path: &Path) -> Result<GgufHeader> {
    parse_inner(bytes, false).map_err(|reason| Error::load(path, reason))
}

fn parse_inner(bytes: &[u8], keep_arrays: bool) -> ParseResult<GgufHeader> {
    let mut r = Reader { bytes, pos: 0, keep_arrays };
    let magic = r.take(4, "magic")?;
    if magic != MAGIC {
        return Err(format!("not a GGUF file (magic {magic:02x?})"));
    }
    let version = r.u32("version")?;
    if version != 2 && version != 3 {
        return Err(format!("unsupported GGUF version {version} (2 and 3 are supported)"));
    }
    // A tensor info is at least: name length (8) + n_dims (4) + one dim (8) + type (4) + offset (8).
    let n_tensors = r.count("tensor count", 32)?;
    // A key-value pair is at least: key length (8) + type (4) + one byte.
    let n_kv = r.count("metadata count", 13)?;

    let mut metadata = HashMap::with_capacity(n_kv);
    for _ in 0..n_kv {
        let key = r.string("metadata key")?;
        let type_id = r.u32("metadata type")?;
        let value = r.value(type_id, 0).map_err(|e| format!("metadata {key:?}: {e}"))?;
        if metadata.insert(key.clone(), value).is_some() {
            return Err(format!("duplicate metadata key {key:?}"));
        }
    }

    let alignment = match metadata.get("general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some(Value::U32(a)) if *a > 0 && a.is_power_of_two() => u64::from(*a),
        Some(other) => return Err(format!("general.alignment {other:?} is not a power of two")),
    };

    struct RawTensor {
        name: String,
        dims: Vec<usize>,
        dtype: WeightType,
        rel_offset: u64,
    }
    let mut raw = Vec::with_capacity(n_tensors);
    let mut names = std::collections::HashSet::with_capacity(n_tensors);
    for _ in 0..n_tensors {
        let name = r.string("tensor name")?;
        let n_dims = r.u32("tensor dimension count")?;
        if n_dims == 0 || n_dims > MAX_DIMS {
            return Err(format!("tensor {name:?} has {n_dims} dimensions (1 to {MAX_DIMS} allowed)"));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            let d = r.u64("tensor dimension")?;
            // ggml stores dims as int64: anything past i64::MAX is a negative number.
            if d == 0 || d > i64::MAX as u64 {
                return Err(format!("tensor {name:?} has dimension {} (must be positive)", d as i64));
            }
            dims.push(usize::try_from(d).map_err(|_| format!("tensor {name:?} dimension {d} too large"))?);
        }
        let type_id = r.u32("tensor type")?;
        let dtype =
            WeightType::from_ggml_id(type_id).ok_or_else(|| format!("tensor {name:?} has unknown type {type_id}"))?;
        let rel_offset = r.u64("tensor offset")?;
        if !names.insert(name.clone()) {
            return Err(format!("duplicate tensor name {name:?}"));
        }
        raw.push(RawTensor { name, dims, dtype, rel_offset });
    }

    let data_offset = (r.pos as u64).div_ceil(alignment) * alignment;
    let data_len = (bytes.len() as u64).saturating_sub(data_offset);
    let mut tensors = Vec::with_capacity(raw.len());
    for t in raw {
        let numel = t
            .dims
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64))
            .ok_or_else(|| format!("tensor {:?}: element count overflows", t.name))?;
        let block = t.dtype.block_elems() as u64;
        if !(t.dims[0] as u64).is_multiple_of(block) {
            return Err(format!(
                "tensor {:?}: first dimension {} is not a multiple of the {}-element block of {}",
                t.name,
                t.dims[0],
                block,
                t.dtype.name()
            ));
        }
        let size = (numel / block)
            .checked_mul(t.dtype.block_bytes() as u64)
            .ok_or_else(|| format!("tensor {:?}: byte size overflows", t.name))?;
        if t.rel_offset % alignment != 0 {
            return Err(format!("tensor {:?}: offset {} is not aligned to {alignment}", t.name, t.rel_offset));
        }
        let end = t.rel_offset.checked_add(size).filter(|&end| end <= data_len);
        if end.is_none() {
            return Err(format!(
                "tensor {:?}: {size} bytes at data offset {} run past the end of the file ({data_len} data bytes)",
                t.name, t.rel_offset
            ));
        }
        tensors.push(TensorInfo {
            name: t.name,
            dims: t.dims,
            dtype: t.dtype,
            offset: (data_offset + t.rel_offset) as usize,
            size: size as usize,
        });
    }

    let mut by_offset: Vec<&TensorInfo> = tensors.iter().collect();
    by_offset.sort_by_key(|t| t.offset);
    for pair in by_offset.windows(2) {
        if pair[0].offset + pair[0].size > pair[1].offset {
            return Err(format!("tensors {:?} and {:?} overlap", pair[0].name, pair[1].name));
        }
    }

    Ok(GgufHeader { version, metadata, tensors, data_offset: data_offset as usize })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::gguf_writer::{write, TensorSpec};

    fn sample() -> Vec<u8> {
        let meta = vec![
            ("general.architecture".to_string(), Value::String("llama".into())),
            ("llama.context_length".to_string(), Value::U32(128)),
            ("tokenizer.ggml.tokens".to_string(), Value::Array(vec![Value::String("a".into()); 3])),
        ];
        let tensors = vec![
            TensorSpec { name: "a".into(), dims: vec![4, 2], type_id: 0, data: vec![0; 32] },
            TensorSpec { name: "b".into(), dims: vec![32], type_id: 8, data: vec![0; 34] },
        ];
        write(&meta, &tensors)
    }

    #[test]
    fn parses_a_written_file() {
        let bytes = sample();
        let h = parse(&bytes, Path::new("x.gguf")).unwrap();
        assert_eq!(h.version, 3);
        assert_eq!(h.arch_get("context_length").and_then(Value::as_u64), Some(128));
        assert_eq!(h.tensors.len(), 2);
        assert_eq!(h.tensor("b").unwrap().size, 34);
        assert_eq!(h.tensor("a").unwrap().shape(), vec![2, 4]);
    }

    #[test]
    fn every_truncation_is_an_error() {
        let bytes = sample();
        for cut in 0..bytes.len() - 30 {
            let err = parse(&bytes[..cut], Path::new("t.gguf")).unwrap_err();
            assert!(matches!(err, Error::ModelLoad { .. }), "cut {cut}: {err}");
        }
    }

    #[test]
    fn lying_counts_are_refused_before_allocating() {
        let mut bytes = sample();
        bytes[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        let err = parse(&bytes, Path::new("t.gguf")).unwrap_err().to_string();
        assert!(err.contains("tensor count"), "{err}");
        let mut bytes = sample();
        bytes[16..24].copy_from_slice(&(1u64 << 40).to_le_bytes());
        let err = parse(&bytes, Path::new("t.gguf")).unwrap_err().to_string();
        assert!(err.contains("metadata count"), "{err}");
    }

    #[test]
    fn bad_magic_and_version() {
        let mut bytes = sample();
        bytes[0] = b'X';
        assert!(parse(&bytes, Path::new("t")).unwrap_err().to_string().contains("not a GGUF file"));
        let mut bytes = sample();
        bytes[4] = 1;
        assert!(parse(&bytes, Path::new("t")).unwrap_err().to_string().contains("version 1"));
    }

    #[test]
    fn overlapping_and_out_of_range_tensors() {
        let meta = vec![];
        let t = |name: &str| TensorSpec { name: name.into(), dims: vec![8], type_id: 0, data: vec![0; 32] };
        let mut bytes = write(&meta, &[t("a"), t("b")]);
        // Point b's offset at a's data, then past the end of the file.
        let hdr = parse(&bytes, Path::new("t")).unwrap();
        let b_off_pos = find_offset_field(&bytes, hdr.data_offset, 32);
        bytes[b_off_pos..b_off_pos + 8].copy_from_slice(&0u64.to_le_bytes());
        let err = parse(&bytes, Path::new("t")).unwrap_err().to_string();
        assert!(err.contains("overlap"), "{err}");
        bytes[b_off_pos..b_off_pos + 8].copy_from_slice(&(1u64 << 40).to_le_bytes());
        let err = parse(&bytes, Path::new("t")).unwrap_err().to_string();
        assert!(err.contains("past the end"), "{err}");
    }

    /// Find the header position where a tensor's relative offset `value` is stored.
    fn find_offset_field(bytes: &[u8], limit: usize, value: u64) -> usize {
        (0..limit - 8).rev().find(|&i| bytes[i..i + 8] == value.to_le_bytes()).unwrap()
    }

    proptest::proptest! {
        #[test]
        fn mutated_headers_never_panic(pos in 0usize..200, byte in 0u8..=255) {
            let mut bytes = sample();
            if pos < bytes.len() {
                bytes[pos] = byte;
            }
            let _ = parse(&bytes, Path::new("m.gguf"));
        }
    }
}
