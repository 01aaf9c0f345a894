//! The hyper-parameters every decoder-only GGUF model has (widths, heads, blocks, RoPE, context), read under
//! its architecture's key prefix as llama.cpp's `load_hparams` reads them. An architecture reads its own extra
//! keys in its own file.
//!
//! A key that llama.cpp honours and that would change the computation is either handled here or refused with a
//! load error naming it: a file must never load and then compute something else than llama.cpp would.

use std::path::Path;

use super::blocks::rope::{RopeConfig, RopeStyle};
use crate::error::{Error, Result};
use crate::formats::gguf::{GgufHeader, Value};

/// How the file scales RoPE positions (`rope.scaling.type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeScaling {
    /// No scaling (`none`): the frequency scale is 1 whatever the factor says.
    None,
    /// Positions divided by `rope.scaling.factor` (`linear`, llama.cpp's default when the type is absent).
    Linear,
    /// Phi-3's long-context frequency factors (`longrope`).
    LongRope,
}

/// Hyper-parameters of a decoder-only model, from the GGUF metadata (llama.cpp's `<arch>.*` keys).
#[derive(Debug, Clone)]
pub struct LlmParams {
    /// Transformer blocks.
    pub n_layer: usize,
    /// Hidden size.
    pub n_embd: usize,
    /// Query heads.
    pub n_head: usize,
    /// Key/value heads (grouped-query attention).
    pub n_head_kv: usize,
    /// Size of one head (`attention.key_length`, else hidden size / heads).
    pub head_dim: usize,
    /// RMS-norm epsilon.
    pub rms_eps: f64,
    /// RoPE base frequency from the file.
    pub rope_freq_base: f64,
    /// RoPE linear frequency scale from the file (1.0 = none).
    pub rope_freq_scale: f64,
    /// How the file scales RoPE.
    pub rope_scaling: RopeScaling,
    /// Values of each head that RoPE rotates (`rope.dimension_count`, else the head size).
    pub rope_dims: usize,
    /// Multiplies RoPE's cos and sin (`rope.scaling.attn_factor`, else 1).
    pub rope_attn_factor: f32,
    /// The context the model was trained at before any extension (`rope.scaling.original_context_length`, else
    /// the context length): past it, Phi-3 switches to its long RoPE factors.
    pub rope_original_context: usize,
    /// Trained context length.
    pub max_context: usize,
    /// Vocabulary size (rows of the output head).
    pub vocab: usize,
}

fn meta_usize(h: &GgufHeader, path: &Path, suffix: &str) -> Result<usize> {
    h.arch_get(suffix)
        .and_then(Value::as_u64)
        .and_then(|v| usize::try_from(v).ok())
        .filter(|&v| v > 0)
        .ok_or_else(|| Error::load(path, format!("metadata <arch>.{suffix} is missing or not a positive integer")))
}

/// An optional positive integer key: absent is `None`, anything but a positive integer is a load error (a
/// per-layer array, which llama.cpp would honour, must not be silently replaced by a default).
pub(crate) fn optional_usize(h: &GgufHeader, path: &Path, suffix: &str) -> Result<Option<usize>> {
    match h.arch_get(suffix) {
        None => Ok(None),
        Some(v) => v
            .as_u64()
            .and_then(|v| usize::try_from(v).ok())
            .filter(|&v| v > 0)
            .map(Some)
            .ok_or_else(|| Error::load(path, format!("metadata <arch>.{suffix} is {v:?}, not a positive integer"))),
    }
}

/// An optional number key: absent is `None`, anything but a number is a load error.
pub(crate) fn optional_f64(h: &GgufHeader, path: &Path, suffix: &str) -> Result<Option<f64>> {
    match h.arch_get(suffix) {
        None => Ok(None),
        Some(v) => v
            .as_f64()
            .filter(|x| x.is_finite())
            .map(Some)
            .ok_or_else(|| Error::load(path, format!("metadata <arch>.{suffix} is {v:?}, not a number"))),
    }
}

/// A load error for a feature this build does not run.
pub(crate) fn unsupported(path: &Path, what: impl std::fmt::Display) -> Error {
    Error::load(path, format!("{what} is not supported"))
}

