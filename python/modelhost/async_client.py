"""``AsyncClient``: LM Studio's asynchronous API, in-process or against a server.

Every call is awaited; it runs the synchronous API's call on a worker thread, so the event loop never waits for a
load, an inference or the network. Callbacks (load progress, prediction callbacks) run on the event loop's thread.
Cancelling the awaiting task cancels the work: a load stops at its next progress step (nothing stays loaded or
mapped), a prediction stops after its current token. A call that cannot be interrupted once running (``embed``,
``evaluate``, ``tokenize``) finishes on its thread and its result is dropped.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import os
import threading
from collections.abc import Awaitable, Callable, Generator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Generic, TypeVar, Union, overload

import numpy as np
import numpy.typing as npt

from .chat import AnyChatInput
from .client import Client, ModelLoadingCallback, _Namespace
from .config import (
    DEFAULT_TTL,
    AnyLoadConfig,
    EmbeddingLoadModelConfig,
    LlmLoadModelConfig,
    LlmPredictionConfig,
)
from .errors import LoadCancelledError, ModelHostError
from .handles import LLM, EmbeddingModel, HandleIdentity, ModelHandle
from .models import DownloadedModel, EmbeddingModelInstanceInfo, LlmInstanceInfo, MemoryEstimate, ModelInstanceInfo
from .prediction import (
    LlmPredictionFragment,
    PredictionFirstTokenCallback,
    PredictionFragmentCallback,
    PredictionMessageCallback,
    PredictionResult,
    PredictionStream,
    PromptProcessingCallback,
)

__all__ = [
    "AnyAsyncModelHandle",
    "AsyncClient",
    "AsyncDownloadedModel",
    "AsyncEmbeddingModel",
    "AsyncEmbeddingNamespace",
    "AsyncLLM",
    "AsyncLlmNamespace",
    "AsyncModelHandle",
    "AsyncPredictionStream",
]

_T = TypeVar("_T")

# Blocking calls run here. A call holding a thread is either running or waiting for one that is (a queued
# request, a single-flight load), so a bounded pool cannot deadlock; streams get threads of their own.
_WORKERS = 32
_executor_lock = threading.Lock()
_executor: concurrent.futures.ThreadPoolExecutor | None = None


def _pool() -> concurrent.futures.ThreadPoolExecutor:
    global _executor
    with _executor_lock:
        if _executor is None:
            _executor = concurrent.futures.ThreadPoolExecutor(_WORKERS, thread_name_prefix="modelhost-async")
        return _executor


async def _run(fn: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
    """``fn(*args, **kwargs)`` on a worker thread."""
    return await asyncio.wrap_future(_pool().submit(functools.partial(fn, *args, **kwargs)))


def _on_loop(loop: asyncio.AbstractEventLoop, fn: Callable[..., object]) -> Callable[..., object]:
    """``fn`` made callable from any thread: it runs on ``loop``'s thread, and the caller waits for it (so an
    exception it raises reaches the caller, as a synchronous callback's would)."""

    def call(*args: Any) -> object:
        if _running_loop() is loop:
            return fn(*args)
        done: concurrent.futures.Future[object] = concurrent.futures.Future()

        def run() -> None:
            try:
                done.set_result(fn(*args))
            except BaseException as e:  # handed to the waiting thread, which re-raises it
                done.set_exception(e)

        loop.call_soon_threadsafe(run)
        return done.result()

    return call


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _maybe_on_loop(loop: asyncio.AbstractEventLoop, fn: Callable[..., object] | None) -> Any:
    return None if fn is None else _on_loop(loop, fn)


def _close_when_started(starting: asyncio.Future[PredictionStream]) -> None:
    if not starting.cancelled() and starting.exception() is None:
        _pool().submit(starting.result().close)


