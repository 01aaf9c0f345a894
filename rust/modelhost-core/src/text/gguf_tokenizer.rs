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
//! tokens count as control tokens); that is reproduced here rule for rule, see `gguf_vocab::detect_special`.

use std::fmt;
use std::path::Path;

use super::bpe::{pre_tokenizer, ByteLevelBpe, PreTokenizer, GPT2_PATTERN};
use super::gguf_vocab::{
    append_piece, attr_from_type, detect_special, integer, read_tokens, Meta, SpecialIds, ATTR_CONTROL, ATTR_LSTRIP,
    ATTR_NORMAL, ATTR_RSTRIP, ATTR_UNKNOWN, ATTR_USER_DEFINED,
};
use super::spm::SentencePiece;
use crate::error::{Error, Result};
use crate::formats::gguf::GgufHeader;

/// The vocabulary-type specific half of the tokenizer: how a text segment becomes ids.
enum Algorithm {
    /// Byte-level BPE (`tokenizer.ggml.model = "gpt2"`).
    ByteLevelBpe(ByteLevelBpe),
    /// SentencePiece BPE (`tokenizer.ggml.model = "llama"`).
    SentencePiece(SentencePiece),
}

/// A GGUF model's tokenizer. Immutable, `Send + Sync`; build once per model.
pub struct GgufTokenizer {
    algorithm: Algorithm,
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
                &match self.algorithm {
                    Algorithm::ByteLevelBpe(_) => "gpt2",
                    Algorithm::SentencePiece(_) => "llama",
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
enum Segment {
    /// A byte range of the input still to be tokenized.
    Text(usize, usize),
    /// A special token written in the text.
    Token(u32),
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
        let model_name = meta.str("general.name").ok().flatten().unwrap_or_default();
        set_strip_attributes(model_name, &texts, &special_tokens, &mut attrs);

        let mut pieces = Vec::with_capacity(texts.iter().map(String::len).sum());
        let mut piece_starts = Vec::with_capacity(n + 1);
        piece_starts.push(0);
        for (id, (text, &attr)) in texts.iter().zip(&attrs).enumerate() {
            append_piece(&mut pieces, text, attr, is_bpe)
                .map_err(|reason| meta.err(format!("token {id}: {reason}")))?;
            piece_starts.push(pieces.len());
        }

        let algorithm = if is_bpe {
            Algorithm::ByteLevelBpe(ByteLevelBpe::new(&meta, &texts, &pre)?)
        } else {
            Algorithm::SentencePiece(SentencePiece::new(&meta, &texts, scores, add_space_prefix)?)
        };

        Ok(GgufTokenizer {
            algorithm,
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
        let segments = self.partition(text, parse_special);
        match &self.algorithm {
            Algorithm::ByteLevelBpe(bpe) => {
                for segment in &segments {
                    match *segment {
                        Segment::Text(start, end) => bpe.encode(&text[start..end], &mut out)?,
                        Segment::Token(id) => out.push(id),
                    }
                }
            }
            Algorithm::SentencePiece(spm) => {
                // llama.cpp prefixes a space to every text segment that follows a special token
                // or starts the input.
                let mut after_special = true;
                for segment in &segments {
                    match *segment {
                        Segment::Text(start, end) => {
                            let mut piece = String::with_capacity(end - start + 3);
                            if spm.add_space_prefix && after_special {
                                piece.push('▁');
                            }
                            for c in text[start..end].chars() {
                                piece.push(if c == ' ' { '▁' } else { c });
                            }
                            spm.encode(&self.texts, &piece, &mut out)?;
                            after_special = false;
                        }
                        Segment::Token(id) => {
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

    /// Whether `encode` puts the BOS token first (`tokenizer.ggml.add_bos_token`).
    pub fn adds_bos(&self) -> bool {
        self.add_bos
    }

    /// Whether `encode` puts the EOS token last (`tokenizer.ggml.add_eos_token`).
    pub fn adds_eos(&self) -> bool {
        self.add_eos
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
    /// at a time, longest first, every occurrence in every remaining text segment.
    fn partition(&self, text: &str, parse_special: bool) -> Vec<Segment> {
        let mut segments = Vec::new();
        if text.is_empty() {
            return segments;
        }
        segments.push(Segment::Text(0, text.len()));
        for &id in &self.special_tokens {
            if !parse_special && self.attrs[id as usize] & (ATTR_CONTROL | ATTR_UNKNOWN) != 0 {
                continue;
            }
            let needle = self.texts[id as usize].as_str();
            // Cheap rejection: most special tokens occur nowhere in a prompt.
            if !text.contains(needle) {
                continue;
            }
            let mut next = Vec::with_capacity(segments.len() + 2);
            for segment in segments {
                let Segment::Text(start, end) = segment else {
                    next.push(segment);
                    continue;
                };
                let attr = self.attrs[id as usize];
                let mut pos = start;
                while let Some(found) = text[pos..end].find(needle) {
                    let mut left_end = pos + found;
                    if attr & ATTR_LSTRIP != 0 {
                        left_end = pos + text[pos..left_end].trim_end_matches(is_c_space).len();
                    }
                    if left_end > pos {
                        next.push(Segment::Text(pos, left_end));
                    }
                    next.push(Segment::Token(id));
                    pos += found + needle.len();
                    if attr & ATTR_RSTRIP != 0 {
                        pos = end - text[pos..end].trim_start_matches(is_c_space).len();
                    }
                }
                if pos < end {
                    next.push(Segment::Text(pos, end));
                }
            }
            segments = next;
        }
        segments
    }
}

/// C's `isspace` in the "C" locale, which llama.cpp strips with.
fn is_c_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\x0B' | '\x0C' | '\r')
}

/// The whitespace-stripping attributes llama.cpp gives tokens by the model's name (`llama_vocab::impl::load`):
/// for Phi-3 (a `general.name` containing "phi-3" or "phi3", any case) every special token and `</s>` drop the
/// whitespace that follows them, except `<unk>`, `<s>` and `<|endoftext|>`.
fn set_strip_attributes(model_name: &str, texts: &[String], special_tokens: &[u32], attrs: &mut [u16]) {
    let name = model_name.to_ascii_lowercase();
    if !(name.contains("phi-3") || name.contains("phi3")) {
        return;
    }
    for &id in special_tokens {
        attrs[id as usize] |= ATTR_RSTRIP;
    }
    for (id, text) in texts.iter().enumerate() {
        match text.as_str() {
            "</s>" => attrs[id] |= ATTR_RSTRIP,
            "<unk>" | "<s>" | "<|endoftext|>" => attrs[id] &= !ATTR_RSTRIP,
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::gguf::parse;
    use crate::formats::gguf::Value;
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
