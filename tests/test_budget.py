"""SPEC §4: memory estimates, the memory budget, max_loaded and auto-evict (LRU, never a request in flight)."""

from __future__ import annotations

import threading
from pathlib import Path

import modelhost as lms
import pytest
from helpers import EMB_KEY, LLM_KEY, llm_path, mapping_lines
from modelhost import _core

pytestmark = pytest.mark.timeout(90)


def test_estimate_without_loading(client: lms.Client, models_dir: Path) -> None:
    before = _core.mapped_file_count()
    est = client.llm.estimate(LLM_KEY)
    assert isinstance(est, lms.MemoryEstimate)
    assert _core.mapped_file_count() == before
    assert mapping_lines(llm_path(models_dir)) == []
    size = llm_path(models_dir).stat().st_size
    assert 0.8 * size <= est.weights_bytes <= 1.2 * size
    assert est.kv_cache_bytes > 0
    assert est.scratch_bytes >= 0
    assert est.total_bytes == est.weights_bytes + est.kv_cache_bytes + est.scratch_bytes
    assert sum(est.per_device.values()) == est.total_bytes
    # The KV cache scales with the context length (30 layers x 3 KV heads x 64 dims, K and V).
    small = client.llm.estimate(LLM_KEY, {"contextLength": 1024})
    large = client.llm.estimate(LLM_KEY, lms.LlmLoadModelConfig(context_length=4096))
    assert large.kv_cache_bytes == pytest.approx(4 * small.kv_cache_bytes, rel=0.05)
    assert large.weights_bytes == small.weights_bytes
    emb = client.embedding.estimate(EMB_KEY)
    assert emb.weights_bytes >= 0.8 * (models_dir / EMB_KEY / "model.safetensors").stat().st_size
    with pytest.raises(lms.InvalidConfigError):
        client.llm.estimate(LLM_KEY, {"contextLength": 0})
    with pytest.raises(lms.ModelNotFoundError):
        client.llm.estimate("no-such-model")


