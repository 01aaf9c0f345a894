"""SPEC §7 on files that are loadable until they are not: hostile variants of a tiny *runnable* llama GGUF and of the
real MiniLM safetensors, filesystem oddities, and the published GGUF-loader CVEs as regression tests.

tests/test_bad_input.py mutates the real SmolLM2 header one field at a time; this module adds what it does not cover:
hypothesis-sampled truncations of a file that really loads (so every cut reaches the loader, not only the header
parser), duplicate keys, negative dims, filesystem entries that are not files, and the CVE classes. Each case must
raise ``ModelLoadError`` naming the file, leave no instance, mapping or thread behind, and leave SmolLM2 (loaded once
for the module) working.
"""

from __future__ import annotations

import json
import os
import random
import struct
from collections.abc import Callable, Iterator
from pathlib import Path

import modelhost as mh
import numpy as np
import pytest
from gguf_writer import (
    ARRAY,
    BOOL,
    F32,
    INT32,
    KV,
    Q8_0,
    STRING,
    UINT32,
    UINT64,
    GGUFFile,
    TensorInfo,
    tensor_nbytes,
)
from helpers import EMB_KEY, LLM_KEY, assert_ran, emb_path, mapping_lines, thread_count, wait_until
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from modelhost import _core

pytestmark = pytest.mark.timeout(120)

# A lying header may cost a little parsing memory, never anything proportional to what it claims.
LYING_ALLOCATION_LIMIT = 64 * 1024 * 1024
EMBD, HEADS, KV_HEADS, FF = 32, 2, 1, 64
KV_WIDTH = EMBD // HEADS * KV_HEADS


# --- a tiny runnable llama GGUF ------------------------------------------------------------------------------------


def _byte_chars() -> list[str]:
    """GPT-2's byte-to-unicode table: printable bytes stand for themselves, the rest map past U+0100."""
    visible = {*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)}
    out = []
    shifted = 0
    for b in range(256):
        if b in visible:
            out.append(chr(b))
        else:
            out.append(chr(256 + shifted))
            shifted += 1
    return out


SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MERGES = ["H e", "l l", "He ll", "Hell o", "Ġ w", "o r", "Ġw or", "Ġwor l", "Ġworl d"]
WORDS = ["He", "ll", "Hell", "Hello", "Ġw", "or", "Ġwor", "Ġworl", "Ġworld"]
TOKENS = SPECIALS + _byte_chars() + WORDS
CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + "
    "'\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def tiny_llama(*, extra_kvs: list[KV] | None = None, data_seed: int = 0) -> GGUFFile:
    """A one-block llama (width 32, 276-token byte-level BPE vocabulary, F32 and Q8_0 weights) that really loads
    and generates: the smallest file that reaches every stage of the loader."""
    kvs = [
        KV("general.architecture", STRING, "llama"),
        KV("general.name", STRING, "tiny hostile-test llama"),
        KV("llama.block_count", UINT32, 1),
        KV("llama.context_length", UINT32, 1024),
        KV("llama.embedding_length", UINT32, EMBD),
        KV("llama.feed_forward_length", UINT32, FF),
        KV("llama.attention.head_count", UINT32, HEADS),
        KV("llama.attention.head_count_kv", UINT32, KV_HEADS),
        KV("tokenizer.ggml.model", STRING, "gpt2"),
        KV("tokenizer.ggml.pre", STRING, "smollm"),
        KV("tokenizer.ggml.tokens", ARRAY, TOKENS, STRING),
        KV("tokenizer.ggml.token_type", ARRAY, [3] * len(SPECIALS) + [1] * (len(TOKENS) - len(SPECIALS)), INT32),
        KV("tokenizer.ggml.merges", ARRAY, MERGES, STRING),
        KV("tokenizer.ggml.bos_token_id", UINT32, 1),
        KV("tokenizer.ggml.eos_token_id", UINT32, 2),
        KV("tokenizer.ggml.add_bos_token", BOOL, False),
        KV("tokenizer.chat_template", STRING, CHATML),
        *(extra_kvs or []),
    ]
    b = "blk.0."
    tensors = [
        TensorInfo("token_embd.weight", [EMBD, len(TOKENS)], Q8_0),
        TensorInfo(b + "attn_norm.weight", [EMBD], F32),
        TensorInfo(b + "attn_q.weight", [EMBD, EMBD], F32),
        TensorInfo(b + "attn_k.weight", [EMBD, KV_WIDTH], F32),
        TensorInfo(b + "attn_v.weight", [EMBD, KV_WIDTH], F32),
        TensorInfo(b + "attn_output.weight", [EMBD, EMBD], F32),
        TensorInfo(b + "ffn_norm.weight", [EMBD], F32),
        TensorInfo(b + "ffn_gate.weight", [EMBD, FF], F32),
        TensorInfo(b + "ffn_up.weight", [EMBD, FF], F32),
        TensorInfo(b + "ffn_down.weight", [FF, EMBD], F32),
        TensorInfo("output_norm.weight", [EMBD], F32),
    ]
    g = GGUFFile(kvs=kvs, tensors=tensors)
    g.data = _tensor_data(g, data_seed)
    return g


