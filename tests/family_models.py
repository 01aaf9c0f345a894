"""The model files of the family checks (tests/test_families.py), made on demand and cached, with llama.cpp's outputs.

Three kinds of file, each family made in one go and cached under ``~/.cache/modelhost/fixtures/families/<name>-<key>``
(``$MODELHOST_FIXTURES_DIR`` overrides the root), where the key hashes this file, tests/llamacpp_refs.py, the family's
parameters and the llama-cpp-python version, so a change to any of them makes the family again and nothing stale is
ever used:

- Small models with seeded random weights, one per architecture (``llama`` with Llama 3's RoPE factors, ``llama``
  Mistral-style, ``qwen2``, ``qwen3``, ``phi3``, ``gemma3``), written in F32 with llama.cpp's own ``gguf`` package,
  carrying a real tokenizer and chat template (from the llama-cpp-python sdist, or the real Gemma 3 file), then
  quantized by llama.cpp with ``pure`` into every weight type. Their widths are multiples of 256, so no tensor falls
  back to another type.
- SmolLM2's real Q4_1 file re-quantized by llama.cpp into its usual mixes (SmolLM2's width, 576, is not a multiple of
  256, so llama.cpp falls back for some tensors; the manifest records what each file really holds).
- The real Gemma 3 270M Q4_K_M file, as scripts/fetch_models.py lays it out.

Next to them: llama.cpp's outputs (tests/llamacpp_refs.py, run in a subprocess), and end-of-generation probes: tiny
models of the family's architecture and vocabulary whose every next token is one chosen id, so that a generation shows
whether that id ends it.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import json
import math
import mmap
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
WORKER = Path(__file__).with_name("llamacpp_refs.py")
LLAMA_CPP_PYTHON_VERSION = "0.3.36"

SMOLLM2_FILE = "HuggingFaceTB/SmolLM2-135M-Instruct-GGUF/SmolLM2-135M-Instruct.Q4_1.gguf"
GEMMA3_FILE = "google/gemma-3-270m-GGUF/gemma-3-270m-q4_k_m.gguf"
# Gemma 3's file carries no chat template; llama.cpp's built-in "gemma" template is Gemma's turn format.
GEMMA_BUILTIN_TEMPLATE = "gemma"

# llama.cpp's LLAMA_FTYPE_* per weight type. With `pure`, every 2-D tensor gets the type (norms and RoPE factors stay
# F32); without, llama.cpp chooses its usual mix for the ftype (the _M files).
PURE_TYPES = {
    "F32": 0,
    "F16": 1,
    "BF16": 32,
    "Q8_0": 7,
    "Q6_K": 18,
    "Q5_K": 17,
    "Q5_1": 9,
    "Q5_0": 8,
    "Q4_K": 15,
    "Q4_1": 3,
    "Q4_0": 2,
    "Q3_K": 12,
    "Q2_K": 10,
}
MIXED_TYPES = {
    "F32": 0,
    "F16": 1,
    "BF16": 32,
    "Q8_0": 7,
    "Q6_K": 18,
    "Q5_K_M": 17,
    "Q5_1": 9,
    "Q5_0": 8,
    "Q4_K_M": 15,
    "Q4_1": 3,
    "Q4_0": 2,
    "Q3_K_M": 12,
    "Q2_K": 10,
}

# What the references are computed on. Raw prompts go in as text; chats through the model's template.
RAW_PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return",
    "Once upon a time, in a small village by the sea, there lived",
]
CONVERSATIONS: list[list[dict[str, str]]] = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [
        {"role": "system", "content": "You are a concise assistant."},
        {"role": "user", "content": "Name three primary colors."},
    ],
    [
        {"role": "user", "content": "Hi!"},
        {"role": "assistant", "content": "Hello! How can I help you today?"},
        {"role": "user", "content": "Tell me a fun fact about octopuses."},
    ],
    [{"role": "user", "content": "Translate 'good night' into Spanish, please: ¿cómo se dice? 🌙"}],
]
CHAT_NUMERIC_CASES = 2  # the first conversations that render are also run through the model
GREEDY_TOKENS = 16
# Texts for tokenization, besides llama.cpp's own tokenizer test inputs (the .inp files of its vocab GGUFs).
TOKENIZER_TEXTS = [
    "",
    "Hello world",
    " Hello world",
    "Hello  world\n\n\tand\r\nmore",
    "1234567890 3.14159 1,000,000 2024-01-31 0x1F",
    "naïve café — “quotes” \u2018single\u2019 … ½ ©",
    "日本語のテキスト、中文文本\uff0c한국어 텍스트",
    "emoji 🤖🦙 👩‍💻 🇫🇷",
    "   leading and trailing   ",
    "ÀÉÎÕÜ àéîõü ß ŒŸ",
    "x" * 200,
    "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
    "<s>[INST] hi [/INST]</s>",
    "<bos><start_of_turn>user\nhi<end_of_turn>\n<start_of_turn>model\n",
    "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>",
    "<|user|>\nhi<|end|>\n<|assistant|>\n",
    "<think>\nok\n</think>\n\nanswer",
]
PROBE_PROMPT = "Hello"
PROBE_CONTROLS = 2  # control tokens that are not end-of-generation, probed too (generation must go on)
MAX_EOG_PROBES = 8


@dataclass(frozen=True)
class Family:
    """One architecture's random test model: shapes, tokenizer, template and the features it exercises."""

    name: str
    arch: str
    vocab: str  # ggml-vocab-<vocab>.gguf from llama.cpp's sources, or "gemma-3-270m" (the real Gemma 3 file)
    template: str | None  # a file of llama.cpp's models/templates; None keeps the vocabulary's own
    features: tuple[str, ...] = ()
    n_layer: int = 2
    n_embd: int = 256
    n_ff: int = 512
    n_head: int = 4
    n_head_kv: int = 2
    head_dim: int = 64
    rope_base: float = 10000.0
    rms_eps: float = 1e-5
    context_length: int = 4096
    tied: bool = True
    sliding_window: int = 0
    probes: bool = True
    # The token embeddings' (and tied output head's) type in the quantized files, where not the file's own type:
    # quantizing a 150k-260k x 256 table into the K types takes most of a family's making; other families with
    # these vocabularies cover the types there.
    embedding_type: str | None = None


