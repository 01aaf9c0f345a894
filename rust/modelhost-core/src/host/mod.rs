//! Hosting models (SPEC §4): the catalog of a models directory and the table of loaded instances, with
//! get-or-load under single flight, weights shared between instances of one file, idle TTLs, the memory
//! budget and a FIFO request queue per instance.
//!
//! `Host` (here) is the front door: a key resolves in the `catalog`, `load::plan_load` decides the load from
//! the headers (`placement`, `budget`), `load::load_llm` (or `models::bert`) builds the model, and the
//! `instance` joins the `table`, served through `InstanceHandle`s (`queue`) until it is unloaded or its
//! `ttl` expires.

pub mod budget;
pub mod catalog;
pub mod instance;
mod load;
pub mod placement;
mod queue;
mod table;
mod ttl;

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use catalog::{Catalog, CatalogEntry, ModelKind};
use instance::{Activity, Instance, LoadedModel, ReleaseFreedMemory};
use load::{load_llm, plan_load, LoadPlan};
use queue::FifoQueue;
use table::{most_recent, InstanceTable, WeightsKey};
use ttl::ttl_loop;

use crate::config::LoadConfig;
use crate::error::{Error, Result};
use crate::models::bert::{EmbeddingLoadOptions, EmbeddingModel};
use crate::models::LlmSession;
use crate::storage::Progress;

pub use budget::MemoryEstimate;
pub use instance::{Generation, InstanceHandle, Prompt};

/// Lock a mutex of the host, poisoned or not.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere must not wedge the table: the data stays consistent under our own invariants.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Client-wide limits (SPEC §4).
#[derive(Debug, Clone, Default)]
pub struct HostOptions {
    /// Bytes all instances together may use; `None` = unlimited.
    pub memory_budget: Option<u64>,
    /// Most instances loaded at once; `None` = unlimited.
    pub max_loaded: Option<usize>,
    /// Evict idle instances (LRU) to make room, instead of failing.
    pub auto_evict: bool,
}

/// What the host shares with its handles and its TTL thread.
struct SharedHost {
    catalog: Catalog,
    options: HostOptions,
    table: Mutex<InstanceTable>,
    /// Wakes the TTL thread and `model()` callers waiting for a load.
    changed: Condvar,
}

impl SharedHost {
    /// Record a change to the table and wake its waiters.
    fn notify(&self, st: &mut InstanceTable) {
        st.version += 1;
        self.changed.notify_all();
    }
}

/// The catalog plus the instance table. Dropping it unloads everything and joins the TTL thread.
pub struct Host {
    shared: Arc<SharedHost>,
    ttl_thread: Mutex<Option<JoinHandle<()>>>,
}

/// What a load asks for.
pub struct LoadRequest<'a> {
    /// Idle seconds before eviction; `None` = never.
    pub ttl: Option<Duration>,
    /// The load config.
    pub config: LoadConfig,
    /// Progress callback.
    pub progress: Progress<'a>,
}

impl Host {
    /// A host over `models_dir`, with its TTL thread started.
    pub fn new(models_dir: PathBuf, options: HostOptions) -> Result<Self> {
        if options.memory_budget == Some(0) || options.max_loaded == Some(0) {
            return Err(Error::InvalidConfig("memory_budget and max_loaded must be positive".into()));
        }
        let shared = Arc::new(SharedHost {
            catalog: Catalog::new(models_dir),
            options,
            table: Mutex::new(InstanceTable::default()),
            changed: Condvar::new(),
        });
        let weak = Arc::downgrade(&shared);
        let handle = std::thread::Builder::new()
            .name("modelhost-ttl".into())
            .spawn(move || ttl_loop(weak))
            .map_err(|e| Error::InvalidConfig(format!("cannot start the TTL thread: {e}")))?;
        Ok(Host { shared, ttl_thread: Mutex::new(Some(handle)) })
    }

    /// The catalog.
    pub fn catalog(&self) -> &Catalog {
        &self.shared.catalog
    }