def _tensor_data(g: GGUFFile, seed: int) -> bytes:
    """Small random weights (norms at 1), laid out at the offsets the writer assigns."""
    rng = np.random.default_rng(seed)
    out = bytearray(g.data_size())
    offset = 0
    for t in g.tensors:
        n = tensor_nbytes(t.dims, t.type)
        if t.type == F32:
            numel = n // 4
            values = np.ones(numel, np.float32) if len(t.dims) == 1 else rng.normal(0, 0.2, numel).astype(np.float32)
            raw = values.tobytes()
        else:  # Q8_0 blocks: an f16 scale and 32 int8 quants
            blocks = n // 34
            raw = b"".join(
                np.float16(0.01).tobytes() + rng.integers(-127, 128, 32, dtype=np.int8).tobytes() for _ in range(blocks)
            )
        out[offset : offset + n] = raw
        offset = (offset + n + g.alignment - 1) // g.alignment * g.alignment
    return bytes(out)


@pytest.fixture(scope="module")
def tiny_bytes() -> bytes:
    return tiny_llama().to_bytes()


# --- fixtures: the keeper and the clean-failure check ---------------------------------------------------------------


@pytest.fixture(scope="module")
def keeper(module_client: mh.Client) -> mh.LLM:
    """SmolLM2, loaded once; it must keep working after every failure (warmed up, so its threads exist)."""
    llm = module_client.llm.model(LLM_KEY, ttl=None, config={"contextLength": 512})
    llm.complete("Hello", {"maxTokens": 2})
    return llm


@pytest.fixture(scope="module")
def emb_keeper(module_client: mh.Client) -> mh.EmbeddingModel:
    emb = module_client.embedding.model(EMB_KEY, ttl=None)
    emb.embed(["warm up"])
    return emb


def _os_threads() -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("Threads:"))


def _peak_rss() -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))


def assert_clean_failure(
    client: mh.Client,
    load: Callable[[], object],
    path: Path,
    keeper: mh.LLM,
    *,
    problem: str | None = None,
    errors: tuple[type[BaseException], ...] = (mh.ModelLoadError,),
) -> BaseException:
    """``load()`` raises one of ``errors`` naming ``path`` (and ``problem``, if given), and changes nothing else."""
    import threading

    loaded = sorted(h.identifier for h in client.list_loaded_models())
    mapped = _core.mapped_file_count()
    py_threads, os_threads = threading.active_count(), thread_count()
    peak = _peak_rss()
    with pytest.raises(errors) as info:
        load()
    message = str(info.value)
    if isinstance(info.value, mh.ModelLoadError):
        assert path.name in message, f"the error does not name the file: {message}"
    if problem is not None:
        assert problem in message.lower(), f"the error does not say {problem!r}: {message}"
    assert _peak_rss() - peak < LYING_ALLOCATION_LIMIT, "allocated in proportion to a lying header"
    assert sorted(h.identifier for h in client.list_loaded_models()) == loaded, "an instance was left loaded"
    assert _core.mapped_file_count() == mapped, "a mapping was left behind"
    assert mapping_lines(path) == [], f"{path} is still in /proc/self/maps"
    assert threading.active_count() <= py_threads
    wait_until(lambda: thread_count() <= os_threads and _os_threads() <= os_threads, timeout=2)
    assert keeper.tokenize("Hello world") == [19556, 905]
    assert keeper.complete("Hello", {"maxTokens": 2, "temperature": 0}).stats.predicted_tokens_count == 2
    return info.value


def _load_llm(client: mh.Client, path: Path) -> Callable[[], object]:
    return lambda: client.llm.load_new_instance(str(path))


# --- the tiny model is valid ----------------------------------------------------------------------------------------


def test_tiny_llama_loads_and_generates(module_client: mh.Client, tmp_path: Path, tiny_bytes: bytes) -> None:
    path = tmp_path / "tiny.gguf"
    path.write_bytes(tiny_bytes)
    llm = module_client.llm.load_new_instance(str(path), ttl=None)
    try:
        assert llm.tokenize("Hello world") == [TOKENS.index("Hello"), TOKENS.index("Ġworld")]
        result = llm.complete("Hello", {"maxTokens": 3, "temperature": 0})
        assert 1 <= result.stats.predicted_tokens_count <= 3
        assert _core.mapped_file_count() >= 1
    finally:
        llm.unload()
    assert mapping_lines(path) == []


# --- truncations and byte flips of the tiny model, through the whole loader -----------------------------------------


