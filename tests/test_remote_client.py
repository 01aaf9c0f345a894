"""The remote Client (``Client("host:port")``) against a real ``modelhost serve`` process: the in-process API over
HTTP, with the same handles, results and exception classes; progress from the server's events; exact float32
arrays; streams that cancel; unload while streaming; TTL expiry; bad bodies from hypothesis."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import modelhost as lms
import numpy as np
import pytest
from gguf_writer import BOOL, KV, STRING
from helpers import EMB_ALIAS, EMB_KEY, GEMMA_KEY, LLM_ALIAS, LLM_KEY, ServerProcess, wait_until
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from modelhost import _remote
from test_hostile_files import tiny_llama
from test_templates_jinja2 import GEMMA3_TEMPLATE

pytestmark = pytest.mark.timeout(180)

MESSAGES = [
    {"role": "system", "content": "You are a concise assistant."},
    {"role": "user", "content": "What is the capital of France?"},
]
GREEDY = {"temperature": 0, "maxTokens": 24}


class Boom(Exception):
    """Raised by a progress callback."""


@pytest.fixture(scope="module")
def server(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A ``modelhost serve`` child process on the real models dir."""
    process = ServerProcess(models_dir, tmp_path_factory.mktemp("server"))
    yield process
    assert process.stop() == 0


@pytest.fixture
def remote(server: ServerProcess) -> Iterator[lms.Client]:
    """A remote client; afterwards the server has nothing loaded."""
    with lms.Client(server.address) as client:
        yield client
    with lms.Client(server.address) as cleaner:
        for handle in cleaner.list_loaded_models():
            handle.unload()


def test_the_location_rule(server: ServerProcess, models_dir: Path, tmp_path: Path) -> None:
    assert (
        _remote.is_api_host("127.0.0.1:41234") and _remote.is_api_host("localhost:1") and _remote.is_api_host("[::1]:8")
    )
    assert _remote.is_api_host("http://example.org") and _remote.is_api_host("https://h:1/")
    for directory in ("models", "./a:1", "/srv/models", "C:\\models", "a:b", "host:"):
        assert not _remote.is_api_host(directory)
    for location in (server.address, server.url, server.url + "/"):
        with lms.Client(location) as client:
            assert client.api_host == server.url
            assert client.models_dir == str(models_dir)
    with lms.Client(api_host=server.address) as client:
        assert repr(client) == f"Client(api_host={server.url!r})"
    weird = tmp_path / "dir:1"
    weird.mkdir()
    with lms.Client(str(weird)) as client:  # not host:port: a directory
        assert client.api_host is None and client.list_downloaded_models() == []
    with pytest.raises(lms.InvalidConfigError, match="memory_budget"):
        lms.Client(server.address, memory_budget=1)
    with pytest.raises(lms.InvalidConfigError, match="models_dir"):
        lms.Client(api_host=server.address, models_dir=str(models_dir))
    with pytest.raises(lms.ServerConnectionError) as info:
        lms.Client("127.0.0.1:1")
    assert isinstance(info.value, ConnectionError)
    with lms.Client(server.address) as client, pytest.raises(lms.ModelHostError, match="cannot serve"):
        client.serve()


