//! Self-attention: the Q/K/V projection (`qkv`), optional per-head Q/K RMS norms, RoPE, causal grouped-query
//! attention over the KV cache with an optional sliding window, and the output projection. Rounded as llama.cpp's
//! f16 cache rounds it. On the CPU the attention itself is `kernels::f16_attention` over the f16 cache; the candle
//! version here serves the GPU placement.

use candle_core::{DType, Device, Tensor};

use super::kv_cache::KvCache;
use super::linear::Linear;
use super::norm::RmsNorm;
use super::qkv::QkvProjection;
use super::rope::Rope;
use crate::error::Result;
pub(crate) use crate::kernels::f16_attention::Heads;

/// Where the `1/√d`-style factor of an architecture's attention is applied: llama.cpp's graphs do it either way,
/// and with f16 rounding in between the two are not quite the same.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Scaling {
    /// To the scores, inside the softmax (llama.cpp's `kq_scale`: llama, qwen2, qwen3).
    Scores(f32),
    /// To the queries, before their product with the keys (Phi-3, Gemma 3).
    Queries(f32),
}

/// Round to f16 precision, keeping f32 storage.
pub(crate) fn round_f16(t: &Tensor) -> Result<Tensor> {
    Ok(t.to_dtype(DType::F16)?.to_dtype(DType::F32)?)
}

/// The additive mask of a chunk of `seq` queries at positions `pos..` over keys `0..pos + seq`: `-inf` for keys
/// after the query, and, with a sliding `window`, for keys `window` or more positions behind it (llama.cpp's
/// standard sliding window). `None` when nothing is masked.
pub(crate) fn attention_mask(seq: usize, pos: usize, window: Option<usize>) -> Result<Option<Tensor>> {
    let total = pos + seq;
    let windowed = window.is_some_and(|w| total > w);
    if seq == 1 && !windowed {
        return Ok(None);
    }
    let hidden = |i: usize, j: usize| j > pos + i || window.is_some_and(|w| pos + i - j.min(pos + i) >= w);
    let mask: Vec<f32> =
        (0..seq).flat_map(|i| (0..total).map(move |j| if hidden(i, j) { f32::NEG_INFINITY } else { 0.0 })).collect();
    Ok(Some(Tensor::from_vec(mask, (seq, total), &Device::Cpu)?))
}

/// Grouped-query attention: queries `(n_head, seq, hd)` against keys/values `(n_kv, total, hd)`, the scores
/// multiplied by `score_scale`, then masked.
pub(crate) fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    heads: Heads,
    score_scale: f32,
) -> Result<Tensor> {
    let Heads { n_head, n_kv, head_dim } = heads;
    let seq = q.dim(1)?;
    let total = k.dim(1)?;
    let group = n_head / n_kv;
    // Fold the query heads that share a kv head into the rows of one matmul.
    let q = q.reshape((n_kv, group * seq, head_dim))?;
    let mut scores = (q.matmul(&k.t()?)? * f64::from(score_scale))?;
    if let Some(mask) = mask {
        let mask = mask.to_device(q.device())?;
        scores =
            scores.reshape((n_kv, group, seq, total))?.broadcast_add(&mask)?.reshape((n_kv, group * seq, total))?;
    }
    let probs = candle_nn::ops::softmax_last_dim(&scores)?;
    let probs = round_f16(&probs)?;
    Ok(probs.matmul(v)?.reshape((n_head, seq, head_dim))?)
}

/// One layer's self-attention, from the normalized hidden states to the output projection.
pub(crate) struct SelfAttention {
    pub(crate) qkv: QkvProjection,
    /// Per-head RMS norms of the queries and keys, before RoPE (qwen3, gemma3).
    pub(crate) q_norm: Option<RmsNorm>,
    pub(crate) k_norm: Option<RmsNorm>,
    /// `attn_output`, and its bias where the file has one (llama).
    pub(crate) output: Linear,
    pub(crate) output_bias: Option<Tensor>,
    pub(crate) heads: Heads,
    pub(crate) scaling: Scaling,
    /// Keys this many positions or more behind a query are hidden from it.
    pub(crate) sliding_window: Option<usize>,
}

impl SelfAttention {
    /// Attend from the normalized hidden states `h` (`(seq, n_embd)`, positions `pos..`) over layer `layer` of the
    /// cache, which gets this chunk's keys and values.
    pub(crate) fn forward(
        &self,
        h: &Tensor,
        cache: &mut KvCache,
        layer: usize,
        rope: &Rope,
        pos: usize,
    ) -> Result<Tensor> {
        let Heads { n_head, n_kv, head_dim } = self.heads;
        let seq = h.dim(0)?;
        let (q, k, v) = self.qkv.forward(h)?;
        let mut q = q.reshape((seq, n_head, head_dim))?;
        let mut k = k.reshape((seq, n_kv, head_dim))?;
        if let Some(norm) = &self.q_norm {
            q = norm.forward(&q)?;
        }
        if let Some(norm) = &self.k_norm {
            k = norm.forward(&k)?;
        }
        let q = rope.apply(&q.unsqueeze(0)?.transpose(1, 2)?, pos)?.squeeze(0)?;
        let k = rope.apply(&k.unsqueeze(0)?.transpose(1, 2)?, pos)?.squeeze(0)?;
        let v = v.reshape((seq, n_kv, head_dim))?.transpose(0, 1)?.contiguous()?;
        let (q, score_scale) = match self.scaling {
            Scaling::Scores(s) => (q, s),
            Scaling::Queries(s) => ((q * f64::from(s))?, 1.0),
        };
        let attn = cache.attend(layer, &q, &k, &v, pos, score_scale, self.sliding_window)?;
        add_bias(self.output.forward(&attn)?, self.output_bias.as_ref())
    }
}

/// `x + bias` (broadcast over the rows), or `x` without one.
pub(crate) fn add_bias(x: Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    Ok(match bias {
        Some(b) => x.broadcast_add(b)?,
        None => x,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hidden(mask: &Tensor) -> Vec<Vec<bool>> {
        mask.to_vec2::<f32>().unwrap().into_iter().map(|row| row.into_iter().map(f32::is_infinite).collect()).collect()
    }

    #[test]
    fn masks_are_causal_and_slide() {
        assert!(attention_mask(1, 5, None).unwrap().is_none());
        assert!(attention_mask(1, 2, Some(3)).unwrap().is_none());
        // Three queries at 1..4 over keys 0..4: causal.
        let m = hidden(&attention_mask(3, 1, None).unwrap().unwrap());
        assert_eq!(m[0], [false, false, true, true]);
        assert_eq!(m[2], [false, false, false, false]);
        // A window of 2: a query sees itself and the one key before it.
        let m = hidden(&attention_mask(3, 1, Some(2)).unwrap().unwrap());
        assert_eq!(m[0], [false, false, true, true]);
        assert_eq!(m[1], [true, false, false, true]);
        assert_eq!(m[2], [true, true, false, false]);
        // One query past the window still needs a mask.
        let m = hidden(&attention_mask(1, 4, Some(2)).unwrap().unwrap());
        assert_eq!(m[0], [true, true, true, false, false]);
    }
}