TINY_LEN = len(tiny_llama().to_bytes())
TINY_HEADER_LEN = len(tiny_llama().header_bytes())


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.one_of(st.integers(0, TINY_HEADER_LEN), st.integers(TINY_HEADER_LEN, TINY_LEN - 1)))
def test_truncated_tiny_llama(
    cut: int, module_client: mh.Client, keeper: mh.LLM, tmp_path: Path, tiny_bytes: bytes
) -> None:
    """Cut in the header (where the parser must stop) or in the data (where the bounds check must)."""
    path = tmp_path / f"cut-{cut}.gguf"
    path.write_bytes(tiny_bytes[:cut])
    assert_clean_failure(module_client, _load_llm(module_client, path), path, keeper)
    path.unlink()


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_byte_flipped_tiny_llama(
    data: st.DataObject, module_client: mh.Client, keeper: mh.LLM, tmp_path: Path, tiny_bytes: bytes
) -> None:
    """Random bytes of the header overwritten: the load fails cleanly or (a flip in a name or a float) succeeds."""
    raw = bytearray(tiny_bytes)
    for _ in range(data.draw(st.integers(1, 6))):
        raw[data.draw(st.integers(0, TINY_HEADER_LEN - 1))] = data.draw(st.sampled_from([0x00, 0x7F, 0x80, 0xFF]))
    path = tmp_path / "flipped.gguf"
    path.write_bytes(bytes(raw))
    loaded = sorted(h.identifier for h in module_client.list_loaded_models())
    mapped = _core.mapped_file_count()
    try:
        llm = module_client.llm.load_new_instance(str(path))
    except (mh.ModelLoadError, mh.NotSupportedError) as e:
        assert path.name in str(e)
    else:
        llm.complete("Hi", {"maxTokens": 1})
        llm.unload()
    assert sorted(h.identifier for h in module_client.list_loaded_models()) == loaded
    assert _core.mapped_file_count() == mapped
    assert mapping_lines(path) == []
    path.unlink()


# --- lying fields, one at a time, on the tiny model ----------------------------------------------------------------


def _tensor(g: GGUFFile, name: str) -> TensorInfo:
    return next(t for t in g.tensors if t.name == name)


def _kv(g: GGUFFile, key: str) -> KV:
    return next(kv for kv in g.kvs if kv.key == key)


def _with(mutate: Callable[[GGUFFile], None]) -> bytes:
    g = tiny_llama()
    mutate(g)
    header = g.header_bytes()
    assert g.data is not None
    return header + g.data


def _set_tensor(which: str, /, **changes: object) -> Callable[[GGUFFile], None]:
    def mutate(g: GGUFFile) -> None:
        for attr, value in changes.items():
            setattr(_tensor(g, which), attr, value)

    return mutate


def _set_kv(which: str, /, **changes: object) -> Callable[[GGUFFile], None]:
    def mutate(g: GGUFFile) -> None:
        for attr, value in changes.items():
            setattr(_kv(g, which), attr, value)

    return mutate


def _duplicate_kv(g: GGUFFile) -> None:
    g.kvs.append(KV("general.name", STRING, "a second name"))


def _duplicate_tensor(g: GGUFFile) -> None:
    first = g.tensors[1]
    g.tensors.append(TensorInfo(first.name, first.dims, first.type))


def _negative_dim(g: GGUFFile) -> None:
    _tensor(g, "blk.0.attn_norm.weight").dims = [2**64 - EMBD]  # -32 as an int64


def _overlap(g: GGUFFile) -> None:
    _tensor(g, "blk.0.attn_q.weight").offset = 0  # on top of token_embd


def _offset_past_end(g: GGUFFile) -> None:
    _tensor(g, "output_norm.weight").offset = 2**40


def _offset_wraps(g: GGUFFile) -> None:
    _tensor(g, "output_norm.weight").offset = 2**64 - 64  # offset + size wraps around to a small number