class AsyncPredictionStream:
    """A running prediction, for ``async for``; then :meth:`result`.

    ``model.respond_stream(...)`` returns it without starting it: ``await`` it (LM Studio's form) or iterate it
    directly. ``await stream.cancel()`` stops the prediction after its current token (stop reason "userStopped");
    cancelling the task that iterates it does the same. Leaving ``async with stream`` (or ``await stream.aclose()``)
    cancels a prediction still running.
    """

    def __init__(self, start: Callable[[], PredictionStream]) -> None:
        """Wrap a function that starts the synchronous stream; the handle creates streams, users don't."""
        self._start_sync = start
        self._sync: PredictionStream | None = None
        self._starting: asyncio.Future[PredictionStream] | None = None
        self._queue: asyncio.Queue[tuple[str, Any]] | None = None
        self._pump: threading.Thread | None = None
        self._ended = False

    async def _started(self) -> PredictionStream:
        if self._sync is not None:
            return self._sync
        if self._starting is None:
            self._starting = asyncio.ensure_future(_run(self._start_sync))
        try:
            self._sync = await asyncio.shield(self._starting)
        except asyncio.CancelledError:
            # The task that started it is cancelled: so is the prediction, once it has started.
            self._starting.add_done_callback(_close_when_started)
            raise
        return self._sync

    def __await__(self) -> Generator[Any, None, AsyncPredictionStream]:
        """Start the prediction (its prompt errors are raised here) and return the stream."""
        return self._await_started().__await__()

    async def _await_started(self) -> AsyncPredictionStream:
        await self._started()
        return self

    def __aiter__(self) -> AsyncPredictionStream:
        """The stream is its own asynchronous iterator."""
        return self

    def _start_pump(self, stream: PredictionStream) -> asyncio.Queue[tuple[str, Any]]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

        def put(item: tuple[str, Any]) -> None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is left to read it
                loop.call_soon_threadsafe(queue.put_nowait, item)

        def pump() -> None:
            try:
                for fragment in stream:
                    put(("fragment", fragment))
                stream.result()
                put(("end", None))
            except BaseException as e:  # handed to the reader, which re-raises it
                put(("error", e))

        self._pump = threading.Thread(target=pump, name="modelhost-stream", daemon=True)
        self._pump.start()
        return queue

    async def __anext__(self) -> LlmPredictionFragment:
        """The next fragment; at the end, the result is recorded and StopAsyncIteration raised."""
        if self._ended:
            raise StopAsyncIteration
        stream = await self._started()
        if self._queue is None:
            self._queue = self._start_pump(stream)
        try:
            kind, value = await self._queue.get()
        except asyncio.CancelledError:
            _pool().submit(stream.cancel)  # the task reading the stream is cancelled: so is the prediction
            raise
        if kind == "fragment":
            fragment: LlmPredictionFragment = value
            return fragment
        self._ended = True
        if kind == "error":
            raise value
        raise StopAsyncIteration

    def __iter__(self) -> Iterator[LlmPredictionFragment]:
        """Synchronous iteration (LM Studio's docs have ``for fragment in await model.respond_stream(...)``): works,
        but blocks the event loop until the prediction ends. Prefer ``async for``."""
        if self._queue is not None:
            raise RuntimeError("this stream is already being iterated with `async for`")
        if self._sync is None:
            if self._starting is not None:
                raise RuntimeError("await the stream before iterating it synchronously")
            self._sync = self._start_sync()
        self._ended = True
        return iter(self._sync)

    async def cancel(self) -> None:
        """Stop after the current token; the stream then ends with stop reason "userStopped"."""
        if self._sync is None and self._starting is None:
            return
        stream = await self._started()
        await _run(stream.cancel)

    def result(self) -> PredictionResult:
        """The result, once the stream has been iterated to its end (else ``ModelHostError``; see
        :meth:`wait_for_result`)."""
        if self._sync is None or not self._sync.finished:
            raise ModelHostError("the prediction has not finished: iterate the stream, or await wait_for_result()")
        return self._sync.result()

    async def wait_for_result(self) -> PredictionResult:
        """Run the prediction to its end and return the result."""
        async for _ in self:
            pass
        return self.result()

    @property
    def finished(self) -> bool:
        """Whether the prediction has ended and its result is recorded."""
        return self._sync is not None and self._sync.finished

    async def aclose(self) -> None:
        """Cancel the prediction if it is still running and wait for it to stop."""
        if self._sync is None and self._starting is None:
            return
        stream = await self._started()
        if self._queue is None:
            await _run(stream.close)
            return
        await _run(stream.cancel)
        with contextlib.suppress(ModelHostError):
            async for _ in self:
                pass

    async def __aenter__(self) -> AsyncPredictionStream:
        """Start the stream for an ``async with`` block; leaving it closes the stream."""
        return await self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Close the stream."""
        await self.aclose()


_SH = TypeVar("_SH", bound=ModelHandle)


class AsyncModelHandle(HandleIdentity, Generic[_SH]):
    """A handle on one loaded instance, for ``await``. It holds no memory: after unload, calls raise
    ``ModelUnloadedError``."""

    def __init__(self, handle: _SH) -> None:
        """Wrap a synchronous handle; the client creates handles, users don't."""
        self._handle = self._names = handle

    async def is_loaded(self) -> bool:
        """Whether the instance is still loaded."""
        return await _run(self._handle.is_loaded)

    async def get_info(self) -> ModelInstanceInfo:
        """Info on the instance (as the synchronous ``get_info()``)."""
        return await _run(self._handle.get_info)

    async def get_load_config(self) -> AnyLoadConfig:
        """The load config actually applied."""
        return await _run(self._handle.get_load_config)

    async def get_context_length(self) -> int:
        """The context length the instance was loaded with."""
        return await _run(self._handle.get_context_length)

    async def unload(self) -> None:
        """Unload the instance (after requests in flight finish). Unloading twice is a no-op."""
        await _run(self._handle.unload)

    @overload
    async def tokenize(self, input: str) -> list[int]: ...  # type: ignore[overload-overlap]
    @overload
    async def tokenize(self, input: Iterable[str]) -> list[list[int]]: ...
    async def tokenize(self, input: str | Iterable[str]) -> list[int] | list[list[int]]:
        """Token ids as the model sees them (as the synchronous ``tokenize()``)."""
        return await _run(self._handle.tokenize, input)

    async def count_tokens(self, input: str) -> int:
        """Number of tokens in ``input``."""
        return await _run(self._handle.count_tokens, input)


