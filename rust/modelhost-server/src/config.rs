//! What a server is started with.

use std::time::Duration;

/// Default body limit: room for large embedding batches, far from what a hostile client could use to exhaust memory.
pub const DEFAULT_MAX_BODY_BYTES: usize = 16 << 20;
/// Default requests per instance, running and waiting together, before 503.
pub const DEFAULT_QUEUE_LIMIT: usize = 64;
/// Default time stop() lets requests in flight finish before it stops their generations.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// LM Studio's default TTL for just-in-time loads (and the in-process default).
pub const DEFAULT_JIT_TTL: Duration = Duration::from_secs(3600);

/// How to serve.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Address to bind: an IP address or `localhost`.
    pub address: String,
    /// Port; 0 picks a free one.
    pub port: u16,
    /// Bearer token every request must carry; `None` = no authentication.
    pub api_token: Option<String>,
    /// Allow cross-origin requests from any origin.
    pub cors: bool,
    /// Largest request body accepted.
    pub max_body_bytes: usize,
    /// Most HTTP requests per instance, running and queued.
    pub queue_limit: usize,
    /// How long a stop waits for requests in flight before it stops their generations.
    pub drain_timeout: Duration,
    /// TTL of a just-in-time load whose request names none; `None` = never unloaded.
    pub default_ttl: Option<Duration>,
    /// Async worker threads (inference never runs on them).
    pub worker_threads: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            address: "127.0.0.1".into(),
            port: 0,
            api_token: None,
            cors: false,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            queue_limit: DEFAULT_QUEUE_LIMIT,
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            default_ttl: Some(DEFAULT_JIT_TTL),
            worker_threads: 2,
        }
    }
}

/// The token to require: the one given (an empty one switches authentication off), else `$LM_API_TOKEN`, else
/// `$LMSTUDIO_API_TOKEN` (LM Studio's variables).
pub fn resolve_api_token(given: Option<String>) -> Option<String> {
    let token =
        given.or_else(|| ["LM_API_TOKEN", "LMSTUDIO_API_TOKEN"].iter().find_map(|name| std::env::var(name).ok()))?;
    (!token.is_empty()).then_some(token)
}