TINY_CASES: dict[str, tuple[Callable[[], bytes], str | None]] = {
    "zero-bytes": (lambda: b"", "empty"),
    "duplicate-metadata-key": (lambda: _with(_duplicate_kv), "duplicate"),
    "duplicate-tensor-name": (lambda: _with(_duplicate_tensor), "duplicate"),
    "non-utf8-key": (lambda: _with(_set_kv("general.name", key=b"general.\xc3\x28")), "utf-8"),
    "non-utf8-tensor-name": (lambda: _with(_set_tensor("output_norm.weight", name=b"output\xff")), "utf-8"),
    "non-utf8-token": (lambda: _with(_set_kv("tokenizer.ggml.tokens", value=[*TOKENS[:-1], b"\xfe\xff"])), "utf-8"),
    "negative-dim": (lambda: _with(_negative_dim), None),
    "zero-dim": (lambda: _with(_set_tensor("output_norm.weight", dims=[0])), None),
    "huge-dim": (lambda: _with(_set_tensor("output_norm.weight", dims=[2**62])), None),
    "negative-tensor-count": (lambda: _with(lambda g: setattr(g, "tensor_count", 2**64 - 1)), None),
    "negative-kv-count": (lambda: _with(lambda g: setattr(g, "kv_count", 2**63)), None),
    "huge-string-length": (lambda: _with(_set_kv("general.name", count=2**63 + 5)), None),
    "negative-array-count": (lambda: _with(_set_kv("tokenizer.ggml.merges", count=2**64 - 1)), None),
    "unknown-dtype": (lambda: _with(_set_tensor("output_norm.weight", type=31)), "type"),
    "huge-dtype": (lambda: _with(_set_tensor("output_norm.weight", type=2**31 + 1)), "type"),
    "offset-past-end": (lambda: _with(_offset_past_end), "past the end"),
    "offset-wraps": (lambda: _with(_offset_wraps), None),
    "overlapping-tensors": (lambda: _with(_overlap), "overlap"),
    "vocab-disagrees-with-embeddings": (
        lambda: _with(_set_tensor("token_embd.weight", dims=[EMBD, len(TOKENS) - 1], type=F32)),
        None,
    ),
    "token-type-wrong-length": (lambda: _with(_set_kv("tokenizer.ggml.token_type", value=[1, 1, 1])), None),
    "bos-id-out-of-range": (lambda: _with(_set_kv("tokenizer.ggml.bos_token_id", value=10**6)), None),
    "merge-of-unknown-tokens": (lambda: _with(_set_kv("tokenizer.ggml.merges", value=["zz qq"])), None),
    "broken-chat-template": (lambda: _with(_set_kv("tokenizer.chat_template", value="{% for %}")), "template"),
    "block-count-lies": (lambda: _with(_set_kv("llama.block_count", value=2**31)), "block"),
    "heads-do-not-divide": (lambda: _with(_set_kv("llama.attention.head_count", value=3)), None),
    "zero-kv-heads": (lambda: _with(_set_kv("llama.attention.head_count_kv", value=0)), None),
    "context-length-zero": (lambda: _with(_set_kv("llama.context_length", value=0)), None),
}


@pytest.mark.parametrize("case", sorted(TINY_CASES))
def test_hostile_tiny_llama(case: str, module_client: mh.Client, keeper: mh.LLM, tmp_path: Path) -> None:
    build, problem = TINY_CASES[case]
    path = tmp_path / f"tiny-{case}.gguf"
    path.write_bytes(build())
    assert_clean_failure(module_client, _load_llm(module_client, path), path, keeper, problem=problem)
    assert_clean_failure(module_client, lambda: module_client.llm.model(str(path)), path, keeper, problem=problem)


# A template is a program: these load (they compile), then every render is refused quickly with a clear error.
HOSTILE_TEMPLATES = {
    "namespace-doubling": "{% set ns = namespace(s='x') %}{% for i in range(60) %}{% set ns.s = ns.s ~ ns.s %}"
    "{% endfor %}{{ ns.s | length }}",
    "macro-doubling": "{% macro f(s, n) %}{{ f(s ~ s, n - 1) if n else s | length }}{% endmacro %}{{ f('x', 60) }}",
    "terabyte-repeat": "{{ ('x' * (messages | length) * 10**12) | length }}",
    "endless-loop": "{% for i in range(10**9) %}{% for j in range(10**9) %}{% endfor %}{% endfor %}",
    "repeated-list-join": "{% set a = 'x' * 10**6 %}{{ ([a] * 10**5) | join | length }}",
    "repeated-list-concat": "{% set a = 'x' * 10**6 %}{{ (([a] * 10**5) ~ '') | length }}",
    "repeated-list-format": "{% set a = 'x' * 10**6 %}{{ ('%s' | format([a] * 10**5)) | length }}",
}


@pytest.mark.parametrize("case", sorted(HOSTILE_TEMPLATES))
def test_hostile_chat_template_is_bounded(case: str, module_client: mh.Client, keeper: mh.LLM, tmp_path: Path) -> None:
    path = tmp_path / f"template-{case}.gguf"
    path.write_bytes(_with(_set_kv("tokenizer.chat_template", value=HOSTILE_TEMPLATES[case])))
    llm = module_client.llm.load_new_instance(str(path), f"template-{case}")
    try:
        with pytest.raises(mh.InvalidConfigError, match="chat template"):
            llm.respond("hi", config={"maxTokens": 1})
        assert_ran(llm.complete("Hello", config={"maxTokens": 2}), 2)  # raw prompts still work
        assert_ran(keeper.complete("Hello", config={"maxTokens": 2, "temperature": 0}), 2)
    finally:
        llm.unload()


# --- filesystem entries that are not model files -------------------------------------------------------------------


