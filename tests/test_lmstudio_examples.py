"""The Python examples of LM Studio's SDK docs (lmstudio-ai/docs, 1_python/), ported.

Each test body is the docs' example, changed only where porting requires it:

* ``import lmstudio as lms`` -> ``import modelhost as lms`` (and ``from lmstudio import Chat`` likewise);
* their model keys -> ours (``smollm2-135m-instruct`` for LLMs, ``all-minilm-l6-v2`` for embeddings);
* ``client.llm.model()`` on a fresh scoped ``Client`` names the model: an LM Studio server already has a model
  loaded, while a new in-process client has nothing loaded until asked;
* the server address (``localhost:1234``) -> the models directory;
* a few examples use a variable defined on an earlier part of their page (``model``, ``chat``, ``initial_text``):
  the test defines it first, outside the example.

The convenience-API examples that take "the currently loaded model" (``lms.llm()``) get it from the fixture, which
loads SmolLM2 into the default client first, as ``lms load`` would. To keep the suite fast, the fixture also caps
every prediction at a few tokens (the examples themselves are unchanged; what they print is not checked).
"""

# The examples keep the docs' own formatting.
# fmt: off
# ruff: noqa: B007

from __future__ import annotations

import builtins
from collections.abc import Iterator
from pathlib import Path

import modelhost
import modelhost.handles
import pytest
from helpers import EMB_KEY, LLM_KEY, assert_ran, placement_warnings_allowed
from modelhost.config import LlmPredictionConfig, prediction_config_from_user

pytestmark = pytest.mark.timeout(120)

MAX_TOKENS = 12


