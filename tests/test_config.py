"""Load and prediction configs: LM Studio's names, dict or dataclass, and what the core applies."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import modelhost as lms
import pytest
from helpers import EMB_KEY, LLM_KEY, mapping_lines, placement_warnings_allowed
from modelhost import _core
from modelhost.config import load_config_to_core, prediction_config_from_user

# --- parsing (pure Python) ---------------------------------------------------------------------------------------


def test_camel_and_snake_case_give_the_same_core_dict() -> None:
    camel = {
        "contextLength": 2048,
        "gpu": {"ratio": 0.5, "mainGpu": 0, "splitStrategy": "evenly", "disabledGpus": [1]},
        "tryMmap": False,
        "keepModelInMemory": True,
        "evalBatchSize": 64,
        "seed": 7,
        "ropeFrequencyBase": 10000,
        "ropeFrequencyScale": 1.0,
    }
    snake = {
        "context_length": 2048,
        "gpu": {"ratio": 0.5, "main_gpu": 0, "split_strategy": "evenly", "disabled_gpus": [1]},
        "try_mmap": False,
        "keep_model_in_memory": True,
        "eval_batch_size": 64,
        "seed": 7,
        "rope_frequency_base": 10000,
        "rope_frequency_scale": 1.0,
    }
    expected = {
        "context_length": 2048,
        "gpu_ratio": 0.5,
        "main_gpu": 0,
        "split_strategy": "evenly",
        "disabled_gpus": [1],
        "try_mmap": False,
        "keep_model_in_memory": True,
        "eval_batch_size": 64,
        "seed": 7,
        "rope_frequency_base": 10000.0,
        "rope_frequency_scale": 1.0,
    }
    assert load_config_to_core(camel, "llm") == expected
    assert load_config_to_core(snake, "llm") == expected
    dataclass_config = lms.LlmLoadModelConfig(
        context_length=2048,
        gpu=lms.GpuSetting(ratio=0.5, main_gpu=0, split_strategy="evenly", disabled_gpus=[1]),
        try_mmap=False,
        keep_model_in_memory=True,
        eval_batch_size=64,
        seed=7,
        rope_frequency_base=10000,
        rope_frequency_scale=1.0,
    )
    assert load_config_to_core(dataclass_config, "llm") == expected
    assert lms.LlmLoadModelConfig.from_dict(camel) == dataclass_config
    assert lms.LlmLoadModelConfig.from_dict(dataclass_config.to_dict()) == dataclass_config


def test_empty_and_none_configs() -> None:
    assert load_config_to_core(None, "llm") == {}
    assert load_config_to_core({}, "embedding") == {}
    assert load_config_to_core({"contextLength": None}, "llm") == {}
    assert load_config_to_core(lms.LlmLoadModelConfig(), "llm") == {}


@pytest.mark.parametrize(("ratio", "value"), [("max", 1.0), ("off", 0.0), (0, 0.0), (1, 1.0), (0.25, 0.25)])
def test_gpu_ratio_forms(ratio: Any, value: float) -> None:
    assert load_config_to_core({"gpu": {"ratio": ratio}}, "llm") == {"gpu_ratio": value}
    assert load_config_to_core({"gpu": {"ratio": ratio}}, "embedding") == {"gpu_ratio": value}


@pytest.mark.parametrize(
    "config",
    [
        {"contextLenght": 4096},
        {"context-length": 4096},
        {"gpu": {"ratoi": 0.5}},
        {"gpu": {"ratio": 0.5, "layers": 3}},
        {"temperature": 0.5},  # a prediction option is not a load option
        {"evalBatchSize": 8, "nope": 1},
    ],
)
def test_unknown_load_keys_raise_naming_the_key(config: dict[str, Any]) -> None:
    with pytest.raises(lms.InvalidConfigError) as info:
        load_config_to_core(config, "llm")
    bad_key = next(k for k in _flatten_keys(config) if k not in _KNOWN)
    assert repr(bad_key) in str(info.value)


_KNOWN = {"contextLength", "gpu", "ratio", "evalBatchSize"}


def _flatten_keys(config: dict[str, Any]) -> list[str]:
    keys = []
    for k, v in config.items():
        keys.append(k)
        if isinstance(v, dict):
            keys.extend(v)
    return keys


def test_unknown_key_suggests_the_close_match() -> None:
    with pytest.raises(lms.InvalidConfigError, match="contextLength"):
        load_config_to_core({"contextLenght": 4096}, "llm")


def test_the_same_key_twice_is_an_error() -> None:
    with pytest.raises(lms.InvalidConfigError, match="twice"):
        load_config_to_core({"contextLength": 1, "context_length": 2}, "llm")


@pytest.mark.parametrize(
    "config",
    [
        {"contextLength": "4096"},
        {"contextLength": 4096.0},
        {"contextLength": True},
        {"gpu": {"ratio": "half"}},
        {"gpu": {"ratio": True}},
        {"gpu": 0.5},
        {"gpu": {"splitStrategy": "sideways"}},
        {"gpu": {"disabledGpus": 1}},
        {"gpu": {"disabledGpus": ["0"]}},
        {"gpu": {"mainGpu": "0"}},
        {"tryMmap": "yes"},
        {"keepModelInMemory": 1},
        {"evalBatchSize": 1.5},
        {"seed": "7"},
        {"ropeFrequencyBase": "1e4"},
        {"ropeFrequencyScale": float("nan")},
    ],
)
def test_values_of_the_wrong_type_raise(config: dict[str, Any]) -> None:
    with pytest.raises(lms.InvalidConfigError):
        load_config_to_core(config, "llm")


def test_config_must_be_a_mapping() -> None:
    with pytest.raises(lms.InvalidConfigError):
        load_config_to_core([("contextLength", 4)], "llm")  # type: ignore[arg-type]
    with pytest.raises(lms.InvalidConfigError):
        load_config_to_core("contextLength=4", "llm")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("key", "default", "other"),
    [
        ("flashAttention", False, True),
        ("llamaKCacheQuantizationType", False, "q8_0"),
        ("llamaVCacheQuantizationType", False, "q4_0"),
        ("offloadKVCacheToGpu", True, False),
        ("useFp16ForKVCache", False, True),
        ("numExperts", None, 4),
        ("gpuStrictVramCap", False, True),
    ],
)
def test_unimplemented_lmstudio_options_only_at_their_default(key: str, default: Any, other: Any) -> None:
    assert load_config_to_core({key: default}, "llm") == {}
    assert load_config_to_core({key: None}, "llm") == {}
    with pytest.raises(lms.NotSupportedError, match="not supported yet") as info:
        load_config_to_core({key: other}, "llm")
    assert isinstance(info.value, lms.InvalidConfigError)
    assert key in str(info.value)


def test_embedding_config_fields() -> None:
    assert load_config_to_core({"contextLength": 128, "tryMmap": False, "keepModelInMemory": False}, "embedding") == {
        "context_length": 128,
        "try_mmap": False,
        "keep_model_in_memory": False,
    }
    with pytest.raises(lms.InvalidConfigError, match="evalBatchSize"):
        load_config_to_core({"evalBatchSize": 8}, "embedding")
    with pytest.raises(lms.NotSupportedError):
        load_config_to_core({"ropeFrequencyBase": 10000.0}, "embedding")
    with pytest.raises(lms.NotSupportedError):
        load_config_to_core({"gpu": {"mainGpu": 1}}, "embedding")
    # An LLM config object given for an embedding model is checked field by field.
    assert load_config_to_core(lms.LlmLoadModelConfig(context_length=64), "embedding") == {"context_length": 64}
    with pytest.raises(lms.InvalidConfigError):
        load_config_to_core(lms.LlmLoadModelConfig(eval_batch_size=4), "embedding")


def test_dataclass_fields_are_validated_at_construction() -> None:
    with pytest.raises(lms.InvalidConfigError):
        lms.LlmLoadModelConfig(context_length="big")  # type: ignore[arg-type]
    with pytest.raises(lms.NotSupportedError):
        lms.LlmLoadModelConfig(flash_attention=True)
    config = lms.LlmLoadModelConfig(gpu={"ratio": "max"})  # type: ignore[arg-type]
    assert config.gpu == lms.GpuSetting(ratio="max")
    # Mutation after construction is checked when the config is used.
    config.context_length = "x"  # type: ignore[assignment]
    with pytest.raises(lms.InvalidConfigError):
        load_config_to_core(config, "llm")


def test_prediction_config_camel_snake_and_dataclass() -> None:
    camel = {
        "maxTokens": 50,
        "temperature": 0.6,
        "topKSampling": 40,
        "topPSampling": 0.9,
        "minPSampling": 0.05,
        "repeatPenalty": 1.1,
        "stopStrings": ["\n\n"],
        "seed": 3,
    }
    expected = {
        "max_tokens": 50,
        "temperature": 0.6,
        "top_k": 40,
        "top_p": 0.9,
        "min_p": 0.05,
        "repeat_penalty": 1.1,
        "stop_strings": ["\n\n"],
        "seed": 3,
    }
    assert prediction_config_from_user(camel)._to_core() == expected
    snake = {
        "max_tokens": 50,
        "temperature": 0.6,
        "top_k_sampling": 40,
        "top_p_sampling": 0.9,
        "min_p_sampling": 0.05,
        "repeat_penalty": 1.1,
        "stop_strings": ["\n\n"],
        "seed": 3,
    }
    assert prediction_config_from_user(snake)._to_core() == expected
    config = lms.LlmPredictionConfig(**snake)  # type: ignore[arg-type]
    assert prediction_config_from_user(config)._to_core() == expected
    assert prediction_config_from_user(None)._to_core() == {}


def test_prediction_false_switches_off() -> None:
    core = prediction_config_from_user(
        {"maxTokens": False, "topPSampling": False, "minPSampling": False, "repeatPenalty": False}
    )._to_core()
    assert core == {"top_p": 1.0, "min_p": 0.0, "repeat_penalty": 1.0}
    assert prediction_config_from_user({"maxTokens": -1})._to_core() == {}
    assert prediction_config_from_user({"topKSampling": -1})._to_core() == {"top_k": 0}


@pytest.mark.parametrize(
    "config",
    [
        {"maxTokenz": 5},
        {"maxTokens": "5"},
        {"temperature": "hot"},
        {"stopStrings": "\n"},
        {"stopStrings": [1]},
        {"topKSampling": 2.5},
        {"seed": 1.5},
        {"contextLength": 5},
    ],
)
def test_bad_prediction_configs(config: dict[str, Any]) -> None:
    with pytest.raises(lms.InvalidConfigError):
        prediction_config_from_user(config)._to_core()


@pytest.mark.parametrize(
    ("key", "default", "other"),
    [
        ("contextOverflowPolicy", "stopAtLimit", "truncateMiddle"),
        ("structured", {"type": "none"}, {"type": "json", "jsonSchema": {}}),
        ("draftModel", None, "tiny-draft"),
        ("cpuThreads", None, 4),
        ("toolCallStopStrings", [], ["</tool>"]),
        ("reasoningParsing", {"enabled": False}, {"enabled": True}),
        ("speculativeDecodingNumDraftTokensExact", None, 3),
    ],
)
def test_unimplemented_prediction_options(key: str, default: Any, other: Any) -> None:
    assert prediction_config_from_user({key: default})._to_core() == {}
    with pytest.raises(lms.NotSupportedError, match="not supported yet"):
        prediction_config_from_user({key: other})


# --- what the core applies -----------------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_get_load_config_reports_the_applied_defaults(client: lms.Client) -> None:
    llm = client.llm.model(LLM_KEY)
    config = llm.get_load_config()
    assert isinstance(config, lms.LlmLoadModelConfig)
    assert config.context_length == 4096 == llm.get_context_length()  # min(4096, 8192)
    assert config.try_mmap is True
    assert config.eval_batch_size is not None and config.eval_batch_size > 0
    assert config.gpu is not None and config.gpu.ratio is not None
    assert config.rope_frequency_base == pytest.approx(100000.0)
    emb = client.embedding.model(EMB_KEY)
    emb_config = emb.get_load_config()
    assert isinstance(emb_config, lms.EmbeddingLoadModelConfig)
    assert emb_config.context_length == emb.get_context_length()
    assert emb_config.try_mmap is True


@pytest.mark.timeout(60)
def test_get_load_config_reports_what_was_asked(client: lms.Client, models_dir: Path) -> None:
    llm = client.llm.load_new_instance(
        LLM_KEY, config={"contextLength": 512, "evalBatchSize": 64, "seed": 11, "tryMmap": False}
    )
    config = llm.get_load_config()
    assert (config.context_length, config.eval_batch_size, config.seed, config.try_mmap) == (512, 64, 11, False)
    assert llm.get_info().context_length == 512 == llm.get_context_length()
    # tryMmap False reads the weights into owned memory: no mapping of the file.
    assert mapping_lines(models_dir / LLM_KEY / "SmolLM2-135M-Instruct.Q4_1.gguf") == []
    assert llm.complete("1, 2, 3,", {"maxTokens": 2}).stats.predicted_tokens_count == 2


@pytest.mark.timeout(60)
def test_a_small_context_clamps_the_default_batch(client: lms.Client) -> None:
    # As llama.cpp clamps n_batch to n_ctx: asking only for a small context must not fail on the default batch.
    llm = client.llm.model(LLM_KEY, config={"contextLength": 128})
    config = llm.get_load_config()
    assert config.context_length == 128
    assert config.eval_batch_size is not None and 0 < config.eval_batch_size <= 128
    assert llm.complete("Hello", {"maxTokens": 1}).stats.predicted_tokens_count == 1


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "config",
    [
        {"contextLength": 0},
        {"contextLength": -1},
        {"contextLength": 10**9},
        {"gpu": {"ratio": 1.5}},
        {"gpu": {"ratio": -0.1}},
        {"evalBatchSize": 0},
        {"ropeFrequencyScale": -1.0},
    ],
)
def test_out_of_range_values_are_rejected_by_the_core(client: lms.Client, config: dict[str, Any]) -> None:
    before = _core.mapped_file_count()
    with pytest.raises(lms.InvalidConfigError):
        client.llm.model(LLM_KEY, config=config)
    assert client.llm.list_loaded() == []
    assert _core.mapped_file_count() == before


@pytest.mark.timeout(60)
def test_bad_prediction_values_are_rejected_and_the_instance_keeps_working(client: lms.Client) -> None:
    llm = client.llm.model(LLM_KEY, config={"contextLength": 512})
    for config in ({"temperature": -1.0}, {"topPSampling": 1.5}, {"minPSampling": -0.5}, {"repeatPenalty": -1.0}):
        with pytest.raises(lms.InvalidConfigError):
            llm.complete("Hello", config)
    assert llm.complete("Hello", {"maxTokens": 1}).stats.predicted_tokens_count == 1


@pytest.mark.timeout(60)
def test_gpu_ratio_without_a_gpu_warns_and_shows_the_placement(client: lms.Client) -> None:
    with placement_warnings_allowed() as caught:
        llm = client.llm.model(LLM_KEY, config={"gpu": {"ratio": 1.0}})
    info = llm.get_info()
    on_gpu = "cuda" in str(info.device) or "cuda" in str(info.placement)
    if on_gpu:
        assert caught == []
        assert llm.get_load_config().gpu is not None
    else:
        # As llama.cpp and LM Studio do: load on the CPU, say why, and show the placement actually used.
        assert len(caught) == 1, [str(w.message) for w in caught]
        assert str(caught[0].message) == info.placement_warning
        assert caught[0].filename == __file__  # attributed to the caller
        config = llm.get_load_config()
        assert config.gpu is not None and config.gpu.ratio_value() == 0.0
        assert info.device == "cpu"
    # Asking again for the loaded instance does not warn again.
    with placement_warnings_allowed() as again:
        client.llm.model(LLM_KEY)
    assert again == []


@pytest.mark.timeout(60)
def test_default_placement_never_warns(client: lms.Client) -> None:
    llm = client.llm.model(LLM_KEY)  # filterwarnings=error: any warning fails the test
    assert llm.get_info().placement_warning is None
    assert llm.get_info().device in ("cpu", "cuda:0")
