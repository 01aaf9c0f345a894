//! safetensors header parser over a byte slice, normally the file's memory map.
//!
//! Modelled on the safetensors crate's `read_metadata` and `Metadata::validate`: the header length is
//! capped and checked against the file before anything is parsed, the JSON header is parsed with
//! serde_json (duplicate names refused), and every tensor's dtype, shape and byte span is validated with
//! checked arithmetic so that the spans, sorted, run contiguously from 0 and fill the data exactly. The
//! allocations are bounded by the header's real size, never by what it claims.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::path::Path;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;

use crate::error::{Error, Result};

/// Bytes of the little-endian header length that opens the file.
const LEN_BYTES: usize = 8;
/// The largest JSON header accepted (the safetensors crate's `MAX_HEADER_SIZE`).
pub const MAX_HEADER_BYTES: usize = 100_000_000;
/// The key of the free-form string-to-string metadata in the header.
pub(crate) const METADATA_KEY: &str = "__metadata__";

/// Element types of the safetensors format.
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dtype {
    /// Boolean, one byte.
    BOOL,
    /// MX FP4 (4 bits).
    F4,
    /// MX FP6 E2M3 (6 bits).
    F6_E2M3,
    /// MX FP6 E3M2 (6 bits).
    F6_E3M2,
    /// Unsigned byte.
    U8,
    /// Signed byte.
    I8,
    /// FP8 E5M2.
    F8_E5M2,
    /// FP8 E4M3.
    F8_E4M3,
    /// FP8 E8M0 (MX scales).
    F8_E8M0,
    /// FP8 E4M3 FNUZ.
    F8_E4M3FNUZ,
    /// FP8 E5M2 FNUZ.
    F8_E5M2FNUZ,
    /// Signed 16-bit integer.
    I16,
    /// Unsigned 16-bit integer.
    U16,
    /// IEEE half precision.
    F16,
    /// bfloat16.
    BF16,
    /// Signed 32-bit integer.
    I32,
    /// Unsigned 32-bit integer.
    U32,
    /// IEEE single precision.
    F32,
    /// Complex with 32-bit parts.
    C64,
    /// IEEE double precision.
    F64,
    /// Signed 64-bit integer.
    I64,
    /// Unsigned 64-bit integer.
    U64,
}

impl Dtype {
    const ALL: [Dtype; 22] = [
        Dtype::BOOL,
        Dtype::F4,
        Dtype::F6_E2M3,
        Dtype::F6_E3M2,
        Dtype::U8,
        Dtype::I8,
        Dtype::F8_E5M2,
        Dtype::F8_E4M3,
        Dtype::F8_E8M0,
        Dtype::F8_E4M3FNUZ,
        Dtype::F8_E5M2FNUZ,
        Dtype::I16,
        Dtype::U16,
        Dtype::F16,
        Dtype::BF16,
        Dtype::I32,
        Dtype::U32,
        Dtype::F32,
        Dtype::C64,
        Dtype::F64,
        Dtype::I64,
        Dtype::U64,
    ];