    /// Get-or-load (SPEC §4): the most recently used loaded instance of the model `key` resolves to, else
    /// a just-in-time load (once, however many threads ask); else a loaded instance whose identifier is
    /// `key`; `key = None`: any loaded instance of `kind`.
    pub fn model(&self, kind: ModelKind, key: Option<&str>, mut req: LoadRequest<'_>) -> Result<InstanceHandle> {
        let Some(key) = key else {
            let st = lock(&self.shared.table);
            return most_recent(&st, kind, |_| true)
                .map(|i| self.handle(i))
                .ok_or(Error::NoModelLoaded { kind: kind.as_str() });
        };
        let entry = match self.shared.catalog.resolve(key) {
            Ok(entry) => entry,
            Err(e @ (Error::ModelNotFound { .. } | Error::AmbiguousKey { .. })) => {
                let st = lock(&self.shared.table);
                return match st.find(key) {
                    Some(i) if i.entry.kind == kind => Ok(self.handle(i)),
                    Some(i) => Err(wrong_kind(&i.entry, kind)),
                    None => Err(e),
                };
            }
            Err(e) => return Err(e),
        };
        if entry.kind != kind {
            return Err(wrong_kind(&entry, kind));
        }
        let mut st = lock(&self.shared.table);
        loop {
            if st.closed {
                return Err(Error::Closed);
            }
            if let Some(i) = most_recent(&st, kind, |i| i.entry.path == entry.path) {
                return Ok(self.handle(i));
            }
            if !st.loading.contains(&entry.model_key) {
                break;
            }
            st = self.shared.changed.wait(st).unwrap_or_else(|e| e.into_inner());
        }
        st.loading.insert(entry.model_key.clone());
        drop(st);
        let result = self.load(&entry, None, &mut req);
        let mut st = lock(&self.shared.table);
        st.loading.remove(&entry.model_key);
        self.shared.notify(&mut st);
        result
    }

    /// Always a new instance (SPEC §4): identifier `key`, `key:2`, … unless one is given.
    pub fn load_new_instance(
        &self,
        kind: ModelKind,
        key: &str,
        identifier: Option<&str>,
        mut req: LoadRequest<'_>,
    ) -> Result<InstanceHandle> {
        let entry = self.shared.catalog.resolve(key)?;
        if entry.kind != kind {
            return Err(wrong_kind(&entry, kind));
        }
        if let Some(id) = identifier {
            if id.trim().is_empty() {
                return Err(Error::InvalidConfig("the instance identifier is empty".into()));
            }
        }
        self.load(&entry, identifier, &mut req)
    }

    /// The memory a load of `key` with `config` would need (the number the budget uses).
    pub fn estimate(&self, kind: ModelKind, key: &str, config: &LoadConfig) -> Result<MemoryEstimate> {
        let entry = self.shared.catalog.resolve(key)?;
        if entry.kind != kind {
            return Err(wrong_kind(&entry, kind));
        }
        let plan = plan_load(&entry, config)?;
        Ok(plan.estimate)
    }