def test_a_load_over_budget_raises_before_touching_the_file(models_dir: Path) -> None:
    with lms.Client(models_dir) as probe:
        needed = probe.llm.estimate(LLM_KEY).total_bytes
    before = _core.mapped_file_count()
    calls: list[float] = []
    with lms.Client(models_dir, memory_budget=needed // 2) as client:
        with pytest.raises(lms.InsufficientMemoryError) as info:
            client.llm.model(LLM_KEY, on_load_progress=calls.append)
        assert isinstance(info.value, MemoryError)
        assert str(needed) in str(info.value)
        assert str(needed // 2) in str(info.value)
        assert 1.0 not in calls  # the load never got going
        assert client.llm.list_loaded() == []
        assert _core.mapped_file_count() == before
        # The estimate decides: exactly the estimate fits.
    with lms.Client(models_dir, memory_budget=needed) as client:
        assert client.llm.model(LLM_KEY).is_loaded()


def test_auto_evict_makes_room_from_idle_instances(models_dir: Path) -> None:
    with lms.Client(models_dir) as probe:
        llm_needed = probe.llm.estimate(LLM_KEY).total_bytes
        emb_needed = probe.embedding.estimate(EMB_KEY).total_bytes
    budget = max(llm_needed, emb_needed) + min(llm_needed, emb_needed) // 2  # one fits, not both
    with lms.Client(models_dir, memory_budget=budget) as client:
        llm = client.llm.model(LLM_KEY)
        emb = client.embedding.model(EMB_KEY)
        assert emb.is_loaded()
        assert not llm.is_loaded()
        with pytest.raises(lms.ModelUnloadedError):
            llm.tokenize("evicted")
    with lms.Client(models_dir, memory_budget=budget, auto_evict=False) as client:
        llm = client.llm.model(LLM_KEY)
        with pytest.raises(lms.InsufficientMemoryError):
            client.embedding.model(EMB_KEY)
        assert llm.is_loaded()


def test_auto_evict_never_takes_a_request_in_flight(models_dir: Path) -> None:
    with lms.Client(models_dir) as probe:
        llm_needed = probe.llm.estimate(LLM_KEY, {"contextLength": 512}).total_bytes
        emb_needed = probe.embedding.estimate(EMB_KEY).total_bytes
    budget = max(llm_needed, emb_needed) + min(llm_needed, emb_needed) // 2
    with lms.Client(models_dir, memory_budget=budget) as client:
        llm = client.llm.model(LLM_KEY, config={"contextLength": 512})
        stream = llm.complete_stream("1, 2, 3, 4, 5,", {"maxTokens": 30, "temperature": 0})
        next(stream)  # in flight
        with pytest.raises(lms.InsufficientMemoryError):
            client.embedding.model(EMB_KEY)
        assert llm.is_loaded()
        assert stream.result().stats.predicted_tokens_count == 30
        # Once idle, it can be evicted.
        assert client.embedding.model(EMB_KEY).is_loaded()
        assert not llm.is_loaded()


def test_max_loaded_evicts_the_least_recently_used(models_dir: Path) -> None:
    with lms.Client(models_dir, max_loaded=2) as client:
        a = client.llm.load_new_instance(LLM_KEY, "a", config={"contextLength": 512})
        b = client.embedding.load_new_instance(EMB_KEY, "b")
        a.complete("Hi", {"maxTokens": 1})  # a is now more recently used than b
        c = client.llm.load_new_instance(LLM_KEY, "c", config={"contextLength": 512})
        assert {h.identifier for h in client.list_loaded_models()} == {"a", "c"}
        assert not b.is_loaded()
        assert a.is_loaded() and c.is_loaded()
    with lms.Client(models_dir, max_loaded=1, auto_evict=False) as client:
        client.llm.load_new_instance(LLM_KEY, config={"contextLength": 512})
        with pytest.raises(lms.InsufficientMemoryError):
            client.llm.load_new_instance(LLM_KEY, config={"contextLength": 512})


def test_eviction_under_contention_is_thread_safe(models_dir: Path) -> None:
    # Many threads asking for both models under max_loaded=1: every call returns a live handle or raises
    # InsufficientMemoryError (the other model busy); nothing else, and the table never exceeds the limit.
    errors: list[BaseException] = []
    with lms.Client(models_dir, max_loaded=1) as client:

        def worker(i: int) -> None:
            try:
                for _ in range(3):
                    if i % 2:
                        client.llm.model(LLM_KEY, config={"contextLength": 512}).count_tokens("x")
                    else:
                        client.embedding.model(EMB_KEY).count_tokens("x")
                    assert len(client.list_loaded_models()) <= 1
            except (lms.InsufficientMemoryError, lms.ModelUnloadedError):
                pass
            except BaseException as e:
                errors.append(e)

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
    assert errors == []


def test_client_argument_types(models_dir: Path) -> None:
    with pytest.raises(TypeError):
        lms.Client(models_dir, memory_budget="1GB")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        lms.Client(models_dir, max_loaded=1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        lms.Client(models_dir, auto_evict="yes")  # type: ignore[arg-type]


def test_an_unloaded_instance_counts_until_its_request_ends(models_dir: Path) -> None:
    """``unload()`` of a busy instance takes it out of the table at once, but its memory stays until its request
    ends: until then the budget still counts it, so a load that only fits without it is refused (it cannot be
    evicted either: it is busy), never admitted over the budget. Once the request ends, the same load fits."""
    with lms.Client(models_dir) as probe:
        llm_needed = probe.llm.estimate(LLM_KEY, {"contextLength": 512}).total_bytes
        emb_needed = probe.embedding.estimate(EMB_KEY).total_bytes
    with lms.Client(models_dir, memory_budget=llm_needed + emb_needed - 1) as client:
        llm = client.llm.model(LLM_KEY, config={"contextLength": 512})
        stream = llm.complete_stream("1, 2, 3, 4, 5,", {"maxTokens": 30, "temperature": 0})
        next(stream)  # in flight
        llm.unload()
        assert client.llm.list_loaded() == []
        with pytest.raises(lms.InsufficientMemoryError) as info:
            client.embedding.model(EMB_KEY)
        assert str(llm_needed) in str(info.value)  # what the draining instance holds is in the message
        assert client.embedding.list_loaded() == []
        assert stream.result().stats.predicted_tokens_count == 30  # the request in flight finished
        assert client.embedding.model(EMB_KEY).is_loaded()  # and its memory is free now
