//! The routes, assembled, and a server running them on threads of its own.

use std::future::IntoFuture;
use std::net::SocketAddr;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use axum::middleware::{from_fn_with_state, map_response};
use axum::routing::{get, post};
use axum::Router;
use modelhost_core::Host;
use tokio::sync::watch;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::cors::CorsLayer;

use crate::config::ServerConfig;
use crate::error::{lifecycle_errors, panic_response};
use crate::extract::{check_host, check_token, unknown_route, wrong_method};
use crate::state::AppState;
use crate::{lifecycle, lmstudio, openai};

/// After the drain timeout, how long generations that were told to stop get to end their streams.
const ABORT_GRACE: Duration = Duration::from_secs(5);
/// How long the runtime waits for blocking work (a load that cannot be interrupted) when it shuts down.
const RUNTIME_SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Every route, with its layers.
pub(crate) fn router(state: AppState) -> Router {
    layered(routes(), state)
}

fn routes() -> Router<AppState> {
    let lifecycle = lifecycle::routes()
        .fallback(unknown_route)
        .layer(CatchPanicLayer::custom(panic_response))
        .layer(map_response(lifecycle_errors));
    Router::new()
        .route("/v1/models", get(lmstudio::openai_models))
        .route("/v1/chat/completions", post(openai::chat_completions))
        .route("/v1/completions", post(openai::completions))
        .route("/v1/embeddings", post(openai::embeddings))
        .route("/api/v0/models", get(lmstudio::v0_models))
        .route("/api/v0/models/{*model}", get(lmstudio::v0_model_one))
        .route("/api/v0/chat/completions", post(openai::v0_chat_completions))
        .route("/api/v0/completions", post(openai::v0_completions))
        .route("/api/v0/embeddings", post(openai::embeddings))
        .route("/api/v1/models", get(lmstudio::v1_models))
        .route("/api/v1/models/load", post(lmstudio::v1_load))
        .route("/api/v1/models/unload", post(lmstudio::v1_unload))
        .nest(lifecycle::PREFIX, lifecycle)
}

/// The layers around the routes, outermost first: CORS (if enabled), the Host check, the token check, panic
/// catching (a panicking handler answers 500 and the server goes on).
fn layered(routes: Router<AppState>, state: AppState) -> Router {
    let app = routes
        .fallback(unknown_route)
        .method_not_allowed_fallback(wrong_method)
        .layer(CatchPanicLayer::custom(panic_response))
        .layer(from_fn_with_state(state.clone(), check_token))
        .layer(from_fn_with_state(state.clone(), check_host));
    let app = if state.config.cors { app.layer(CorsLayer::permissive()) } else { app };
    app.with_state(state)
}

/// Serve until a stop is asked for; then drain: no new connections, requests in flight finish, and after the
/// drain timeout the generations still running are stopped.
async fn run(listener: std::net::TcpListener, app: Router, state: AppState, mut stop: watch::Receiver<bool>) {
    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else { return };
    let mut asked = stop.clone();
    let shutdown = async move {
        let _ = asked.wait_for(|s| *s).await;
    };
    let server = axum::serve(listener, app).with_graceful_shutdown(shutdown).into_future();
    tokio::pin!(server);
    let drain_timeout = state.config.drain_timeout;
    tokio::select! {
        _ = &mut server => return,
        _ = async {
            let _ = stop.wait_for(|s| *s).await;
            tokio::time::sleep(drain_timeout).await;
        } => {}
    }
    state.abort.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = tokio::time::timeout(ABORT_GRACE, &mut server).await;
}

/// A server on threads of its own: an async runtime for the connections, blocking threads for the models.
/// Dropping it stops it (drain, then join).
pub struct RunningServer {
    url: String,
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    thread: Mutex<Option<JoinHandle<()>>>,
    stopped: Arc<(Mutex<bool>, Condvar)>,
}

