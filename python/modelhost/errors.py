"""Exceptions and warnings raised by modelhost.

Every error derives from :class:`ModelHostError` and also from the builtin a Python user would reach for first, so
``except LookupError`` or ``except ValueError`` keep working for code that does not know modelhost. The Rust core
raises these exact classes (it imports this module), so the names are part of the binding contract.

Choices worth knowing:

* :class:`ModelLoadError` is a ``ValueError``, as llama-cpp-python and safetensors report bad files: the file's
  *content* is wrong. A file that cannot be opened at all raises the builtin ``OSError`` subclasses unchanged
  (``FileNotFoundError``, ``PermissionError``).
* :class:`ModelUnloadedError` is a ``RuntimeError``: the handle is used after its instance went away.
* :class:`LoadCancelledError` is a ``RuntimeError``. A load cancelled by an exception in the progress callback
  re-raises *that* exception unchanged, and Ctrl-C re-raises ``KeyboardInterrupt``; this class is for the other
  cancellations (e.g. the client was closed while loading).
* :class:`NotSupportedError` is an :class:`InvalidConfigError`: an LM Studio option that modelhost recognises but
  does not implement yet, given at a non-default value.
* :class:`InvalidInputError` is a ``ValueError`` about a request's input (a token id outside the vocabulary), not
  about a config. A resource the operating system refuses (a thread that cannot start) is the builtin ``OSError``.
"""

from __future__ import annotations

__all__ = [
    "ClientClosedError",
    "ContextLengthExceededError",
    "InstanceExistsError",
    "InsufficientMemoryError",
    "InvalidConfigError",
    "InvalidInputError",
    "LoadCancelledError",
    "ModelHostError",
    "ModelKindError",
    "ModelLoadError",
    "ModelNotFoundError",
    "ModelUnloadedError",
    "NoModelLoadedError",
    "NotSupportedError",
    "PlacementWarning",
]


class ModelHostError(Exception):
    """Base class of every modelhost error."""


class ModelNotFoundError(ModelHostError, LookupError):
    """No model in the catalog and no loaded instance answers to the key, or the key is ambiguous.

    The message lists the closest matches.
    """


class ModelKindError(ModelNotFoundError):
    """The key names a model of the other kind (an embedding model asked for through ``client.llm``)."""


class NoModelLoadedError(ModelHostError, LookupError):
    """``model()`` was called without a key and no model of that kind is loaded."""


class InstanceExistsError(ModelHostError, ValueError):
    """``load_new_instance`` was given an identifier that a loaded instance already has."""


class ModelUnloadedError(ModelHostError, RuntimeError):
    """The handle's instance was unloaded (explicitly, by TTL or by eviction)."""


class ModelLoadError(ModelHostError, ValueError):
    """A model file or folder cannot be loaded: truncated, malformed, lying header or unsupported. Names the file."""


class InvalidConfigError(ModelHostError, ValueError):
    """A bad load or prediction config key or value, or a bad argument."""


class InvalidInputError(ModelHostError, ValueError):
    """A request's input the model cannot take: a token id outside the vocabulary, an empty prompt."""


class NotSupportedError(InvalidConfigError):
    """An option that modelhost recognises but does not support yet, given at a non-default value."""


class InsufficientMemoryError(ModelHostError, MemoryError):
    """A load does not fit the memory budget (or ``max_loaded``) even after evicting idle instances."""


class LoadCancelledError(ModelHostError, RuntimeError):
    """A load was cancelled by something other than an exception from the progress callback."""


class ContextLengthExceededError(ModelHostError, ValueError):
    """The input has more tokens than the instance's context length."""


class ClientClosedError(ModelUnloadedError):
    """The client was closed (so every instance it held is unloaded)."""


class PlacementWarning(UserWarning):
    """The requested GPU placement could not be honoured; the model was placed as ``get_info()`` shows."""
