//! `modelhost._core`: thin PyO3 bindings over modelhost-core. Arguments are extracted while attached,
//! the core runs detached (GIL released), results are converted afterwards. No logic lives here.

mod convert;
mod error;
mod serve;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use modelhost_core::{
    BoxError, CatalogEntry, ChatMessage, Error, Generation, Host, HostOptions, InstanceHandle, LoadConfig, LoadRequest,
    LoadedBy, ModelKind, Progress, Prompt,
};
use numpy::{ndarray::Array2, PyArray2};
use pyo3::exceptions::{PyStopIteration, PyTypeError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

use crate::convert::{from_py, to_py};
use crate::error::{PyModelHostResult, WrapErr};

/// `[{"role", "content"}, ...]` as core chat messages.
fn chat_messages(messages: &Bound<'_, PyAny>) -> PyResult<Vec<ChatMessage>> {
    let mut msgs = Vec::new();
    for m in messages.try_iter()? {
        let m = m?;
        let field = |name: &str| -> PyResult<String> {
            m.get_item(name)
                .map_err(|_| PyTypeError::new_err(format!("chat messages need a {name:?} key")))?
                .extract::<String>()
        };
        msgs.push(ChatMessage { role: field("role")?, content: field("content")? });
    }
    Ok(msgs)
}

fn kind(s: &str) -> PyModelHostResult<ModelKind> {
    Ok(ModelKind::parse(s)?)
}

/// A load on behalf of the host's own client (`None`), the CLI or the server.
fn load_request<'a>(
    ttl: Option<Duration>,
    config: LoadConfig,
    progress: Progress<'a>,
    no_hup: bool,
    loaded_by: Option<&str>,
) -> modelhost_core::Result<LoadRequest<'a>> {
    let mut req = LoadRequest::new(ttl, config, progress);
    req.no_hup = no_hup;
    req.loaded_by = match loaded_by {
        None | Some("client") => None,
        Some("cli") => Some(LoadedBy::Cli),
        Some("server") => Some(LoadedBy::Server),
        Some(other) => {
            return Err(Error::InvalidConfig(format!(
                "loaded_by must be \"client\", \"cli\" or \"server\", got {other:?}"
            )))
        }
    };
    Ok(req)
}

fn ttl(seconds: Option<f64>) -> PyModelHostResult<Option<Duration>> {
    match seconds {
        None => Ok(None),
        Some(s) if s.is_finite() && s >= 0.0 => Ok(Some(Duration::from_secs_f64(s))),
        Some(s) => Err(Error::InvalidConfig(format!("ttl must be a non-negative number of seconds, got {s}")).into()),
    }
}

/// A progress callback for the core: attaches, checks for Ctrl-C, then calls the user's function (if any). A Python
/// exception goes back boxed, to be re-raised unchanged.
fn progress_callback(callback: Option<&Py<PyAny>>) -> impl FnMut(f32) -> Result<(), BoxError> + '_ {
    move |fraction: f32| -> Result<(), BoxError> {
        // `try_attach` is None while the interpreter shuts down: then just go on.
        Python::try_attach(|py| -> PyResult<()> {
            py.check_signals()?;
            if let Some(cb) = callback {
                cb.call1(py, (fraction,))?;
            }
            Ok(())
        })
        .unwrap_or(Ok(()))
        .map_err(|e| Box::new(e) as BoxError)
    }
}