@pytest.fixture
def capped(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every prediction capped at MAX_TOKENS tokens."""

    def cap(config: object) -> LlmPredictionConfig:
        result = prediction_config_from_user(config)  # type: ignore[arg-type]
        if result.max_tokens is None or result.max_tokens is False or result.max_tokens > MAX_TOKENS:
            result.max_tokens = MAX_TOKENS
        return result

    monkeypatch.setattr(modelhost.handles, "prediction_config_from_user", cap)


@pytest.fixture
def lms_env(default_client: None, capped: None) -> Iterator[None]:
    """The default client with SmolLM2 loaded ("lms load"), and every prediction capped."""
    modelhost.llm(LLM_KEY)
    yield


def _feed_input(monkeypatch: pytest.MonkeyPatch, lines: list[str]) -> None:
    answers = iter(lines)

    def fake_input(prompt: str = "") -> str:
        print(prompt, end="")
        try:
            return next(answers)
        except StopIteration:
            raise EOFError from None

    monkeypatch.setattr(builtins, "input", fake_input)


# --- Manage Models in Memory (5_manage-models/loading) -------------------------------------------------------------


def test_loading_get_current_model_convenience(lms_env: None) -> None:
    import modelhost as lms

    model = lms.llm()
    assert model.model_key == LLM_KEY


def test_loading_get_current_model_scoped(lms_env: None) -> None:
    import modelhost as lms

    with lms.Client() as client:
        model = client.llm.model("smollm2-135m-instruct")
    assert model.model_key == LLM_KEY


def test_loading_get_specific_model_convenience(lms_env: None) -> None:
    import modelhost as lms

    model = lms.llm("smollm2-135m-instruct")
    assert model.model_key == LLM_KEY


def test_loading_get_specific_model_scoped(lms_env: None) -> None:
    import modelhost as lms

    with lms.Client() as client:
        model = client.llm.model("smollm2-135m-instruct")
    assert model.model_key == LLM_KEY


def test_loading_new_instance_convenience(lms_env: None) -> None:
    import modelhost as lms

    client = lms.get_default_client()
    model = client.llm.load_new_instance("smollm2-135m-instruct")
    another_model = client.llm.load_new_instance("smollm2-135m-instruct", "my-second-model")
    assert model.identifier == f"{LLM_KEY}:2"  # the fixture's instance is the first
    assert another_model.identifier == "my-second-model"


def test_loading_new_instance_scoped(lms_env: None) -> None:
    import modelhost as lms

    with lms.Client() as client:
        model = client.llm.load_new_instance("smollm2-135m-instruct")
        another_model = client.llm.load_new_instance("smollm2-135m-instruct", "my-second-model")
        assert (model.identifier, another_model.identifier) == (LLM_KEY, "my-second-model")


def test_loading_unload_convenience(lms_env: None) -> None:
    import modelhost as lms

    model = lms.llm()
    model.unload()
    assert lms.list_loaded_models() == []


def test_loading_unload_scoped(lms_env: None) -> None:
    import modelhost as lms

    with lms.Client() as client:
        model = client.llm.model("smollm2-135m-instruct")
        model.unload()
        assert client.list_loaded_models() == []


def test_loading_ttl_convenience(lms_env: None) -> None:
    import modelhost as lms

    model = lms.llm("smollm2-135m-instruct", ttl=3600)
    assert model.get_info().ttl == 3600


def test_loading_ttl_scoped(lms_env: None) -> None:
    import modelhost as lms

    with lms.Client() as client:
        model = client.llm.model("smollm2-135m-instruct", ttl=3600)
        assert model.get_info().ttl == 3600


# --- List Downloaded / Loaded Models -------------------------------------------------------------------------------


def test_list_downloaded_convenience(lms_env: None, capsys: pytest.CaptureFixture[str]) -> None:
    import modelhost as lms

    downloaded = lms.list_downloaded_models()
    llm_only = lms.list_downloaded_models("llm")
    embedding_only = lms.list_downloaded_models("embedding")

    for model in downloaded:
        print(model)

    assert LLM_KEY in capsys.readouterr().out
    assert {m.type for m in llm_only} == {"llm"} and {m.type for m in embedding_only} == {"embedding"}


def test_list_downloaded_scoped(lms_env: None, capsys: pytest.CaptureFixture[str]) -> None:
    import modelhost as lms

    with lms.Client() as client:
        downloaded = client.list_downloaded_models()
        llm_only = client.llm.list_downloaded()
        embedding_only = client.embedding.list_downloaded()

    for model in downloaded:
        print(model)

    assert EMB_KEY in capsys.readouterr().out
    assert len(llm_only) + len(embedding_only) == len(downloaded)


def test_list_loaded_convenience(lms_env: None, capsys: pytest.CaptureFixture[str]) -> None:
    import modelhost as lms

    all_loaded_models = lms.list_loaded_models()
    llm_only = lms.list_loaded_models("llm")
    embedding_only = lms.list_loaded_models("embedding")

    print(all_loaded_models)

    assert f"LLM(identifier='{LLM_KEY}')" in capsys.readouterr().out
    assert len(llm_only) == 1 and embedding_only == []


def test_list_loaded_scoped(lms_env: None, capsys: pytest.CaptureFixture[str]) -> None:
    import modelhost as lms

    with lms.Client() as client:
        all_loaded_models = client.list_loaded_models()
        llm_only = client.llm.list_loaded()
        embedding_only = client.embedding.list_loaded()

        print(all_loaded_models)

    assert capsys.readouterr().out == "[]\n"
    assert llm_only == [] and embedding_only == []


# --- Model info -----------------------------------------------------------------------------------------------------


def test_get_model_info_convenience(lms_env: None, capsys: pytest.CaptureFixture[str]) -> None:
    import modelhost as lms

    model = lms.llm()

    print(model.get_info())

    assert LLM_KEY in capsys.readouterr().out


def test_get_model_info_scoped(lms_env: None, capsys: pytest.CaptureFixture[str]) -> None:
    import modelhost as lms

    with lms.Client() as client:
        model = client.llm.model("smollm2-135m-instruct")

        print(model.get_info())

    assert "context_length=4096" in capsys.readouterr().out


def test_get_load_config_convenience(lms_env: None, capsys: pytest.CaptureFixture[str]) -> None:
    import modelhost as lms

    model = lms.llm()

    print(model.get_load_config())

    assert "context_length=4096" in capsys.readouterr().out


def test_get_load_config_scoped(lms_env: None, capsys: pytest.CaptureFixture[str]) -> None:
    import modelhost as lms

    with lms.Client() as client:
        model = client.llm.model("smollm2-135m-instruct")

        print(model.get_load_config())

    assert "LlmLoadModelConfig(" in capsys.readouterr().out


def test_get_context_length(lms_env: None) -> None:
    import modelhost as lms

    model = lms.llm()
    context_length = model.get_context_length()
    assert context_length == 4096


def test_does_chat_fit_in_context(lms_env: None, capsys: pytest.CaptureFixture[str]) -> None:
    import modelhost as lms

    def does_chat_fit_in_context(model: lms.LLM, chat: lms.Chat) -> bool:
        # Convert the conversation to a string using the prompt template.
        formatted = model.apply_prompt_template(chat)
        # Count the number of tokens in the string.
        token_count = len(model.tokenize(formatted))
        # Get the current loaded context length of the model
        context_length = model.get_context_length()
        return token_count < context_length

    model = lms.llm()

    chat = lms.Chat.from_history({
        "messages": [
            { "role": "user", "content": "What is the meaning of life." },
            { "role": "assistant", "content": "The meaning of life is..." },
            # ... More messages
        ]
    })

    print("Fits in context:", does_chat_fit_in_context(model, chat))

    assert capsys.readouterr().out == "Fits in context: True\n"


# --- Embedding and tokenization -------------------------------------------------------------------------------------


def test_embedding(lms_env: None) -> None:
    import modelhost as lms

    model = lms.embedding_model("all-minilm-l6-v2")

    embedding = model.embed("Hello, world!")

    assert embedding.shape == (384,)


def test_tokenization(lms_env: None, capsys: pytest.CaptureFixture[str]) -> None:
    import modelhost as lms

    model = lms.llm()

    tokens = model.tokenize("Hello, world!")

    print(tokens) # Array of token IDs.

    token_count = len(model.tokenize("Hello, world!"))
    print("Token count:", token_count)

    assert capsys.readouterr().out == "[19556, 28, 905, 17]\nToken count: 4\n"


# --- Chat Completions -----------------------------------------------------------------------------------------------


def test_chat_quick_example_convenience(lms_env: None, capsys: pytest.CaptureFixture[str]) -> None:
    import modelhost as lms

    model = lms.llm()
    print(model.respond("What is the meaning of life?"))

    assert capsys.readouterr().out.strip()


def test_chat_quick_example_scoped(lms_env: None, capsys: pytest.CaptureFixture[str]) -> None:
    import modelhost as lms

    with lms.Client() as client:
        model = client.llm.model("smollm2-135m-instruct")
        print(model.respond("What is the meaning of life?"))

    assert capsys.readouterr().out.strip()


def test_chat_streaming_convenience(lms_env: None, capsys: pytest.CaptureFixture[str]) -> None:
    import modelhost as lms
    model = lms.llm()

    for fragment in model.respond_stream("What is the meaning of life?"):
        print(fragment.content, end="", flush=True)
    print() # Advance to a new line at the end of the response

    assert capsys.readouterr().out.strip()


def test_chat_streaming_scoped(lms_env: None, capsys: pytest.CaptureFixture[str]) -> None:
    import modelhost as lms

    with lms.Client() as client:
        model = client.llm.model("smollm2-135m-instruct")

        for fragment in model.respond_stream("What is the meaning of life?"):
            print(fragment.content, end="", flush=True)
        print() # Advance to a new line at the end of the response

    assert capsys.readouterr().out.strip()


def test_chat_obtain_a_model(lms_env: None) -> None:
    import modelhost as lms

    model = lms.llm("smollm2-135m-instruct")

    with lms.Client() as client:
        model = client.llm.model("smollm2-135m-instruct")
    assert model.model_key == LLM_KEY


def test_chat_context_respond_and_stats(lms_env: None, capsys: pytest.CaptureFixture[str]) -> None:
    import modelhost as lms

    model = lms.llm("smollm2-135m-instruct")

    # Create a chat with an initial system prompt.
    chat = lms.Chat("You are a resident AI philosopher.")

    # Build the chat context by adding messages of relevant types.
    chat.add_user_message("What is the meaning of life?")
    # ... continued in next example

    # The `chat` object is created in the previous step.
    result = model.respond(chat)

    print(result)

    # `result` is the response from the model.
    print("Model used:", result.model_info.display_name)
    print("Predicted tokens:", result.stats.predicted_tokens_count)
    print("Time to first token (seconds):", result.stats.time_to_first_token_sec)
    print("Stop reason:", result.stats.stop_reason)

    out = capsys.readouterr().out
    assert "Predicted tokens:" in out and "Stop reason:" in out


def test_chat_context_stream_and_stats(lms_env: None, capsys: pytest.CaptureFixture[str]) -> None:
    import modelhost as lms

    model = lms.llm("smollm2-135m-instruct")
    chat = lms.Chat("You are a resident AI philosopher.")
    chat.add_user_message("What is the meaning of life?")

    # The `chat` object is created in the previous step.
    prediction_stream = model.respond_stream(chat)

    for fragment in prediction_stream:
        print(fragment.content, end="", flush=True)
    print() # Advance to a new line at the end of the response

    # After iterating through the prediction fragments,
    # the overall prediction result may be obtained from the stream
    result = prediction_stream.result()

    print("Model used:", result.model_info.display_name)
    print("Predicted tokens:", result.stats.predicted_tokens_count)
    print("Time to first token (seconds):", result.stats.time_to_first_token_sec)
    print("Stop reason:", result.stats.stop_reason)

    assert "Stop reason:" in capsys.readouterr().out


def test_chat_customize_parameters(lms_env: None) -> None:
    import modelhost as lms

    model = lms.llm()
    chat = lms.Chat("You are a resident AI philosopher.")
    chat.add_user_message("What is the meaning of life?")

    result = model.respond(chat, config={
        "temperature": 0.6,
        "maxTokens": 50,
    })

    prediction_stream = model.respond_stream(chat, config={
        "temperature": 0.6,
        "maxTokens": 50,
    })

    assert_ran(result, MAX_TOKENS)
    assert_ran(prediction_stream.result(), MAX_TOKENS)


def test_chatbot(lms_env: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    _feed_input(monkeypatch, ["Hello!", "Tell me a joke."])
    import modelhost as lms

    model = lms.llm()
    chat = lms.Chat("You are a task focused AI assistant")

    while True:
        try:
            user_input = input("You (leave blank to exit): ")
        except EOFError:
            print()
            break
        if not user_input:
            break
        chat.add_user_message(user_input)
        prediction_stream = model.respond_stream(
            chat,
            on_message=chat.append,
        )
        print("Bot: ", end="", flush=True)
        for fragment in prediction_stream:
            print(fragment.content, end="", flush=True)
        print()

    assert [m["role"] for m in chat.to_messages()] == ["system", "user", "assistant", "user", "assistant"]
    assert capsys.readouterr().out.count("Bot: ") == 2


def test_chat_progress_callbacks_convenience(lms_env: None, capsys: pytest.CaptureFixture[str]) -> None:
    import modelhost as lms

    llm = lms.llm()

    response = llm.respond(
        "What is LM Studio?",
        on_prompt_processing_progress = (lambda progress: print(f"{progress*100}% complete")),
    )

    assert capsys.readouterr().out.startswith("0.0% complete\n100.0% complete\n")
    assert_ran(response, MAX_TOKENS)


def test_chat_progress_callbacks_scoped(lms_env: None, capsys: pytest.CaptureFixture[str]) -> None:
    import modelhost as lms

    with lms.Client() as client:
        llm = client.llm.model("smollm2-135m-instruct")

        response = llm.respond(
            "What is LM Studio?",
            on_prompt_processing_progress = (lambda progress: print(f"{progress*100}% complete")),
        )

    assert "100.0% complete" in capsys.readouterr().out
    assert_ran(response, MAX_TOKENS)


# --- Text Completions -------------------------------------------------------------------------------------------------


def test_completion_non_streaming(lms_env: None, capsys: pytest.CaptureFixture[str]) -> None:
    import modelhost as lms

    model = lms.llm("smollm2-135m-instruct")

    # The `model` object is created in the previous step.
    result = model.complete("My name is", config={"maxTokens": 100})

    print(result)

    # `result` is the response from the model.
    print("Model used:", result.model_info.display_name)
    print("Predicted tokens:", result.stats.predicted_tokens_count)
    print("Time to first token (seconds):", result.stats.time_to_first_token_sec)
    print("Stop reason:", result.stats.stop_reason)

    assert "Model used:" in capsys.readouterr().out


def test_completion_streaming(lms_env: None, capsys: pytest.CaptureFixture[str]) -> None:
    import modelhost as lms

    with lms.Client() as client:
        model = client.llm.model("smollm2-135m-instruct")

        # The `model` object is created in the previous step.
        prediction_stream = model.complete_stream("My name is", config={"maxTokens": 100})

        for fragment in prediction_stream:
            print(fragment.content, end="", flush=True)
        print() # Advance to a new line at the end of the response

        # After iterating through the prediction fragments,
        # the overall prediction result may be obtained from the stream
        result = prediction_stream.result()

        print("Model used:", result.model_info.display_name)
        print("Predicted tokens:", result.stats.predicted_tokens_count)
        print("Time to first token (seconds):", result.stats.time_to_first_token_sec)
        print("Stop reason:", result.stats.stop_reason)

    assert "Predicted tokens:" in capsys.readouterr().out


def test_terminal_simulator(lms_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    _feed_input(monkeypatch, ["ls", "cat notes.txt", "exit"])
    import modelhost as lms

    model = lms.llm()
    console_history = []

    while True:
        try:
            user_command = input("$ ")
        except EOFError:
            print()
            break
        if user_command.strip() == "exit":
            break
        console_history.append(f"$ {user_command}")
        history_prompt = "\n".join(console_history)
        prediction_stream = model.complete_stream(
            history_prompt,
            config={ "stopStrings": ["$"] },
        )
        for fragment in prediction_stream:
            print(fragment.content, end="", flush=True)
        print()
        console_history.append(prediction_stream.result().content)

    assert len(console_history) == 4
    assert all("$" not in entry for entry in console_history[1::2])


def test_completion_customize_parameters(lms_env: None) -> None:
    import modelhost as lms

    model = lms.llm()
    initial_text = "My name is"

    result = model.complete(initial_text, config={
        "temperature": 0.6,
        "maxTokens": 50,
    })

    prediction_stream = model.complete_stream(initial_text, config={
        "temperature": 0.6,
        "maxTokens": 50,
    })

    assert_ran(result, MAX_TOKENS)
    assert_ran(prediction_stream.result(), MAX_TOKENS)


def test_completion_progress_callbacks(lms_env: None, capsys: pytest.CaptureFixture[str]) -> None:
    import modelhost as lms

    llm = lms.llm()

    completion = llm.complete(
        "My name is",
        on_prompt_processing_progress = (lambda progress: print(f"{progress*100}% complete")),
    )

    with lms.Client() as client:
        llm = client.llm.model("smollm2-135m-instruct")

        completion = llm.complete(
            "My name is",
            on_prompt_processing_progress = (lambda progress: print(f"{progress*100}% processed")),
        )

    out = capsys.readouterr().out
    assert "100.0% complete" in out and "100.0% processed" in out
    assert_ran(completion, MAX_TOKENS)


# --- Configuring the Model (parameters) ------------------------------------------------------------------------------


def test_parameters_inference(lms_env: None) -> None:
    import modelhost as lms

    model = lms.llm()
    chat = lms.Chat.from_history("What is the meaning of life?")

    result = model.respond(chat, config={
        "temperature": 0.6,
        "maxTokens": 50,
    })

    chat = "My name is"  # `complete` takes text: the docs' tab reuses the name `chat` for it
    result = model.complete(chat, config={
        "temperature": 0.6,
        "maxTokens": 50,
        "stopStrings": ["\n\n"],
      })

    assert "\n\n" not in result.content


def test_parameters_load_with_model_convenience(lms_env: None) -> None:
    with placement_warnings_allowed():
        import modelhost as lms

        model = lms.llm("smollm2-135m-instruct", config={
            "contextLength": 8192,
            "gpu": {
              "ratio": 0.5,
            }
        })

    # Already loaded by the fixture: the config is ignored, as in LM Studio.
    assert model.get_context_length() == 4096


def test_parameters_load_with_model_scoped(lms_env: None) -> None:
    with placement_warnings_allowed():
        import modelhost as lms

        with lms.Client() as client:
            model = client.llm.model(
                "smollm2-135m-instruct",
                config={
                    "contextLength": 8192,
                    "gpu": {
                      "ratio": 0.5,
                    }
                }
            )
            assert model.get_context_length() == 8192


def test_parameters_load_new_instance_convenience(lms_env: None) -> None:
    with placement_warnings_allowed():
        import modelhost as lms

        client = lms.get_default_client()
        model = client.llm.load_new_instance("smollm2-135m-instruct", config={
            "contextLength": 8192,
            "gpu": {
              "ratio": 0.5,
            }
        })

    assert model.get_load_config().context_length == 8192


def test_parameters_load_new_instance_scoped(lms_env: None) -> None:
    with placement_warnings_allowed():
        import modelhost as lms

        with lms.Client() as client:
            model = client.llm.load_new_instance(
                "smollm2-135m-instruct",
                config={
                    "contextLength": 8192,
                    "gpu": {
                      "ratio": 0.5,
                    }
                }
            )
            assert model.get_load_config().context_length == 8192


# --- Working with Chats ----------------------------------------------------------------------------------------------


def test_working_with_chats(lms_env: None) -> None:
    import modelhost as lms
    from modelhost import Chat

    llm = lms.llm()

    # Option 1: Input a Single String
    prediction = llm.respond("What is the meaning of life?")

    # Option 2: Using the `Chat` Helper Class
    chat = Chat("You are a resident AI philosopher.")
    chat.add_user_message("What is the meaning of life?")

    prediction = llm.respond(chat)

    chat = Chat.from_history({"messages": [
      { "role": "system", "content": "You are a resident AI philosopher." },
      { "role": "user", "content": "What is the meaning of life?" },
    ]})

    # This constructs a chat with a single user message
    chat = Chat.from_history("What is the meaning of life?")

    # Option 3: Providing Chat History Data Directly
    prediction = llm.respond({"messages": [
      { "role": "system", "content": "You are a resident AI philosopher." },
      { "role": "user", "content": "What is the meaning of life?" },
    ]})

    assert isinstance(prediction, lms.PredictionResult)
    assert chat.to_messages() == [{"role": "user", "content": "What is the meaning of life?"}]


# --- Cancelling Predictions ------------------------------------------------------------------------------------------


def test_cancelling_convenience(lms_env: None, capsys: pytest.CaptureFixture[str]) -> None:
    import modelhost as lms
    model = lms.llm()

    prediction_stream = model.respond_stream("What is the meaning of life?")
    cancelled = False
    for fragment in prediction_stream:
        if ...: # Cancellation condition will be app specific
            cancelled = True
            prediction_stream.cancel()
            # Note: it is recommended to let the iteration complete,
            # as doing so allows the partial result to be recorded.
            # Breaking the loop *is* permitted, but means the partial result
            # and final prediction stats won't be available to the client
    # The stream allows the prediction result to be retrieved after iteration
    if not cancelled:
        print(prediction_stream.result())

    assert cancelled
    assert prediction_stream.result().stats.stop_reason == "userStopped"


def test_cancelling_scoped(lms_env: None) -> None:
    import modelhost as lms

    with lms.Client() as client:
        model = client.llm.model("smollm2-135m-instruct")

        prediction_stream = model.respond_stream("What is the meaning of life?")
        cancelled = False
        for fragment in prediction_stream:
            if ...: # Cancellation condition will be app specific
                cancelled = True
                prediction_stream.cancel()
                # Note: it is recommended to let the iteration complete,
                # as doing so allows the partial result to be recorded.
                # Breaking the loop *is* permitted, but means the partial result
                # and final prediction stats won't be available to the client
        # The stream allows the prediction result to be retrieved after iteration
        if not cancelled:
            print(prediction_stream.result())

        assert prediction_stream.result().stats.stop_reason == "userStopped"


# --- Introduction, REPL, project setup ------------------------------------------------------------------------------


def test_index_quick_example_convenience(lms_env: None, capsys: pytest.CaptureFixture[str]) -> None:
    import modelhost as lms

    model = lms.llm("smollm2-135m-instruct")
    result = model.respond("What is the meaning of life?")

    print(result)

    assert capsys.readouterr().out.strip()


def test_index_quick_example_scoped(lms_env: None, capsys: pytest.CaptureFixture[str]) -> None:
    import modelhost as lms

    with lms.Client() as client:
        model = client.llm.model("smollm2-135m-instruct")
        result = model.respond("What is the meaning of life?")

        print(result)

    assert capsys.readouterr().out.strip()


def test_repl_session(lms_env: None, capsys: pytest.CaptureFixture[str]) -> None:
    import modelhost as lms
    loaded_models = lms.list_loaded_models()
    for idx, model in enumerate(loaded_models):
        print(f"{idx:>3} {model}")

    model = loaded_models[0]
    chat = lms.Chat("You answer questions concisely")
    chat.add_user_message("Tell me three fruits")
    print(model.respond(chat, on_message=chat.append))
    chat.add_user_message("Tell me three more fruits")
    print(model.respond(chat, on_message=chat.append))
    chat.add_user_message("How many fruits have you told me?")
    print(model.respond(chat, on_message=chat.append))

    assert capsys.readouterr().out.startswith(f"  0 LLM(identifier='{LLM_KEY}')\n")
    assert len(chat) == 7


def test_project_setup_configure_default_client(
    models_dir: Path, default_client: None, capped: None, capsys: pytest.CaptureFixture[str]
) -> None:
    try:
        import modelhost as lms
        MODELS_DIR = str(models_dir)  # was: SERVER_API_HOST = "localhost:1234"

        # This must be the *first* convenience API interaction (otherwise the SDK
        # implicitly creates a client that accesses the default server API host)
        lms.configure_default_client(MODELS_DIR)

        assert Path(lms.get_default_client().models_dir) == Path(MODELS_DIR)
        with pytest.raises(RuntimeError):
            lms.configure_default_client(MODELS_DIR)  # too late now
    finally:
        modelhost._default._reset_default_client()

    import modelhost as lms

    # When using the scoped resource API, each client instance
    # can be configured to use a specific server API host
    with lms.Client(MODELS_DIR) as client:
        model = client.llm.model("smollm2-135m-instruct")

        for fragment in model.respond_stream("What is the meaning of life?"):
            print(fragment.content, end="", flush=True)
        print() # Advance to a new line at the end of the response

    assert capsys.readouterr().out.strip()
