//! BERT's WordPiece vocabulary, read from `tokenizer.json` with one allocation per structure, for the
//! embedding models' load.
//!
//! `tokenizers`' own WordPiece keeps two hash maps of owned strings (token → id and id → token) and
//! grows the first entry by entry while parsing, which was most of an embedding model's load (the numbers
//! are in `benches/results/profile.md`). This model keeps every token in one string, a table of spans by id, and a hash
//! table of ids keyed by their text: one allocation per structure, none per token. Tokenization is the
//! same greedy longest-match-first as `tokenizers::models::wordpiece::WordPiece::tokenize` (the tests
//! compare the two), and the rest of the pipeline (normalizer, pre-tokenizer, added tokens, post-processor)
//! is `tokenizers`' own, assembled by `load`.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::path::{Path, PathBuf};

use hashbrown::{DefaultHashBuilder, HashTable};
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use tokenizers::models::wordpiece::WordPieceTrainer;
use tokenizers::{
    AddedToken, DecoderWrapper, Model, NormalizerWrapper, PostProcessorWrapper, PreTokenizerWrapper, Token,
    TokenizerBuilder, TokenizerImpl,
};

/// A `tokenizer.json` tokenizer whose model is WordPiece.
pub type WordPieceTokenizer =
    TokenizerImpl<WordPiece, NormalizerWrapper, PreTokenizerWrapper, PostProcessorWrapper, DecoderWrapper>;

/// A WordPiece vocabulary and its tokenization settings.
#[derive(Clone)]
pub struct WordPiece {
    /// Every token, back to back.
    vocab: Vocab,
    /// Ids, found by hashing their token's text.
    index: HashTable<u32>,
    hasher: DefaultHashBuilder,
    unk_token: String,
    continuing_subword_prefix: String,
    max_input_chars_per_word: usize,
}

impl std::fmt::Debug for WordPiece {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WordPiece").field("tokens", &self.vocab.len()).field("unk_token", &self.unk_token).finish()
    }
}

impl WordPiece {
    fn token(&self, id: u32) -> Option<&str> {
        ((id as usize) < self.vocab.len()).then(|| self.vocab.token(id))
    }

    fn id(&self, token: &str) -> Option<u32> {
        let hash = self.hasher.hash_one(token);
        self.index.find(hash, |&id| self.token(id) == Some(token)).copied()
    }

    fn unknown(&self, sequence: &str) -> tokenizers::Result<Vec<Token>> {
        let id = self.id(&self.unk_token).ok_or("WordPiece error: the unknown token is not in the vocabulary")?;
        Ok(vec![Token { value: self.unk_token.clone(), id, offsets: (0, sequence.len()) }])
    }
}

impl Model for WordPiece {
    type Trainer = WordPieceTrainer;

    fn tokenize(&self, sequence: &str) -> tokenizers::Result<Vec<Token>> {
        if sequence.chars().count() > self.max_input_chars_per_word {
            return self.unknown(sequence);
        }
        let mut tokens = Vec::new();
        let mut candidate = String::new();
        let mut start = 0;
        while start < sequence.len() {
            // The longest piece from `start` that is in the vocabulary, with the prefix after the first.
            let mut end = sequence.len();
            let found = loop {
                if start >= end {
                    break None;
                }
                let piece = &sequence[start..end];
                candidate.clear();
                if start > 0 {
                    candidate.push_str(&self.continuing_subword_prefix);
                }
                candidate.push_str(piece);
                if let Some(id) = self.id(&candidate) {
                    break Some(id);
                }
                end -= piece.chars().next_back().map_or(1, char::len_utf8);
            };
            let Some(id) = found else { return self.unknown(sequence) };
            tokens.push(Token { value: candidate.clone(), id, offsets: (start, end) });
            start = end;
        }
        Ok(tokens)
    }

    fn token_to_id(&self, token: &str) -> Option<u32> {
        self.id(token)
    }

    fn id_to_token(&self, id: u32) -> Option<String> {
        self.token(id).map(str::to_owned)
    }

    fn get_vocab(&self) -> HashMap<String, u32> {
        (0..self.vocab.len() as u32).map(|id| (self.vocab.token(id).to_owned(), id)).collect()
    }

    fn get_vocab_size(&self) -> usize {
        self.vocab.len()
    }

    fn save(&self, _folder: &Path, _prefix: Option<&str>) -> tokenizers::Result<Vec<PathBuf>> {
        Err("saving is not supported for this WordPiece model".into())
    }

    fn get_trainer(&self) -> WordPieceTrainer {
        WordPieceTrainer::builder().build()
    }
}

