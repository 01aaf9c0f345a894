//! The GGUF header parser on arbitrary bytes: it must return `Ok` or `Err`, never panic, and every
//! tensor it accepts must lie inside the input and not overlap another.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use modelhost_core::gguf;

fuzz_target!(|data: &[u8]| {
    let path = Path::new("fuzz.gguf");
    let full = gguf::parse(data, path);
    let summary = gguf::parse_summary(data, path);
    assert_eq!(full.is_ok(), summary.is_ok(), "parse and parse_summary disagree");
    if let Ok(header) = full {
        let mut ranges: Vec<(usize, usize)> = Vec::with_capacity(header.tensors.len());
        for t in &header.tensors {
            let end = t.offset.checked_add(t.size).expect("tensor end overflows");
            assert!(t.offset >= header.data_offset, "tensor {:?} starts before the data section", t.name);
            assert!(end <= data.len(), "tensor {:?} runs past the input", t.name);
            ranges.push((t.offset, end));
        }
        ranges.sort_unstable();
        for pair in ranges.windows(2) {
            assert!(pair[0].1 <= pair[1].0, "accepted overlapping tensors");
        }
    }
});
