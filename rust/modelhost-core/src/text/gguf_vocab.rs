//! What llama.cpp reads from a GGUF's `tokenizer.ggml.*` metadata besides the merge rules: the token texts,
//! their attributes, the special tokens it recognises by their text, and each token's detokenized bytes.

use std::collections::HashMap;
use std::path::Path;

use super::bpe::char_to_byte;
use crate::error::{Error, Result};
use crate::formats::gguf::{GgufHeader, Value};

/// Vocabularies larger than this are refused (the largest real ones have ~260k tokens); ids must
/// also stay below `i32::MAX`, llama.cpp's token type.
const MAX_VOCAB: usize = 1 << 24;

// Token attributes, llama.h `llama_token_attr` (a bit set).
pub(super) const ATTR_UNKNOWN: u16 = 1 << 0;
pub(super) const ATTR_UNUSED: u16 = 1 << 1;
pub(super) const ATTR_NORMAL: u16 = 1 << 2;
pub(super) const ATTR_CONTROL: u16 = 1 << 3;
pub(super) const ATTR_USER_DEFINED: u16 = 1 << 4;
pub(super) const ATTR_BYTE: u16 = 1 << 5;
/// Whitespace before the token is dropped when it is split out of a text.
pub(super) const ATTR_LSTRIP: u16 = 1 << 7;
/// Whitespace after the token is dropped when it is split out of a text.
pub(super) const ATTR_RSTRIP: u16 = 1 << 8;

/// Any integer metadata value as an `i64` (u64 values past `i64::MAX` saturate).
pub(super) fn integer(v: &Value) -> Option<i64> {
    Some(match *v {
        Value::U8(x) => x.into(),
        Value::I8(x) => x.into(),
        Value::U16(x) => x.into(),
        Value::I16(x) => x.into(),
        Value::U32(x) => x.into(),
        Value::I32(x) => x.into(),
        Value::U64(x) => i64::try_from(x).unwrap_or(i64::MAX),
        Value::I64(x) => x,
        _ => return None,
    })
}

/// `tokenizer.ggml.token_type` values, llama.h `llama_token_type`, mapped to attributes.
pub(super) fn attr_from_type(token_type: i64) -> u16 {
    match token_type {
        1 => ATTR_NORMAL,
        2 => ATTR_UNKNOWN,
        3 => ATTR_CONTROL,
        4 => ATTR_USER_DEFINED,
        5 => ATTR_UNUSED,
        6 => ATTR_BYTE,
        // 0 (undefined) and anything unknown: llama.cpp maps both to LLAMA_TOKEN_ATTR_UNDEFINED.
        _ => 0,
    }
}

// Token texts llama.cpp's `llama_vocab::impl::load` recognises (same order, same lists).
const EOT_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "<｜end▁of▁sentence｜>",
    "<end_of_utterance>",
];
const EOM_TEXTS: &[&str] = &["<|eom_id|>"];
const FIM_PRE_TEXTS: &[&str] = &[
    "<|fim_prefix|>",
    "<fim-prefix>",
    "<fim_prefix>",
    "<｜fim▁begin｜>",
    "<PRE>",
    "▁<PRE>",
    "<|code_prefix|>",
    "<|prefix|>",
];
const FIM_SUF_TEXTS: &[&str] = &[
    "<|fim_suffix|>",
    "<fim-suffix>",
    "<fim_suffix>",
    "<｜fim▁hole｜>",
    "<SUF>",
    "▁<SUF>",
    "<|code_suffix|>",
    "<|suffix|>",
];
const FIM_MID_TEXTS: &[&str] = &[
    "<|fim_middle|>",
    "<fim-middle>",
    "<fim_middle>",
    "<｜fim▁end｜>",
    "<MID>",
    "▁<MID>",
    "<|code_middle|>",
    "<|middle|>",
];
const FIM_PAD_TEXTS: &[&str] = &["<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"];
const FIM_REP_TEXTS: &[&str] = &["<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"];
const FIM_SEP_TEXTS: &[&str] = &["<|file_sep|>"];
const EOG_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<|flush|>",
    "<|calls|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "</s>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "[EOS]",
    "<|end_of_text|>",
    "<end_of_utterance>",
    "<eos>",
    "<turn|>",
    "<|tool_response>",
    "<｜end▁of▁sentence｜>",
    "[e~[",
];
/// gpt-oss tokens that llama.cpp always renders (forced to user-defined).
const ALWAYS_RENDERED_TEXTS: &[&str] = &["<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"];

/// Typed access to `tokenizer.ggml.*` keys, every failure a `ModelLoad` error naming the key.
pub(super) struct Meta<'a> {
    pub(super) header: &'a GgufHeader,
    pub(super) path: &'a Path,
}