impl RunningServer {
    /// Bind (port 0 picks a free port) and start serving `host`'s instance table, through a view confined to its
    /// models dir. Fails only if the address cannot be bound or threads cannot start.
    pub fn start(host: &Host, config: ServerConfig) -> std::io::Result<RunningServer> {
        let listener = std::net::TcpListener::bind((config.address.as_str(), config.port))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(config.worker_threads.max(1))
            .thread_name("modelhost-http")
            .enable_all()
            .build()?;
        let (stop_tx, stop_rx) = watch::channel(false);
        let state = AppState::new(Arc::new(host.server_view()), config, stop_tx.clone(), addr.ip().is_loopback());
        let app = router(state.clone());
        let stopped = Arc::new((Mutex::new(false), Condvar::new()));
        let done = stopped.clone();
        let thread = std::thread::Builder::new().name("modelhost-server".into()).spawn(move || {
            runtime.block_on(run(listener, app, state, stop_rx));
            runtime.shutdown_timeout(RUNTIME_SHUTDOWN_GRACE);
            let (flag, cv) = &*done;
            *flag.lock().unwrap_or_else(|e| e.into_inner()) = true;
            cv.notify_all();
        })?;
        Ok(RunningServer {
            url: format!("http://{addr}"),
            addr,
            stop: stop_tx,
            thread: Mutex::new(Some(thread)),
            stopped,
        })
    }

    /// `http://<address>:<port>`, as bound.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Ask the server to stop (drain, then stop) without waiting.
    pub fn request_stop(&self) {
        self.stop.send_replace(true);
    }

    /// Whether it still serves.
    pub fn is_running(&self) -> bool {
        !*self.stopped.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wait until the server has stopped (by `stop`, `request_stop` or the stop route), at most `timeout`.
    /// True once it has stopped.
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        let (flag, cv) = &*self.stopped;
        let guard = flag.lock().unwrap_or_else(|e| e.into_inner());
        let (guard, _) = cv.wait_timeout_while(guard, timeout, |stopped| !*stopped).unwrap_or_else(|e| e.into_inner());
        *guard
    }

    /// Stop: refuse new connections, let requests in flight finish (up to the drain timeout), then join the
    /// server's threads. Idempotent.
    pub fn stop(&self) {
        self.request_stop();
        let thread = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(t) = thread {
            let _ = t.join();
        }
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ServerConfig;
    use std::io::{Read, Write};

    fn request(addr: SocketAddr, path: &str) -> String {
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        write!(stream, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").unwrap();
        let mut out = String::new();
        stream.read_to_string(&mut out).unwrap();
        out
    }

    /// A handler that panics answers 500 with the OpenAI error body, and the server goes on serving.
    #[test]
    fn a_panicking_handler_is_a_500_and_the_server_goes_on() {
        let dir = std::env::temp_dir().join(format!("modelhost-panic-test-{}", std::process::id()));
        let host = Host::new(dir, Default::default()).unwrap();
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let (stop_tx, stop_rx) = watch::channel(false);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let state = AppState::new(Arc::new(host.server_view()), ServerConfig::default(), stop_tx.clone(), true);
        let routes = routes().route(
            "/test/panic",
            get(|| async {
                if std::hint::black_box(true) {
                    panic!("boom");
                }
                "unreachable"
            }),
        );
        let app = layered(routes, state.clone());
        let server = std::thread::spawn(move || runtime.block_on(run(listener, app, state, stop_rx)));
        for _ in 0..3 {
            let answer = request(addr, "/test/panic");
            assert!(answer.starts_with("HTTP/1.1 500"), "{answer}");
            assert!(answer.contains(r#""type":"server_error""#) && answer.contains("boom"), "{answer}");
            let health = request(addr, "/api/modelhost/v1/health");
            assert!(health.starts_with("HTTP/1.1 200"), "{health}");
        }
        stop_tx.send_replace(true);
        server.join().unwrap();
    }
}
