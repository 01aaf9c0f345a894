"""Load-config fields really take effect (issue 6): context length sizes the KV cache, RoPE overrides,
evalBatchSize and seed change behaviour, instances with different contexts share the weights, and the
memory estimate matches the RSS a real load adds."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import modelhost as lms
import numpy as np
import pytest
from helpers import LLM_KEY

PROMPT = "The capital of France is"


def test_rope_overrides_change_the_logits(client: lms.Client) -> None:
    base = client.llm.load_new_instance(LLM_KEY, "rope-default", config={"contextLength": 256})
    scaled = client.llm.load_new_instance(
        LLM_KEY, "rope-scaled", config={"contextLength": 256, "ropeFrequencyScale": 0.5}
    )
    based = client.llm.load_new_instance(
        LLM_KEY, "rope-base", config={"contextLength": 256, "ropeFrequencyBase": 10_000.0}
    )
    ids = base.tokenize(PROMPT)
    a, b, c = (m.evaluate(ids)[-1] for m in (base, scaled, based))
    assert not np.allclose(a, b, atol=1e-3)
    assert not np.allclose(a, c, atol=1e-3)
    assert scaled.get_load_config().rope_frequency_scale == 0.5
    assert based.get_load_config().rope_frequency_base == 10_000.0
    assert base.get_load_config().rope_frequency_base == 100_000.0  # the file's own value, applied


def test_eval_batch_size_chunks_the_prompt_within_the_reference_tolerance(client: lms.Client) -> None:
    chunked = client.llm.load_new_instance(LLM_KEY, "batch-3", config={"contextLength": 256, "evalBatchSize": 3})
    assert chunked.get_load_config().eval_batch_size == 3
    refs = json.loads((Path(__file__).parent / "refs" / "smollm2.json").read_text())
    for case in refs["raw_completion"]["cases"]:
        # Chunks of 3 change the order of floating-point work; the SPEC §6 tolerance against llama.cpp holds.
        logits = chunked.evaluate(case["prompt_ids"] + case["generated_ids"])
        n = len(case["prompt_ids"])
        for token, ref in case["top5_next_token_logits_[id,logit]"]:
            assert abs(float(logits[n - 1, token]) - ref) <= 0.5
        for j, step in enumerate(case["steps_[chosen id, its logit, margin to 2nd best]"]):
            if step["margin_to_2nd"] >= 1.0:
                assert int(np.argmax(logits[n + j - 1])) == case["generated_ids"][j]
    with pytest.raises(lms.InvalidConfigError, match="evalBatchSize"):
        client.llm.load_new_instance(LLM_KEY, "batch-too-big", config={"contextLength": 64, "evalBatchSize": 65})


def test_seed_makes_sampling_repeatable(client: lms.Client) -> None:
    llm = client.llm.load_new_instance(LLM_KEY, "seeded", config={"contextLength": 256, "seed": 7})
    cfg = {"maxTokens": 12, "temperature": 1.5, "topKSampling": 0, "topPSampling": 1.0, "minPSampling": 0.0}
    first, second = llm.complete(PROMPT, cfg).tokens, llm.complete(PROMPT, cfg).tokens
    assert first == second  # the load config's seed is the default for every prediction
    others = {tuple(llm.complete(PROMPT, {**cfg, "seed": s}).tokens) for s in range(4)}
    assert len(others) > 1


def test_context_length_sizes_the_kv_cache_and_instances_share_weights(client: lms.Client) -> None:
    small = client.llm.load_new_instance(LLM_KEY, "ctx-256", config={"contextLength": 256})
    big = client.llm.load_new_instance(LLM_KEY, "ctx-2048", config={"contextLength": 2048})
    assert small.get_context_length() == 256 and big.get_context_length() == 2048
    kv_small = client.llm.estimate(LLM_KEY, {"contextLength": 256}).kv_cache_bytes
    kv_big = client.llm.estimate(LLM_KEY, {"contextLength": 2048}).kv_cache_bytes
    assert kv_big == 8 * kv_small > 0
    assert lms._core.mapped_file_count() == 1  # one mapping of the one file


MEASURE = """
import gc, json, sys
import modelhost as lms
from helpers import LLM_KEY, rss_bytes
out = []
with lms.Client(sys.argv[1]) as client:
    client.llm.model(LLM_KEY, ttl=None).unload()  # one-off costs (thread pools, regexes) out of the way
    gc.collect()
    for ctx in (512, 2048):
        estimate = client.llm.estimate(LLM_KEY, {"contextLength": ctx})
        before = rss_bytes()
        llm = client.llm.model(LLM_KEY, ttl=None, config={"contextLength": ctx})
        loaded = rss_bytes() - before
        # Fill the context: the KV cache is reserved at load and becomes resident as positions are written.
        prompt = " hello" * (ctx - 2)
        n = len(llm.tokenize(prompt))
        assert ctx - 64 <= n < ctx, n
        llm.complete(prompt, config={"maxTokens": 1})
        out.append((ctx, estimate.total_bytes, estimate.kv_cache_bytes, loaded, rss_bytes() - before, n))
        llm.unload()
        gc.collect()
