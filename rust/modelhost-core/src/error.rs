//! One error type for the whole core; the bindings map each variant to a Python class.

use std::path::{Path, PathBuf};

/// A boxed error from outside the core, e.g. the exception a progress callback raised.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Everything that can go wrong in the core.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No model in the catalog and no loaded instance answers to this key.
    #[error("no model matches {key:?}{}", suggest(.suggestions))]
    ModelNotFound {
        /// The key as given.
        key: String,
        /// Close matches, best first.
        suggestions: Vec<String>,
    },
    /// A key matches several models.
    #[error("{key:?} is ambiguous: it matches {}", .matches.join(", "))]
    AmbiguousKey {
        /// The key as given.
        key: String,
        /// Every model key it matches.
        matches: Vec<String>,
    },
    /// The model exists but is of the other kind (an embedding model asked for as an LLM, say).
    #[error("{key:?} is an {actual} model, not an {expected} model")]
    WrongKind {
        /// The resolved model key.
        key: String,
        /// The kind the namespace serves.
        expected: &'static str,
        /// The kind of the model.
        actual: &'static str,
    },
    /// `model()` without a key and nothing of that kind is loaded.
    #[error("no {kind} model is loaded")]
    NoModelLoaded {
        /// "llm" or "embedding".
        kind: &'static str,
    },
    /// `load_new_instance` with an identifier that is taken.
    #[error("an instance with identifier {identifier:?} is already loaded")]
    InstanceExists {
        /// The identifier asked for.
        identifier: String,
    },
    /// A request on an instance that was unloaded or evicted.
    #[error("model instance {identifier:?} was unloaded{}", reason.as_ref().map(|r| format!(" ({r})")).unwrap_or_default())]
    ModelUnloaded {
        /// The instance's identifier.
        identifier: String,
        /// Why, when it was not an explicit unload (e.g. "ttl expired").
        reason: Option<String>,
    },
    /// A model file that cannot be loaded: truncated, lying, unsupported.
    #[error("cannot load {}: {reason}", path.display())]
    ModelLoad {
        /// The file or folder.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A bad load or prediction config value, or a bad argument.
    #[error("invalid config: {0}")]
    InvalidConfig(String),
    /// A request's input the model cannot take: a token id outside the vocabulary, an empty prompt.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// A prompt (or input) longer than the context allows.
    #[error("the prompt has {tokens} tokens but the context length is {context_length}")]
    ContextLengthExceeded {
        /// Tokens in the prompt.
        tokens: usize,
        /// The instance's context length.
        context_length: usize,
    },
    /// A load that does not fit the memory budget even after evicting idle instances.
    #[error(
        "loading {key:?} needs {needed} bytes but only {available} of the {budget}-byte budget are free \
         ({in_use} bytes held by instances that cannot be evicted)"
    )]
    InsufficientMemory {
        /// The model being loaded.
        key: String,
        /// The estimate for the load.
        needed: u64,
        /// What is free after every possible eviction.
        available: u64,
        /// The client's budget.
        budget: u64,
        /// What busy or loading instances hold.
        in_use: u64,
    },
    /// `max_loaded` is reached and nothing can be evicted.
    #[error("{loaded} instances are loaded, the maximum is {max_loaded}, and none is idle")]
    TooManyLoaded {
        /// How many are loaded.
        loaded: usize,
        /// The client's limit.
        max_loaded: usize,
    },
    /// A load or a prediction cancelled by its progress callback (the callback's error is the source) or by Ctrl-C.
    #[error("cancelled by the progress callback")]
    Cancelled(#[source] BoxError),
    /// A feature that is recognised but not implemented.
    #[error("not supported: {0}")]
    NotSupported(String),
    /// An I/O error on a file.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The operating system refused a resource the host needs that is not a file (a thread, say).
    #[error("{what}: {source}")]
    System {
        /// What could not be had.
        what: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// An error from the tensor library while running a model.
    #[error("inference failed: {0}")]
    Candle(#[from] candle_core::Error),
    /// The client was closed.
    #[error("the client is closed")]
    Closed,
}

fn suggest(suggestions: &[String]) -> String {
    if suggestions.is_empty() {
        String::new()
    } else {
        format!("; closest matches: {}", suggestions.join(", "))
    }
}

impl Error {
    /// A `ModelLoad` error for `path`.
    pub fn load(path: &Path, reason: impl Into<String>) -> Self {
        Error::ModelLoad { path: path.to_path_buf(), reason: reason.into() }
    }

    /// An `Io` error for `path`.
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        Error::Io { path: path.to_path_buf(), source }
    }

    /// Attach a file to an error raised while reading it: what the file says that cannot run
    /// (`Candle`, `NotSupported`) is a `ModelLoad` error naming the file (SPEC §3).
    pub fn with_path(self, path: &Path) -> Self {
        match self {
            Error::Candle(e) => Error::load(path, e.to_string()),
            Error::NotSupported(reason) => Error::load(path, format!("unsupported: {reason}")),
            other => other,
        }
    }
}

/// The core's result type.
pub type Result<T> = std::result::Result<T, Error>;