def test_directory_named_gguf(module_client: mh.Client, keeper: mh.LLM, tmp_path: Path) -> None:
    path = tmp_path / "x.gguf"
    path.mkdir()
    assert_clean_failure(
        module_client,
        _load_llm(module_client, path),
        path,
        keeper,
        errors=(mh.ModelLoadError, mh.ModelNotFoundError, IsADirectoryError),
    )


def test_symlink_loop(module_client: mh.Client, keeper: mh.LLM, tmp_path: Path) -> None:
    a, b = tmp_path / "a.gguf", tmp_path / "b.gguf"
    os.symlink(b, a)
    os.symlink(a, b)
    error = assert_clean_failure(
        module_client,
        _load_llm(module_client, a),
        a,
        keeper,
        errors=(mh.ModelLoadError, mh.ModelNotFoundError, OSError),
    )
    assert "a.gguf" in str(error)


def test_dangling_symlink(module_client: mh.Client, keeper: mh.LLM, tmp_path: Path) -> None:
    path = tmp_path / "dangling.gguf"
    os.symlink(tmp_path / "nowhere.gguf", path)
    assert_clean_failure(
        module_client,
        _load_llm(module_client, path),
        path,
        keeper,
        errors=(mh.ModelLoadError, mh.ModelNotFoundError, FileNotFoundError),
    )


def test_unreadable_file(module_client: mh.Client, keeper: mh.LLM, tmp_path: Path, tiny_bytes: bytes) -> None:
    path = tmp_path / "secret.gguf"
    path.write_bytes(tiny_bytes)
    os.chmod(path, 0)
    try:
        try:
            with open(path, "rb"):
                readable = True
        except PermissionError:
            readable = False
        if readable:
            pytest.skip("running with CAP_DAC_OVERRIDE (root): chmod 0 does not stop reads")
        assert_clean_failure(
            module_client, _load_llm(module_client, path), path, keeper, errors=(mh.ModelLoadError, PermissionError)
        )
    finally:
        os.chmod(path, 0o644)


def test_fifo_named_gguf(module_client: mh.Client, keeper: mh.LLM, tmp_path: Path) -> None:
    """A FIFO would block a naive open() forever; it must be refused as not a regular file."""
    path = tmp_path / "pipe.gguf"
    os.mkfifo(path)
    assert_clean_failure(
        module_client, _load_llm(module_client, path), path, keeper, errors=(mh.ModelLoadError, mh.ModelNotFoundError)
    )


def test_dev_zero_is_not_a_model(module_client: mh.Client, keeper: mh.LLM, tmp_path: Path) -> None:
    path = tmp_path / "zero.gguf"
    os.symlink("/dev/zero", path)
    assert_clean_failure(
        module_client, _load_llm(module_client, path), path, keeper, errors=(mh.ModelLoadError, mh.ModelNotFoundError)
    )


# --- the real MiniLM safetensors, hostile ---------------------------------------------------------------------------

_SIDE_FILES = [
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "modules.json",
    "sentence_bert_config.json",
    "config_sentence_transformers.json",
    "1_Pooling/config.json",
]


class _Minilm(tuple[dict[str, object], bytes]):
    def __repr__(self) -> str:  # hypothesis and pytest print fixtures on failure: not 90 MB of them
        return f"<MiniLM header with {len(self[0])} entries, {len(self[1])} data bytes>"


@pytest.fixture(scope="module")
def minilm(models_dir: Path) -> tuple[dict[str, object], bytes]:
    """The real MiniLM header (parsed JSON) and its data section."""
    raw = (emb_path(models_dir) / "model.safetensors").read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return _Minilm((json.loads(raw[8 : 8 + n]), raw[8 + n :]))


def _st_bytes(header: object, data: bytes, raw_header: bytes | None = None) -> bytes:
    body = raw_header if raw_header is not None else json.dumps(header).encode()
    return struct.pack("<Q", len(body)) + body + data


@pytest.fixture
def st_folder(models_dir: Path, tmp_path: Path) -> Iterator[Path]:
    folder = tmp_path / "minilm-hostile"
    for name in _SIDE_FILES:
        src = emb_path(models_dir) / name
        if src.exists():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_bytes(src.read_bytes())
    yield folder


def _first_tensor(header: dict[str, object]) -> str:
    return next(k for k in header if k != "__metadata__")


def _st_mutate(
    mutate: Callable[[dict[str, object]], None],
) -> Callable[[dict[str, object], bytes], bytes]:
    def build(header: dict[str, object], data: bytes) -> bytes:
        h = json.loads(json.dumps(header))
        mutate(h)
        return _st_bytes(h, data)

    return build


def _entry(name: str | None = None, **changes: object) -> Callable[[dict[str, object]], None]:
    def mutate(h: dict[str, object]) -> None:
        entry = h[name or _first_tensor(h)]
        assert isinstance(entry, dict)
        entry.update(changes)

    return mutate