class AsyncLLM(AsyncModelHandle[LLM]):
    """A handle on a loaded language model, for ``await``."""

    async def get_info(self) -> LlmInstanceInfo:
        """Info on the instance."""
        return await _run(self._handle.get_info)

    async def get_load_config(self) -> LlmLoadModelConfig:
        """The load config actually applied."""
        return await _run(self._handle.get_load_config)

    async def apply_prompt_template(self, history: AnyChatInput) -> str:
        """Render a chat with the model's own chat template, ready for the assistant's reply."""
        return await _run(self._handle.apply_prompt_template, history)

    def _stream(
        self,
        method: Callable[..., PredictionStream],
        prompt: Any,
        config: LlmPredictionConfig | Mapping[str, Any] | None,
        callbacks: Mapping[str, Callable[..., object] | None],
    ) -> AsyncPredictionStream:
        loop = asyncio.get_running_loop()
        on_loop = {name: _maybe_on_loop(loop, fn) for name, fn in callbacks.items()}
        return AsyncPredictionStream(functools.partial(method, prompt, config, **on_loop))

    def respond_stream(
        self,
        history: AnyChatInput,
        config: LlmPredictionConfig | Mapping[str, Any] | None = None,
        *,
        on_message: PredictionMessageCallback | None = None,
        on_first_token: PredictionFirstTokenCallback | None = None,
        on_prediction_fragment: PredictionFragmentCallback | None = None,
        on_prompt_processing_progress: PromptProcessingCallback | None = None,
    ) -> AsyncPredictionStream:
        """The assistant's reply to a chat, as a stream: ``async for`` it (or ``await`` it first, as LM Studio's
        docs do). Arguments as the synchronous ``respond_stream()``; callbacks run on the event loop."""
        callbacks = {
            "on_message": on_message,
            "on_first_token": on_first_token,
            "on_prediction_fragment": on_prediction_fragment,
            "on_prompt_processing_progress": on_prompt_processing_progress,
        }
        return self._stream(self._handle.respond_stream, history, config, callbacks)

    async def respond(
        self,
        history: AnyChatInput,
        config: LlmPredictionConfig | Mapping[str, Any] | None = None,
        *,
        on_message: PredictionMessageCallback | None = None,
        on_first_token: PredictionFirstTokenCallback | None = None,
        on_prediction_fragment: PredictionFragmentCallback | None = None,
        on_prompt_processing_progress: PromptProcessingCallback | None = None,
    ) -> PredictionResult:
        """The assistant's reply to a chat. Cancelling the task stops the prediction."""
        stream = self.respond_stream(
            history,
            config,
            on_message=on_message,
            on_first_token=on_first_token,
            on_prediction_fragment=on_prediction_fragment,
            on_prompt_processing_progress=on_prompt_processing_progress,
        )
        async with stream:
            return await stream.wait_for_result()

    def complete_stream(
        self,
        prompt: str,
        config: LlmPredictionConfig | Mapping[str, Any] | None = None,
        *,
        on_message: PredictionMessageCallback | None = None,
        on_first_token: PredictionFirstTokenCallback | None = None,
        on_prediction_fragment: PredictionFragmentCallback | None = None,
        on_prompt_processing_progress: PromptProcessingCallback | None = None,
    ) -> AsyncPredictionStream:
        """Continue raw text, as a stream. Arguments as the synchronous ``complete_stream()``."""
        callbacks = {
            "on_message": on_message,
            "on_first_token": on_first_token,
            "on_prediction_fragment": on_prediction_fragment,
            "on_prompt_processing_progress": on_prompt_processing_progress,
        }
        return self._stream(self._handle.complete_stream, prompt, config, callbacks)

    async def complete(
        self,
        prompt: str,
        config: LlmPredictionConfig | Mapping[str, Any] | None = None,
        *,
        on_message: PredictionMessageCallback | None = None,
        on_first_token: PredictionFirstTokenCallback | None = None,
        on_prediction_fragment: PredictionFragmentCallback | None = None,
        on_prompt_processing_progress: PromptProcessingCallback | None = None,
    ) -> PredictionResult:
        """Continue raw text. Cancelling the task stops the prediction."""
        stream = self.complete_stream(
            prompt,
            config,
            on_message=on_message,
            on_first_token=on_first_token,
            on_prediction_fragment=on_prediction_fragment,
            on_prompt_processing_progress=on_prompt_processing_progress,
        )
        async with stream:
            return await stream.wait_for_result()

    async def evaluate(self, token_ids: Sequence[int]) -> npt.NDArray[np.float32]:
        """Logits at every position, float32 ``(len(token_ids), vocab)``."""
        return await _run(self._handle.evaluate, token_ids)