RANDOM_FAMILIES = [
    # Llama 3.1/3.2: llama-3 RoPE factors in rope_freqs.weight (what the converter writes for rope_type "llama3"; no
    # rope.scaling keys), computed with a short original context so that they change rotations at test lengths.
    Family(
        "llama3",
        "llama",
        "llama-bpe",
        "meta-llama-Llama-3.1-8B-Instruct.jinja",
        ("rope_freqs",),
        rope_base=500000.0,
        context_length=131072,
    ),
    # Mistral 7B: the llama architecture with a SentencePiece vocabulary, few KV heads and an untied output head.
    Family(
        "mistral",
        "llama",
        "llama-spm",
        "mistralai-Mistral-Nemo-Instruct-2407.jinja",
        n_head_kv=1,
        rope_base=1000000.0,
        context_length=32768,
        tied=False,
    ),
    Family(
        "qwen2",
        "qwen2",
        "qwen2",
        "Qwen-Qwen2.5-7B-Instruct.jinja",
        ("qkv_bias",),
        rope_base=1000000.0,
        rms_eps=1e-6,
        context_length=32768,
    ),
    # Qwen 3: per-head Q/K RMS norms, and a head size (128) that is not hidden / heads (64).
    Family(
        "qwen3",
        "qwen3",
        "qwen2",
        "Qwen-Qwen3-0.6B.jinja",
        ("qk_norm", "key_length"),
        head_dim=128,
        rope_base=1000000.0,
        rms_eps=1e-6,
        context_length=40960,
        probes=False,  # the same vocabulary as qwen2, probed there
        embedding_type="Q8_0",
    ),
    # Phi-3.5 mini: fused QKV (attn_qkv) and fused gate+up (ffn_up, twice n_ff rows), untied output, and LongRoPE as
    # its converter writes it: rope_factors_short/long, rope.scaling.original_context_length 4096 and
    # rope.scaling.attn_factor (llama.cpp scales the rotated Q and K by it, and takes the short factors while the
    # context is at most the original length). Also the sliding_window key Phi-3.5 files carry (262144), which
    # llama.cpp ignores for phi3.
    Family(
        "phi3",
        "phi3",
        "phi-3",
        "microsoft-Phi-3.5-mini-instruct.jinja",
        ("fused_qkv", "fused_gate_up", "rope_dimension_count", "longrope"),
        n_head_kv=4,
        context_length=131072,
        tied=False,
        sliding_window=262144,
    ),
    # Gemma 3: six layers, so the default pattern makes five sliding-window layers and one global; a window of 8 so
    # that it cuts at test lengths; Q/K norms, post-attention and post-FFN norms, GeGLU, embeddings scaled by
    # sqrt(n_embd), head size 128 with four heads on a width of 256. Gemma 3's own 262k vocabulary (from the real file)
    # and Google's Gemma chat template (Gemma 2's, the one in llama.cpp's sources).
    Family(
        "gemma3",
        "gemma3",
        "gemma-3-270m",
        "google-gemma-2-2b-it.jinja",
        ("gemma", "qk_norm", "key_length"),
        n_layer=6,
        n_head_kv=1,
        head_dim=128,
        rope_base=1000000.0,
        rms_eps=1e-6,
        context_length=32768,
        sliding_window=8,
        embedding_type="Q8_0",  # as in the real Gemma 3 Q4_K_M file
    ),
]
# Variants of a family's F32 file whose references show that the checks would catch a feature left out: llama.cpp's
# own outputs must differ from the real file's by more than the tolerance.
SENSITIVITY_VARIANTS = {
    "llama3": "without-rope-factors",
    "phi3": "without-longrope",
    "gemma3": "without-sliding-window",
}
LONGROPE_ORIGINAL_CONTEXT = 4096
REAL_FAMILIES = {"smollm2": SMOLLM2_FILE, "gemma-3-270m": GEMMA3_FILE}
FAMILY_NAMES = [f.name for f in RANDOM_FAMILIES] + list(REAL_FAMILIES)


