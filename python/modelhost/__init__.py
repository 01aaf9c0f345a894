"""modelhost: load and host local LLMs and embedding models in-process, with LM Studio's Python API.

Code written for LM Studio's SDK ports by changing the import::

    import modelhost as lms

    model = lms.llm("smollm2-135m-instruct")
    print(model.respond("What is the meaning of life?"))
"""

from __future__ import annotations

from . import _core
from ._default import (
    configure_default_client,
    embedding_model,
    get_default_client,
    list_downloaded_models,
    list_loaded_models,
    llm,
)
from .chat import AnyChatInput, Chat, ChatMessage
from .client import Client, EmbeddingNamespace, LlmNamespace, ModelLoadingCallback, default_models_dir
from .config import (
    DEFAULT_TTL,
    AnyLoadConfig,
    EmbeddingLoadModelConfig,
    GpuSetting,
    LlmLoadModelConfig,
    LlmPredictionConfig,
)
from .errors import (
    ClientClosedError,
    ContextLengthExceededError,
    InstanceExistsError,
    InsufficientMemoryError,
    InvalidConfigError,
    InvalidInputError,
    LoadCancelledError,
    ModelHostError,
    ModelKindError,
    ModelLoadError,
    ModelNotFoundError,
    ModelUnloadedError,
    NoModelLoadedError,
    NotSupportedError,
    PlacementWarning,
)
from .handles import LLM, AnyModelHandle, EmbeddingModel, ModelHandle
from .models import (
    DownloadedModel,
    EmbeddingModelInstanceInfo,
    LlmInstanceInfo,
    MemoryEstimate,
    ModelInstanceInfo,
)
from .prediction import LlmPredictionFragment, LlmPredictionStats, PredictionResult, PredictionStream

__version__: str = _core.__version__

__all__ = [
    "DEFAULT_TTL",
    "LLM",
    "AnyChatInput",
    "AnyLoadConfig",
    "AnyModelHandle",
    "Chat",
    "ChatMessage",
    "Client",
    "ClientClosedError",
    "ContextLengthExceededError",
    "DownloadedModel",
    "EmbeddingLoadModelConfig",
    "EmbeddingModel",
    "EmbeddingModelInstanceInfo",
    "EmbeddingNamespace",
    "GpuSetting",
    "InstanceExistsError",
    "InsufficientMemoryError",
    "InvalidConfigError",
    "InvalidInputError",
    "LlmInstanceInfo",
    "LlmLoadModelConfig",
    "LlmNamespace",
    "LlmPredictionConfig",
    "LlmPredictionFragment",
    "LlmPredictionStats",
    "LoadCancelledError",
    "MemoryEstimate",
    "ModelHandle",
    "ModelHostError",
    "ModelInstanceInfo",
    "ModelKindError",
    "ModelLoadError",
    "ModelLoadingCallback",
    "ModelNotFoundError",
    "ModelUnloadedError",
    "NoModelLoadedError",
    "NotSupportedError",
    "PlacementWarning",
    "PredictionResult",
    "PredictionStream",
    "__version__",
    "configure_default_client",
    "default_models_dir",
    "embedding_model",
    "get_default_client",
    "list_downloaded_models",
    "list_loaded_models",
    "llm",
]
