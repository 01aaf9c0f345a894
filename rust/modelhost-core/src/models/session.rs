//! Per-instance inference state: the KV cache, the RoPE tables (for the instance's context, base and scale;
//! shared with the file's other instances that use the same) and which tokens the cache holds. Instances of
//! one file share the `LlmModel`; each has its own session.

use std::sync::Arc;

use super::blocks::kv_cache::KvCache;
use super::blocks::rope::RopeTables;
use super::llm::LlmModel;
use crate::error::{Error, Result};
use crate::kernels::f16_attention::Heads;

/// Per-instance inference state: the KV cache and which tokens it holds.
pub struct LlmSession {
    pub(super) cache: KvCache,
    pub(super) ropes: Arc<RopeTables>,
    /// The tokens whose keys and values the cache holds, in order.
    pub(super) cached: Vec<u32>,
    /// Tokens of context.
    pub context_length: usize,
    /// Prompt chunk size.
    pub eval_batch_size: usize,
}

impl LlmSession {
    /// Reserve the whole KV cache up front; its pages become resident as the context fills.
    pub fn new(
        model: &LlmModel,
        context_length: usize,
        eval_batch_size: usize,
        rope_base: f64,
        rope_scale: f64,
    ) -> Result<Self> {
        let p = &model.params;
        let devices = model.block_devices();
        Ok(LlmSession {
            cache: KvCache::new(
                &devices,
                Heads { n_head: p.n_head, n_kv: p.n_head_kv, head_dim: p.head_dim },
                context_length,
            )?,
            ropes: model.rope_tables(context_length, rope_base, rope_scale)?,
            cached: Vec::new(),
            context_length,
            eval_batch_size: eval_batch_size.max(1),
        })
    }

    /// `ContextLengthExceeded` unless `n` tokens fit the context.
    pub(super) fn check_fits(&self, n: usize) -> Result<()> {
        if n > self.context_length {
            return Err(Error::ContextLengthExceeded { tokens: n, context_length: self.context_length });
        }
        Ok(())
    }
}
