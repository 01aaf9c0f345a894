//! The instance table: the loaded instances, identifiers and memory reserved by loads in progress, the keys
//! that are loading, and the weights that instances share.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::SystemTime;

use super::catalog::ModelKind;
use super::instance::Instance;
use super::lock;
use crate::models::bert::EmbeddingModel;
use crate::models::LlmModel;

/// Instances share weights when they load the same file, unchanged (length and mtime), the same way:
/// (file, length, mtime, mmap, locked, placement). A file replaced on disk is loaded afresh.
pub(super) type WeightsKey = (PathBuf, u64, Option<SystemTime>, bool, bool, Vec<(String, String)>);

/// The loaded instances and what is in flight around them, under the host's one lock.
#[derive(Default)]
pub(super) struct InstanceTable {
    pub(super) instances: Vec<Arc<Instance>>,
    /// Model keys being loaded by `model()`: later callers wait instead of loading again.
    pub(super) loading: HashSet<String>,
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

    /// Bytes held: distinct weights once, plus every instance's own buffers, plus loads in progress.
    pub(super) fn used_bytes(&self, without: &[usize]) -> u64 {
        let mut weights = HashSet::new();
        let mut total = self.reserved_bytes;
        for (_, i) in self.instances.iter().enumerate().filter(|(n, _)| !without.contains(n)) {
            if weights.insert(i.weights_id) {
                total += i.memory.weights_bytes.max(i.entry.weights_bytes);
            }
            total += i.memory.kv_cache_bytes + i.memory.scratch_bytes;
        }
        total
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
