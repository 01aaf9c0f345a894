//! SentencePiece BPE (`tokenizer.ggml.model = "llama"`), as llama.cpp runs it: symbols merge by the score
//! of the merged piece, and pieces missing from the vocabulary fall back to `<0xXX>` byte tokens.

use std::hash::BuildHasher;

use hashbrown::{DefaultHashBuilder, HashTable};

use super::gguf_vocab::{duplicate_token_reason, Meta};
use crate::error::{Error, Result};

/// A SentencePiece vocabulary: token ids by text, their scores, and the byte-fallback tokens. The texts stay the
/// tokenizer's (passed to `encode`); the index holds ids only, so a 262k-token vocabulary costs no string copies.
pub(super) struct SentencePiece {
    /// Ids, found by hashing their token's text.
    index: HashTable<u32>,
    hasher: DefaultHashBuilder,
    scores: Vec<f32>,
    /// The token for each byte: `<0xXX>`, else the byte itself as a one-character token.
    byte_tokens: Box<[Option<u32>; 256]>,
    /// Whether a text fragment at the start, or after a special token, gets a `▁` prefix.
    pub(super) add_space_prefix: bool,
}

impl SentencePiece {
    /// Build from the token texts and scores; duplicate tokens name the key.
    pub(super) fn new(meta: &Meta<'_>, texts: &[String], scores: Vec<f32>, add_space_prefix: bool) -> Result<Self> {
        let hasher = DefaultHashBuilder::default();
        let mut index = HashTable::with_capacity(texts.len());
        for (id, text) in texts.iter().enumerate() {
            let entry = index.entry(
                hasher.hash_one(text.as_str()),
                |&other: &u32| texts[other as usize] == *text,
                |&other| hasher.hash_one(texts[other as usize].as_str()),
            );
            match entry {
                hashbrown::hash_table::Entry::Occupied(_) => return Err(meta.err(duplicate_token_reason(texts))),
                hashbrown::hash_table::Entry::Vacant(slot) => {
                    slot.insert(id as u32);
                }
            }
        }
        let mut spm = SentencePiece { index, hasher, scores, byte_tokens: Box::new([None; 256]), add_space_prefix };
        for b in 0..=255u8 {
            // llama.cpp `byte_to_token`: "<0xXX>", else the byte as a one-character token.
            spm.byte_tokens[usize::from(b)] = spm.id(texts, &format!("<0x{b:02X}>")).or_else(|| {
                let c = char::from(b);
                (b < 0x80).then(|| spm.id(texts, c.encode_utf8(&mut [0; 4]))).flatten()
            });
        }
        Ok(spm)
    }

    /// The id of the token `text` (`texts` are the vocabulary's, as given to `new`).
    fn id(&self, texts: &[String], text: &str) -> Option<u32> {
        self.index.find(self.hasher.hash_one(text), |&id| texts[id as usize] == text).copied()
    }

    /// Tokenize one fragment whose spaces are already `▁`, with the vocabulary `texts` given to `new`.
    pub(super) fn encode(&self, texts: &[String], text: &str, out: &mut Vec<u32>) -> Result<()> {
        spm_encode(|piece| self.id(texts, piece), &self.scores, &self.byte_tokens, text, out)
    }
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
    token_to_id: impl Fn(&str) -> Option<u32>,
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
        if let Some(id) = token_to_id(merged) {
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
        match token_to_id(piece) {
            Some(id) => out.push(id),
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
