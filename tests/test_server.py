"""The HTTP server from Python (`_core.serve`): the real `openai` client and raw httpx against a server on port 0,
greedy answers over HTTP equal to in-process ones token for token, tokens, Ctrl-C, and no GIL on the request path."""

from __future__ import annotations

import base64
import contextlib
import json
import mmap
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import modelhost
import numpy as np
import openai
import pytest
from helpers import EMB_KEY, LLM_ALIAS, LLM_KEY, sigint_handler
from modelhost import _core

LIFE = "/api/modelhost/v1"
MESSAGES = [
    {"role": "system", "content": "You are a concise assistant."},
    {"role": "user", "content": "What is the capital of France?"},
]


@pytest.fixture
def server(client: modelhost.Client) -> Iterator[_core.Server]:
    """A server on a free port over the client's host, stopped after the test."""
    with _core.serve(client._host, port=0, api_token="") as s:
        yield s


@pytest.fixture
def oai(server: _core.Server) -> Iterator[openai.OpenAI]:
    """The real OpenAI client, pointed at the server."""
    with openai.OpenAI(base_url=f"{server.url}/v1", api_key="not-needed", max_retries=0, timeout=120) as c:
        yield c


def fresh_pair(client: modelhost.Client, server: _core.Server) -> modelhost.LLM:
    """An instance "http" (loaded over HTTP) and an in-process one "local": two fresh caches, so the same requests
    compute the same thing on both."""
    r = httpx.post(
        f"{server.url}{LIFE}/models/load_new_instance",
        json={"kind": "llm", "key": LLM_KEY, "identifier": "http"},
        timeout=120,
    )
    assert r.status_code == 200, r.text
    return client.llm.load_new_instance(LLM_KEY, "local")


