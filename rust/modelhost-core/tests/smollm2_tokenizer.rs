//! The tokenizer and chat template of the real SmolLM2-135M-Instruct GGUF against llama.cpp's
//! outputs in `tests/refs/smollm2.json` (tokenization, detokenized bytes, end-of-generation ids)
//! and jinja2's renders of the chat template.

use std::path::{Path, PathBuf};
use std::time::Instant;

use modelhost_core::formats::gguf::{parse, GgufHeader, Value};
use modelhost_core::text::template::{ChatMessage, ChatTemplate};
use modelhost_core::text::GgufTokenizer;
use modelhost_core::Error;
use serde_json::Value as Json;

const MODEL: &str = "HuggingFaceTB/SmolLM2-135M-Instruct-GGUF/SmolLM2-135M-Instruct.Q4_1.gguf";

fn model_path() -> PathBuf {
    let dir = std::env::var_os("MODELHOST_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/modelhost/models"));
    dir.join(MODEL)
}

fn refs() -> Json {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/refs/smollm2.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

/// The model's header; a missing model fails the test (the README's test command fetches it).
fn header() -> (GgufHeader, PathBuf) {
    let path = model_path();
    assert!(
        path.is_file(),
        "{} not found: run `python3 scripts/fetch_models.py` (or `make test`, which fetches it)",
        path.display()
    );
    let bytes = std::fs::read(&path).unwrap();
    (parse(&bytes, &path).unwrap(), path)
}

fn ids(v: &Json) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

/// A reference id list, resolving the "same_as_ids" placeholder.
fn ids_or_same(case: &Json, key: &str) -> Vec<u32> {
    match &case[key] {
        Json::String(s) if s == "same_as_ids" => ids(&case["ids"]),
        other => ids(other),
    }
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}

#[test]
fn tokenization_matches_llama_cpp() {
    let (header, path) = header();
    let refs = refs();

    // Build time (not asserted: timings belong in benches). The first build in a process also
    // compiles the pre-tokenizer regexes, which later builds share.
    let mut times = Vec::new();
    for _ in 0..5 {
        let start = Instant::now();
        let tok = GgufTokenizer::from_gguf(&header, &path).unwrap();
        times.push(start.elapsed().as_secs_f64() * 1e3);
        drop(tok);
    }
    eprintln!(
        "GgufTokenizer::from_gguf on SmolLM2 (49152 tokens, 48900 merges): first {:.1} ms, best of 5 {:.1} ms",
        times[0],
        times.iter().copied().fold(f64::INFINITY, f64::min)
    );

    let tok = GgufTokenizer::from_gguf(&header, &path).unwrap();
    let facts = &refs["tokenizer_facts"];
    assert_eq!(tok.vocab_size(), refs["model"]["n_vocab"].as_u64().unwrap() as usize);
    assert_eq!(tok.bos_id(), Some(facts["bos_token_id"].as_u64().unwrap() as u32));
    assert_eq!(tok.eos_id(), Some(facts["eos_token_id"].as_u64().unwrap() as u32));
    assert_eq!(tok.bos_token(), facts["bos_token"].as_str().unwrap());
    assert_eq!(tok.eos_token(), facts["eos_token"].as_str().unwrap());
    assert_eq!(tok.eog_ids(), ids(&facts["end_of_generation_ids_llama_cpp"]).as_slice());
    assert_eq!(tok.eog_ids(), &[0, 2, 4]);
    assert!(tok.warnings().is_empty(), "{:?}", tok.warnings());
    for special in facts["special_tokens_[id,text,token_type]"].as_array().unwrap() {
        let id = special[0].as_u64().unwrap() as u32;
        assert_eq!(tok.token_bytes(id), special[1].as_str().unwrap().as_bytes());
    }

    let cases = refs["tokenization"].as_array().unwrap();
    assert!(cases.len() >= 19);
    let mut failures = Vec::new();
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let expected = ids(&case["ids"]);
        let got = tok.encode(text, true).unwrap();
        if got != expected {
            failures.push(format!("{text:?} parse_special=true: got {got:?}, llama.cpp {expected:?}"));
        }
        let expected_off = ids_or_same(case, "ids_parse_special_off");
        let got_off = tok.encode(text, false).unwrap();
        if got_off != expected_off {
            failures.push(format!("{text:?} parse_special=false: got {got_off:?}, llama.cpp {expected_off:?}"));
        }
        // add_special=false differs only by BOS/EOS, which SmolLM2 does not add.
        assert_eq!(ids_or_same(case, "ids_add_special_false"), expected, "{text:?}");

        // Streaming safety: the per-token bytes, concatenated, are llama.cpp's detokenized bytes.
        let bytes: Vec<u8> = expected.iter().flat_map(|&id| tok.token_bytes(id).to_vec()).collect();
        assert_eq!(bytes, unhex(case["detokenized_bytes_hex"].as_str().unwrap()), "{text:?}");
        assert_eq!(tok.decode(&expected), case["detokenized"].as_str().unwrap(), "{text:?}");
        let pieces: Vec<String> =
            expected.iter().map(|&id| String::from_utf8_lossy(tok.token_bytes(id)).into_owned()).collect();
        let ref_pieces: Vec<&str> =
            case["token_pieces"].as_array().unwrap().iter().map(|p| p.as_str().unwrap()).collect();
        assert_eq!(pieces, ref_pieces, "{text:?}");
    }
    assert!(failures.is_empty(), "{} mismatches:\n{}", failures.len(), failures.join("\n"));

    // The prompts of the completion references, tokenized by llama.cpp too.
    for case in refs["raw_completion"]["cases"].as_array().unwrap() {
        let prompt = case["prompt"].as_str().unwrap();
        assert_eq!(tok.encode(prompt, true).unwrap(), ids(&case["prompt_ids"]), "{prompt:?}");
    }
    for case in refs["chat_completion"]["cases"].as_array().unwrap() {
        let rendered = case["rendered"].as_str().unwrap();
        assert_eq!(tok.encode(rendered, true).unwrap(), ids(&case["prompt_ids"]), "{rendered:?}");
    }
}

