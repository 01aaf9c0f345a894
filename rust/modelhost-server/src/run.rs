//! Work on blocking threads, never on the async workers: host calls, just-in-time loads, and predictions, whose
//! fragments come back through a bounded channel (a slow reader slows its own prediction and nothing else).

use std::convert::Infallible;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::{Stream, StreamExt};
use modelhost_core::config::prediction_from_json;
use modelhost_core::models::{Fragment, PredictionStats};
use modelhost_core::ChatMessage;
use modelhost_core::Error;
use modelhost_core::LoadConfig;
use modelhost_core::ModelKind;
use modelhost_core::Progress;
use modelhost_core::{InstanceHandle, LoadRequest, LoadedBy, Prompt};
use serde_json::Value;
use tokio::sync::mpsc;

use crate::error::ApiError;
use crate::state::{AppState, Permit};

/// Fragments buffered between a prediction and its reader before the prediction waits.
const FRAGMENT_BUFFER: usize = 32;

/// Run `f` on a blocking thread; a panic in it is a 500, and the server goes on.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f).await?
}

/// Over HTTP a model is named by a catalog key or an instance identifier, never by a path (docs/http-api.md).
pub(crate) fn check_model_name(name: &str) -> Result<(), ApiError> {
    if name.trim().is_empty() {
        return Err(ApiError::bad_request("a model is required: give its key or an instance identifier"));
    }
    let path_like = Path::new(name).is_absolute()
        || name.starts_with('~')
        || name.contains(['\\', '\0'])
        || name.split('/').any(|s| s == "..");
    if path_like {
        return Err(ApiError::model_not_found(format!(
            "no model matches {name:?}: over HTTP a model is named by its key or an instance identifier, never a path"
        )));
    }
    Ok(())
}

/// The instance that serves `name`: a loaded one, else a just-in-time load through the host's single flight
/// (one load however many requests ask). Its TTL applies only if this call loads it. The load goes on if the
/// client goes away: other requests may be waiting for it.
pub(crate) async fn jit_model(
    state: &AppState,
    kind: ModelKind,
    name: &str,
    ttl: Option<Duration>,
) -> Result<InstanceHandle, ApiError> {
    check_model_name(name).map_err(|e| e.with_param("model"))?;
    let (host, name) = (state.host.clone(), name.to_string());
    blocking(move || {
        let mut req = LoadRequest::new(ttl, LoadConfig::default(), Progress::new(None));
        req.loaded_by = Some(LoadedBy::Server);
        host.model(kind, Some(&name), req).map_err(|e| ApiError::from(e).with_param("model"))
    })
    .await
}

/// What a prediction starts from.
pub(crate) enum PromptInput {
    /// Messages, rendered with the instance's chat template (generation prompt added).
    Chat(Vec<ChatMessage>),
    /// Raw text; special tokens in it are parsed.
    Text(String),
    /// Token ids.
    Tokens(Vec<u32>),
}

/// How a prediction ended.
pub(crate) struct Finished {
    pub content: String,
    pub tokens: Vec<u32>,
    pub stats: PredictionStats,
}

impl Finished {
    /// Seconds from the first token to the end (LM Studio's `generation_time`).
    pub fn generation_time(&self) -> f64 {
        let n = self.stats.predicted_tokens_count;
        if n > 1 && self.stats.tokens_per_second > 0.0 {
            (n - 1) as f64 / self.stats.tokens_per_second
        } else {
            0.0
        }
    }
}

/// What a prediction reports, in order: `Ready`, then fragments, then `Done` or `Failed` (`Failed` may also
/// come first, before anything was sent to the client).
pub(crate) enum GenEvent {
    /// The prompt was checked (it fits the context); the prediction waits for its turn.
    Ready {
        prompt_tokens: usize,
    },
    Fragment(Fragment),
    Done(Box<Finished>),
    Failed(ApiError),
}

/// The reading end of a prediction. Dropping it (the client went away) makes the prediction stop and free
/// its instance at the next token.
pub(crate) struct GenerationStream {
    rx: mpsc::Receiver<GenEvent>,
    abandoned: Arc<AtomicBool>,
}

impl Drop for GenerationStream {
    fn drop(&mut self) {
        self.abandoned.store(true, Ordering::Relaxed);
    }
}

impl GenerationStream {
    /// The next event; a prediction thread that died without a word reads as `Failed`.
    pub async fn next(&mut self) -> GenEvent {
        self.rx.recv().await.unwrap_or_else(|| GenEvent::Failed(ApiError::internal("the prediction stopped")))
    }

    /// Wait for `Ready`, or the error that came instead.
    pub async fn ready(&mut self) -> Result<usize, ApiError> {
        match self.next().await {
            GenEvent::Ready { prompt_tokens } => Ok(prompt_tokens),
            GenEvent::Failed(e) => Err(e),
            _ => Err(ApiError::internal("the prediction reported out of order")),
        }
    }

