//! The instance table: identifiers, get-or-load with single flight, shared weights, TTL eviction on a
//! background thread, the memory budget, and the per-instance FIFO request queue (SPEC §4).

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use serde_json::{json, Value};

use crate::catalog::{Catalog, CatalogEntry, ModelKind};
use crate::config::{self, LoadConfig};
use crate::error::{Error, Result};
use crate::formats::gguf;
use crate::models::bert::{EmbeddingLoadOptions, EmbeddingModel};
use crate::models::{Architecture, Fragment, GenerationState, LlmModel, LlmSession, PredictionStats};
use crate::placement::Placement;
use crate::storage::{self, FileBytes, Progress};
use crate::text::ChatMessage;

/// How long the TTL thread sleeps when no instance has a deadline.
const TTL_IDLE_WAIT: Duration = Duration::from_secs(60);
/// Bytes per vocabulary entry the tokenizer holds (token text, merge, lookup tables): measured on SmolLM2.
const TOKENIZER_BYTES_PER_TOKEN: u64 = 200;

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

/// Memory a load needs, from headers only.
#[derive(Debug, Clone, Default)]
pub struct MemoryEstimate {
    /// Weights in memory (zero when another instance already holds them).
    pub weights_bytes: u64,
    /// KV cache for the context length.
    pub kv_cache_bytes: u64,
    /// Tokenizer, RoPE tables and other per-instance buffers.
    pub scratch_bytes: u64,
    /// Sum of the above.
    pub total_bytes: u64,
    /// Bytes per device ("cpu", "cuda:0").
    pub per_device: Vec<(String, u64)>,
}

/// A FIFO lock: requests to one instance run one at a time, in arrival order.
#[derive(Default)]
struct FifoQueue {
    tickets: Mutex<(u64, u64)>,
    turn: Condvar,
}

impl FifoQueue {
    fn wait_turn(&self) -> u64 {
        let mut t = lock(&self.tickets);
        let mine = t.0;
        t.0 += 1;
        while t.1 != mine {
            t = self.turn.wait(t).unwrap_or_else(|e| e.into_inner());
        }
        mine
    }

    fn done(&self) {
        lock(&self.tickets).1 += 1;
        self.turn.notify_all();
    }
}

struct Activity {
    in_flight: usize,
    last_used: Instant,
    last_used_wall: SystemTime,
    /// Set once the instance leaves the table; new requests are refused with this reason.
    unloaded: Option<String>,
}

enum Engine {
    Llm { model: Arc<LlmModel>, session: Mutex<LlmSession> },
    Embedding { model: Arc<EmbeddingModel> },
}

/// One loaded instance. Only the table (and requests in flight) hold it strongly.
pub struct Instance {
    identifier: String,
    reference: String,
    entry: CatalogEntry,
    ttl: Option<Duration>,
    applied: Value,
    placement: Placement,
    memory: MemoryEstimate,
    context_length: usize,
    seed: Option<u64>,
    weights_id: usize,
    activity: Mutex<Activity>,
    queue: FifoQueue,
    engine: Engine,
    /// Declared last, so it drops after the model: see `ReleaseFreedMemory`.
    _release: ReleaseFreedMemory,
}

/// Hands freed heap pages back to the kernel when an instance goes. glibc keeps freed memory in its
/// arenas, one per thread that allocated it; inference runs on the rayon workers, so without this an
/// unloaded model's activation buffers (tens of MB) would stay in the process's RSS.
struct ReleaseFreedMemory;

impl Drop for ReleaseFreedMemory {
    fn drop(&mut self) {
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: malloc_trim only returns free pages of the allocator's arenas to the kernel.
        unsafe {
            libc::malloc_trim(0);
        }
    }
}

impl Instance {
    fn mark_unloaded(&self, reason: &str) {
        let mut a = lock(&self.activity);
        a.unloaded.get_or_insert_with(|| reason.to_string());
    }

    fn is_idle(&self) -> bool {
        lock(&self.activity).in_flight == 0
    }
}

