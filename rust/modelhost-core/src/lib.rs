//! modelhost-core: load, host and run local language and embedding models.
//!
//! One module per concern: `catalog` finds models, `gguf`/`safetensors` parse headers, `weights` maps
//! files and reports progress, `placement` plans devices, `instances` is the lifecycle table,
//! `llm`/`embedding` run models, `tokenizer`/`template` turn text into ids and chats into prompts.
#![deny(missing_docs)]

pub mod error;
pub mod gguf;
pub mod weights;

pub use error::{BoxError, Error, Result};