impl<'a> Meta<'a> {
    pub(super) fn err(&self, reason: impl Into<String>) -> Error {
        Error::load(self.path, reason)
    }

    pub(super) fn str(&self, key: &str) -> Result<Option<&'a str>> {
        match self.header.get(key) {
            None => Ok(None),
            Some(v) => v.as_str().map(Some).ok_or_else(|| self.err(format!("{key} is not a string"))),
        }
    }

    pub(super) fn bool(&self, key: &str) -> Result<Option<bool>> {
        match self.header.get(key) {
            None => Ok(None),
            Some(v) => v.as_bool().map(Some).ok_or_else(|| self.err(format!("{key} is not a bool"))),
        }
    }

    pub(super) fn array(&self, key: &str) -> Result<Option<&'a [Value]>> {
        match self.header.get(key) {
            None => Ok(None),
            Some(v) => v.as_array().map(Some).ok_or_else(|| self.err(format!("{key} is not an array"))),
        }
    }

    /// An array that must have exactly one entry per token.
    pub(super) fn per_token_array(&self, key: &str, n_tokens: usize) -> Result<Option<&'a [Value]>> {
        let Some(items) = self.array(key)? else { return Ok(None) };
        if items.len() != n_tokens {
            return Err(self.err(format!("{key} has {} entries but there are {n_tokens} tokens", items.len())));
        }
        Ok(Some(items))
    }

    /// A token id, which must name a token.
    pub(super) fn token_id(&self, key: &str, n_tokens: usize) -> Result<Option<u32>> {
        let Some(v) = self.header.get(key) else { return Ok(None) };
        let id = v.as_u64().ok_or_else(|| self.err(format!("{key} is {v:?}, not a token id")))?;
        if id >= n_tokens as u64 {
            return Err(self.err(format!("{key} is {id} but the vocabulary has {n_tokens} tokens")));
        }
        Ok(Some(id as u32))
    }
}

/// The special token ids llama.cpp tracks, from metadata or defaults, then detected by text.
#[derive(Default)]
pub(super) struct SpecialIds {
    pub(super) bos: Option<u32>,
    pub(super) eos: Option<u32>,
    pub(super) eot: Option<u32>,
    pub(super) eom: Option<u32>,
    pub(super) fim_pre: Option<u32>,
    pub(super) fim_suf: Option<u32>,
    pub(super) fim_mid: Option<u32>,
    pub(super) fim_pad: Option<u32>,
    pub(super) fim_rep: Option<u32>,
    pub(super) fim_sep: Option<u32>,
}

/// Read `tokenizer.ggml.tokens`, renaming empty tokens and refusing duplicates as llama.cpp does.
pub(super) fn read_tokens(meta: &Meta<'_>) -> Result<Vec<String>> {
    let tokens = meta.array("tokenizer.ggml.tokens")?.ok_or_else(|| meta.err("tokenizer.ggml.tokens is missing"))?;
    if tokens.is_empty() {
        return Err(meta.err("tokenizer.ggml.tokens is empty"));
    }
    if tokens.len() > MAX_VOCAB {
        return Err(meta.err(format!("tokenizer.ggml.tokens has {} tokens, more than {MAX_VOCAB}", tokens.len())));
    }
    let mut texts = Vec::with_capacity(tokens.len());
    for (i, v) in tokens.iter().enumerate() {
        let text = v.as_str().ok_or_else(|| meta.err(format!("tokenizer.ggml.tokens[{i}] is {v:?}, not a string")))?;
        texts.push(if text.is_empty() { format!("[EMPTY_{i}]") } else { text.to_owned() });
    }
    Ok(texts)
}