def test_catalog_and_lifecycle(remote: lms.Client, module_client: lms.Client) -> None:
    downloaded = remote.list_downloaded_models()
    assert downloaded == module_client.list_downloaded_models()
    assert LLM_KEY in [m.model_key for m in remote.llm.list_downloaded()]
    with pytest.raises(lms.NoModelLoadedError):
        remote.llm.model()
    progress: list[float] = []
    llm = remote.llm.model(LLM_ALIAS, ttl=600, config={"contextLength": 2048}, on_load_progress=progress.append)
    assert isinstance(llm, lms.LLM) and llm.identifier == llm.model_key == LLM_KEY
    assert progress[0] == 0.0 and progress[-1] == 1.0 and progress == sorted(set(progress))
    assert remote.llm.model(LLM_KEY, on_load_progress=progress.append) == llm  # loaded: no progress this time
    assert progress[-1] == 1.0 and progress.count(1.0) == 1
    info = llm.get_info()
    assert isinstance(info, lms.LlmInstanceInfo)
    assert (info.ttl, info.context_length, info.loaded_by, info.status) == (600, 2048, "client", "idle")
    assert llm.get_load_config().context_length == llm.get_context_length() == 2048
    second = remote.llm.load_new_instance(LLM_KEY)
    named = remote.llm.load_new_instance(LLM_KEY, "named", ttl=None)
    assert (second.identifier, named.identifier, named.get_info().ttl) == (f"{LLM_KEY}:2", "named", None)
    with pytest.raises(lms.InstanceExistsError):
        remote.llm.load_new_instance(LLM_KEY, "named")
    assert sorted(h.identifier for h in remote.llm.list_loaded()) == sorted([LLM_KEY, f"{LLM_KEY}:2", "named"])
    assert remote.llm.unload("named") == ["named"]
    assert not named.is_loaded()
    named.unload()  # a second unload is a no-op
    with pytest.raises(lms.ModelUnloadedError):
        named.get_info()
    assert sorted(remote.llm.unload(LLM_ALIAS)) == sorted([LLM_KEY, f"{LLM_KEY}:2"])  # a key: all its instances
    estimate = remote.embedding.estimate(EMB_ALIAS)
    assert estimate == module_client.embedding.estimate(EMB_ALIAS)
    emb = remote.embedding.model(EMB_ALIAS)
    assert isinstance(emb.get_info(), lms.EmbeddingModelInstanceInfo)
    assert [type(h) for h in remote.list_loaded_models()] == [lms.EmbeddingModel]


def test_same_exception_classes(remote: lms.Client) -> None:
    with pytest.raises(lms.ModelNotFoundError, match=LLM_KEY):
        remote.llm.model("smollm2-135m-instruc")  # the message lists the close matches
    with pytest.raises(lms.ModelKindError):
        remote.llm.model(EMB_KEY)
    with pytest.raises(lms.ModelNotFoundError):
        remote.llm.model(str(Path(remote.models_dir) / LLM_KEY))  # never a path over HTTP
    with pytest.raises(lms.InvalidConfigError):
        remote.llm.model(LLM_KEY, config={"contextLength": 10**9})  # checked by the server's core
    with pytest.raises(lms.NotSupportedError):
        remote.llm.model(LLM_KEY, config={"flashAttention": True})
    with pytest.raises(lms.ModelNotFoundError):
        remote.llm.unload("nothing-by-this-name")
    llm = remote.llm.model(LLM_KEY, config={"contextLength": 64})
    with pytest.raises(lms.ContextLengthExceededError):
        llm.complete("word " * 100)
    with pytest.raises(lms.InvalidInputError, match="49152"):
        llm.evaluate([1, 49152])  # a token id outside the vocabulary: the input, not a config
    assert remote.list_loaded_models() == [llm]


def test_inference_equals_in_process(remote: lms.Client, llm: lms.LLM, emb: lms.EmbeddingModel) -> None:
    there = remote.llm.model(LLM_KEY)
    text = "Hello, world! <|im_start|>"
    assert there.tokenize(text) == llm.tokenize(text)
    assert there.tokenize(["a", "b c"]) == llm.tokenize(["a", "b c"])
    assert there.count_tokens(text) == llm.count_tokens(text)
    assert there.apply_prompt_template(MESSAGES) == llm.apply_prompt_template(MESSAGES)
    # Greedy: the same tokens over HTTP as in-process.
    for prompt in ("The capital of France is", "def fibonacci(n):"):
        got, expected = there.complete(prompt, GREEDY), llm.complete(prompt, GREEDY)
        assert (got.tokens, got.content) == (expected.tokens, expected.content)
        assert got.stats.stop_reason == expected.stats.stop_reason
        assert got.stats.predicted_tokens_count == expected.stats.predicted_tokens_count
    got, expected = there.respond(lms.Chat.from_history({"messages": MESSAGES}), GREEDY), llm.respond(MESSAGES, GREEDY)
    assert got.tokens == expected.tokens and "Paris" in got.content
    assert got.model_info.identifier == LLM_KEY and got.load_config.context_length == 4096
    # The same chat again reuses the cached prompt but its last token (as in-process): one token's pass and the
    # prompt's batch round differently, which can flip a near tie, so the reference takes the same path.
    fragments = list(there.respond_stream(MESSAGES, GREEDY))
    expected = llm.respond_stream(MESSAGES, GREEDY).result()
    assert "".join(f.content for f in fragments) == expected.content
    assert [t for f in fragments for t in f.tokens] == expected.tokens
    # Arrays: float32, exactly the in-process values.
    ids = llm.tokenize("The capital of France is Paris")
    logits = there.evaluate(ids)
    assert logits.dtype == np.float32 and logits.shape == (len(ids), 49152) and logits.flags.writeable
    np.testing.assert_array_equal(logits, llm.evaluate(ids))
    remote_emb = remote.embedding.model(EMB_KEY)
    texts = ["a sentence", "another, longer sentence", ""]
    np.testing.assert_array_equal(remote_emb.embed(texts), emb.embed(texts))
    assert remote_emb.embed("one").shape == (384,) and remote_emb.embed([]).shape == (0, 384)


