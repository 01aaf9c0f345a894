"""modelhost on Ray Serve (``modelhost.ray``), on a real local Ray cluster on 127.0.0.1 started once for the module:
2 replicas, 3 real models (SmolLM2 Q4_1, its Q8_0 re-quantization, MiniLM), the real ``openai`` client and httpx.

Mixed traffic is answered, greedy answers equal in-process modelhost's, Serve's multiplexing never loads a model
twice on a replica while it is resident and no replica goes over its budget; a replica killed mid-run fails or
retries its requests without a hang, and the survivor serves the next ones. Ray's start-up (about 15-30 s here) is
paid once; the whole module takes about 2-4 minutes on 2 cores.
"""

from __future__ import annotations

import base64
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections import Counter, defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import modelhost
import modelhost.ray as mray
import numpy as np
import openai
import pytest
import ray
from helpers import EMB_KEY, LLM_FILE, LLM_KEY, reap_processes_naming
from pydantic.warnings import PydanticDeprecatedSince20
from requantized import REQUANT_FILE, REQUANT_KEY, fixtures_dir, link_or_copy, requantized_smollm2

with warnings.catch_warnings():
    # Ray Serve's own pydantic models use a Field form pydantic deprecates (not ours to fix).
    warnings.simplefilter("ignore", PydanticDeprecatedSince20)
    from ray import serve

pytestmark = [
    pytest.mark.ray,
    pytest.mark.timeout(900),
    pytest.mark.filterwarnings("ignore::pydantic.warnings.PydanticDeprecatedSince20"),
]

APP = "modelhost-test"
CONTEXT_LENGTH = 1024
MAX_TOKENS = 12
SYSTEM = "You are a concise assistant."
# Not "What is the capital of France?": its first reply token is a near tie for SmolLM2 Q4_1 ("The" vs "Le"), and a
# replica that gets the same prompt twice re-evaluates only its last token, whose one-row pass rounds differently
# from the prompt's batch, so the reply would depend on which replica served the prompt before.
PROMPTS = [
    "What is the capital of Italy?",
    "Name three primary colors.",
    "Write a haiku about the sea.",
    "What is 2 + 2?",
    "Give me a synonym for happy.",
    "Who wrote Hamlet?",
]
COMPLETIONS = ["The capital of France is", "def fibonacci(n):", "Once upon a time", "The three primary colors are"]
SENTENCES = ["a sentence", "another, longer sentence", "the cat sat on the mat", "Ray Serve routes requests"]
LONG_PROMPT = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,"  # SmolLM2 Q4_1 counts on past 400 tokens


@pytest.fixture(scope="module")
def ray_models_dir(models_dir: Path) -> Path:
    """A models dir with the three models: hard links to the sample models, plus the Q8_0 re-quantization."""
    root = fixtures_dir() / "ray-models"
    link_or_copy(models_dir / LLM_KEY / LLM_FILE, root / LLM_KEY / LLM_FILE)
    link_or_copy(models_dir / EMB_KEY, root / EMB_KEY)
    link_or_copy(requantized_smollm2(models_dir / LLM_KEY / LLM_FILE), root / REQUANT_KEY / REQUANT_FILE)
    return root


@pytest.fixture(scope="module")
def cluster() -> Iterator[int]:
    """A lean local Ray cluster (3 logical CPUs: two replicas of 1, the rest take none) and Serve's HTTP proxy on a
    free loopback port; shut down after the module, and no Ray process outlives it."""
    temp_dir = tempfile.mkdtemp(prefix="mh-ray-", dir="/tmp")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mray.init_local(num_cpus=3, temp_dir=temp_dir)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        yield port
    finally:
        serve.shutdown()
        ray.shutdown()
        left = reap_processes_naming(temp_dir)
        assert not left, f"Ray processes left behind after shutdown: {left}"


@pytest.fixture(scope="module")
def estimates(ray_models_dir: Path) -> dict[str, int]:
    with modelhost.Client(ray_models_dir, isolated=True) as c:
        config = {"contextLength": CONTEXT_LENGTH}
        return {
            LLM_KEY: c.llm.estimate(LLM_KEY, config).total_bytes,
            REQUANT_KEY: c.llm.estimate(REQUANT_KEY, config).total_bytes,
            EMB_KEY: c.embedding.estimate(EMB_KEY).total_bytes,
        }


@pytest.fixture(scope="module")
def budget(estimates: dict[str, int]) -> int:
    """Room for the two largest models, not the three: each replica must evict."""
    return 2 * max(estimates.values()) + 1_000_000


