//! Core errors → the Python classes in `modelhost.errors` (polars' pattern: a local wrapper, one
//! exhaustive match, a callback's own exception re-raised unchanged).

use modelhost_core::Error;
use pyo3::exceptions::PyOSError;
use pyo3::{import_exception, PyErr, PyResult};

import_exception!(modelhost.errors, ModelHostError);
import_exception!(modelhost.errors, ModelNotFoundError);
import_exception!(modelhost.errors, ModelKindError);
import_exception!(modelhost.errors, ClientClosedError);
import_exception!(modelhost.errors, NoModelLoadedError);
import_exception!(modelhost.errors, InstanceExistsError);
import_exception!(modelhost.errors, ModelUnloadedError);
import_exception!(modelhost.errors, ModelLoadError);
import_exception!(modelhost.errors, InvalidConfigError);
import_exception!(modelhost.errors, InvalidInputError);
import_exception!(modelhost.errors, InsufficientMemoryError);
import_exception!(modelhost.errors, LoadCancelledError);
import_exception!(modelhost.errors, ContextLengthExceededError);
import_exception!(modelhost.errors, NotSupportedError);

/// A core error or a Python one, on its way to Python.
pub enum PyModelHostError {
    Core(Error),
    Python(PyErr),
}

impl From<Error> for PyModelHostError {
    fn from(e: Error) -> Self {
        PyModelHostError::Core(e)
    }
}

impl From<PyErr> for PyModelHostError {
    fn from(e: PyErr) -> Self {
        PyModelHostError::Python(e)
    }
}

impl From<PyModelHostError> for PyErr {
    fn from(e: PyModelHostError) -> PyErr {
        let err = match e {
            PyModelHostError::Python(e) => return e,
            PyModelHostError::Core(err) => err,
        };
        let msg = err.to_string();
        match err {
            Error::ModelNotFound { .. } | Error::AmbiguousKey { .. } => ModelNotFoundError::new_err(msg),
            Error::WrongKind { .. } => ModelKindError::new_err(msg),
            Error::NoModelLoaded { .. } => NoModelLoadedError::new_err(msg),
            Error::InstanceExists { .. } => InstanceExistsError::new_err(msg),
            Error::ModelUnloaded { .. } => ModelUnloadedError::new_err(msg),
            Error::Closed => ClientClosedError::new_err(msg),
            Error::ModelLoad { .. } => ModelLoadError::new_err(msg),
            Error::InvalidConfig(_) => InvalidConfigError::new_err(msg),
            Error::InvalidInput(_) => InvalidInputError::new_err(msg),
            Error::ContextLengthExceeded { .. } => ContextLengthExceededError::new_err(msg),
            Error::InsufficientMemory { .. } | Error::TooManyLoaded { .. } => InsufficientMemoryError::new_err(msg),
            Error::NotSupported(_) => NotSupportedError::new_err(msg),
            // The callback's own exception (or KeyboardInterrupt) comes back unchanged.
            Error::Cancelled(source) => match source.downcast::<PyErr>() {
                Ok(py_err) => *py_err,
                Err(other) => LoadCancelledError::new_err(format!("load cancelled: {other}")),
            },
            Error::Io { source, .. } | Error::System { source, .. } => {
                PyOSError::new_err((source.raw_os_error().unwrap_or(0), msg))
            }
            Error::Candle(_) => ModelHostError::new_err(msg),
        }
    }
}

/// A result whose error is a core error or a Python one, converted to Python on the way out.
pub type PyModelHostResult<T> = Result<T, PyModelHostError>;

/// `.wrap()` turns a core result into a Python one.
pub trait WrapErr<T> {
    fn wrap(self) -> PyResult<T>;
}

impl<T, E: Into<PyModelHostError>> WrapErr<T> for Result<T, E> {
    fn wrap(self) -> PyResult<T> {
        self.map_err(|e| PyErr::from(e.into()))
    }
}
