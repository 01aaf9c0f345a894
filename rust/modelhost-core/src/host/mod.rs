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
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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
pub use instance::{Generation, InstanceHandle, LoadedBy, Prompt};

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

/// The instance table, shared by the hosts that view it, their handles and the TTL thread.
struct SharedHost {
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

/// An instance table with its TTL thread. The last host viewing it closes it: everything unloads, the thread joins.
struct TableOwner {
    shared: Arc<SharedHost>,
    ttl_thread: Mutex<Option<JoinHandle<()>>>,
}

impl TableOwner {
    fn start() -> Result<Arc<Self>> {
        let shared = Arc::new(SharedHost { table: Mutex::new(InstanceTable::default()), changed: Condvar::new() });
        let weak = Arc::downgrade(&shared);
        let handle = std::thread::Builder::new()
            .name("modelhost-ttl".into())
            .spawn(move || ttl_loop(weak))
            .map_err(|source| Error::System { what: "cannot start the TTL thread".into(), source })?;
        Ok(Arc::new(TableOwner { shared, ttl_thread: Mutex::new(Some(handle)) }))
    }

    /// The table every non-isolated host of the process views (SPEC §4: one host per process). It lives as long
    /// as the process, so an instance loaded with `no_hup` outlives the client that loaded it.
    fn process() -> Result<Arc<Self>> {
        static PROCESS_TABLE: Mutex<Option<Arc<TableOwner>>> = Mutex::new(None);
        let mut table = lock(&PROCESS_TABLE);
        if let Some(t) = table.as_ref() {
            return Ok(t.clone());
        }
        let t = TableOwner::start()?;
        *table = Some(t.clone());
        Ok(t)
    }

