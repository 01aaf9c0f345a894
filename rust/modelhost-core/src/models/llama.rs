//! Llama (and what ships as llama: Llama 2/3, Mistral 7B, SmolLM2): pre-norm layers of grouped-query attention
//! with interleaved RoPE and a SwiGLU MLP, RMS norms, an output head that may be tied to the token embeddings.
//! Llama 3.1+ files carry `rope_freqs.weight`, the "llama3" RoPE scaling baked into per-frequency divisors;
//! files with `rope.scaling.type = longrope` carry short and long factor tables instead (as llama.cpp reads them).
//! Tensor names are llama.cpp's (`blk.N.attn_q.weight`, …).

use std::path::Path;

use super::blocks::attention::Scaling;
use super::blocks::mlp::Activation;
use super::blocks::rope::RopeStyle;
use super::gguf_loader::GgufLoader;
use super::params::{LlmParams, RopeScaling};
use super::transformer::{DecoderSpec, LayerSpec, RopeSetup, Transformer};
use crate::error::{Error, Result};
use crate::formats::gguf::GgufHeader;
use crate::host::placement::Placement;

/// Llama's hyper-parameters: the common decoder keys. llama.cpp requires a RoPE over the whole head.
pub(crate) fn params(header: &GgufHeader, path: &Path) -> Result<LlmParams> {
    let p = LlmParams::from_header(header, path)?;
    if p.rope_dims != p.head_dim {
        return Err(Error::load(
            path,
            format!("rope.dimension_count {} is not the head size {}", p.rope_dims, p.head_dim),
        ));
    }
    Ok(p)
}

/// Load a llama decoder.
pub(crate) fn load(ld: &mut GgufLoader<'_, '_, '_>, p: &LlmParams, placement: &Placement) -> Result<Transformer> {
    let half = p.rope_dims / 2;
    let mut full = p.rope_config(RopeStyle::Interleaved);
    let mut long_factors = None;
    if p.rope_scaling == RopeScaling::LongRope {
        full.factors = ld.rope_factors("rope_factors_short.weight", half)?;
        long_factors = ld.rope_factors("rope_factors_long.weight", half)?;
    } else {
        full.factors = ld.rope_factors("rope_freqs.weight", half)?;
    }
    let layer = |_| LayerSpec {
        qk_norm: false,
        post_norms: false,
        fused_gate_up: false,
        activation: Activation::Silu,
        scaling: Scaling::Scores(1.0 / (p.head_dim as f32).sqrt()),
        sliding_window: None,
    };
    let rope = RopeSetup { full, long_factors, original_context: p.rope_original_context, sliding: None };
    let spec = DecoderSpec { embedding_scale: None, final_softcap: None, layer: &layer, rope };
    Transformer::load(ld, p, placement, spec, "llama")
}
