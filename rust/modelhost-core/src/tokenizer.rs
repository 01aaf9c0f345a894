//! The tokenizer of a GGUF model, built from its `tokenizer.ggml.*` metadata, tokenizing exactly as
//! llama.cpp does (`src/llama-vocab.cpp`, `src/unicode.cpp`).
//!
//! Two vocabulary types are supported, the two that llama-architecture models use:
//! - `gpt2`: byte-level BPE. Text is split on special tokens, then by the pre-tokenizer regexes of
//!   `tokenizer.ggml.pre`, byte-level encoded, and merged by rank with the `tokenizers` crate's BPE.
//! - `llama`: SentencePiece BPE. Spaces become `▁`, symbols merge by the score of the merged piece,
//!   and pieces missing from the vocabulary fall back to `<0xXX>` byte tokens.
//!
//! llama.cpp also derives things from the token texts (end-of-generation tokens, FIM tokens, which
//! tokens count as control tokens); that is reproduced here rule for rule, see `detect_special`.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::Path;
use std::sync::{Mutex, OnceLock};

use tokenizers::models::bpe::{Merges, Vocab, BPE};
use tokenizers::utils::SysRegex;
use tokenizers::Model as _;

use crate::error::{Error, Result};
use crate::formats::gguf::{GgufHeader, Value};

/// Vocabularies larger than this are refused (the largest real ones have ~260k tokens); ids must
/// also stay below `i32::MAX`, llama.cpp's token type.
const MAX_VOCAB: usize = 1 << 24;

// Token attributes, llama.h `llama_token_attr` (a bit set).
const ATTR_UNKNOWN: u16 = 1 << 0;
const ATTR_UNUSED: u16 = 1 << 1;
const ATTR_NORMAL: u16 = 1 << 2;
const ATTR_CONTROL: u16 = 1 << 3;
const ATTR_USER_DEFINED: u16 = 1 << 4;
const ATTR_BYTE: u16 = 1 << 5;

/// Any integer metadata value as an `i64` (u64 values past `i64::MAX` saturate).
fn integer(v: &Value) -> Option<i64> {
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
fn attr_from_type(token_type: i64) -> u16 {
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

// Pre-tokenizer regexes. llama.cpp runs the GPT-2 and Llama-3 patterns through hand-written
// matchers (`unicode_regex_split_custom_gpt2/llama3`) whose behaviour is exactly that of the
// patterns below with the trailing `|\s+` alternative that HF's tokenizers also use; the other
// patterns it runs through std::regex unchanged. Every pattern splits "isolated": matches and the
// text between them both become pieces, and each pattern splits the pieces of the previous one.
const GPT2_PATTERN: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";
/// llama.cpp's ASCII-only spelling of `(?i:'s|…)`: Unicode case folding would also match `'ſ`.
const LLAMA3_PATTERN: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const DEFAULT_PATTERNS: &[&str] = &[r"[\p{P}\$\+<=>\^~\|]+", GPT2_PATTERN, r"\p{N}+", r"[0-9][0-9][0-9]"];
const SMOLLM_PATTERNS: &[&str] = &[r"\p{N}", GPT2_PATTERN];

/// A compiled pre-tokenizer regex, shared by every tokenizer in the process: compiling the
/// Unicode classes costs milliseconds, and every GPT-2-style model uses the same few patterns.
fn compiled(pattern: &'static str) -> Result<&'static SysRegex> {
    static CACHE: OnceLock<Mutex<HashMap<&'static str, &'static SysRegex>>> = OnceLock::new();
    let mut cache = CACHE.get_or_init(Default::default).lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(re) = cache.get(pattern) {
        return Ok(re);
    }
    let re =
        SysRegex::new(pattern).map_err(|e| Error::NotSupported(format!("pre-tokenizer regex {pattern:?}: {e}")))?;
    // Leaked on purpose: at most one per distinct pattern (a handful of constants), kept for the
    // life of the process.
    let re: &'static SysRegex = Box::leak(Box::new(re));
    cache.insert(pattern, re);
    Ok(re)
}

/// How a `tokenizer.ggml.pre` value tokenizes (llama.cpp `llama_vocab_pre_type` and its flags).
struct PreTokenizer {
    patterns: &'static [&'static str],
    /// A whole pre-token that is in the vocabulary is emitted as is, without merging.
    ignore_merges: bool,
    /// The default of `tokenizer.ggml.add_bos_token`.
    add_bos: bool,
}

/// The pre-tokenizer for a `tokenizer.ggml.pre` value; `None` when llama.cpp knows no such name.
fn pre_tokenizer(pre: Option<&str>) -> Option<PreTokenizer> {
    let p = |patterns, ignore_merges, add_bos| Some(PreTokenizer { patterns, ignore_merges, add_bos });
    match pre.unwrap_or("default") {
        "default" => p(DEFAULT_PATTERNS, false, false),
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" | "midm-2.0" | "lfm2"
        | "jina-v5-nano" => p(std::slice::from_ref(&LLAMA3_PATTERN), true, true),
        "dbrx" | "smaug-bpe" => p(std::slice::from_ref(&LLAMA3_PATTERN), false, false),
        "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone" | "minerva-7b" | "mellum2" => {
            p(SMOLLM_PATTERNS, false, false)
        }
        "gpt-2" | "phi-2" | "jina-es" | "jina-de" | "gigachat" | "jina-v2-es" | "jina-v2-de" | "a.x-4.0" | "mellum"
        | "modern-bert" | "mpt" | "olmo" | "jais" | "trillion" | "granite-docling" | "exaone4" | "jina-v1-en"
        | "jina-v2-code" | "roberta-bpe" => p(std::slice::from_ref(&GPT2_PATTERN), false, false),
        _ => None,
    }
}

/// GPT-2's byte-to-character table: printable Latin-1 bytes map to themselves, the other 68 bytes
/// to U+0100.. in byte order, so every byte sequence becomes printable text.
const BYTE_TO_CHAR: [char; 256] = {
    let mut table = ['\0'; 256];
    let mut extra = 0u32;
    let mut b = 0u32;
    while b < 256 {
        let printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
        let c = if printable {
            b
        } else {
            extra += 1;
            255 + extra
        };
        table[b as usize] = match char::from_u32(c) {
            Some(c) => c,
            None => panic!("byte table holds only valid characters"),
        };
        b += 1;
    }
    table
};

/// The bytes `BYTE_TO_CHAR` maps to U+0100.., in order.
const REMAPPED_BYTES: [u8; 68] = {
    let mut bytes = [0u8; 68];
    let mut b = 0;
    while b < 256 {
        let c = BYTE_TO_CHAR[b] as u32;
        if c >= 0x100 {
            bytes[(c - 0x100) as usize] = b as u8;
        }
        b += 1;
    }
    bytes
};

/// The inverse of `BYTE_TO_CHAR` (llama.cpp `unicode_utf8_to_byte`).
fn char_to_byte(c: char) -> Option<u8> {
    let c = u32::from(c);
    match c {
        0x21..=0x7E | 0xA1..=0xAC | 0xAE..=0xFF => Some(c as u8),
        0x100..=0x143 => Some(REMAPPED_BYTES[(c - 0x100) as usize]),
        _ => None,
    }
}

/// The vocabulary-type specific half of the tokenizer.
enum Kind {
    /// Byte-level BPE (`tokenizer.ggml.model = "gpt2"`).
    Bpe { bpe: Box<BPE>, splits: Vec<&'static SysRegex> },
    /// SentencePiece BPE (`tokenizer.ggml.model = "llama"`).
    Spm {
        token_to_id: HashMap<String, u32>,
        scores: Vec<f32>,
        /// The token for each byte: `<0xXX>`, else the byte itself as a one-character token.
        byte_tokens: Box<[Option<u32>; 256]>,
        add_space_prefix: bool,
    },
}

/// A GGUF model's tokenizer. Immutable, `Send + Sync`; build once per model.
pub struct GgufTokenizer {
    kind: Kind,
    /// Token texts as stored (empty ones renamed `[EMPTY_<id>]`, as llama.cpp does).
    texts: Vec<String>,
    attrs: Vec<u16>,
    /// What llama.cpp's `token_to_piece(id, special=true)` emits, for all ids back to back.
    pieces: Vec<u8>,
    /// `pieces[piece_starts[id]..piece_starts[id + 1]]` is token `id`'s piece.
    piece_starts: Vec<usize>,
    /// Control, user-defined and unknown tokens, longest text first: the order in which llama.cpp
    /// splits them out of the text.
    special_tokens: Vec<u32>,
    bos: Option<u32>,
    eos: Option<u32>,
    add_bos: bool,
    add_eos: bool,
    eog: Vec<u32>,
    warnings: Vec<String>,
}

impl fmt::Debug for GgufTokenizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GgufTokenizer")
            .field(
                "model",
                &match self.kind {
                    Kind::Bpe { .. } => "gpt2",
                    Kind::Spm { .. } => "llama",
                },
            )
            .field("vocab_size", &self.texts.len())
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("add_bos", &self.add_bos)
            .field("add_eos", &self.add_eos)
            .field("eog", &self.eog)
            .finish_non_exhaustive()
    }
}

/// A piece of the input after special tokens are split out.
enum Fragment {
    /// A byte range of the input still to be tokenized.
    Text(usize, usize),
    /// A special token written in the text.
    Token(u32),
}

/// Typed access to `tokenizer.ggml.*` keys, every failure a `ModelLoad` error naming the key.
struct Meta<'a> {
    header: &'a GgufHeader,
    path: &'a Path,
}

