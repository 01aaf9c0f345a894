"""The asynchronous examples of LM Studio's Python SDK docs (lmstudio-ai/docs, 1_python/, "Python (asynchronous
API)"), ported as test_lmstudio_examples.py ports the synchronous ones.

Each example runs as the body of an ``async def`` under ``asyncio.run`` (the docs: "assumes use of an async function
or the python -m asyncio asynchronous REPL"), changed only where porting requires it: the import, our model keys, a
server address of a server the test starts, and a variable an example takes from an earlier part of its page. Where
the docs have a slip, the test says so and runs the example as written wherever it can:

* get-load-config writes ``async with lms.Client()``: the synchronous client cannot be used with ``async with``, so
  that one example uses ``lms.AsyncClient()``;
* chat-completion's streaming example iterates ``model.respond_stream(...)`` without ``await``, the cancelling
  example after ``await``; both work;
* project-setup iterates an awaited stream with a plain ``for``: it works, blocking the event loop while it runs.
"""

# The examples keep the docs' own formatting.
# fmt: off
# ruff: noqa: B007

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack

import modelhost
import pytest
from helpers import EMB_KEY, LLM_KEY, placement_warnings_allowed

pytestmark = pytest.mark.timeout(120)


def run(example: Callable[[], Awaitable[object]]) -> None:
    asyncio.run(example())  # type: ignore[arg-type]


# --- Introduction, REPL, project setup, authentication -----------------------------------------------------------


def test_index_quick_example(lms_env: None, capsys: pytest.CaptureFixture[str]) -> None:
    async def example() -> None:
        import modelhost as lms

        async with lms.AsyncClient() as client:
            model = await client.llm.model("smollm2-135m-instruct")
            result = await model.respond("What is the meaning of life?")

            print(result)

    run(example)
    assert capsys.readouterr().out.strip()


def test_repl_session(lms_env: None, capsys: pytest.CaptureFixture[str]) -> None:
    async def example() -> None:
        import modelhost as lms
        resources = AsyncExitStack()
        client = await resources.enter_async_context(lms.AsyncClient())
        loaded_models = await client.llm.list_loaded()
        for idx, model in enumerate(loaded_models):
            print(f"{idx:>3} {model}")

        model = loaded_models[0]
        chat = lms.Chat("You answer questions concisely")
        chat.add_user_message("Tell me three fruits")
        print(await model.respond(chat, on_message=chat.append))
        chat.add_user_message("Tell me three more fruits")
        print(await model.respond(chat, on_message=chat.append))
        chat.add_user_message("How many fruits have you told me?")
        print(await model.respond(chat, on_message=chat.append))
        await resources.aclose()
        assert len(chat) == 7

    run(example)
    assert capsys.readouterr().out.startswith(f"  0 AsyncLLM(identifier='{LLM_KEY}')\n")


def test_project_setup_async_client_on_a_server(api_host: str, capsys: pytest.CaptureFixture[str]) -> None:
    async def example() -> None:
        import modelhost as lms
        SERVER_API_HOST = api_host  # was: "localhost:1234"

        # When using the asynchronous API, each client instance
        # can be configured to use a specific server API host
        async with lms.AsyncClient(SERVER_API_HOST) as client:
            model = await client.llm.model()

            for fragment in await model.respond_stream("What is the meaning of life?"):
                print(fragment.content, end="", flush=True)
            print() # Advance to a new line at the end of the response

    run(example)
    assert capsys.readouterr().out.strip()


def test_project_setup_is_valid_api_host(api_host: str, capsys: pytest.CaptureFixture[str]) -> None:
    async def example() -> None:
        import modelhost as lms
        SERVER_API_HOST = api_host  # was: "localhost:1234"

        if await lms.AsyncClient.is_valid_api_host(SERVER_API_HOST):
            print(f"An LM Studio API server instance is available at {SERVER_API_HOST}")
        else:
            print("No LM Studio API server instance found at {SERVER_API_HOST}")

    run(example)
    assert capsys.readouterr().out == f"An LM Studio API server instance is available at {api_host}\n"


