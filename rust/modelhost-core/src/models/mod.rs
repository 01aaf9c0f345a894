//! Models: one file or folder per architecture, over shared building blocks.
//!
//! Language models (`llm`): an `LlmModel` holds the tokenizer, the chat template and one architecture's
//! `Decoder`, chosen by the GGUF's `general.architecture` (`Architecture`). An architecture is one file
//! (`llama`, `qwen2`, `qwen3`, `phi3`, `gemma3`) that reads its hyper-parameters (`params`) and says which
//! variant of the shared `blocks` (linear, embeddings, norm, rope, q/k/v projection, attention, mlp, layer,
//! kv cache) each layer uses; `transformer` loads them with the shared `gguf_loader` and runs the forward pass.
//! What happens around a forward pass is shared too: `session` (an instance's KV cache), `sampling` (the
//! next token) and `generation` (streaming, stop strings, stats).
//!
//! Embedding models: `bert`, a BERT-family sentence-transformers folder on the f32 kernels.

pub mod bert;
pub(crate) mod blocks;
mod gemma3;
pub mod generation;
mod gguf_loader;
mod llama;
pub mod llm;
pub mod params;
mod phi3;
mod qwen2;
mod qwen3;
pub mod sampling;
pub mod session;
#[cfg(test)]
mod tests;
mod transformer;

use std::path::Path;

use candle_core::{Device, Tensor};

use crate::error::{Error, Result};
use crate::formats::gguf::GgufHeader;
use crate::host::placement::Placement;
use blocks::embeddings::TokenEmbeddings;
use blocks::kv_cache::KvCache;
use blocks::linear::Linear;
use blocks::rope::RopeTables;
use gguf_loader::GgufLoader;

pub use generation::{Fragment, GenerationState, PredictionStats, StopReason};
pub use llm::LlmModel;
pub use params::LlmParams;
pub use sampling::PredictionConfig;
pub use session::LlmSession;

/// The decoder architectures this build runs, by the GGUF's `general.architecture`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    /// `llama` (and models that ship as llama: Llama 2/3, Mistral 7B, SmolLM2).
    Llama,
    /// `qwen2` (Qwen 2, Qwen 2.5).
    Qwen2,
    /// `qwen3` (dense Qwen 3).
    Qwen3,
    /// `phi3` (Phi-3, Phi-3.5, Phi-4-mini).
    Phi3,
    /// `gemma3` (Gemma 3, text).
    Gemma3,
}

impl Architecture {
    /// Every supported architecture, in the order error messages list them.
    pub const ALL: [Architecture; 5] =
        [Architecture::Llama, Architecture::Qwen2, Architecture::Qwen3, Architecture::Phi3, Architecture::Gemma3];

    /// The `general.architecture` value.
    pub fn name(self) -> &'static str {
        match self {
            Architecture::Llama => "llama",
            Architecture::Qwen2 => "qwen2",
            Architecture::Qwen3 => "qwen3",
            Architecture::Phi3 => "phi3",
            Architecture::Gemma3 => "gemma3",
        }
    }

    /// The architecture `header` names; any other is a load error naming it, the file and the supported ones.
    pub fn of(header: &GgufHeader, path: &Path) -> Result<Self> {
        let arch = match header.get("general.architecture") {
            None => return Err(Error::load(path, "general.architecture is missing")),
            Some(v) => v.as_str().ok_or_else(|| Error::load(path, format!("general.architecture is {v:?}")))?,
        };
        Architecture::ALL.into_iter().find(|a| a.name() == arch).ok_or_else(|| {
            let supported: Vec<&str> = Architecture::ALL.iter().map(|a| a.name()).collect();
            Error::load(path, format!("architecture {arch:?} is not supported (supported: {})", supported.join(", ")))
        })
    }

    /// The hyper-parameters, read from `header` and checked against its tensors.
    pub fn params(self, header: &GgufHeader, path: &Path) -> Result<LlmParams> {
        match self {
            Architecture::Llama => llama::params(header, path),
            Architecture::Qwen2 => qwen2::params(header, path),
            Architecture::Qwen3 => qwen3::params(header, path),
            Architecture::Phi3 => phi3::params(header, path),
            Architecture::Gemma3 => gemma3::params(header, path),
        }
    }

    /// Load the decoder's weights, block by block on `placement`'s devices.
    fn load(
        self,
        loader: &mut GgufLoader<'_, '_, '_>,
        params: &LlmParams,
        placement: &Placement,
    ) -> Result<Box<dyn Decoder>> {
        Ok(Box::new(match self {
            Architecture::Llama => llama::load(loader, params, placement)?,
            Architecture::Qwen2 => qwen2::load(loader, params, placement)?,
            Architecture::Qwen3 => qwen3::load(loader, params, placement)?,
            Architecture::Phi3 => phi3::load(loader, params, placement)?,
            Architecture::Gemma3 => gemma3::load(loader, params, placement)?,
        }))
    }

    /// The chat template for files of this architecture that carry none: the family's own turn format where the
    /// family has exactly one (Gemma 3's files from some converters lack it).
    fn fallback_chat_template(self) -> Option<&'static str> {
        match self {
            Architecture::Gemma3 => Some(gemma3::FALLBACK_CHAT_TEMPLATE),
            Architecture::Llama | Architecture::Qwen2 | Architecture::Qwen3 | Architecture::Phi3 => None,
        }
    }
}

/// What an architecture provides once loaded: its forward pass, and its weights for locking and checks.
pub(crate) trait Decoder: Send + Sync {
    /// Run `tokens` at positions `pos..` through the model, filling `cache`; logits for every position
    /// (`all`) or only the last, as a `(n, vocab)` f32 tensor on the CPU. Called on the kernel pool.
    fn forward(&self, cache: &mut KvCache, ropes: &RopeTables, tokens: &[u32], pos: usize, all: bool)
        -> Result<Tensor>;

    /// An instance's RoPE tables for `ctx` positions, with base `base` and linear scale `scale` on the layers of
    /// full attention (the file's, or the load config's override).
    fn rope_tables(&self, ctx: usize, base: f64, scale: f64) -> Result<RopeTables>;

    /// Every weight matrix (for page locking and the in-place check).
    fn linears(&self) -> Vec<&Linear>;

    /// The token embedding table.
    fn token_embeddings(&self) -> &TokenEmbeddings;

    /// The device of each block: the KV cache has one layer per block, on its device.
    fn block_devices(&self) -> Vec<Device>;
}
