//! The tokenizer of an embedding model folder (`tokenizer.json`), run as sentence-transformers runs it.

use std::borrow::Cow;
use std::path::Path;

use tokenizers::{Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

use super::wordpiece::{self, WordPieceTokenizer};
use crate::error::{Error, Result};

/// The tokenizer of an embedding model (its `tokenizer.json`): BERT's WordPiece read by our fast path, or
/// any other model `tokenizers` reads.
#[derive(Debug)]
pub enum EmbeddingTokenizer {
    /// A WordPiece vocabulary, read by `wordpiece`.
    WordPiece(Box<WordPieceTokenizer>),
    /// Any other `tokenizer.json`, read by `tokenizers`.
    Other(Box<Tokenizer>),
}

/// The same call on either kind of tokenizer.
macro_rules! on_tokenizer {
    ($tokenizer:expr, $t:ident => $call:expr) => {
        match $tokenizer {
            EmbeddingTokenizer::WordPiece($t) => $call,
            EmbeddingTokenizer::Other($t) => $call,
        }
    };
}

impl EmbeddingTokenizer {
    /// Read `tokenizer.json` and set it up as sentence-transformers runs it: truncation at `max_tokens`
    /// (special tokens included), no padding, whatever the file says.
    pub fn load(path: &Path, max_tokens: usize) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::load(path, e.to_string()))?;
        let mut tokenizer = match wordpiece::load(&bytes) {
            Some(t) => EmbeddingTokenizer::WordPiece(Box::new(t)),
            // Another model type (or a broken file, which the generic path then reports).
            None => EmbeddingTokenizer::Other(Box::new(
                Tokenizer::from_bytes(&bytes).map_err(|e| Error::load(path, e.to_string()))?,
            )),
        };
        let specials = on_tokenizer!(&tokenizer, t => t.get_post_processor())
            .map_or(0, |p| tokenizers::PostProcessor::added_tokens(p, false));
        if max_tokens < specials {
            return Err(Error::InvalidConfig(format!(
                "context length {max_tokens} leaves no room for the {specials} special tokens"
            )));
        }
        let truncation = TruncationParams {
            max_length: max_tokens,
            strategy: TruncationStrategy::LongestFirst,
            stride: 0,
            direction: TruncationDirection::Right,
        };
        on_tokenizer!(&mut tokenizer, t => {
            t.with_truncation(Some(truncation)).map_err(|e| Error::load(path, e.to_string()))?;
            t.with_padding(None);
        });
        Ok(tokenizer)
    }

    /// Token ids and type ids of each text, preprocessed as sentence-transformers does (strip, and
    /// lower-case when `lower_case`).
    pub fn encode_batch(&self, texts: &[&str], lower_case: bool) -> Result<Vec<(Vec<u32>, Vec<u32>)>> {
        let inputs: Vec<Cow<'_, str>> = texts
            .iter()
            .map(|t| {
                let t = t.trim();
                if lower_case {
                    Cow::Owned(t.to_lowercase())
                } else {
                    Cow::Borrowed(t)
                }
            })
            .collect();
        let inputs: Vec<&str> = inputs.iter().map(|c| c.as_ref()).collect();
        let encodings = on_tokenizer!(self, t => t.encode_batch_fast(inputs, true))
            .map_err(|e| Error::InvalidConfig(format!("cannot tokenize: {e}")))?;
        Ok(encodings.into_iter().map(|e| (e.get_ids().to_vec(), e.get_type_ids().to_vec())).collect())
    }
}