@pytest.fixture(scope="module")
def base_url(cluster: int, ray_models_dir: Path, budget: int) -> Iterator[str]:
    """The application: 2 replicas of 1 thread each over the three models, the budget above."""
    application = mray.app(
        models_dir=str(ray_models_dir), replicas=2, memory_budget=budget, context_length=CONTEXT_LENGTH
    )
    serve.run(application, name=APP, route_prefix="/")
    yield f"http://127.0.0.1:{cluster}"
    serve.delete(APP)


@pytest.fixture(scope="module")
def reference(ray_models_dir: Path) -> Iterator[modelhost.Client]:
    """In-process modelhost on the same files and context length, for the expected answers."""
    with modelhost.Client(ray_models_dir, isolated=True) as c:
        yield c


def _llm(reference: modelhost.Client, key: str) -> modelhost.LLM:
    return reference.llm.model(key, config={"contextLength": CONTEXT_LENGTH})


def _messages(prompt: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt}]


def _wait_for_replicas(count: int, timeout: float = 120) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        replicas = mray.status(APP)
        if len(replicas) >= count or time.monotonic() > deadline:
            return replicas
        time.sleep(1)


# --- the openai client against the ingress ---------------------------------------------------------------------


def test_openai_client_against_the_ray_ingress(base_url: str, reference: modelhost.Client) -> None:
    with openai.OpenAI(base_url=f"{base_url}/v1", api_key="not-needed", max_retries=0, timeout=300) as oai:
        ids = {m.id for m in oai.models.list().data}
        assert {LLM_KEY, REQUANT_KEY, EMB_KEY} <= ids

        local = _llm(reference, LLM_KEY)
        chat = oai.chat.completions.create(
            model=LLM_KEY,
            messages=_messages(PROMPTS[0]),
            temperature=0,
            max_tokens=24,  # type: ignore[arg-type]
        )
        expected = local.respond(_messages(PROMPTS[0]), config={"temperature": 0, "maxTokens": 24})
        assert chat.choices[0].message.content == expected.content
        assert chat.model == LLM_KEY
        assert chat.usage is not None and chat.usage.completion_tokens == expected.stats.predicted_tokens_count

        stream = oai.chat.completions.create(
            model="smollm2-135m-instruct",  # an alias routes to the same replica slot as the key
            messages=_messages(PROMPTS[0]),  # type: ignore[arg-type]
            temperature=0,
            max_tokens=24,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = list(stream)
        assert len({c.id for c in chunks}) == 1
        assert chunks[0].choices[0].delta.role == "assistant"
        assert chunks[-2].choices[0].finish_reason in ("stop", "length")
        assert chunks[-1].choices == [] and chunks[-1].usage is not None
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == expected.content

        completion = oai.completions.create(model=REQUANT_KEY, prompt=COMPLETIONS[0], temperature=0, max_tokens=8)
        expected_q8 = _llm(reference, REQUANT_KEY).complete(COMPLETIONS[0], config={"temperature": 0, "maxTokens": 8})
        assert completion.choices[0].text == expected_q8.content

        vectors = reference.embedding.model(EMB_KEY).embed(SENTENCES[:2])
        for result in (
            oai.embeddings.create(model=EMB_KEY, input=SENTENCES[:2]),
            oai.embeddings.create(model="all-minilm-l6-v2", input=SENTENCES[:2], encoding_format="float"),
        ):
            np.testing.assert_array_equal(np.array([d.embedding for d in result.data], dtype=np.float32), vectors)

        # Errors keep the single-machine server's status and OpenAI body.
        with pytest.raises(openai.NotFoundError) as not_found:
            oai.chat.completions.create(model="no-such-model", messages=_messages("hi"))  # type: ignore[arg-type]
        assert not_found.value.code == "model_not_found"
        with pytest.raises(openai.NotFoundError) as wrong_kind:
            oai.chat.completions.create(model=EMB_KEY, messages=_messages("hi"))  # type: ignore[arg-type]
        assert wrong_kind.value.code == "wrong_model_kind"
        with pytest.raises(openai.BadRequestError) as unsupported:
            oai.chat.completions.create(
                model=LLM_KEY,
                messages=_messages("hi"),  # type: ignore[arg-type]
                tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}],
            )
        assert unsupported.value.code == "not_supported"

    bad_json = httpx.post(f"{base_url}/v1/chat/completions", content=b"{", headers={"Content-Type": "application/json"})
    assert bad_json.status_code == 400 and bad_json.json()["error"]["type"] == "invalid_request_error"
    lifecycle = httpx.get(f"{base_url}/api/modelhost/v1/models/loaded")
    assert lifecycle.status_code == 404 and lifecycle.json()["error"]["code"] == "unknown_route"
    wrong_method = httpx.get(f"{base_url}/v1/chat/completions")
    assert wrong_method.status_code == 405
    health = httpx.get(f"{base_url}/api/modelhost/v1/health").json()
    assert health["status"] == "ok" and health["ray"] is True


