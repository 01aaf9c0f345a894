//! Models: one file or folder per architecture, over shared building blocks.
//!
//! Language models (`llm`): an `LlmModel` holds the tokenizer, the chat template and one architecture's
//! `Decoder`, chosen by the GGUF's `general.architecture` (`Architecture`). An architecture is one file
//! (`llama`) that reads its hyper-parameters (`params`), loads its weights with the shared `gguf_loader` into
//! the shared `blocks` (linear, embeddings, norm, rope, attention, mlp, kv cache) and runs its forward pass.
//! What happens around a forward pass is shared too: `session` (an instance's KV cache), `sampling` (the
//! next token) and `generation` (streaming, stop strings, stats).
//!
//! Embedding models: `bert`, a BERT-family sentence-transformers folder on the f32 kernels.

pub mod bert;
pub(crate) mod blocks;
pub mod generation;
mod gguf_loader;
mod llama;
pub mod llm;
pub mod params;
pub mod sampling;
pub mod session;

use std::path::Path;

use candle_core::{Device, Tensor};

use crate::error::{Error, Result};
use crate::formats::gguf::{GgufHeader, Value};
use crate::host::placement::Placement;
use blocks::embeddings::TokenEmbeddings;
use blocks::kv_cache::KvCache;
use blocks::linear::Linear;
use blocks::rope::Rope;
use gguf_loader::GgufLoader;

pub use generation::{Fragment, GenerationState, PredictionStats, StopReason};
pub use llm::LlmModel;
pub use params::LlmParams;
pub use sampling::PredictionConfig;
pub use session::LlmSession;

/// The decoder architectures this build runs, by the GGUF's `general.architecture`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    /// `llama` (and models that ship as llama, e.g. SmolLM2).
    Llama,
}

impl Architecture {
    /// The architecture `header` names; any other is a load error naming the file.
    pub fn of(header: &GgufHeader, path: &Path) -> Result<Self> {
        match header.get("general.architecture").and_then(Value::as_str).unwrap_or("") {
            "llama" => Ok(Architecture::Llama),
            arch => {
                Err(Error::load(path, format!("architecture {arch:?} is not supported (llama-architecture GGUF only)")))
            }
        }
    }

    /// The hyper-parameters, read from `header` and checked against its tensors.
    pub fn params(self, header: &GgufHeader, path: &Path) -> Result<LlmParams> {
        match self {
            Architecture::Llama => llama::params(header, path),
        }
    }

    /// Load the decoder's weights, block by block on `placement`'s devices.
    fn load(
        self,
        loader: &mut GgufLoader<'_, '_, '_>,
        params: &LlmParams,
        placement: &Placement,
    ) -> Result<Box<dyn Decoder>> {
        match self {
            Architecture::Llama => Ok(Box::new(llama::Llama::load(loader, params, placement)?)),
        }
    }
}

/// What an architecture provides once loaded: its forward pass, and its weights for locking and checks.
pub(crate) trait Decoder: Send + Sync {
    /// Run `tokens` at positions `pos..` through the model, filling `cache`; logits for every position
    /// (`all`) or only the last, as a `(n, vocab)` f32 tensor on the CPU. Called on the kernel pool.
    fn forward(&self, cache: &mut KvCache, rope: &Rope, tokens: &[u32], pos: usize, all: bool) -> Result<Tensor>;

    /// Every weight matrix (for page locking and the in-place check).
    fn linears(&self) -> Vec<&Linear>;

    /// The token embedding table.
    fn token_embeddings(&self) -> &TokenEmbeddings;

    /// The device of each block: the KV cache has one layer per block, on its device.
    fn block_devices(&self) -> Vec<Device>;
}
