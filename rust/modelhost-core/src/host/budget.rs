//! The memory budget (SPEC §4): what a load needs (`MemoryEstimate`, decided from headers), whether it fits the
//! RAM the OS has, and room made in the table by evicting idle instances, least recently used first.

use std::collections::HashSet;
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

/// What one instance holds, as the budget sees it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Holding {
    /// The weights' identity: instances of one file share them, and they count once.
    pub(super) weights_id: usize,
    /// The weights' bytes.
    pub(super) weights_bytes: u64,
    /// The instance's own buffers: KV cache and scratch.
    pub(super) own_bytes: u64,
    /// In the table (so it counts towards `max_loaded`), as opposed to unloaded but not yet freed.
    pub(super) loaded: bool,
    /// When it was last used, if it may be evicted now: loaded and no request in flight.
    pub(super) idle_since: Option<Instant>,
}

impl Holding {
    /// What `instance` holds; `loaded` if it is in the table.
    pub(super) fn of(instance: &Instance, loaded: bool) -> Self {
        let activity = lock(&instance.activity);
        Holding {
            weights_id: instance.weights_id,
            weights_bytes: instance.memory.weights_bytes.max(instance.entry.weights_bytes),
            own_bytes: instance.memory.kv_cache_bytes + instance.memory.scratch_bytes,
            loaded,
            idle_since: (loaded && activity.in_flight == 0).then_some(activity.last_used),
        }
    }
}

/// Bytes the holdings not in `without` hold: each distinct weights once, plus every instance's own buffers.
fn held(holdings: &[Holding], without: &[usize]) -> u64 {
    let mut weights = HashSet::new();
    let mut total = 0;
    for (_, h) in holdings.iter().enumerate().filter(|(n, _)| !without.contains(n)) {
        if weights.insert(h.weights_id) {
            total += h.weights_bytes;
        }
        total += h.own_bytes;
    }
    total
}

/// Which holdings to evict (indices, least recently used first) so that `needed` more bytes and one more instance
/// fit, besides `reserved` bytes and `loading` instances of loads in progress; the error when nothing can make room.
/// Only idle loaded instances can go; one unloaded but still finishing a request holds its memory until it ends.
pub(super) fn choose_evictions(
    holdings: &[Holding],
    reserved: u64,
    loading: usize,
    opts: &HostOptions,
    key: &str,
    needed: u64,
) -> Result<Vec<usize>> {
    let loaded = holdings.iter().filter(|h| h.loaded).count() + loading;
    let fits = |without: &[usize]| {
        opts.memory_budget.is_none_or(|b| reserved + held(holdings, without) + needed <= b)
            && opts.max_loaded.is_none_or(|m| loaded - without.len() < m)
    };
    let mut idle: Vec<(Instant, usize)> =
        holdings.iter().enumerate().filter_map(|(n, h)| h.idle_since.map(|t| (t, n))).collect();
    idle.sort();
    let mut evict = Vec::new();
    if opts.auto_evict {
        for &(_, n) in &idle {
            if fits(&evict) {
                break;
            }
            evict.push(n);
        }
    }
    if fits(&evict) {
        return Ok(evict);
    }
    if let Some(m) = opts.max_loaded.filter(|&m| loaded - evict.len() >= m) {
        return Err(Error::TooManyLoaded { loaded: loaded - evict.len(), max_loaded: m });
    }
    let budget = opts.memory_budget.unwrap_or(u64::MAX);
    let evictable: Vec<usize> = if opts.auto_evict { idle.iter().map(|&(_, n)| n).collect() } else { Vec::new() };
    Err(Error::InsufficientMemory {
        key: key.to_string(),
        needed,
        available: budget.saturating_sub(reserved + held(holdings, &evictable)),
        budget,
        in_use: reserved + held(holdings, &[]),
    })
}

