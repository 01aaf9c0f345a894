//! The hyper-parameters every decoder-only GGUF model has (widths, heads, blocks, RoPE, context), read under
//! its architecture's key prefix. An architecture reads its own extra keys in its own file.

use std::path::Path;

use crate::error::{Error, Result};
use crate::formats::gguf::{GgufHeader, Value};

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
    /// Size of one head.
    pub head_dim: usize,
    /// RMS-norm epsilon.
    pub rms_eps: f64,
    /// RoPE base frequency from the file.
    pub rope_freq_base: f64,
    /// RoPE linear frequency scale from the file (1.0 = none).
    pub rope_freq_scale: f64,
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

impl LlmParams {
    /// Read the keys every llama.cpp-style decoder has, under the architecture's prefix, and check them against
    /// the tensors that are really there (`token_embd.weight`, `blk.N.attn_norm.weight`).
    pub fn from_header(h: &GgufHeader, path: &Path) -> Result<Self> {
        let n_embd = meta_usize(h, path, "embedding_length")?;
        let n_head = meta_usize(h, path, "attention.head_count")?;
        let n_head_kv = h.arch_get("attention.head_count_kv").and_then(Value::as_u64).map_or(n_head, |v| v as usize);
        if n_head_kv == 0 || n_head % n_head_kv != 0 || n_embd % n_head != 0 {
            return Err(Error::load(
                path,
                format!("{n_head} heads, {n_head_kv} kv heads and width {n_embd} do not fit"),
            ));
        }
        let head_dim = n_embd / n_head;
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
        let scale = match h.arch_get("rope.scaling.type").and_then(Value::as_str) {
            None | Some("none") => 1.0,
            Some("linear") => 1.0 / h.arch_get("rope.scaling.factor").and_then(Value::as_f64).unwrap_or(1.0),
            Some(other) => return Err(Error::load(path, format!("rope scaling {other:?} is not supported"))),
        };
        Ok(LlmParams {
            n_layer,
            n_embd,
            n_head,
            n_head_kv,
            head_dim,
            rms_eps: h.arch_get("attention.layer_norm_rms_epsilon").and_then(Value::as_f64).unwrap_or(1e-5),
            rope_freq_base: h.arch_get("rope.freq_base").and_then(Value::as_f64).unwrap_or(10_000.0),
            rope_freq_scale: scale,
            max_context: meta_usize(h, path, "context_length")?,
            vocab,
        })
    }

    /// Bytes a forward pass of `batch` tokens holds at its peak besides weights and KV cache, with a context of
    /// `ctx`, a feed-forward width of `n_ff` and `threads` workers: the hidden states and their converted copies
    /// (about eight of the width, six of the feed-forward width per token), each worker's attention tile, and a
    /// row of logits.
    pub fn working_bytes(&self, batch: usize, ctx: usize, n_ff: usize, threads: usize) -> u64 {
        let activations = batch as u64 * (8 * self.n_embd as u64 + 6 * n_ff as u64) * 4;
        let attention =
            threads.max(1) as u64 * crate::kernels::f16_attention::working_bytes_per_thread(ctx, self.head_dim);
        activations + attention + 2 * self.vocab as u64 * 4
    }

    /// Bytes of KV cache per token of context (f16 keys and values, every layer).
    pub fn kv_bytes_per_token(&self) -> u64 {
        [2, self.n_layer, self.n_head_kv, self.head_dim, std::mem::size_of::<half::f16>()]
            .iter()
            .fold(1u64, |acc, &x| acc.saturating_mul(x as u64))
    }
}