def _st_overlap(h: dict[str, object]) -> None:
    names = [k for k in h if k != "__metadata__"]
    a, b = h[names[1]], h[names[2]]
    assert isinstance(a, dict) and isinstance(b, dict)
    b["data_offsets"] = list(a["data_offsets"])


def _st_duplicate_key(header: dict[str, object], data: bytes) -> bytes:
    body = json.dumps(header).encode()
    name = _first_tensor(header)
    dup = json.dumps({name: header[name]}).encode()[1:-1]
    return _st_bytes(None, data, raw_header=body[:-1] + b", " + dup + b"}")


def _st_non_utf8_key(header: dict[str, object], data: bytes) -> bytes:
    body = json.dumps(header).encode().replace(b'"embeddings.LayerNorm.bias"', b'"embeddings.\xffLayerNorm.bias"', 1)
    return _st_bytes(None, data, raw_header=body)


ST_CASES: dict[str, Callable[[dict[str, object], bytes], bytes]] = {
    "zero-bytes": lambda h, d: b"",
    "header-only": lambda h, d: _st_bytes(h, b""),
    "negative-header-length": lambda h, d: struct.pack("<q", -8) + json.dumps(h).encode() + d,
    "header-length-past-end": lambda h, d: struct.pack("<Q", len(json.dumps(h)) + len(d) + 1) + json.dumps(h).encode(),
    "negative-offset": _st_mutate(_entry(data_offsets=[-4096, 0])),
    "reversed-offsets": _st_mutate(_entry(data_offsets=[4096, 0])),
    "offsets-past-end": _st_mutate(_entry(data_offsets=[0, 2**62])),
    "huge-offsets": _st_mutate(_entry(data_offsets=[2**64 + 1, 2**64 + 4097])),
    "float-offsets": _st_mutate(_entry(data_offsets=[0.5, 4096])),
    "negative-dim": _st_mutate(_entry(shape=[-1, -512])),
    "huge-dims": _st_mutate(_entry(shape=[2**32, 2**32, 2**32])),
    "dims-overflow-to-match": _st_mutate(_entry(shape=[2**63, 2, 512])),  # 2**64 * 512 wraps to 0 in u64
    "shape-not-a-list": _st_mutate(_entry(shape="512")),
    "unknown-dtype": _st_mutate(_entry(dtype="Q4_K")),
    "dtype-not-a-string": _st_mutate(_entry(dtype=7)),
    "overlapping-tensors": _st_mutate(_st_overlap),
    "duplicate-key": _st_duplicate_key,
    "non-utf8-key": _st_non_utf8_key,
    "metadata-not-strings": _st_mutate(lambda h: h.update({"__metadata__": {"format": ["pt"]}})),
}


@pytest.mark.parametrize("case", sorted(ST_CASES))
def test_hostile_minilm(
    case: str,
    module_client: mh.Client,
    keeper: mh.LLM,
    emb_keeper: mh.EmbeddingModel,
    minilm: tuple[dict[str, object], bytes],
    st_folder: Path,
) -> None:
    header, data = minilm
    weights = st_folder / "model.safetensors"
    weights.write_bytes(ST_CASES[case](header, data))
    assert_clean_failure(
        module_client, lambda: module_client.embedding.load_new_instance(str(st_folder)), weights, keeper
    )
    assert emb_keeper.embed("still here").shape == (384,)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(fraction=st.floats(0.0, 1.0, exclude_max=True), header_bias=st.booleans())
def test_truncated_minilm(
    fraction: float,
    header_bias: bool,
    module_client: mh.Client,
    keeper: mh.LLM,
    minilm: tuple[dict[str, object], bytes],
    st_folder: Path,
) -> None:
    header, data = minilm
    whole = _st_bytes(header, data)
    header_end = 8 + len(json.dumps(header))
    cut = int(fraction * header_end) if header_bias else header_end + int(fraction * len(data))
    weights = st_folder / "model.safetensors"
    weights.write_bytes(whole[:cut])
    assert_clean_failure(
        module_client, lambda: module_client.embedding.load_new_instance(str(st_folder)), weights, keeper
    )


# --- the published GGUF-loader vulnerabilities, as regression tests -------------------------------------------------


def _cve_file(tmp_path: Path, name: str, g: GGUFFile, data: bytes | None = None) -> Path:
    path = tmp_path / f"{name}.gguf"
    header = g.header_bytes()
    path.write_bytes(header + (data if data is not None else (g.data or b"")))
    return path


