//! One decoder layer of the pre-norm transformers llama.cpp runs for llama, qwen2, qwen3, phi3 and gemma3:
//! `x += post_attn_norm(attention(attn_norm(x)))`, then `x += post_ffn_norm(mlp(ffn_norm(x)))`, the post-norms
//! only where the architecture has them (Gemma 3).

use candle_core::{Device, Tensor};

use super::attention::SelfAttention;
use super::kv_cache::KvCache;
use super::linear::Linear;
use super::mlp::GatedMlp;
use super::norm::RmsNorm;
use super::rope::Rope;
use crate::error::Result;

/// One decoder layer, on one device.
pub(crate) struct DecoderLayer {
    pub(crate) attn_norm: RmsNorm,
    pub(crate) attention: SelfAttention,
    /// Gemma 3's `post_attention_norm`.
    pub(crate) attn_post_norm: Option<RmsNorm>,
    pub(crate) ffn_norm: RmsNorm,
    pub(crate) mlp: GatedMlp,
    /// Gemma 3's `post_ffw_norm`.
    pub(crate) ffn_post_norm: Option<RmsNorm>,
    pub(crate) device: Device,
}

impl DecoderLayer {
    /// The layer's output for hidden states `x` (`(seq, n_embd)` at positions `pos..`, on this layer's device),
    /// writing its keys and values to layer `index` of `cache`.
    pub(crate) fn forward(
        &self,
        x: &Tensor,
        cache: &mut KvCache,
        index: usize,
        rope: &Rope,
        pos: usize,
    ) -> Result<Tensor> {
        let h = self.attn_norm.forward(x)?;
        let mut attn = self.attention.forward(&h, cache, index, rope, pos)?;
        if let Some(norm) = &self.attn_post_norm {
            attn = norm.forward(&attn)?;
        }
        let x = (x + attn)?;
        let h = self.ffn_norm.forward(&x)?;
        let mut ffn = self.mlp.forward(&h)?;
        if let Some(norm) = &self.ffn_post_norm {
            ffn = norm.forward(&ffn)?;
        }
        Ok((x + ffn)?)
    }

    /// The layer's weight matrices.
    pub(crate) fn linears(&self) -> Vec<&Linear> {
        let mut out = self.attention.qkv.linears();
        out.push(&self.attention.output);
        out.extend(self.mlp.linears());
        out
    }
}