    fn load(
        &self,
        entry: &CatalogEntry,
        identifier: Option<&str>,
        req: &mut LoadRequest<'_>,
    ) -> Result<InstanceHandle> {
        let plan = plan_load(entry, &req.config).map_err(|e| e.with_path(&entry.path))?;
        let stamp =
            std::fs::metadata(&entry.weights_path).map_err(|e| Error::load(&entry.weights_path, e.to_string()))?;
        let weights_key: WeightsKey = (
            entry.weights_path.clone(),
            stamp.len(),
            stamp.modified().ok(),
            req.config.try_mmap,
            req.config.keep_model_in_memory,
            plan.placement.layers.clone(),
        );

        // Reserve an identifier and the memory, evicting idle instances if the budget says so.
        let (identifier, reserved, victims) = {
            let mut st = lock(&self.shared.table);
            if st.closed {
                return Err(Error::Closed);
            }
            let identifier = match identifier {
                Some(id) if st.id_taken(id) => return Err(Error::InstanceExists { identifier: id.to_string() }),
                Some(id) => id.to_string(),
                None => (1..)
                    .map(|n| if n == 1 { entry.model_key.clone() } else { format!("{}:{n}", entry.model_key) })
                    .find(|id| !st.id_taken(id))
                    .unwrap_or_default(),
            };
            let weights_loaded = match entry.kind {
                ModelKind::Llm => st.shared_llm.get(&weights_key).is_some_and(|w| w.strong_count() > 0),
                ModelKind::Embedding => st.shared_embedding.get(&weights_key).is_some_and(|w| w.strong_count() > 0),
            };
            let mut needed = plan.estimate.total_bytes;
            if weights_loaded {
                needed -= plan.estimate.weights_bytes;
            }
            let victims = budget::make_room(&mut st, &self.shared.options, &entry.model_key, needed)?;
            st.reserved_ids.insert(identifier.clone());
            st.reserved_bytes += needed;
            st.loads_in_progress += 1;
            self.shared.notify(&mut st);
            (identifier, needed, victims)
        };
        drop(victims);

        let built =
            self.build_instance(entry, &plan, &weights_key, &identifier, req).map_err(|e| e.with_path(&entry.path));
        let mut st = lock(&self.shared.table);
        st.reserved_ids.remove(&identifier);
        st.reserved_bytes -= reserved;
        st.loads_in_progress -= 1;
        let instance = match built {
            Ok(instance) if !st.closed => instance,
            Ok(_) => return Err(Error::Closed),
            Err(e) => {
                self.shared.notify(&mut st);
                return Err(e);
            }
        };
        st.instances.push(instance.clone());
        self.shared.notify(&mut st);
        Ok(self.handle(&instance))
    }

    fn build_instance(
        &self,
        entry: &CatalogEntry,
        plan: &LoadPlan,
        weights_key: &WeightsKey,
        identifier: &str,
        req: &mut LoadRequest<'_>,
    ) -> Result<Arc<Instance>> {
        // Progress starts once the load is admitted (identifier and memory reserved).
        req.progress.start()?;
        let config = &req.config;
        let (engine, weights_id, memory) = match entry.kind {
            ModelKind::Llm => {
                let existing = lock(&self.shared.table).shared_llm.get(weights_key).and_then(Weak::upgrade);
                let model = match existing {
                    Some(m) => m,
                    None => {
                        let m = Arc::new(load_llm(entry, config, &plan.placement, &mut req.progress)?);
                        lock(&self.shared.table).shared_llm.insert(weights_key.clone(), Arc::downgrade(&m));
                        m
                    }
                };
                let rope_base = config.rope_frequency_base.unwrap_or(model.params.rope_freq_base);
                let rope_scale = config.rope_frequency_scale.unwrap_or(model.params.rope_freq_scale);
                let session =
                    LlmSession::new(&model, plan.context_length, plan.eval_batch_size, rope_base, rope_scale)?;
                let id = Arc::as_ptr(&model) as usize;
                (LoadedModel::Llm { model, session: Mutex::new(session) }, id, plan.estimate.clone())
            }
            ModelKind::Embedding => {
                let existing = lock(&self.shared.table).shared_embedding.get(weights_key).and_then(Weak::upgrade);
                let model = match existing {
                    Some(m) => m,
                    None => {
                        let opts = EmbeddingLoadOptions {
                            try_mmap: config.try_mmap,
                            context_length: Some(plan.context_length),
                        };
                        let m = Arc::new(EmbeddingModel::load(&entry.path, &opts, &mut req.progress)?);
                        lock(&self.shared.table).shared_embedding.insert(weights_key.clone(), Arc::downgrade(&m));
                        m
                    }
                };
                let id = Arc::as_ptr(&model) as usize;
                (LoadedModel::Embedding { model }, id, plan.estimate.clone())
            }
        };
        // Unique in the process, across clients: handles compare equal by it.
        static NEXT_REFERENCE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let reference = format!("{}#{}", identifier, NEXT_REFERENCE.fetch_add(1, Ordering::Relaxed));
        let instance = Arc::new(Instance {
            identifier: identifier.to_string(),
            reference,
            entry: entry.clone(),
            ttl: req.ttl,
            applied: plan.applied.clone(),
            placement: plan.placement.clone(),
            memory,
            context_length: plan.context_length,
            seed: config.seed,
            weights_id,
            activity: Mutex::new(Activity {
                in_flight: 0,
                last_used: Instant::now(),
                last_used_wall: SystemTime::now(),
                unloaded: None,
            }),
            queue: FifoQueue::default(),
            engine,
            _release: ReleaseFreedMemory,
        });
        // SPEC §4: exactly 1.0 last, just before the handle returns; a raise here still cancels.
        req.progress.finish()?;
        Ok(instance)
    }