def variants(family: str) -> list[str]:
    """The files of a family the numeric checks run on, in test order."""
    if family == "smollm2":
        return ["original-Q4_1", *MIXED_TYPES]
    if family == "gemma-3-270m":
        return ["original-Q4_K_M"]
    return list(PURE_TYPES)


def probed_families() -> list[str]:
    """Families with end-of-generation probes (one per vocabulary)."""
    return [f.name for f in RANDOM_FAMILIES if f.probes] + ["smollm2"]


# --- where things live ------------------------------------------------------------------------------------------------


def fixtures_dir() -> Path:
    env = os.environ.get("MODELHOST_FIXTURES_DIR")
    return Path(env) if env else Path.home() / ".cache" / "modelhost" / "fixtures"


def models_dir() -> Path:
    env = os.environ.get("MODELHOST_MODELS_DIR")
    return Path(env) if env else Path.home() / ".cache" / "modelhost" / "models"


def real_file(rel: str) -> Path:
    path = models_dir() / rel
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run `python scripts/fetch_models.py` (or `make install`)")
    return path


@contextmanager
def locked(name: str) -> Iterator[None]:
    """One process at a time makes a given fixture (engineers share the cache); the others wait, then reuse it."""
    root = fixtures_dir()
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f".lock-{name}", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def llama_cpp_assets() -> Path:
    """llama.cpp's vocabulary GGUFs, tokenizer test inputs and chat templates, extracted from the llama-cpp-python
    sdist (a PyPI package) into the fixtures dir once."""
    dest = fixtures_dir() / f"llama-cpp-python-{LLAMA_CPP_PYTHON_VERSION}"
    if (dest / ".complete").exists():
        return dest
    spec = importlib.util.spec_from_file_location("peer_wheels", ROOT / "scripts" / "peer_wheels.py")
    assert spec is not None and spec.loader is not None
    peer_wheels = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(peer_wheels)
    with locked("assets"):
        if (dest / ".complete").exists():
            return dest
        sdist = peer_wheels.ensure_sdist()
        prefix = f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}/vendor/llama.cpp/models/"
        tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=".assets-"))
        with tarfile.open(sdist) as tar:
            for member in tar:
                if not member.isfile() or not member.name.startswith(prefix):
                    continue
                rel = member.name[len(prefix) :]
                if rel.startswith("ggml-vocab-"):
                    out = tmp / "vocab" / rel
                elif rel.startswith("templates/") and rel.endswith(".jinja") and "/" not in rel[len("templates/") :]:
                    out = tmp / rel
                else:
                    continue
                out.parent.mkdir(parents=True, exist_ok=True)
                src = tar.extractfile(member)
                assert src is not None
                out.write_bytes(src.read())
        (tmp / ".complete").touch()
        shutil.rmtree(dest, ignore_errors=True)
        tmp.rename(dest)
    return dest


def tokenizer_test_inputs(vocab: str) -> list[str]:
    """llama.cpp's tokenizer test inputs for a vocabulary (test-tokenizer-0's .inp format)."""
    raw = (llama_cpp_assets() / "vocab" / f"ggml-vocab-{vocab}.gguf.inp").read_text(encoding="utf-8")
    texts = raw.split("\n__ggml_vocab_test__\n")
    return [t for t in texts if t]


# --- writing GGUFs ---------------------------------------------------------------------------------------------------