#[test]
fn chat_template_matches_jinja2() {
    let (header, path) = header();
    let refs = refs();
    let tok = GgufTokenizer::from_gguf(&header, &path).unwrap();
    let chat = &refs["chat_template"];
    let source = header.get("tokenizer.chat_template").and_then(Value::as_str).unwrap();
    assert_eq!(source, chat["template"].as_str().unwrap());
    let template = ChatTemplate::new(source, tok.bos_token(), tok.eos_token()).unwrap();
    let cases = chat["cases"].as_array().unwrap();
    assert!(!cases.is_empty());
    for case in cases {
        let messages: Vec<ChatMessage> = case["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| ChatMessage::new(m["role"].as_str().unwrap(), m["content"].as_str().unwrap()))
            .collect();
        assert_eq!(template.render(&messages, true).unwrap(), case["rendered"].as_str().unwrap());
        assert_eq!(
            template.render(&messages, false).unwrap(),
            case["rendered_add_generation_prompt_false"].as_str().unwrap()
        );
    }
}

/// The real header with one key replaced (or removed, for `None`).
fn with(header: &GgufHeader, key: &str, value: Option<Value>) -> GgufHeader {
    let mut h = header.clone();
    match value {
        Some(v) => h.metadata.insert(key.to_owned(), v),
        None => h.metadata.remove(key),
    };
    h
}

fn array(header: &GgufHeader, key: &str) -> Vec<Value> {
    header.get(key).and_then(Value::as_array).unwrap().to_vec()
}

#[test]
fn hostile_edits_of_the_real_metadata_are_load_errors() {
    let (header, path) = header();
    let load_error = |h: &GgufHeader, needle: &str| match GgufTokenizer::from_gguf(h, &path) {
        Err(e @ Error::ModelLoad { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains(needle) && msg.contains("SmolLM2"), "{msg}");
        }
        other => panic!("expected a load error mentioning {needle:?}, got {other:?}"),
    };
    load_error(&with(&header, "tokenizer.ggml.tokens", None), "tokenizer.ggml.tokens is missing");

    let mut types = array(&header, "tokenizer.ggml.token_type");
    types.pop();
    load_error(&with(&header, "tokenizer.ggml.token_type", Some(Value::Array(types))), "token_type has 49151 entries");

    let mut merges = array(&header, "tokenizer.ggml.merges");
    merges[7] = Value::String("Ġt".into());
    load_error(&with(&header, "tokenizer.ggml.merges", Some(Value::Array(merges))), "merges[7]");
    let mut merges = array(&header, "tokenizer.ggml.merges");
    merges[7] = Value::String("Ġ nosuchtoken".into());
    load_error(&with(&header, "tokenizer.ggml.merges", Some(Value::Array(merges))), "merges");

    load_error(&with(&header, "tokenizer.ggml.bos_token_id", Some(Value::U32(49152))), "bos_token_id is 49152");

    let mut tokens = array(&header, "tokenizer.ggml.tokens");
    tokens[100] = tokens[99].clone();
    load_error(&with(&header, "tokenizer.ggml.tokens", Some(Value::Array(tokens))), "duplicate token");

    let err = GgufTokenizer::from_gguf(&with(&header, "tokenizer.ggml.model", Some(Value::String("t5".into()))), &path)
        .unwrap_err();
    assert!(matches!(&err, Error::NotSupported(m) if m.contains("\"t5\"")), "{err}");
}