def test_cve_2024_21802_tensor_dims_past_ggml_max_dims(
    module_client: mh.Client, keeper: mh.LLM, tmp_path: Path
) -> None:
    """CVE-2024-21802 (Talos, 2024): llama.cpp's ``gguf_init_from_file`` read ``n_dims`` from the tensor info and
    then wrote that many dims into the fixed ``ne[GGML_MAX_DIMS]`` array: a heap overflow driven by a lying count.
    Here: n_dims = 5, 64 and 2**32 - 1, with the dims present in the file."""
    for n_dims in (5, 64, 2**32 - 1):
        g = tiny_llama()
        t = _tensor(g, "output_norm.weight")
        t.dims = [EMBD] + [1] * 5  # six real dims written, whatever n_dims claims
        t.n_dims = n_dims
        path = _cve_file(tmp_path, f"cve-2024-21802-{n_dims}", g)
        assert_clean_failure(module_client, _load_llm(module_client, path), path, keeper, problem="dimension")


def test_talos_2024_gguf_string_length_overflow(module_client: mh.Client, keeper: mh.LLM, tmp_path: Path) -> None:
    """The siblings of CVE-2024-21802 in Talos's 2024 GGUF report: ``gguf_fread_str`` allocated ``n + 1`` bytes for a
    string of claimed length ``n``; ``n = 2**64 - 1`` wraps to a zero-byte allocation that the read then overflows.
    Here: a key, a string value and a string inside an array each claim 2**64 - 1 bytes."""
    cases: dict[str, Callable[[GGUFFile], None]] = {
        "value": lambda g: setattr(_kv(g, "general.name"), "count", 2**64 - 1),
        "array-item": lambda g: g.kvs.append(KV("x.strings", ARRAY, ["a"], STRING)),
    }
    for name, mutate in cases.items():
        g = tiny_llama()
        mutate(g)
        header = bytearray(g.header_bytes())
        if name == "array-item":
            # Patch the array's one string length (right after the "x.strings" key, type, item type and count).
            at = header.index(b"x.strings") + len("x.strings") + 4 + 4 + 8
            header[at : at + 8] = struct.pack("<Q", 2**64 - 1)
        path = tmp_path / f"talos-string-{name}.gguf"
        path.write_bytes(bytes(header) + (g.data or b""))
        assert_clean_failure(module_client, _load_llm(module_client, path), path, keeper)
    # The very first key's length (offset 24: magic, version, two counts).
    raw = bytearray(tiny_llama().to_bytes())
    raw[24:32] = struct.pack("<Q", 2**64 - 1)
    path = tmp_path / "talos-string-key.gguf"
    path.write_bytes(bytes(raw))
    assert_clean_failure(module_client, _load_llm(module_client, path), path, keeper)


def test_talos_2024_gguf_array_count_overflow(module_client: mh.Client, keeper: mh.LLM, tmp_path: Path) -> None:
    """Talos 2024 sibling class: a metadata array's element count multiplied by the element size overflowed the
    allocation (``n * sizeof(T)`` wrapping to a small buffer), and ``n_kv`` / ``n_tensors`` did the same for the
    key-value and tensor-info tables. Here: counts of 2**61 (* 8 wraps to 0), 2**62 + 1 and 2**64 - 1."""
    for count in (2**61, 2**62 + 1, 2**64 - 1):
        for what, mutate in {
            "tokens": _set_kv("tokenizer.ggml.tokens", count=count),
            "token-type": _set_kv("tokenizer.ggml.token_type", count=count),
            "kv-count": lambda g, c=count: setattr(g, "kv_count", c),
            "tensor-count": lambda g, c=count: setattr(g, "tensor_count", c),
        }.items():
            path = tmp_path / f"talos-array-{what}-{count}.gguf"
            path.write_bytes(_with(mutate))
            assert_clean_failure(module_client, _load_llm(module_client, path), path, keeper)


def test_cve_2025_53630_tensor_size_sum_overflow(module_client: mh.Client, keeper: mh.LLM, tmp_path: Path) -> None:
    """CVE-2025-53630 (llama.cpp, 2025): ``gguf_init_from_file_impl`` summed the padded sizes of all tensors into
    ``ctx->size`` without an overflow check; tensors whose sizes add up past 2**64 wrap the total to a small
    number, the data buffer is allocated that small, and reading the tensors overflows it. Here: two tensors of
    2**63 bytes each (sum wraps to 0) and dims whose product wraps."""
    g = tiny_llama()
    g.tensors.append(TensorInfo("big.a", [2**61], F32, offset=0))  # 2**63 bytes
    g.tensors.append(TensorInfo("big.b", [2**61], F32, offset=2**63))  # another 2**63: the sum wraps to 0
    path = _cve_file(tmp_path, "cve-2025-53630-sum", g)
    assert_clean_failure(module_client, _load_llm(module_client, path), path, keeper)

    g = tiny_llama()
    # 2**32 * 2**32 = 2**64 elements: wraps to 0 in 64-bit arithmetic, so the tensor "needs" no bytes.
    _tensor(g, "output_norm.weight").dims = [2**32, 2**32]
    path = _cve_file(tmp_path, "cve-2025-53630-numel", g)
    assert_clean_failure(module_client, _load_llm(module_client, path), path, keeper, problem="overflow")


