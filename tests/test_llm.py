"""The LLM handle on SmolLM2: tokenizer and template inputs, prediction results and streams, sampling, stop
conditions, cancellation, concurrency. (Token ids, logits and greedy output against llama.cpp, SPEC §6, are checked
in test_reference_smollm2.py.)"""

from __future__ import annotations

import gc
import threading
import time
from pathlib import Path
from typing import Any

import modelhost as lms
import numpy as np
import pytest
from helpers import EOG_IDS, LLM_KEY, STOP_REASONS, llm_path, load_ref

pytestmark = pytest.mark.timeout(120)

REF = load_ref("smollm2.json")


# --- tokenizer and template ----------------------------------------------------------------------------------------


def test_tokenize_many_and_count(llm: lms.LLM) -> None:
    texts = [case["text"] for case in REF["tokenization"][:5]]
    assert [llm.count_tokens(t) for t in texts] == [case["n_tokens"] for case in REF["tokenization"][:5]]
    assert llm.tokenize(texts) == [case["ids"] for case in REF["tokenization"][:5]]
    assert llm.tokenize(iter(texts)) == llm.tokenize(texts)
    assert llm.tokenize([]) == []


@pytest.mark.parametrize("case", REF["chat_template"]["cases"], ids=lambda c: str(len(c["messages"])))
def test_apply_prompt_template_matches_the_reference(llm: lms.LLM, case: dict[str, Any]) -> None:
    messages = case["messages"]
    assert llm.apply_prompt_template(messages) == case["rendered"]
    assert llm.apply_prompt_template({"messages": messages}) == case["rendered"]
    assert llm.apply_prompt_template(lms.Chat.from_history({"messages": messages})) == case["rendered"]
    if len(messages) == 1 and messages[0]["role"] == "user":
        assert llm.apply_prompt_template(messages[0]["content"]) == case["rendered"]


# --- logits (the reference checks are in test_reference_smollm2.py) --------------------------------------------


def test_evaluate_prefix_consistency(llm: lms.LLM) -> None:
    ids = REF["raw_completion"]["cases"][0]["prompt_ids"]
    full = llm.evaluate(ids)
    prefix = llm.evaluate(ids[:3])
    np.testing.assert_allclose(full[:3], prefix, atol=1e-3)
    assert llm.evaluate(np.array(ids, dtype=np.int64)).shape == full.shape  # type: ignore[arg-type]


# --- greedy generation -----------------------------------------------------------------------------------------------


def test_generation_never_emits_end_of_generation_tokens(llm: lms.LLM) -> None:
    result = llm.respond("Say hi.", {"temperature": 0, "maxTokens": 64})
    assert not EOG_IDS & set(result.tokens)
    assert "<|im_end|>" not in result.content
    if result.stats.stop_reason == "eosFound":
        assert result.stats.predicted_tokens_count is not None
        assert result.stats.predicted_tokens_count <= 64


# --- results and streams ---------------------------------------------------------------------------------------------


def test_prediction_result_shape(llm: lms.LLM, models_dir: Path) -> None:
    result = llm.respond("What is the capital of France?", {"maxTokens": 8, "temperature": 0})
    assert isinstance(result, lms.PredictionResult)
    assert str(result) == result.content
    assert result.parsed == result.content
    assert result.structured is False
    assert repr(result) == f"PredictionResult(content={result.content!r})"
    assert all(isinstance(t, int) for t in result.tokens)
    stats = result.stats
    assert stats.stop_reason in STOP_REASONS
    assert stats.prompt_tokens_count is not None and stats.prompt_tokens_count > 0
    assert stats.predicted_tokens_count is not None and 0 < stats.predicted_tokens_count <= 8
    assert stats.total_tokens_count == stats.prompt_tokens_count + stats.predicted_tokens_count
    assert len(result.tokens) <= stats.predicted_tokens_count <= len(result.tokens) + 1
    assert stats.time_to_first_token_sec is not None and 0 < stats.time_to_first_token_sec < 30
    assert stats.tokens_per_second is not None and stats.tokens_per_second > 0
    assert result.model_info.model_key == LLM_KEY
    assert result.model_info.display_name
    assert Path(result.model_info.path) == llm_path(models_dir)
    assert result.load_config == llm.get_load_config()
    assert result.prediction_config.max_tokens == 8


def test_max_tokens(llm: lms.LLM) -> None:
    result = llm.complete("1, 2, 3, 4, 5,", {"maxTokens": 3, "temperature": 0})
    assert result.stats.stop_reason == "maxPredictedTokensReached"
    assert result.stats.predicted_tokens_count == 3 == len(result.tokens)