# --- mixed traffic ---------------------------------------------------------------------------------------------


def _mixed_requests(n: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    requests: list[dict[str, Any]] = []
    for i in range(n):
        kind = ("chat", "complete", "embed")[i % 3]
        if kind == "embed":
            requests.append({"kind": kind, "model": EMB_KEY, "input": rng.sample(SENTENCES, 2)})
            continue
        model = rng.choice([LLM_KEY, REQUANT_KEY])
        text = rng.choice(PROMPTS if kind == "chat" else COMPLETIONS)
        requests.append({"kind": kind, "model": model, "text": text, "stream": rng.random() < 0.3})
    return requests


def _send(http: httpx.Client, base_url: str, request: dict[str, Any]) -> dict[str, Any]:
    """One request to the ingress; returns the status, the serving replica and what came back."""
    if request["kind"] == "embed":
        body: dict[str, Any] = {"model": request["model"], "input": request["input"], "encoding_format": "base64"}
        r = http.post(f"{base_url}/v1/embeddings", json=body)
        out: dict[str, Any] = {"status": r.status_code, "replica": r.headers.get("x-modelhost-replica")}
        if r.status_code == 200:
            out["vectors"] = [np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in r.json()["data"]]
        else:
            out["error"] = r.text
        return out
    params = {"model": request["model"], "temperature": 0, "max_tokens": MAX_TOKENS, "stream": request["stream"]}
    if request["kind"] == "chat":
        route, params["messages"] = "/v1/chat/completions", _messages(request["text"])
    else:
        route, params["prompt"] = "/v1/completions", request["text"]
    if not request["stream"]:
        r = http.post(f"{base_url}{route}", json=params)
        out = {"status": r.status_code, "replica": r.headers.get("x-modelhost-replica")}
        if r.status_code == 200:
            choice = r.json()["choices"][0]
            out["text"] = choice["message"]["content"] if request["kind"] == "chat" else choice["text"]
        else:
            out["error"] = r.text
        return out
    pieces: list[str] = []
    with http.stream("POST", f"{base_url}{route}", json=params) as r:
        out = {"status": r.status_code, "replica": r.headers.get("x-modelhost-replica")}
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                out["status"], out["error"] = 500, line
                break
            for choice in chunk["choices"]:
                pieces.append((choice.get("delta") or {}).get("content") or choice.get("text") or "")
    out["text"] = "".join(pieces)
    return out


def _expected(reference: modelhost.Client, request: dict[str, Any]) -> Any:
    if request["kind"] == "embed":
        return reference.embedding.model(EMB_KEY).embed(request["input"])
    llm = _llm(reference, request["model"])
    config = {"temperature": 0, "maxTokens": MAX_TOKENS}
    if request["kind"] == "chat":
        return llm.respond(_messages(request["text"]), config=config).content
    return llm.complete(request["text"], config=config).content


def test_mixed_requests_on_two_replicas(base_url: str, reference: modelhost.Client, budget: int) -> None:
    requests = _mixed_requests(120, seed=16)
    with httpx.Client(timeout=300) as http, ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda r: _send(http, base_url, r), requests))

    failed = [(r, a) for r, a in zip(requests, answers) if a["status"] != 200]
    assert not failed, f"{len(failed)} of {len(requests)} requests failed, e.g. {failed[:3]}"
    expected_cache: dict[str, Any] = {}
    for request, answer in zip(requests, answers):
        cache_key = json.dumps({k: v for k, v in request.items() if k != "stream"}, sort_keys=True)
        if cache_key not in expected_cache:
            expected_cache[cache_key] = _expected(reference, request)
        expected = expected_cache[cache_key]
        if request["kind"] == "embed":
            np.testing.assert_array_equal(np.stack(answer["vectors"]), expected)
        else:
            assert answer["text"] == expected, f"{request}: {answer['text']!r} != {expected!r}"

    replicas = _wait_for_replicas(2)
    assert len(replicas) == 2
    served_by = Counter(a["replica"] for a in answers)
    assert set(served_by) <= {r["replica"] for r in replicas}
    for replica in replicas:
        assert replica["memory_budget"] == budget
        assert replica["models_per_replica"] == 2
        assert replica["peak_resident_bytes"] <= budget, replica
        assert replica["duplicate_loads"] == 0, replica
        # Each model is loaded at most once while it stays resident: between two loads of a key, an unload of it.
        resident: dict[str, bool] = defaultdict(bool)
        for event in replica["events"]:
            if event["event"] == "load":
                assert not resident[event["key"]], f"{event['key']} loaded twice while resident: {replica['events']}"
                resident[event["key"]] = True
            elif event["event"] == "unload":
                resident[event["key"]] = False
        assert len(replica["models"]) <= 2


