"""Handles on loaded instances: ``LLM`` and ``EmbeddingModel``."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Union, overload

import numpy as np
import numpy.typing as npt

from .chat import AnyChatInput, ChatMessageDict, to_messages
from .config import (
    AnyLoadConfig,
    EmbeddingLoadModelConfig,
    LlmLoadModelConfig,
    LlmPredictionConfig,
    load_config_from_core,
    prediction_config_from_user,
)
from .models import EmbeddingModelInstanceInfo, LlmInstanceInfo, ModelInstanceInfo
from .prediction import (
    PredictionFirstTokenCallback,
    PredictionFragmentCallback,
    PredictionMessageCallback,
    PredictionResult,
    PredictionStream,
    PromptProcessingCallback,
)

if TYPE_CHECKING:
    from . import _core

__all__ = ["LLM", "AnyModelHandle", "EmbeddingModel", "ModelHandle"]


def _str_list(values: Iterable[object], what: str) -> list[str]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise TypeError(f"{what} must be a str or a list of str, got {type(values).__name__}")
    result: list[str] = []
    for i, item in enumerate(values):
        if not isinstance(item, str):
            raise TypeError(f"{what}[{i}] must be a str, got {type(item).__name__}")
        result.append(item)
    return result


class ModelHandle:
    """A handle on one loaded instance. It holds no memory: after unload, calls raise ``ModelUnloadedError``."""

    _kind = ""

    def __init__(self, instance: _core.Instance) -> None:
        """Wrap a core instance; the client creates handles, users don't."""
        self._instance = instance
        self._load_config_cache: AnyLoadConfig | None = None

    @property
    def identifier(self) -> str:
        """The instance's identifier (the model key, ``key:2``, or the one given at load)."""
        return self._instance.identifier

    @property
    def model_key(self) -> str:
        """The catalog key of the model."""
        return self._instance.model_key

    @property
    def instance_reference(self) -> str:
        """Unique id of the instance, never reused."""
        return self._instance.instance_reference

    def is_loaded(self) -> bool:
        """Whether the instance is still loaded."""
        return self._instance.is_loaded()

    def get_info(self) -> ModelInstanceInfo:
        """Info on the instance: LM Studio's instance-info fields plus ttl, last use and placement."""
        return ModelInstanceInfo._from_core(self._instance.info(), self._kind)

    def get_load_config(self) -> AnyLoadConfig:
        """The load config actually applied (defaults filled in, values clamped), not an echo of the request."""
        if self._load_config_cache is None:
            self._load_config_cache = load_config_from_core(self._instance.load_config(), self._kind)
        return self._load_config_cache

    def get_context_length(self) -> int:
        """The context length the instance was loaded with."""
        return self._instance.context_length()

    def unload(self) -> None:
        """Unload the instance (after requests in flight finish). Unloading twice is a no-op."""
        self._instance.unload()

    @overload
    def tokenize(self, input: str) -> list[int]: ...  # type: ignore[overload-overlap]
    @overload
    def tokenize(self, input: Iterable[str]) -> list[list[int]]: ...
    def tokenize(self, input: str | Iterable[str]) -> list[int] | list[list[int]]:
        """Token ids as the model sees them (with BOS, [CLS]/[SEP] where its tokenizer adds them).

        Args:
            input: A str, or an iterable of str.

        Returns:
            A list of ids for a str, a list of lists for an iterable.

        Raises:
            TypeError: If the input is not a str or an iterable of str.
        """
        if isinstance(input, str):
            return self._instance.tokenize(input)
        return [self._instance.tokenize(text) for text in _str_list(input, "input")]

    def count_tokens(self, input: str) -> int:
        """Number of tokens in ``input``."""
        if not isinstance(input, str):
            raise TypeError(f"input must be a str, got {type(input).__name__}")
        return len(self._instance.tokenize(input))

    def __eq__(self, other: object) -> bool:
        """Handles are equal when they reference the same instance."""
        if not isinstance(other, ModelHandle):
            return NotImplemented
        return self.instance_reference == other.instance_reference

    def __hash__(self) -> int:
        """Hash of the instance reference."""
        return hash(self.instance_reference)

    def __repr__(self) -> str:
        """``LLM(identifier='...')``."""
        return f"{type(self).__name__}(identifier={self.identifier!r})"