/// Instances share weights when they load the same file, unchanged (length and mtime), the same way:
/// (file, length, mtime, mmap, locked, placement). A file replaced on disk is loaded afresh.
type SharedKey = (PathBuf, u64, Option<SystemTime>, bool, bool, Vec<(String, String)>);

#[derive(Default)]
struct State {
    instances: Vec<Arc<Instance>>,
    /// Model keys being loaded by `model()`: later callers wait instead of loading again.
    loading: HashSet<String>,
    reserved_ids: HashSet<String>,
    reserved_bytes: u64,
    loads_in_progress: usize,
    shared_llm: HashMap<SharedKey, Weak<LlmModel>>,
    shared_embedding: HashMap<SharedKey, Weak<EmbeddingModel>>,
    /// Bumped on every change the TTL thread should notice.
    version: u64,
    closed: bool,
}

impl State {
    fn find(&self, identifier: &str) -> Option<&Arc<Instance>> {
        self.instances.iter().find(|i| i.identifier == identifier)
    }

    fn id_taken(&self, id: &str) -> bool {
        self.find(id).is_some() || self.reserved_ids.contains(id)
    }

    /// Bytes held: distinct weights once, plus every instance's own buffers, plus loads in progress.
    fn used_bytes(&self, without: &[usize]) -> u64 {
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

struct Inner {
    catalog: Catalog,
    options: HostOptions,
    state: Mutex<State>,
    /// Wakes the TTL thread and `model()` callers waiting for a load.
    changed: Condvar,
}

impl Inner {
    fn notify(&self, st: &mut State) {
        st.version += 1;
        self.changed.notify_all();
    }
}

/// The catalog plus the instance table. Dropping it unloads everything and joins the TTL thread.
pub struct Host {
    inner: Arc<Inner>,
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
        let inner = Arc::new(Inner {
            catalog: Catalog::new(models_dir),
            options,
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
        });
        let weak = Arc::downgrade(&inner);
        let handle = std::thread::Builder::new()
            .name("modelhost-ttl".into())
            .spawn(move || ttl_loop(weak))
            .map_err(|e| Error::InvalidConfig(format!("cannot start the TTL thread: {e}")))?;
        Ok(Host { inner, ttl_thread: Mutex::new(Some(handle)) })
    }

    /// The catalog.
    pub fn catalog(&self) -> &Catalog {
        &self.inner.catalog
    }

    /// Get-or-load (SPEC §4): the most recently used loaded instance of the model `key` resolves to, else
    /// a just-in-time load (once, however many threads ask); else a loaded instance whose identifier is
    /// `key`; `key = None`: any loaded instance of `kind`.
    pub fn model(&self, kind: ModelKind, key: Option<&str>, mut req: LoadRequest<'_>) -> Result<InstanceHandle> {
        let Some(key) = key else {
            let st = lock(&self.inner.state);
            return most_recent(&st, kind, |_| true)
                .map(|i| self.handle(i))
                .ok_or(Error::NoModelLoaded { kind: kind.as_str() });
        };
        let entry = match self.inner.catalog.resolve(key) {
            Ok(entry) => entry,
            Err(e @ (Error::ModelNotFound { .. } | Error::AmbiguousKey { .. })) => {
                let st = lock(&self.inner.state);
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
        let mut st = lock(&self.inner.state);
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
            st = self.inner.changed.wait(st).unwrap_or_else(|e| e.into_inner());
        }
        st.loading.insert(entry.model_key.clone());
        drop(st);
        let result = self.load(&entry, None, &mut req);
        let mut st = lock(&self.inner.state);
        st.loading.remove(&entry.model_key);
        self.inner.notify(&mut st);
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
        let entry = self.inner.catalog.resolve(key)?;
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
        let entry = self.inner.catalog.resolve(key)?;
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
        let shared_key: SharedKey = (
            entry.weights_path.clone(),
            stamp.len(),
            stamp.modified().ok(),
            req.config.try_mmap,
            req.config.keep_model_in_memory,
            plan.placement.layers.clone(),
        );

        // Reserve an identifier and the memory, evicting idle instances if the budget says so.
        let (identifier, reserved, victims) = {
            let mut st = lock(&self.inner.state);
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
                ModelKind::Llm => st.shared_llm.get(&shared_key).is_some_and(|w| w.strong_count() > 0),
                ModelKind::Embedding => st.shared_embedding.get(&shared_key).is_some_and(|w| w.strong_count() > 0),
            };
            let mut needed = plan.estimate.total_bytes;
            if weights_loaded {
                needed -= plan.estimate.weights_bytes;
            }
            let victims = self.make_room(&mut st, &entry.model_key, needed)?;
            st.reserved_ids.insert(identifier.clone());
            st.reserved_bytes += needed;
            st.loads_in_progress += 1;
            self.inner.notify(&mut st);
            (identifier, needed, victims)
        };
        drop(victims);

        let built =
            self.build_instance(entry, &plan, &shared_key, &identifier, req).map_err(|e| e.with_path(&entry.path));
        let mut st = lock(&self.inner.state);
        st.reserved_ids.remove(&identifier);
        st.reserved_bytes -= reserved;
        st.loads_in_progress -= 1;
        let instance = match built {
            Ok(instance) if !st.closed => instance,
            Ok(_) => return Err(Error::Closed),
            Err(e) => {
                self.inner.notify(&mut st);
                return Err(e);
            }
        };
        st.instances.push(instance.clone());
        self.inner.notify(&mut st);
        Ok(self.handle(&instance))
    }

    /// Evict idle instances, least recently used first, until `needed` more bytes and one more instance fit.
    fn make_room(&self, st: &mut State, key: &str, needed: u64) -> Result<Vec<Arc<Instance>>> {
        let opts = &self.inner.options;
        let fits = |st: &State, without: &[usize]| {
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
            let busy_all: Vec<usize> = (0..st.instances.len()).filter(|n| st.instances[*n].is_idle()).collect();
            return Err(Error::InsufficientMemory {
                key: key.to_string(),
                needed,
                available: budget.saturating_sub(st.used_bytes(&if opts.auto_evict { busy_all } else { vec![] })),
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

    fn build_instance(
        &self,
        entry: &CatalogEntry,
        plan: &LoadPlan,
        shared_key: &SharedKey,
        identifier: &str,
        req: &mut LoadRequest<'_>,
    ) -> Result<Arc<Instance>> {
        // Progress starts once the load is admitted (identifier and memory reserved).
        req.progress.start()?;
        let config = &req.config;
        let (engine, weights_id, memory) = match entry.kind {
            ModelKind::Llm => {
                let existing = lock(&self.inner.state).shared_llm.get(shared_key).and_then(Weak::upgrade);
                let model = match existing {
                    Some(m) => m,
                    None => {
                        let m = Arc::new(load_llm(entry, config, &plan.placement, &mut req.progress)?);
                        lock(&self.inner.state).shared_llm.insert(shared_key.clone(), Arc::downgrade(&m));
                        m
                    }
                };
                let rope_base = config.rope_frequency_base.unwrap_or(model.params.rope_freq_base);
                let rope_scale = config.rope_frequency_scale.unwrap_or(model.params.rope_freq_scale);
                let session =
                    LlmSession::new(&model, plan.context_length, plan.eval_batch_size, rope_base, rope_scale)?;
                let id = Arc::as_ptr(&model) as usize;
                (Engine::Llm { model, session: Mutex::new(session) }, id, plan.estimate.clone())
            }
            ModelKind::Embedding => {
                let existing = lock(&self.inner.state).shared_embedding.get(shared_key).and_then(Weak::upgrade);
                let model = match existing {
                    Some(m) => m,
                    None => {
                        let opts = EmbeddingLoadOptions {
                            try_mmap: config.try_mmap,
                            context_length: Some(plan.context_length),
                        };
                        let m = Arc::new(EmbeddingModel::load(&entry.path, &opts, &mut req.progress)?);
                        lock(&self.inner.state).shared_embedding.insert(shared_key.clone(), Arc::downgrade(&m));
                        m
                    }
                };
                let id = Arc::as_ptr(&model) as usize;
                (Engine::Embedding { model }, id, plan.estimate.clone())
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
            host: Arc::downgrade(&self.inner),
            instance: Arc::downgrade(i),
            identifier: i.identifier.clone(),
            model_key: i.entry.model_key.clone(),
            kind: i.entry.kind,
            reference: i.reference.clone(),
        }
    }

    /// Loaded instances (of `kind`), in load order.
    pub fn list_loaded(&self, kind: Option<ModelKind>) -> Vec<InstanceHandle> {
        let st = lock(&self.inner.state);
        st.instances.iter().filter(|i| kind.is_none_or(|k| i.entry.kind == k)).map(|i| self.handle(i)).collect()
    }

    /// Unload by identifier, or every instance of a model key. Unknown → `ModelNotFound`.
    pub fn unload(&self, kind: Option<ModelKind>, key_or_identifier: &str) -> Result<()> {
        let victims: Vec<Arc<Instance>> = {
            let mut st = lock(&self.inner.state);
            let matches_kind = |i: &Instance| kind.is_none_or(|k| i.entry.kind == k);
            let by_id: Vec<usize> = (0..st.instances.len())
                .filter(|&n| st.instances[n].identifier == key_or_identifier && matches_kind(&st.instances[n]))
                .collect();
            let chosen = if by_id.is_empty() {
                match self.inner.catalog.resolve(key_or_identifier) {
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
            self.inner.notify(&mut st);
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
            let mut st = lock(&self.inner.state);
            st.closed = true;
            self.inner.notify(&mut st);
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

fn most_recent(st: &State, kind: ModelKind, pred: impl Fn(&Instance) -> bool) -> Option<&Arc<Instance>> {
    st.instances
        .iter()
        .enumerate()
        .filter(|(_, i)| i.entry.kind == kind && pred(i))
        .max_by_key(|(n, i)| (lock(&i.activity).last_used, *n))
        .map(|(_, i)| i)
}

fn ttl_loop(inner: Weak<Inner>) {
    loop {
        let Some(inner) = inner.upgrade() else { return };
        let mut st = lock(&inner.state);
        if st.closed {
            return;
        }
        let now = Instant::now();
        let mut next: Option<Instant> = None;
        let mut expired = Vec::new();
        st.instances.retain(|i| {
            let a = lock(&i.activity);
            match i.ttl {
                Some(ttl) if a.in_flight == 0 => {
                    let deadline = a.last_used + ttl;
                    if deadline <= now {
                        expired.push(i.clone());
                        return false;
                    }
                    next = Some(next.map_or(deadline, |n| n.min(deadline)));
                    true
                }
                _ => true,
            }
        });
        for e in &expired {
            e.mark_unloaded("its TTL expired");
        }
        let version = st.version + u64::from(!expired.is_empty());
        if !expired.is_empty() {
            inner.notify(&mut st);
        }
        drop(st);
        drop(expired); // freeing a model can take a while: not under the lock
        let st = lock(&inner.state);
        if st.version != version || st.closed {
            continue;
        }
        let timeout = next.map_or(TTL_IDLE_WAIT, |d| d.saturating_duration_since(Instant::now()));
        let _unused = inner.changed.wait_timeout(st, timeout).unwrap_or_else(|e| e.into_inner());
    }
}

/// What a load will do, decided from headers before any weight is read.
struct LoadPlan {
    context_length: usize,
    eval_batch_size: usize,
    placement: Placement,
    estimate: MemoryEstimate,
    applied: Value,
}

fn plan_load(entry: &CatalogEntry, config: &LoadConfig) -> Result<LoadPlan> {
    match entry.kind {
        ModelKind::Llm => {
            let (file, _) = storage::open_model_file(&entry.path)?;
            // SAFETY: read-only map used only to read the header, dropped at the end of this scope.
            let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::load(&entry.path, e.to_string()))?;
            let header = gguf::parse_summary(&map, &entry.path)?;
            let params = Architecture::of(&header, &entry.path)?.params(&header, &entry.path)?;
            let ctx = config.resolve_context_length(params.max_context)?;
            let eval_batch_size = config.resolve_eval_batch_size(ctx)?;
            let placement = Placement::plan(params.n_layer, &config.gpu)?;
            let weights_bytes = header.tensor_bytes();
            let kv = params.kv_bytes_per_token().saturating_mul(ctx as u64);
            let rope = (ctx * params.head_dim * std::mem::size_of::<f32>()) as u64;
            let scratch = rope + params.vocab as u64 * TOKENIZER_BYTES_PER_TOKEN;
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
            if config.gpu.ratio.is_some_and(|r| r > 0.0) && config.rope_frequency_base.is_some() {
                return Err(Error::InvalidConfig("ropeFrequencyBase does not apply to embedding models".into()));
            }
            if config.keep_model_in_memory {
                return Err(Error::InvalidConfig("keepModelInMemory is not supported for embedding models yet".into()));
            }
            let mut placement = Placement::cpu(0);
            if config.gpu.ratio.is_some_and(|r| r > 0.0) {
                placement.warning =
                    Some("embedding models run on the CPU in this version: gpu.ratio was ignored".to_string());
            }
            let scratch = 2 << 20;
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
                    weights_bytes: entry.weights_bytes,
                    kv_cache_bytes: 0,
                    scratch_bytes: scratch,
                    total_bytes: entry.weights_bytes + scratch,
                    per_device: vec![("cpu".into(), entry.weights_bytes + scratch)],
                },
                placement,
                applied,
            })
        }
    }
}

/// Refuse a load that cannot fit in the RAM the OS says is available, before allocating: Rust aborts the
/// process when an allocation fails, so a lying context length must never reach the allocator.
fn check_fits_in_ram(key: &str, needed: u64) -> Result<()> {
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

fn load_llm(
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
    let header = gguf::parse(bytes.as_slice(), &entry.path)?;
    LlmModel::load(&entry.path, &header, &bytes, placement, config.keep_model_in_memory, progress, base)
        .map_err(|e| e.with_path(&entry.path))
}

/// A request in flight: holds the instance alive and its turn in the queue; ends on drop.
struct Request {
    instance: Arc<Instance>,
    host: Arc<Inner>,
}

impl Drop for Request {
    fn drop(&mut self) {
        self.instance.queue.done();
        {
            let mut a = lock(&self.instance.activity);
            a.in_flight -= 1;
            a.last_used = Instant::now();
            a.last_used_wall = SystemTime::now();
        }
        let mut st = lock(&self.host.state);
        self.host.notify(&mut st);
    }
}

/// A handle on one instance. Holds no memory: after unload, calls fail with `ModelUnloaded`.
#[derive(Clone)]
pub struct InstanceHandle {
    host: Weak<Inner>,
    instance: Weak<Instance>,
    /// The instance identifier.
    pub identifier: String,
    /// The model key.
    pub model_key: String,
    /// LLM or embedding.
    pub kind: ModelKind,
    /// Unique across the host's lifetime (identifiers can be reused after unload).
    pub reference: String,
}

impl InstanceHandle {
    fn unloaded(&self, reason: Option<String>) -> Error {
        Error::ModelUnloaded { identifier: self.identifier.clone(), reason }
    }

    /// The instance, if it is still loaded.
    fn live(&self) -> Result<Arc<Instance>> {
        let i = self.instance.upgrade().ok_or_else(|| self.unloaded(None))?;
        if let Some(reason) = lock(&i.activity).unloaded.clone() {
            return Err(self.unloaded(Some(reason)));
        }
        Ok(i)
    }

    /// Start a request: refused once unloaded; waits (FIFO) for the instance's earlier requests.
    fn begin(&self) -> Result<Request> {
        let instance = self.live()?;
        let host = self.host.upgrade().ok_or(Error::Closed)?;
        {
            let mut a = lock(&instance.activity);
            if let Some(reason) = a.unloaded.clone() {
                return Err(self.unloaded(Some(reason)));
            }
            a.in_flight += 1;
        }
        // From here the Request's Drop balances the count and the queue.
        instance.queue.wait_turn();
        Ok(Request { instance, host })
    }

    /// Whether the instance is still loaded.
    pub fn is_loaded(&self) -> bool {
        self.live().is_ok()
    }

    /// LM Studio's instance info, plus ttl, last_used and placement.
    pub fn info(&self) -> Result<Value> {
        let i = self.live()?;
        let e = &i.entry;
        let last_used =
            lock(&i.activity).last_used_wall.duration_since(SystemTime::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
        let mut info = json!({
            "type": e.kind.as_str(),
            "model_key": e.model_key,
            "format": e.format.as_str(),
            "display_name": e.display_name,
            "path": e.path.display().to_string(),
            "size_bytes": e.size_bytes,
            "identifier": i.identifier,
            "instance_reference": i.reference,
            "architecture": e.architecture,
            "params_string": e.params_string,
            "quantization": e.quantization,
            "max_context_length": e.max_context_length,
            "context_length": i.context_length,
            "vision": false,
            "trained_for_tool_use": e.trained_for_tool_use,
            "ttl": i.ttl.map(|t| t.as_secs_f64()),
            "last_used": last_used,
            "device": i.placement.main_device(),
            "placement": i.placement.layers.iter().map(|(l, d)| json!({"layer": l, "device": d})).collect::<Vec<_>>(),
            "placement_warning": i.placement.warning,
            "memory": {
                "weights_bytes": i.memory.weights_bytes,
                "kv_cache_bytes": i.memory.kv_cache_bytes,
                "scratch_bytes": i.memory.scratch_bytes,
                "total_bytes": i.memory.total_bytes,
            },
        });
        if let Engine::Embedding { model } = &i.engine {
            info["embedding_dimension"] = json!(model.dim());
            info["max_seq_length"] = json!(model.max_seq_length());
        }
        Ok(info)
    }

    /// The applied load config.
    pub fn load_config(&self) -> Result<Value> {
        Ok(self.live()?.applied.clone())
    }

    /// Remove the instance from the table; requests in flight finish first. A no-op when already gone.
    pub fn unload(&self) {
        let (Some(host), Some(i)) = (self.host.upgrade(), self.instance.upgrade()) else { return };
        let removed = {
            let mut st = lock(&host.state);
            let pos = st.instances.iter().position(|x| Arc::ptr_eq(x, &i));
            let removed = pos.map(|p| st.instances.remove(p));
            host.notify(&mut st);
            removed
        };
        i.mark_unloaded("unloaded");
        drop(i);
        drop(removed);
    }

    /// Token ids the model sees for `text`.
    pub fn tokenize(&self, text: &str) -> Result<Vec<u32>> {
        match &self.live()?.engine {
            Engine::Llm { model, .. } => model.tokenizer.encode(text, true),
            Engine::Embedding { model } => model.tokenize(text),
        }
    }

    /// Text for token ids (LLMs).
    pub fn detokenize(&self, ids: &[u32]) -> Result<String> {
        match &self.live()?.engine {
            Engine::Llm { model, .. } => Ok(model.tokenizer.decode(ids)),
            Engine::Embedding { .. } => Err(self.not_for_kind("detokenize")),
        }
    }

    /// The instance's context length.
    pub fn context_length(&self) -> Result<usize> {
        Ok(self.live()?.context_length)
    }

    fn not_for_kind(&self, what: &str) -> Error {
        Error::InvalidConfig(format!("{what} is not available on {} model {:?}", self.kind.as_str(), self.model_key))
    }

    /// Render a chat with the model's template.
    pub fn apply_template(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        match &self.live()?.engine {
            Engine::Llm { model, .. } => model.apply_template(messages, add_generation_prompt),
            Engine::Embedding { .. } => Err(self.not_for_kind("apply_prompt_template")),
        }
    }

    /// Start a prediction on `prompt` (text with special tokens parsed, or ids). It holds the
    /// instance's queue until it ends or is dropped.
    pub fn generate(&self, prompt: Prompt, config: &Value) -> Result<Generation> {
        let request = self.begin()?;
        let Engine::Llm { model, .. } = &request.instance.engine else {
            return Err(self.not_for_kind("generate"));
        };
        let config = config::prediction_from_json(config, request.instance.seed)?;
        let ids = match prompt {
            Prompt::Text(t) => model.tokenizer.encode(&t, true)?,
            Prompt::Tokens(ids) => ids,
        };
        let state = model.start(ids, config)?;
        let model = model.clone();
        Ok(Generation { request: Some(request), model, state, cancelled: Arc::new(AtomicBool::new(false)) })
    }

    /// Logits at every position of `tokens`, `(tokens.len(), vocab)` row-major, and the vocab size.
    pub fn evaluate(&self, tokens: &[u32]) -> Result<(Vec<f32>, usize)> {
        let request = self.begin()?;
        let Engine::Llm { model, session } = &request.instance.engine else {
            return Err(self.not_for_kind("evaluate"));
        };
        let mut session = lock(session);
        Ok((model.evaluate(&mut session, tokens)?, model.params.vocab))
    }

    /// Embeddings, `(texts.len(), dim)` row-major, and the dimension.
    pub fn embed(&self, texts: &[&str]) -> Result<(Vec<f32>, usize)> {
        let request = self.begin()?;
        let Engine::Embedding { model } = &request.instance.engine else {
            return Err(self.not_for_kind("embed"));
        };
        Ok((model.embed(texts)?, model.dim()))
    }
}

/// A prompt as text or token ids.
pub enum Prompt {
    /// Raw text; special tokens written in it are parsed.
    Text(String),
    /// Token ids.
    Tokens(Vec<u32>),
}

/// A running prediction: yields fragments; holds the instance's queue until it ends or is dropped.
pub struct Generation {
    /// The request, released as soon as the prediction ends so later requests need not wait for the
    /// caller to drop a finished stream.
    request: Option<Request>,
    model: Arc<LlmModel>,
    state: GenerationState,
    cancelled: Arc<AtomicBool>,
}

impl Generation {
    /// A flag that stops the prediction after the current token ("userStopped"); settable from any thread.
    pub fn cancel_flag(&self) -> Arc<AtomicBool> {
        self.cancelled.clone()
    }

    /// The next fragment, or `None` at the end.
    pub fn next_fragment(&mut self) -> Result<Option<Fragment>> {
        if self.cancelled.load(Ordering::Relaxed) {
            self.state.cancel();
        }
        let Some(request) = &self.request else { return Ok(None) };
        let Engine::Llm { session, .. } = &request.instance.engine else { return Ok(None) };
        let next = {
            let mut session = lock(session);
            self.model.next_fragment(&mut session, &mut self.state)
        };
        if !matches!(next, Ok(Some(_))) {
            // Ended (or failed): free the instance for the next request now.
            self.state.cancel();
            self.request = None;
        }
        next
    }

    /// Run to the end.
    pub fn finish(&mut self) -> Result<()> {
        while self.next_fragment()?.is_some() {}
        Ok(())
    }

    /// All content so far.
    pub fn content(&self) -> &str {
        self.state.content()
    }

    /// Predicted ids.
    pub fn tokens(&self) -> &[u32] {
        self.state.tokens()
    }

    /// Whether it has ended.
    pub fn is_done(&self) -> bool {
        self.request.is_none()
    }

    /// Statistics (final once ended).
    pub fn stats(&self) -> PredictionStats {
        self.state.stats()
    }
}