print(json.dumps(out))
"""


def test_estimate_matches_the_rss_of_a_full_context(models_dir: Path) -> None:
    """The estimate is what a loaded model holds once its context is full; right after the load the KV cache is
    only reserved, so the load itself adds about the estimate less the cache."""
    # A fresh interpreter: in this one, memory freed by earlier tests is reused and hides the growth.
    here = Path(__file__).parent
    done = subprocess.run(
        [sys.executable, "-c", MEASURE, str(models_dir)], cwd=here, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    for ctx, estimate, kv_cache, loaded, full, tokens in json.loads(done.stdout):
        filled_kv = kv_cache * tokens // ctx
        assert abs(estimate - (kv_cache - filled_kv) - full) <= 0.10 * full, (ctx, estimate, full, tokens)
        assert loaded <= estimate - 0.8 * kv_cache, ("the KV cache was made resident at load", ctx, loaded, estimate)


LOCKS = """
import os, shutil, sys
import modelhost as lms
from helpers import LLM_FILE, LLM_KEY, llm_path
from pathlib import Path

def locked_mib():
    for line in open("/proc/self/status"):
        if line.startswith("VmLck:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmLck")

models = Path(sys.argv[1])
copy = models / LLM_KEY / LLM_FILE
copy.parent.mkdir(parents=True)
shutil.copyfile(llm_path(Path(sys.argv[2])), copy)
with lms.Client(str(models)) as client:
    a = client.llm.load_new_instance(LLM_KEY, "a", config={"keepModelInMemory": True, "contextLength": 256})
    assert locked_mib() > 80, locked_mib()
    expected = a.complete("Hi", config={"maxTokens": 4, "temperature": 0}).tokens
    os.utime(copy, (1, 1))  # same file, new mtime: a second model, sharing the first one's mapping
    b = client.llm.load_new_instance(LLM_KEY, "b", config={"keepModelInMemory": True, "contextLength": 256})
    a.unload()
    assert locked_mib() > 80, ("unloading one model unlocked the other's pages", locked_mib())
    assert b.complete("Hi", config={"maxTokens": 4, "temperature": 0}).tokens == expected
    b.unload()
    assert locked_mib() < 1, locked_mib()
print("ok")
"""


def test_keep_model_in_memory_locks_are_counted_on_a_shared_mapping(models_dir: Path, tmp_path: Path) -> None:
    """keepModelInMemory locks the weights' pages (VmLck); two models reading one mapping in place each hold a
    count, so unloading one does not unlock the other's pages. In a fresh interpreter, to read VmLck alone."""
    here = Path(__file__).parent
    done = subprocess.run(
        [sys.executable, "-c", LOCKS, str(tmp_path / "models"), str(models_dir)],
        cwd=here,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().endswith("ok")