def test_project_setup_find_default_local_api_host(api_host: str, capsys: pytest.CaptureFixture[str]) -> None:
    async def example() -> None:
        import modelhost as lms

        api_host = await lms.AsyncClient.find_default_local_api_host()
        if api_host is not None:
            print(f"An LM Studio API server instance is available at {api_host}")
        else:
            print("No LM Studio API server instance found on any of the default local ports")

    run(example)
    assert capsys.readouterr().out.startswith("An LM Studio API server instance is available at 127.0.0.1:")


def test_authentication(lms_env: None, capsys: pytest.CaptureFixture[str]) -> None:
    async def example() -> None:
        import modelhost as lms

        # Pass api_token to the AsyncClient constructor
        async with lms.AsyncClient(api_token="your-token-here") as client:
            model = await client.llm.model()
            result = await model.respond("What is the meaning of life?")
            print(result)

    run(example)
    assert capsys.readouterr().out.strip()


# --- Manage Models in Memory (5_manage-models) -------------------------------------------------------------------


def test_loading_get_current_model(lms_env: None) -> None:
    async def example() -> None:
        import modelhost as lms

        async with lms.AsyncClient() as client:
            model = await client.llm.model()
        assert model.model_key == LLM_KEY

    run(example)


def test_loading_get_specific_model(lms_env: None) -> None:
    async def example() -> None:
        import modelhost as lms

        async with lms.AsyncClient() as client:
            model = await client.llm.model("smollm2-135m-instruct")
        assert model.identifier == LLM_KEY

    run(example)


def test_loading_new_instance(lms_env: None) -> None:
    async def example() -> None:
        import modelhost as lms

        async with lms.AsyncClient() as client:
            model = await client.llm.load_new_instance("smollm2-135m-instruct")
            another_model = await client.llm.load_new_instance("smollm2-135m-instruct", "my-second-model")
            assert (model.identifier, another_model.identifier) == (f"{LLM_KEY}:2", "my-second-model")
        # Leaving the block unloaded the client's own instances, and only those.
        assert [m.identifier for m in modelhost.list_loaded_models()] == [LLM_KEY]

    run(example)


def test_loading_unload(lms_env: None) -> None:
    async def example() -> None:
        import modelhost as lms

        async with lms.AsyncClient() as client:
            model = await client.llm.model()
            await model.unload()
            assert await client.list_loaded_models() == []

    run(example)


def test_loading_ttl(lms_env: None) -> None:
    async def example() -> None:
        import modelhost as lms

        async with lms.AsyncClient() as client:
            model = await client.llm.model("smollm2-135m-instruct", ttl=3600)
            assert (await model.get_info()).ttl == 3600

    run(example)


def test_list_downloaded(lms_env: None, capsys: pytest.CaptureFixture[str]) -> None:
    async def example() -> None:
        import modelhost as lms

        async with lms.AsyncClient() as client:
            downloaded = await client.list_downloaded_models()
            llm_only = await client.llm.list_downloaded()
            embedding_only = await client.embedding.list_downloaded()

        for model in downloaded:
            print(model)
        assert {m.type for m in llm_only} == {"llm"} and {m.type for m in embedding_only} == {"embedding"}

    run(example)
    out = capsys.readouterr().out
    assert LLM_KEY in out and EMB_KEY in out


def test_list_loaded(lms_env: None, capsys: pytest.CaptureFixture[str]) -> None:
    async def example() -> None:
        import modelhost as lms

        async with lms.AsyncClient() as client:
            all_loaded_models = await client.list_loaded_models()
            llm_only = await client.llm.list_loaded()
            embedding_only = await client.embedding.list_loaded()

            print(all_loaded_models)
        assert len(llm_only) == 1 and embedding_only == []

    run(example)
    assert capsys.readouterr().out == f"[AsyncLLM(identifier='{LLM_KEY}')]\n"