class AsyncEmbeddingModel(AsyncModelHandle[EmbeddingModel]):
    """A handle on a loaded embedding model, for ``await``."""

    async def get_info(self) -> EmbeddingModelInstanceInfo:
        """Info on the instance."""
        return await _run(self._handle.get_info)

    async def get_load_config(self) -> EmbeddingLoadModelConfig:
        """The load config actually applied."""
        return await _run(self._handle.get_load_config)

    async def embed(self, input: str | Iterable[str]) -> npt.NDArray[np.float32]:
        """Embedding vectors: ``(dim,)`` for a str, ``(n, dim)`` for n texts."""
        return await _run(self._handle.embed, input)


AnyAsyncModelHandle = Union[AsyncLLM, AsyncEmbeddingModel]

_AH = TypeVar("_AH", AsyncLLM, AsyncEmbeddingModel)
_H = TypeVar("_H", LLM, EmbeddingModel)
_C = TypeVar("_C", LlmLoadModelConfig, EmbeddingLoadModelConfig)


def _async_handle(handle: ModelHandle) -> AnyAsyncModelHandle:
    if isinstance(handle, LLM):
        return AsyncLLM(handle)
    assert isinstance(handle, EmbeddingModel)
    return AsyncEmbeddingModel(handle)


class _AsyncNamespace(Generic[_AH, _H, _C]):
    """Operations on one kind of model, for ``await``: ``client.llm`` and ``client.embedding``."""

    _async_type: Callable[[_H], _AH]

    def __init__(self, namespace: _Namespace[_H, _C]) -> None:
        self._sync: _Namespace[_H, _C] = namespace

    async def _load(self, start: Callable[[Callable[[float], object]], _H], on_load_progress: Any, new: bool) -> _AH:
        loop = asyncio.get_running_loop()
        cancelled = threading.Event()
        report = _maybe_on_loop(loop, on_load_progress)

        def progress(fraction: float) -> None:
            # Raising here is how a load is cancelled: the core (or the server) unmaps and drops it.
            if cancelled.is_set():
                raise LoadCancelledError("the task awaiting the load was cancelled")
            if report is not None:
                report(fraction)

        future = _pool().submit(start, progress)
        try:
            handle = await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            cancelled.set()
            if new:  # a new instance that finished loading meanwhile has no other user
                future.add_done_callback(_unload_if_loaded)
            raise
        return type(self)._async_type(handle)

    async def model(
        self,
        key: str | None = None,
        /,
        *,
        ttl: float | None = DEFAULT_TTL,
        config: _C | Mapping[str, Any] | None = None,
        on_load_progress: ModelLoadingCallback | None = None,
        no_hup: bool = False,
    ) -> _AH:
        """Get a loaded instance of a model, loading it if there is none (as the synchronous ``model()``).

        Cancelling the task cancels a load this call started; the progress callback runs on the event loop.
        """

        def start(progress: Callable[[float], object]) -> _H:
            return self._sync.model(key, ttl=ttl, config=config, on_load_progress=progress, no_hup=no_hup)

        return await self._load(start, on_load_progress, new=False)

    async def load_new_instance(
        self,
        key: str,
        instance_identifier: str | None = None,
        *,
        ttl: float | None = DEFAULT_TTL,
        config: _C | Mapping[str, Any] | None = None,
        on_load_progress: ModelLoadingCallback | None = None,
        no_hup: bool = False,
    ) -> _AH:
        """Load a new instance of a model (as the synchronous ``load_new_instance()``). Cancelling the task
        cancels the load."""

        def start(progress: Callable[[float], object]) -> _H:
            return self._sync.load_new_instance(
                key, instance_identifier, ttl=ttl, config=config, on_load_progress=progress, no_hup=no_hup
            )

        return await self._load(start, on_load_progress, new=True)

    async def list_loaded(self) -> list[_AH]:
        """Handles on every loaded instance of this kind."""
        handles = await _run(self._sync.list_loaded)
        return [type(self)._async_type(h) for h in handles]

    async def unload(self, key_or_identifier: str) -> list[str]:
        """Unload an instance, by identifier (or by model key: its instances); the identifiers unloaded."""
        return await _run(self._sync.unload, key_or_identifier)

    async def estimate(self, key: str, config: _C | Mapping[str, Any] | None = None) -> MemoryEstimate:
        """The memory a load would take, without loading."""
        return await _run(self._sync.estimate, key, config)

    async def list_downloaded(self) -> list[AsyncDownloadedModel]:
        """The models of this kind in the models directory."""
        models = await _run(self._sync.list_downloaded)
        return [AsyncDownloadedModel._attach(m, self) for m in models]

    def __repr__(self) -> str:
        return f"<{type(self).__name__} of {self._sync!r}>"


