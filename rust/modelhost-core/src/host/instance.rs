//! A loaded instance and the handles on it: requests (one at a time, FIFO, refused once unloaded), predictions
//! that hold the instance until they end, and the instance's info.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime};

use serde_json::{json, Value};

use super::budget::MemoryEstimate;
use super::catalog::{CatalogEntry, ModelKind};
use super::placement::Placement;
use super::queue::FifoQueue;
use super::{lock, SharedHost};
use crate::config;
use crate::error::{Error, Result};
use crate::models::bert::EmbeddingModel;
use crate::models::{Fragment, GenerationState, LlmModel, LlmSession, PredictionStats};
use crate::storage::ProgressFn;
use crate::text::ChatMessage;

/// Who loaded an instance: a client's `close()` unloads only what it loaded itself (SPEC §4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoadedBy {
    /// A client, by its id: an in-process `Client`, or a remote one through the HTTP lifecycle API.
    Client(String),
    /// The HTTP server: a just-in-time load, or its load route.
    Server,
    /// The command-line tool.
    Cli,
}

impl LoadedBy {
    /// "client", "server" or "cli".
    pub fn as_str(&self) -> &'static str {
        match self {
            LoadedBy::Client(_) => "client",
            LoadedBy::Server => "server",
            LoadedBy::Cli => "cli",
        }
    }

    /// The client's id, for a client's load.
    pub fn client_id(&self) -> Option<&str> {
        match self {
            LoadedBy::Client(id) => Some(id),
            _ => None,
        }
    }
}

/// When an instance was last used, and whether it still takes requests.
pub(super) struct Activity {
    pub(super) in_flight: usize,
    pub(super) last_used: Instant,
    pub(super) last_used_wall: SystemTime,
    /// Set once the instance leaves the table; new requests are refused with this reason.
    pub(super) unloaded: Option<String>,
}

/// The model an instance runs: an LLM with its own session (KV cache), or an embedding model.
pub(super) enum LoadedModel {
    Llm { model: Arc<LlmModel>, session: Mutex<LlmSession> },
    Embedding { model: Arc<EmbeddingModel> },
}

/// One loaded instance. Only the table (and requests in flight) hold it strongly.
pub struct Instance {
    pub(super) identifier: String,
    pub(super) reference: String,
    pub(super) entry: CatalogEntry,
    pub(super) ttl: Option<Duration>,
    pub(super) applied: Value,
    pub(super) placement: Placement,
    pub(super) memory: MemoryEstimate,
    pub(super) context_length: usize,
    pub(super) seed: Option<u64>,
    pub(super) weights_id: usize,
    pub(super) loaded_by: LoadedBy,
    pub(super) no_hup: bool,
    pub(super) activity: Mutex<Activity>,
    pub(super) queue: FifoQueue,
    pub(super) engine: LoadedModel,
    /// Declared last, so it drops after the model: see `ReleaseFreedMemory`.
    pub(super) _release: ReleaseFreedMemory,
}

/// Hands freed heap pages back to the kernel when an instance goes. glibc keeps freed memory in its
/// arenas, one per thread that allocated it; inference runs on the rayon workers, so without this an
/// unloaded model's activation buffers (tens of MB) would stay in the process's RSS.
pub(super) struct ReleaseFreedMemory;

impl Drop for ReleaseFreedMemory {
    fn drop(&mut self) {
        release_freed_memory();
    }
}

/// Return the allocator's free pages to the kernel (glibc's `malloc_trim`; nothing elsewhere).
pub(super) fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free pages of the allocator's arenas to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}

impl Instance {
    /// Refuse new requests from now on, with `reason`.
    pub(super) fn mark_unloaded(&self, reason: &str) {
        let mut a = lock(&self.activity);
        a.unloaded.get_or_insert_with(|| reason.to_string());
    }
}

/// A request in flight: holds the instance alive and its turn in the queue; ends on drop.
struct Request {
    instance: Arc<Instance>,
    host: Arc<SharedHost>,
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
        let mut st = lock(&self.host.table);
        self.host.notify(&mut st);
    }
}

/// A handle on one instance. Holds no memory: after unload, calls fail with `ModelUnloaded`.
#[derive(Clone)]
pub struct InstanceHandle {
    pub(super) host: Weak<SharedHost>,
    pub(super) instance: Weak<Instance>,
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