# --- Model info (6_model-info) -----------------------------------------------------------------------------------


def test_get_model_info(lms_env: None, capsys: pytest.CaptureFixture[str]) -> None:
    async def example() -> None:
        import modelhost as lms

        async with lms.AsyncClient() as client:
            model = await client.llm.model()

            print(await model.get_info())

    run(example)
    assert "context_length=4096" in capsys.readouterr().out


def test_get_load_config(lms_env: None, capsys: pytest.CaptureFixture[str]) -> None:
    async def example() -> None:
        import modelhost as lms

        async with lms.AsyncClient() as client:  # the docs: lms.Client(), a slip (see the module docstring)
            model = await client.llm.model()

            print(await model.get_load_config())

    run(example)
    assert "LlmLoadModelConfig(" in capsys.readouterr().out


# --- Chat completions (1_llm-prediction/chat-completion) ---------------------------------------------------------


def test_chat_quick_example(lms_env: None, capsys: pytest.CaptureFixture[str]) -> None:
    async def example() -> None:
        import modelhost as lms

        async with lms.AsyncClient() as client:
            model = await client.llm.model()
            print(await model.respond("What is the meaning of life?"))

    run(example)
    assert capsys.readouterr().out.strip()


def test_chat_streaming(lms_env: None, capsys: pytest.CaptureFixture[str]) -> None:
    async def example() -> None:
        import modelhost as lms

        async with lms.AsyncClient() as client:
            model = await client.llm.model()

            async for fragment in model.respond_stream("What is the meaning of life?"):
                print(fragment.content, end="", flush=True)
            print() # Advance to a new line at the end of the response

    run(example)
    assert capsys.readouterr().out.strip()


def test_chat_obtain_a_model_and_respond(lms_env: None, capsys: pytest.CaptureFixture[str]) -> None:
    async def example() -> None:
        import modelhost as lms

        async with lms.AsyncClient() as client:
            model = await client.llm.model("smollm2-135m-instruct")

            chat = lms.Chat("You are a resident AI philosopher.")
            chat.add_user_message("What is the meaning of life?")

            # The `chat` object is created in the previous step.
            result = await model.respond(chat)

            print(result)

            # The `chat` object is created in the previous step.
            prediction_stream = await model.respond_stream(chat)

            async for fragment in prediction_stream:
                print(fragment.content, end="", flush=True)
            print() # Advance to a new line at the end of the response

            print("Stop reason:", prediction_stream.result().stats.stop_reason)

    run(example)
    assert "Stop reason:" in capsys.readouterr().out


def test_chat_customize_parameters(lms_env: None) -> None:
    async def example() -> None:
        import modelhost as lms

        async with lms.AsyncClient() as client:
            model = await client.llm.model()
            chat = lms.Chat("You are a resident AI philosopher.")
            chat.add_user_message("What is the meaning of life?")

            result = await model.respond(chat, config={
                "temperature": 0.6,
                "maxTokens": 50,
            })

            prediction_stream = await model.respond_stream(chat, config={
                "temperature": 0.6,
                "maxTokens": 50,
            })
            assert result.stats.predicted_tokens_count is not None
            assert (await prediction_stream.wait_for_result()).content is not None

    run(example)


def test_chat_progress_callbacks(lms_env: None, capsys: pytest.CaptureFixture[str]) -> None:
    async def example() -> None:
        import modelhost as lms

        async with lms.AsyncClient() as client:
            llm = await client.llm.model()

            response = await llm.respond(
                "What is LM Studio?",
                on_prompt_processing_progress = (lambda progress: print(f"{progress*100}% complete")),
            )
        assert response.content is not None

    run(example)
    assert capsys.readouterr().out.startswith("0.0% complete\n100.0% complete\n")


# --- Text completions (1_llm-prediction/completion) --------------------------------------------------------------


