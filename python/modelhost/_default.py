"""LM Studio's convenience API: module-level functions on a lazily created default client."""

from __future__ import annotations

import atexit
import os
import threading
from collections.abc import Mapping
from typing import Any

from .client import Client, ModelLoadingCallback
from .config import DEFAULT_TTL, EmbeddingLoadModelConfig, LlmLoadModelConfig
from .handles import LLM, AnyModelHandle, EmbeddingModel
from .models import DownloadedModel

__all__ = [
    "configure_default_client",
    "embedding_model",
    "get_default_client",
    "list_downloaded_models",
    "list_loaded_models",
    "llm",
]

_lock = threading.Lock()
_default_client: Client | None = None
_default_settings: dict[str, Any] = {}


def configure_default_client(
    location: str | os.PathLike[str] | None = None,
    /,
    *,
    models_dir: str | os.PathLike[str] | None = None,
    api_host: str | None = None,
    api_token: str | None = None,
    memory_budget: int | None = None,
    max_loaded: int | None = None,
    auto_evict: bool = True,
) -> None:
    """Set the arguments the default client will be created with (before it is first used).

    ``configure_default_client("127.0.0.1:41234")`` makes the convenience API talk to that server; a path makes it
    use that models directory in-process (the rule of :class:`Client`).

    Args:
        location: A server (``host:port`` or a URL) or a models directory, as for :class:`Client`.
        models_dir: As for :class:`Client`.
        api_host: As for :class:`Client`.
        api_token: As for :class:`Client`.
        memory_budget: As for :class:`Client`.
        max_loaded: As for :class:`Client`.
        auto_evict: As for :class:`Client`.

    Raises:
        RuntimeError: If the default client already exists.
    """
    global _default_settings
    with _lock:
        if _default_client is not None:
            raise RuntimeError("the default client is already created; configure it before first use")
        _default_settings = {
            "location": location,
            "models_dir": models_dir,
            "api_host": api_host,
            "api_token": api_token,
            "memory_budget": memory_budget,
            "max_loaded": max_loaded,
            "auto_evict": auto_evict,
        }


def get_default_client(api_host: str | None = None) -> Client:
    """The default client, created on first use (closed when the interpreter exits).

    Args:
        api_host: A server to create it for (LM Studio's older way to configure it); only before first use.

    Raises:
        RuntimeError: ``api_host`` given after the default client was created.
    """
    global _default_client
    if api_host is not None:
        configure_default_client(api_host=api_host)
    with _lock:
        if _default_client is None:
            settings = dict(_default_settings)
            location = settings.pop("location", None)
            _default_client = Client(location, **settings)
        return _default_client


def _reset_default_client() -> None:
    """Close and forget the default client and its settings (for tests)."""
    global _default_client, _default_settings
    with _lock:
        client, _default_client = _default_client, None
        _default_settings = {}
    if client is not None:
        client.close()


atexit.register(_reset_default_client)


def llm(
    model_key: str | None = None,
    /,
    *,
    ttl: float | None = DEFAULT_TTL,
    config: LlmLoadModelConfig | Mapping[str, Any] | None = None,
    on_load_progress: ModelLoadingCallback | None = None,
) -> LLM:
    """``get_default_client().llm.model(...)``: a loaded LLM, loading it if needed."""
    return get_default_client().llm.model(model_key, ttl=ttl, config=config, on_load_progress=on_load_progress)


def embedding_model(
    model_key: str | None = None,
    /,
    *,
    ttl: float | None = DEFAULT_TTL,
    config: EmbeddingLoadModelConfig | Mapping[str, Any] | None = None,
    on_load_progress: ModelLoadingCallback | None = None,
) -> EmbeddingModel:
    """``get_default_client().embedding.model(...)``: a loaded embedding model, loading it if needed."""
    return get_default_client().embedding.model(model_key, ttl=ttl, config=config, on_load_progress=on_load_progress)


def list_downloaded_models(kind: str | None = None) -> list[DownloadedModel]:
    """``get_default_client().list_downloaded_models(kind)``."""
    return get_default_client().list_downloaded_models(kind)


def list_loaded_models(kind: str | None = None) -> list[AnyModelHandle]:
    """``get_default_client().list_loaded_models(kind)``."""
    return get_default_client().list_loaded_models(kind)