class LLM(ModelHandle):
    """A handle on a loaded language model."""

    _kind = "llm"

    def get_info(self) -> LlmInstanceInfo:
        """Info on the instance: LM Studio's instance-info fields plus ttl, last use and placement."""
        info = super().get_info()
        assert isinstance(info, LlmInstanceInfo)
        return info

    def get_load_config(self) -> LlmLoadModelConfig:
        """The load config actually applied (defaults filled in, values clamped), not an echo of the request."""
        config = super().get_load_config()
        assert isinstance(config, LlmLoadModelConfig)
        return config

    def apply_prompt_template(self, history: AnyChatInput) -> str:
        """Render a chat with the model's own chat template, ready for the assistant's reply (what respond sends).

        Args:
            history: A ``Chat``, ``{"messages": [...]}``, a list of ``{"role", "content"}`` or a str (one user
                message).
        """
        return self._instance.apply_template(to_messages(history), True)

    def _stream(
        self,
        prompt: str | list[ChatMessageDict],
        config: LlmPredictionConfig | Mapping[str, Any] | None,
        on_message: PredictionMessageCallback | None,
        on_first_token: PredictionFirstTokenCallback | None,
        on_prediction_fragment: PredictionFragmentCallback | None,
        on_prompt_processing_progress: PromptProcessingCallback | None,
    ) -> PredictionStream:
        prediction_config = prediction_config_from_user(config)
        core_config = prediction_config._to_core()
        # Snapshot before starting: a finished request may see its instance evicted right after.
        info = self.get_info()
        load_config = self.get_load_config()
        if isinstance(prompt, str):
            generation = self._instance.generate(prompt, core_config, on_prompt_processing_progress)
        else:
            # The template's own BOS is not doubled by the tokenizer's, as in llama.cpp's chat.
            generation = self._instance.generate_chat(prompt, core_config, on_prompt_processing_progress)
        return PredictionStream(
            generation,
            model_info=info,
            load_config=load_config,
            prediction_config=prediction_config,
            on_message=on_message,
            on_first_token=on_first_token,
            on_prediction_fragment=on_prediction_fragment,
        )

    def respond_stream(
        self,
        history: AnyChatInput,
        config: LlmPredictionConfig | Mapping[str, Any] | None = None,
        *,
        on_message: PredictionMessageCallback | None = None,
        on_first_token: PredictionFirstTokenCallback | None = None,
        on_prediction_fragment: PredictionFragmentCallback | None = None,
        on_prompt_processing_progress: PromptProcessingCallback | None = None,
    ) -> PredictionStream:
        """Start the assistant's reply to a chat and stream it.

        Args:
            history: A ``Chat``, ``{"messages": [...]}``, a list of ``{"role", "content"}`` or a str (one user
                message).
            config: Prediction config (dataclass, or dict with camelCase or snake_case keys).
            on_message: Called with the assistant's message at the end (``chat.append`` fits).
            on_first_token: Called when the first token arrives.
            on_prediction_fragment: Called with every fragment.
            on_prompt_processing_progress: Called from the core while the prompt is processed: 0.0 first, then the
                share done after each ``evalBatchSize`` chunk, 1.0 last (before the first token). An exception from it
                stops the prediction and propagates unchanged.

        Returns:
            The stream: iterate it for fragments, then call ``result()``.
        """
        messages = to_messages(history)
        return self._stream(
            messages, config, on_message, on_first_token, on_prediction_fragment, on_prompt_processing_progress
        )

    def respond(
        self,
        history: AnyChatInput,
        config: LlmPredictionConfig | Mapping[str, Any] | None = None,
        *,
        on_message: PredictionMessageCallback | None = None,
        on_first_token: PredictionFirstTokenCallback | None = None,
        on_prediction_fragment: PredictionFragmentCallback | None = None,
        on_prompt_processing_progress: PromptProcessingCallback | None = None,
    ) -> PredictionResult:
        """The assistant's reply to a chat. Arguments as :meth:`respond_stream`."""
        with self.respond_stream(
            history,
            config,
            on_message=on_message,
            on_first_token=on_first_token,
            on_prediction_fragment=on_prediction_fragment,
            on_prompt_processing_progress=on_prompt_processing_progress,
        ) as stream:
            return stream.result()

    def complete_stream(
        self,
        prompt: str,
        config: LlmPredictionConfig | Mapping[str, Any] | None = None,
        *,
        on_message: PredictionMessageCallback | None = None,
        on_first_token: PredictionFirstTokenCallback | None = None,
        on_prediction_fragment: PredictionFragmentCallback | None = None,
        on_prompt_processing_progress: PromptProcessingCallback | None = None,
    ) -> PredictionStream:
        """Continue raw text (no chat template; special tokens in the text are parsed) and stream the output.

        Arguments as :meth:`respond_stream`, with ``prompt`` a str.
        """
        if not isinstance(prompt, str):
            raise TypeError(f"prompt must be a str, got {type(prompt).__name__}")
        return self._stream(
            prompt, config, on_message, on_first_token, on_prediction_fragment, on_prompt_processing_progress
        )

    def complete(
        self,
        prompt: str,
        config: LlmPredictionConfig | Mapping[str, Any] | None = None,
        *,
        on_message: PredictionMessageCallback | None = None,
        on_first_token: PredictionFirstTokenCallback | None = None,
        on_prediction_fragment: PredictionFragmentCallback | None = None,
        on_prompt_processing_progress: PromptProcessingCallback | None = None,
    ) -> PredictionResult:
        """Continue raw text. Arguments as :meth:`complete_stream`."""
        with self.complete_stream(
            prompt,
            config,
            on_message=on_message,
            on_first_token=on_first_token,
            on_prediction_fragment=on_prediction_fragment,
            on_prompt_processing_progress=on_prompt_processing_progress,
        ) as stream:
            return stream.result()

    def evaluate(self, token_ids: Sequence[int]) -> npt.NDArray[np.float32]:
        """Logits at every position (llama.cpp's ``logits_all``), from an empty cache.

        Args:
            token_ids: The tokens, e.g. ``prompt_ids + generated_ids`` for a teacher-forced check.

        Returns:
            float32 array of shape ``(len(token_ids), vocab)``.
        """
        if isinstance(token_ids, (str, bytes)) or not isinstance(token_ids, Iterable):
            raise TypeError(f"token_ids must be a sequence of int, got {type(token_ids).__name__}")
        ids: list[int] = []
        for i, token in enumerate(token_ids):
            if isinstance(token, (bool, np.bool_)) or not isinstance(token, (int, np.integer)):
                raise TypeError(f"token_ids[{i}] must be an int, got {type(token).__name__}")
            if not 0 <= token < 2**32:
                raise ValueError(f"token_ids[{i}] is not a token id: {token}")
            ids.append(int(token))
        return self._instance.evaluate(ids)


