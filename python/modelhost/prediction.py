"""Prediction results and streams, shaped as LM Studio's."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any

from .chat import ChatMessage
from .config import LlmLoadModelConfig, LlmPredictionConfig
from .errors import ModelHostError

if TYPE_CHECKING:
    from . import _core
    from .models import ModelInstanceInfo

__all__ = [
    "LlmPredictionFragment",
    "LlmPredictionStats",
    "PredictionFirstTokenCallback",
    "PredictionFragmentCallback",
    "PredictionMessageCallback",
    "PredictionResult",
    "PredictionStream",
    "PromptProcessingCallback",
]

PredictionMessageCallback = Callable[[ChatMessage], Any]
"""Called once with the assistant's message when the prediction ends (e.g. ``chat.append``)."""
PredictionFirstTokenCallback = Callable[[], Any]
"""Called when the first token arrives (the prompt is processed)."""
PredictionFragmentCallback = Callable[["LlmPredictionFragment"], Any]
"""Called with every fragment, as iterating the stream yields them."""
PromptProcessingCallback = Callable[[float], Any]
"""Called while the prompt is processed: 0.0 first, the share done after each ``evalBatchSize`` chunk, 1.0 last (before
the first token). An exception from it stops the prediction and propagates."""


@dataclass(frozen=True)
class LlmPredictionStats:
    """Statistics of one prediction, named as LM Studio's.

    Attributes:
        stop_reason: "eosFound", "maxPredictedTokensReached", "stopStringFound", "contextLengthReached" or
            "userStopped".
        prompt_tokens_count: Tokens in the prompt.
        predicted_tokens_count: Tokens generated.
        total_tokens_count: Their sum.
        time_to_first_token_sec: Seconds from the request to the first generated token.
        tokens_per_second: Generation speed after the first token.
        num_gpu_layers: Layers on a GPU.
    """

    stop_reason: str
    prompt_tokens_count: int | None = None
    predicted_tokens_count: int | None = None
    total_tokens_count: int | None = None
    time_to_first_token_sec: float | None = None
    tokens_per_second: float | None = None
    num_gpu_layers: float | None = None

    @classmethod
    def _from_core(cls, data: Mapping[str, Any]) -> LlmPredictionStats:
        return cls(
            stop_reason=str(data.get("stop_reason", "")),
            prompt_tokens_count=data.get("prompt_tokens_count"),
            predicted_tokens_count=data.get("predicted_tokens_count"),
            total_tokens_count=data.get("total_tokens_count"),
            time_to_first_token_sec=data.get("time_to_first_token_sec"),
            tokens_per_second=data.get("tokens_per_second"),
            num_gpu_layers=data.get("num_gpu_layers"),
        )


@dataclass(frozen=True)
class LlmPredictionFragment:
    """A piece of a streamed prediction.

    Attributes:
        content: The text of the fragment (possibly empty while a multi-byte character is incomplete).
        tokens: The ids of the tokens it came from.
        tokens_count: ``len(tokens)``.
        contains_drafted: Whether a draft model produced it (never, for now).
        reasoning_type: "none" (reasoning parsing is not supported yet).
    """

    content: str
    tokens: list[int] = field(default_factory=list)
    tokens_count: int = 0
    contains_drafted: bool = False
    reasoning_type: str = "none"


@dataclass(frozen=True)
class PredictionResult:
    """The result of ``respond()`` / ``complete()``; ``print(result)`` prints the content.

    Attributes:
        content: The generated text.
        parsed: The same as ``content`` (LM Studio puts parsed structured output here; not supported yet).
        stats: Prediction statistics.
        tokens: The ids of the generated tokens.
        model_info: Info on the instance that answered.
        load_config: The config that instance was loaded with.
        prediction_config: The config of this prediction.
        structured: False (structured output is not supported yet).
    """

    content: str
    parsed: Any
    stats: LlmPredictionStats
    tokens: list[int]
    model_info: ModelInstanceInfo
    load_config: LlmLoadModelConfig
    prediction_config: LlmPredictionConfig
    structured: bool = False

    def __str__(self) -> str:
        """The generated text."""
        return self.content

    def __repr__(self) -> str:
        """Short form, as LM Studio's."""
        return f"{type(self).__name__}(content={self.content!r})"

    def _to_history_content(self) -> str:
        return self.content


