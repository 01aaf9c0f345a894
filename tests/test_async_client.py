"""AsyncClient in-process: every call awaited off the event loop, callbacks on the loop's thread, ``async for``
streams, ``await stream.cancel()``, and cancelling the task cancels the work (a load leaves nothing mapped, a
prediction stops and frees its instance)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import modelhost as lms
import pytest
from helpers import EMB_KEY, LLM_KEY, wait_until
from modelhost import _core

pytestmark = pytest.mark.timeout(120)

# Greedy: counting goes on for the whole budget, where a sampled reply may end within the half second a test waits.
LONG = {"maxTokens": 2000, "temperature": 0}
COUNT = "Count to a thousand: 1, 2, 3,"


def run(main: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(main())  # type: ignore[arg-type]


def test_calls_are_awaited_off_the_loop(models_dir: Path) -> None:
    async def main() -> None:
        loop_thread = threading.get_ident()
        seen: dict[str, set[int]] = {"progress": set(), "fragment": set(), "first": set(), "message": set()}
        async with lms.AsyncClient(models_dir, isolated=True) as client:
            # The loop keeps running while a load runs elsewhere.
            ticks = 0

            async def tick() -> None:
                nonlocal ticks
                while True:
                    ticks += 1
                    await asyncio.sleep(0.001)

            ticker = asyncio.ensure_future(tick())
            progress: list[float] = []

            def on_progress(p: float) -> None:
                progress.append(p)
                seen["progress"].add(threading.get_ident())

            llm = await client.llm.model(LLM_KEY, on_load_progress=on_progress)
            ticker.cancel()
            assert ticks > 0
            assert progress[0] == 0.0 and progress[-1] == 1.0
            assert isinstance(llm, lms.AsyncLLM) and repr(llm) == f"AsyncLLM(identifier='{LLM_KEY}')"
            assert (await llm.get_info()).identifier == LLM_KEY
            assert (await llm.get_load_config()).context_length == await llm.get_context_length() == 4096
            assert await llm.tokenize("Hello, world!") == [19556, 28, 905, 17]
            assert await llm.count_tokens("Hello, world!") == 4
            assert (await llm.evaluate([1, 2, 3])).shape == (3, 49152)
            chat = lms.Chat("Be brief.")
            chat.add_user_message("Hi")
            result = await llm.respond(
                chat,
                {"maxTokens": 4},
                on_message=lambda m: (chat.append(m), seen["message"].add(threading.get_ident())),
                on_first_token=lambda: seen["first"].add(threading.get_ident()),
                on_prediction_fragment=lambda f: seen["fragment"].add(threading.get_ident()),
            )
            assert isinstance(result, lms.PredictionResult) and len(chat) == 3
            emb = await client.embedding.model(EMB_KEY)
            assert (await emb.embed("x")).shape == (384,)
            assert [m.model_key for m in await client.list_loaded_models()] == [LLM_KEY, EMB_KEY]
            assert await client.llm.unload(LLM_KEY) == [LLM_KEY]
            assert not await llm.is_loaded()
        assert all(threads == {loop_thread} for threads in seen.values()), seen

    run(main)


def test_streams(models_dir: Path) -> None:
    async def main() -> None:
        async with lms.AsyncClient(models_dir, isolated=True) as client:
            llm = await client.llm.model(LLM_KEY)
            expected = await llm.complete("The capital of France is", {"temperature": 0, "maxTokens": 12})
            # Iterated directly, or awaited first (both forms are in LM Studio's docs).
            direct = [
                f.content async for f in llm.complete_stream("The capital of France is", expected.prediction_config)
            ]
            stream = await llm.complete_stream("The capital of France is", {"temperature": 0, "maxTokens": 12})
            with pytest.raises(lms.ModelHostError, match="not finished"):
                stream.result()
            awaited = [f.content async for f in stream]
            assert "".join(direct) == "".join(awaited) == expected.content
            assert stream.finished and stream.result().tokens == expected.tokens
            # Cancel while iterating: the stream ends with the partial result.
            stream = llm.complete_stream(COUNT, LONG)
            async for _ in stream:
                await stream.cancel()
            assert stream.result().stats.stop_reason == "userStopped"
            # Cancel before iterating.
            stream = await llm.complete_stream(COUNT, LONG)
            await stream.cancel()
            assert (await stream.wait_for_result()).stats.stop_reason == "userStopped"
            # Leaving `async with` early cancels.
            async with llm.complete_stream(COUNT, LONG) as stream:
                async for _ in stream:
                    break
            assert stream.result().stats.stop_reason == "userStopped"
            # Errors before the stream starts are raised by the await.
            with pytest.raises(lms.InvalidConfigError):
                await llm.complete_stream("x", {"noSuchKey": 1})

    run(main)


def test_cancelling_the_task_cancels_the_prediction(models_dir: Path) -> None:
    async def main() -> None:
        async with lms.AsyncClient(models_dir, isolated=True) as client:
            llm = await client.llm.model(LLM_KEY)
            for start in (lambda: llm.complete(COUNT, LONG), lambda: llm.respond(COUNT, LONG)):
                task = asyncio.ensure_future(start())
                await asyncio.sleep(0.5)
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
                # The instance is free again at once: a short request does not wait for 2000 tokens.
                started = time.monotonic()
                await asyncio.wait_for(llm.complete("Hi", {"maxTokens": 1}), timeout=30)
                assert time.monotonic() - started < 20
                assert (await llm.get_info()).in_flight == 0

    run(main)


def test_cancelling_the_task_cancels_the_load(models_dir: Path) -> None:
    async def main() -> None:
        async with lms.AsyncClient(models_dir, isolated=True) as client:
            progress: list[float] = []
            reached = asyncio.Event()

            def on_progress(p: float) -> None:
                progress.append(p)
                if p > 0:
                    reached.set()
                    time.sleep(0.05)  # hold the load long enough for the cancel to land mid-way

            task = asyncio.ensure_future(client.llm.load_new_instance(LLM_KEY, on_load_progress=on_progress))
            await reached.wait()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await asyncio.sleep(0)
            assert 1.0 not in progress
            wait_until(lambda: _core.mapped_file_count() == 0, timeout=30)
            assert await client.list_loaded_models() == []

    run(main)


def test_a_raising_progress_callback_propagates(models_dir: Path) -> None:
    class Boom(Exception):
        pass

    def explode(progress: float) -> None:
        if progress > 0:
            raise Boom

    async def main() -> None:
        async with lms.AsyncClient(models_dir, isolated=True) as client:
            with pytest.raises(Boom):
                await client.embedding.model(EMB_KEY, on_load_progress=explode)
            assert await client.list_loaded_models() == []

    run(main)
    assert _core.mapped_file_count() == 0


def test_concurrent_tasks(models_dir: Path) -> None:
    async def main() -> None:
        async with lms.AsyncClient(models_dir, isolated=True) as client:
            handles = await asyncio.gather(*(client.llm.model(LLM_KEY) for _ in range(8)))
            assert len(set(handles)) == 1  # single flight: one load for eight callers
            llm = handles[0]
            prompts = [f"Write the number {i} in words:" for i in range(12)]
            greedy = {"temperature": 0, "maxTokens": 6}
            expected = [(await llm.complete(p, greedy)).content for p in prompts]

            async def stream(prompt: str) -> str:
                return "".join([f.content async for f in llm.complete_stream(prompt, greedy)])

            got = await asyncio.gather(*(stream(p) for p in prompts))
            assert got == expected  # none lost, none mixed up

    run(main)


def test_downloaded_models_load_themselves(models_dir: Path) -> None:
    async def main() -> None:
        async with lms.AsyncClient(models_dir, isolated=True) as client:
            (entry,) = await client.embedding.list_downloaded()
            assert isinstance(entry, lms.AsyncDownloadedModel) and entry.model_key == EMB_KEY
            handle = await entry.model()
            assert isinstance(handle, lms.AsyncEmbeddingModel)
            again = await entry.load_new_instance(instance_identifier="second")
            assert again.identifier == "second"
            models = await client.list_downloaded_models()
            assert {m.model_key for m in models} >= {LLM_KEY, EMB_KEY}
            assert all(isinstance(m, lms.AsyncDownloadedModel) for m in models)

    run(main)


def test_async_clients_share_the_process_table(models_dir: Path) -> None:
    with lms.Client(models_dir) as sync_client:
        loaded = sync_client.llm.model(LLM_KEY)

        async def main() -> None:
            async with lms.AsyncClient(models_dir) as client:
                assert (await client.llm.model()).identifier == loaded.identifier
                own = await client.llm.load_new_instance(LLM_KEY)
                assert own.identifier == f"{LLM_KEY}:2"
            assert [h.identifier for h in sync_client.list_loaded_models()] == [LLM_KEY]

        run(main)