/// Read a `tokenizer.json` whose model is WordPiece. `None` for any other model or anything this fast
/// path does not take (duplicate tokens, ids that are not exactly `0..n`): the caller then uses
/// `tokenizers`' generic loader, which also gives the error message for a broken file.
pub fn load(json: &[u8]) -> Option<WordPieceTokenizer> {
    let file: TokenizerFile = serde_json::from_slice(json).ok()?;
    let mut tokenizer = TokenizerBuilder::new()
        .with_model(file.model)
        .with_normalizer(file.normalizer)
        .with_pre_tokenizer(file.pre_tokenizer)
        .with_post_processor(file.post_processor)
        .with_decoder(file.decoder)
        .build()
        .ok()?;
    // As `tokenizers` does: the file's added tokens, in order (their ids come from the vocabulary).
    let added: Vec<AddedToken> = file.added_tokens.into_iter().map(|t| t.token).collect();
    tokenizer.add_tokens(&added);
    Some(tokenizer)
}

/// The parts of `tokenizer.json` that make a tokenizer; truncation and padding are the caller's.
#[derive(Deserialize)]
struct TokenizerFile {
    #[serde(default)]
    added_tokens: Vec<AddedTokenWithId>,
    normalizer: Option<NormalizerWrapper>,
    pre_tokenizer: Option<PreTokenizerWrapper>,
    post_processor: Option<PostProcessorWrapper>,
    decoder: Option<DecoderWrapper>,
    model: WordPiece,
}

#[derive(Deserialize)]
struct AddedTokenWithId {
    #[allow(dead_code)] // the id is implied by the vocabulary, as in `tokenizers`
    id: u32,
    #[serde(flatten)]
    token: AddedToken,
}

impl<'de> Deserialize<'de> for WordPiece {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(ModelVisitor)
    }
}

struct ModelVisitor;

impl<'de> Visitor<'de> for ModelVisitor {
    type Value = WordPiece;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a WordPiece model")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<WordPiece, A::Error> {
        let (mut unk, mut prefix, mut max_chars, mut vocab) = (None, None, None, None);
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "type" => {
                    let kind: String = map.next_value()?;
                    if kind != "WordPiece" {
                        return Err(de::Error::custom("not a WordPiece model"));
                    }
                }
                "unk_token" => unk = Some(map.next_value::<String>()?),
                "continuing_subword_prefix" => prefix = Some(map.next_value::<String>()?),
                "max_input_chars_per_word" => max_chars = Some(map.next_value::<usize>()?),
                "vocab" => vocab = Some(map.next_value::<Vocab>()?),
                _ => {
                    map.next_value::<de::IgnoredAny>()?;
                }
            }
        }
        let missing = |field| de::Error::missing_field(field);
        let vocab = vocab.ok_or_else(|| missing("vocab"))?;
        let hasher = DefaultHashBuilder::default();
        let mut index = HashTable::with_capacity(vocab.len());
        for id in 0..vocab.len() as u32 {
            let token = vocab.token(id);
            let entry = index.entry(
                hasher.hash_one(token),
                |&other| vocab.token(other) == token,
                |&other| hasher.hash_one(vocab.token(other)),
            );
            match entry {
                hashbrown::hash_table::Entry::Occupied(_) => {
                    return Err(de::Error::custom("a token appears twice in the vocabulary"));
                }
                hashbrown::hash_table::Entry::Vacant(slot) => {
                    slot.insert(id);
                }
            }
        }
        Ok(WordPiece {
            vocab,
            index,
            hasher,
            unk_token: unk.ok_or_else(|| missing("unk_token"))?,
            continuing_subword_prefix: prefix.ok_or_else(|| missing("continuing_subword_prefix"))?,
            max_input_chars_per_word: max_chars.ok_or_else(|| missing("max_input_chars_per_word"))?,
        })
    }
}

/// The `vocab` object: every token appended to one string, its span stored at its id.
#[derive(Clone)]
struct Vocab {
    text: String,
    /// `text[start..end]` of each id.
    spans: Vec<(u32, u32)>,
}

impl Vocab {
    fn len(&self) -> usize {
        self.spans.len()
    }

    /// The token of `id`; `id` must be below `len()`.
    fn token(&self, id: u32) -> &str {
        let (start, end) = self.spans[id as usize];
        &self.text[start as usize..end as usize]
    }
}

impl<'de> Deserialize<'de> for Vocab {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(VocabVisitor)
    }
}

struct VocabVisitor;