impl<'a> Meta<'a> {
    fn err(&self, reason: impl Into<String>) -> Error {
        Error::load(self.path, reason)
    }

    fn str(&self, key: &str) -> Result<Option<&'a str>> {
        match self.header.get(key) {
            None => Ok(None),
            Some(v) => v.as_str().map(Some).ok_or_else(|| self.err(format!("{key} is not a string"))),
        }
    }

    fn bool(&self, key: &str) -> Result<Option<bool>> {
        match self.header.get(key) {
            None => Ok(None),
            Some(v) => v.as_bool().map(Some).ok_or_else(|| self.err(format!("{key} is not a bool"))),
        }
    }

    fn array(&self, key: &str) -> Result<Option<&'a [Value]>> {
        match self.header.get(key) {
            None => Ok(None),
            Some(v) => v.as_array().map(Some).ok_or_else(|| self.err(format!("{key} is not an array"))),
        }
    }

    /// An array that must have exactly one entry per token.
    fn per_token_array(&self, key: &str, n_tokens: usize) -> Result<Option<&'a [Value]>> {
        let Some(items) = self.array(key)? else { return Ok(None) };
        if items.len() != n_tokens {
            return Err(self.err(format!("{key} has {} entries but there are {n_tokens} tokens", items.len())));
        }
        Ok(Some(items))
    }

    /// A token id, which must name a token.
    fn token_id(&self, key: &str, n_tokens: usize) -> Result<Option<u32>> {
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
struct SpecialIds {
    bos: Option<u32>,
    eos: Option<u32>,
    eot: Option<u32>,
    eom: Option<u32>,
    fim_pre: Option<u32>,
    fim_suf: Option<u32>,
    fim_mid: Option<u32>,
    fim_pad: Option<u32>,
    fim_rep: Option<u32>,
    fim_sep: Option<u32>,
}

impl GgufTokenizer {
    /// Build from `tokenizer.ggml.*` metadata: model "gpt2" (byte-level BPE: tokens, merges,
    /// token_type, pre-tokenizer from `tokenizer.ggml.pre`) and "llama" (SentencePiece BPE with
    /// scores, byte-fallback `<0xXX>` tokens, `▁` for space, `add_space_prefix`). Other models give
    /// `Error::NotSupported` naming the model. Malformed metadata (missing or wrong-typed arrays,
    /// lengths that disagree, ids out of range, duplicate tokens, bad merges) gives
    /// `Error::ModelLoad` naming `path`.
    ///
    /// Stricter than llama.cpp where llama.cpp would warn and carry on: an out-of-range special
    /// token id, a per-token array of the wrong length, a merge of tokens missing from the
    /// vocabulary and an unparseable `<0xXX>` byte token are errors here.
    pub fn from_gguf(header: &GgufHeader, path: &Path) -> Result<Self> {
        let meta = Meta { header, path };
        let model = meta.str("tokenizer.ggml.model")?.ok_or_else(|| meta.err("tokenizer.ggml.model is missing"))?;
        let is_bpe = match model {
            "gpt2" => true,
            "llama" => false,
            other => {
                return Err(Error::NotSupported(format!(
                    "tokenizer model {other:?} in {} (only \"gpt2\" and \"llama\" are supported)",
                    path.display()
                )))
            }
        };

        let texts = read_tokens(&meta)?;
        let n = texts.len();
        let mut attrs = match meta.per_token_array("tokenizer.ggml.token_type", n)? {
            None => vec![ATTR_NORMAL; n],
            Some(types) => types
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    integer(v)
                        .map(attr_from_type)
                        .ok_or_else(|| meta.err(format!("tokenizer.ggml.token_type[{i}] is {v:?}, not an integer")))
                })
                .collect::<Result<Vec<u16>>>()?,
        };
        let scores = match meta.per_token_array("tokenizer.ggml.scores", n)? {
            None => vec![0.0; n],
            Some(scores) => scores
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    v.as_f64()
                        .map(|s| s as f32)
                        .ok_or_else(|| meta.err(format!("tokenizer.ggml.scores[{i}] is {v:?}, not a number")))
                })
                .collect::<Result<Vec<f32>>>()?,
        };

        let mut warnings = Vec::new();
        let pre_name = if is_bpe { meta.str("tokenizer.ggml.pre")? } else { None };
        if is_bpe && pre_name.is_none() {
            // llama.cpp warns the same way ("GENERATION QUALITY WILL BE DEGRADED").
            warnings.push("tokenizer.ggml.pre is missing: using llama.cpp's default pre-tokenizer".to_owned());
        }
        let pre = if is_bpe {
            pre_tokenizer(pre_name).unwrap_or_else(|| {
                // llama.cpp refuses unknown pre-tokenizers; most of them are GPT-2 variants, so
                // tokenizing with the GPT-2 regex is the best guess, recorded for the caller.
                warnings.push(format!(
                    "unknown tokenizer.ggml.pre {:?}: tokenizing with the GPT-2 pre-tokenizer, which may differ \
                     from the model's",
                    pre_name.unwrap_or_default()
                ));
                PreTokenizer { patterns: std::slice::from_ref(&GPT2_PATTERN), ignore_merges: false, add_bos: false }
            })
        } else {
            // SentencePiece models are not pre-tokenized; only add_bos matters.
            PreTokenizer { patterns: &[], ignore_merges: false, add_bos: true }
        };

        // Defaults llama.cpp assumes before reading the metadata; disabled when out of range.
        let default = |id: u32| (id < n as u32).then_some(id);
        let mut ids = SpecialIds {
            bos: default(if is_bpe { 11 } else { 1 }),
            eos: default(if is_bpe { 11 } else { 2 }),
            ..SpecialIds::default()
        };
        let set = |slot: &mut Option<u32>, key: &str| -> Result<()> {
            if let Some(id) = meta.token_id(key, n)? {
                *slot = Some(id);
            }
            Ok(())
        };
        set(&mut ids.bos, "tokenizer.ggml.bos_token_id")?;
        set(&mut ids.eos, "tokenizer.ggml.eos_token_id")?;
        set(&mut ids.eot, "tokenizer.ggml.eot_token_id")?;
        set(&mut ids.eom, "tokenizer.ggml.eom_token_id")?;
        set(&mut ids.fim_pre, "tokenizer.ggml.fim_pre_token_id")?;
        set(&mut ids.fim_suf, "tokenizer.ggml.fim_suf_token_id")?;
        set(&mut ids.fim_mid, "tokenizer.ggml.fim_mid_token_id")?;
        set(&mut ids.fim_pad, "tokenizer.ggml.fim_pad_token_id")?;
        set(&mut ids.fim_rep, "tokenizer.ggml.fim_rep_token_id")?;
        set(&mut ids.fim_sep, "tokenizer.ggml.fim_sep_token_id")?;
        // Deprecated names, read after the new ones as llama.cpp does.
        set(&mut ids.fim_pre, "tokenizer.ggml.prefix_token_id")?;
        set(&mut ids.fim_suf, "tokenizer.ggml.suffix_token_id")?;
        set(&mut ids.fim_mid, "tokenizer.ggml.middle_token_id")?;
        // Not used for tokenizing, but a lying id is still a malformed file.
        for key in [
            "tokenizer.ggml.unknown_token_id",
            "tokenizer.ggml.seperator_token_id",
            "tokenizer.ggml.padding_token_id",
            "tokenizer.ggml.mask_token_id",
        ] {
            meta.token_id(key, n)?;
        }

        let add_bos = meta.bool("tokenizer.ggml.add_bos_token")?.unwrap_or(pre.add_bos);
        let add_eos = meta.bool("tokenizer.ggml.add_eos_token")?.unwrap_or(false);
        if add_bos && ids.bos.is_none() {
            return Err(meta.err("tokenizer.ggml.add_bos_token is true but there is no BOS token"));
        }
        if add_eos && ids.eos.is_none() {
            return Err(meta.err("tokenizer.ggml.add_eos_token is true but there is no EOS token"));
        }
        let add_space_prefix = meta.bool("tokenizer.ggml.add_space_prefix")?.unwrap_or(!is_bpe);

        let eog = detect_special(&texts, &mut attrs, &mut ids);

        let mut special_tokens: Vec<u32> = (0..n as u32)
            .filter(|&id| attrs[id as usize] & (ATTR_CONTROL | ATTR_USER_DEFINED | ATTR_UNKNOWN) != 0)
            .collect();
        // Stable, so equal lengths keep id order (llama.cpp's std::sort leaves that order unspecified).
        special_tokens.sort_by_key(|&id| std::cmp::Reverse(texts[id as usize].len()));

        let mut pieces = Vec::with_capacity(texts.iter().map(String::len).sum());
        let mut piece_starts = Vec::with_capacity(n + 1);
        piece_starts.push(0);
        for (id, (text, &attr)) in texts.iter().zip(&attrs).enumerate() {
            append_piece(&mut pieces, text, attr, is_bpe)
                .map_err(|reason| meta.err(format!("token {id}: {reason}")))?;
            piece_starts.push(pieces.len());
        }

        let kind =
            if is_bpe { build_bpe(&meta, &texts, &pre)? } else { build_spm(&meta, &texts, scores, add_space_prefix)? };

        Ok(GgufTokenizer {
            kind,
            texts,
            attrs,
            pieces,
            piece_starts,
            special_tokens,
            bos: ids.bos,
            eos: ids.eos,
            add_bos,
            add_eos,
            eog,
            warnings,
        })
    }

    /// Exactly llama.cpp's `llama_tokenize(text, add_special=true, parse_special)`: BOS first when
    /// `tokenizer.ggml.add_bos_token` says so (default: false for "gpt2" except Llama-3-style
    /// pre-tokenizers, true for "llama"), EOS last when `add_eos_token` says so. With
    /// `parse_special`, control and user-defined tokens written in the text become their ids;
    /// without it only user-defined ones do (as in llama.cpp and HF tokenizers).
    ///
    /// Fails only for a "llama" vocabulary that lacks the byte token a character needs.
    pub fn encode(&self, text: &str, parse_special: bool) -> Result<Vec<u32>> {
        let mut out = Vec::with_capacity(text.len() / 3 + 2);
        if self.add_bos {
            out.extend(self.bos);
        }
        let fragments = self.partition(text, parse_special);
        match &self.kind {
            Kind::Bpe { bpe, splits } => {
                for fragment in &fragments {
                    match *fragment {
                        Fragment::Text(start, end) => bpe_encode(bpe, splits, &text[start..end], &mut out)?,
                        Fragment::Token(id) => out.push(id),
                    }
                }
            }
            Kind::Spm { token_to_id, scores, byte_tokens, add_space_prefix } => {
                // llama.cpp prefixes a space to every text fragment that follows a special token
                // or starts the input.
                let mut after_special = true;
                for fragment in &fragments {
                    match *fragment {
                        Fragment::Text(start, end) => {
                            let mut piece = String::with_capacity(end - start + 3);
                            if *add_space_prefix && after_special {
                                piece.push('▁');
                            }
                            for c in text[start..end].chars() {
                                piece.push(if c == ' ' { '▁' } else { c });
                            }
                            spm_encode(token_to_id, scores, byte_tokens, &piece, &mut out)?;
                            after_special = false;
                        }
                        Fragment::Token(id) => {
                            out.push(id);
                            after_special = true;
                        }
                    }
                }
            }
        }
        if self.add_eos {
            out.extend(self.eos);
        }
        Ok(out)
    }

    /// The exact bytes llama.cpp's detokenizer emits for one token (`token_to_piece` with
    /// special=true: control tokens render as their text). For streaming: concatenate and cut at
    /// UTF-8 boundaries, since one character may span several tokens. Unknown id: empty.
    pub fn token_bytes(&self, id: u32) -> &[u8] {
        let id = id as usize;
        match (self.piece_starts.get(id), self.piece_starts.get(id + 1)) {
            (Some(&start), Some(&end)) => &self.pieces[start..end],
            _ => &[],
        }
    }

    /// The concatenated token bytes decoded as UTF-8, invalid sequences replaced by U+FFFD.
    pub fn decode(&self, ids: &[u32]) -> String {
        let mut bytes = Vec::with_capacity(ids.len() * 4);
        for &id in ids {
            bytes.extend_from_slice(self.token_bytes(id));
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// The number of tokens in the vocabulary.
    pub fn vocab_size(&self) -> usize {
        self.texts.len()
    }

    /// The beginning-of-sequence token.
    pub fn bos_id(&self) -> Option<u32> {
        self.bos
    }

    /// The end-of-sequence token.
    pub fn eos_id(&self) -> Option<u32> {
        self.eos
    }

    /// The BOS token's text (for chat templates); "" when there is none.
    pub fn bos_token(&self) -> &str {
        self.bos.map_or("", |id| &self.texts[id as usize])
    }

    /// The EOS token's text (for chat templates); "" when there is none.
    pub fn eos_token(&self) -> &str {
        self.eos.map_or("", |id| &self.texts[id as usize])
    }

    /// The end-of-generation tokens as llama.cpp defines them, ascending: EOS, EOT, EOM, the FIM
    /// pad/repo/separator tokens, and every token whose text is one of llama.cpp's end-of-generation
    /// names (`<|endoftext|>`, `<|im_end|>`, `<|eot_id|>`, `<end_of_turn>`, `</s>`, …).
    pub fn eog_ids(&self) -> &[u32] {
        &self.eog
    }

    /// Whether `id` ends generation.
    pub fn is_eog(&self, id: u32) -> bool {
        self.eog.binary_search(&id).is_ok()
    }

    /// Things the loader should tell the user: where this tokenizer may not match llama.cpp's
    /// (today only an unknown `tokenizer.ggml.pre`, tokenized as GPT-2).
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// Split special tokens out of `text` (llama.cpp `tokenizer_st_partition`): one special token
    /// at a time, longest first, every occurrence in every remaining text fragment.
    fn partition(&self, text: &str, parse_special: bool) -> Vec<Fragment> {
        let mut fragments = Vec::new();
        if text.is_empty() {
            return fragments;
        }
        fragments.push(Fragment::Text(0, text.len()));
        for &id in &self.special_tokens {
            if !parse_special && self.attrs[id as usize] & (ATTR_CONTROL | ATTR_UNKNOWN) != 0 {
                continue;
            }
            let needle = self.texts[id as usize].as_str();
            // Cheap rejection: most special tokens occur nowhere in a prompt.
            if !text.contains(needle) {
                continue;
            }
            let mut next = Vec::with_capacity(fragments.len() + 2);
            for fragment in fragments {
                let Fragment::Text(start, end) = fragment else {
                    next.push(fragment);
                    continue;
                };
                let mut pos = start;
                while let Some(found) = text[pos..end].find(needle) {
                    if found > 0 {
                        next.push(Fragment::Text(pos, pos + found));
                    }
                    next.push(Fragment::Token(id));
                    pos += found + needle.len();
                }
                if pos < end {
                    next.push(Fragment::Text(pos, end));
                }
            }
            fragments = next;
        }
        fragments
    }
}

/// Read `tokenizer.ggml.tokens`, renaming empty tokens and refusing duplicates as llama.cpp does.
fn read_tokens(meta: &Meta<'_>) -> Result<Vec<String>> {
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
fn detect_special(texts: &[String], attrs: &mut [u16], ids: &mut SpecialIds) -> Vec<u32> {
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
fn append_piece(out: &mut Vec<u8>, text: &str, attr: u16, byte_level: bool) -> std::result::Result<(), String> {
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

fn build_bpe(meta: &Meta<'_>, texts: &[String], pre: &PreTokenizer) -> Result<Kind> {
    let merges = meta.array("tokenizer.ggml.merges")?.ok_or_else(|| meta.err("tokenizer.ggml.merges is missing"))?;
    let mut pairs: Merges = Vec::with_capacity(merges.len());
    // llama.cpp keeps the first rank of a repeated merge; the tokenizers crate would keep the last.
    let mut seen = HashSet::with_capacity(merges.len());
    for (i, v) in merges.iter().enumerate() {
        let merge = v.as_str().ok_or_else(|| meta.err(format!("tokenizer.ggml.merges[{i}] is {v:?}, not a string")))?;
        // llama.cpp splits at the first space after the first byte, so a merge may start with one.
        let first = merge.chars().next().map_or(0, char::len_utf8);
        let split = merge[first..].find(' ').map(|p| p + first);
        let (left, right) = match split {
            Some(p) if p + 1 < merge.len() => (&merge[..p], &merge[p + 1..]),
            _ => return Err(meta.err(format!("tokenizer.ggml.merges[{i}] {merge:?} is not two tokens"))),
        };
        if seen.insert((left, right)) {
            pairs.push((left.to_owned(), right.to_owned()));
        }
    }
    let vocab: Vocab = texts.iter().enumerate().map(|(id, t)| (t.clone(), id as u32)).collect();
    if vocab.len() != texts.len() {
        return Err(meta.err(duplicate_token_reason(texts)));
    }
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, pairs)
        .ignore_merges(pre.ignore_merges)
        .build()
        .map_err(|e| meta.err(format!("tokenizer.ggml.merges: {e}")))?;
    let splits = pre.patterns.iter().map(|p| compiled(p)).collect::<Result<Vec<_>>>()?;
    Ok(Kind::Bpe { bpe: Box::new(bpe), splits })
}

fn build_spm(meta: &Meta<'_>, texts: &[String], scores: Vec<f32>, add_space_prefix: bool) -> Result<Kind> {
    let token_to_id: HashMap<String, u32> = texts.iter().enumerate().map(|(id, t)| (t.clone(), id as u32)).collect();
    if token_to_id.len() != texts.len() {
        return Err(meta.err(duplicate_token_reason(texts)));
    }
    let mut byte_tokens = Box::new([None; 256]);
    for (b, slot) in byte_tokens.iter_mut().enumerate() {
        // llama.cpp `byte_to_token`: "<0xXX>", else the byte as a one-character token.
        *slot = token_to_id.get(&format!("<0x{b:02X}>")).copied().or_else(|| {
            let c = char::from(b as u8);
            (b < 0x80).then(|| token_to_id.get(c.encode_utf8(&mut [0; 4]) as &str).copied()).flatten()
        });
    }
    Ok(Kind::Spm { token_to_id, scores, byte_tokens, add_space_prefix })
}

/// Name a duplicated token for the error message.
fn duplicate_token_reason(texts: &[String]) -> String {
    let mut seen = HashMap::with_capacity(texts.len());
    for (id, t) in texts.iter().enumerate() {
        if let Some(first) = seen.insert(t.as_str(), id) {
            return format!("duplicate token {t:?} in tokenizer.ggml.tokens (ids {first} and {id})");
        }
    }
    "duplicate token in tokenizer.ggml.tokens".to_owned()
}

/// Tokenize one text fragment with byte-level BPE (llama.cpp `llm_tokenizer_bpe_session::tokenize`).
fn bpe_encode(bpe: &BPE, splits: &[&SysRegex], text: &str, out: &mut Vec<u32>) -> Result<()> {
    let mut pieces = vec![(0, text.len())];
    for re in splits {
        let mut next = Vec::with_capacity(pieces.len() * 2);
        for (start, end) in pieces {
            let mut last = 0;
            // A regex error (fancy-regex's backtracking limit) ends the matches; the rest of the
            // piece then stays whole, as it does in HF tokenizers.
            for (m_start, m_end) in re.find_iter(&text[start..end]) {
                if m_start > last {
                    next.push((start + last, start + m_start));
                }
                if m_end > m_start {
                    next.push((start + m_start, start + m_end));
                }
                last = m_end;
            }
            if start + last < end {
                next.push((start + last, end));
            }
        }
        pieces = next;
    }
    let mut word = String::new();
    for (start, end) in pieces {
        word.clear();
        word.extend(text[start..end].bytes().map(|b| BYTE_TO_CHAR[b as usize]));
        let tokens = bpe.tokenize(&word).map_err(|e| Error::InvalidConfig(format!("cannot tokenize {word:?}: {e}")))?;
        out.extend(tokens.iter().map(|t| t.id));
    }
    Ok(())
}

/// A candidate merge of two adjacent symbols in the SentencePiece tokenizer.
struct Bigram {
    score: f32,
    left: usize,
    right: usize,
    /// Byte length of the merged text, to recognise candidates made stale by other merges.
    size: usize,
}

impl PartialEq for Bigram {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == std::cmp::Ordering::Equal
    }
}
impl Eq for Bigram {}
impl PartialOrd for Bigram {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Bigram {
    /// Highest score first, then leftmost (llama.cpp `llm_bigram_spm::comparator`).
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.score.total_cmp(&other.score).then_with(|| other.left.cmp(&self.left))
    }
}

/// A symbol: a byte range of the text, linked to its neighbours; `len == 0` once merged away.
#[derive(Clone, Copy)]
struct Symbol {
    start: usize,
    len: usize,
    prev: Option<usize>,
    next: Option<usize>,
}

/// Tokenize one fragment (spaces already `▁`) with SentencePiece BPE
/// (llama.cpp `llm_tokenizer_spm_session::tokenize`).
fn spm_encode(
    token_to_id: &HashMap<String, u32>,
    scores: &[f32],
    byte_tokens: &[Option<u32>; 256],
    text: &str,
    out: &mut Vec<u32>,
) -> Result<()> {
    let mut symbols: Vec<Symbol> = Vec::with_capacity(text.len());
    for (start, c) in text.char_indices() {
        let index = symbols.len();
        symbols.push(Symbol {
            start,
            len: c.len_utf8(),
            prev: index.checked_sub(1),
            next: (start + c.len_utf8() < text.len()).then_some(index + 1),
        });
    }
    let mut queue = std::collections::BinaryHeap::new();
    let try_add = |queue: &mut std::collections::BinaryHeap<Bigram>, symbols: &[Symbol], left: usize, right: usize| {
        let (l, r) = (symbols[left], symbols[right]);
        let merged = &text[l.start..r.start + r.len];
        if let Some(&id) = token_to_id.get(merged) {
            queue.push(Bigram { score: scores[id as usize], left, right, size: merged.len() });
        }
    };
    for i in 1..symbols.len() {
        try_add(&mut queue, &symbols, i - 1, i);
    }
    while let Some(bigram) = queue.pop() {
        let (l, r) = (symbols[bigram.left], symbols[bigram.right]);
        if l.len == 0 || r.len == 0 || l.len + r.len != bigram.size {
            continue;
        }
        symbols[bigram.left].len += r.len;
        symbols[bigram.right].len = 0;
        symbols[bigram.left].next = r.next;
        if let Some(next) = r.next {
            symbols[next].prev = Some(bigram.left);
        }
        if let Some(prev) = symbols[bigram.left].prev {
            try_add(&mut queue, &symbols, prev, bigram.left);
        }
        if let Some(next) = symbols[bigram.left].next {
            try_add(&mut queue, &symbols, bigram.left, next);
        }
    }
    // Every merged symbol is a token (merges only happen into tokens), so llama.cpp's `resegment`
    // reduces to: the token, else the bytes of a single unknown character.
    let mut i = if symbols.is_empty() { None } else { Some(0) };
    while let Some(index) = i {
        let s = symbols[index];
        let piece = &text[s.start..s.start + s.len];
        match token_to_id.get(piece) {
            Some(&id) => out.push(id),
            None => {
                for b in piece.bytes() {
                    let id = byte_tokens[b as usize].ok_or_else(|| {
                        Error::InvalidConfig(format!(
                            "cannot tokenize {piece:?}: the vocabulary has no token for byte 0x{b:02X}"
                        ))
                    })?;
                    out.push(id);
                }
            }
        }
        i = s.next;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::gguf::parse;
    use crate::formats::gguf_writer::write;

    fn s(v: &str) -> Value {
        Value::String(v.to_owned())
    }

    fn strings(v: &[&str]) -> Value {
        Value::Array(v.iter().map(|t| s(t)).collect())
    }

    fn ints(v: &[i32]) -> Value {
        Value::Array(v.iter().map(|&t| Value::I32(t)).collect())
    }

    /// A tiny byte-level BPE vocabulary: every printable ASCII byte plus "Ġ" (space) and a few merges.
    fn gpt2_meta() -> Vec<(String, Value)> {
        let mut tokens: Vec<String> = vec!["<|endoftext|>".into(), "<|im_start|>".into(), "<|im_end|>".into()];
        tokens.extend((0x21u8..=0x7e).map(|b| char::from(b).to_string()));
        tokens.extend(["Ġ", "Ċ", "he", "ll", "hell", "hello", "Ġw", "Ġwo"].map(String::from));
        let types: Vec<i32> = tokens.iter().enumerate().map(|(i, _)| if i < 3 { 3 } else { 1 }).collect();
        let token_refs: Vec<&str> = tokens.iter().map(String::as_str).collect();
        vec![
            ("tokenizer.ggml.model".into(), s("gpt2")),
            ("tokenizer.ggml.pre".into(), s("smollm")),
            ("tokenizer.ggml.tokens".into(), strings(&token_refs)),
            ("tokenizer.ggml.token_type".into(), ints(&types)),
            ("tokenizer.ggml.merges".into(), strings(&["h e", "l l", "he ll", "hell o", "Ġ w", "Ġw o"])),
            ("tokenizer.ggml.bos_token_id".into(), Value::U32(1)),
            ("tokenizer.ggml.eos_token_id".into(), Value::U32(2)),
            ("tokenizer.ggml.add_bos_token".into(), Value::Bool(false)),
        ]
    }

    fn build(meta: &[(String, Value)]) -> Result<GgufTokenizer> {
        let bytes = write(meta, &[]);
        let path = Path::new("tiny.gguf");
        GgufTokenizer::from_gguf(&parse(&bytes, path)?, path)
    }

    fn with(mut meta: Vec<(String, Value)>, key: &str, value: Option<Value>) -> Vec<(String, Value)> {
        meta.retain(|(k, _)| k != key);
        if let Some(v) = value {
            meta.push((key.to_owned(), v));
        }
        meta
    }

    fn load_error(meta: &[(String, Value)]) -> String {
        match build(meta) {
            Err(e @ Error::ModelLoad { .. }) => e.to_string(),
            other => panic!("expected a load error, got {other:?}"),
        }
    }

    #[test]
    fn byte_table_round_trips() {
        for b in 0..=255u8 {
            assert_eq!(char_to_byte(BYTE_TO_CHAR[b as usize]), Some(b));
        }
        assert_eq!(BYTE_TO_CHAR[b' ' as usize], 'Ġ');
        assert_eq!(BYTE_TO_CHAR[b'\n' as usize], 'Ċ');
        assert_eq!(char_to_byte('a'), Some(b'a'));
        assert_eq!(char_to_byte('€'), None);
    }

    #[test]
    fn tiny_bpe_encodes_and_decodes() {
        let tok = build(&gpt2_meta()).unwrap();
        let id = |t: &str| tok.texts.iter().position(|x| x == t).unwrap() as u32;
        assert_eq!(tok.encode("hello wo", true).unwrap(), vec![id("hello"), id("Ġwo")]);
        assert_eq!(tok.encode("", true).unwrap(), Vec::<u32>::new());
        let ids = tok.encode("<|im_start|>hell<|im_end|>", true).unwrap();
        assert_eq!(ids, vec![1, id("hell"), 2]);
        let plain = tok.encode("<|im_start|>", false).unwrap();
        assert!(plain.len() > 1 && !plain.contains(&1), "{plain:?}");
        assert_eq!(tok.decode(&ids), "<|im_start|>hell<|im_end|>");
        assert_eq!(tok.token_bytes(id("Ġwo")), b" wo");
        assert_eq!(tok.token_bytes(u32::MAX), b"");
        assert_eq!((tok.bos_token(), tok.eos_token()), ("<|im_start|>", "<|im_end|>"));
        assert_eq!(tok.eog_ids(), &[0, 2]);
        assert!(tok.warnings().is_empty());
    }

    #[test]
    fn digits_split_one_by_one_for_smollm() {
        let tok = build(&gpt2_meta()).unwrap();
        let id = |t: &str| tok.texts.iter().position(|x| x == t).unwrap() as u32;
        assert_eq!(tok.encode("123", false).unwrap(), vec![id("1"), id("2"), id("3")]);
    }

    #[test]
    fn unknown_pre_falls_back_to_gpt2_with_a_warning() {
        let tok = build(&with(gpt2_meta(), "tokenizer.ggml.pre", Some(s("no-such-pre")))).unwrap();
        assert_eq!(tok.warnings().len(), 1);
        assert!(tok.warnings()[0].contains("no-such-pre"));
        let tok = build(&with(gpt2_meta(), "tokenizer.ggml.pre", None)).unwrap();
        assert!(tok.warnings()[0].contains("tokenizer.ggml.pre is missing"), "{:?}", tok.warnings());
    }

    #[test]
    fn llama3_pre_adds_bos_by_default() {
        let meta = with(gpt2_meta(), "tokenizer.ggml.add_bos_token", None);
        let tok = build(&with(meta, "tokenizer.ggml.pre", Some(s("llama-bpe")))).unwrap();
        assert_eq!(tok.encode("he", false).unwrap()[0], 1);
    }

    #[test]
    fn other_models_are_not_supported() {
        let err = build(&with(gpt2_meta(), "tokenizer.ggml.model", Some(s("bert")))).unwrap_err();
        assert!(matches!(&err, Error::NotSupported(m) if m.contains("\"bert\"")), "{err}");
    }

    #[test]
    fn hostile_metadata_is_a_load_error() {
        let base = gpt2_meta;
        let err = load_error(&with(base(), "tokenizer.ggml.tokens", None));
        assert!(err.contains("tokenizer.ggml.tokens is missing"), "{err}");
        let err = load_error(&with(base(), "tokenizer.ggml.tokens", Some(s("x"))));
        assert!(err.contains("not an array"), "{err}");
        let err = load_error(&with(base(), "tokenizer.ggml.tokens", Some(Value::Array(vec![]))));
        assert!(err.contains("empty"), "{err}");
        let err = load_error(&with(base(), "tokenizer.ggml.tokens", Some(ints(&[1, 2]))));
        assert!(err.contains("not a string"), "{err}");
        let err = load_error(&with(base(), "tokenizer.ggml.merges", None));
        assert!(err.contains("merges is missing"), "{err}");
        let err = load_error(&with(base(), "tokenizer.ggml.merges", Some(strings(&["hello"]))));
        assert!(err.contains("not two tokens"), "{err}");
        let err = load_error(&with(base(), "tokenizer.ggml.merges", Some(strings(&["h "]))));
        assert!(err.contains("not two tokens"), "{err}");
        let err = load_error(&with(base(), "tokenizer.ggml.merges", Some(strings(&["q z"]))));
        assert!(err.contains("merges"), "{err}");
        let err = load_error(&with(base(), "tokenizer.ggml.merges", Some(ints(&[1]))));
        assert!(err.contains("not a string"), "{err}");
        let err = load_error(&with(base(), "tokenizer.ggml.token_type", Some(ints(&[1, 1, 1]))));
        assert!(err.contains("token_type has 3 entries"), "{err}");
        let err = load_error(&with(base(), "tokenizer.ggml.scores", Some(Value::Array(vec![Value::F32(0.0)]))));
        assert!(err.contains("scores has 1 entries"), "{err}");
        let err = load_error(&with(base(), "tokenizer.ggml.bos_token_id", Some(Value::U32(1 << 20))));
        assert!(err.contains("bos_token_id is 1048576"), "{err}");
        let err = load_error(&with(base(), "tokenizer.ggml.eos_token_id", Some(Value::I32(-1))));
        assert!(err.contains("eos_token_id"), "{err}");
        let err = load_error(&with(base(), "tokenizer.ggml.padding_token_id", Some(s("2"))));
        assert!(err.contains("padding_token_id"), "{err}");
        let err = load_error(&with(base(), "tokenizer.ggml.add_bos_token", Some(Value::U8(1))));
        assert!(err.contains("not a bool"), "{err}");
        let err = load_error(&with(base(), "tokenizer.ggml.model", Some(Value::U32(2))));
        assert!(err.contains("tokenizer.ggml.model is not a string"), "{err}");
        let err = load_error(&with(base(), "tokenizer.ggml.model", None));
        assert!(err.contains("tokenizer.ggml.model is missing"), "{err}");
        let err = load_error(&with(base(), "tokenizer.ggml.tokens", Some(strings(&["a", "b", "a"]))));
        assert!(err.contains("token_type has"), "{err}");
        let meta = with(base(), "tokenizer.ggml.token_type", None);
        let err = load_error(&with(meta, "tokenizer.ggml.tokens", Some(strings(&["a", "b", "a"]))));
        assert!(err.contains("duplicate token \"a\""), "{err}");
    }

    proptest::proptest! {
        #[test]
        fn mutated_metadata_never_panics(key in 0usize..8, which in 0usize..6) {
            let mut meta = gpt2_meta();
            let replacement = match which {
                0 => s("x"),
                1 => Value::Array(vec![]),
                2 => ints(&[i32::MAX, -5]),
                3 => strings(&["", " ", "a b c"]),
                4 => Value::U64(u64::MAX),
                _ => Value::Bool(true),
            };
            meta[key].1 = replacement;
            let _ = build(&meta);
        }

        #[test]
        fn any_text_round_trips(text in "\\PC{0,40}") {
            let tok = build(&gpt2_meta()).unwrap();
            let ids = tok.encode(&text, false).unwrap();
            // Only printable ASCII and spaces are in the tiny vocabulary; the rest drops out.
            let kept: String = text.chars().filter(|c| c.is_ascii_graphic() || *c == ' ' || *c == '\n').collect();
            proptest::prop_assert_eq!(tok.decode(&ids), kept);
        }
    }

    /// A tiny SentencePiece vocabulary with byte fallback.
    fn spm_meta() -> Vec<(String, Value)> {
        let mut tokens: Vec<String> = vec!["<unk>".into(), "<s>".into(), "</s>".into()];
        tokens.extend((0..=255u8).map(|b| format!("<0x{b:02X}>")));
        tokens.extend(["▁", "h", "e", "l", "o", "he", "ll", "hell", "hello", "▁hello", "▁h"].map(String::from));
        let n = tokens.len();
        let mut types = vec![2, 3, 3];
        types.extend(std::iter::repeat_n(6, 256));
        types.extend(std::iter::repeat_n(1, n - 259));
        // Pieces of "hello" score higher the longer they are, so they merge up to "▁hello".
        let score = |t: &str| match t {
            "he" | "ll" => 5.0,
            "hell" => 6.0,
            "hello" => 7.0,
            "▁hello" => 8.0,
            _ => 1.0,
        };
        let scores: Vec<Value> = tokens.iter().map(|t| Value::F32(score(t))).collect();
        let token_refs: Vec<&str> = tokens.iter().map(String::as_str).collect();
        vec![
            ("tokenizer.ggml.model".into(), s("llama")),
            ("tokenizer.ggml.tokens".into(), strings(&token_refs)),
            ("tokenizer.ggml.token_type".into(), ints(&types)),
            ("tokenizer.ggml.scores".into(), Value::Array(scores)),
        ]
    }

    #[test]
    fn tiny_spm_encodes_with_space_prefix_and_byte_fallback() {
        let tok = build(&spm_meta()).unwrap();
        let id = |t: &str| tok.texts.iter().position(|x| x == t).unwrap() as u32;
        // BOS by default, "▁" prefix, and "!" is not a piece so it becomes <0x21>.
        let ids = tok.encode("hello!", true).unwrap();
        assert_eq!(ids, vec![1, id("▁hello"), id("<0x21>")]);
        assert_eq!(tok.decode(&ids), "<s> hello!");
        // A special token resets the prefix: text after it gets a "▁" again.
        let ids = tok.encode("h</s>hello", true).unwrap();
        assert_eq!(ids, vec![1, id("▁h"), 2, id("▁hello")]);
        assert_eq!(tok.eog_ids(), &[2]);
        assert_eq!(tok.token_bytes(id("<0x0A>")), b"\n");
        assert_eq!(tok.token_bytes(0), b"<unk>");
    }

    #[test]
    fn spm_without_byte_tokens_reports_the_byte() {
        let meta = with(spm_meta(), "tokenizer.ggml.token_type", None);
        let meta = with(meta, "tokenizer.ggml.scores", None);
        let mut meta = with(meta, "tokenizer.ggml.tokens", Some(strings(&["<unk>", "<s>", "</s>", "a"])));
        meta.push(("tokenizer.ggml.add_space_prefix".into(), Value::Bool(false)));
        let tok = build(&meta).unwrap();
        assert_eq!(tok.encode("a", false).unwrap(), vec![1, 3]);
        let err = tok.encode("é", false).unwrap_err().to_string();
        assert!(err.contains("0xC3"), "{err}");
    }

    #[test]
    fn spm_duplicate_tokens_are_a_load_error() {
        let meta = with(spm_meta(), "tokenizer.ggml.token_type", None);
        let meta = with(meta, "tokenizer.ggml.scores", None);
        let meta = with(meta, "tokenizer.ggml.tokens", Some(strings(&["<unk>", "<s>", "</s>", "a", "a"])));
        assert!(load_error(&meta).contains("duplicate token \"a\" in tokenizer.ggml.tokens (ids 3 and 4)"));
    }

    #[test]
    fn bad_byte_token_is_a_load_error() {
        let mut meta = spm_meta();
        let Value::Array(tokens) = &mut meta[1].1 else { unreachable!() };
        tokens[3] = s("<0xZZ>");
        assert!(load_error(&meta).contains("<0xZZ>"));
    }

    #[test]
    fn eog_detection_follows_llama_cpp() {
        // fim_rep ("<reponame>") and the EOG names count; "<repo_name>" does not.
        let tokens = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<repo_name>", "<reponame>", "a", "b"];
        let meta = with(gpt2_meta(), "tokenizer.ggml.tokens", Some(strings(&tokens)));
        let meta = with(meta, "tokenizer.ggml.token_type", Some(ints(&[3, 3, 3, 3, 3, 1, 1])));
        let err = build(&with(meta, "tokenizer.ggml.merges", Some(strings(&["a b"])))).unwrap_err();
        // "ab" is not a token: the merge is refused, as the tokenizers crate requires.
        assert!(err.to_string().contains("merges"), "{err}");
        let tokens = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<repo_name>", "<reponame>", "a", "b", "ab"];
        let meta = with(gpt2_meta(), "tokenizer.ggml.tokens", Some(strings(&tokens)));
        let meta = with(meta, "tokenizer.ggml.token_type", Some(ints(&[3, 3, 3, 3, 3, 1, 1, 1])));
        let tok = build(&with(meta, "tokenizer.ggml.merges", Some(strings(&["a b"])))).unwrap();
        assert_eq!(tok.eog_ids(), &[0, 2, 4]);
        assert!(tok.is_eog(4) && !tok.is_eog(3));
    }

    #[test]
    fn tokenizer_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<GgufTokenizer>();
    }
}