def test_cve_2026_27940_padded_size_overflow(module_client: mh.Client, keeper: mh.LLM, tmp_path: Path) -> None:
    """CVE-2026-27940 (llama.cpp, 2026), the bypass of the CVE-2025-53630 fix: the sum was checked, but each
    tensor's size was padded to the alignment (``GGML_PAD(nbytes, align)``) and the element count times the type
    size computed first, either of which can wrap before the check sees it, again giving an undersized allocation
    and a heap overflow from ``fread``. Here: a Q8_0 tensor whose blocks * 34 wraps to a small size, an F32 tensor
    of 2**64 - 4 bytes (padding wraps to 0), a huge alignment, and a dim of 2**42 + 1 (as in llama.cpp #18674)."""
    variants: dict[str, Callable[[GGUFFile], None]] = {
        # 2**64 / 34 rounded up to whole blocks: blocks * 34 wraps past 2**64 to a small number.
        "q8-bytes-wrap": lambda g: g.tensors.append(TensorInfo("wrap.q8", [(2**64 // 34 + 1) * 32], Q8_0)),
        # (2**62 - 1) F32 elements = 2**64 - 4 bytes: padding to 32 wraps to 0.
        "pad-wraps": lambda g: g.tensors.append(TensorInfo("wrap.pad", [2**62 - 1], F32)),
        "huge-alignment": lambda g: g.kvs.append(KV("general.alignment", UINT32, 2**31)),
        "alignment-u64": lambda g: g.kvs.append(KV("general.alignment", UINT64, 2**63)),
        "embd-2^42+1": _set_tensor("token_embd.weight", dims=[EMBD, 2**42 + 1]),
        "negative-as-int64": _set_tensor("token_embd.weight", dims=[EMBD, 2**63 + 276]),
    }
    for name, mutate in variants.items():
        g = tiny_llama()
        mutate(g)
        path = _cve_file(tmp_path, f"cve-2026-27940-{name}", g)
        assert_clean_failure(module_client, _load_llm(module_client, path), path, keeper)


def test_cve_2026_7482_bleeding_llama_dims_lie_about_data(
    module_client: mh.Client, keeper: mh.LLM, tmp_path: Path
) -> None:
    """CVE-2026-7482 "Bleeding Llama" (Ollama < 0.17.1): the GGUF loader trusted each tensor's declared offset and
    shape without checking them against the file's length, so a tensor whose dims claim more data than the file
    holds made the quantizer read past the end of its buffer and copy heap memory into the output. Here: dims that
    claim more rows than exist, a last tensor that runs past the end, a file cut inside the data, and an offset that
    points into the header (must not be read as weights either: offsets are relative to the data section)."""
    variants: dict[str, Callable[[], bytes]] = {
        "more-rows": lambda: _with(_set_tensor("output_norm.weight", dims=[EMBD * 1024])),
        "embd-more-vocab": lambda: _with(_set_tensor("token_embd.weight", dims=[EMBD, len(TOKENS) * 64])),
        "cut-in-data": lambda: tiny_llama().to_bytes()[:-100],
        "last-past-end": lambda: _with(lambda g: setattr(_tensor(g, "output_norm.weight"), "offset", 2**20)),
    }
    for name, build in variants.items():
        path = tmp_path / f"cve-2026-7482-{name}.gguf"
        path.write_bytes(build())
        assert_clean_failure(module_client, _load_llm(module_client, path), path, keeper, problem=None)


# --- a random storm of hostile files while requests run ------------------------------------------------------------


def test_hostile_loads_while_requests_run(module_client: mh.Client, keeper: mh.LLM, tmp_path: Path) -> None:
    """Failed loads on one thread while SmolLM2 generates on another: no request fails, nothing is left behind."""
    import threading

    stop = threading.Event()
    failures: list[BaseException] = []

    def generate() -> None:
        while not stop.is_set():
            try:
                keeper.complete("Hello", {"maxTokens": 2})
            except BaseException as e:
                failures.append(e)
                return

    worker = threading.Thread(target=generate)
    worker.start()
    mapped = _core.mapped_file_count()
    rng = random.Random(7)
    try:
        cases = sorted(TINY_CASES)
        for i in range(20):
            build, _ = TINY_CASES[rng.choice(cases)]
            path = tmp_path / f"storm-{i}.gguf"
            path.write_bytes(build())
            with pytest.raises(mh.ModelLoadError):
                module_client.llm.load_new_instance(str(path))
    finally:
        stop.set()
        worker.join(30)
    assert not failures, failures
    assert _core.mapped_file_count() == mapped
