"""Load and prediction configs, named as LM Studio names them.

Each config is a dataclass with snake_case attributes. Everywhere a config is accepted, a plain dict works too, with
LM Studio's camelCase keys (``{"contextLength": 4096, "gpu": {"ratio": 0.5}}``) or the snake_case attribute names.
Unknown keys raise :class:`~modelhost.errors.InvalidConfigError` naming the key; so do values of the wrong type.
Ranges (``contextLength`` within the model's maximum, ``gpu.ratio`` within 0..1, ...) are checked by the core, which
knows the model.

LM Studio options that modelhost recognises but does not implement yet (flash attention, KV-cache quantisation,
experts, speculative decoding, structured output, ...) are accepted at their default, and raise
:class:`~modelhost.errors.NotSupportedError` (an ``InvalidConfigError``) at any other value.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, TypeVar, Union

from .errors import InvalidConfigError, NotSupportedError

__all__ = [
    "DEFAULT_TTL",
    "AnyLoadConfig",
    "EmbeddingLoadModelConfig",
    "GpuSetting",
    "LlmLoadModelConfig",
    "LlmPredictionConfig",
]

DEFAULT_TTL = 3600
"""Idle seconds before an instance unloads itself, unless the load says otherwise (None: never)."""

GpuRatio = Union[float, Literal["max", "off"]]
SplitStrategy = Literal["evenly", "favorMainGpu"]

_SPLIT_STRATEGIES = ("evenly", "favorMainGpu")

# Accepted only at these values (None means "not given"); anything else is not supported yet.
_DEFAULT_ONLY = "default_only"
_CAMEL = "camel"
_CHECK = "check"


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def _describe(value: object) -> str:
    return f"{value!r} ({type(value).__name__})"


def _check_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidConfigError(f"{name} must be an int, got {_describe(value)}")
    return value


def _check_float(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidConfigError(f"{name} must be a number, got {_describe(value)}")
    result = float(value)
    if math.isnan(result):
        raise InvalidConfigError(f"{name} must be a number, got nan")
    return result


def _check_bool(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise InvalidConfigError(f"{name} must be a bool, got {_describe(value)}")
    return value


def _check_ratio(name: str, value: object) -> GpuRatio:
    if value == "max" or value == "off":
        return "max" if value == "max" else "off"
    if isinstance(value, str):
        raise InvalidConfigError(f"{name} must be a number in 0..1, 'max' or 'off', got {value!r}")
    return _check_float(name, value)


def _check_split(name: str, value: object) -> SplitStrategy:
    if value == "evenly":
        return "evenly"
    if value == "favorMainGpu":
        return "favorMainGpu"
    raise InvalidConfigError(f"{name} must be one of {', '.join(map(repr, _SPLIT_STRATEGIES))}, got {value!r}")


def _check_int_list(name: str, value: object) -> list[int]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise InvalidConfigError(f"{name} must be a list of ints, got {_describe(value)}")
    return [_check_int(f"{name}[{i}]", item) for i, item in enumerate(value)]


def _check_str_list(name: str, value: object) -> list[str]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise InvalidConfigError(f"{name} must be a list of strings, got {_describe(value)}")
    result: list[str] = []
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise InvalidConfigError(f"{name}[{i}] must be a str, got {_describe(item)}")
        result.append(item)
    return result


def _check_max_tokens(name: str, value: object) -> int | Literal[False]:
    if value is False:
        return False
    return _check_int(name, value)


def _check_float_or_false(name: str, value: object) -> float | Literal[False]:
    if value is False:
        return False
    return _check_float(name, value)


def _check_any(name: str, value: object) -> object:
    del name
    return value


def _opt(check: Callable[[str, Any], Any], camel: str | None = None) -> dict[str, Any]:
    """Field metadata of a supported option: its type check, and its camelCase name where not derived."""
    metadata: dict[str, Any] = {_CHECK: check}
    if camel is not None:
        metadata[_CAMEL] = camel
    return metadata


def _unsupported(*accepted: object, camel: str | None = None) -> dict[str, Any]:
    """Field metadata of a recognised LM Studio option accepted only at its default (``accepted`` values, or None)."""
    metadata: dict[str, Any] = {_CHECK: _check_any, _DEFAULT_ONLY: accepted}
    if camel is not None:
        metadata[_CAMEL] = camel
    return metadata


def _camel_name(f: dataclasses.Field[Any]) -> str:
    name: str = f.metadata.get(_CAMEL, _camel(f.name))
    return name


_C = TypeVar("_C", bound="_ConfigBase")


class _ConfigBase:
    """Shared parsing and validation for the config dataclasses."""

    __dataclass_fields__: ClassVar[dict[str, dataclasses.Field[Any]]]
    _what: ClassVar[str] = "config"

    def __post_init__(self) -> None:
        self._validate()

    def _validate(self) -> None:
        """Check every field's type, normalising in place (ints to floats for float fields, tuples to lists)."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is None or _CHECK not in f.metadata:
                continue
            name = _camel_name(f)
            accepted = f.metadata.get(_DEFAULT_ONLY)
            if accepted is not None:
                if not any(value is a or (type(value) is type(a) and value == a) for a in accepted):
                    raise NotSupportedError(
                        f"{self._what} option {name}={value!r} is not supported yet "
                        f"(only its default{''.join(f', {a!r}' for a in accepted)} or None is accepted)"
                    )
                continue
            setattr(self, f.name, f.metadata[_CHECK](name, value))

    @classmethod
    def _key_table(cls) -> dict[str, str]:
        table: dict[str, str] = {}
        for f in dataclasses.fields(cls):
            table[f.name] = f.name
            table[_camel_name(f)] = f.name
        return table

    @classmethod
    def from_dict(cls: type[_C], data: Mapping[str, Any]) -> _C:
        """Build the config from a dict with camelCase or snake_case keys.

        Args:
            data: The config as a mapping; None values mean "not given".

        Returns:
            The config.

        Raises:
            InvalidConfigError: On an unknown key, a key given twice, or a value of the wrong type.
            NotSupportedError: On a recognised option at a value that is not supported yet.
        """
        if not isinstance(data, Mapping):
            raise InvalidConfigError(f"{cls._what} must be a dict or {cls.__name__}, got {_describe(data)}")
        table = cls._key_table()
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            if not isinstance(key, str) or key not in table:
                close = difflib.get_close_matches(str(key), sorted({_camel(k) for k in table}), n=3)
                hint = f"; did you mean {', '.join(close)}?" if close else ""
                raise InvalidConfigError(f"unknown {cls._what} key {key!r}{hint}")
            name = table[key]
            if name in kwargs:
                raise InvalidConfigError(f"{cls._what} key {key!r} is given twice (camelCase and snake_case)")
            kwargs[name] = cls._parse_nested(name, value)
        return cls(**kwargs)

    @classmethod
    def _parse_nested(cls, name: str, value: Any) -> Any:
        del name
        return value

    def to_dict(self) -> dict[str, Any]:
        """The config as LM Studio's camelCase dict, without the fields that are not set."""
        result: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            if isinstance(value, _ConfigBase):
                value = value.to_dict()
            elif isinstance(value, list):
                value = list(value)
            result[_camel_name(f)] = value
        return result