def test_stop_strings(llm: lms.LLM) -> None:
    case = REF["raw_completion"]["cases"][3]  # "1, 2, 3, 4, 5," counts on with high confidence
    assert case["prompt"] == "1, 2, 3, 4, 5,"
    text = case["generated_text"]
    assert " 8" in text
    result = llm.complete(case["prompt"], {"maxTokens": 32, "temperature": 0, "stopStrings": [" 8", "never"]})
    assert result.stats.stop_reason == "stopStringFound"
    assert result.content == text[: text.index(" 8")]
    stream = llm.complete_stream(case["prompt"], {"maxTokens": 32, "temperature": 0, "stopStrings": [" 8"]})
    assert "".join(f.content for f in stream) == result.content


def test_greedy_is_deterministic_and_seeds_reproduce(llm: lms.LLM) -> None:
    prompt = "Once upon a time,"
    greedy = [llm.complete(prompt, {"maxTokens": 12, "temperature": 0}).tokens for _ in range(2)]
    assert greedy[0] == greedy[1]
    config = {"maxTokens": 12, "temperature": 1.0, "seed": 1234, "topKSampling": 40, "topPSampling": 0.95}
    sampled = [llm.complete(prompt, config).tokens for _ in range(2)]
    assert sampled[0] == sampled[1]
    others = {tuple(llm.complete(prompt, {**config, "seed": seed}).tokens) for seed in range(5)}
    assert len(others) > 1, "different seeds never changed a temperature-1 sample"


def test_sampler_options_are_accepted(llm: lms.LLM) -> None:
    config = lms.LlmPredictionConfig(
        max_tokens=4,
        temperature=0.7,
        top_k_sampling=20,
        top_p_sampling=0.9,
        min_p_sampling=0.05,
        repeat_penalty=1.1,
        seed=5,
    )
    assert llm.complete("Hello", config).stats.predicted_tokens_count == 4


def test_stream_fragments_add_up_to_the_result(llm: lms.LLM) -> None:
    events: list[str] = []
    fragments_seen: list[lms.LlmPredictionFragment] = []
    messages: list[lms.ChatMessage] = []
    stream = llm.respond_stream(
        "Count to five.",
        {"maxTokens": 16, "temperature": 0},
        on_first_token=lambda: events.append("first"),
        on_prediction_fragment=fragments_seen.append,
        on_message=messages.append,
        on_prompt_processing_progress=lambda p: events.append(f"progress {p}"),
    )
    fragments = list(stream)
    result = stream.result()
    assert fragments == fragments_seen
    assert "".join(f.content for f in fragments) == result.content
    assert [t for f in fragments for t in f.tokens] == result.tokens
    assert all(f.tokens_count == len(f.tokens) for f in fragments)
    assert events[:3] == ["progress 0.0", "progress 1.0", "first"]
    assert events.count("first") == 1
    assert messages == [lms.ChatMessage("assistant", result.content)]
    assert stream.result() is result
    assert stream.wait_for_result() is result
    assert list(stream) == []


def test_result_finishes_an_unread_stream(llm: lms.LLM) -> None:
    stream = llm.complete_stream("1, 2, 3,", {"maxTokens": 5, "temperature": 0})
    assert stream.result().stats.predicted_tokens_count == 5


def test_on_message_appends_to_a_chat(llm: lms.LLM) -> None:
    chat = lms.Chat("You answer questions concisely")
    chat.add_user_message("Tell me three fruits")
    result = llm.respond(chat, {"maxTokens": 10}, on_message=chat.append)
    assert chat.to_messages()[-1] == {"role": "assistant", "content": result.content}
    chat.add_user_message("Tell me three more fruits")
    llm.respond(chat, {"maxTokens": 10}, on_message=chat.append)
    assert [m["role"] for m in chat.to_messages()] == ["system", "user", "assistant", "user", "assistant"]


def test_cancel_stops_with_user_stopped(llm: lms.LLM) -> None:
    stream = llm.complete_stream("1, 2, 3, 4, 5,", {"maxTokens": 200, "temperature": 0})
    count = 0
    for _ in stream:
        count += 1
        if count == 3:
            stream.cancel()
    assert count <= 5
    result = stream.result()
    assert result.stats.stop_reason == "userStopped"
    assert result.stats.predicted_tokens_count is not None and result.stats.predicted_tokens_count <= 5


def test_cancel_from_another_thread(llm: lms.LLM) -> None:
    stream = llm.complete_stream("1, 2, 3, 4, 5,", {"maxTokens": 500, "temperature": 0})
    next(stream)
    timer = threading.Timer(0.2, stream.cancel)
    timer.start()
    result = stream.result()
    timer.join()
    assert result.stats.stop_reason == "userStopped"
    assert result.stats.predicted_tokens_count is not None and result.stats.predicted_tokens_count < 500


def _instance_is_free(llm: lms.LLM) -> bool:
    """A one-token request runs: nothing holds the instance. (A held instance would make it wait forever; the join's
    bound is only a watchdog, so that the test fails with this message instead of at pytest's timeout.)"""
    done: list[lms.PredictionResult] = []
    worker = threading.Thread(target=lambda: done.append(llm.complete("Hi", {"maxTokens": 1})), daemon=True)
    worker.start()
    worker.join(timeout=60)
    return len(done) == 1