    /// The name used in headers (`"F32"`, `"BF16"`, …).
    pub fn name(self) -> &'static str {
        match self {
            Dtype::BOOL => "BOOL",
            Dtype::F4 => "F4",
            Dtype::F6_E2M3 => "F6_E2M3",
            Dtype::F6_E3M2 => "F6_E3M2",
            Dtype::U8 => "U8",
            Dtype::I8 => "I8",
            Dtype::F8_E5M2 => "F8_E5M2",
            Dtype::F8_E4M3 => "F8_E4M3",
            Dtype::F8_E8M0 => "F8_E8M0",
            Dtype::F8_E4M3FNUZ => "F8_E4M3FNUZ",
            Dtype::F8_E5M2FNUZ => "F8_E5M2FNUZ",
            Dtype::I16 => "I16",
            Dtype::U16 => "U16",
            Dtype::F16 => "F16",
            Dtype::BF16 => "BF16",
            Dtype::I32 => "I32",
            Dtype::U32 => "U32",
            Dtype::F32 => "F32",
            Dtype::C64 => "C64",
            Dtype::F64 => "F64",
            Dtype::I64 => "I64",
            Dtype::U64 => "U64",
        }
    }

    /// Parse a header dtype name; `None` for a name the format does not define.
    pub fn from_name(name: &str) -> Option<Dtype> {
        Self::ALL.into_iter().find(|d| d.name() == name)
    }

    /// Bits per element.
    pub fn bits(self) -> usize {
        match self {
            Dtype::F4 => 4,
            Dtype::F6_E2M3 | Dtype::F6_E3M2 => 6,
            Dtype::BOOL
            | Dtype::U8
            | Dtype::I8
            | Dtype::F8_E5M2
            | Dtype::F8_E4M3
            | Dtype::F8_E8M0
            | Dtype::F8_E4M3FNUZ
            | Dtype::F8_E5M2FNUZ => 8,
            Dtype::I16 | Dtype::U16 | Dtype::F16 | Dtype::BF16 => 16,
            Dtype::I32 | Dtype::U32 | Dtype::F32 => 32,
            Dtype::C64 | Dtype::F64 | Dtype::I64 | Dtype::U64 => 64,
        }
    }
}

impl fmt::Display for Dtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One tensor's header entry, with its byte range already validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SafeTensorInfo {
    /// Tensor name.
    pub name: String,
    /// Element type.
    pub dtype: Dtype,
    /// Dimensions, row-major (slowest first).
    pub shape: Vec<usize>,
    /// Absolute byte offset of the data in the file.
    pub offset: usize,
    /// Byte length of the data.
    pub size: usize,
}

impl SafeTensorInfo {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        // Cannot overflow: `parse` checked the product.
        self.shape.iter().product()
    }
}

/// A parsed, validated safetensors header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SafetensorsHeader {
    /// Tensor entries in file (offset) order.
    pub tensors: Vec<SafeTensorInfo>,
    /// The free-form `__metadata__` strings (empty when absent).
    pub metadata: BTreeMap<String, String>,
    /// Absolute offset of the data section (8 + header length).
    pub data_offset: usize,
}

impl SafetensorsHeader {
    /// A tensor by name.
    pub fn tensor(&self, name: &str) -> Option<&SafeTensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// Total bytes of tensor data.
    pub fn tensor_bytes(&self) -> u64 {
        self.tensors.iter().map(|t| t.size as u64).sum()
    }

    /// Total number of elements over all tensors (the parameter count).
    pub fn numel(&self) -> u64 {
        self.tensors.iter().map(|t| t.numel() as u64).sum()
    }
}

type ParseResult<T> = std::result::Result<T, String>;

/// Parse and validate a safetensors file's header; `bytes` is the whole file.
pub fn parse(bytes: &[u8], path: &Path) -> Result<SafetensorsHeader> {
    parse_inner(bytes).map_err(|reason| Error::load(path, reason))
}

/// Parse only the header of a file (reads its first bytes, no mapping) and check it against the
/// file's length: for catalog listings, which must not touch the weights.
pub fn parse_file_header(path: &Path) -> Result<SafetensorsHeader> {
    use std::io::Read;
    let (mut file, file_len) = crate::storage::open_model_file(path)?;
    let mut len_bytes = [0u8; LEN_BYTES];
    if file_len < LEN_BYTES as u64 {
        return Err(Error::load(path, too_small(file_len as usize)));
    }
    file.read_exact(&mut len_bytes).map_err(|e| Error::load(path, e.to_string()))?;
    let n = header_len(u64::from_le_bytes(len_bytes), file_len).map_err(|r| Error::load(path, r))?;
    let mut head = vec![0u8; LEN_BYTES + n];
    head[..LEN_BYTES].copy_from_slice(&len_bytes);
    file.read_exact(&mut head[LEN_BYTES..]).map_err(|e| Error::load(path, e.to_string()))?;
    let data_len = usize::try_from(file_len - (LEN_BYTES + n) as u64)
        .map_err(|_| Error::load(path, "file too large for this platform"))?;
    parse_header_json(&head[LEN_BYTES..], LEN_BYTES + n, data_len).map_err(|r| Error::load(path, r))
}

