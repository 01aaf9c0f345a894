//! GGUF header → tokenizer → encode/decode a fixed string: the tokenizer builder must reject
//! malformed `tokenizer.ggml.*` metadata with an error, and a tokenizer it builds must not panic.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use modelhost_core::{formats::gguf, text::GgufTokenizer};

const TEXT: &str = "Hello, world! <|im_start|>user\n  Ünïcødé 🦀 1234 \t\n<0x41> ▁x</s>";

fuzz_target!(|data: &[u8]| {
    let path = Path::new("fuzz.gguf");
    let Ok(header) = gguf::parse(data, path) else { return };
    let Ok(tok) = GgufTokenizer::from_gguf(&header, path) else { return };
    for parse_special in [false, true] {
        if let Ok(ids) = tok.encode(TEXT, parse_special) {
            for &id in &ids {
                assert!((id as usize) < tok.vocab_size(), "encode produced id {id} out of range");
                let _ = tok.token_bytes(id);
            }
            let _ = tok.decode(&ids);
        }
    }
});
