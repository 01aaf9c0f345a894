//! What every handler shares: the host view, the config, per-instance admission, running predictions.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::http::StatusCode;
use modelhost_core::{Host, InstanceHandle};
use tokio::sync::watch;

use crate::config::ServerConfig;
use crate::error::ApiError;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The maps stay consistent whatever panicked while holding them (single inserts and removes).
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Shared by all handlers.
#[derive(Clone)]
pub(crate) struct AppState(Arc<Shared>);

pub(crate) struct Shared {
    /// The server's view of the host (confined to the models dir).
    pub host: Arc<Host>,
    pub config: ServerConfig,
    /// HTTP requests admitted per instance reference, running and waiting.
    admitted: Mutex<HashMap<String, usize>>,
    /// Cancel flags of predictions on the lifecycle API, by prediction id.
    predictions: Mutex<HashMap<String, Arc<AtomicBool>>>,
    /// Set when the drain timeout passes: generations still running stop as if cancelled.
    pub abort: Arc<AtomicBool>,
    /// Set to true to stop the server (drain, then stop).
    pub stop: watch::Sender<bool>,
    /// Bound to a loopback address: only requests addressed to localhost are answered.
    loopback: bool,
    next_id: AtomicU64,
}

impl std::ops::Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// A request's place in an instance's bounded queue; released on drop.
pub(crate) struct Permit {
    state: AppState,
    reference: String,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut admitted = lock(&self.state.admitted);
        if let Some(n) = admitted.get_mut(&self.reference) {
            *n -= 1;
            if *n == 0 {
                admitted.remove(&self.reference);
            }
        }
    }
}

/// A lifecycle prediction's entry in the registry, removed on drop.
pub(crate) struct PredictionEntry {
    state: AppState,
    pub id: String,
    pub cancel: Arc<AtomicBool>,
}

impl Drop for PredictionEntry {
    fn drop(&mut self) {
        lock(&self.state.predictions).remove(&self.id);
    }
}

impl AppState {
    pub fn new(host: Arc<Host>, config: ServerConfig, stop: watch::Sender<bool>, loopback: bool) -> Self {
        AppState(Arc::new(Shared {
            host,
            config,
            admitted: Mutex::new(HashMap::new()),
            predictions: Mutex::new(HashMap::new()),
            abort: Arc::new(AtomicBool::new(false)),
            stop,
            loopback,
            next_id: AtomicU64::new(1),
        }))
    }

    /// Admit one more request to the instance, or 503 when its queue is full.
    pub fn admit(&self, handle: &InstanceHandle) -> Result<Permit, ApiError> {
        let mut admitted = lock(&self.admitted);
        let n = admitted.entry(handle.reference.clone()).or_insert(0);
        if *n >= self.config.queue_limit {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "ServerBusyError",
                "queue_full",
                format!(
                    "instance {:?} already has {} requests running or queued (the limit); try again later",
                    handle.identifier, self.config.queue_limit
                ),
            ));
        }
        *n += 1;
        Ok(Permit { state: self.clone(), reference: handle.reference.clone() })
    }

    /// A fresh id with a prefix (`chatcmpl-…`), unique in this server.
    pub fn new_id(&self, prefix: &str) -> String {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        format!("{prefix}-{nanos:08x}{n:x}")
    }

    /// Register a lifecycle prediction so `/prediction/cancel` can reach it.
    pub fn register_prediction(&self) -> PredictionEntry {
        let id = self.new_id("pred");
        let cancel = Arc::new(AtomicBool::new(false));
        lock(&self.predictions).insert(id.clone(), cancel.clone());
        PredictionEntry { state: self.clone(), id, cancel }
    }

    /// Cancel a running lifecycle prediction; false when there is none with that id.
    pub fn cancel_prediction(&self, id: &str) -> bool {
        match lock(&self.predictions).get(id) {
            Some(flag) => {
                flag.store(true, Ordering::Relaxed);
                true
            }
            None => false,
        }
    }

    /// Whether only requests addressed to localhost are answered.
    pub fn loopback_only(&self) -> bool {
        self.loopback
    }

    /// Ask the server to stop (drain, then stop).
    pub fn request_stop(&self) {
        self.stop.send_replace(true);
    }
}

/// Seconds since the Unix epoch (OpenAI's `created`).
pub(crate) fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}
