"""A prompt's logits do not depend on how it was split into forward passes (SPEC §6's greedy references assume it):
evaluated whole, in chunks of `evalBatchSize`, or after a cached prefix, the same prompt gives the same floats,
and two instances of one model decoding at once give each request the answer it gets alone.

llama.cpp does not promise this (its batched and token-by-token paths differ; docs/families.md), but a host that
serves many requests on one instance must: otherwise a greedy answer depends on what the instance ran before.
"""

from __future__ import annotations

import threading

import modelhost as mh
import numpy as np
import pytest
from helpers import GEMMA_KEY, LLM_KEY

TEXT = "The quick brown fox jumps over the lazy dog. In a distant galaxy, scientists discovered that"
GREEDY = {"temperature": 0, "maxTokens": 8}


@pytest.mark.parametrize("key", [LLM_KEY, GEMMA_KEY])
def test_chunked_prompt_equals_whole(client: mh.Client, key: str) -> None:
    whole = client.llm.load_new_instance(key, "whole", config={"contextLength": 512, "evalBatchSize": 512})
    chunked = client.llm.load_new_instance(key, "chunked", config={"contextLength": 512, "evalBatchSize": 5})
    tokens = whole.tokenize(TEXT)
    assert len(tokens) > 10
    np.testing.assert_array_equal(whole.evaluate(tokens), chunked.evaluate(tokens))


def test_a_cached_prefix_changes_nothing(client: mh.Client) -> None:
    questions = [f"Write the number {i} in words, then count to ten." for i in range(0, 40, 5)]
    fresh = {}
    for q in questions:
        llm = client.llm.load_new_instance(LLM_KEY, "fresh")
        fresh[q] = llm.respond([{"role": "user", "content": q}], config=GREEDY).content
        llm.unload()
    shared = client.llm.load_new_instance(LLM_KEY, "shared")
    for q in [*questions[::-1], *questions]:  # each after another prompt with the same template prefix, then again
        assert shared.respond([{"role": "user", "content": q}], config=GREEDY).content == fresh[q], q


def test_concurrent_instances_do_not_change_each_others_answers(client: mh.Client) -> None:
    """Two instances on the kernel pool at once (one in a prompt pass while the other decodes) answer as alone."""
    a = client.llm.load_new_instance(LLM_KEY, "a")
    b = client.llm.load_new_instance(LLM_KEY, "b")
    prompts = [f"Tell me a fact about the number {i}." for i in range(6)]
    alone = {p: a.complete(p, config=GREEDY).content for p in prompts}
    got: dict[tuple[str, str], str] = {}

    def run(llm: mh.LLM, name: str) -> None:
        for p in prompts if name == "a" else prompts[::-1]:
            got[(name, p)] = llm.complete(p, config=GREEDY).content

    threads = [threading.Thread(target=run, args=(a, "a")), threading.Thread(target=run, args=(b, "b"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got == {(n, p): alone[p] for n in "ab" for p in prompts}