def test_openai_client_chat_stream_complete_embed(
    client: modelhost.Client, server: _core.Server, oai: openai.OpenAI
) -> None:
    local = fresh_pair(client, server)
    chat = oai.chat.completions.create(model="http", messages=MESSAGES, temperature=0, max_tokens=24)
    expected = local.respond(MESSAGES, config={"temperature": 0, "maxTokens": 24})
    assert chat.choices[0].message.content == expected.content
    assert "Paris" in expected.content
    assert chat.usage is not None
    assert chat.usage.completion_tokens == expected.stats.predicted_tokens_count
    assert chat.usage.prompt_tokens == expected.stats.prompt_tokens_count

    # Streaming with usage: one id, the role first, the finish reason last, then a usage chunk with no choices.
    stream = oai.chat.completions.create(
        model="http",
        messages=MESSAGES,
        temperature=0,
        max_tokens=24,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    expected = local.respond(MESSAGES, config={"temperature": 0, "maxTokens": 24})
    assert len({c.id for c in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-2].choices[0].finish_reason in ("stop", "length")
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == expected.stats.predicted_tokens_count
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == expected.content

    completion = oai.completions.create(model="http", prompt="The capital of France is", temperature=0, max_tokens=8)
    expected = local.complete("The capital of France is", config={"temperature": 0, "maxTokens": 8})
    assert completion.choices[0].text == expected.content

    # Embeddings: the openai client asks for base64 by default; float as well. Both equal in-process, exactly.
    emb = client.embedding.model(EMB_KEY)
    texts = ["a sentence", "another, longer sentence"]
    vectors = emb.embed(texts)
    by_default = oai.embeddings.create(model=EMB_KEY, input=texts)
    as_float = oai.embeddings.create(model=EMB_KEY, input=texts, encoding_format="float")
    for result in (by_default, as_float):
        got = np.array([d.embedding for d in result.data], dtype=np.float32)
        np.testing.assert_array_equal(got, vectors)
    raw = httpx.post(
        f"{server.url}/v1/embeddings", json={"model": EMB_KEY, "input": texts, "encoding_format": "base64"}
    ).json()
    decoded = np.frombuffer(base64.b64decode(raw["data"][0]["embedding"]), dtype="<f4")
    np.testing.assert_array_equal(decoded, vectors[0])


def test_greedy_tokens_over_http_equal_in_process(client: modelhost.Client, server: _core.Server) -> None:
    local = fresh_pair(client, server)
    for prompt in ("The capital of France is", "def fibonacci(n):", "Once upon a time"):
        r = httpx.post(
            f"{server.url}{LIFE}/instance/complete",
            json={"identifier": "http", "prompt": prompt, "config": {"temperature": 0, "maxTokens": 32}},
            timeout=120,
        )
        assert r.status_code == 200, r.text
        expected = local.complete(prompt, config={"temperature": 0, "maxTokens": 32})
        assert r.json()["tokens"] == expected.tokens, prompt
        assert r.json()["content"] == expected.content
    r = httpx.post(
        f"{server.url}{LIFE}/instance/respond",
        json={"identifier": "http", "messages": MESSAGES, "config": {"temperature": 0, "maxTokens": 32}},
        timeout=120,
    )
    expected = local.respond(MESSAGES, config={"temperature": 0, "maxTokens": 32})
    assert r.json()["tokens"] == expected.tokens
    assert r.json()["stats"]["stop_reason"] == expected.stats.stop_reason


def test_one_table_in_process_and_over_http(client: modelhost.Client, server: _core.Server) -> None:
    # Loaded in-process: served over HTTP, never reloaded because a request's parameters differ.
    llm = client.llm.model(LLM_ALIAS, config={"contextLength": 1024})
    r = httpx.post(
        f"{server.url}/v1/chat/completions",
        json={"model": LLM_ALIAS, "messages": MESSAGES, "max_tokens": 2, "ttl": 5},
        timeout=120,
    )
    assert r.status_code == 200, r.text
    assert [h.identifier for h in client.llm.list_loaded()] == [LLM_KEY]
    assert llm.get_info().ttl == 3600  # the request's ttl applies only when it loads
    # Loaded just in time over HTTP: visible in-process, recorded as the server's.
    r = httpx.post(f"{server.url}/v1/embeddings", json={"model": EMB_KEY, "input": "x"}, timeout=120)
    assert r.status_code == 200, r.text
    (emb,) = client.embedding.list_loaded()
    info = emb._instance.info()
    assert (info["loaded_by"], info["no_hup"]) == ("server", False)
    assert llm._instance.info()["loaded_by"] == "client"


def test_errors_with_raw_httpx(client: modelhost.Client, server: _core.Server) -> None:
    url = f"{server.url}/v1/chat/completions"
    r = httpx.post(url, content=b"{oops", headers={"content-type": "application/json"})
    assert r.status_code == 400
    assert set(r.json()["error"]) == {"message", "type", "param", "code"}
    r = httpx.post(url, content=json.dumps({"model": LLM_KEY, "messages": MESSAGES}).encode())
    assert r.status_code == 400
    r = httpx.post(url, json={"model": "smollm2-135m-instruc", "messages": MESSAGES})
    assert r.status_code == 404
    error = r.json()["error"]
    assert (error["code"], error["param"]) == ("model_not_found", "model")
    assert LLM_KEY in error["message"]
    r = httpx.post(url, json={"model": LLM_KEY, "messages": MESSAGES, "tools": [{"type": "function"}]})
    assert (r.status_code, r.json()["error"]["param"]) == (400, "tools")
    r = httpx.post(f"{server.url}{LIFE}/models/model", json={"kind": "llm", "key": "/etc/passwd"})
    assert (r.status_code, r.json()["error"]["type"]) == (404, "ModelNotFoundError")
    assert client.llm.list_loaded() == []


def test_token_auth(client: modelhost.Client, monkeypatch: pytest.MonkeyPatch) -> None:
    with _core.serve(client._host, api_token="s3cret") as s:
        r = httpx.get(f"{s.url}/v1/models")
        assert (r.status_code, r.json()["error"]["type"]) == (401, "authentication_error")
        assert httpx.get(f"{s.url}/v1/models", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    # LM Studio's variables apply when no token is given; "" switches authentication off.
    monkeypatch.setenv("LM_API_TOKEN", "from-env")
    with _core.serve(client._host) as s:
        assert httpx.get(f"{s.url}/v1/models").status_code == 401
        assert httpx.get(f"{s.url}/v1/models", headers={"Authorization": "Bearer from-env"}).status_code == 200
    with _core.serve(client._host, api_token="") as s:
        assert httpx.get(f"{s.url}/v1/models").status_code == 200


def test_stop_wait_and_ports(client: modelhost.Client) -> None:
    s = _core.serve(client._host, api_token="")
    assert s.url == f"http://127.0.0.1:{s.port}" and s.address == "127.0.0.1"
    assert s.is_running()
    assert s.wait(timeout=0.05) is False
    with pytest.raises(OSError):
        _core.serve(client._host, port=s.port, api_token="")
    s.stop()
    s.stop()  # idempotent
    assert not s.is_running()
    assert s.wait() is True
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{s.url}/v1/models")
    # The stop route: the server drains and stops, and wait() returns.
    s = _core.serve(client._host, api_token="")
    assert httpx.post(f"{s.url}{LIFE}/server/stop").status_code == 202
    assert s.wait(timeout=60) is True


def test_ctrl_c_while_waiting_drains_and_returns(client: modelhost.Client) -> None:
    s = _core.serve(client._host, api_token="")
    # Ctrl-C's meaning in Python, also where pytest came in with SIGINT ignored (a background job of a script).
    with sigint_handler(signal.default_int_handler):
        timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT))
        timer.start()
        try:
            assert s.wait(timeout=60) is True
        finally:
            timer.cancel()
    assert not s.is_running()


def test_requests_never_need_the_gil(client: modelhost.Client, server: _core.Server, tmp_path: Path) -> None:
    """A request from another process completes while this process's main thread holds the GIL throughout."""
    client.llm.model(LLM_KEY)
    flag = tmp_path / "flag"
    flag.write_bytes(b"\0")
    script = (
        "import httpx, sys\n"
        f"r = httpx.post({server.url + '/v1/completions'!r}, timeout=120,\n"
        f"               json={{'model': {LLM_KEY!r}, 'prompt': 'Hello', 'max_tokens': 4}})\n"
        f"open({str(flag)!r}, 'r+b').write(b'\\1' if r.status_code == 200 else b'\\2')\n"
    )
    with open(flag, "r+b") as f, mmap.mmap(f.fileno(), 1) as shared:
        old = sys.getswitchinterval()
        child = subprocess.Popen([sys.executable, "-c", script])
        deadline = time.monotonic() + 60
        # With this switch interval the loop never lets go of the GIL; reading the map never releases it either.
        sys.setswitchinterval(1000)
        try:
            while shared[0] == 0 and time.monotonic() < deadline:
                pass
        finally:
            sys.setswitchinterval(old)
        seen = shared[0]
    child.wait(timeout=60)
    assert seen == 1, "the request did not complete while the GIL was held"


def test_server_sees_only_the_models_dir(client: modelhost.Client) -> None:
    # Another models dir: its server lists nothing, and the sample model's absolute path is not a key.
    with contextlib.ExitStack() as stack:
        other = stack.enter_context(modelhost.Client(stack.enter_context(tempfile.TemporaryDirectory())))
        s = stack.enter_context(_core.serve(other._host, api_token=""))
        assert httpx.get(f"{s.url}/v1/models").json()["data"] == []
        path = Path(client.models_dir) / LLM_KEY
        r = httpx.post(f"{s.url}/v1/completions", json={"model": str(path), "prompt": "x"})
        assert r.status_code == 404