/// Run a load with a progress callback (`progress_callback`).
fn with_progress<T: Send>(
    py: Python<'_>,
    callback: Option<Py<PyAny>>,
    run: impl FnOnce(Progress<'_>) -> modelhost_core::Result<T> + Send,
) -> PyResult<T> {
    py.detach(move || {
        let mut cb = progress_callback(callback.as_ref());
        run(Progress::new(Some(&mut cb)))
    })
    .wrap()
}

fn entry_dict(py: Python<'_>, e: &CatalogEntry) -> PyResult<Py<PyAny>> {
    let d = PyDict::new(py);
    d.set_item("model_key", &e.model_key)?;
    d.set_item("type", e.kind.as_str())?;
    d.set_item("format", e.format.as_str())?;
    d.set_item("path", e.path.display().to_string())?;
    d.set_item("size_bytes", e.size_bytes)?;
    d.set_item("architecture", &e.architecture)?;
    d.set_item("params_string", &e.params_string)?;
    d.set_item("quantization", &e.quantization)?;
    d.set_item("max_context_length", e.max_context_length)?;
    d.set_item("display_name", &e.display_name)?;
    d.set_item("trained_for_tool_use", e.trained_for_tool_use)?;
    Ok(d.into_any().unbind())
}

/// A catalog (models dir) and the limits its loads obey, viewing an instance table: the process's shared one, or
/// a private one (`isolated`). One per `Client`.
#[pyclass(name = "Host", module = "modelhost._core", frozen)]
pub(crate) struct PyHost {
    pub(crate) host: Host,
    models_dir: String,
    isolated: bool,
}

#[pymethods]
impl PyHost {
    #[new]
    #[pyo3(signature = (models_dir, memory_budget=None, max_loaded=None, auto_evict=true, isolated=true))]
    fn new(
        models_dir: String,
        memory_budget: Option<u64>,
        max_loaded: Option<usize>,
        auto_evict: bool,
        isolated: bool,
    ) -> PyResult<Self> {
        let options = HostOptions { memory_budget, max_loaded, auto_evict };
        let dir = PathBuf::from(&models_dir);
        let host = if isolated { Host::new(dir, options) } else { Host::shared(dir, options) }.wrap()?;
        Ok(PyHost { host, models_dir, isolated })
    }

    #[getter]
    fn models_dir(&self) -> &str {
        &self.models_dir
    }

    #[getter]
    fn isolated(&self) -> bool {
        self.isolated
    }

    /// The id this host's own loads are recorded under (`info()["client_id"]`).
    #[getter]
    fn client_id(&self) -> Option<&str> {
        self.host.client_id()
    }

    #[pyo3(signature = (kind=None))]
    fn list_downloaded(&self, py: Python<'_>, kind: Option<&str>) -> PyResult<Vec<Py<PyAny>>> {
        let kind = kind.map(self::kind).transpose()?;
        let entries = py.detach(|| self.host.catalog().list(kind));
        entries.iter().map(|e| entry_dict(py, e)).collect()
    }

    #[pyo3(signature = (kind, key, ttl, config, on_progress, no_hup=false, loaded_by=None))]
    #[allow(clippy::too_many_arguments)]
    fn model(
        &self,
        py: Python<'_>,
        kind: &str,
        key: Option<String>,
        ttl: Option<f64>,
        config: &Bound<'_, PyAny>,
        on_progress: Option<Py<PyAny>>,
        no_hup: bool,
        loaded_by: Option<String>,
    ) -> PyResult<PyInstance> {
        let (kind, ttl) = (self::kind(kind)?, self::ttl(ttl)?);
        let config = LoadConfig::from_json(&from_py(config)?).wrap()?;
        let handle = with_progress(py, on_progress, |progress| {
            let req = load_request(ttl, config, progress, no_hup, loaded_by.as_deref())?;
            self.host.model(kind, key.as_deref(), req)
        })?;
        Ok(PyInstance { handle })
    }

    #[pyo3(signature = (kind, key, identifier, ttl, config, on_progress, no_hup=false, loaded_by=None))]
    #[allow(clippy::too_many_arguments)]
    fn load_new_instance(
        &self,
        py: Python<'_>,
        kind: &str,
        key: String,
        identifier: Option<String>,
        ttl: Option<f64>,
        config: &Bound<'_, PyAny>,
        on_progress: Option<Py<PyAny>>,
        no_hup: bool,
        loaded_by: Option<String>,
    ) -> PyResult<PyInstance> {
        let (kind, ttl) = (self::kind(kind)?, self::ttl(ttl)?);
        let config = LoadConfig::from_json(&from_py(config)?).wrap()?;
        let handle = with_progress(py, on_progress, |progress| {
            let req = load_request(ttl, config, progress, no_hup, loaded_by.as_deref())?;
            self.host.load_new_instance(kind, &key, identifier.as_deref(), req)
        })?;
        Ok(PyInstance { handle })
    }

    #[pyo3(signature = (kind=None))]
    fn list_loaded(&self, py: Python<'_>, kind: Option<&str>) -> PyResult<Vec<PyInstance>> {
        let kind = kind.map(self::kind).transpose()?;
        Ok(py.detach(|| self.host.list_loaded(kind)).into_iter().map(|handle| PyInstance { handle }).collect())
    }

    fn unload(&self, py: Python<'_>, kind: Option<&str>, key_or_identifier: String) -> PyResult<Vec<String>> {
        let kind = kind.map(self::kind).transpose()?;
        py.detach(|| self.host.unload(kind, &key_or_identifier)).wrap()
    }

    fn estimate(&self, py: Python<'_>, kind: &str, key: String, config: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        let kind = self::kind(kind)?;
        let config = LoadConfig::from_json(&from_py(config)?).wrap()?;
        let e = py.detach(|| self.host.estimate(kind, &key, &config)).wrap()?;
        let d = PyDict::new(py);
        d.set_item("weights_bytes", e.weights_bytes)?;
        d.set_item("kv_cache_bytes", e.kv_cache_bytes)?;
        d.set_item("scratch_bytes", e.scratch_bytes)?;
        d.set_item("total_bytes", e.total_bytes)?;
        let per_device = PyDict::new(py);
        for (device, bytes) in &e.per_device {
            per_device.set_item(device, bytes)?;
        }
        d.set_item("per_device", per_device)?;
        Ok(d.into_any().unbind())
    }

    fn close(&self, py: Python<'_>) {
        py.detach(|| self.host.close());
    }
}

/// A handle on one loaded instance.
#[pyclass(name = "Instance", module = "modelhost._core", frozen)]
struct PyInstance {
    handle: InstanceHandle,
}

#[pymethods]
impl PyInstance {
    #[getter]
    fn identifier(&self) -> &str {
        &self.handle.identifier
    }

    #[getter]
    fn model_key(&self) -> &str {
        &self.handle.model_key
    }

    #[getter]
    fn kind(&self) -> &str {
        self.handle.kind.as_str()
    }

    #[getter]
    fn instance_reference(&self) -> &str {
        &self.handle.reference
    }

    fn is_loaded(&self, py: Python<'_>) -> bool {
        py.detach(|| self.handle.is_loaded())
    }

    fn info(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let v = py.detach(|| self.handle.info()).wrap()?;
        to_py(py, &v)
    }

    fn load_config(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let v = py.detach(|| self.handle.load_config()).wrap()?;
        to_py(py, &v)
    }

    fn unload(&self, py: Python<'_>) {
        py.detach(|| self.handle.unload());
    }

    fn tokenize(&self, py: Python<'_>, text: String) -> PyResult<Vec<u32>> {
        py.detach(|| self.handle.tokenize(&text)).wrap()
    }

    fn detokenize(&self, py: Python<'_>, tokens: Vec<u32>) -> PyResult<String> {
        py.detach(|| self.handle.detokenize(&tokens)).wrap()
    }

    fn context_length(&self, py: Python<'_>) -> PyResult<usize> {
        py.detach(|| self.handle.context_length()).wrap()
    }

    fn apply_template(
        &self,
        py: Python<'_>,
        messages: &Bound<'_, PyAny>,
        add_generation_prompt: bool,
    ) -> PyResult<String> {
        let msgs = chat_messages(messages)?;
        py.detach(|| self.handle.apply_template(&msgs, add_generation_prompt)).wrap()
    }

    #[pyo3(signature = (messages, config, on_prompt_progress=None))]
    fn generate_chat(
        &self,
        py: Python<'_>,
        messages: &Bound<'_, PyAny>,
        config: &Bound<'_, PyAny>,
        on_prompt_progress: Option<Py<PyAny>>,
    ) -> PyResult<PyGeneration> {
        self.start(py, Prompt::Chat(chat_messages(messages)?), config, on_prompt_progress)
    }

    #[pyo3(signature = (prompt, config, on_prompt_progress=None))]
    fn generate(
        &self,
        py: Python<'_>,
        prompt: &Bound<'_, PyAny>,
        config: &Bound<'_, PyAny>,
        on_prompt_progress: Option<Py<PyAny>>,
    ) -> PyResult<PyGeneration> {
        let prompt = match prompt.extract::<String>() {
            Ok(text) => Prompt::Text(text),
            Err(_) => Prompt::Tokens(prompt.extract::<Vec<u32>>()?),
        };
        self.start(py, prompt, config, on_prompt_progress)
    }

    fn evaluate<'py>(&self, py: Python<'py>, tokens: Vec<u32>) -> PyResult<Bound<'py, PyArray2<f32>>> {
        let (logits, vocab) = py.detach(|| self.handle.evaluate(&tokens)).wrap()?;
        let array = Array2::from_shape_vec((tokens.len(), vocab), logits)
            .map_err(|e| Error::InvalidConfig(e.to_string()))
            .wrap()?;
        Ok(PyArray2::from_owned_array(py, array))
    }

    fn embed<'py>(&self, py: Python<'py>, texts: Vec<String>) -> PyResult<Bound<'py, PyArray2<f32>>> {
        let (vectors, dim) = py
            .detach(|| {
                let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
                self.handle.embed(&refs)
            })
            .wrap()?;
        let array = Array2::from_shape_vec((texts.len(), dim), vectors)
            .map_err(|e| Error::InvalidConfig(e.to_string()))
            .wrap()?;
        Ok(PyArray2::from_owned_array(py, array))
    }
}