def test_closing_or_abandoning_a_stream_frees_the_instance(llm: lms.LLM) -> None:
    with llm.complete_stream("1, 2, 3, 4, 5,", {"maxTokens": 1000, "temperature": 0}) as stream:
        next(stream)
    assert stream.result().stats.stop_reason == "userStopped"
    assert _instance_is_free(llm)
    abandoned = llm.respond_stream("Write a long story.", {"maxTokens": 1000})
    next(abandoned)
    del abandoned
    gc.collect()
    assert _instance_is_free(llm)
    never_iterated = llm.complete_stream("1, 2, 3,", {"maxTokens": 1000})
    never_iterated.close()
    assert _instance_is_free(llm)


def test_an_exception_inside_a_with_block_cancels(llm: lms.LLM) -> None:
    with pytest.raises(KeyError), llm.complete_stream("1, 2, 3,", {"maxTokens": 1000}) as stream:
        next(stream)
        raise KeyError("app error")
    assert stream.finished
    assert _instance_is_free(llm)


def test_one_instance_serves_requests_in_order(llm: lms.LLM) -> None:
    expected = llm.complete("1, 2, 3,", {"maxTokens": 6, "temperature": 0}).tokens
    results: list[list[int]] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            results.append(llm.complete("1, 2, 3,", {"maxTokens": 6, "temperature": 0}).tokens)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    assert results == [expected] * 4


# --- info ----------------------------------------------------------------------------------------------------------


def test_info_fields(llm: lms.LLM, models_dir: Path) -> None:
    info = llm.get_info()
    assert isinstance(info, lms.LlmInstanceInfo)
    assert info.type == "llm"
    assert info.model_key == LLM_KEY
    assert info.format == "gguf"
    assert info.display_name
    assert Path(info.path) == llm_path(models_dir)
    assert info.size_bytes == llm_path(models_dir).stat().st_size
    assert info.identifier == llm.identifier
    assert info.instance_reference == llm.instance_reference != ""
    assert info.architecture == "llama"
    assert info.params_string == "135M"
    assert info.max_context_length == 8192
    assert info.context_length == llm.get_context_length() == 4096
    assert info.vision is False
    assert isinstance(info.trained_for_tool_use, bool)
    assert info.ttl is None
    assert isinstance(info.last_used, float) and info.last_used <= time.time()
    assert info.device in ("cpu", "cuda:0")
    assert info.placement
    assert info.to_dict()["model_key"] == LLM_KEY


# --- prompt-processing progress ---------------------------------------------------------------------------------------


def test_prompt_processing_progress_comes_from_the_core_once_per_chunk(module_client: lms.Client) -> None:
    """As LM Studio's ``on_prompt_processing_progress``: 0.0 before the first chunk of the prompt, then the share
    processed after each ``evalBatchSize`` chunk, exactly 1.0 after the last, all before the first token."""
    batch = 4
    llm = module_client.llm.load_new_instance(
        LLM_KEY, "progress", config={"contextLength": 512, "evalBatchSize": batch}
    )
    try:
        prompt = "one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen"
        n = len(llm.tokenize(prompt))
        chunks = -(-n // batch)
        assert chunks >= 3
        seen: list[float] = []
        tokens_at_progress: list[int] = []
        stream = llm.complete_stream(
            prompt,
            {"maxTokens": 2, "temperature": 0},
            on_prompt_processing_progress=seen.append,
            on_first_token=lambda: tokens_at_progress.append(len(seen)),
        )
        fragments = list(stream)
        assert fragments and stream.result().stats.prompt_tokens_count == n
        assert seen == pytest.approx([0.0] + [min(batch * i, n) / n for i in range(1, chunks + 1)])
        assert seen[-1] == 1.0 and tokens_at_progress == [len(seen)]  # all of it before the first token
        # respond() reports through the same path (the chat template's prompt, from an empty cache here).
        other = module_client.llm.load_new_instance(LLM_KEY, "progress-2", config={"contextLength": 512})
        try:
            chat_seen: list[float] = []
            other.respond("Hi", {"maxTokens": 1}, on_prompt_processing_progress=chat_seen.append)
            assert chat_seen == [0.0, 1.0]  # one chunk of the default evalBatchSize
        finally:
            other.unload()
    finally:
        llm.unload()


def test_a_raising_prompt_progress_callback_stops_the_prediction(llm: lms.LLM) -> None:
    """The callback's exception comes back unchanged, the prediction ends, and the instance takes the next request."""

    def refuse(progress: float) -> None:
        if progress > 0:
            raise KeyError("enough")

    with pytest.raises(KeyError, match="enough"):
        llm.complete(
            "A prompt whose processing the callback stops.", {"maxTokens": 4}, on_prompt_processing_progress=refuse
        )
    assert llm.complete("Hi", {"maxTokens": 1, "temperature": 0}).stats.predicted_tokens_count == 1