def _unload_if_loaded(future: concurrent.futures.Future[Any]) -> None:
    if future.cancelled() or future.exception() is not None:
        return
    with contextlib.suppress(ModelHostError):
        future.result().unload()


class AsyncLlmNamespace(_AsyncNamespace[AsyncLLM, LLM, LlmLoadModelConfig]):
    """``client.llm``: language models."""

    _async_type = AsyncLLM


class AsyncEmbeddingNamespace(_AsyncNamespace[AsyncEmbeddingModel, EmbeddingModel, EmbeddingLoadModelConfig]):
    """``client.embedding``: embedding models."""

    _async_type = AsyncEmbeddingModel


@dataclass(frozen=True)
class AsyncDownloadedModel(DownloadedModel):
    """A model in the models directory; it loads itself with ``await model.model()`` / ``load_new_instance()``."""

    @classmethod
    def _attach(cls, model: DownloadedModel, loader: _AsyncNamespace[Any, Any, Any]) -> AsyncDownloadedModel:
        fields = {k: v for k, v in vars(model).items() if k != "_loader"}
        return cls(**fields, _loader=loader)

    async def model(  # type: ignore[override]
        self,
        *,
        ttl: float | None = DEFAULT_TTL,
        config: AnyLoadConfig | Mapping[str, Any] | None = None,
        on_load_progress: Any = None,
    ) -> AnyAsyncModelHandle:
        """Get a loaded instance of this model, loading it if there is none."""
        # The loader is an async namespace: the inherited method returns its coroutine.
        awaitable: Awaitable[AnyAsyncModelHandle] = super().model(  # type: ignore[assignment]
            ttl=ttl, config=config, on_load_progress=on_load_progress
        )
        return await awaitable

    async def load_new_instance(  # type: ignore[override]
        self,
        *,
        ttl: float | None = DEFAULT_TTL,
        instance_identifier: str | None = None,
        config: AnyLoadConfig | Mapping[str, Any] | None = None,
        on_load_progress: Any = None,
    ) -> AnyAsyncModelHandle:
        """Load a new instance of this model."""
        awaitable: Awaitable[AnyAsyncModelHandle] = super().load_new_instance(  # type: ignore[assignment]
            ttl=ttl, instance_identifier=instance_identifier, config=config, on_load_progress=on_load_progress
        )
        return await awaitable


