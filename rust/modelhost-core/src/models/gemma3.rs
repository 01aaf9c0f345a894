//! Gemma 3 (text): token embeddings scaled by √n_embd; layers with per-head Q/K RMS norms, NeoX-style RoPE,
//! queries scaled by `1/√head_dim` before the product, RMS norms after the attention and the feed-forward
//! outputs as well as before them, and a GeGLU MLP (tanh GELU); the output head tied to the embeddings.
//! Layers alternate between a sliding window (`attention.sliding_window`) with a RoPE base of their own
//! (`rope.freq_base_swa`, 10 000 by default) and full attention, in the pattern `attention.sliding_window_pattern`
//! gives (per-layer flags or a period; by default five sliding layers, then one full). The norm weights are
//! stored with Gemma's `1 +` already added by llama.cpp's converter, so the norms are plain RMS norms.

use std::path::Path;

use super::blocks::attention::Scaling;
use super::blocks::mlp::Activation;
use super::blocks::rope::{RopeConfig, RopeStyle};
use super::gguf_loader::GgufLoader;
use super::params::{optional_f64, optional_usize, LlmParams};
use super::transformer::{DecoderSpec, LayerSpec, RopeSetup, Transformer};
use crate::error::{Error, Result};
use crate::formats::gguf::{GgufHeader, Value};
use crate::host::placement::Placement;

/// Sliding-window layers by default: all but every sixth (llama.cpp's `load_swa_pattern(ml, 6)`).
const DEFAULT_SWA_PERIOD: u64 = 6;
/// llama.cpp's default RoPE base of the sliding-window layers (`rope_freq_base_train_swa`).
const DEFAULT_SWA_ROPE_BASE: f64 = 10_000.0;
/// Gemma 3 27B (the model llama.cpp recognises by its 62 layers) scales queries by `1/√(n_embd/n_head)`.
const LAYERS_OF_27B: usize = 62;

/// The chat template for Gemma 3 files that carry none: Gemma's turn format exactly as llama.cpp's built-in
/// "gemma" template writes it (system messages, trimmed, open the next user turn, followed by a blank line;
/// "assistant" is "model"; every message trimmed).
pub(crate) const FALLBACK_CHAT_TEMPLATE: &str = concat!(
    "{%- set ns = namespace(system='') -%}",
    "{%- for message in messages -%}",
    "{%- if message['role'] == 'system' -%}",
    "{%- set ns.system = ns.system + message['content'] | trim -%}",
    "{%- else -%}",
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}",
    "{{- '<start_of_turn>' + role + '\\n' -}}",
    "{%- if ns.system and role != 'model' -%}{{- ns.system + '\\n\\n' -}}{%- set ns.system = '' -%}{%- endif -%}",
    "{{- message['content'] | trim + '<end_of_turn>\\n' -}}",
    "{%- endif -%}",
    "{%- endfor -%}",
    "{%- if add_generation_prompt -%}{{- '<start_of_turn>model\\n' -}}{%- endif -%}",
);

/// Gemma 3's own keys besides the common ones.
struct Gemma3Keys {
    /// The window of the sliding layers; `None`: every layer attends fully.
    sliding_window: Option<usize>,
    swa_rope_base: f64,
    final_softcap: Option<f32>,
}

fn keys(h: &GgufHeader, path: &Path) -> Result<Gemma3Keys> {
    let final_softcap = optional_f64(h, path, "final_logit_softcapping")?.filter(|&c| c != 0.0).map(|c| c as f32);
    if final_softcap.is_some_and(|c| c < 0.0) {
        return Err(Error::load(path, "final_logit_softcapping is negative"));
    }
    if h.arch_get("attn_logit_softcapping").and_then(Value::as_f64).is_some_and(|c| c != 0.0) {
        return Err(Error::load(
            path,
            "attn_logit_softcapping is set, which Gemma 3 does not have (llama.cpp ignores it)",
        ));
    }
    Ok(Gemma3Keys {
        sliding_window: optional_usize(h, path, "attention.sliding_window")?,
        swa_rope_base: optional_f64(h, path, "rope.freq_base_swa")?.unwrap_or(DEFAULT_SWA_ROPE_BASE),
        final_softcap,
    })
}

/// Which layers slide: `attention.sliding_window_pattern` as per-layer flags, or a period `n` (layer `i` slides
/// unless `i % n == n - 1`; 0: all slide), else the default period.
fn sliding_layers(h: &GgufHeader, path: &Path, n_layer: usize) -> Result<Vec<bool>> {
    let period = match h.arch_get("attention.sliding_window_pattern") {
        None => DEFAULT_SWA_PERIOD,
        Some(Value::Array(flags)) => {
            if flags.len() != n_layer {
                return Err(Error::load(
                    path,
                    format!("attention.sliding_window_pattern has {} entries for {n_layer} layers", flags.len()),
                ));
            }
            return flags
                .iter()
                .map(|f| {
                    f.as_bool().ok_or_else(|| {
                        Error::load(path, format!("attention.sliding_window_pattern holds {f:?}, not a bool"))
                    })
                })
                .collect();
        }
        Some(v) => v.as_u64().ok_or_else(|| {
            Error::load(path, format!("metadata <arch>.attention.sliding_window_pattern is {v:?}, not an integer"))
        })?,
    };
    Ok((0..n_layer as u64).map(|i| period == 0 || i % period < period - 1).collect())
}

/// Gemma 3's hyper-parameters: the common decoder keys, its own checked too.
pub(crate) fn params(header: &GgufHeader, path: &Path) -> Result<LlmParams> {
    let p = LlmParams::from_header(header, path)?;
    keys(header, path)?;
    // The catalog and the plan read summaries, whose arrays come back empty: the flags are checked at load.
    if !matches!(header.arch_get("attention.sliding_window_pattern"), Some(Value::Array(_))) {
        sliding_layers(header, path, p.n_layer)?;
    }
    Ok(p)
}

/// Load a gemma3 decoder.
pub(crate) fn load(ld: &mut GgufLoader<'_, '_, '_>, p: &LlmParams, placement: &Placement) -> Result<Transformer> {
    let (h, path) = (ld.header(), ld.path());
    let own = keys(h, path)?;
    let sliding = match own.sliding_window {
        Some(_) => sliding_layers(h, path, p.n_layer)?,
        None => vec![false; p.n_layer],
    };
    let query_scale = if p.n_layer == LAYERS_OF_27B {
        1.0 / ((p.n_embd / p.n_head) as f32).sqrt()
    } else {
        1.0 / (p.head_dim as f32).sqrt()
    };
    let layer = |i: usize| LayerSpec {
        qk_norm: true,
        post_norms: true,
        fused_gate_up: false,
        activation: Activation::GeluTanh,
        scaling: Scaling::Queries(query_scale),
        sliding_window: if sliding[i] { own.sliding_window } else { None },
    };
    let full = p.rope_config(RopeStyle::Neox);
    let sliding_rope = own.sliding_window.map(|_| RopeConfig { base: own.swa_rope_base, scale: 1.0, ..full.clone() });
    let rope = RopeSetup { full, long_factors: None, original_context: p.rope_original_context, sliding: sliding_rope };
    let spec = DecoderSpec {
        embedding_scale: Some((p.n_embd as f32).sqrt()),
        final_softcap: own.final_softcap,
        layer: &layer,
        rope,
    };
    Transformer::load(ld, p, placement, spec, "gemma3")
}