def vocab_path(family: Family) -> Path:
    if family.vocab == "gemma-3-270m":
        return real_file(GEMMA3_FILE)
    return llama_cpp_assets() / "vocab" / f"ggml-vocab-{family.vocab}.gguf"


# GGUF value types (the spec's numbering) that are fixed-size, with their numpy dtypes.
_SCALARS = {0: "u1", 1: "i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4", 7: "?", 10: "<u8", 11: "<i8", 12: "<f8"}
_STRING, _ARRAY = 8, 9


class GGUFHeader:
    """The metadata and tensor table of a GGUF file, read in one pass.

    gguf-py's GGUFReader builds a numpy view per array item, which takes seconds per file for a 150k-token vocabulary;
    this walks the same layout (gguf-py's constants name the tensor types) in a fraction of that.
    """

    def __init__(self, path: Path) -> None:
        import gguf

        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            self.data = memoryview(mapped)
            try:
                self.parse(path, gguf)
            finally:
                self.data.release()

    def parse(self, path: Path, gguf: Any) -> None:
        if bytes(self.data[:4]) != b"GGUF":
            raise ValueError(f"{path} is not a GGUF file")
        self.pos = 8
        n_tensors, n_kv = self.scalar("<u8"), self.scalar("<u8")
        self.kv: dict[str, tuple[int, int | None, Any]] = {}
        for _ in range(n_kv):
            key = self.string()
            vtype = self.scalar("<u4")
            if vtype == _ARRAY:
                sub, n = self.scalar("<u4"), self.scalar("<u8")
                if sub == _STRING:
                    value: Any = [self.string() for _ in range(n)]
                else:
                    dtype = np.dtype(_SCALARS[sub])
                    value = np.frombuffer(self.data, dtype, n, self.pos).tolist()
                    self.pos += n * dtype.itemsize
                self.kv[key] = (vtype, sub, value)
            else:
                self.kv[key] = (vtype, None, self.string() if vtype == _STRING else self.scalar(_SCALARS[vtype]))
        self.tensor_types: dict[str, str] = {}
        for _ in range(n_tensors):
            name = self.string()
            n_dims = self.scalar("<u4")
            self.pos += 8 * n_dims
            self.tensor_types[name] = gguf.GGMLQuantizationType(self.scalar("<u4")).name
            self.pos += 8  # offset

    def scalar(self, dtype: str) -> Any:
        kind = np.dtype(dtype)
        value = np.frombuffer(self.data, kind, 1, self.pos)[0].item()
        self.pos += kind.itemsize
        return value

    def string(self) -> str:
        n = self.scalar("<u8")
        text = bytes(self.data[self.pos : self.pos + n]).decode("utf-8")
        self.pos += n
        return text


_TOKENIZERS: dict[Path, dict[str, tuple[int, int | None, Any]]] = {}


def copy_tokenizer(writer: Any, source: Path, template: str | None) -> None:
    """Every tokenizer.* key of ``source``, with its stored type; the chat template replaced when one is given."""
    import gguf

    if source not in _TOKENIZERS:
        header = GGUFHeader(source)
        _TOKENIZERS[source] = {k: v for k, v in header.kv.items() if k.startswith("tokenizer.")}
    for key, (vtype, sub, value) in _TOKENIZERS[source].items():
        if template is not None and key == "tokenizer.chat_template":
            continue
        writer.add_key_value(
            key, value, gguf.GGUFValueType(vtype), sub_type=None if sub is None else gguf.GGUFValueType(sub)
        )
    if template is not None:
        writer.add_string("tokenizer.chat_template", template)