def test_completion(lms_env: None, capsys: pytest.CaptureFixture[str]) -> None:
    async def example() -> None:
        import modelhost as lms

        async with lms.AsyncClient() as client:
            model = await client.llm.model("smollm2-135m-instruct")

            # The `model` object is created in the previous step.
            result = await model.complete("My name is", config={"maxTokens": 100})

            print(result)

            # The `model` object is created in the previous step.
            prediction_stream = await model.complete_stream("My name is", config={"maxTokens": 100})

            async for fragment in prediction_stream:
                print(fragment.content, end="", flush=True)
            print() # Advance to a new line at the end of the response

            print("Predicted tokens:", prediction_stream.result().stats.predicted_tokens_count)

    run(example)
    assert "Predicted tokens:" in capsys.readouterr().out


def test_completion_customize_parameters(lms_env: None) -> None:
    async def example() -> None:
        import modelhost as lms

        async with lms.AsyncClient() as client:
            model = await client.llm.model()
            initial_text = "My name is"

            result = await model.complete(initial_text, config={
                "temperature": 0.6,
                "maxTokens": 50,
            })

            prediction_stream = await model.complete_stream(initial_text, config={
                "temperature": 0.6,
                "maxTokens": 50,
            })
            assert result.content is not None
            assert (await prediction_stream.wait_for_result()).content is not None

    run(example)


def test_completion_progress_callbacks(lms_env: None, capsys: pytest.CaptureFixture[str]) -> None:
    async def example() -> None:
        import modelhost as lms

        async with lms.AsyncClient() as client:
            llm = await client.llm.model()

            completion = await llm.complete(
                "My name is",
                on_prompt_processing_progress = (lambda progress: print(f"{progress*100}% processed")),
            )
        assert completion.content is not None

    run(example)
    assert "100.0% processed" in capsys.readouterr().out


# --- Configuring the model (1_llm-prediction/parameters) ---------------------------------------------------------


def test_parameters_load_with_model(lms_env: None) -> None:
    async def example() -> None:
        import modelhost as lms

        async with lms.AsyncClient() as client:
            model = await client.llm.model(
                "smollm2-135m-instruct",
                config={
                    "contextLength": 8192,
                    "gpu": {
                      "ratio": 0.5,
                    }
                }
            )
            # Already loaded in the process: the config is ignored, as in LM Studio.
            assert await model.get_context_length() == 4096

    with placement_warnings_allowed():
        run(example)


def test_parameters_load_new_instance(lms_env: None) -> None:
    async def example() -> None:
        import modelhost as lms

        async with lms.AsyncClient() as client:
            model = await client.llm.load_new_instance(
                "smollm2-135m-instruct",
                config={
                    "contextLength": 8192,
                    "gpu": {
                      "ratio": 0.5,
                    }
                }
            )
            assert (await model.get_load_config()).context_length == 8192

    with placement_warnings_allowed():
        run(example)


# --- Cancelling predictions (1_llm-prediction/cancelling-predictions) --------------------------------------------


def test_cancelling(lms_env: None, capsys: pytest.CaptureFixture[str]) -> None:
    async def example() -> None:
        import modelhost as lms

        async with lms.AsyncClient() as client:
            model = await client.llm.model()

            prediction_stream = await model.respond_stream("What is the meaning of life?")
            cancelled = False
            async for fragment in prediction_stream:
                if ...: # Cancellation condition will be app specific
                    cancelled = True
                    await prediction_stream.cancel()
                    # Note: it is recommended to let the iteration complete,
                    # as doing so allows the partial result to be recorded.
                    # Breaking the loop *is* permitted, but means the partial result
                    # and final prediction stats won't be available to the client
            # The stream allows the prediction result to be retrieved after iteration
            if not cancelled:
                print(prediction_stream.result())
            assert prediction_stream.result().stats.stop_reason == "userStopped"

    run(example)
    assert capsys.readouterr().out == ""
