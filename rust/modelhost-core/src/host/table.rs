//! The instance table: the loaded instances, identifiers and memory reserved by loads in progress, the keys
//! that are loading, and the weights that instances share.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::SystemTime;

use super::budget::Holding;
use super::catalog::ModelKind;
use super::instance::Instance;
use super::lock;
use crate::models::bert::EmbeddingModel;
use crate::models::LlmModel;

/// Instances share weights when they load the same file, unchanged (length and mtime), the same way:
/// (file, length, mtime, mmap, locked, placement). A file replaced on disk is loaded afresh.
pub(super) type WeightsKey = (PathBuf, u64, Option<SystemTime>, bool, bool, Vec<(String, String)>);

/// An instance taken out of the table (unloaded, evicted, expired) that may still be finishing a request: its
/// memory is not free until the last request lets go of it.
struct Draining {
    instance: Weak<Instance>,
    holding: Holding,
}

/// The loaded instances and what is in flight around them, under the host's one lock.
#[derive(Default)]
pub(super) struct InstanceTable {
    pub(super) instances: Vec<Arc<Instance>>,
    /// Instances out of the table whose memory may not be free yet; the budget counts them while they live.
    draining: Vec<Draining>,
    /// Model files being loaded by `model()`: later callers wait instead of loading again.
    pub(super) loading: HashSet<PathBuf>,
    pub(super) reserved_ids: HashSet<String>,
    pub(super) reserved_bytes: u64,
    pub(super) loads_in_progress: usize,
    pub(super) shared_llm: HashMap<WeightsKey, Weak<LlmModel>>,
    pub(super) shared_embedding: HashMap<WeightsKey, Weak<EmbeddingModel>>,
    /// Bumped on every change the TTL thread should notice.
    pub(super) version: u64,
    pub(super) closed: bool,
}

impl InstanceTable {
    /// The instance with this identifier.
    pub(super) fn find(&self, identifier: &str) -> Option<&Arc<Instance>> {
        self.instances.iter().find(|i| i.identifier == identifier)
    }

    /// Whether an instance has, or a load has reserved, this identifier.
    pub(super) fn id_taken(&self, id: &str) -> bool {
        self.find(id).is_some() || self.reserved_ids.contains(id)
    }

    /// Take instance `n` out of the table; the budget keeps counting it until it is freed.
    pub(super) fn remove(&mut self, n: usize) -> Arc<Instance> {
        let instance = self.instances.remove(n);
        self.draining.push(Draining { instance: Arc::downgrade(&instance), holding: Holding::of(&instance, false) });
        instance
    }

    /// Take every instance out of the table (as `remove`).
    pub(super) fn remove_all(&mut self) -> Vec<Arc<Instance>> {
        (0..self.instances.len()).rev().map(|n| self.remove(n)).collect()
    }

    /// What the instances out of the table but not yet freed hold (forgetting those that are freed).
    pub(super) fn draining(&mut self) -> Vec<Holding> {
        self.draining.retain(|d| d.instance.strong_count() > 0);
        self.draining.iter().map(|d| d.holding).collect()
    }
}

/// The most recently used instance of `kind` that satisfies `pred` (the later loaded at a tie).
pub(super) fn most_recent(
    st: &InstanceTable,
    kind: ModelKind,
    pred: impl Fn(&Instance) -> bool,
) -> Option<&Arc<Instance>> {
    st.instances
        .iter()
        .enumerate()
        .filter(|(_, i)| i.entry.kind == kind && pred(i))
        .max_by_key(|(n, i)| (lock(&i.activity).last_used, *n))
        .map(|(_, i)| i)
}
