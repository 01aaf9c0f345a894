//! The safetensors header parser on arbitrary bytes: `Ok` or `Err`, never a panic; accepted tensors
//! lie inside the data section.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use modelhost_core::formats::safetensors;

fuzz_target!(|data: &[u8]| {
    if let Ok(header) = safetensors::parse(data, Path::new("fuzz.safetensors")) {
        // Summing sizes must not overflow for an accepted file: they fit in the input.
        assert!(header.tensor_bytes() <= data.len() as u64, "accepted tensors larger than the input");
        let _ = header.numel();
    }
});
