//! Qwen 2 / 2.5: llama's layer with NeoX-style RoPE and biases on the query, key and value projections (read by
//! the shared projection wherever the file has them); the output head is often tied to the token embeddings.

use std::path::Path;

use super::blocks::attention::Scaling;
use super::blocks::mlp::Activation;
use super::blocks::rope::RopeStyle;
use super::gguf_loader::GgufLoader;
use super::params::LlmParams;
use super::transformer::{DecoderSpec, LayerSpec, RopeSetup, Transformer};
use crate::error::Result;
use crate::formats::gguf::GgufHeader;
use crate::host::placement::Placement;

/// Qwen 2's hyper-parameters: the common decoder keys.
pub(crate) fn params(header: &GgufHeader, path: &Path) -> Result<LlmParams> {
    LlmParams::from_header(header, path)
}

/// Load a qwen2 decoder.
pub(crate) fn load(ld: &mut GgufLoader<'_, '_, '_>, p: &LlmParams, placement: &Placement) -> Result<Transformer> {
    let layer = |_| LayerSpec {
        qk_norm: false,
        post_norms: false,
        fused_gate_up: false,
        activation: Activation::Silu,
        scaling: Scaling::Scores(1.0 / (p.head_dim as f32).sqrt()),
        sliding_window: None,
    };
    let full = p.rope_config(RopeStyle::Neox);
    let rope = RopeSetup { full, long_factors: None, original_context: p.rope_original_context, sliding: None };
    let spec = DecoderSpec { embedding_scale: None, final_softcap: None, layer: &layer, rope };
    Transformer::load(ld, p, placement, spec, "qwen2")
}
