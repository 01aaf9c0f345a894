//! Text in and out of models: tokenizers and chat templates.
//!
//! A GGUF model's tokenizer is built from its `tokenizer.ggml.*` metadata and tokenizes exactly as llama.cpp
//! does (`GgufTokenizer` over `gguf_vocab`, with `bpe` or `spm` for the merges); an embedding model's comes
//! from its `tokenizer.json` (`EmbeddingTokenizer`, with a fast path for WordPiece vocabularies). A chat
//! becomes a prompt through the model's Jinja template (`template`), rendered as HF transformers renders it.

mod bpe;
mod embedding_tokenizer;
mod gguf_tokenizer;
mod gguf_vocab;
mod spm;
pub mod template;
pub mod wordpiece;

pub use embedding_tokenizer::EmbeddingTokenizer;
pub use gguf_tokenizer::GgufTokenizer;
pub use template::{ChatMessage, ChatTemplate};
