"""The ``Client``: a catalog and the process's loaded instances (or a server's), with ``llm`` and ``embedding``
namespaces.

The same classes run in-process (on the Rust core's host) and against a `modelhost serve` process (on the remote
backend, `_remote`): both implement `_backend.HostBackend`.
"""

from __future__ import annotations

import os
import sys
import threading
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Generic, TypeVar

from . import _core, _remote
from ._backend import HostBackend, InstanceBackend
from .config import DEFAULT_TTL, EmbeddingLoadModelConfig, LlmLoadModelConfig, load_config_to_core
from .errors import InvalidConfigError, ModelHostError, ModelUnloadedError, PlacementWarning
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


def _check_no_hup(no_hup: object) -> bool:
    if not isinstance(no_hup, bool):
        raise TypeError(f"no_hup must be a bool, got {type(no_hup).__name__}")
    return no_hup


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

    def wrap(self, instance: InstanceBackend, handle_type: type[_H]) -> _H:
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

    def wrap_any(self, instance: InstanceBackend) -> AnyModelHandle:
        """A handle of the instance's kind."""
        if instance.kind == "llm":
            return self.wrap(instance, LLM)
        return self.wrap(instance, EmbeddingModel)


class _Namespace(Generic[_H, _C]):
    """Operations on one kind of model; ``client.llm`` and ``client.embedding`` are the two instances.

    It holds what it works with, the host (in-process or remote) and the client's handle factory, not the client.
    """

    _kind: str
    _handle_type: type[_H]

    def __init__(self, host: HostBackend, handles: _HandleFactory, loaded_by: str | None = None) -> None:
        self._host = host
        self._handles = handles
        self._loaded_by = loaded_by

    def model(
        self,
        key: str | None = None,
        /,
        *,
        ttl: float | None = DEFAULT_TTL,
        config: _C | Mapping[str, Any] | None = None,
        on_load_progress: ModelLoadingCallback | None = None,
        no_hup: bool = False,
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
            no_hup: If this call loads, the instance outlives this client (``close()`` leaves it loaded), as LM
                Studio's ``noHup``.

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
            _check_no_hup(no_hup),
            self._loaded_by,
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
        no_hup: bool = False,
    ) -> _H:
        """Load a new instance of a model, even if one is loaded (instances of one file share its weights).

        Args:
            key: Model key, unique suffix of one, or absolute path.
            instance_identifier: Identifier of the new instance; by default the model key for the first instance,
                then ``key:2``, ``key:3``, ...
            ttl: Idle seconds before automatic unload (None: never).
            config: Load config (dataclass, or dict with camelCase or snake_case keys).
            on_load_progress: As for :meth:`model`.
            no_hup: The instance outlives this client (``close()`` leaves it loaded).

        Returns:
            A handle on the new instance.

        Raises:
            InstanceExistsError: The identifier is taken (nothing changes).
            ModelNotFoundError, ModelLoadError, InvalidConfigError, InsufficientMemoryError: As for :meth:`model`.
        """
        identifier = None if instance_identifier is None else _check_key(instance_identifier, "instance_identifier")
        core_config = load_config_to_core(config, self._kind)
        instance = self._host.load_new_instance(
            self._kind,
            _check_key(key),
            identifier,
            _check_ttl(ttl),
            core_config,
            _check_progress(on_load_progress),
            _check_no_hup(no_hup),
            self._loaded_by,
        )
        return self._handles.wrap(instance, self._handle_type)

    def list_loaded(self) -> list[_H]:
        """Handles on every loaded instance of this kind in the process (or on the server), whoever loaded it."""
        return [self._handles.wrap(i, self._handle_type) for i in self._host.list_loaded(self._kind)]

    def unload(self, key_or_identifier: str) -> list[str]:
        """Unload an instance, by identifier (or by model key: its instances), whoever loaded it.

        Returns:
            The identifiers unloaded.

        Raises:
            ModelNotFoundError: Nothing loaded answers to it.
        """
        return self._host.unload(self._kind, _check_key(key_or_identifier))

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
    """A catalog and the loaded instances: this process's, or a ``modelhost serve`` server's.

    In-process (the default), every ``Client()`` of the process sees one instance table, one TTL thread and one
    memory accounting, as every LM Studio client sees the app's loaded models: ``client.llm.model()`` finds a model
    another client loaded. ``Client(isolated=True)`` keeps a private table instead.

    ``Client("127.0.0.1:41234")`` (or ``Client(api_host=...)``) is the same API against a server. The positional
    argument is a server when it looks like ``host:port`` or an ``http://``/``https://`` URL, and a models
    directory otherwise (write ``./name:123`` for a directory named like ``host:port``).

    Use it as a context manager, or call :meth:`close`: closing unloads the instances this client loaded (not those
    loaded with ``no_hup=True``, nor other clients', the server's just-in-time loads or the CLI's).

    Example:
        >>> with Client() as client:  # doctest: +SKIP
        ...     llm = client.llm.model("smollm2-135m-instruct")
        ...     print(llm.respond("Hello!"))
    """

    _loaded_by: str | None = None  # whose loads these are, when not this client's own ("cli")

    def __init__(
        self,
        location: str | os.PathLike[str] | None = None,
        /,
        *,
        models_dir: str | os.PathLike[str] | None = None,
        api_host: str | None = None,
        api_token: str | None = None,
        memory_budget: int | None = None,
        max_loaded: int | None = None,
        auto_evict: bool = True,
        isolated: bool = False,
    ) -> None:
        """Open a client.

        Args:
            location: A server (``host:port`` or a URL) or a models directory, by the rule above.
            models_dir: Where models live (``<publisher>/<repo>/<files>``); default ``$MODELHOST_MODELS_DIR``,
                else ``~/.cache/modelhost/models``. In-process only.
            api_host: A ``modelhost serve`` server to use instead of this process (``host:port`` or a URL).
            api_token: The server's API token (``Authorization: Bearer``); default ``$LM_API_TOKEN``, else
                ``$LMSTUDIO_API_TOKEN``. Unused in-process.
            memory_budget: Bytes that the process's loaded instances may take in all when a load goes through this
                client (None: no limit). In-process only: a server has its own.
            max_loaded: Most instances loaded in the process when a load goes through this client (None: no limit).
            auto_evict: Make room for a load by unloading idle instances, least recently used first.
            isolated: Keep a private instance table, TTL thread and memory accounting instead of the process's.

        Raises:
            ServerConnectionError: No modelhost server answers at ``api_host``.
            AuthenticationError: The server wants a token and this one is missing or wrong.
            InvalidConfigError: Settings that do not go together (a models dir or a budget with a server).
        """
        for name, value in (("memory_budget", memory_budget), ("max_loaded", max_loaded)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise TypeError(f"{name} must be an int or None, got {type(value).__name__}")
        for name, flag in (("auto_evict", auto_evict), ("isolated", isolated)):
            if not isinstance(flag, bool):
                raise TypeError(f"{name} must be a bool, got {type(flag).__name__}")
        if location is not None:
            if isinstance(location, str) and _remote.is_api_host(location):
                if api_host is not None:
                    raise InvalidConfigError("a server given twice (positionally and as api_host)")
                api_host = location
            elif models_dir is not None:
                raise InvalidConfigError("a models directory given twice (positionally and as models_dir)")
            else:
                models_dir = location
        self._host: HostBackend
        if api_host is not None:
            host_settings = {
                "models_dir": models_dir is not None,
                "memory_budget": memory_budget is not None,
                "max_loaded": max_loaded is not None,
                "isolated": isolated,
                "auto_evict": not auto_evict,
            }
            given = [name for name, set_ in host_settings.items() if set_]
            if given:
                raise InvalidConfigError(f"{', '.join(given)}: the server's own setting, not a remote client's")
            token = api_token if api_token is not None else _env_api_token()
            self._host = _remote.RemoteHost(api_host, token)
            self._api_host: str | None = self._host.base_url
        else:
            directory = default_models_dir() if models_dir is None else Path(os.fspath(models_dir)).expanduser()
            self._host = _core.Host(str(directory), memory_budget, max_loaded, auto_evict, isolated)
            self._api_host = None
        self._handles = _HandleFactory()
        self.llm = LlmNamespace(self._host, self._handles, self._loaded_by)
        self.embedding = EmbeddingNamespace(self._host, self._handles, self._loaded_by)

    @property
    def models_dir(self) -> str:
        """The models directory (the server's, for a remote client)."""
        return self._host.models_dir

    @property
    def api_host(self) -> str | None:
        """The server's URL for a remote client, None in-process."""
        return self._api_host

    @staticmethod
    def is_valid_api_host(api_host: str, api_token: str | None = None) -> bool:
        """Whether a modelhost server answers at ``api_host`` (``host:port`` or a URL)."""
        token = api_token if api_token is not None else _env_api_token()
        return _remote.probe_api_host(api_host, token) is not None

    @staticmethod
    def find_default_local_api_host() -> str | None:
        """The local server that ``modelhost server start`` (or ``serve``) runs, if one answers: the one recorded
        in its state file, else 127.0.0.1 on ``$MODELHOST_PORT`` (default 41234). None when none answers."""
        return _remote.find_local_api_host(_env_api_token())

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
        """Handles on the loaded instances of the process (or the server), whoever loaded them.

        Args:
            kind: "llm", "embedding" or None for both.
        """
        return [self._handles.wrap_any(i) for i in self._host.list_loaded(_check_kind(kind))]

    def serve(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        api_token: str | None = None,
        cors: bool = False,
    ) -> _core.Server:
        """Serve this process's instances over HTTP (OpenAI-compatible, LM Studio REST and the lifecycle API the
        remote client uses; docs/http-api.md), on threads of its own. Keys resolve in this client's models dir.

        Args:
            host: Address to bind; 127.0.0.1 by default (loopback only).
            port: Port; 0 picks a free one (see the result's ``url``).
            api_token: Require ``Authorization: Bearer <token>``; default ``$LM_API_TOKEN``, else
                ``$LMSTUDIO_API_TOKEN``, else no token ("" switches it off).
            cors: Allow cross-origin requests from any origin.

        Returns:
            The running server: ``url``, ``stop()`` (drains requests in flight), ``wait()``.

        Raises:
            OSError: The address cannot be bound.
        """
        if not isinstance(self._host, _core.Host):
            raise ModelHostError("a remote client cannot serve: its models live in the server it talks to")
        return _core.serve(self._host, host, port, api_token, cors)

    def close(self) -> None:
        """Unload the instances this client loaded (except ``no_hup`` ones); then calls raise
        ``ClientClosedError``. An isolated client unloads everything in its table. Closing twice is a no-op."""
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
        """``Client(models_dir='...')``, or ``Client(api_host='...')`` for a remote one."""
        if self._api_host is not None:
            return f"{type(self).__name__}(api_host={self._api_host!r})"
        return f"{type(self).__name__}(models_dir={self.models_dir!r})"


def _env_api_token() -> str | None:
    """LM Studio's token variables: ``$LM_API_TOKEN``, else ``$LMSTUDIO_API_TOKEN``."""
    return os.environ.get("LM_API_TOKEN") or os.environ.get("LMSTUDIO_API_TOKEN") or None