@dataclass
class GpuSetting(_ConfigBase):
    """GPU offload settings (LM Studio's ``gpu`` load option).

    Attributes:
        ratio: Share of the layers to put on GPUs, 0..1, or "max" (all) / "off" (none).
        main_gpu: With ``split_strategy="favorMainGpu"``, the GPU that takes every offloaded block (and the output
            head when all blocks are offloaded); it must be present and not disabled, else InvalidConfigError. Not
            used with "evenly". The token embeddings stay on the CPU either way.
        split_strategy: "evenly" (offloaded blocks split over the enabled GPUs in index order) or "favorMainGpu".
        disabled_gpus: GPU indices not to use.
    """

    _what: ClassVar[str] = "gpu setting"

    ratio: GpuRatio | None = field(default=None, metadata=_opt(_check_ratio))
    main_gpu: int | None = field(default=None, metadata=_opt(_check_int))
    split_strategy: SplitStrategy | None = field(default=None, metadata=_opt(_check_split))
    disabled_gpus: list[int] | None = field(default=None, metadata=_opt(_check_int_list))

    def ratio_value(self) -> float | None:
        """The ratio as a number ("max" is 1.0, "off" is 0.0), or None when not set."""
        if self.ratio is None:
            return None
        if self.ratio == "max":
            return 1.0
        if self.ratio == "off":
            return 0.0
        return float(self.ratio)


