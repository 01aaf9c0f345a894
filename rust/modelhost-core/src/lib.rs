//! modelhost-core: load, host and run local language and embedding models.
//!
//! One module per concern: `catalog` finds models, `gguf`/`safetensors` parse headers, `weights` maps
//! files (`sigbus` guards the maps) and reports progress, `placement` plans devices, `instances` is the
//! lifecycle table, `llm`/`embedding` run models, `tokenizer`/`wordpiece`/`template` turn text into ids
//! and chats into prompts.
#![deny(missing_docs)]

pub mod config;
pub mod error;
pub mod formats;
pub mod host;
pub mod kernels;
pub mod models;
pub mod storage;
pub mod text;

pub use config::LoadConfig;
pub use error::{BoxError, Error, Result};
pub use host::catalog::{CatalogEntry, ModelKind};
pub use host::{Generation, Host, HostOptions, InstanceHandle, LoadRequest, MemoryEstimate, Prompt};
pub use storage::Progress;
pub use text::ChatMessage;
