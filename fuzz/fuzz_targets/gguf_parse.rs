//! The GGUF header parser on arbitrary bytes: it must return `Ok` or `Err`, never panic, and every
//! tensor it accepts must lie inside the input and not overlap another.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use modelhost_core::formats::gguf;

fuzz_target!(|data: &[u8]| {
    let path = Path::new("fuzz.gguf");
    let full = gguf::parse(data, path);
    let summary = gguf::parse_summary(data, path);
    // The summary checks everything but the UTF-8 of array strings, which only the full parse reads.
    match (&full, &summary) {
        (Ok(_), Err(e)) => panic!("parse_summary refused what parse accepted: {e}"),
        (Err(e), Ok(_)) => assert!(e.to_string().contains("UTF-8"), "parse_summary accepted: {e}"),
        _ => {}
    }
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
