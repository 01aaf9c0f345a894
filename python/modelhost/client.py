"""The ``Client``: a models directory plus the table of loaded instances, with ``llm`` and ``embedding`` namespaces."""

from __future__ import annotations

import os
import sys
import threading
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Generic, TypeVar

from . import _core
from .config import DEFAULT_TTL, EmbeddingLoadModelConfig, LlmLoadModelConfig, load_config_to_core
from .errors import InvalidConfigError, ModelUnloadedError, PlacementWarning
from .handles import LLM, AnyModelHandle, EmbeddingModel, ModelHandle
from .models import DownloadedModel, MemoryEstimate

__all__ = [
    "DEFAULT_TTL",
    "Client",
    "EmbeddingNamespace",
    "LlmNamespace",
    "ModelLoadingCallback",
    "default_models_dir",
]

ModelLoadingCallback = Callable[[float], Any]
"""Load progress: 0.0 first, then increasing values as weights land, exactly 1.0 last."""

_KINDS = ("llm", "embedding")

_H = TypeVar("_H", bound=ModelHandle)
_C = TypeVar("_C", LlmLoadModelConfig, EmbeddingLoadModelConfig)


def default_models_dir() -> Path:
    """``$MODELHOST_MODELS_DIR``, else ``~/.cache/modelhost/models``."""
    env = os.environ.get("MODELHOST_MODELS_DIR")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "modelhost" / "models"


_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def _caller_stacklevel() -> int:
    """The ``stacklevel`` that attributes a warning to the first frame outside this package (the user's call)."""
    frame = sys._getframe(1)
    level = 1
    while frame.f_back is not None and os.path.dirname(os.path.abspath(frame.f_code.co_filename)) == _PACKAGE_DIR:
        frame = frame.f_back
        level += 1
    return level


def _check_kind(kind: str | None) -> str | None:
    if kind is not None and kind not in _KINDS:
        raise ValueError(f"kind must be 'llm', 'embedding' or None, got {kind!r}")
    return kind


def _check_key(key: object, what: str = "model key") -> str:
    if isinstance(key, os.PathLike):
        key = os.fspath(key)
    if not isinstance(key, str):
        raise TypeError(f"{what} must be a str, got {type(key).__name__}")
    return key


def _check_ttl(ttl: object) -> float | None:
    if ttl is None:
        return None
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)):
        raise TypeError(f"ttl must be a number of seconds or None, got {type(ttl).__name__}")
    if not ttl >= 0:  # also catches nan
        raise InvalidConfigError(f"ttl must be a non-negative number of seconds or None, got {ttl!r}")
    return float(ttl)


def _check_progress(callback: object) -> Callable[[float], object] | None:
    if callback is not None and not callable(callback):
        raise TypeError(f"on_load_progress must be callable, got {type(callback).__name__}")
    return callback


class _HandleFactory:
    """Wraps core instances in handles, and reports the first time an instance is seen a GPU placement it could not
    honour (a ``PlacementWarning``, attributed to the user's call)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._placement_checked: set[str] = set()

    def wrap(self, instance: _core.Instance, handle_type: type[_H]) -> _H:
        """A handle of ``handle_type`` on ``instance``."""
        reference = instance.instance_reference
        if reference not in self._placement_checked:
            with self._lock:
                first = reference not in self._placement_checked
                self._placement_checked.add(reference)
            if first:
                try:
                    message = instance.info().get("placement_warning")
                except ModelUnloadedError:  # evicted or unloaded by another thread meanwhile
                    message = None
                if message:
                    warnings.warn(str(message), PlacementWarning, stacklevel=_caller_stacklevel())
        return handle_type(instance)

    def wrap_any(self, instance: _core.Instance) -> AnyModelHandle:
        """A handle of the instance's kind."""
        if instance.kind == "llm":
            return self.wrap(instance, LLM)
        return self.wrap(instance, EmbeddingModel)


