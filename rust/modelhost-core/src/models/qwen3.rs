//! Qwen 3 (dense): Qwen 2's layer without the projection biases, with per-head RMS norms of the queries and keys
//! before RoPE, and a head size (`attention.key_length`) that need not be the hidden size over the heads.

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

/// Qwen 3's hyper-parameters: the common decoder keys (the head size comes from `attention.key_length`).
pub(crate) fn params(header: &GgufHeader, path: &Path) -> Result<LlmParams> {
    LlmParams::from_header(header, path)
}

/// Load a qwen3 decoder.
pub(crate) fn load(ld: &mut GgufLoader<'_, '_, '_>, p: &LlmParams, placement: &Placement) -> Result<Transformer> {
    let layer = |_| LayerSpec {
        qk_norm: true,
        post_norms: false,
        fused_gate_up: false,
        activation: Activation::Silu,
        scaling: Scaling::Scores(1.0 / (p.head_dim as f32).sqrt()),
        sliding_window: None,
    };
    let full = p.rope_config(RopeStyle::Neox);
    let rope = RopeSetup { full, long_factors: None, original_context: p.rope_original_context, sliding: None };
    let spec = DecoderSpec { embedding_scale: None, final_softcap: None, layer: &layer, rope };
    Transformer::load(ld, p, placement, spec, "qwen3")
}