def _parse_gpu(value: Any) -> GpuSetting:
    if isinstance(value, GpuSetting):
        return value
    return GpuSetting.from_dict(value)


@dataclass
class LlmLoadModelConfig(_ConfigBase):
    """How to load an LLM (LM Studio's ``LlmLoadModelConfig``).

    Attributes:
        gpu: GPU offload settings.
        context_length: Tokens of context (KV cache) to allocate; default min(4096, the model's maximum).
        rope_frequency_base: Override of the RoPE base frequency.
        rope_frequency_scale: Override of the RoPE frequency scale.
        eval_batch_size: Prompt tokens processed per forward pass.
        keep_model_in_memory: Lock the weights' pages in memory.
        seed: Default sampling seed of the instance.
        try_mmap: Map the weights file (zero-copy) instead of reading it into owned memory; default True.
        gpu_strict_vram_cap: Not supported yet (accepted when False).
        offload_kv_cache_to_gpu: Not supported yet (accepted when True: the KV cache lives with its layer).
        flash_attention: Not supported yet (accepted when False).
        use_fp16_for_kv_cache: Not supported yet (accepted when False).
        num_experts: Not supported yet.
        llama_k_cache_quantization_type: Not supported yet (accepted when False).
        llama_v_cache_quantization_type: Not supported yet (accepted when False).
    """

    _what: ClassVar[str] = "load config"

    gpu: GpuSetting | None = None
    context_length: int | None = field(default=None, metadata=_opt(_check_int))
    rope_frequency_base: float | None = field(default=None, metadata=_opt(_check_float))
    rope_frequency_scale: float | None = field(default=None, metadata=_opt(_check_float))
    eval_batch_size: int | None = field(default=None, metadata=_opt(_check_int))
    keep_model_in_memory: bool | None = field(default=None, metadata=_opt(_check_bool))
    seed: int | None = field(default=None, metadata=_opt(_check_int))
    try_mmap: bool | None = field(default=None, metadata=_opt(_check_bool))
    gpu_strict_vram_cap: bool | None = field(default=None, repr=False, metadata=_unsupported(False))
    offload_kv_cache_to_gpu: bool | None = field(
        default=None, repr=False, metadata=_unsupported(True, camel="offloadKVCacheToGpu")
    )
    flash_attention: bool | None = field(default=None, repr=False, metadata=_unsupported(False))
    use_fp16_for_kv_cache: bool | None = field(
        default=None, repr=False, metadata=_unsupported(False, camel="useFp16ForKVCache")
    )
    num_experts: int | None = field(default=None, repr=False, metadata=_unsupported())
    llama_k_cache_quantization_type: str | bool | None = field(default=None, repr=False, metadata=_unsupported(False))
    llama_v_cache_quantization_type: str | bool | None = field(default=None, repr=False, metadata=_unsupported(False))

    def _validate(self) -> None:
        if self.gpu is not None and not isinstance(self.gpu, GpuSetting):
            self.gpu = _parse_gpu(self.gpu)
        super()._validate()

    @classmethod
    def _parse_nested(cls, name: str, value: Any) -> Any:
        return _parse_gpu(value) if name == "gpu" and value is not None else value

    def _to_core(self) -> dict[str, Any]:
        self._validate()
        core: dict[str, Any] = {
            "context_length": self.context_length,
            "try_mmap": self.try_mmap,
            "keep_model_in_memory": self.keep_model_in_memory,
            "eval_batch_size": self.eval_batch_size,
            "seed": self.seed,
            "rope_frequency_base": self.rope_frequency_base,
            "rope_frequency_scale": self.rope_frequency_scale,
        }
        if self.gpu is not None:
            core.update(
                gpu_ratio=self.gpu.ratio_value(),
                main_gpu=self.gpu.main_gpu,
                split_strategy=self.gpu.split_strategy,
                disabled_gpus=self.gpu.disabled_gpus,
            )
        return {k: v for k, v in core.items() if v is not None}

    @classmethod
    def _from_core(cls, core: Mapping[str, Any]) -> LlmLoadModelConfig:
        return cls(
            gpu=_gpu_from_core(core),
            context_length=core.get("context_length"),
            rope_frequency_base=core.get("rope_frequency_base"),
            rope_frequency_scale=core.get("rope_frequency_scale"),
            eval_batch_size=core.get("eval_batch_size"),
            keep_model_in_memory=core.get("keep_model_in_memory"),
            seed=core.get("seed"),
            try_mmap=core.get("try_mmap"),
        )


