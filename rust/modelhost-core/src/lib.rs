//! modelhost-core: load, host and run local language and embedding models.
//!
//! One module per concern: `catalog` finds models, `gguf`/`safetensors` parse headers, `weights` maps
//! files (`sigbus` guards the maps) and reports progress, `placement` plans devices, `instances` is the
//! lifecycle table, `llm`/`embedding` run models, `tokenizer`/`wordpiece`/`template` turn text into ids
//! and chats into prompts.
#![deny(missing_docs)]

pub mod catalog;
pub mod config;
pub mod error;
pub mod formats;
pub mod instances;
pub mod kernels;
pub mod models;
pub mod placement;
pub mod storage;
pub mod text;

pub use error::{BoxError, Error, Result};