impl PyInstance {
    fn start(
        &self,
        py: Python<'_>,
        prompt: Prompt,
        config: &Bound<'_, PyAny>,
        on_prompt_progress: Option<Py<PyAny>>,
    ) -> PyResult<PyGeneration> {
        let config = from_py(config)?;
        let generation = py.detach(|| self.handle.generate(prompt, &config)).wrap()?;
        Ok(PyGeneration { cancel: generation.cancel_flag(), generation: Mutex::new(generation), on_prompt_progress })
    }
}

/// A running prediction; iterating yields fragments.
#[pyclass(name = "Generation", module = "modelhost._core", frozen)]
struct PyGeneration {
    generation: Mutex<Generation>,
    cancel: Arc<AtomicBool>,
    /// Called by the core while it processes the prompt (LM Studio's `on_prompt_processing_progress`).
    on_prompt_progress: Option<Py<PyAny>>,
}

fn fragment_dict(py: Python<'_>, content: &str, tokens: &[u32]) -> PyResult<Py<PyAny>> {
    let d = PyDict::new(py);
    d.set_item("content", content)?;
    d.set_item("tokens", PyList::new(py, tokens)?)?;
    Ok(d.into_any().unbind())
}

#[pymethods]
impl PyGeneration {
    fn __iter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __next__(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let next = py
            .detach(|| {
                let mut on_progress = progress_callback(self.on_prompt_progress.as_ref());
                let mut generation = self.generation.lock().unwrap_or_else(|e| e.into_inner());
                generation.next_fragment_with_progress(Some(&mut on_progress))
            })
            .wrap()?;
        match next {
            Some(f) => fragment_dict(py, &f.content, &f.tokens),
            None => Err(PyStopIteration::new_err(())),
        }
    }