@dataclass
class EmbeddingLoadModelConfig(_ConfigBase):
    """How to load an embedding model (LM Studio's ``EmbeddingLoadModelConfig``).

    Attributes:
        gpu: GPU offload settings (only ``ratio`` is supported: an embedding model sits on one device).
        context_length: Maximum tokens per input (inputs are truncated at the model's ``max_seq_length``).
        rope_frequency_base: Not supported (BERT models have no RoPE): any value raises NotSupportedError.
        rope_frequency_scale: Not supported, as ``rope_frequency_base``.
        keep_model_in_memory: Not supported yet for embedding models (accepted when False; True raises
            NotSupportedError).
        try_mmap: Map the weights file (zero-copy) instead of reading it into owned memory; default True.
        seed: Seed (modelhost extension; embeddings are deterministic, so it has no effect on them).
    """

    _what: ClassVar[str] = "load config"

    gpu: GpuSetting | None = None
    context_length: int | None = field(default=None, metadata=_opt(_check_int))
    rope_frequency_base: float | None = field(default=None, repr=False, metadata=_unsupported())
    rope_frequency_scale: float | None = field(default=None, repr=False, metadata=_unsupported())
    keep_model_in_memory: bool | None = field(default=None, metadata=_unsupported(False))
    try_mmap: bool | None = field(default=None, metadata=_opt(_check_bool))
    seed: int | None = field(default=None, metadata=_opt(_check_int))

    def _validate(self) -> None:
        if self.gpu is not None and not isinstance(self.gpu, GpuSetting):
            self.gpu = _parse_gpu(self.gpu)
        super()._validate()
        if self.gpu is not None:
            for name, value, default in (
                ("gpu.mainGpu", self.gpu.main_gpu, 0),
                ("gpu.splitStrategy", self.gpu.split_strategy, "evenly"),
                ("gpu.disabledGpus", self.gpu.disabled_gpus, []),
            ):
                if value is not None and value != default:
                    raise NotSupportedError(
                        f"load config option {name}={value!r} is not supported yet for embedding models"
                    )

    @classmethod
    def _parse_nested(cls, name: str, value: Any) -> Any:
        return _parse_gpu(value) if name == "gpu" and value is not None else value

    def _to_core(self) -> dict[str, Any]:
        self._validate()
        core: dict[str, Any] = {
            "context_length": self.context_length,
            "try_mmap": self.try_mmap,
            "keep_model_in_memory": self.keep_model_in_memory,
            "seed": self.seed,
            "gpu_ratio": self.gpu.ratio_value() if self.gpu is not None else None,
        }
        return {k: v for k, v in core.items() if v is not None}

    @classmethod
    def _from_core(cls, core: Mapping[str, Any]) -> EmbeddingLoadModelConfig:
        gpu = None
        if core.get("gpu_ratio") is not None:
            gpu = GpuSetting(ratio=core["gpu_ratio"])
        return cls(
            gpu=gpu,
            context_length=core.get("context_length"),
            keep_model_in_memory=core.get("keep_model_in_memory"),
            try_mmap=core.get("try_mmap"),
            seed=core.get("seed"),
        )