    /// Run to the end (after `ready`), ignoring fragments.
    pub async fn finish(&mut self) -> Result<Finished, ApiError> {
        loop {
            match self.next().await {
                GenEvent::Fragment(_) | GenEvent::Ready { .. } => continue,
                GenEvent::Done(f) => return Ok(*f),
                GenEvent::Failed(e) => return Err(e),
            }
        }
    }
}

/// Start a prediction on a blocking thread. `config` is the core's flat prediction config; `cancel`, when set,
/// stops it after the current token with `userStopped` (the result still comes); `permit` holds the request's
/// place in the instance's queue until the prediction ends.
pub(crate) fn start_generation(
    state: &AppState,
    handle: InstanceHandle,
    input: PromptInput,
    config: Value,
    permit: Permit,
    cancel: Arc<AtomicBool>,
) -> GenerationStream {
    let (tx, rx) = mpsc::channel(FRAGMENT_BUFFER);
    let abandoned = Arc::new(AtomicBool::new(false));
    let stream = GenerationStream { rx, abandoned: abandoned.clone() };
    let abort = state.abort.clone();
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let ids = match prepare(&handle, input, &config) {
            Ok(ids) => ids,
            Err(e) => {
                let _ = tx.blocking_send(GenEvent::Failed(e.into()));
                return;
            }
        };
        if tx.blocking_send(GenEvent::Ready { prompt_tokens: ids.len() }).is_err() {
            return;
        }
        // Waits here (FIFO) while the instance serves earlier requests.
        let mut generation = match handle.generate(Prompt::Tokens(ids), &config) {
            Ok(g) => g,
            Err(e) => {
                let _ = tx.blocking_send(GenEvent::Failed(e.into()));
                return;
            }
        };
        let stop = generation.cancel_flag();
        loop {
            if abandoned.load(Ordering::Relaxed) {
                return; // dropping the generation frees the instance now
            }
            if cancel.load(Ordering::Relaxed) || abort.load(Ordering::Relaxed) {
                stop.store(true, Ordering::Relaxed);
            }
            match generation.next_fragment() {
                Ok(Some(fragment)) => {
                    if tx.blocking_send(GenEvent::Fragment(fragment)).is_err() {
                        return;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    let _ = tx.blocking_send(GenEvent::Failed(e.into()));
                    return;
                }
            }
        }
        let finished = Finished {
            content: generation.content().to_string(),
            tokens: generation.tokens().to_vec(),
            stats: generation.stats(),
        };
        let _ = tx.blocking_send(GenEvent::Done(Box::new(finished)));
    });
    stream
}

/// Check the config, render and tokenize the prompt, and refuse one that does not fit the context: never truncated.
fn prepare(handle: &InstanceHandle, input: PromptInput, config: &Value) -> Result<Vec<u32>, Error> {
    prediction_from_json(config, None)?;
    let ids = match input {
        // A BOS the template writes is not doubled by the tokenizer's, as in llama.cpp's server.
        PromptInput::Chat(messages) => handle.chat_prompt_ids(&messages)?,
        PromptInput::Text(text) => handle.tokenize(&text)?,
        PromptInput::Tokens(ids) => ids,
    };
    if ids.is_empty() {
        return Err(Error::InvalidConfig("the prompt is empty: give at least one token".into()));
    }
    let context_length = handle.context_length()?;
    if ids.len() > context_length {
        return Err(Error::ContextLengthExceeded { tokens: ids.len(), context_length });
    }
    Ok(ids)
}

/// A Server-Sent Events answer: each item of `events` is a batch of events; the stream ends with it.
pub(crate) fn sse_response(events: impl Stream<Item = Vec<Event>> + Send + 'static) -> Response {
    let flat = events.flat_map(|batch| futures_util::stream::iter(batch.into_iter().map(Ok::<_, Infallible>)));
    // Comments every 15 s keep proxies from closing a stream that waits in the queue, and find gone clients.
    Sse::new(flat).keep_alive(KeepAlive::default()).into_response()
}

/// The batches of events of a prediction: `render` turns each event into SSE events and says whether it was
/// the last. `keep` lives as long as the stream (a registry entry, say).
pub(crate) fn prediction_events<K: Send + 'static>(
    stream: GenerationStream,
    keep: K,
    render: impl FnMut(GenEvent) -> (Vec<Event>, bool) + Send + 'static,
) -> impl Stream<Item = Vec<Event>> + Send + 'static {
    futures_util::stream::unfold((stream, keep, render, false), |(mut stream, keep, mut render, ended)| async move {
        if ended {
            return None;
        }
        let (events, last) = render(stream.next().await);
        Some((events, (stream, keep, render, last)))
    })
}

/// A JSON value as an SSE `data:` event (optionally named).
pub(crate) fn json_event(name: Option<&str>, value: &Value) -> Event {
    let event = Event::default().data(value.to_string());
    match name {
        Some(name) => event.event(name),
        None => event,
    }
}