def test_cli_ray_status(base_url: str) -> None:
    """`modelhost ray status` in another process, connected to the running cluster, shows each replica's models."""
    address = ray.get_runtime_context().gcs_address
    command = [sys.executable, "-m", "modelhost", "ray", "status", "--address", address, "--name", APP]
    as_json = subprocess.run([*command, "--json"], capture_output=True, text=True, timeout=120)
    assert as_json.returncode == 0, as_json.stderr
    replicas = json.loads(as_json.stdout)
    assert len(replicas) == 2 and all(r["models_per_replica"] == 2 for r in replicas)
    as_text = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert as_text.returncode == 0, as_text.stderr
    for r in replicas:
        assert f"replica {r['replica']}" in as_text.stdout
        for m in r["models"]:
            assert m["key"] in as_text.stdout
    missing = subprocess.run([*command[:-1], "no-such-app"], capture_output=True, text=True, timeout=120)
    assert missing.returncode == 1 and "no modelhost application 'no-such-app'" in missing.stderr


# --- a replica dies --------------------------------------------------------------------------------------------


def test_a_replica_killed_mid_run(base_url: str) -> None:
    replicas = _wait_for_replicas(2)
    assert len(replicas) == 2
    pids = {r["replica"]: r["pid"] for r in replicas}

    # Long streams on one model: they run on the replica(s) holding it; kill the one the first stream reports.
    started = threading.Event()
    outcomes: list[dict[str, Any]] = []

    def long_stream() -> None:
        body = {"model": LLM_KEY, "prompt": LONG_PROMPT, "temperature": 0, "max_tokens": 400, "stream": True}
        outcome: dict[str, Any] = {"chunks": 0, "error": None, "done": False}
        outcomes.append(outcome)
        try:
            with (
                httpx.Client(timeout=httpx.Timeout(120)) as http,
                http.stream("POST", f"{base_url}/v1/completions", json=body) as r,
            ):
                outcome["status"], outcome["replica"] = r.status_code, r.headers.get("x-modelhost-replica")
                for line in r.iter_lines():
                    if line == "data: [DONE]":
                        outcome["done"] = True
                    elif line.startswith("data: "):
                        if "error" in json.loads(line[6:]):
                            outcome["error"] = line
                        outcome["chunks"] += 1
                        started.set()
        except httpx.HTTPError as e:  # the connection cut: a clear failure, not a hang
            outcome["error"] = repr(e)

    plain: list[httpx.Response] = []

    def long_plain() -> None:
        body = {"model": LLM_KEY, "prompt": LONG_PROMPT, "temperature": 0, "max_tokens": 300}
        plain.append(httpx.post(f"{base_url}/v1/completions", json=body, timeout=300))

    threads = [threading.Thread(target=long_stream) for _ in range(3)]
    for t in threads:
        t.start()
    assert started.wait(120), "no stream started"
    threads.append(threading.Thread(target=long_plain))
    threads[-1].start()
    time.sleep(1.0)
    victim = next(o["replica"] for o in outcomes if o["chunks"])
    os.kill(pids[victim], signal.SIGKILL)

    for t in threads:
        t.join(240)
        assert not t.is_alive(), "a request in flight on the killed replica hangs"
    # A request whose answer had not started is retried once on a live replica, or fails with a clear error.
    assert plain[0].status_code == 200 or plain[0].json()["error"]["code"] == "replica_unavailable", plain[0].text
    on_victim = [o for o in outcomes if o.get("replica") == victim]
    assert on_victim, outcomes
    for o in on_victim:
        # Cut short with a clear error (an error event naming the dead replica, or a closed connection).
        assert not o["done"] and o["error"], o
        assert "replica_unavailable" in o["error"] or "Error" in o["error"], o

    # The next requests succeed (on the survivor, or on the replacement Serve starts).
    with httpx.Client(timeout=300) as http:
        for request in _mixed_requests(9, seed=7):
            answer = _send(http, base_url, request)
            assert answer["status"] == 200, answer
            assert answer["replica"] != victim
