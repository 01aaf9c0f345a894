//! modelhost-core: load, host and run local language and embedding models.
//!
//! The modules follow the path a model takes, top to bottom:
//!
//! 1. **key → catalog**: `host::catalog::Catalog::resolve` turns a model key (or alias, or path) into a
//!    `CatalogEntry`, described from the file headers only.
//! 2. **catalog → header**: `formats` parses headers over bytes: `formats::gguf` (`read_summary`, `parse`),
//!    `formats::safetensors` (`parse_file_header`, `parse`); every count and offset checked before allocating.
//! 3. **header → plan**: `host::load::plan_load` decides the load before a weight byte is read: architecture and
//!    hyper-parameters (`models::Architecture`), context and batch size (`config::LoadConfig`), devices
//!    (`host::placement::Placement`), the memory estimate and budget (`host::budget`).
//! 4. **plan → mapping**: `storage::map_shared` maps the file once per process (or `storage::read_owned` copies
//!    it), under the SIGBUS guard (`storage::sigbus`).
//! 5. **mapping → tensors**: `models::gguf_loader::GgufLoader` reads each tensor, CPU matrices of every type used
//!    in place as `kernels::matrix::WeightMatrix`; BERT's `models::bert::weights` views f32 tensors in place.
//! 6. **tensors → model**: `models::LlmModel::load` builds the tokenizer (`text`), the chat template and the
//!    architecture's `Decoder` (`models::llama`, on `models::blocks` and `kernels`); `models::bert::EmbeddingModel`
//!    likewise for embedding folders.
//! 7. **model → instance**: `host::Host` puts an `Instance` (with its KV cache, `models::LlmSession`) in its
//!    table and hands out `InstanceHandle`s; requests run one at a time per instance (`host::instance`), idle
//!    instances expire (`host::ttl`) or are evicted for room (`host::budget`).
//!
//! `docs/architecture.md` has the folder map. The bindings (`modelhost-py`) use the re-exports below.
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
pub use host::{Generation, Host, HostOptions, InstanceHandle, LoadRequest, LoadedBy, MemoryEstimate, Prompt};
pub use storage::Progress;
pub use text::ChatMessage;