fn too_small(len: usize) -> String {
    format!("file of {len} bytes is too small for a safetensors header (needs at least {LEN_BYTES})")
}

/// Check the declared header length against the cap and the file's size.
fn header_len(n: u64, file_len: u64) -> ParseResult<usize> {
    if n > MAX_HEADER_BYTES as u64 {
        return Err(format!("header length {n} is larger than the {MAX_HEADER_BYTES}-byte limit"));
    }
    if n > file_len.saturating_sub(LEN_BYTES as u64) {
        return Err(format!("header length {n} runs past the end of the {file_len}-byte file"));
    }
    if n < 2 {
        return Err(format!("header length {n} is too small for a JSON object"));
    }
    // Fits: n ≤ MAX_HEADER_BYTES.
    Ok(n as usize)
}

fn parse_inner(bytes: &[u8]) -> ParseResult<SafetensorsHeader> {
    let Some(len_bytes) = bytes.get(..LEN_BYTES) else {
        return Err(too_small(bytes.len()));
    };
    let mut arr = [0u8; LEN_BYTES];
    arr.copy_from_slice(len_bytes);
    let n = header_len(u64::from_le_bytes(arr), bytes.len() as u64)?;
    let data_offset = LEN_BYTES + n;
    let header = bytes.get(LEN_BYTES..data_offset).ok_or_else(|| format!("header length {n} runs past the end"))?;
    parse_header_json(header, data_offset, bytes.len() - data_offset)
}

/// Validate the JSON header; the data section starts at `data_offset` and holds `data_len` bytes.
fn parse_header_json(header: &[u8], data_offset: usize, data_len: usize) -> ParseResult<SafetensorsHeader> {
    let text = std::str::from_utf8(header)
        .map_err(|e| format!("header is not valid UTF-8 (at byte {})", LEN_BYTES + e.valid_up_to()))?;
    // The format pads the header with trailing spaces; anything else must be a JSON object.
    if !text.starts_with('{') {
        return Err("header is not a JSON object".to_string());
    }
    let raw: RawHeader = serde_json::from_str(text).map_err(|e| format!("header is not valid JSON: {e}"))?;
    let mut tensors = Vec::with_capacity(raw.tensors.len());
    for (name, entry) in raw.tensors {
        let dtype = Dtype::from_name(&entry.dtype)
            .ok_or_else(|| format!("tensor {name:?} has unknown dtype {:?}", entry.dtype))?;
        let [start, end] = entry.data_offsets;
        if end < start {
            return Err(format!("tensor {name:?} has data_offsets [{start}, {end}] that end before they start"));
        }
        let numel = entry
            .shape
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| format!("tensor {name:?} has shape {:?} whose size overflows", entry.shape))?;
        let bits = numel
            .checked_mul(dtype.bits() as u64)
            .ok_or_else(|| format!("tensor {name:?} has shape {:?} whose size overflows", entry.shape))?;
        if bits % 8 != 0 {
            return Err(format!("tensor {name:?} has {numel} {dtype} elements, which is not a whole number of bytes"));
        }
        let size = bits / 8;
        if end - start != size {
            return Err(format!(
                "tensor {name:?} of dtype {dtype} and shape {:?} needs {size} bytes but its data_offsets \
                 [{start}, {end}] span {}",
                entry.shape,
                end - start
            ));
        }
        if end > data_len as u64 {
            return Err(format!(
                "tensor {name:?} has data_offsets [{start}, {end}] past the end of the {data_len}-byte data section"
            ));
        }
        // All fit in usize: end ≤ data_len and every dim ≤ numel ≤ size·8.
        let shape = entry.shape.iter().map(|&d| d as usize).collect();
        tensors
            .push((start as usize, SafeTensorInfo { name, dtype, shape, offset: start as usize, size: size as usize }));
    }
    // Sort by span so the contiguity check below sees file order (zero-size tensors first at a tie).
    tensors.sort_by_key(|(start, t)| (*start, t.size));
    let mut expected = 0usize;
    for (start, t) in &tensors {
        if *start < expected {
            return Err(format!("tensor {:?} at data offset {start} overlaps the tensor before it", t.name));
        }
        if *start > expected {
            return Err(format!(
                "tensor {:?} at data offset {start} leaves a gap of {} bytes before it",
                t.name,
                start - expected
            ));
        }
        expected = start + t.size;
    }
    if expected != data_len {
        return Err(format!(
            "the tensors cover {expected} bytes but the data section holds {data_len} (trailing bytes)"
        ));
    }
    let tensors = tensors
        .into_iter()
        .map(|(start, mut t)| {
            t.offset = data_offset + start;
            t
        })
        .collect();
    Ok(SafetensorsHeader { tensors, metadata: raw.metadata.unwrap_or_default(), data_offset })
}