    /// LM Studio's instance info, plus ttl, last use, activity, who loaded it, and placement.
    pub fn info(&self) -> Result<Value> {
        let i = self.live()?;
        let e = &i.entry;
        let (last_used, in_flight, idle_for) = {
            let a = lock(&i.activity);
            let wall = a.last_used_wall.duration_since(SystemTime::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
            (wall, a.in_flight, a.last_used.elapsed())
        };
        // What the TTL thread will do if nothing else arrives: unload it this many seconds from now.
        let expires_in = i.ttl.filter(|_| in_flight == 0).map(|ttl| ttl.saturating_sub(idle_for).as_secs_f64());
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
            "expires_in": expires_in,
            "in_flight": in_flight,
            "status": if in_flight == 0 { "idle" } else { "busy" },
            "loaded_by": i.loaded_by.as_str(),
            "client_id": i.loaded_by.client_id(),
            "no_hup": i.no_hup,
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
        if let LoadedModel::Embedding { model } = &i.engine {
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
            let mut st = lock(&host.table);
            let pos = st.instances.iter().position(|x| Arc::ptr_eq(x, &i));
            let removed = pos.map(|p| st.remove(p));
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
            LoadedModel::Llm { model, .. } => model.tokenizer.encode(text, true),
            LoadedModel::Embedding { model } => model.tokenize(text),
        }
    }

    /// Text for token ids (LLMs).
    pub fn detokenize(&self, ids: &[u32]) -> Result<String> {
        match &self.live()?.engine {
            LoadedModel::Llm { model, .. } => Ok(model.tokenizer.decode(ids)),
            LoadedModel::Embedding { .. } => Err(self.not_for_kind("detokenize")),
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
            LoadedModel::Llm { model, .. } => model.apply_template(messages, add_generation_prompt),
            LoadedModel::Embedding { .. } => Err(self.not_for_kind("apply_prompt_template")),
        }
    }

    /// The token ids of a chat for the assistant's reply, as llama.cpp's chat builds them (LLMs): the template's
    /// rendering tokenized without doubling a BOS the template writes (`LlmModel::chat_prompt_ids`).
    pub fn chat_prompt_ids(&self, messages: &[ChatMessage]) -> Result<Vec<u32>> {
        match &self.live()?.engine {
            LoadedModel::Llm { model, .. } => model.chat_prompt_ids(messages),
            LoadedModel::Embedding { .. } => Err(self.not_for_kind("respond")),
        }
    }

    /// Start a prediction on `prompt` (text with special tokens parsed, or ids). It holds the
    /// instance's queue until it ends or is dropped.
    pub fn generate(&self, prompt: Prompt, config: &Value) -> Result<Generation> {
        let request = self.begin()?;
        let LoadedModel::Llm { model, .. } = &request.instance.engine else {
            return Err(self.not_for_kind("generate"));
        };
        let config = config::prediction_from_json(config, request.instance.seed)?;
        let ids = match prompt {
            Prompt::Text(t) => model.tokenizer.encode(&t, true)?,
            Prompt::Tokens(ids) => ids,
            Prompt::Chat(messages) => model.chat_prompt_ids(&messages)?,
        };
        let state = model.start(ids, config)?;
        Ok(Generation { request: Some(request), state, cancelled: Arc::new(AtomicBool::new(false)) })
    }

    /// Logits at every position of `tokens`, `(tokens.len(), vocab)` row-major, and the vocab size.
    pub fn evaluate(&self, tokens: &[u32]) -> Result<(Vec<f32>, usize)> {
        let request = self.begin()?;
        let LoadedModel::Llm { model, session } = &request.instance.engine else {
            return Err(self.not_for_kind("evaluate"));
        };
        let mut session = lock(session);
        Ok((model.evaluate(&mut session, tokens)?, model.params.vocab))
    }

    /// Embeddings, `(texts.len(), dim)` row-major, and the dimension.
    pub fn embed(&self, texts: &[&str]) -> Result<(Vec<f32>, usize)> {
        let request = self.begin()?;
        let LoadedModel::Embedding { model } = &request.instance.engine else {
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
    /// A chat, for the assistant's reply: rendered with the model's template and tokenized as llama.cpp's chat
    /// does (`LlmModel::chat_prompt_ids`).
    Chat(Vec<ChatMessage>),
}

/// A running prediction: yields fragments; holds the instance's queue until it ends or is dropped.
pub struct Generation {
    /// The request, released as soon as the prediction ends so later requests need not wait for the caller to drop
    /// a finished stream, and nothing of the instance (its model included) outlives it.
    request: Option<Request>,
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
        self.next_fragment_with_progress(None)
    }

    /// The next fragment, or `None` at the end. While the prompt is processed (in the first call),
    /// `on_prompt_progress` gets 0.0, the share done after each `evalBatchSize` chunk, and 1.0 last; an error from it
    /// ends the prediction with `Error::Cancelled` carrying that error.
    pub fn next_fragment_with_progress(
        &mut self,
        on_prompt_progress: Option<&mut ProgressFn<'_>>,
    ) -> Result<Option<Fragment>> {
        if self.cancelled.load(Ordering::Relaxed) {
            self.state.cancel();
        }
        let Some(request) = &self.request else { return Ok(None) };
        let LoadedModel::Llm { model, session } = &request.instance.engine else { return Ok(None) };
        let next = {
            let mut session = lock(session);
            model.next_fragment(&mut session, &mut self.state, on_prompt_progress)
        };
        if !matches!(next, Ok(Some(_))) {
            // Ended (or failed): free the instance for the next request now.
            self.state.cancel();
            self.request = None;
        }
        next
    }

    /// Run to the end (reporting prompt progress as `next_fragment_with_progress`, if the prompt is still to do).
    pub fn finish(&mut self, mut on_prompt_progress: Option<&mut ProgressFn<'_>>) -> Result<()> {
        while self.next_fragment_with_progress(on_prompt_progress.as_deref_mut())?.is_some() {}
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
