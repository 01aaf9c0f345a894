//! The memory budget (SPEC §4): what a load needs (`MemoryEstimate`, decided from headers), whether it fits the
//! RAM the OS has, and room made in the table by evicting idle instances, least recently used first.

use std::sync::Arc;
use std::time::Instant;

use super::instance::Instance;
use super::table::InstanceTable;
use super::{lock, HostOptions};
use crate::error::{Error, Result};

/// Memory a load needs, from headers only.
#[derive(Debug, Clone, Default)]
pub struct MemoryEstimate {
    /// Weights in memory (zero when another instance already holds them).
    pub weights_bytes: u64,
    /// KV cache for the context length.
    pub kv_cache_bytes: u64,
    /// Tokenizer, RoPE tables, the working memory of a prompt chunk and other per-instance buffers.
    pub scratch_bytes: u64,
    /// Sum of the above.
    pub total_bytes: u64,
    /// Bytes per device ("cpu", "cuda:0").
    pub per_device: Vec<(String, u64)>,
}

/// Refuse a load that cannot fit in the RAM the OS says is available, before allocating: Rust aborts the
/// process when an allocation fails, so a lying context length must never reach the allocator.
pub(super) fn check_fits_in_ram(key: &str, needed: u64) -> Result<()> {
    let available = std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
        m.lines().find(|l| l.starts_with("MemAvailable:"))?.split_whitespace().nth(1)?.parse::<u64>().ok()
    });
    match available.map(|kib| kib.saturating_mul(1024)) {
        Some(free) if needed > free => {
            Err(Error::InsufficientMemory { key: key.to_string(), needed, available: free, budget: free, in_use: 0 })
        }
        _ => Ok(()),
    }
}

/// Evict idle instances, least recently used first, until `needed` more bytes and one more instance fit.
pub(super) fn make_room(
    st: &mut InstanceTable,
    opts: &HostOptions,
    key: &str,
    needed: u64,
) -> Result<Vec<Arc<Instance>>> {
    let fits = |st: &InstanceTable, without: &[usize]| {
        let count = st.instances.len() - without.len() + st.loads_in_progress;
        opts.memory_budget.is_none_or(|b| st.used_bytes(without) + needed <= b)
            && opts.max_loaded.is_none_or(|m| count < m)
    };
    let mut evict: Vec<usize> = Vec::new();
    if !fits(st, &evict) && opts.auto_evict {
        let mut idle: Vec<(Instant, usize)> = st
            .instances
            .iter()
            .enumerate()
            .filter_map(|(n, i)| {
                let a = lock(&i.activity);
                (a.in_flight == 0).then_some((a.last_used, n))
            })
            .collect();
        idle.sort();
        for (_, n) in idle {
            if fits(st, &evict) {
                break;
            }
            evict.push(n);
        }
    }
    if !fits(st, &evict) {
        let count = st.instances.len() - evict.len() + st.loads_in_progress;
        if let Some(m) = opts.max_loaded.filter(|&m| count >= m) {
            return Err(Error::TooManyLoaded { loaded: count, max_loaded: m });
        }
        let budget = opts.memory_budget.unwrap_or(u64::MAX);
        let idle: Vec<usize> = (0..st.instances.len()).filter(|n| st.instances[*n].is_idle()).collect();
        return Err(Error::InsufficientMemory {
            key: key.to_string(),
            needed,
            available: budget.saturating_sub(st.used_bytes(&if opts.auto_evict { idle } else { vec![] })),
            budget,
            in_use: st.used_bytes(&[]),
        });
    }
    evict.sort_unstable_by(|a, b| b.cmp(a));
    let victims: Vec<Arc<Instance>> = evict.into_iter().map(|n| st.instances.remove(n)).collect();
    for v in &victims {
        v.mark_unloaded("evicted to make room for another model");
    }
    Ok(victims)
}