impl LlmParams {
    /// Read the keys every llama.cpp-style decoder has, under the architecture's prefix, and check them against
    /// the tensors that are really there (`token_embd.weight`, `blk.N.attn_norm.weight`). Keys that select what
    /// this build does not run (mixture of experts, YaRN, non-causal attention, …) are load errors.
    pub fn from_header(h: &GgufHeader, path: &Path) -> Result<Self> {
        let n_embd = meta_usize(h, path, "embedding_length")?;
        let n_head = meta_usize(h, path, "attention.head_count")?;
        let n_head_kv = optional_usize(h, path, "attention.head_count_kv")?.unwrap_or(n_head);
        if n_head % n_head_kv != 0 {
            return Err(Error::load(path, format!("{n_head} heads are not a multiple of {n_head_kv} kv heads")));
        }
        let head_dim = match optional_usize(h, path, "attention.key_length")? {
            Some(d) => d,
            None if n_embd % n_head == 0 => n_embd / n_head,
            None => return Err(Error::load(path, format!("{n_head} heads and width {n_embd} do not fit"))),
        };
        let value_dim = optional_usize(h, path, "attention.value_length")?.unwrap_or(n_embd / n_head);
        if value_dim != head_dim {
            return Err(unsupported(path, format!("a value head size ({value_dim}) unlike the key's ({head_dim})")));
        }
        if head_dim % 2 != 0 {
            return Err(Error::load(path, format!("head size {head_dim} is odd")));
        }
        let embd =
            h.tensor("token_embd.weight").ok_or_else(|| Error::load(path, "tensor token_embd.weight is missing"))?;
        let vocab = embd.dims.get(1).copied().unwrap_or(0);
        // The metadata must agree with the tensors that are really there: a lying block count or width
        // would otherwise size plans and caches from a number nothing backs.
        if embd.dims[0] != n_embd {
            return Err(Error::load(
                path,
                format!("embedding_length {n_embd} does not match token_embd.weight's width {}", embd.dims[0]),
            ));
        }
        let n_layer = meta_usize(h, path, "block_count")?;
        let blocks_present = (0..).take_while(|i| h.tensor(&format!("blk.{i}.attn_norm.weight")).is_some()).count();
        if n_layer != blocks_present {
            return Err(Error::load(path, format!("block_count {n_layer} but the file has {blocks_present} blocks")));
        }
        refuse_unsupported_features(h, path)?;
        let max_context = meta_usize(h, path, "context_length")?;
        let rope_scaling = match h.arch_get("rope.scaling.type") {
            None => RopeScaling::Linear,
            Some(v) => match v.as_str() {
                Some("none") => RopeScaling::None,
                Some("linear") => RopeScaling::Linear,
                Some("longrope") => RopeScaling::LongRope,
                Some(other) => return Err(unsupported(path, format!("RoPE scaling {other:?}"))),
                None => return Err(Error::load(path, format!("metadata <arch>.rope.scaling.type is {v:?}"))),
            },
        };
        // As llama.cpp: the factor (or its old name) gives the scale whatever the type, except "none".
        let factor = match optional_f64(h, path, "rope.scaling.factor")? {
            Some(f) => Some(f),
            None => optional_f64(h, path, "rope.scale_linear")?,
        };
        let rope_freq_scale = match (rope_scaling, factor) {
            (RopeScaling::None, _) | (_, None) => 1.0,
            (_, Some(0.0)) => 1.0,
            (_, Some(f)) if f > 0.0 => 1.0 / f,
            (_, Some(f)) => return Err(Error::load(path, format!("rope.scaling.factor {f} is negative"))),
        };
        let rope_dims = optional_usize(h, path, "rope.dimension_count")?.unwrap_or(head_dim);
        if rope_dims > head_dim || rope_dims % 2 != 0 {
            return Err(Error::load(
                path,
                format!("rope.dimension_count {rope_dims} does not fit head size {head_dim}"),
            ));
        }
        Ok(LlmParams {
            n_layer,
            n_embd,
            n_head,
            n_head_kv,
            head_dim,
            rms_eps: optional_f64(h, path, "attention.layer_norm_rms_epsilon")?.unwrap_or(1e-5),
            rope_freq_base: optional_f64(h, path, "rope.freq_base")?.unwrap_or(10_000.0),
            rope_freq_scale,
            rope_scaling,
            rope_dims,
            rope_attn_factor: optional_f64(h, path, "rope.scaling.attn_factor")?.unwrap_or(1.0) as f32,
            rope_original_context: optional_usize(h, path, "rope.scaling.original_context_length")?
                .unwrap_or(max_context),
            max_context,
            vocab,
        })
    }

    /// Bytes a forward pass of `batch` tokens holds at its peak besides weights and KV cache, with a context of
    /// `ctx`, a feed-forward width of `n_ff` and `threads` workers: the hidden states and their converted copies
    /// (about six of the width per token: residual, normed input and its converted copies, attention output; and
    /// four of the feed-forward width: gate, up, their product and its converted copy), each worker's attention tile, and a
    /// row of logits.
    pub fn working_bytes(&self, batch: usize, ctx: usize, n_ff: usize, threads: usize) -> u64 {
        let activations = batch as u64 * (6 * self.n_embd as u64 + 4 * n_ff as u64) * 4;
        let attention =
            threads.max(1) as u64 * crate::kernels::f16_attention::working_bytes_per_thread(ctx, self.head_dim);
        activations + attention + 2 * self.vocab as u64 * 4
    }

    /// The RoPE of the full-attention layers as the file describes it (base and scale before any override),
    /// rotating in `style`, without frequency factors.
    pub(crate) fn rope_config(&self, style: RopeStyle) -> RopeConfig {
        RopeConfig {
            style,
            dims: self.rope_dims,
            base: self.rope_freq_base,
            scale: self.rope_freq_scale,
            attn_factor: self.rope_attn_factor,
            factors: None,
        }
    }

    /// Bytes of KV cache per token of context (f16 keys and values, every layer).
    pub fn kv_bytes_per_token(&self) -> u64 {
        [2, self.n_layer, self.n_head_kv, self.head_dim, std::mem::size_of::<half::f16>()]
            .iter()
            .fold(1u64, |acc, &x| acc.saturating_mul(x as u64))
    }
}

/// Keys llama.cpp reads for every architecture that select something no architecture here runs.
fn refuse_unsupported_features(h: &GgufHeader, path: &Path) -> Result<()> {
    if let Some(n) = h.arch_get("expert_count").and_then(Value::as_u64).filter(|&n| n > 0) {
        return Err(unsupported(path, format!("mixture of experts ({n} experts)")));
    }
    if h.arch_get("attention.causal").and_then(Value::as_bool) == Some(false) {
        return Err(unsupported(path, "non-causal attention (attention.causal = false)"));
    }
    if let Some(n) = h.arch_get("nextn_predict_layers").and_then(Value::as_u64).filter(|&n| n > 0) {
        return Err(unsupported(path, format!("multi-token prediction layers ({n})")));
    }
    for key in ["attention.key_length_swa", "attention.value_length_swa", "rope.dimension_count_swa"] {
        if h.arch_get(key).is_some() {
            return Err(unsupported(path, format!("metadata <arch>.{key}")));
        }
    }
    Ok(())
}
