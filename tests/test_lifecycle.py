"""SPEC §3-§4: get-or-load, new instances, identifiers, unload, TTL, shared weights, progress, threads, RSS."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import modelhost as lms
import pytest
from helpers import (
    EMB_ALIAS,
    EMB_KEY,
    LLM_ALIAS,
    LLM_KEY,
    emb_path,
    llm_path,
    mapped_inode_count,
    mapped_ranges,
    mapping_lines,
    rss_bytes,
    wait_until,
)
from modelhost import _core

pytestmark = pytest.mark.timeout(90)

# --- model(): get or load ----------------------------------------------------------------------------------------


def test_model_loads_once_then_returns_the_loaded_instance(client: lms.Client) -> None:
    first = client.llm.model(LLM_ALIAS)
    assert isinstance(first, lms.LLM)
    assert first.model_key == LLM_KEY
    assert first.identifier == LLM_KEY
    for key in (LLM_KEY, LLM_ALIAS, LLM_KEY.lower(), LLM_KEY.upper()):
        again = client.llm.model(key)
        assert again == first
        assert again.instance_reference == first.instance_reference
    assert [h.identifier for h in client.llm.list_loaded()] == [LLM_KEY]
    assert client.embedding.list_loaded() == []


def test_model_without_key_needs_a_loaded_model(client: lms.Client) -> None:
    with pytest.raises(lms.NoModelLoadedError) as info:
        client.llm.model()
    assert isinstance(info.value, LookupError)
    llm = client.llm.model(LLM_KEY)
    assert client.llm.model() == llm
    with pytest.raises(lms.NoModelLoadedError):
        client.embedding.model()
    emb = client.embedding.model(EMB_ALIAS)
    assert client.embedding.model() == emb


def test_model_without_key_gives_the_most_recently_used(client: lms.Client) -> None:
    a = client.llm.load_new_instance(LLM_KEY, "a", ttl=None)
    b = client.llm.load_new_instance(LLM_KEY, "b", ttl=None)
    a.complete("Hi", {"maxTokens": 1})
    assert client.llm.model() == a
    assert client.llm.model(LLM_KEY) == a
    b.complete("Hi", {"maxTokens": 1})
    assert client.llm.model() == b
    assert client.llm.model(LLM_KEY) == b


def test_model_by_instance_identifier(client: lms.Client) -> None:
    custom = client.llm.load_new_instance(LLM_KEY, "my-second-model")
    assert custom.identifier == "my-second-model"
    assert custom.model_key == LLM_KEY
    assert client.llm.model("my-second-model") == custom
    with pytest.raises(lms.ModelNotFoundError):
        client.embedding.model("my-second-model")


def test_model_leaves_ttl_and_config_of_a_loaded_instance_alone(client: lms.Client) -> None:
    llm = client.llm.model(LLM_KEY, ttl=None, config={"contextLength": 1024})
    again = client.llm.model(LLM_KEY, ttl=5, config={"contextLength": 2048})
    assert again == llm
    assert again.get_info().ttl is None
    assert again.get_context_length() == 1024
    assert llm.get_info().ttl is None


def test_ttl_is_reported(client: lms.Client) -> None:
    assert client.llm.model(LLM_KEY).get_info().ttl == lms.DEFAULT_TTL == 3600
    assert client.embedding.model(EMB_KEY, ttl=120).get_info().ttl == 120
    assert client.llm.load_new_instance(LLM_KEY, ttl=None).get_info().ttl is None


# --- load_new_instance ---------------------------------------------------------------------------------------------


def test_new_instances_are_numbered(client: lms.Client) -> None:
    first = client.llm.load_new_instance(LLM_KEY)
    second = client.llm.load_new_instance(LLM_ALIAS)
    third = client.llm.load_new_instance(LLM_KEY)
    assert [first.identifier, second.identifier, third.identifier] == [LLM_KEY, f"{LLM_KEY}:2", f"{LLM_KEY}:3"]
    assert len({h.instance_reference for h in (first, second, third)}) == 3
    assert {h.identifier for h in client.llm.list_loaded()} == {LLM_KEY, f"{LLM_KEY}:2", f"{LLM_KEY}:3"}
    assert client.llm.model(f"{LLM_KEY}:2") == second
    emb = client.embedding.load_new_instance(EMB_ALIAS)
    assert emb.identifier == EMB_KEY


def test_a_taken_identifier_raises_and_changes_nothing(client: lms.Client) -> None:
    original = client.llm.load_new_instance(LLM_KEY, "x")
    automatic = client.llm.load_new_instance(LLM_KEY)  # takes the identifier LLM_KEY
    before = [(h.identifier, h.instance_reference) for h in client.list_loaded_models()]
    mapped = _core.mapped_file_count()
    calls: list[float] = []
    with pytest.raises(lms.InstanceExistsError) as info:
        client.llm.load_new_instance(LLM_KEY, "x", on_load_progress=calls.append)
    assert isinstance(info.value, ValueError)
    assert "'x'" in str(info.value) or '"x"' in str(info.value)
    with pytest.raises(lms.InstanceExistsError):
        client.llm.load_new_instance(LLM_ALIAS, LLM_KEY)
    with pytest.raises(lms.InstanceExistsError):
        client.embedding.load_new_instance(EMB_KEY, "x")  # identifiers are unique across kinds
    assert [(h.identifier, h.instance_reference) for h in client.list_loaded_models()] == before
    assert _core.mapped_file_count() == mapped
    assert original.count_tokens("still works") > 0
    assert client.llm.model("x") == original
    assert client.llm.model(LLM_KEY) in (original, automatic)


# --- unload ------------------------------------------------------------------------------------------------------


def test_unload_twice_is_a_no_op(client: lms.Client) -> None:
    llm = client.llm.model(LLM_KEY)
    llm.unload()
    llm.unload()
    assert client.llm.list_loaded() == []
    assert not llm.is_loaded()


def test_a_handle_after_unload_raises(client: lms.Client) -> None:
    llm = client.llm.model(LLM_KEY)
    emb = client.embedding.model(EMB_KEY)
    identifier = llm.identifier
    llm.unload()
    client.embedding.unload(emb.identifier)
    calls: list[Callable[[], object]] = [
        lambda: llm.tokenize("hi"),
        lambda: llm.count_tokens("hi"),
        lambda: llm.get_info(),
        lambda: llm.get_context_length(),
        lambda: llm.respond("hi"),
        lambda: llm.respond_stream("hi"),
        lambda: llm.complete("hi"),
        lambda: llm.apply_prompt_template("hi"),
        lambda: llm.evaluate([1, 2]),
        lambda: emb.embed("hi"),
        lambda: emb.tokenize("hi"),
    ]
    for call in calls:
        with pytest.raises(lms.ModelUnloadedError) as info:
            call()
        assert isinstance(info.value, RuntimeError)
    with pytest.raises(lms.ModelUnloadedError) as unloaded:
        llm.get_info()
    assert identifier in str(unloaded.value)
    # Identity stays readable.
    assert llm.identifier == identifier
    assert llm.model_key == LLM_KEY
    assert repr(llm) == f"LLM(identifier={identifier!r})"


def test_unload_by_identifier_through_the_namespace(client: lms.Client) -> None:
    a = client.llm.load_new_instance(LLM_KEY, "a")
    b = client.llm.load_new_instance(LLM_KEY, "b")
    client.llm.unload("a")
    assert not a.is_loaded() and b.is_loaded()
    assert [h.identifier for h in client.llm.list_loaded()] == ["b"]
    with pytest.raises(lms.ModelNotFoundError):
        client.llm.unload("a")
    with pytest.raises(lms.ModelNotFoundError):
        client.embedding.unload("b")  # wrong namespace
    client.llm.unload("b")
    assert client.llm.list_loaded() == []


def test_a_request_in_flight_finishes_before_unload(client: lms.Client) -> None:
    llm = client.llm.model(LLM_KEY)
    stream = llm.complete_stream("1, 2, 3, 4, 5,", {"maxTokens": 40, "temperature": 0})
    next(stream)
    unloader = threading.Thread(target=llm.unload)
    unloader.start()
    time.sleep(0.05)
    with pytest.raises(lms.ModelUnloadedError):
        llm.complete("new request", {"maxTokens": 1})
    result = stream.result()
    unloader.join(timeout=30)
    assert not unloader.is_alive()
    assert result.stats.stop_reason == "maxPredictedTokensReached"
    assert result.stats.predicted_tokens_count == 40
    wait_until(lambda: not llm.is_loaded(), timeout=5)
    assert client.llm.list_loaded() == []


def test_close_unloads_everything(models_dir: Path) -> None:
    before = _core.mapped_file_count()
    client = lms.Client(models_dir)
    llm = client.llm.model(LLM_KEY)
    emb = client.embedding.model(EMB_KEY)
    assert _core.mapped_file_count() == before + 2
    client.close()
    client.close()
    assert not llm.is_loaded() and not emb.is_loaded()
    assert _core.mapped_file_count() == before
    with pytest.raises(lms.ModelUnloadedError):
        llm.tokenize("x")
    with pytest.raises(lms.ClientClosedError) as closed:
        client.llm.model(LLM_KEY)
    assert isinstance(closed.value, lms.ModelUnloadedError)


def test_context_manager_closes(models_dir: Path) -> None:
    with lms.Client(models_dir) as client:
        assert isinstance(client, lms.Client)
        llm = client.llm.model(LLM_KEY)
    assert not llm.is_loaded()


def test_list_loaded_models_by_kind(client: lms.Client) -> None:
    llm = client.llm.model(LLM_KEY)
    emb = client.embedding.model(EMB_KEY)
    everything = client.list_loaded_models()
    assert set(everything) == {llm, emb}
    assert [type(h) for h in client.list_loaded_models("llm")] == [lms.LLM]
    assert [type(h) for h in client.list_loaded_models("embedding")] == [lms.EmbeddingModel]
    assert client.llm.list_loaded() == [llm]
    assert client.embedding.list_loaded() == [emb]
    with pytest.raises(ValueError):
        client.list_loaded_models("vision")


def test_wrong_namespace_is_an_error(client: lms.Client) -> None:
    for call in (
        lambda: client.llm.model(EMB_ALIAS),
        lambda: client.llm.model(EMB_KEY),
        lambda: client.llm.load_new_instance(EMB_KEY),
        lambda: client.embedding.model(LLM_ALIAS),
        lambda: client.embedding.load_new_instance(LLM_KEY),
        lambda: client.llm.estimate(EMB_KEY),
    ):
        with pytest.raises(lms.ModelKindError) as info:
            call()
        assert isinstance(info.value, lms.ModelNotFoundError)
        assert "embedding" in str(info.value) or "llm" in str(info.value)
    assert client.list_loaded_models() == []


# --- progress ------------------------------------------------------------------------------------------------------


def _check_progress_shape(values: list[float]) -> None:
    assert len(values) >= 2
    assert all(isinstance(v, float) for v in values)
    assert values[0] == 0.0
    assert values[-1] == 1.0
    assert values.count(1.0) == 1
    assert all(a < b for a, b in zip(values, values[1:])), values
    assert len(values) <= 202  # about every 1%, or every chunk, whichever is fewer


@pytest.mark.parametrize("kind", ["llm", "embedding"])
def test_progress_sequence(client: lms.Client, kind: str) -> None:
    namespace = client.llm if kind == "llm" else client.embedding
    key = LLM_KEY if kind == "llm" else EMB_KEY
    values: list[float] = []
    seen_loaded: list[int] = []

    def on_progress(value: float) -> None:
        values.append(value)
        seen_loaded.append(len(namespace.list_loaded()))

    handle = namespace.model(key, on_load_progress=on_progress)
    _check_progress_shape(values)
    assert seen_loaded[0] == 0  # not visible as loaded before it is
    values2: list[float] = []
    second = namespace.load_new_instance(key, on_load_progress=values2.append)
    _check_progress_shape(values2)
    values3: list[float] = []
    assert namespace.model(key, on_load_progress=values3.append) in (handle, second)
    assert values3 == []  # nothing loaded, nothing reported


class Boom(Exception):
    pass


@pytest.mark.parametrize("when", ["first", "middle", "last"])
@pytest.mark.parametrize("kind", ["llm", "embedding"])
def test_a_raising_callback_cancels_the_load(client: lms.Client, models_dir: Path, kind: str, when: str) -> None:
    namespace = client.llm if kind == "llm" else client.embedding
    key = LLM_KEY if kind == "llm" else EMB_KEY
    weights = llm_path(models_dir) if kind == "llm" else emb_path(models_dir) / "model.safetensors"
    before = _core.mapped_file_count()
    error = Boom("stop loading")
    calls: list[float] = []

    def on_progress(value: float) -> None:
        calls.append(value)
        if (when == "first") or (when == "middle" and value >= 0.3) or (when == "last" and value == 1.0):
            raise error

    with pytest.raises(Boom) as info:
        namespace.model(key, on_load_progress=on_progress)
    assert info.value is error  # the very exception, unchanged
    assert calls[-1] < 1.0 or when == "last"
    assert namespace.list_loaded() == []
    assert client.list_loaded_models() == []
    assert _core.mapped_file_count() == before
    assert mapping_lines(weights) == []
    # Nothing is poisoned: the next load works.
    assert namespace.model(key).is_loaded()


def test_keyboard_interrupt_in_the_callback_cancels_too(client: lms.Client, models_dir: Path) -> None:
    before = _core.mapped_file_count()

    def on_progress(value: float) -> None:
        if value > 0.0:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        client.llm.model(LLM_KEY, on_load_progress=on_progress)
    assert client.llm.list_loaded() == []
    assert _core.mapped_file_count() == before
    assert mapping_lines(llm_path(models_dir)) == []


def test_a_raising_callback_leaves_other_instances_alone(client: lms.Client) -> None:
    other = client.llm.load_new_instance(LLM_KEY, "keeper")

    def on_progress(value: float) -> None:
        raise Boom

    with pytest.raises(Boom):
        client.llm.load_new_instance(LLM_KEY, "victim", on_load_progress=on_progress)
    assert [h.identifier for h in client.llm.list_loaded()] == ["keeper"]
    assert other.complete("Hello", {"maxTokens": 2}).stats.predicted_tokens_count == 2


def test_progress_callback_must_be_callable(client: lms.Client) -> None:
    with pytest.raises(TypeError):
        client.llm.model(LLM_KEY, on_load_progress=0.5)  # type: ignore[arg-type]


# --- concurrency ---------------------------------------------------------------------------------------------------


def test_single_flight_32_threads_load_once(client: lms.Client) -> None:
    n = 32
    barrier = threading.Barrier(n)
    lock = threading.Lock()
    starts: list[float] = []
    handles: list[lms.LLM] = []
    errors: list[BaseException] = []

    def on_progress(value: float) -> None:
        if value == 0.0:
            with lock:
                starts.append(value)

    def worker(i: int) -> None:
        try:
            barrier.wait()
            handle = client.llm.model(LLM_KEY if i % 2 else LLM_ALIAS, on_load_progress=on_progress)
            with lock:
                handles.append(handle)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    assert len(handles) == n
    assert len(starts) == 1
    assert {h.identifier for h in handles} == {LLM_KEY}
    assert len({h.instance_reference for h in handles}) == 1
    assert len(client.llm.list_loaded()) == 1


def test_separate_instances_run_in_parallel_and_one_instance_queues(client: lms.Client) -> None:
    a = client.llm.load_new_instance(LLM_KEY, "a", config={"contextLength": 512})
    b = client.llm.load_new_instance(LLM_KEY, "b", config={"contextLength": 512})
    expected = a.complete("1, 2, 3,", {"maxTokens": 8, "temperature": 0}).tokens
    results: dict[str, list[int]] = {}
    errors: list[BaseException] = []

    def run(handle: lms.LLM, name: str) -> None:
        try:
            results[name] = handle.complete("1, 2, 3,", {"maxTokens": 8, "temperature": 0}).tokens
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=run, args=(h, f"{h.identifier}{i}")) for i in range(3) for h in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    assert len(results) == 6
    assert all(tokens == expected for tokens in results.values())


# --- TTL -----------------------------------------------------------------------------------------------------------


def test_ttl_evicts_on_a_background_thread(client: lms.Client, models_dir: Path) -> None:
    before = _core.mapped_file_count()
    llm = client.llm.load_new_instance(LLM_KEY, ttl=1)
    loaded_at = time.monotonic()
    # No API call on the client while we wait (mapped_file_count is process-wide): eviction must not need one.
    time.sleep(0.6)
    assert _core.mapped_file_count() == before + 1
    wait_until(lambda: _core.mapped_file_count() == before, timeout=5)
    assert time.monotonic() - loaded_at >= 0.95
    assert mapping_lines(llm_path(models_dir)) == []
    assert client.llm.list_loaded() == []
    with pytest.raises(lms.ModelUnloadedError, match=r"ttl|TTL|expired|unloaded"):
        llm.tokenize("x")


def test_ttl_timer_restarts_after_each_request(client: lms.Client) -> None:
    llm = client.llm.load_new_instance(LLM_KEY, ttl=1, config={"contextLength": 512})
    start = time.monotonic()
    time.sleep(0.6)
    llm.complete("Hi", {"maxTokens": 1})
    last_request_end = time.monotonic()
    time.sleep(0.6)
    assert llm.is_loaded(), "evicted less than 1 s after its last request ended"
    waited = wait_until(lambda: not llm.is_loaded(), timeout=5)
    evicted_after = time.monotonic() - last_request_end
    assert 0.9 <= evicted_after <= 4, (evicted_after, waited, start)


@pytest.mark.timeout(150)
def test_ttl_never_evicts_a_request_in_flight(client: lms.Client) -> None:
    ttl = 0.5
    llm = client.llm.load_new_instance(LLM_KEY, ttl=ttl, config={"contextLength": 1024})
    done = threading.Event()
    box: dict[str, object] = {}

    def long_request() -> None:
        try:
            started = time.monotonic()
            # 600 tokens: several times the TTL on these machines.
            box["result"] = llm.complete("1, 2, 3, 4, 5,", {"maxTokens": 600, "temperature": 0})
            box["duration"] = time.monotonic() - started
        except BaseException as e:
            box["error"] = e
        finally:
            box["end"] = time.monotonic()
            done.set()

    thread = threading.Thread(target=long_request, daemon=True)
    start = time.monotonic()
    thread.start()
    alive_late = False
    while not done.is_set():
        if time.monotonic() - start > ttl + 0.3:
            assert llm.is_loaded(), "evicted while a request was running"
            alive_late = True
        time.sleep(0.05)
    thread.join()
    assert "error" not in box, box.get("error")
    result = box["result"]
    assert isinstance(result, lms.PredictionResult)
    assert result.stats.stop_reason == "maxPredictedTokensReached"
    assert result.stats.predicted_tokens_count == 600
    if not alive_late:
        pytest.fail(f"generation took {box['duration']:.2f} s, too fast to test a {ttl} s TTL")
    end = box["end"]
    assert isinstance(end, float)
    wait_until(lambda: not llm.is_loaded(), timeout=3)
    assert time.monotonic() - end >= ttl - 0.1


# --- shared weights and memory -------------------------------------------------------------------------------------


def test_second_instance_shares_the_mapping(client: lms.Client, models_dir: Path) -> None:
    path = llm_path(models_dir)
    before = _core.mapped_file_count()
    first_progress: list[float] = []
    a = client.llm.load_new_instance(LLM_KEY, on_load_progress=first_progress.append)
    count_a = _core.mapped_file_count()
    ranges_a = mapped_ranges(path)
    assert count_a == before + 1
    assert ranges_a and mapped_inode_count(path) == 1
    second_progress: list[float] = []
    b = client.llm.load_new_instance(LLM_KEY, on_load_progress=second_progress.append)
    assert b.identifier == f"{LLM_KEY}:2"
    assert _core.mapped_file_count() == count_a
    assert mapped_ranges(path) == ranges_a  # the same mapping, not a second one
    # No second read of the weights: the first load reports them landing chunk by chunk, the second has none.
    assert len(first_progress) > 2 and second_progress == [0.0, 1.0], (first_progress, second_progress)
    a.unload()
    assert _core.mapped_file_count() == count_a  # b still uses it
    assert mapped_ranges(path) == ranges_a
    assert b.complete("Hi", {"maxTokens": 2}).stats.predicted_tokens_count == 2
    b.unload()
    assert _core.mapped_file_count() == before
    assert mapping_lines(path) == []


@pytest.mark.parametrize("kind", ["llm", "embedding"])
def test_rss_returns_to_baseline_after_unload(client: lms.Client, kind: str) -> None:
    def cycle() -> None:
        if kind == "llm":
            llm = client.llm.load_new_instance(LLM_KEY, config={"contextLength": 1024})
            llm.complete("The capital of France is", {"maxTokens": 4})
            llm.evaluate(llm.tokenize("The capital of France is"))
            llm.unload()
        else:
            emb = client.embedding.load_new_instance(EMB_KEY)
            emb.embed(["a sentence", "another, longer sentence to embed"])
            emb.unload()

    cycle()  # warm-up: allocator pools, thread pools, lazily initialised statics
    baseline = rss_bytes()
    cycle()
    cycle()
    after = rss_bytes()
    assert after - baseline < 15 * 1024 * 1024, f"RSS grew by {(after - baseline) / 2**20:.1f} MiB"
