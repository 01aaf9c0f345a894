"""Plain data about models: catalog entries, loaded-instance info and memory estimates."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from .config import DEFAULT_TTL

if TYPE_CHECKING:
    from .config import AnyLoadConfig
    from .handles import AnyModelHandle

__all__ = [
    "DownloadedModel",
    "EmbeddingModelInstanceInfo",
    "LlmInstanceInfo",
    "MemoryEstimate",
    "ModelInstanceInfo",
]

_T = TypeVar("_T")


def _from_mapping(cls: type[_T], data: Mapping[str, Any], **extra: Any) -> _T:
    """Build a dataclass from the keys it knows; keys it does not know are ignored (newer cores may add some)."""
    names = {f.name for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    kwargs = {k: v for k, v in data.items() if k in names}
    kwargs.update(extra)
    return cls(**kwargs)


@dataclass(frozen=True)
class ModelInstanceInfo:
    """What ``handle.get_info()`` returns: LM Studio's instance-info fields plus modelhost's lifecycle fields.

    Attributes:
        type: "llm" or "embedding".
        model_key: The catalog key (``publisher/repo``).
        format: "gguf" or "safetensors".
        display_name: Human-readable name.
        path: The model's file or folder.
        size_bytes: Size of its weights on disk.
        identifier: The instance's identifier (the model key, ``key:2``, or the one given).
        instance_reference: Unique id of this instance, never reused.
        architecture: e.g. "llama", "bert".
        params_string: Parameter count, e.g. "135M".
        max_context_length: The model's trained context length.
        context_length: The context length this instance was loaded with.
        vision: Whether the model takes images (never, for now).
        trained_for_tool_use: Whether the chat template handles tools.
        ttl: Idle seconds before automatic unload, None for never.
        last_used: Unix time of the end of the last request (or of the load).
        device: Main device, e.g. "cpu" or "cuda:0".
        placement: Per-layer device plan, as the core reports it.
        placement_warning: Why the requested GPU placement could not be honoured, if it could not.
    """

    type: str = "llm"
    model_key: str = ""
    format: str = ""
    display_name: str = ""
    path: str = ""
    size_bytes: int = 0
    identifier: str = ""
    instance_reference: str = ""
    architecture: str | None = None
    params_string: str | None = None
    max_context_length: int = 0
    context_length: int = 0
    vision: bool = False
    trained_for_tool_use: bool = False
    ttl: float | None = None
    last_used: float | None = None
    device: str | None = None
    placement: Any = None
    placement_warning: str | None = None

    @classmethod
    def _from_core(cls, data: Mapping[str, Any], kind: str) -> ModelInstanceInfo:
        target: type[ModelInstanceInfo] = LlmInstanceInfo if kind == "llm" else EmbeddingModelInstanceInfo
        return _from_mapping(target, {"type": kind, **data})

    def to_dict(self) -> dict[str, Any]:
        """The info as a plain dict."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class LlmInstanceInfo(ModelInstanceInfo):
    """Instance info of a loaded LLM."""


@dataclass(frozen=True)
class EmbeddingModelInstanceInfo(ModelInstanceInfo):
    """Instance info of a loaded embedding model."""


class _ModelLoader(Protocol):
    """What a :class:`DownloadedModel` loads itself with: the namespace of its kind (``client.llm`` or
    ``client.embedding``)."""

    def model(
        self,
        key: str | None = None,
        /,
        *,
        ttl: float | None = ...,
        config: Any = ...,
        on_load_progress: Any = ...,
    ) -> Any: ...

    def load_new_instance(
        self,
        key: str,
        instance_identifier: str | None = None,
        *,
        ttl: float | None = ...,
        config: Any = ...,
        on_load_progress: Any = ...,
    ) -> Any: ...


@dataclass(frozen=True)
class DownloadedModel:
    """A model in the models directory, described from its headers without loading it.

    Like LM Studio's download listings, it can load itself with :meth:`model` or :meth:`load_new_instance`.

    Attributes:
        model_key: The catalog key (``publisher/repo``).
        type: "llm" or "embedding".
        format: "gguf" or "safetensors".
        path: The model's file or folder.
        size_bytes: Size of its weights on disk.
        architecture: e.g. "llama", "bert".
        params_string: Parameter count, e.g. "135M".
        quantization: e.g. "Q4_1", "F32".
        max_context_length: The model's trained context length.
        display_name: Human-readable name.
        vision: Whether the model takes images (never, for now).
    """

    model_key: str
    type: str
    format: str = ""
    path: str = ""
    size_bytes: int = 0
    architecture: str | None = None
    params_string: str | None = None
    quantization: str | None = None
    max_context_length: int | None = None
    display_name: str = ""
    vision: bool = False
    _loader: _ModelLoader | None = field(default=None, repr=False, compare=False)

    @classmethod
    def _from_core(cls, data: Mapping[str, Any], loader: _ModelLoader) -> DownloadedModel:
        return _from_mapping(cls, data, _loader=loader)

    def _attached_loader(self) -> _ModelLoader:
        if self._loader is None:
            raise RuntimeError("this DownloadedModel is not attached to a client")
        return self._loader

    def model(
        self,
        *,
        ttl: float | None = DEFAULT_TTL,
        config: AnyLoadConfig | Mapping[str, Any] | None = None,
        on_load_progress: Any = None,
    ) -> AnyModelHandle:
        """Get a loaded instance of this model, loading it if there is none (``client.<kind>.model(key)``)."""
        loader = self._attached_loader()
        handle: AnyModelHandle = loader.model(self.model_key, ttl=ttl, config=config, on_load_progress=on_load_progress)
        return handle

    def load_new_instance(
        self,
        *,
        ttl: float | None = DEFAULT_TTL,
        instance_identifier: str | None = None,
        config: AnyLoadConfig | Mapping[str, Any] | None = None,
        on_load_progress: Any = None,
    ) -> AnyModelHandle:
        """Load a new instance of this model (``client.<kind>.load_new_instance(key)``)."""
        loader = self._attached_loader()
        handle: AnyModelHandle = loader.load_new_instance(
            self.model_key, instance_identifier, ttl=ttl, config=config, on_load_progress=on_load_progress
        )
        return handle


@dataclass(frozen=True)
class MemoryEstimate:
    """What a load would cost, as the core computes it before every load (the memory budget uses the same number).

    Attributes:
        weights_bytes: Weights (mapped or owned).
        kv_cache_bytes: KV cache for the context length.
        scratch_bytes: Activations and other working memory.
        total_bytes: The sum.
        per_device: Bytes per device ("cpu", "cuda:0", ...).
    """

    weights_bytes: int
    kv_cache_bytes: int
    scratch_bytes: int
    total_bytes: int
    per_device: dict[str, int] = field(default_factory=dict)

    @classmethod
    def _from_core(cls, data: Mapping[str, Any]) -> MemoryEstimate:
        return _from_mapping(cls, data)
