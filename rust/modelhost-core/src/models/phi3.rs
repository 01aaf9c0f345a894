//! Phi-3 / Phi-3.5 / Phi-4-mini: a fused query/key/value matrix (`attn_qkv`), a fused gate/up matrix (`ffn_up`,
//! gate first), NeoX-style RoPE over `rope.dimension_count` values, and for the 128k-context files short and
//! long RoPE factor tables with an attention factor, the long ones used past the original context (as
//! llama.cpp's `get_rope_factors` chooses). The queries are scaled before the attention product, as in
//! llama.cpp's graph.
//!
//! Phi-3's `attention.sliding_window` is read and, as llama.cpp does (it disables Phi's sliding window), not
//! applied: every layer attends over the whole context.

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

/// Phi-3's hyper-parameters: the common decoder keys.
pub(crate) fn params(header: &GgufHeader, path: &Path) -> Result<LlmParams> {
    LlmParams::from_header(header, path)
}

/// Load a phi3 decoder.
pub(crate) fn load(ld: &mut GgufLoader<'_, '_, '_>, p: &LlmParams, placement: &Placement) -> Result<Transformer> {
    let half = p.rope_dims / 2;
    let mut full = p.rope_config(RopeStyle::Neox);
    full.factors = ld.rope_factors("rope_factors_short.weight", half)?;
    let long_factors = ld.rope_factors("rope_factors_long.weight", half)?;
    let layer = |_| LayerSpec {
        qk_norm: false,
        post_norms: false,
        fused_gate_up: true,
        activation: Activation::Silu,
        scaling: Scaling::Queries(1.0 / (p.head_dim as f32).sqrt()),
        sliding_window: None,
    };
    let rope = RopeSetup { full, long_factors, original_context: p.rope_original_context, sliding: None };
    let spec = DecoderSpec { embedding_scale: None, final_softcap: None, layer: &layer, rope };
    Transformer::load(ld, p, placement, spec, "phi3")
}