def test_the_third_llm_responds_as_in_process(remote: lms.Client, module_client: lms.Client) -> None:
    """Gemma 3 (another architecture and chat template): the same prompt tokens and greedy reply over HTTP."""
    here = module_client.llm.model(GEMMA_KEY, ttl=None)
    there = remote.llm.model(GEMMA_KEY)
    try:
        greedy = {"temperature": 0, "maxTokens": 8}
        got, expected = there.respond(MESSAGES[1:], greedy), here.respond(MESSAGES[1:], greedy)
        assert got.stats.prompt_tokens_count == expected.stats.prompt_tokens_count
        assert (got.tokens, got.content) == (expected.tokens, expected.content)
        assert got.model_info.architecture == expected.model_info.architecture == "gemma3"
    finally:
        here.unload()


def test_a_bos_the_template_writes_is_not_doubled_over_http(tmp_path: Path, module_client: lms.Client) -> None:
    """A chat goes to the server as a chat (``/instance/respond``), not as rendered text: with Gemma 3's template,
    which writes the BOS itself, the prompt holds one BOS, as in-process."""
    g = tiny_llama()
    g.kvs = [kv for kv in g.kvs if kv.key not in ("tokenizer.chat_template", "tokenizer.ggml.add_bos_token")]
    g.kvs += [KV("tokenizer.chat_template", STRING, GEMMA3_TEMPLATE), KV("tokenizer.ggml.add_bos_token", BOOL, True)]
    models = tmp_path / "models"
    g.write(models / "test" / "gemma-template" / "tiny.gguf")
    here = module_client.llm.load_new_instance(str(models / "test" / "gemma-template" / "tiny.gguf"), "bos-here")
    server = ServerProcess(models, tmp_path)
    try:
        with lms.Client(server.address) as client:
            there = client.llm.model("test/gemma-template")
            rendered = there.apply_prompt_template(MESSAGES[1:])
            assert there.tokenize(rendered)[:2] == [1, 1]  # as text: the template's BOS and the tokenizer's
            greedy = {"temperature": 0, "maxTokens": 4}
            got, expected = there.respond(MESSAGES[1:], greedy), here.respond(MESSAGES[1:], greedy)
            assert got.stats.prompt_tokens_count == len(there.tokenize(rendered)) - 1
            assert (got.stats.prompt_tokens_count, got.tokens) == (expected.stats.prompt_tokens_count, expected.tokens)
    finally:
        here.unload()
        assert server.stop() == 0