class EmbeddingModel(ModelHandle):
    """A handle on a loaded embedding model."""

    _kind = "embedding"

    def get_info(self) -> EmbeddingModelInstanceInfo:
        """Info on the instance: LM Studio's instance-info fields plus ttl, last use and placement."""
        info = super().get_info()
        assert isinstance(info, EmbeddingModelInstanceInfo)
        return info

    def get_load_config(self) -> EmbeddingLoadModelConfig:
        """The load config actually applied (defaults filled in, values clamped), not an echo of the request."""
        config = super().get_load_config()
        assert isinstance(config, EmbeddingLoadModelConfig)
        return config

    def embed(self, input: str | Iterable[str]) -> npt.NDArray[np.float32]:
        """Embedding vectors, as sentence-transformers computes them.

        Args:
            input: A str, or an iterable of str.

        Returns:
            float32 array: shape ``(dim,)`` for a str, ``(n, dim)`` for n texts (``(0, dim)`` for none).

        Raises:
            TypeError: If the input is not a str or an iterable of str.
        """
        if isinstance(input, str):
            vector: npt.NDArray[np.float32] = self._instance.embed([input])[0]
            return vector
        return self._instance.embed(_str_list(input, "input"))


AnyModelHandle = Union[LLM, EmbeddingModel]