/// Evict idle instances, least recently used first, until `needed` more bytes and one more instance fit. Instances
/// unloaded while a request was in flight count until they are freed.
pub(super) fn make_room(
    st: &mut InstanceTable,
    opts: &HostOptions,
    key: &str,
    needed: u64,
) -> Result<Vec<Arc<Instance>>> {
    let mut holdings: Vec<Holding> = st.instances.iter().map(|i| Holding::of(i, true)).collect();
    holdings.extend(st.draining());
    let mut evict = choose_evictions(&holdings, st.reserved_bytes, st.loads_in_progress, opts, key, needed)?;
    evict.sort_unstable_by(|a, b| b.cmp(a));
    let victims: Vec<Arc<Instance>> = evict.into_iter().map(|n| st.remove(n)).collect();
    for v in &victims {
        v.mark_unloaded("evicted to make room for another model");
    }
    Ok(victims)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(memory_budget: Option<u64>, max_loaded: Option<usize>, auto_evict: bool) -> HostOptions {
        HostOptions { memory_budget, max_loaded, auto_evict }
    }

    /// A loaded instance with its own weights (id `weights`), idle since `idle` seconds after a base instant.
    fn idle(weights: usize, bytes: u64, idle: u64) -> Holding {
        let base = Instant::now();
        Holding {
            weights_id: weights,
            weights_bytes: bytes,
            own_bytes: 10,
            loaded: true,
            idle_since: Some(base + std::time::Duration::from_secs(idle)),
        }
    }

    fn busy(weights: usize, bytes: u64) -> Holding {
        Holding { idle_since: None, ..idle(weights, bytes, 0) }
    }

    #[test]
    fn a_load_that_fits_evicts_nothing() {
        let holdings = [idle(1, 100, 0), busy(2, 100)];
        assert_eq!(
            choose_evictions(&holdings, 0, 0, &opts(Some(300), None, true), "k", 80).unwrap(),
            Vec::<usize>::new()
        );
    }

    #[test]
    fn idle_instances_go_least_recently_used_first_and_only_as_many_as_needed() {
        // Last used: #0 at 5 s, #1 at 1 s, #2 at 3 s; each holds 110 bytes of a 330-byte budget.
        let holdings = [idle(1, 100, 5), idle(2, 100, 1), idle(3, 100, 3)];
        let o = opts(Some(330), None, true);
        assert_eq!(choose_evictions(&holdings, 0, 0, &o, "k", 100).unwrap(), vec![1]);
        assert_eq!(choose_evictions(&holdings, 0, 0, &o, "k", 200).unwrap(), vec![1, 2]);
        // Loads in progress hold their reservation: one more eviction.
        assert_eq!(choose_evictions(&holdings, 100, 1, &o, "k", 100).unwrap(), vec![1, 2]);
    }

    #[test]
    fn shared_weights_count_once() {
        let holdings = [idle(1, 100, 0), idle(1, 100, 1)];
        assert_eq!(held(&holdings, &[]), 100 + 10 + 10);
        // Evicting one instance of two frees only its own buffers.
        assert_eq!(choose_evictions(&holdings, 0, 0, &opts(Some(125), None, true), "k", 10).unwrap(), vec![0]);
    }

    #[test]
    fn a_busy_instance_is_never_evicted_and_the_error_has_the_numbers() {
        let holdings = [busy(1, 100), idle(2, 100, 0)];
        let err = choose_evictions(&holdings, 0, 0, &opts(Some(200), None, true), "k", 100).unwrap_err();
        match err {
            Error::InsufficientMemory { needed, available, budget, in_use, .. } => {
                assert_eq!((needed, available, budget, in_use), (100, 90, 200, 220));
            }
            other => panic!("{other:?}"),
        }
    }

    /// An instance unloaded while a request runs is out of the table but not yet freed: it still counts, cannot be
    /// evicted, and is not a loaded instance for `max_loaded`.
    #[test]
    fn an_unloaded_instance_still_finishing_a_request_counts_until_freed() {
        let draining = Holding { loaded: false, idle_since: None, ..busy(1, 100) };
        let holdings = [draining];
        let err = choose_evictions(&holdings, 0, 0, &opts(Some(150), None, true), "k", 100).unwrap_err();
        assert!(matches!(err, Error::InsufficientMemory { in_use: 110, .. }), "{err:?}");
        assert!(choose_evictions(&holdings, 0, 0, &opts(None, Some(1), true), "k", 100).unwrap().is_empty());
        assert!(choose_evictions(&[], 0, 0, &opts(Some(150), None, true), "k", 100).is_ok(), "once freed, it fits");
    }

    #[test]
    fn max_loaded_evicts_the_least_recently_used_or_refuses() {
        let holdings = [idle(1, 100, 2), idle(2, 100, 1)];
        assert_eq!(choose_evictions(&holdings, 0, 0, &opts(None, Some(2), true), "k", 1).unwrap(), vec![1]);
        let err = choose_evictions(&[busy(1, 100), busy(2, 100)], 0, 0, &opts(None, Some(2), true), "k", 1);
        assert!(matches!(err, Err(Error::TooManyLoaded { loaded: 2, max_loaded: 2 })), "{err:?}");
    }

    #[test]
    fn without_auto_evict_nothing_is_evicted() {
        let holdings = [idle(1, 100, 0)];
        let err = choose_evictions(&holdings, 0, 0, &opts(Some(150), None, false), "k", 100).unwrap_err();
        assert!(matches!(err, Error::InsufficientMemory { available: 40, .. }), "{err:?}");
    }
}