class _Namespace(Generic[_H, _C]):
    """Operations on one kind of model; ``client.llm`` and ``client.embedding`` are the two instances.

    It holds what it works with, the core host and the client's handle factory, not the client.
    """

    _kind: str
    _handle_type: type[_H]

    def __init__(self, host: _core.Host, handles: _HandleFactory) -> None:
        self._host = host
        self._handles = handles

    def model(
        self,
        key: str | None = None,
        /,
        *,
        ttl: float | None = DEFAULT_TTL,
        config: _C | Mapping[str, Any] | None = None,
        on_load_progress: ModelLoadingCallback | None = None,
    ) -> _H:
        """Get a loaded instance of a model, loading it if there is none.

        With a key that names a model in the catalog: its most recently used loaded instance (ttl and config
        untouched), else it is loaded with ``ttl``/``config``. Else, a key that is a loaded instance's identifier
        gives that instance. Without a key: any loaded model of this kind. Concurrent calls load once.

        Args:
            key: Model key, unique suffix of one, absolute path, or instance identifier; None for any loaded model.
            ttl: Idle seconds before automatic unload (None: never); applies only if this call loads.
            config: Load config (dataclass, or dict with camelCase or snake_case keys); applies only if this loads.
            on_load_progress: Called with the load's progress (0.0 first, exactly 1.0 last). If it raises, the load
                is cancelled and the exception propagates.

        Returns:
            A handle on the instance.

        Raises:
            ModelNotFoundError: Unknown or ambiguous key, or a model of the other kind.
            NoModelLoadedError: No key and nothing of this kind loaded.
            ModelLoadError: The model's files are bad.
            InvalidConfigError: A bad config.
            InsufficientMemoryError: The load does not fit the memory budget.
        """
        core_config = load_config_to_core(config, self._kind)
        instance = self._host.model(
            self._kind,
            None if key is None else _check_key(key),
            _check_ttl(ttl),
            core_config,
            _check_progress(on_load_progress),
        )
        return self._handles.wrap(instance, self._handle_type)

    def load_new_instance(
        self,
        key: str,
        instance_identifier: str | None = None,
        *,
        ttl: float | None = DEFAULT_TTL,
        config: _C | Mapping[str, Any] | None = None,
        on_load_progress: ModelLoadingCallback | None = None,
    ) -> _H:
        """Load a new instance of a model, even if one is loaded (instances of one file share its weights).

        Args:
            key: Model key, unique suffix of one, or absolute path.
            instance_identifier: Identifier of the new instance; by default the model key for the first instance,
                then ``key:2``, ``key:3``, ...
            ttl: Idle seconds before automatic unload (None: never).
            config: Load config (dataclass, or dict with camelCase or snake_case keys).
            on_load_progress: As for :meth:`model`.

        Returns:
            A handle on the new instance.

        Raises:
            InstanceExistsError: The identifier is taken (nothing changes).
            ModelNotFoundError, ModelLoadError, InvalidConfigError, InsufficientMemoryError: As for :meth:`model`.
        """
        identifier = None if instance_identifier is None else _check_key(instance_identifier, "instance_identifier")
        core_config = load_config_to_core(config, self._kind)
        instance = self._host.load_new_instance(
            self._kind, _check_key(key), identifier, _check_ttl(ttl), core_config, _check_progress(on_load_progress)
        )
        return self._handles.wrap(instance, self._handle_type)

    def list_loaded(self) -> list[_H]:
        """Handles on every loaded instance of this kind."""
        return [self._handles.wrap(i, self._handle_type) for i in self._host.list_loaded(self._kind)]

    def unload(self, key_or_identifier: str) -> None:
        """Unload an instance, by identifier (or by model key: its instances).

        Raises:
            ModelNotFoundError: Nothing loaded answers to it.
        """
        self._host.unload(self._kind, _check_key(key_or_identifier))

    def estimate(self, key: str, config: _C | Mapping[str, Any] | None = None) -> MemoryEstimate:
        """The memory a load of ``key`` with ``config`` would take (what the memory budget checks), without loading.

        Raises:
            ModelNotFoundError, ModelLoadError, InvalidConfigError: As for :meth:`model`.
        """
        core_config = load_config_to_core(config, self._kind)
        return MemoryEstimate._from_core(self._host.estimate(self._kind, _check_key(key), core_config))

    def list_downloaded(self) -> list[DownloadedModel]:
        """The models of this kind in the models directory."""
        return [DownloadedModel._from_core(entry, self) for entry in self._host.list_downloaded(self._kind)]

    def __repr__(self) -> str:
        return f"<{type(self).__name__} of models_dir={self._host.models_dir!r}>"


