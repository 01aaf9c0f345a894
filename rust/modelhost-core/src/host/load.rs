//! What a load does, in the data path's order: the plan, decided from the headers before any weight is read
//! (`plan_load`: context, placement, memory estimate, applied config), then the mapping, tensors and model
//! (`load_llm`; embedding models load through `models::bert`).

use serde_json::{json, Value};

use super::budget::{check_fits_in_ram, MemoryEstimate};
use super::catalog::{CatalogEntry, ModelKind};
use super::placement::Placement;
use crate::config::LoadConfig;
use crate::error::{Error, Result};
use crate::formats::gguf;
use crate::models::{Architecture, LlmModel};
use crate::storage::{self, FileBytes, Progress};

/// Bytes per vocabulary entry the tokenizer holds (token text, merge, lookup tables): measured on SmolLM2.
const TOKENIZER_BYTES_PER_TOKEN: u64 = 200;

/// What a load will do, decided from headers before any weight is read.
pub(super) struct LoadPlan {
    pub(super) context_length: usize,
    pub(super) eval_batch_size: usize,
    pub(super) placement: Placement,
    pub(super) estimate: MemoryEstimate,
    pub(super) applied: Value,
}

/// Decide a load from the headers only: context, batch size, placement, the memory estimate and the applied
/// config, every value checked.
pub(super) fn plan_load(entry: &CatalogEntry, config: &LoadConfig) -> Result<LoadPlan> {
    match entry.kind {
        ModelKind::Llm => {
            // Mapped under the SIGBUS guard: a file truncated while its header is read is an error, not a crash.
            let header = gguf::read_summary(&entry.path)?;
            let params = Architecture::of(&header, &entry.path)?.params(&header, &entry.path)?;
            let ctx = config.resolve_context_length(params.max_context)?;
            let eval_batch_size = config.resolve_eval_batch_size(ctx)?;
            let placement = Placement::plan(params.n_layer, &config.gpu)?;
            let weights_bytes = header.tensor_bytes();
            let kv = params.kv_bytes_per_token().saturating_mul(ctx as u64);
            let rope = (ctx * params.head_dim * std::mem::size_of::<f32>()) as u64;
            let n_ff = header
                .arch_get("feed_forward_length")
                .and_then(gguf::Value::as_u64)
                .map_or(4 * params.n_embd, |v| v as usize);
            // What a prompt chunk computes with (activations, attention tiles, logits), which the allocator keeps.
            let working = params.working_bytes(eval_batch_size.min(ctx), ctx, n_ff, rayon::current_num_threads());
            let scratch = rope + params.vocab as u64 * TOKENIZER_BYTES_PER_TOKEN + working;
            let total = weights_bytes.saturating_add(kv).saturating_add(scratch);
            check_fits_in_ram(&entry.model_key, total)?;
            let per_block = weights_bytes.saturating_add(kv) / params.n_layer as u64;
            let per_device = placement.split_bytes(per_block, total - per_block * params.n_layer as u64);
            let applied = json!({
                "context_length": ctx,
                "gpu_ratio": placement.applied_ratio,
                "main_gpu": config.gpu.main_gpu,
                "split_strategy": config.gpu.split_strategy.as_str(),
                "disabled_gpus": config.gpu.disabled_gpus,
                "try_mmap": config.try_mmap,
                "keep_model_in_memory": config.keep_model_in_memory,
                "eval_batch_size": eval_batch_size,
                "seed": config.seed,
                "rope_frequency_base": config.rope_frequency_base.unwrap_or(params.rope_freq_base),
                "rope_frequency_scale": config.rope_frequency_scale.unwrap_or(params.rope_freq_scale),
            });
            Ok(LoadPlan {
                context_length: ctx,
                eval_batch_size,
                estimate: MemoryEstimate {
                    weights_bytes,
                    kv_cache_bytes: kv,
                    scratch_bytes: scratch,
                    total_bytes: total,
                    per_device,
                },
                placement,
                applied,
            })
        }
        ModelKind::Embedding => {
            let max = entry.max_context_length.max(1);
            let ctx = config.resolve_context_length(max)?;
            // Options an embedding model would silently ignore are refused, whatever else is set (README).
            if config.rope_frequency_base.is_some() || config.rope_frequency_scale.is_some() {
                return Err(Error::NotSupported(
                    "ropeFrequencyBase and ropeFrequencyScale on embedding models (BERT has no RoPE)".into(),
                ));
            }
            if config.keep_model_in_memory {
                return Err(Error::NotSupported("keepModelInMemory on embedding models".into()));
            }
            let mut placement = Placement::cpu(0);
            if config.gpu.ratio.is_some_and(|r| r > 0.0) {
                placement.warning =
                    Some("embedding models run on the CPU in this version: gpu.ratio was ignored".to_string());
            }
            let scratch = 2 << 20;
            // With `tryMmap: false` the owned copy stays after the first request has packed the layers' matrices
            // for the AVX-512 kernels (`models::bert`; they are less than the file): count both. Mapped, the
            // packing releases the pages it read, so the file counts once.
            let packed = if !config.try_mmap && crate::models::bert::packs_layers() { entry.weights_bytes } else { 0 };
            let weights_bytes = entry.weights_bytes + packed;
            let applied = json!({
                "context_length": ctx,
                "gpu_ratio": 0.0,
                "try_mmap": config.try_mmap,
                "keep_model_in_memory": config.keep_model_in_memory,
                "seed": config.seed,
            });
            Ok(LoadPlan {
                context_length: ctx,
                eval_batch_size: ctx,
                estimate: MemoryEstimate {
                    weights_bytes,
                    kv_cache_bytes: 0,
                    scratch_bytes: scratch,
                    total_bytes: weights_bytes + scratch,
                    per_device: vec![("cpu".into(), weights_bytes + scratch)],
                },
                placement,
                applied,
            })
        }
    }
}

/// Map (or read) a GGUF, parse its header and build the model on `placement`.
pub(super) fn load_llm(
    entry: &CatalogEntry,
    config: &LoadConfig,
    placement: &Placement,
    progress: &mut Progress<'_>,
) -> Result<LlmModel> {
    // Reading the file is half the bar when it is copied into memory; mapping costs nothing.
    let (bytes, base) = if config.try_mmap {
        (FileBytes::Mapped(storage::map_shared(&entry.path)?), 0.0)
    } else {
        (storage::read_owned(&entry.path, progress, 0.5)?, 0.5)
    };
    let model = {
        let header = gguf::parse(bytes.as_slice(), &entry.path)?;
        LlmModel::load(&entry.path, &header, &bytes, placement, config.keep_model_in_memory, progress, base)
            .map_err(|e| e.with_path(&entry.path))?
    };
    // The parsed header (every token and merge as a string) is freed by now; without this glibc keeps its pages,
    // and the load's RSS exceeds the estimate by them.
    super::instance::release_freed_memory();
    Ok(model)
}