/// One tensor entry as written in the JSON (unknown fields are ignored, as the safetensors crate does).
#[derive(Deserialize)]
struct RawTensor {
    dtype: String,
    shape: Vec<u64>,
    data_offsets: [u64; 2],
}

/// The JSON header in file order, with duplicate names refused (serde_json's map keeps the last).
struct RawHeader {
    tensors: Vec<(String, RawTensor)>,
    metadata: Option<BTreeMap<String, String>>,
}

impl<'de> Deserialize<'de> for RawHeader {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        struct HeaderVisitor;

        impl<'de> Visitor<'de> for HeaderVisitor {
            type Value = RawHeader;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map of tensor names to {dtype, shape, data_offsets}")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<RawHeader, A::Error> {
                let mut tensors = Vec::new();
                let mut metadata = None;
                let mut seen = HashSet::new();
                while let Some(name) = map.next_key::<String>()? {
                    if !seen.insert(name.clone()) {
                        return Err(de::Error::custom(format!("duplicate tensor name {name:?}")));
                    }
                    if name == METADATA_KEY {
                        // A JSON null is treated as absent, as the safetensors crate does.
                        metadata = map.next_value::<Option<BTreeMap<String, String>>>()?;
                    } else {
                        let entry = map
                            .next_value::<RawTensor>()
                            .map_err(|e| de::Error::custom(format!("tensor {name:?}: {e}")))?;
                        tensors.push((name, entry));
                    }
                }
                Ok(RawHeader { tensors, metadata })
            }
        }

        deserializer.deserialize_map(HeaderVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::safetensors_writer::{f32_bytes, write};

    fn sample() -> Vec<u8> {
        let a = f32_bytes(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let b = vec![7u8; 4];
        write(&[("a", Dtype::F32, &[2, 3], &a), ("b", Dtype::U8, &[4], &b)], &[("format", "pt")])
    }

    /// A file with a hand-written JSON header and `data_len` zero bytes of data.
    fn with_header(json: &str, data_len: usize) -> Vec<u8> {
        let mut out = (json.len() as u64).to_le_bytes().to_vec();
        out.extend(json.as_bytes());
        out.extend(std::iter::repeat_n(0u8, data_len));
        out
    }

    fn err(bytes: &[u8]) -> String {
        match parse(bytes, Path::new("m.safetensors")).unwrap_err() {
            Error::ModelLoad { path, reason } => {
                assert_eq!(path, Path::new("m.safetensors"));
                reason
            }
            other => panic!("not a load error: {other}"),
        }
    }

    #[test]
    fn parses_a_written_file() {
        let bytes = sample();
        let h = parse(&bytes, Path::new("m.safetensors")).unwrap();
        assert_eq!(h.metadata.get("format").map(String::as_str), Some("pt"));
        assert_eq!(h.tensors.len(), 2);
        let a = h.tensor("a").unwrap();
        assert_eq!((a.dtype, a.shape.clone(), a.size, a.offset), (Dtype::F32, vec![2, 3], 24, h.data_offset));
        assert_eq!(&bytes[a.offset..a.offset + 4], &1f32.to_le_bytes());
        let b = h.tensor("b").unwrap();
        assert_eq!((b.offset, b.size), (h.data_offset + 24, 4));
        assert_eq!(h.tensor_bytes(), 28);
        assert_eq!(h.numel(), 10);
    }

    #[test]
    fn tensors_come_back_in_offset_order() {
        let h = with_header(
            r#"{"late":{"dtype":"U8","shape":[2],"data_offsets":[2,4]},"early":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}}"#,
            4,
        );
        let h = parse(&h, Path::new("m")).unwrap();
        assert_eq!(h.tensors.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(), ["early", "late"]);
        assert!(h.metadata.is_empty());
    }

    #[test]
    fn scalars_empty_tensors_and_no_tensors() {
        let h = with_header(
            r#"{"s":{"dtype":"F64","shape":[],"data_offsets":[0,8]},"e":{"dtype":"F32","shape":[0,3],"data_offsets":[8,8]}}"#,
            8,
        );
        let h = parse(&h, Path::new("m")).unwrap();
        assert_eq!(h.tensor("s").unwrap().numel(), 1);
        assert_eq!(h.tensor("e").unwrap().size, 0);
        let empty = with_header("{}", 0);
        assert!(parse(&empty, Path::new("m")).unwrap().tensors.is_empty());
        let padded = with_header(r#"{"__metadata__":null}   "#, 0);
        assert!(parse(&padded, Path::new("m")).unwrap().metadata.is_empty());
    }

    #[test]
    fn every_dtype_round_trips_its_name() {
        for d in Dtype::ALL {
            assert_eq!(Dtype::from_name(d.name()), Some(d));
        }
        assert_eq!(Dtype::from_name("f32"), None);
    }

    #[test]
    fn header_too_small() {
        assert!(err(&[]).contains("too small"));
        assert!(err(&[1, 0, 0]).contains("too small"));
    }

    #[test]
    fn header_too_large() {
        let mut bytes = sample();
        bytes[..8].copy_from_slice(&(MAX_HEADER_BYTES as u64 + 1).to_le_bytes());
        assert!(err(&bytes).contains("limit"));
        bytes[..8].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(err(&bytes).contains("limit"));
    }

    #[test]
    fn header_past_end_of_file() {
        let mut bytes = sample();
        let len = bytes.len() as u64;
        bytes[..8].copy_from_slice(&(len - 7).to_le_bytes());
        assert!(err(&bytes).contains("past the end"), "{}", err(&bytes));
    }

    #[test]
    fn every_truncation_is_an_error() {
        let bytes = sample();
        for cut in 0..bytes.len() {
            let e = parse(&bytes[..cut], Path::new("t")).unwrap_err();
            assert!(matches!(e, Error::ModelLoad { .. }), "cut {cut}: {e}");
        }
    }

    #[test]
    fn not_utf8() {
        let mut bytes = with_header(r#"{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}"#, 1);
        bytes[10] = 0xff;
        assert!(err(&bytes).contains("UTF-8"));
    }

    #[test]
    fn not_json_or_not_an_object() {
        assert!(err(&with_header(r#"{"a": "#, 0)).contains("not valid JSON"));
        assert!(err(&with_header("[1, 2]", 0)).contains("not a JSON object"));
        assert!(err(&with_header(r#"{"a": 3}"#, 0)).contains("not valid JSON"));
        assert!(err(&with_header(r#"{"a":{"dtype":"U8","shape":[-1],"data_offsets":[0,1]}}"#, 1)).contains("JSON"));
        assert!(err(&with_header(r#"{"a":{"dtype":"U8","shape":[1]}}"#, 1)).contains("data_offsets"));
        assert!(err(&with_header(r#"{"__metadata__":{"k":1}}"#, 0)).contains("not valid JSON"));
    }

    #[test]
    fn duplicate_names() {
        let json = r#"{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"a":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}}"#;
        assert!(err(&with_header(json, 2)).contains("duplicate tensor name \"a\""));
    }

    #[test]
    fn unknown_dtype() {
        let json = r#"{"a":{"dtype":"Q4_K","shape":[1],"data_offsets":[0,1]}}"#;
        assert!(err(&with_header(json, 1)).contains("unknown dtype \"Q4_K\""));
    }

    #[test]
    fn size_overflow() {
        let json = format!(r#"{{"a":{{"dtype":"F32","shape":[{},{}],"data_offsets":[0,4]}}}}"#, u64::MAX, 2);
        assert!(err(&with_header(&json, 4)).contains("overflows"));
        let json = format!(r#"{{"a":{{"dtype":"F64","shape":[{}],"data_offsets":[0,4]}}}}"#, u64::MAX / 4);
        assert!(err(&with_header(&json, 4)).contains("overflows"));
    }

    #[test]
    fn sub_byte_sizes() {
        let json = r#"{"a":{"dtype":"F4","shape":[3],"data_offsets":[0,2]}}"#;
        assert!(err(&with_header(json, 2)).contains("whole number of bytes"));
        let json = r#"{"a":{"dtype":"F4","shape":[4],"data_offsets":[0,2]}}"#;
        assert_eq!(parse(&with_header(json, 2), Path::new("m")).unwrap().tensors[0].size, 2);
    }

    #[test]
    fn size_mismatch() {
        let json = r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}}"#;
        assert!(err(&with_header(json, 4)).contains("needs 8 bytes"));
    }

    #[test]
    fn reversed_offsets() {
        let json = r#"{"a":{"dtype":"U8","shape":[0],"data_offsets":[4,0]}}"#;
        assert!(err(&with_header(json, 4)).contains("end before they start"));
    }

    #[test]
    fn offsets_past_the_end() {
        let json = r#"{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]}}"#;
        assert!(err(&with_header(json, 3)).contains("past the end"));
        let json = format!(r#"{{"a":{{"dtype":"U8","shape":[1],"data_offsets":[{},{}]}}}}"#, u64::MAX - 1, u64::MAX);
        assert!(err(&with_header(&json, 3)).contains("past the end"));
    }

    #[test]
    fn overlap() {
        let json = r#"{"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},"b":{"dtype":"U8","shape":[2],"data_offsets":[1,3]}}"#;
        assert!(err(&with_header(json, 3)).contains("overlaps"));
    }

    #[test]
    fn gap() {
        let json = r#"{"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},"b":{"dtype":"U8","shape":[2],"data_offsets":[3,5]}}"#;
        assert!(err(&with_header(json, 5)).contains("gap of 1 bytes"));
        let json = r#"{"b":{"dtype":"U8","shape":[2],"data_offsets":[1,3]}}"#;
        assert!(err(&with_header(json, 3)).contains("gap"));
    }

    #[test]
    fn trailing_bytes() {
        let json = r#"{"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}}"#;
        assert!(err(&with_header(json, 3)).contains("trailing"));
    }

    #[test]
    fn header_only_read_matches_full_parse() {
        let dir = std::env::temp_dir().join(format!("mh-st-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("m.safetensors");
        let bytes = sample();
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(parse_file_header(&path).unwrap(), parse(&bytes, &path).unwrap());
        std::fs::write(&path, &bytes[..bytes.len() - 1]).unwrap();
        assert!(parse_file_header(&path).unwrap_err().to_string().contains("past the end"));
        std::fs::write(&path, [&bytes[..], &[0]].concat()).unwrap();
        assert!(parse_file_header(&path).unwrap_err().to_string().contains("trailing"));
        std::fs::write(&path, &bytes[..20]).unwrap();
        assert!(parse_file_header(&path).unwrap_err().to_string().contains("past the end"));
        std::fs::write(&path, &bytes[..5]).unwrap();
        assert!(parse_file_header(&path).unwrap_err().to_string().contains("too small"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    proptest::proptest! {
        #[test]
        fn mutated_headers_never_panic(pos in 0usize..160, byte in 0u8..=255, cut in 0usize..200) {
            let mut bytes = sample();
            if pos < bytes.len() {
                bytes[pos] = byte;
            }
            let cut = cut.min(bytes.len());
            let _ = parse(&bytes, Path::new("m.safetensors"));
            let _ = parse(&bytes[..cut], Path::new("m.safetensors"));
        }

        #[test]
        fn arbitrary_json_headers_never_panic(json in "\\{[\"a-z0-9_:,\\[\\]{} -]{0,120}\\}", data in 0usize..64) {
            let _ = parse(&with_header(&json, data), Path::new("m.safetensors"));
        }
    }
}