    /// Unload everything and stop the TTL thread. Idempotent; requests in flight finish first.
    fn close(&self) {
        let victims = {
            let mut st = lock(&self.shared.table);
            st.closed = true;
            self.shared.notify(&mut st);
            st.remove_all()
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

impl Drop for TableOwner {
    fn drop(&mut self) {
        self.close();
    }
}

/// A view on an instance table: a catalog (its own models dir), the limits its loads obey, and whom its loads
/// belong to. `Host::new` makes a private table; `Host::shared` views the process's table, which every
/// non-isolated host shares (instances, TTL thread, memory accounting).
pub struct Host {
    table: Arc<TableOwner>,
    shared: Arc<SharedHost>,
    catalog: Catalog,
    options: HostOptions,
    /// Whom this host's loads belong to unless a request says otherwise.
    owner: LoadedBy,
    /// The table is this host's alone: closing the host closes the table.
    isolated: bool,
    closed: AtomicBool,
}

/// What a load asks for.
pub struct LoadRequest<'a> {
    /// Idle seconds before eviction; `None` = never.
    pub ttl: Option<Duration>,
    /// The load config.
    pub config: LoadConfig,
    /// Progress callback.
    pub progress: Progress<'a>,
    /// Whom the instance belongs to; `None` = the host's own client.
    pub loaded_by: Option<LoadedBy>,
    /// Keep the instance when its client closes (LM Studio's `noHup`).
    pub no_hup: bool,
}

impl<'a> LoadRequest<'a> {
    /// A load owned by the host's own client, without `no_hup`.
    pub fn new(ttl: Option<Duration>, config: LoadConfig, progress: Progress<'a>) -> Self {
        LoadRequest { ttl, config, progress, loaded_by: None, no_hup: false }
    }
}

fn check_options(options: &HostOptions) -> Result<()> {
    if options.memory_budget == Some(0) || options.max_loaded == Some(0) {
        return Err(Error::InvalidConfig("memory_budget and max_loaded must be positive".into()));
    }
    Ok(())
}

impl Host {
    /// A host over `models_dir` with a private instance table (its own TTL thread and memory accounting).
    pub fn new(models_dir: PathBuf, options: HostOptions) -> Result<Self> {
        check_options(&options)?;
        Ok(Host::view(TableOwner::start()?, Catalog::new(models_dir), options, true))
    }

    /// A host over `models_dir` viewing the process's instance table, shared with every other such host.
    pub fn shared(models_dir: PathBuf, options: HostOptions) -> Result<Self> {
        check_options(&options)?;
        Ok(Host::view(TableOwner::process()?, Catalog::new(models_dir), options, false))
    }

    fn view(table: Arc<TableOwner>, catalog: Catalog, options: HostOptions, isolated: bool) -> Self {
        static NEXT_CLIENT: AtomicU64 = AtomicU64::new(1);
        let owner = LoadedBy::Client(format!("client-{}", NEXT_CLIENT.fetch_add(1, Ordering::Relaxed)));
        let shared = table.shared.clone();
        Host { table, shared, catalog, options, owner, isolated, closed: AtomicBool::new(false) }
    }

    /// The view an HTTP server uses: the same table and limits, a catalog confined to the same models dir (no
    /// absolute paths, nothing outside it; instances loaded from elsewhere are invisible), and loads that
    /// belong to the server unless a request names a client.
    pub fn server_view(&self) -> Host {
        let catalog = Catalog::confined(self.catalog.dir().to_path_buf());
        let mut view = Host::view(self.table.clone(), catalog, self.options.clone(), false);
        view.owner = LoadedBy::Server;
        view
    }

    /// The catalog.
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// The id this host's own loads are recorded under.
    pub fn client_id(&self) -> Option<&str> {
        self.owner.client_id()
    }

    fn check_open(&self) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        Ok(())
    }

    /// Whether this host may see the instance: a confined view sees only models inside its models dir.
    fn visible(&self, i: &Instance) -> bool {
        self.catalog.contains(&i.entry.path)
    }

    /// Get-or-load (SPEC §4): the most recently used loaded instance of the model `key` resolves to, else
    /// a just-in-time load (once, however many threads ask); else a loaded instance whose identifier is
    /// `key`; `key = None`: any loaded instance of `kind`.
    pub fn model(&self, kind: ModelKind, key: Option<&str>, mut req: LoadRequest<'_>) -> Result<InstanceHandle> {
        self.check_open()?;
        let Some(key) = key else {
            let st = lock(&self.shared.table);
            return most_recent(&st, kind, |i| self.visible(i))
                .map(|i| self.handle(i))
                .ok_or(Error::NoModelLoaded { kind: kind.as_str() });
        };
        let entry = match self.catalog.resolve(key) {
            Ok(entry) => entry,
            Err(e @ (Error::ModelNotFound { .. } | Error::AmbiguousKey { .. })) => {
                let st = lock(&self.shared.table);
                return match st.find(key).filter(|i| self.visible(i)) {
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
            // Keyed by file, not key: hosts over different models dirs may use one key for different files.
            if !st.loading.contains(&entry.path) {
                break;
            }
            st = self.shared.changed.wait(st).unwrap_or_else(|e| e.into_inner());
        }
        st.loading.insert(entry.path.clone());
        drop(st);
        let result = self.load(&entry, None, &mut req);
        let mut st = lock(&self.shared.table);
        st.loading.remove(&entry.path);
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
        self.check_open()?;
        let entry = self.catalog.resolve(key)?;
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
        self.check_open()?;
        let entry = self.catalog.resolve(key)?;
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
        // Not `with_path`: what the plan refuses is either the file's (already a ModelLoad error naming it) or the
        // config's (InvalidConfig, NotSupported), as `estimate` reports it.
        let plan = plan_load(entry, &req.config)?;
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
            let victims = budget::make_room(&mut st, &self.options, &entry.model_key, needed)?;
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
            loaded_by: req.loaded_by.clone().unwrap_or_else(|| self.owner.clone()),
            no_hup: req.no_hup,
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

    /// Loaded instances (of `kind`) this host sees, in load order; none once the host is closed.
    pub fn list_loaded(&self, kind: Option<ModelKind>) -> Vec<InstanceHandle> {
        if self.check_open().is_err() {
            return Vec::new();
        }
        let st = lock(&self.shared.table);
        st.instances
            .iter()
            .filter(|i| kind.is_none_or(|k| i.entry.kind == k) && self.visible(i))
            .map(|i| self.handle(i))
            .collect()
    }

    /// The loaded instance with this identifier, if this host sees one.
    pub fn instance(&self, identifier: &str) -> Option<InstanceHandle> {
        let st = lock(&self.shared.table);
        st.find(identifier).filter(|i| self.visible(i)).map(|i| self.handle(i))
    }

    /// Unload by identifier, or every instance of a model key; returns the identifiers unloaded.
    /// Unknown → `ModelNotFound`.
    pub fn unload(&self, kind: Option<ModelKind>, key_or_identifier: &str) -> Result<Vec<String>> {
        self.check_open()?;
        let victims: Vec<Arc<Instance>> = {
            let mut st = lock(&self.shared.table);
            let matches = |i: &Instance| kind.is_none_or(|k| i.entry.kind == k) && self.visible(i);
            let by_id: Vec<usize> = (0..st.instances.len())
                .filter(|&n| st.instances[n].identifier == key_or_identifier && matches(&st.instances[n]))
                .collect();
            let chosen = if by_id.is_empty() {
                match self.catalog.resolve(key_or_identifier) {
                    Ok(entry) => (0..st.instances.len())
                        .filter(|&n| st.instances[n].entry.path == entry.path && matches(&st.instances[n]))
                        .collect(),
                    Err(_) => Vec::new(),
                }
            } else {
                by_id
            };
            if chosen.is_empty() {
                let loaded = st.instances.iter().filter(|i| self.visible(i)).map(|i| i.identifier.clone());
                return Err(Error::ModelNotFound {
                    key: key_or_identifier.to_string(),
                    suggestions: loaded.take(5).collect(),
                });
            }
            let victims = chosen.into_iter().rev().map(|n| st.remove(n)).collect();
            self.shared.notify(&mut st);
            victims
        };
        for v in &victims {
            v.mark_unloaded("unloaded");
        }
        Ok(victims.iter().rev().map(|v| v.identifier.clone()).collect())
    }

    /// Unload the instances a client loaded itself, except those loaded with `no_hup`; returns their identifiers.
    /// What a client's `close()` does (the HTTP server calls it for remote clients).
    pub fn unload_client_instances(&self, client_id: &str) -> Vec<String> {
        let victims: Vec<Arc<Instance>> = {
            let mut st = lock(&self.shared.table);
            let mine: Vec<usize> = (0..st.instances.len())
                .filter(|&n| !st.instances[n].no_hup && st.instances[n].loaded_by.client_id() == Some(client_id))
                .collect();
            let victims = mine.into_iter().rev().map(|n| st.remove(n)).collect();
            self.shared.notify(&mut st);
            victims
        };
        for v in &victims {
            v.mark_unloaded("the client that loaded it was closed");
        }
        victims.iter().map(|v| v.identifier.clone()).collect()
    }

    /// Close the host; idempotent, requests in flight finish first. An isolated host unloads everything in its
    /// table and stops its TTL thread; a shared one unloads the instances it loaded itself (not those loaded
    /// with `no_hup`, by the server or by the CLI). Afterwards calls through it fail with `Closed`.
    pub fn close(&self) {
        if self.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        if self.isolated {
            self.table.close();
        } else if let Some(id) = self.owner.client_id() {
            self.unload_client_instances(id);
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