impl<'de> Visitor<'de> for VocabVisitor {
    type Value = Vocab;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a map of tokens to ids")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Vocab, A::Error> {
        let too_large = || de::Error::custom("vocabulary too large");
        let mut text = String::new();
        let mut entries: Vec<(u32, u32, u32)> = Vec::new();
        loop {
            let start = u32::try_from(text.len()).map_err(|_| too_large())?;
            if map.next_key_seed(AppendTo(&mut text))?.is_none() {
                break;
            }
            let end = u32::try_from(text.len()).map_err(|_| too_large())?;
            entries.push((map.next_value()?, start, end));
        }
        // Ids must be exactly 0..n, each once; anything else goes to the generic loader.
        const UNSET: (u32, u32) = (u32::MAX, u32::MAX);
        let mut spans = vec![UNSET; entries.len()];
        for (id, start, end) in entries {
            match spans.get_mut(id as usize) {
                Some(span) if *span == UNSET => *span = (start, end),
                _ => return Err(de::Error::custom("token ids are not 0..n, each once")),
            }
        }
        Ok(Vocab { text, spans })
    }
}

/// Appends a string key to the shared text.
struct AppendTo<'a>(&'a mut String);

impl<'de> DeserializeSeed<'de> for AppendTo<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for AppendTo<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a token")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        self.0.push_str(v);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const PIECES: [&str; 14] =
        ["[UNK]", "[CLS]", "[SEP]", "un", "##aff", "##able", "a", "##a", "é", "##é", "😀", "##b", "ab", "\"q\""];

    fn model_json(max_chars: usize) -> String {
        let vocab: Vec<String> =
            PIECES.iter().enumerate().map(|(i, p)| format!("{}: {i}", serde_json::to_string(p).unwrap())).collect();
        format!(
            r###"{{"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##", "max_input_chars_per_word": {max_chars}, "vocab": {{{}}}}}"###,
            vocab.join(", ")
        )
    }

    fn both(max_chars: usize) -> (WordPiece, tokenizers::models::wordpiece::WordPiece) {
        let json = model_json(max_chars);
        (serde_json::from_str(&json).unwrap(), serde_json::from_str(&json).unwrap())
    }

    fn summary(tokens: Vec<Token>) -> Vec<(String, u32, (usize, usize))> {
        tokens.into_iter().map(|t| (t.value, t.id, t.offsets)).collect()
    }

    proptest! {
        #[test]
        fn tokenizes_as_tokenizers_does(words in proptest::collection::vec(
            proptest::collection::vec(prop_oneof![
                Just("un"), Just("aff"), Just("able"), Just("a"), Just("b"), Just("é"), Just("😀"), Just("x"), Just("\"q\"")
            ], 0..6).prop_map(|p| p.concat()),
            1..4,
        ), max_chars in 1usize..12) {
            let (ours, theirs) = both(max_chars);
            for word in &words {
                prop_assert_eq!(summary(ours.tokenize(word).unwrap()), summary(theirs.tokenize(word).unwrap()), "{}", word);
            }
        }
    }

    #[test]
    fn vocabulary_lookups() {
        let (ours, theirs) = both(100);
        assert_eq!(ours.get_vocab(), theirs.get_vocab());
        assert_eq!(ours.get_vocab_size(), PIECES.len());
        for (id, piece) in PIECES.iter().enumerate() {
            assert_eq!(ours.token_to_id(piece), Some(id as u32));
            assert_eq!(ours.id_to_token(id as u32).as_deref(), Some(*piece));
        }
        assert_eq!(ours.token_to_id("nope"), None);
        assert_eq!(ours.id_to_token(99), None);
    }

    #[test]
    fn irregular_vocabularies_go_to_the_generic_loader() {
        let bad = [
            r#"{"a": 0, "b": 2}"#,  // a gap
            r#"{"a": 0, "b": 0}"#,  // a shared id
            r#"{"a": 0, "a": 1}"#,  // a duplicate token
            r#"{"a": 4294967295}"#, // a huge id
            r#"{"a": -1}"#,         // not an id
        ];
        for vocab in bad {
            let json = format!(
                r###"{{"type": "WordPiece", "unk_token": "a", "continuing_subword_prefix": "##", "max_input_chars_per_word": 10, "vocab": {vocab}}}"###
            );
            assert!(serde_json::from_str::<WordPiece>(&json).is_err(), "{vocab}");
        }
        let bpe = r#"{"type": "BPE", "vocab": {}, "merges": []}"#;
        assert!(serde_json::from_str::<WordPiece>(bpe).is_err());
        let tokenizer = format!(r#"{{"version": "1.0", "added_tokens": [], "model": {bpe}}}"#);
        assert!(load(tokenizer.as_bytes()).is_none());
    }
}