def _gpu_from_core(core: Mapping[str, Any]) -> GpuSetting | None:
    keys = ("gpu_ratio", "main_gpu", "split_strategy", "disabled_gpus")
    if all(core.get(k) is None for k in keys):
        return None
    disabled = core.get("disabled_gpus")
    return GpuSetting(
        ratio=core.get("gpu_ratio"),
        main_gpu=core.get("main_gpu"),
        split_strategy=core.get("split_strategy"),
        disabled_gpus=list(disabled) if disabled is not None else None,
    )


AnyLoadConfig = Union[LlmLoadModelConfig, EmbeddingLoadModelConfig]


@dataclass
class LlmPredictionConfig(_ConfigBase):
    """How to generate (LM Studio's ``LlmPredictionConfig``), plus ``seed``.

    Attributes:
        max_tokens: Most tokens to generate; False (or a negative number) means until the context is full.
        temperature: Sampling temperature; 0 is greedy.
        top_k_sampling: Keep the k most likely tokens (0 or less: off).
        top_p_sampling: Nucleus sampling threshold; False turns it off.
        min_p_sampling: Min-p threshold; False turns it off.
        repeat_penalty: Repetition penalty (1 is none); False turns it off.
        stop_strings: Stop when the output contains one of these (it is cut before the stop string).
        seed: Sampling seed of this prediction.
        tool_call_stop_strings: Not supported yet.
        context_overflow_policy: Only "stopAtLimit" (what modelhost does) is accepted.
        structured: Not supported yet (accepted as {"type": "none"}).
        raw_tools: Not supported yet (accepted as {"type": "none"}).
        cpu_threads: Not supported yet.
        prompt_template: Not supported yet.
        draft_model: Not supported yet.
        speculative_decoding_num_draft_tokens_exact: Not supported yet.
        speculative_decoding_min_draft_length_to_consider: Not supported yet.
        speculative_decoding_min_continue_drafting_probability: Not supported yet.
        reasoning_parsing: Not supported yet (accepted as {"enabled": False}).
        raw: Not supported yet.
    """

    _what: ClassVar[str] = "prediction config"

    max_tokens: int | Literal[False] | None = field(default=None, metadata=_opt(_check_max_tokens))
    temperature: float | None = field(default=None, metadata=_opt(_check_float))
    top_k_sampling: float | None = field(default=None, metadata=_opt(_check_float))
    top_p_sampling: float | Literal[False] | None = field(default=None, metadata=_opt(_check_float_or_false))
    min_p_sampling: float | Literal[False] | None = field(default=None, metadata=_opt(_check_float_or_false))
    repeat_penalty: float | Literal[False] | None = field(default=None, metadata=_opt(_check_float_or_false))
    stop_strings: list[str] | None = field(default=None, metadata=_opt(_check_str_list))
    seed: int | None = field(default=None, metadata=_opt(_check_int))
    tool_call_stop_strings: list[str] | None = field(default=None, repr=False, metadata=_unsupported([]))
    context_overflow_policy: str | None = field(default=None, repr=False, metadata=_unsupported("stopAtLimit"))
    structured: Any = field(default=None, repr=False, metadata=_unsupported({"type": "none"}))
    raw_tools: Any = field(default=None, repr=False, metadata=_unsupported({"type": "none"}))
    cpu_threads: int | None = field(default=None, repr=False, metadata=_unsupported())
    prompt_template: Any = field(default=None, repr=False, metadata=_unsupported())
    draft_model: str | None = field(default=None, repr=False, metadata=_unsupported())
    speculative_decoding_num_draft_tokens_exact: int | None = field(default=None, repr=False, metadata=_unsupported())
    speculative_decoding_min_draft_length_to_consider: int | None = field(
        default=None, repr=False, metadata=_unsupported()
    )
    speculative_decoding_min_continue_drafting_probability: float | None = field(
        default=None, repr=False, metadata=_unsupported()
    )
    reasoning_parsing: Any = field(default=None, repr=False, metadata=_unsupported({"enabled": False}))
    raw: Any = field(default=None, repr=False, metadata=_unsupported())

    def _to_core(self) -> dict[str, Any]:
        self._validate()
        core: dict[str, Any] = {
            "temperature": self.temperature,
            "stop_strings": self.stop_strings,
            "seed": self.seed,
        }
        # LM Studio: False or a negative number means "no limit" (until the context is full).
        if self.max_tokens is not None and self.max_tokens is not False and self.max_tokens >= 0:
            core["max_tokens"] = self.max_tokens
        if self.top_k_sampling is not None:
            top_k = self.top_k_sampling
            if top_k != int(top_k):
                raise InvalidConfigError(f"topKSampling must be a whole number, got {top_k!r}")
            core["top_k"] = max(0, int(top_k))  # 0 or less: off
        # False switches a sampler off: the value at which it has no effect.
        for key, value, off in (
            ("top_p", self.top_p_sampling, 1.0),
            ("min_p", self.min_p_sampling, 0.0),
            ("repeat_penalty", self.repeat_penalty, 1.0),
        ):
            if value is False:
                core[key] = off
            elif value is not None:
                core[key] = value
        return {k: v for k, v in core.items() if v is not None}


