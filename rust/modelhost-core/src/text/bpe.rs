//! Byte-level BPE (`tokenizer.ggml.model = "gpt2"`), as llama.cpp runs it: the pre-tokenizer regexes of
//! `tokenizer.ggml.pre`, GPT-2's byte-to-character table, then merges by rank with the `tokenizers` crate.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, OnceLock};

use tokenizers::models::bpe::{Merges, Vocab, BPE};
use tokenizers::utils::SysRegex;
use tokenizers::Model as _;

use super::gguf_vocab::{duplicate_token_reason, Meta};
use crate::error::{Error, Result};

// Pre-tokenizer regexes. llama.cpp runs the GPT-2 and Llama-3 patterns through hand-written
// matchers (`unicode_regex_split_custom_gpt2/llama3`) whose behaviour is exactly that of the
// patterns below with the trailing `|\s+` alternative that HF's tokenizers also use; the other
// patterns it runs through std::regex unchanged. Every pattern splits "isolated": matches and the
// text between them both become pieces, and each pattern splits the pieces of the previous one.
pub(super) const GPT2_PATTERN: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";
/// llama.cpp's ASCII-only spelling of `(?i:'s|…)`: Unicode case folding would also match `'ſ`.
const LLAMA3_PATTERN: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen 2's: Llama 3's with digits one at a time.
const QWEN2_PATTERN: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
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
pub(super) struct PreTokenizer {
    pub(super) patterns: &'static [&'static str],
    /// A whole pre-token that is in the vocabulary is emitted as is, without merging.
    pub(super) ignore_merges: bool,
    /// The default of `tokenizer.ggml.add_bos_token`.
    pub(super) add_bos: bool,
}

/// The pre-tokenizer for a `tokenizer.ggml.pre` value; `None` when llama.cpp knows no such name.
pub(super) fn pre_tokenizer(pre: Option<&str>) -> Option<PreTokenizer> {
    let p = |patterns, ignore_merges, add_bos| Some(PreTokenizer { patterns, ignore_merges, add_bos });
    match pre.unwrap_or("default") {
        "default" => p(DEFAULT_PATTERNS, false, false),
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" | "midm-2.0" | "lfm2"
        | "jina-v5-nano" => p(std::slice::from_ref(&LLAMA3_PATTERN), true, true),
        "qwen2" | "deepseek-r1-qwen" | "kormo" | "f2llmv2" | "megrez" => {
            p(std::slice::from_ref(&QWEN2_PATTERN), false, false)
        }
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
pub(super) fn char_to_byte(c: char) -> Option<u8> {
    let c = u32::from(c);
    match c {
        0x21..=0x7E | 0xA1..=0xAC | 0xAE..=0xFF => Some(c as u8),
        0x100..=0x143 => Some(REMAPPED_BYTES[(c - 0x100) as usize]),
        _ => None,
    }
}

/// A byte-level BPE vocabulary with its merges and pre-tokenizer regexes.
pub(super) struct ByteLevelBpe {
    bpe: Box<BPE>,
    splits: Vec<&'static SysRegex>,
}

impl ByteLevelBpe {
    /// Build from `tokenizer.ggml.merges` and the token texts; bad merges and duplicate tokens name the key.
    pub(super) fn new(meta: &Meta<'_>, texts: &[String], pre: &PreTokenizer) -> Result<Self> {
        let merges =
            meta.array("tokenizer.ggml.merges")?.ok_or_else(|| meta.err("tokenizer.ggml.merges is missing"))?;
        let mut pairs: Merges = Vec::with_capacity(merges.len());
        // llama.cpp keeps the first rank of a repeated merge; the tokenizers crate would keep the last.
        let mut seen = HashSet::with_capacity(merges.len());
        for (i, v) in merges.iter().enumerate() {
            let merge =
                v.as_str().ok_or_else(|| meta.err(format!("tokenizer.ggml.merges[{i}] is {v:?}, not a string")))?;
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
        Ok(ByteLevelBpe { bpe: Box::new(bpe), splits })
    }

    /// Tokenize one text fragment (llama.cpp `llm_tokenizer_bpe_session::tokenize`).
    pub(super) fn encode(&self, text: &str, out: &mut Vec<u32>) -> Result<()> {
        let mut pieces = vec![(0, text.len())];
        for re in &self.splits {
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
            let tokens =
                self.bpe.tokenize(&word).map_err(|e| Error::InvalidConfig(format!("cannot tokenize {word:?}: {e}")))?;
            out.extend(tokens.iter().map(|t| t.id));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