    fn handle(&self, i: &Arc<Instance>) -> InstanceHandle {
        InstanceHandle {
            host: Arc::downgrade(&self.shared),
            instance: Arc::downgrade(i),
            identifier: i.identifier.clone(),
            model_key: i.entry.model_key.clone(),
            kind: i.entry.kind,
            reference: i.reference.clone(),
        }
    }

    /// Loaded instances (of `kind`), in load order.
    pub fn list_loaded(&self, kind: Option<ModelKind>) -> Vec<InstanceHandle> {
        let st = lock(&self.shared.table);
        st.instances.iter().filter(|i| kind.is_none_or(|k| i.entry.kind == k)).map(|i| self.handle(i)).collect()
    }

    /// Unload by identifier, or every instance of a model key. Unknown → `ModelNotFound`.
    pub fn unload(&self, kind: Option<ModelKind>, key_or_identifier: &str) -> Result<()> {
        let victims: Vec<Arc<Instance>> = {
            let mut st = lock(&self.shared.table);
            let matches_kind = |i: &Instance| kind.is_none_or(|k| i.entry.kind == k);
            let by_id: Vec<usize> = (0..st.instances.len())
                .filter(|&n| st.instances[n].identifier == key_or_identifier && matches_kind(&st.instances[n]))
                .collect();
            let chosen = if by_id.is_empty() {
                match self.shared.catalog.resolve(key_or_identifier) {
                    Ok(entry) => (0..st.instances.len())
                        .filter(|&n| st.instances[n].entry.path == entry.path && matches_kind(&st.instances[n]))
                        .collect(),
                    Err(_) => Vec::new(),
                }
            } else {
                by_id
            };
            if chosen.is_empty() {
                let loaded: Vec<String> = st.instances.iter().map(|i| i.identifier.clone()).collect();
                return Err(Error::ModelNotFound {
                    key: key_or_identifier.to_string(),
                    suggestions: loaded.into_iter().take(5).collect(),
                });
            }
            let victims = chosen.into_iter().rev().map(|n| st.instances.remove(n)).collect();
            self.shared.notify(&mut st);
            victims
        };
        for v in &victims {
            v.mark_unloaded("unloaded");
        }
        Ok(())
    }

    /// Unload everything and stop the TTL thread. Idempotent; requests in flight finish first.
    pub fn close(&self) {
        let victims = {
            let mut st = lock(&self.shared.table);
            st.closed = true;
            self.shared.notify(&mut st);
            std::mem::take(&mut st.instances)
        };
        for v in &victims {
            v.mark_unloaded("the client was closed");
        }
        drop(victims);
        if let Some(h) = lock(&self.ttl_thread).take() {
            let _ = h.join();
        }
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        self.close();
    }
}

fn wrong_kind(entry: &CatalogEntry, expected: ModelKind) -> Error {
    Error::WrongKind { key: entry.model_key.clone(), expected: expected.as_str(), actual: entry.kind.as_str() }
}