class PredictionStream:
    """A running prediction: iterate it for fragments, then call :meth:`result`.

    It is also a context manager. Closing it (or dropping it) before the end cancels the prediction, which frees
    the instance for the next request.
    """

    def __init__(
        self,
        generation: _core.Generation,
        *,
        model_info: ModelInstanceInfo,
        load_config: LlmLoadModelConfig,
        prediction_config: LlmPredictionConfig,
        on_message: PredictionMessageCallback | None = None,
        on_first_token: PredictionFirstTokenCallback | None = None,
        on_prediction_fragment: PredictionFragmentCallback | None = None,
    ) -> None:
        """Wrap a core generation; the handle creates streams, users don't (prompt progress goes to the core)."""
        self._generation: _core.Generation | None = generation
        self._model_info = model_info
        self._load_config = load_config
        self._prediction_config = prediction_config
        self._on_message = on_message
        self._on_first_token = on_first_token
        self._on_fragment = on_prediction_fragment
        self._lock = threading.RLock()
        self._got_first = False
        self._result: PredictionResult | None = None

    def __iter__(self) -> Iterator[LlmPredictionFragment]:
        """The stream is its own iterator."""
        return self

    def __next__(self) -> LlmPredictionFragment:
        """The next fragment; at the end, the result is recorded and StopIteration raised."""
        with self._lock:
            generation = self._generation
            if self._result is not None or generation is None:
                raise StopIteration
            try:
                raw = next(generation)
            except StopIteration:
                del generation
                self._finish()
                raise
            except BaseException:
                # A failed (or interrupted) prediction is over: stop it and let go of it, so that nothing (a
                # traceback kept alive, say) holds the instance's memory through it.
                self._generation = None
                with contextlib.suppress(Exception):
                    generation.cancel()
                del generation  # the traceback keeps this frame alive
                raise
            fragment = LlmPredictionFragment(
                content=str(raw.get("content", "")),
                tokens=list(raw.get("tokens", ())),
                tokens_count=len(raw.get("tokens", ())),
            )
            if not self._got_first:
                self._got_first = True
                if self._on_first_token is not None:
                    self._on_first_token()
            if self._on_fragment is not None:
                self._on_fragment(fragment)
            return fragment

    def _finish(self) -> None:
        generation = self._generation
        self._generation = None  # ended: hold nothing of the instance any more, even if result() raises
        assert generation is not None
        try:
            raw = generation.result()
        finally:
            del generation
        content = str(raw.get("content", ""))
        self._result = PredictionResult(
            content=content,
            parsed=content,
            stats=LlmPredictionStats._from_core(raw.get("stats", {})),
            tokens=list(raw.get("tokens", ())),
            model_info=self._model_info,
            load_config=self._load_config,
            prediction_config=self._prediction_config,
        )
        if self._on_message is not None:
            self._on_message(ChatMessage("assistant", content))

    @property
    def finished(self) -> bool:
        """Whether the prediction has ended and its result is recorded."""
        return self._result is not None

    def result(self) -> PredictionResult:
        """The prediction's result, running the prediction to its end first if needed.

        (LM Studio raises here while the stream is unfinished; modelhost finishes it instead.)
        """
        with self._lock:
            for _ in self:
                pass
            if self._result is None:
                raise ModelHostError("the prediction was closed before it finished")
            return self._result

    def wait_for_result(self) -> PredictionResult:
        """Run the prediction to its end and return the result (same as :meth:`result`)."""
        return self.result()

    def cancel(self) -> None:
        """Stop after the current token; the stream then ends with stop reason "userStopped".

        Safe to call from another thread while one iterates.
        """
        generation = self._generation
        if generation is not None:
            generation.cancel()

    def close(self) -> None:
        """Cancel the prediction if it is still running and record the partial result (callbacks are not called)."""
        generation = self._generation
        if generation is None:
            return
        generation.cancel()
        del generation
        with self._lock:
            self._on_message = self._on_first_token = self._on_fragment = None
            try:
                for _ in self:
                    pass
            except ModelHostError:
                self._generation = None

    def __enter__(self) -> PredictionStream:
        """Use the stream in a ``with`` block; leaving it closes the stream."""
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Close the stream."""
        self.close()

    def __del__(self) -> None:
        """An abandoned stream stops its generation."""
        generation = getattr(self, "_generation", None)
        if generation is not None:
            with contextlib.suppress(Exception):  # nothing may escape __del__
                generation.cancel()