def llama3_rope_factors(head_dim: int, base: float) -> np.ndarray:
    """Llama 3's RoPE frequency factors, as llama.cpp's converter computes them for rope_type "llama3" (factor 8, low
    1, high 4), with an original context of 32 instead of 8192 so that they matter within a short prompt."""
    factor, low, high, old_context = 8.0, 1.0, 4.0, 32
    low_wavelen, high_wavelen = old_context / low, old_context / high
    out = []
    for i in range(0, head_dim, 2):
        wavelen = 2 * math.pi * base ** (i / head_dim)
        if wavelen < high_wavelen:
            out.append(1.0)
        elif wavelen > low_wavelen:
            out.append(factor)
        else:
            smooth = (old_context / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(out, dtype=np.float32)


def random_tensors(family: Family, variant: str = "") -> dict[str, np.ndarray]:
    """Seeded weights in numpy's (rows, columns) order, which is ggml's shape reversed.

    Scales keep activations sane and make attention sharp enough that RoPE, masks and norms show in the logits:
    embeddings 0.3 (logits of a few units, so llama.cpp's top-1 often leads by more than 1), Q/K 0.09 (attention
    scores of about 2), V/FFN-in 0.06, outputs 0.04, norms 1 ± 0.1.
    """
    seed = int.from_bytes(hashlib.sha256(family.name.encode()).digest()[:4], "little")
    rng = np.random.default_rng(seed)
    d, ff, hd = family.n_embd, family.n_ff, family.head_dim
    q_dim, kv_dim = family.n_head * hd, family.n_head_kv * hd
    n_vocab = vocab_size(family)

    def normal(shape: tuple[int, ...], std: float) -> np.ndarray:
        return (rng.standard_normal(shape, dtype=np.float32) * np.float32(std)).astype(np.float32)

    def norm(n: int, center: float = 1.0) -> np.ndarray:
        return (np.float32(center) + normal((n,), 0.1)).astype(np.float32)

    t: dict[str, np.ndarray] = {"token_embd.weight": normal((n_vocab, d), 0.3), "output_norm.weight": norm(d)}
    if not family.tied:
        t["output.weight"] = normal((n_vocab, d), 0.3)
    if "rope_freqs" in family.features:
        factors = llama3_rope_factors(hd, family.rope_base)
        t["rope_freqs.weight"] = np.ones_like(factors) if variant == "without-rope-factors" else factors
    if "longrope" in family.features and variant != "without-longrope":
        # Shaped like Phi-3.5's: short factors rising from 1 towards the low frequencies, long ones much larger.
        ramp = np.linspace(0.0, 1.0, hd // 2, dtype=np.float32)
        t["rope_factors_short.weight"] = (1.0 + 1.5 * ramp**2).astype(np.float32)
        t["rope_factors_long.weight"] = (1.0 + 40.0 * ramp**2).astype(np.float32)
    for i in range(family.n_layer):
        b = f"blk.{i}."
        t[b + "attn_norm.weight"] = norm(d)
        if "fused_qkv" in family.features:
            t[b + "attn_qkv.weight"] = np.concatenate(
                [normal((q_dim, d), 0.09), normal((kv_dim, d), 0.09), normal((kv_dim, d), 0.06)]
            )
        else:
            t[b + "attn_q.weight"] = normal((q_dim, d), 0.09)
            t[b + "attn_k.weight"] = normal((kv_dim, d), 0.09)
            t[b + "attn_v.weight"] = normal((kv_dim, d), 0.06)
        if "qkv_bias" in family.features:
            t[b + "attn_q.bias"] = normal((q_dim,), 0.3)
            t[b + "attn_k.bias"] = normal((kv_dim,), 0.3)
            t[b + "attn_v.bias"] = normal((kv_dim,), 0.3)
        if "qk_norm" in family.features:
            t[b + "attn_q_norm.weight"] = norm(hd, 1.5)
            t[b + "attn_k_norm.weight"] = norm(hd, 1.5)
        t[b + "attn_output.weight"] = normal((d, q_dim), 0.04)
        if "gemma" in family.features:
            t[b + "post_attention_norm.weight"] = norm(d)
            t[b + "post_ffw_norm.weight"] = norm(d)
        t[b + "ffn_norm.weight"] = norm(d)
        if "fused_gate_up" in family.features:
            t[b + "ffn_up.weight"] = normal((2 * ff, d), 0.06)  # gate rows first, then up (llama.cpp's swiglu split)
        else:
            t[b + "ffn_gate.weight"] = normal((ff, d), 0.06)
            t[b + "ffn_up.weight"] = normal((ff, d), 0.06)
        t[b + "ffn_down.weight"] = normal((d, ff), 0.04)
    return t


def probe_tensors(family: Family, n_vocab: int, target: int) -> dict[str, np.ndarray]:
    """A model whose next token is always ``target``: every embedding is the first unit vector, every layer weight is
    zero (so attention and FFN add nothing), and only the target's output row points along that vector."""
    d = hd = 64
    f16 = np.float16
    embd = np.zeros((n_vocab, d), dtype=f16)
    embd[:, 0] = 1.0
    out = np.zeros((n_vocab, d), dtype=f16)
    out[target, 0] = 8.0
    t: dict[str, np.ndarray] = {"token_embd.weight": embd, "output.weight": out}
    t["output_norm.weight"] = np.ones(d, dtype=np.float32)
    zeros = np.zeros
    b = "blk.0."
    t[b + "attn_norm.weight"] = np.ones(d, dtype=np.float32)
    if "fused_qkv" in family.features:
        t[b + "attn_qkv.weight"] = zeros((3 * hd, d), dtype=np.float32)
    else:
        for name in ("attn_q", "attn_k", "attn_v"):
            t[b + name + ".weight"] = zeros((hd, d), dtype=np.float32)
    if "qk_norm" in family.features:
        t[b + "attn_q_norm.weight"] = np.ones(hd, dtype=np.float32)
        t[b + "attn_k_norm.weight"] = np.ones(hd, dtype=np.float32)
    t[b + "attn_output.weight"] = zeros((d, hd), dtype=np.float32)
    if "gemma" in family.features:
        t[b + "post_attention_norm.weight"] = np.ones(d, dtype=np.float32)
        t[b + "post_ffw_norm.weight"] = np.ones(d, dtype=np.float32)
    t[b + "ffn_norm.weight"] = np.ones(d, dtype=np.float32)
    if "fused_gate_up" in family.features:
        t[b + "ffn_up.weight"] = zeros((2 * d, d), dtype=np.float32)
    else:
        t[b + "ffn_gate.weight"] = zeros((d, d), dtype=np.float32)
        t[b + "ffn_up.weight"] = zeros((d, d), dtype=np.float32)
    t[b + "ffn_down.weight"] = zeros((d, d), dtype=np.float32)
    return t


def vocab_size(family: Family) -> int:
    _, _, tokens = GGUFHeader(vocab_path(family)).kv["tokenizer.ggml.tokens"]
    return len(tokens)


def write_gguf(path: Path, family: Family, tensors: dict[str, np.ndarray], variant: str = "") -> None:
    """A GGUF of ``family``'s architecture with the metadata llama.cpp reads for it (src/models/<arch>.cpp)."""
    import gguf

    template = None
    if family.template is not None:
        template = (llama_cpp_assets() / "templates" / family.template).read_text(encoding="utf-8")
    w = gguf.GGUFWriter(str(path), family.arch)
    w.add_name(f"modelhost test {family.name}")
    w.add_file_type(0)
    w.add_context_length(family.context_length)
    w.add_embedding_length(family.n_embd)
    w.add_block_count(family.n_layer)
    w.add_feed_forward_length(family.n_ff)
    w.add_head_count(family.n_head)
    w.add_head_count_kv(family.n_head_kv)
    w.add_layer_norm_rms_eps(family.rms_eps)
    w.add_rope_freq_base(family.rope_base)
    if "key_length" in family.features:
        w.add_key_length(family.head_dim)
        w.add_value_length(family.head_dim)
    if family.arch == "llama" or "rope_dimension_count" in family.features:
        w.add_rope_dimension_count(family.head_dim)
    if family.sliding_window:
        window = family.context_length if variant == "without-sliding-window" else family.sliding_window
        w.add_sliding_window(window)
    if "longrope" in family.features and variant != "without-longrope":
        w.add_rope_scaling_orig_ctx_len(LONGROPE_ORIGINAL_CONTEXT)
        scale = family.context_length / LONGROPE_ORIGINAL_CONTEXT  # the converter's attention factor for longrope
        w.add_rope_scaling_attn_factors(math.sqrt(1 + math.log(scale) / math.log(LONGROPE_ORIGINAL_CONTEXT)))
    copy_tokenizer(w, vocab_path(family), template)
    for name, array in tensors.items():
        w.add_tensor(name, array)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def tensor_types(path: Path) -> dict[str, str]:
    """Each tensor's type, as the file says."""
    return GGUFHeader(path).tensor_types


def type_summary(types: dict[str, str]) -> dict[str, dict[str, int]]:
    """Types by tensor role (blk.N. dropped): {"ffn_down.weight": {"Q6_K": 15, "Q5_0": 15}, ...}."""
    roles: dict[str, Counter[str]] = {}
    for name, kind in types.items():
        parts = name.split(".")
        role = ".".join(parts[2:]) if parts[0] == "blk" else name
        roles.setdefault(role, Counter())[kind] += 1
    return {role: dict(sorted(c.items())) for role, c in sorted(roles.items())}


# --- llama.cpp, in a subprocess --------------------------------------------------------------------------------------


def run_worker(jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """tests/llamacpp_refs.py on ``jobs`` in a fresh interpreter (the test venv's, which has llama-cpp-python)."""
    with tempfile.TemporaryDirectory() as tmp:
        jobs_file, out_file = Path(tmp) / "jobs.json", Path(tmp) / "out.json"
        jobs_file.write_text(json.dumps(jobs))
        env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
        proc = subprocess.run(
            [sys.executable, str(WORKER), str(jobs_file), str(out_file)],
            capture_output=True,
            text=True,
            check=False,
            env=env,
        )
        if proc.returncode != 0:
            raise RuntimeError(
                f"llama.cpp reference worker failed (exit {proc.returncode}); is llama-cpp-python installed "
                f"(`make install`)?\n{proc.stderr[-4000:]}"
            )
        results: list[dict[str, Any]] = json.loads(out_file.read_text())
        return results


# --- making a family -------------------------------------------------------------------------------------------------


def family_spec(name: str) -> dict[str, Any]:
    for family in RANDOM_FAMILIES:
        if family.name == name:
            return asdict(family)
    return {"name": name, "file": REAL_FAMILIES[name]}


def cache_key(name: str) -> str:
    h = hashlib.sha256()
    for source in (Path(__file__), WORKER):
        h.update(source.read_bytes())
    h.update(json.dumps(family_spec(name), sort_keys=True).encode())
    h.update(LLAMA_CPP_PYTHON_VERSION.encode())
    return h.hexdigest()[:16]


def ensure_family(name: str) -> dict[str, Any]:
    """The family's manifest (files, tensor types, llama.cpp's outputs), making it first if it is not cached."""
    root = fixtures_dir() / "families"
    dest = root / f"{name}-{cache_key(name)}"
    manifest = dest / "manifest.json"
    if not manifest.exists():
        with locked(name):
            if not manifest.exists():
                root.mkdir(parents=True, exist_ok=True)
                for leftover in root.glob(f".{name}-*"):  # a maker that was killed (we hold the lock)
                    shutil.rmtree(leftover, ignore_errors=True)
                tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{name}-"))
                try:
                    make_family(name, tmp)
                    tmp.rename(dest)
                except BaseException:
                    shutil.rmtree(tmp, ignore_errors=True)
                    raise
                for stale in root.glob(f"{name}-*"):  # older keys of this family: superseded
                    if stale != dest and stale.name[len(name) + 1 :].isalnum():
                        shutil.rmtree(stale, ignore_errors=True)
    data: dict[str, Any] = json.loads(manifest.read_text())
    for entry in [*data["files"].values(), *data["probes"]]:
        entry["path"] = str(dest / entry["path"])  # an absolute path (a real file) stays as it is
    if "sensitivity" in data:
        for key in ("rows_with", "rows_without"):
            data["sensitivity"][key] = str(dest / data["sensitivity"][key])
    return data


def numeric_cases(vocab_refs: dict[str, Any]) -> list[dict[str, Any]]:
    """Prompt ids for the numeric references: the raw prompts' llama.cpp token ids, then the first chats that render."""
    by_text = {case["text"]: case["ids"] for case in vocab_refs["tokenization"]}
    cases: list[dict[str, Any]] = [{"kind": "raw", "prompt": p, "prompt_ids": by_text[p]} for p in RAW_PROMPTS]
    chats = [c for c in vocab_refs["chats"] if "prompt_ids" in c][:CHAT_NUMERIC_CASES]
    cases += [{"kind": "chat", "messages": c["messages"], "prompt_ids": c["prompt_ids"]} for c in chats]
    return cases


def make_family(name: str, out: Path) -> None:
    started = time.monotonic()
    family = next((f for f in RANDOM_FAMILIES if f.name == name), None)
    files: dict[str, Path] = {}
    if family is None:  # a real file: SmolLM2 re-quantized, or Gemma 3 as it is
        base = real_file(REAL_FAMILIES[name])
        files[variants(name)[0]] = base
        quantize = {t: ftype for t, ftype in MIXED_TYPES.items()} if name == "smollm2" else {}
        pure = False
    else:
        base = out / "F32.gguf"
        write_gguf(base, family, random_tensors(family))
        files["F32"] = base
        quantize = {t: ftype for t, ftype in PURE_TYPES.items() if t != "F32"}
        pure = True
    for kind in quantize:
        files[kind] = out / f"{kind}.gguf"

    texts = list(dict.fromkeys([*RAW_PROMPTS, PROBE_PROMPT, *TOKENIZER_TEXTS, *tokenizer_test_inputs("llama-bpe")]))
    if family is not None and family.vocab != "llama-bpe" and family.vocab != "gemma-3-270m":
        texts += [t for t in tokenizer_test_inputs(family.vocab) if t not in texts]
    embedding_type = family.embedding_type if family is not None else None
    jobs: list[dict[str, Any]] = [
        {
            "op": "quantize",
            "src": str(base),
            "dst": str(files[kind]),
            "ftype": ftype,
            "pure": pure,
            "token_embedding_type": embedding_type if kind.startswith("Q") else None,
        }
        for kind, ftype in quantize.items()
    ]
    jobs.append(
        {
            "op": "vocab",
            "path": str(base),
            "texts": texts,
            "conversations": CONVERSATIONS,
            "builtin_template": GEMMA_BUILTIN_TEMPLATE,
        }
    )
    results = run_worker(jobs)
    vocab_refs = results[-1]
    cases = numeric_cases(vocab_refs)

    probes = []
    has_probes = (family is not None and family.probes) or name == "smollm2"
    if has_probes:
        probe_family = family or Family(name, "llama", "", None)
        source = base if family is None else vocab_path(family)
        eog = vocab_refs["eog_ids"][:MAX_EOG_PROBES]
        controls = [t for t in vocab_refs["control_ids"] if t != vocab_refs["bos"][0]][:PROBE_CONTROLS]
        by_text = {case["text"]: case["ids"] for case in vocab_refs["tokenization"]}
        plain = by_text[PROBE_PROMPT][-1:]  # an ordinary token: generation goes on after it
        for target in eog + controls + plain:
            path = out / "probes" / f"next-{target}.gguf"
            path.parent.mkdir(exist_ok=True)
            write_probe(path, probe_family, source, vocab_refs["n_vocab"], target)
            probes.append({"target": target, "is_eog": target in vocab_refs["eog_ids"], "path": path})

    jobs = [{"op": "numerics", "path": str(p), "cases": cases, "greedy_tokens": GREEDY_TOKENS} for p in files.values()]
    jobs += [{"op": "first_tokens", "path": str(p["path"]), "prompt": PROBE_PROMPT, "n": 2} for p in probes]
    variant = SENSITIVITY_VARIANTS.get(name)
    if family is not None and variant is not None:
        # The same model without its distinctive feature: only llama.cpp's prompt-end rows are kept, not the file.
        without = out / f"F32-{variant}.gguf"
        write_gguf(without, family, random_tensors(family, variant), variant)
        jobs[0]["rows_path"] = str(out / "rows-F32.npy")
        jobs.append({**jobs[0], "path": str(without), "rows_path": str(out / f"rows-{variant}.npy")})
    results = run_worker(jobs)
    numeric = results[: len(files)]
    _, _, arch = GGUFHeader(base).kv["general.architecture"]
    manifest: dict[str, Any] = {
        "family": family_spec(name),
        "arch": arch,
        "vocab": vocab_refs,
        "files": {},
        "probes": [],
    }
    for (kind, path), refs in zip(files.items(), numeric):
        rel = str(path.relative_to(out)) if path.is_relative_to(out) else str(path)
        manifest["files"][kind] = {
            "path": rel,
            "size_bytes": path.stat().st_size,
            "tensor_types": type_summary(tensor_types(path)),
            "refs": refs,
        }
    for probe, refs in zip(probes, results[len(files) : len(files) + len(probes)]):
        manifest["probes"].append({**probe, "path": str(probe["path"].relative_to(out)), "refs": refs})
    if family is not None and variant is not None:
        (out / f"F32-{variant}.gguf").unlink()
        manifest["sensitivity"] = {
            "variant": variant,
            "rows_with": "rows-F32.npy",
            "rows_without": f"rows-{variant}.npy",
            "refs": results[-1],
        }
    manifest["seconds_to_make"] = round(time.monotonic() - started, 1)
    (out / "manifest.json").write_text(json.dumps(manifest))


def write_probe(path: Path, family: Family, vocab_source: Path, n_vocab: int, target: int) -> None:
    """A one-layer probe of ``family``'s architecture (width and head size 64) with the vocabulary of
    ``vocab_source``, whose next token is always ``target``."""
    import gguf

    w = gguf.GGUFWriter(str(path), family.arch)
    w.add_name(f"modelhost test {family.name} probe next={target}")
    w.add_file_type(1)
    w.add_context_length(family.context_length)
    w.add_embedding_length(64)
    w.add_block_count(1)
    w.add_feed_forward_length(64)
    w.add_head_count(1)
    w.add_head_count_kv(1)
    w.add_key_length(64)
    w.add_value_length(64)
    w.add_layer_norm_rms_eps(family.rms_eps)
    w.add_rope_freq_base(family.rope_base)
    copy_tokenizer(w, vocab_source, None)
    for name, array in probe_tensors(family, n_vocab, target).items():
        w.add_tensor(name, array)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