def test_prompt_progress_over_http_as_in_process(remote: lms.Client, module_client: lms.Client) -> None:
    """The server forwards the core's prompt progress (0.0, each ``evalBatchSize`` chunk, 1.0) before the first
    token; a callback that raises stops the prediction, and its exception comes back unchanged."""
    config = {"contextLength": 512, "evalBatchSize": 4}
    here = module_client.llm.load_new_instance(LLM_KEY, "progress-here", config=config)
    there = remote.llm.load_new_instance(LLM_KEY, "progress-there", config=config)
    try:
        prompt = "one two three four five six seven eight nine ten eleven twelve"
        seen: dict[str, list[float]] = {"here": [], "there": []}
        at_first_token: list[int] = []
        for name, llm in (("here", here), ("there", there)):
            llm.complete(
                prompt,
                {"maxTokens": 2, "temperature": 0},
                on_prompt_processing_progress=seen[name].append,
                on_first_token=lambda name=name: at_first_token.append(len(seen[name])),
            )
        assert len(seen["there"]) >= 4 and seen["there"] == seen["here"]
        assert at_first_token == [len(seen["here"]), len(seen["there"])]
        chat_seen: list[float] = []
        there.respond("Hi", {"maxTokens": 1}, on_prompt_processing_progress=chat_seen.append)
        assert chat_seen[0] == 0.0 and chat_seen[-1] == 1.0

        def refuse(progress: float) -> None:
            if progress > 0:
                raise Boom("enough")

        with pytest.raises(Boom, match="enough"):
            there.complete(prompt, {"maxTokens": 4}, on_prompt_processing_progress=refuse)
        assert there.complete("Hi", {"maxTokens": 1, "temperature": 0}).stats.predicted_tokens_count == 1
        wait_until(lambda: there.get_info().in_flight == 0, timeout=30)
    finally:
        here.unload()
        there.unload()


def test_float32_arrays_round_trip_bit_for_bit() -> None:
    values = np.random.default_rng(0).standard_normal((3, 5)).astype(np.float32)
    values[0, :4] = [np.float32(1e-45), np.float32(3.4028235e38), -0.0, np.inf]
    import base64

    body = {"shape": [3, 5], "dtype": "float32", "data": base64.b64encode(values.astype("<f4").tobytes()).decode()}
    decoded = _remote._array(body)
    assert decoded.dtype == np.float32 and decoded.tobytes() == values.tobytes()


def test_a_stream_cancels_and_a_dropped_stream_frees_the_instance(remote: lms.Client) -> None:
    llm = remote.llm.model(LLM_KEY)
    stream = llm.complete_stream("Count to a thousand: 1, 2, 3,", {"maxTokens": 2000, "temperature": 0})
    first = next(iter(stream))
    assert first.tokens
    stream.cancel()
    result = stream.result()
    assert result.stats.stop_reason == "userStopped"
    assert result.stats.predicted_tokens_count is not None and result.stats.predicted_tokens_count < 2000
    # A stream cancelled before it is read ends at once, as in-process.
    stream = llm.complete_stream("Count to a thousand: 1, 2, 3,", {"maxTokens": 2000, "temperature": 0})
    stream.cancel()
    assert stream.result().stats.stop_reason == "userStopped"
    # Closing a stream midway (the connection drops) stops it on the server: the next request runs.
    with llm.complete_stream("Count to a thousand: 1, 2, 3,", {"maxTokens": 2000, "temperature": 0}) as stream:
        next(iter(stream))
    assert llm.complete("Hi", {"maxTokens": 2}).content is not None
    assert llm.get_info().in_flight == 0


def test_a_raising_progress_callback_cancels_the_load_on_the_server(remote: lms.Client) -> None:
    def explode(progress: float) -> None:
        if progress > 0.3:
            raise Boom("stop")

    with pytest.raises(Boom):
        remote.llm.model(LLM_KEY, on_load_progress=explode)
    wait_until(lambda: remote.list_loaded_models() == [], timeout=30)
    assert remote.llm.model(LLM_KEY).is_loaded()  # nothing half-loaded got in the way


def test_unload_while_streaming_over_http(remote: lms.Client, server: ServerProcess) -> None:
    llm = remote.llm.model(LLM_KEY)
    stream = llm.complete_stream("Count to a hundred: 1, 2, 3,", {"maxTokens": 48, "temperature": 0})
    first = next(iter(stream))
    with lms.Client(server.address) as other:
        done = threading.Event()
        unloader = threading.Thread(target=lambda: (other.llm.unload(LLM_KEY), done.set()))
        unloader.start()
        # New requests are refused at once; the stream in flight finishes first.
        wait_until(lambda: not llm.is_loaded(), timeout=30)
        with pytest.raises(lms.ModelUnloadedError):
            llm.complete("Hi")
        rest = list(stream)
        unloader.join(timeout=60)
    assert done.is_set()
    result = stream.result()
    assert result.stats.stop_reason == "maxPredictedTokensReached"
    assert result.content == first.content + "".join(f.content for f in rest)
    assert remote.list_loaded_models() == []