/// Find the tokens llama.cpp recognises by their text, mark them as control tokens, and return the
/// end-of-generation set (llama.cpp `llama_vocab::impl::load`, "auto-detect special tokens by text"
/// through the EOG workarounds).
///
/// Where llama.cpp takes "the first match" while iterating a hash map (so in no defined order), the
/// lowest id wins here; that only matters for a vocabulary holding two spellings of one FIM token.
pub(super) fn detect_special(texts: &[String], attrs: &mut [u16], ids: &mut SpecialIds) -> Vec<u32> {
    const LISTS: [&[&str]; 10] = [
        EOT_TEXTS,
        EOM_TEXTS,
        FIM_PRE_TEXTS,
        FIM_SUF_TEXTS,
        FIM_MID_TEXTS,
        FIM_PAD_TEXTS,
        FIM_REP_TEXTS,
        FIM_SEP_TEXTS,
        EOG_TEXTS,
        ALWAYS_RENDERED_TEXTS,
    ];
    // All the names start with one of a few bytes ('<', '[', '_', '▁'): look only at tokens that
    // do too, in id order, instead of comparing every token with every name.
    let mut first_bytes = [false; 256];
    for name in LISTS.iter().flat_map(|list| list.iter()) {
        first_bytes[name.as_bytes()[0] as usize] = true;
    }
    let candidates: Vec<usize> =
        (0..texts.len()).filter(|&id| texts[id].as_bytes().first().is_some_and(|&b| first_bytes[b as usize])).collect();
    let find = |names: &[&str]| candidates.iter().find(|&&id| names.contains(&texts[id].as_str())).map(|&id| id as u32);
    for (slot, names) in [
        (&mut ids.eot, EOT_TEXTS),
        (&mut ids.eom, EOM_TEXTS),
        (&mut ids.fim_pre, FIM_PRE_TEXTS),
        (&mut ids.fim_suf, FIM_SUF_TEXTS),
        (&mut ids.fim_mid, FIM_MID_TEXTS),
        (&mut ids.fim_pad, FIM_PAD_TEXTS),
        (&mut ids.fim_rep, FIM_REP_TEXTS),
        (&mut ids.fim_sep, FIM_SEP_TEXTS),
    ] {
        if slot.is_none() {
            *slot = find(names);
            if let Some(id) = *slot {
                attrs[id as usize] |= ATTR_CONTROL;
            }
        }
    }

    let mut eog: Vec<u32> = [ids.fim_pad, ids.fim_rep, ids.fim_sep].into_iter().flatten().collect();
    for &id in &candidates {
        if EOG_TEXTS.contains(&texts[id].as_str()) {
            eog.push(id as u32);
            attrs[id] |= ATTR_CONTROL;
        }
    }
    for &id in &candidates {
        if ALWAYS_RENDERED_TEXTS.contains(&texts[id].as_str()) {
            attrs[id] = ATTR_USER_DEFINED;
        }
    }
    eog.extend([ids.eos, ids.eot, ids.eom].into_iter().flatten());
    eog.sort_unstable();
    eog.dedup();

    // o200k_harmony / solar-open: "<|end|>" ends a message, not the generation.
    let has = |eog: &[u32], name: &str| eog.iter().find(|&&id| texts[id as usize] == name).copied();
    if let Some(end) = has(&eog, "<|end|>") {
        let call = has(&eog, "<|call|>").or(has(&eog, "<|calls|>"));
        if call.is_some() && (has(&eog, "<|return|>").is_some() || has(&eog, "<|flush|>").is_some()) {
            eog.retain(|&id| id != end);
            attrs[end as usize] = ATTR_USER_DEFINED;
        }
    }
    // gemma4 / paddleocr: "</s>" is not an end of generation when "<|tool_response>" is.
    if let (Some(_), Some(s)) = (has(&eog, "<|tool_response>"), has(&eog, "</s>")) {
        eog.retain(|&id| id != s);
        attrs[s as usize] = ATTR_NORMAL;
    }
    eog
}

/// Append llama.cpp's `token_to_piece(special=true)` output for one token.
pub(super) fn append_piece(
    out: &mut Vec<u8>,
    text: &str,
    attr: u16,
    byte_level: bool,
) -> std::result::Result<(), String> {
    if attr & (ATTR_UNKNOWN | ATTR_CONTROL | ATTR_USER_DEFINED) != 0 {
        out.extend_from_slice(text.as_bytes());
    } else if attr & ATTR_NORMAL != 0 {
        if byte_level {
            // llama.cpp `llama_decode_text`, including its marker for characters outside the table.
            for c in text.chars() {
                match char_to_byte(c) {
                    Some(b) => out.push(b),
                    None => {
                        out.extend_from_slice(b"[UNK_BYTE_0x");
                        let mut utf8 = [0u8; 4];
                        for b in c.encode_utf8(&mut utf8).bytes() {
                            out.extend_from_slice(format!("{b:02x}").as_bytes());
                        }
                        out.extend_from_slice(text.as_bytes());
                        out.push(b']');
                    }
                }
            }
        } else {
            out.extend_from_slice(text.replace('▁', " ").as_bytes());
        }
    } else if attr & ATTR_BYTE != 0 {
        out.push(parse_byte_token(text).ok_or_else(|| format!("byte token {text:?} is not of the form <0xXX>"))?);
    }
    // Undefined and unused tokens render as nothing.
    Ok(())
}

/// The byte of a `<0xXX>` token.
fn parse_byte_token(text: &str) -> Option<u8> {
    let hex = text.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

pub(super) fn duplicate_token_reason(texts: &[String]) -> String {
    let mut seen = HashMap::with_capacity(texts.len());
    for (id, t) in texts.iter().enumerate() {
        if let Some(first) = seen.insert(t.as_str(), id) {
            return format!("duplicate token {t:?} in tokenizer.ggml.tokens (ids {first} and {id})");
        }
    }
    "duplicate token in tokenizer.ggml.tokens".to_owned()
}