class AsyncClient:
    """The asynchronous client: ``async with AsyncClient() as client`` (in-process) or
    ``AsyncClient("127.0.0.1:41234")`` (a server); arguments as :class:`Client`'s.

    Example:
        >>> async with AsyncClient() as client:  # doctest: +SKIP
        ...     model = await client.llm.model("smollm2-135m-instruct")
        ...     async for fragment in model.respond_stream("Hello!"):
        ...         print(fragment.content, end="")
    """

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
        """Open a client (see :class:`Client`; a remote one checks that its server answers)."""
        self._client = Client(
            location,
            models_dir=models_dir,
            api_host=api_host,
            api_token=api_token,
            memory_budget=memory_budget,
            max_loaded=max_loaded,
            auto_evict=auto_evict,
            isolated=isolated,
        )
        self.llm = AsyncLlmNamespace(self._client.llm)
        self.embedding = AsyncEmbeddingNamespace(self._client.embedding)

    @property
    def models_dir(self) -> str:
        """The models directory (the server's, for a remote client)."""
        return self._client.models_dir

    @property
    def api_host(self) -> str | None:
        """The server's URL for a remote client, None in-process."""
        return self._client.api_host

    @staticmethod
    async def is_valid_api_host(api_host: str, api_token: str | None = None) -> bool:
        """Whether a modelhost server answers at ``api_host``."""
        return await _run(Client.is_valid_api_host, api_host, api_token)

    @staticmethod
    async def find_default_local_api_host() -> str | None:
        """The local server that answers, as :meth:`Client.find_default_local_api_host`."""
        return await _run(Client.find_default_local_api_host)

    async def list_downloaded_models(self, kind: str | None = None) -> list[AsyncDownloadedModel]:
        """The models in the models directory, from their headers only."""
        models = await _run(self._client.list_downloaded_models, kind)
        return [AsyncDownloadedModel._attach(m, self.llm if m.type == "llm" else self.embedding) for m in models]

    async def list_loaded_models(self, kind: str | None = None) -> list[AnyAsyncModelHandle]:
        """Handles on the loaded instances, whoever loaded them."""
        return [_async_handle(h) for h in await _run(self._client.list_loaded_models, kind)]

    def serve(self, host: str = "127.0.0.1", port: int = 0, *, api_token: str | None = None, cors: bool = False) -> Any:
        """As :meth:`Client.serve` (it starts threads and returns at once)."""
        return self._client.serve(host, port, api_token=api_token, cors=cors)

    async def close(self) -> None:
        """Unload the instances this client loaded (except ``no_hup`` ones). Closing twice is a no-op."""
        await _run(self._client.close)

    async def aclose(self) -> None:
        """The same as :meth:`close`."""
        await self.close()

    async def __aenter__(self) -> AsyncClient:
        """Use the client in an ``async with`` block; leaving it closes the client."""
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Close the client."""
        await self.close()

    def __repr__(self) -> str:
        """``AsyncClient(models_dir='...')``."""
        return "Async" + repr(self._client)