def test_ttl_expiry_over_http(remote: lms.Client) -> None:
    llm = remote.llm.model(LLM_KEY, ttl=1)
    assert llm.get_info().expires_in is not None
    started = time.monotonic()
    wait_until(lambda: not llm.is_loaded(), timeout=30)
    assert time.monotonic() - started >= 0.5
    with pytest.raises(lms.ModelUnloadedError):
        llm.respond("Hi")


def test_close_unloads_only_the_clients_own(server: ServerProcess) -> None:
    with lms.Client(server.address) as keeper:
        kept = keeper.embedding.model(EMB_KEY, no_hup=True)
        with lms.Client(server.address) as client:
            own = client.llm.load_new_instance(LLM_KEY, "own")
            assert own.get_info().loaded_by == "client"
        assert not own.is_loaded() and kept.is_loaded()
        theirs = keeper.llm.model(LLM_KEY)
    assert kept.is_loaded() and not theirs.is_loaded()
    with lms.Client(server.address) as client:
        assert client.embedding.unload(EMB_KEY) == [EMB_KEY]
        client.close()
        with pytest.raises(lms.ClientClosedError):
            client.llm.model(LLM_KEY)
        assert client.list_loaded_models() == []  # as in-process: a closed client sees nothing


def test_async_client_over_http(server: ServerProcess, llm: lms.LLM) -> None:
    import asyncio

    expected = llm.complete("The capital of France is", GREEDY)

    async def main() -> None:
        async with lms.AsyncClient(server.address) as client:
            progress: list[float] = []
            model = await client.llm.model(LLM_KEY, on_load_progress=progress.append)
            assert progress[-1] == 1.0
            pieces = [f.content async for f in model.complete_stream("The capital of France is", GREEDY)]
            assert "".join(pieces) == expected.content
            # Cancelling the task that reads a stream cancels the prediction on the server.
            stream = await model.complete_stream("Count to a thousand: 1, 2,", {"maxTokens": 2000, "temperature": 0})

            async def read() -> None:
                async for _ in stream:
                    pass

            task = asyncio.ensure_future(read())
            await asyncio.sleep(0.3)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert (await model.complete("Hi", {"maxTokens": 2})).content is not None
            emb = await client.embedding.model(EMB_KEY)
            assert (await emb.embed(["a", "b"])).shape == (2, 384)

    asyncio.run(main())


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=12,
)
FIELDS = st.sampled_from(
    ["kind", "key", "identifier", "ttl", "config", "no_hup", "client", "instance_reference", "text", "tokens",
     "messages", "prompt", "stream", "input", "prediction_id"]
)  # fmt: skip
ROUTES = st.sampled_from(
    ["/models/model", "/models/load_new_instance", "/models/unload", "/models/estimate", "/instance/info",
     "/instance/tokenize", "/instance/embed", "/instance/complete", "/instance/respond", "/instance/evaluate",
     "/prediction/cancel", "/client/close"]
)  # fmt: skip


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(route=ROUTES, body=st.dictionaries(FIELDS, JSON, max_size=6) | JSON)
def test_bad_bodies_get_a_typed_error_never_a_crash(server: ServerProcess, route: str, body: object) -> None:
    r = httpx.post(f"{server.url}{_remote.API_PREFIX}{route}", json=body, timeout=60)
    if r.status_code < 400:
        return  # hypothesis found a valid call (a cancel of an unknown prediction, say)
    assert r.status_code < 500, r.text
    error = r.json()["error"]
    assert isinstance(error["message"], str) and error["type"]
    assert isinstance(_remote._error_from(r.status_code, r.json(), ""), Exception)
    assert httpx.get(f"{server.url}{_remote.API_PREFIX}/health", timeout=10).status_code == 200