    fn cancel(&self) {
        self.cancel.store(true, Ordering::Relaxed);
    }

    fn result(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let (content, tokens, stats) = py
            .detach(|| -> modelhost_core::Result<_> {
                let mut on_progress = progress_callback(self.on_prompt_progress.as_ref());
                let mut g = self.generation.lock().unwrap_or_else(|e| e.into_inner());
                g.finish(Some(&mut on_progress))?;
                Ok((g.content().to_string(), g.tokens().to_vec(), g.stats()))
            })
            .wrap()?;
        let d = fragment_dict(py, &content, &tokens)?;
        let s = PyDict::new(py);
        s.set_item("prompt_tokens_count", stats.prompt_tokens_count)?;
        s.set_item("predicted_tokens_count", stats.predicted_tokens_count)?;
        s.set_item("total_tokens_count", stats.prompt_tokens_count + stats.predicted_tokens_count)?;
        s.set_item("time_to_first_token_sec", stats.time_to_first_token_sec)?;
        s.set_item("tokens_per_second", stats.tokens_per_second)?;
        s.set_item("stop_reason", stats.stop_reason.as_str())?;
        d.bind(py).set_item("stats", s)?;
        Ok(d)
    }
}

/// How many distinct model files are memory-mapped right now.
#[pyfunction]
fn mapped_file_count() -> usize {
    modelhost_core::storage::mapped_file_count()
}

/// Parse and validate a GGUF header (metadata arrays elided).
#[pyfunction]
fn parse_gguf_header(py: Python<'_>, path: PathBuf) -> PyResult<Py<PyAny>> {
    let header = py.detach(|| modelhost_core::formats::gguf::read_summary(&path)).wrap()?;
    convert::header_to_py(py, &header)
}

#[pymodule]
mod _core {
    #[pymodule_export]
    use super::serve::{serve, PyServer};
    #[pymodule_export]
    use super::{mapped_file_count, parse_gguf_header, PyGeneration, PyHost, PyInstance};

    #[pymodule_init]
    fn init(m: &pyo3::Bound<'_, pyo3::types::PyModule>) -> pyo3::PyResult<()> {
        use pyo3::types::PyModuleMethods;
        m.add("__version__", env!("CARGO_PKG_VERSION"))
    }
}
