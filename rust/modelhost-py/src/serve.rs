//! `serve()`: the HTTP server over a host's instance table, on threads of its own; the GIL is never taken on
//! the request path (nothing there calls Python).

use std::time::Duration;

use modelhost_server::{resolve_api_token, RunningServer, ServerConfig};
use pyo3::exceptions::{PyKeyboardInterrupt, PyOSError, PyValueError};
use pyo3::prelude::*;

use crate::PyHost;

/// How often `wait()` looks for Ctrl-C.
const SIGNAL_POLL: Duration = Duration::from_millis(100);

fn seconds(name: &str, value: Option<f64>) -> PyResult<Option<Duration>> {
    match value {
        None => Ok(None),
        Some(s) if s.is_finite() && s >= 0.0 => Ok(Some(Duration::from_secs_f64(s))),
        Some(s) => Err(PyValueError::new_err(format!("{name} must be a non-negative number of seconds, got {s}"))),
    }
}

/// Start serving `host`'s instance table over HTTP.
#[pyfunction]
#[pyo3(
    signature = (host, address="127.0.0.1".to_string(), port=0, api_token=None, cors=false, max_body_bytes=None,
                 queue_limit=None, drain_timeout=None, default_ttl=Some(3600.0)),
    text_signature = "(host, address='127.0.0.1', port=0, api_token=None, cors=False, max_body_bytes=None, \
                      queue_limit=None, drain_timeout=None, default_ttl=3600.0)"
)]
#[allow(clippy::too_many_arguments)]
pub fn serve(
    py: Python<'_>,
    host: &PyHost,
    address: String,
    port: u16,
    api_token: Option<String>,
    cors: bool,
    max_body_bytes: Option<usize>,
    queue_limit: Option<usize>,
    drain_timeout: Option<f64>,
    default_ttl: Option<f64>,
) -> PyResult<PyServer> {
    let defaults = ServerConfig::default();
    if queue_limit == Some(0) || max_body_bytes == Some(0) {
        return Err(PyValueError::new_err("queue_limit and max_body_bytes must be positive"));
    }
    let config = ServerConfig {
        address,
        port,
        api_token: resolve_api_token(api_token),
        cors,
        max_body_bytes: max_body_bytes.unwrap_or(defaults.max_body_bytes),
        queue_limit: queue_limit.unwrap_or(defaults.queue_limit),
        drain_timeout: seconds("drain_timeout", drain_timeout)?.unwrap_or(defaults.drain_timeout),
        default_ttl: seconds("default_ttl", default_ttl)?,
        worker_threads: defaults.worker_threads,
    };
    let server = py
        .detach(|| RunningServer::start(&host.host, config))
        .map_err(|e| PyOSError::new_err(format!("cannot serve: {e}")))?;
    Ok(PyServer { server })
}

/// A running server.
#[pyclass(name = "Server", module = "modelhost._core", frozen)]
pub struct PyServer {
    server: RunningServer,
}

#[pymethods]
impl PyServer {
    /// `http://<address>:<port>` as bound.
    #[getter]
    fn url(&self) -> &str {
        self.server.url()
    }

    #[getter]
    fn address(&self) -> String {
        self.server.local_addr().ip().to_string()
    }

    #[getter]
    fn port(&self) -> u16 {
        self.server.local_addr().port()
    }

    fn is_running(&self) -> bool {
        self.server.is_running()
    }

    /// Stop: no new connections, requests in flight finish (up to the drain timeout), then the threads join.
    fn stop(&self, py: Python<'_>) {
        py.detach(|| self.server.stop());
    }

    /// Block until the server stops (`stop()` from another thread, or the stop route); True once stopped, False
    /// when `timeout` passed first. Ctrl-C while waiting drains and stops the server, then returns True; another
    /// exception from a signal handler stops it the same way and propagates.
    #[pyo3(signature = (timeout=None))]
    fn wait(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<bool> {
        let deadline = seconds("timeout", timeout)?.map(|t| std::time::Instant::now() + t);
        loop {
            let step = deadline
                .map_or(SIGNAL_POLL, |d| d.saturating_duration_since(std::time::Instant::now()).min(SIGNAL_POLL));
            if py.detach(|| self.server.wait_timeout(step)) {
                return Ok(true);
            }
            if let Err(e) = py.check_signals() {
                py.detach(|| self.server.stop());
                return if e.is_instance_of::<PyKeyboardInterrupt>(py) { Ok(true) } else { Err(e) };
            }
            if deadline.is_some_and(|d| std::time::Instant::now() >= d) {
                return Ok(false);
            }
        }
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (*_args))]
    fn __exit__(&self, py: Python<'_>, _args: &Bound<'_, pyo3::types::PyTuple>) {
        self.stop(py);
    }

    fn __repr__(&self) -> String {
        format!("Server(url={:?}, running={})", self.server.url(), self.server.is_running())
    }
}
