//! Writes small safetensors files for tests: the parser's own and the BERT loader's tiny models.

use super::safetensors::{Dtype, METADATA_KEY};

/// Serialise tensors (name, dtype, shape, raw little-endian data) and string metadata, in the order
/// given, padding the header with spaces to a multiple of 8 bytes as the reference writer does.
pub fn write(tensors: &[(&str, Dtype, &[usize], &[u8])], metadata: &[(&str, &str)]) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    if !metadata.is_empty() {
        let m = metadata.iter().map(|(k, v)| (k.to_string(), serde_json::Value::from(*v))).collect();
        header.insert(METADATA_KEY.to_string(), serde_json::Value::Object(m));
    }
    let mut offset = 0usize;
    for (name, dtype, shape, data) in tensors {
        let entry = serde_json::json!({
            "dtype": dtype.name(),
            "shape": shape,
            "data_offsets": [offset, offset + data.len()],
        });
        header.insert(name.to_string(), entry);
        offset += data.len();
    }
    let mut json = serde_json::to_string(&header).unwrap_or_default().into_bytes();
    while !json.len().is_multiple_of(8) {
        json.push(b' ');
    }
    let mut out = (json.len() as u64).to_le_bytes().to_vec();
    out.extend(json);
    for (_, _, _, data) in tensors {
        out.extend_from_slice(data);
    }
    out
}

/// Little-endian bytes of f32 values.
pub fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}