def load_config_to_core(config: AnyLoadConfig | Mapping[str, Any] | None, kind: str) -> dict[str, Any]:
    """Normalise a user's load config to the flat snake_case dict `_core` expects.

    Args:
        config: A config dataclass, a dict (camelCase or snake_case keys) or None.
        kind: "llm" or "embedding".

    Returns:
        The flat dict, with only the fields that were set.

    Raises:
        InvalidConfigError: On an unknown key or a value of the wrong type.
    """
    cls: type[LlmLoadModelConfig] | type[EmbeddingLoadModelConfig]
    cls = LlmLoadModelConfig if kind == "llm" else EmbeddingLoadModelConfig
    if config is None:
        return {}
    if isinstance(config, cls):
        return config._to_core()
    if isinstance(config, _ConfigBase):
        # A config of the other kind (or a prediction config): reparse it, so its fields are checked by name.
        return cls.from_dict(config.to_dict())._to_core()
    return cls.from_dict(config)._to_core()


def load_config_from_core(core: Mapping[str, Any], kind: str) -> AnyLoadConfig:
    """Turn `_core`'s applied load config back into the dataclass."""
    if kind == "llm":
        return LlmLoadModelConfig._from_core(core)
    return EmbeddingLoadModelConfig._from_core(core)


def prediction_config_from_user(config: LlmPredictionConfig | Mapping[str, Any] | None) -> LlmPredictionConfig:
    """Normalise a user's prediction config to the dataclass.

    Raises:
        InvalidConfigError: On an unknown key or a value of the wrong type.
    """
    if config is None:
        return LlmPredictionConfig()
    if isinstance(config, LlmPredictionConfig):
        config._validate()
        return config
    if isinstance(config, _ConfigBase):
        return LlmPredictionConfig.from_dict(config.to_dict())
    return LlmPredictionConfig.from_dict(config)