class LlmNamespace(_Namespace[LLM, LlmLoadModelConfig]):
    """``client.llm``: language models."""

    _kind = "llm"
    _handle_type = LLM


class EmbeddingNamespace(_Namespace[EmbeddingModel, EmbeddingLoadModelConfig]):
    """``client.embedding``: embedding models."""

    _kind = "embedding"
    _handle_type = EmbeddingModel


class Client:
    """Hosts models in this process: a models directory (the catalog) and the loaded instances.

    Use it as a context manager, or call :meth:`close`: closing unloads everything.

    Example:
        >>> with Client() as client:  # doctest: +SKIP
        ...     llm = client.llm.model("smollm2-135m-instruct")
        ...     print(llm.respond("Hello!"))
    """

    def __init__(
        self,
        models_dir: str | os.PathLike[str] | None = None,
        *,
        memory_budget: int | None = None,
        max_loaded: int | None = None,
        auto_evict: bool = True,
    ) -> None:
        """Open a client.

        Args:
            models_dir: Where models live (``<publisher>/<repo>/<files>``); default ``$MODELHOST_MODELS_DIR``,
                else ``~/.cache/modelhost/models``.
            memory_budget: Bytes that loaded instances may take in all (None: no limit).
            max_loaded: Most instances loaded at once (None: no limit).
            auto_evict: Make room for a load by unloading idle instances, least recently used first.
        """
        for name, value in (("memory_budget", memory_budget), ("max_loaded", max_loaded)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise TypeError(f"{name} must be an int or None, got {type(value).__name__}")
        if not isinstance(auto_evict, bool):
            raise TypeError(f"auto_evict must be a bool, got {type(auto_evict).__name__}")
        directory = default_models_dir() if models_dir is None else Path(os.fspath(models_dir)).expanduser()
        self._host = _core.Host(str(directory), memory_budget, max_loaded, auto_evict)
        self._handles = _HandleFactory()
        self.llm = LlmNamespace(self._host, self._handles)
        self.embedding = EmbeddingNamespace(self._host, self._handles)

    @property
    def models_dir(self) -> str:
        """The models directory."""
        return self._host.models_dir

    def list_downloaded_models(self, kind: str | None = None) -> list[DownloadedModel]:
        """The models in the models directory, from their headers only (nothing is loaded).

        Args:
            kind: "llm", "embedding" or None for both.
        """
        entries = self._host.list_downloaded(_check_kind(kind))
        return [
            DownloadedModel._from_core(entry, self.llm if entry.get("type") == "llm" else self.embedding)
            for entry in entries
        ]

    def list_loaded_models(self, kind: str | None = None) -> list[AnyModelHandle]:
        """Handles on the loaded instances.

        Args:
            kind: "llm", "embedding" or None for both.
        """
        return [self._handles.wrap_any(i) for i in self._host.list_loaded(_check_kind(kind))]

    def close(self) -> None:
        """Unload everything and stop the TTL thread. Closing twice is a no-op."""
        self._host.close()

    def __enter__(self) -> Client:
        """Use the client in a ``with`` block; leaving it closes the client."""
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Close the client."""
        self.close()

    def __repr__(self) -> str:
        """``Client(models_dir='...')``."""
        return f"{type(self).__name__}(models_dir={self.models_dir!r})"
