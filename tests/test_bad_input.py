"""SPEC §7: hostile files and bad arguments.

Every bad file gives ModelLoadError naming the file, allocates nothing proportional to a lying header, leaves no
instance, mapping or thread behind, and leaves every other loaded instance working. The hostile GGUFs are the real
SmolLM2 header with one field made to lie (the data section is a sparse file, so they cost no disk).
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import struct
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import modelhost as lms
import pytest
from gguf_writer import ARRAY, F32, KV, Q4_1, STRING, UINT32, GGUFFile, read_gguf_header, tiny_gguf
from helpers import (
    EMB_KEY,
    LLM_KEY,
    emb_path,
    llm_path,
    mapping_lines,
    peak_rss_bytes,
    thread_count,
    wait_until,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from modelhost import _core

pytestmark = pytest.mark.timeout(120)

LYING_ALLOCATION_LIMIT = 64 * 1024 * 1024


@dataclass
class Hostile:
    """A hostile file: its bytes (header) and total size (the rest is zeros), and whether the header parser sees it."""

    header: bytes
    total_size: int
    header_is_bad: bool = True


@pytest.fixture(scope="module")
def real_header(models_dir: Path) -> tuple[GGUFFile, int]:
    g, data_start = read_gguf_header(llm_path(models_dir))
    return g, llm_path(models_dir).stat().st_size - data_start


def _kv(g: GGUFFile, key: bytes) -> KV:
    return next(kv for kv in g.kvs if kv.key == key)


def _whole(g: GGUFFile, data_size: int, *, header_is_bad: bool = True) -> Hostile:
    header = g.header_bytes()
    return Hostile(header, len(header) + data_size, header_is_bad)


def _mutated(mutate: Callable[[GGUFFile], None], *, header_is_bad: bool = True) -> Callable[[GGUFFile, int], Hostile]:
    def build(g: GGUFFile, data_size: int) -> Hostile:
        g = copy.deepcopy(g)
        mutate(g)
        return _whole(g, data_size, header_is_bad=header_is_bad)

    return build


def _set(attr: str, value: object) -> Callable[[GGUFFile], None]:
    return lambda g: setattr(g, attr, value)


def _tensor(index: int, **changes: object) -> Callable[[GGUFFile], None]:
    def mutate(g: GGUFFile) -> None:
        for name, value in changes.items():
            setattr(g.tensors[index], name, value)

    return mutate


def _kv_change(which: bytes, **changes: object) -> Callable[[GGUFFile], None]:
    def mutate(g: GGUFFile) -> None:
        for name, value in changes.items():
            setattr(_kv(g, which), name, value)

    return mutate


def _drop_kv(key: bytes) -> Callable[[GGUFFile], None]:
    def mutate(g: GGUFFile) -> None:
        g.kvs = [kv for kv in g.kvs if kv.key != key]

    return mutate


def _truncated(keep: Callable[[int, int], int]) -> Callable[[GGUFFile, int], Hostile]:
    def build(g: GGUFFile, data_size: int) -> Hostile:
        header = g.header_bytes()
        total = keep(len(header), data_size)
        return Hostile(header[:total], total, True)

    return build


def _patched(offset: int, raw: bytes) -> Callable[[GGUFFile, int], Hostile]:
    def build(g: GGUFFile, data_size: int) -> Hostile:
        header = bytearray(g.header_bytes())
        header[offset : offset + len(raw)] = raw
        return Hostile(bytes(header), len(header) + data_size, True)

    return build


def _last_offset_past_end(g: GGUFFile) -> None:
    g.tensors[-1].offset = 10 * 1024**3


def _overlap(g: GGUFFile) -> None:
    g.tensors[1].offset = g.tensors[0].offset


def _misalign(g: GGUFFile) -> None:
    offset = g.tensors[1].offset
    assert offset is not None
    g.tensors[1].offset = offset + 1


def _no_tensors(g: GGUFFile) -> None:
    g.tensors = []


GGUF_CASES: dict[str, Callable[[GGUFFile, int], Hostile]] = {
    "empty": lambda g, n: Hostile(b"", 0),
    "magic-only": lambda g, n: Hostile(b"GGUF", 4),
    "wrong-magic": _mutated(_set("magic", b"GGML")),
    "version-1": _mutated(_set("version", 1)),
    "version-99": _mutated(_set("version", 99)),
    "truncated-in-counts": _truncated(lambda h, n: 16),
    "truncated-in-metadata": _truncated(lambda h, n: 200_000),
    "truncated-in-tensor-infos": _truncated(lambda h, n: h - 200),
    "truncated-data": _truncated(lambda h, n: h + n // 2),
    "huge-tensor-count": _mutated(_set("tensor_count", 2**60)),
    "huge-kv-count": _mutated(_set("kv_count", 2**60)),
    "negative-kv-count": _mutated(_set("kv_count", 2**64 - 1)),
    "lying-key-length": _patched(24, struct.pack("<Q", 2**62)),
    "lying-array-length": _mutated(_kv_change(b"tokenizer.ggml.tokens", count=2**50)),
    "lying-string-length": _mutated(_kv_change(b"general.name", count=2**40)),
    "unknown-value-type": _mutated(_kv_change(b"general.file_type", type=99)),
    "non-utf8-key": _mutated(_kv_change(b"general.name", key=b"general.\xff\xfe")),
    "non-utf8-string": _mutated(_kv_change(b"general.name", value=b"\xff\xfe\xfd")),
    "huge-dims": _mutated(_tensor(0, dims=[576, 2**40])),
    "dims-overflow": _mutated(_tensor(0, dims=[2**32, 2**32, 2**32])),
    "too-many-dims": _mutated(_tensor(0, n_dims=99)),
    "unknown-dtype": _mutated(_tensor(1, type=999)),
    "block-size-mismatch": _mutated(_tensor(2, dims=[33, 576], type=Q4_1)),
    "offset-past-end": _mutated(_last_offset_past_end),
    "misaligned-offset": _mutated(_misalign),
    "overlapping-tensors": _mutated(_overlap),
    "bad-alignment": _mutated(lambda g: g.kvs.append(KV("general.alignment", UINT32, 3))),
    "zero-alignment": _mutated(lambda g: g.kvs.append(KV("general.alignment", UINT32, 0))),
    "no-tensors": _mutated(_no_tensors, header_is_bad=False),
    "no-architecture": _mutated(_drop_kv(b"general.architecture"), header_is_bad=False),
    "unsupported-architecture": _mutated(_kv_change(b"general.architecture", value="mamba"), header_is_bad=False),
    "huge-block-count": _mutated(_kv_change(b"llama.block_count", value=2**31), header_is_bad=False),
    "huge-embedding-length": _mutated(_kv_change(b"llama.embedding_length", value=2**31), header_is_bad=False),
    "no-tokenizer": _mutated(_drop_kv(b"tokenizer.ggml.tokens"), header_is_bad=False),
    "tokens-not-strings": _mutated(
        _kv_change(b"tokenizer.ggml.tokens", item_type=UINT32, value=list(range(49152))), header_is_bad=False
    ),
}


def _write(path: Path, hostile: Hostile) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(hostile.header)
        f.truncate(hostile.total_size)  # sparse zeros for the data section
    return path


@pytest.fixture(scope="module")
def keeper(module_client: lms.Client) -> lms.LLM:
    """An instance that must keep working after every failure (warmed up, so its threads exist)."""
    llm = module_client.llm.model(LLM_KEY, ttl=None, config={"contextLength": 512})
    llm.complete("Hello", {"maxTokens": 2})
    return llm


@pytest.fixture(scope="module")
def emb_keeper(module_client: lms.Client) -> lms.EmbeddingModel:
    emb = module_client.embedding.model(EMB_KEY, ttl=None)
    emb.embed(["warm up"])
    return emb


def _assert_clean_failure(
    client: lms.Client,
    load: Callable[[], object],
    path: Path,
    keepers: list[lms.ModelHandle],
    allowance: int = LYING_ALLOCATION_LIMIT,
) -> lms.ModelLoadError:
    loaded = [(h.identifier, h.instance_reference) for h in client.list_loaded_models()]
    mapped = _core.mapped_file_count()
    threads = thread_count()
    peak = peak_rss_bytes()
    with pytest.raises(lms.ModelLoadError) as info:
        load()
    assert isinstance(info.value, ValueError)
    assert path.name in str(info.value), f"the error does not name the file: {info.value}"
    assert peak_rss_bytes() - peak < allowance, "allocated in proportion to a lying header"
    assert [(h.identifier, h.instance_reference) for h in client.list_loaded_models()] == loaded
    assert _core.mapped_file_count() == mapped
    assert mapping_lines(path) == []
    wait_until(lambda: thread_count() <= threads, timeout=2)
    for keeper in keepers:
        if isinstance(keeper, lms.LLM):
            assert keeper.complete("Hello", {"maxTokens": 1}).stats.predicted_tokens_count == 1
        elif isinstance(keeper, lms.EmbeddingModel):
            assert keeper.embed("still here").shape == (384,)
    return info.value


@pytest.mark.parametrize("case", sorted(GGUF_CASES))
def test_hostile_gguf(
    case: str,
    real_header: tuple[GGUFFile, int],
    module_client: lms.Client,
    keeper: lms.LLM,
    tmp_path: Path,
) -> None:
    g, data_size = real_header
    hostile = GGUF_CASES[case](g, data_size)
    path = _write(tmp_path / f"hostile-{case}.gguf", hostile)
    _assert_clean_failure(module_client, lambda: module_client.llm.model(str(path)), path, [keeper])
    _assert_clean_failure(module_client, lambda: module_client.llm.load_new_instance(str(path)), path, [keeper])
    if hostile.header_is_bad:
        peak = peak_rss_bytes()
        with pytest.raises(lms.ModelLoadError) as info:
            _core.parse_gguf_header(str(path))
        assert path.name in str(info.value)
        assert peak_rss_bytes() - peak < LYING_ALLOCATION_LIMIT


def test_hostile_files_in_the_catalog(
    real_header: tuple[GGUFFile, int], models_dir: Path, tmp_path: Path, keeper: lms.LLM
) -> None:
    g, data_size = real_header
    for case, build in GGUF_CASES.items():
        _write(tmp_path / "hostile" / f"{case}-GGUF" / f"{case}.gguf", build(g, data_size))
    shutil.copytree(emb_path(models_dir), tmp_path / "good" / "minilm", copy_function=_link)
    with lms.Client(tmp_path) as client:
        listed = {m.model_key for m in client.list_downloaded_models()}  # must not raise
        assert "good/minilm" in listed
        for case in ("truncated-in-metadata", "wrong-magic", "huge-tensor-count"):
            key = f"hostile/{case}-GGUF"
            # A broken file is either left out of the catalog or fails to load, naming the file.
            with pytest.raises((lms.ModelLoadError, lms.ModelNotFoundError)) as info:
                client.llm.model(key)
            if isinstance(info.value, lms.ModelLoadError):
                assert f"{case}.gguf" in str(info.value)
        assert client.embedding.model("good/minilm").embed("ok").shape == (384,)
        assert client.list_loaded_models()[0].model_key == "good/minilm"


def _link(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


# --- safetensors folders -------------------------------------------------------------------------------------------

_SMALL_FILES = [
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


def _safetensors(header: object, data: bytes = b"", *, raw_header: bytes | None = None) -> bytes:
    raw = raw_header if raw_header is not None else json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


def _f32(shape: list[int], begin: int, end: int, dtype: str = "F32") -> dict[str, object]:
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


SAFETENSORS_CASES: dict[str, Callable[[bytes], bytes]] = {
    "empty": lambda real: b"",
    "short": lambda real: b"\x01\x02",
    "zero-header": lambda real: struct.pack("<Q", 0),
    "huge-header-length": lambda real: struct.pack("<Q", 2**60) + b"{}",
    "header-past-end": lambda real: struct.pack("<Q", 1000) + b'{"a": 1}',
    "malformed-json": lambda real: _safetensors(None, raw_header=b'{"w": {"dtype": "F32", '),
    "non-utf8-header": lambda real: _safetensors(None, raw_header=b'{"\xff\xfe": 1}'),
    "header-not-object": lambda real: _safetensors([1, 2, 3]),
    "offsets-past-end": lambda real: _safetensors({"w": _f32([2, 2], 0, 16)}, b"\0" * 8),
    "hole-between-tensors": lambda real: _safetensors(
        {"a": _f32([2, 2], 0, 16), "b": _f32([2, 2], 32, 48)}, b"\0" * 48
    ),
    "overlapping-tensors": lambda real: _safetensors({"a": _f32([2, 2], 0, 16), "b": _f32([2, 2], 8, 24)}, b"\0" * 24),
    "size-mismatch": lambda real: _safetensors({"w": _f32([2, 2], 0, 12)}, b"\0" * 12),
    "unknown-dtype": lambda real: _safetensors({"w": _f32([2, 2], 0, 16, "F9")}, b"\0" * 16),
    "huge-shape": lambda real: _safetensors({"w": _f32([2**40, 2**40], 0, 16)}, b"\0" * 16),
    "negative-offset": lambda real: _safetensors({"w": _f32([2, 2], -16, 0)}, b"\0" * 16),
    "truncated-real": lambda real: real[: 1 << 20],
    "valid-but-no-model-tensors": lambda real: _safetensors({"w": _f32([2, 2], 0, 16)}, b"\0" * 16),
}


@pytest.fixture(scope="module")
def real_safetensors_head(models_dir: Path) -> bytes:
    with open(emb_path(models_dir) / "model.safetensors", "rb") as f:
        return f.read(1 << 20)


def _embedding_folder(models_dir: Path, folder: Path) -> Path:
    for name in _SMALL_FILES:
        src = emb_path(models_dir) / name
        if src.exists():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, folder / name)
    return folder


@pytest.mark.parametrize("case", sorted(SAFETENSORS_CASES))
def test_hostile_safetensors(
    case: str,
    models_dir: Path,
    module_client: lms.Client,
    keeper: lms.LLM,
    emb_keeper: lms.EmbeddingModel,
    tmp_path: Path,
    real_safetensors_head: bytes,
) -> None:
    folder = _embedding_folder(models_dir, tmp_path / f"hostile-{case}")
    weights = folder / "model.safetensors"
    weights.write_bytes(SAFETENSORS_CASES[case](real_safetensors_head))
    error = _assert_clean_failure(
        module_client, lambda: module_client.embedding.model(str(folder)), weights, [keeper, emb_keeper]
    )
    assert folder.name in str(error)


def _with_real_weights(models_dir: Path, folder: Path) -> Path:
    _embedding_folder(models_dir, folder)
    _link(str(emb_path(models_dir) / "model.safetensors"), str(folder / "model.safetensors"))
    return folder


@pytest.mark.parametrize(
    ("case", "file", "content"),
    [
        ("malformed-config", "config.json", b'{"hidden_size": '),
        ("config-not-json-object", "config.json", b"[]"),
        ("lying-config", "config.json", None),  # hidden_size 2**40: must not allocate it
        ("malformed-tokenizer", "tokenizer.json", b'{"model": {"vocab": '),
        ("non-utf8-tokenizer", "tokenizer.json", b'{"\xff": 1}'),
        ("malformed-pooling", "1_Pooling/config.json", b"{"),
        ("malformed-modules", "modules.json", b"[{]"),
    ],
)
def test_hostile_side_files(
    case: str,
    file: str,
    content: bytes | None,
    models_dir: Path,
    module_client: lms.Client,
    emb_keeper: lms.EmbeddingModel,
    tmp_path: Path,
) -> None:
    folder = _with_real_weights(models_dir, tmp_path / f"side-{case}")
    if content is None:
        config = json.loads((emb_path(models_dir) / "config.json").read_text())
        config["hidden_size"] = 2**40
        config["intermediate_size"] = 2**40
        content = json.dumps(config).encode()
    (folder / file).write_bytes(content)
    # The real weights may be read before the bad side file is: allow for them, not for a lying header.
    allowance = (folder / "model.safetensors").stat().st_size + LYING_ALLOCATION_LIMIT
    error = _assert_clean_failure(
        module_client, lambda: module_client.embedding.model(str(folder)), folder / file, [emb_keeper], allowance
    )
    assert folder.name in str(error)


def test_missing_tokenizer(models_dir: Path, module_client: lms.Client, tmp_path: Path) -> None:
    folder = _with_real_weights(models_dir, tmp_path / "no-tokenizer")
    (folder / "tokenizer.json").unlink()
    with pytest.raises(lms.ModelLoadError) as info:
        module_client.embedding.model(str(folder))
    assert folder.name in str(info.value)


def test_folders_without_weights(module_client: lms.Client, models_dir: Path, tmp_path: Path) -> None:
    config_only = _embedding_folder(models_dir, tmp_path / "models" / "pub" / "config-only")
    empty = tmp_path / "models" / "pub" / "empty"
    empty.mkdir(parents=True)
    for folder in (config_only, empty):
        with pytest.raises(lms.ModelLoadError) as info:
            module_client.embedding.model(str(folder))
        assert folder.name in str(info.value)
    with lms.Client(tmp_path / "models") as client:
        assert client.list_downloaded_models() == []  # not models
        for key in ("pub/config-only", "pub/empty"):
            with pytest.raises(lms.ModelNotFoundError):
                client.embedding.model(key)


def test_missing_file_is_an_os_error(module_client: lms.Client, tmp_path: Path) -> None:
    with pytest.raises((FileNotFoundError, lms.ModelNotFoundError)):
        module_client.llm.model(str(tmp_path / "nope.gguf"))


# --- the header parser under fuzzing --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_bytes() -> bytes:
    return tiny_gguf().to_bytes()


def test_tiny_gguf_is_valid(tmp_path: Path, tiny_bytes: bytes) -> None:
    path = tmp_path / "tiny.gguf"
    path.write_bytes(tiny_bytes)
    header = _core.parse_gguf_header(str(path))
    assert header["version"] == 3
    assert header["metadata"]["general.name"] == "tiny test model"
    assert len(header["tensors"]) == 3


def test_every_truncation_of_a_gguf_is_rejected(tmp_path: Path, tiny_bytes: bytes) -> None:
    path = tmp_path / "cut.gguf"
    for n in range(len(tiny_bytes)):
        path.write_bytes(tiny_bytes[:n])
        with pytest.raises(lms.ModelLoadError):
            _core.parse_gguf_header(str(path))


def _fuzz_parse(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fuzz.gguf"
        path.write_bytes(data)
        try:
            header = _core.parse_gguf_header(str(path))
        except lms.ModelLoadError as e:
            assert "fuzz.gguf" in str(e)
        else:
            assert isinstance(header, dict)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_fuzz_gguf_header_byte_mutations(data: st.DataObject) -> None:
    original = tiny_gguf().to_bytes()
    raw = bytearray(original)
    for _ in range(data.draw(st.integers(1, 8))):
        position = data.draw(st.integers(0, len(raw) - 1))
        raw[position] = data.draw(st.integers(0, 255))
    _fuzz_parse(bytes(raw))


@settings(max_examples=100, deadline=None)
@given(
    tensor_count=st.one_of(st.integers(0, 8), st.integers(0, 2**64 - 1)),
    kv_count=st.one_of(st.integers(0, 8), st.integers(0, 2**64 - 1)),
    dims=st.lists(st.integers(0, 2**64 - 1), min_size=0, max_size=6),
    ggml_type=st.one_of(st.sampled_from([F32, Q4_1]), st.integers(0, 2**32 - 1)),
    offset=st.one_of(st.just(0), st.integers(0, 2**64 - 1)),
    string_count=st.one_of(st.none(), st.integers(0, 2**64 - 1)),
)
def test_fuzz_gguf_header_lying_fields(
    tensor_count: int, kv_count: int, dims: list[int], ggml_type: int, offset: int, string_count: int | None
) -> None:
    g = tiny_gguf()
    g.tensor_count = tensor_count
    g.kv_count = kv_count
    g.tensors[0].dims = dims
    g.tensors[0].type = ggml_type
    g.tensors[1].offset = offset
    g.kvs.append(KV("fuzz.array", ARRAY, ["x"], STRING, count=string_count))
    _fuzz_parse(g.to_bytes(max_data=1 << 16))


# --- bad API arguments -------------------------------------------------------------------------------------------


@pytest.fixture
def llm_handle(keeper: lms.LLM) -> Iterator[lms.LLM]:
    yield keeper
    assert keeper.count_tokens("still fine") > 0


def test_bad_arguments_raise_type_or_value_errors(
    llm_handle: lms.LLM, emb_keeper: lms.EmbeddingModel, module_client: lms.Client
) -> None:
    with pytest.raises(TypeError):
        llm_handle.tokenize(123)  # type: ignore[call-overload]
    with pytest.raises(TypeError):
        llm_handle.tokenize(["ok", None])  # type: ignore[list-item]
    with pytest.raises(TypeError):
        llm_handle.count_tokens(["a"])  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        llm_handle.complete(["a"])  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        llm_handle.evaluate("abc")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        llm_handle.evaluate([1, "2"])  # type: ignore[list-item]
    with pytest.raises(TypeError):
        llm_handle.evaluate([1.5])  # type: ignore[list-item]
    with pytest.raises(ValueError):
        llm_handle.evaluate([49152])  # past the vocabulary
    with pytest.raises(ValueError):
        llm_handle.evaluate([-1])
    with pytest.raises(ValueError):
        llm_handle.respond({"messages": [{"role": "wizard", "content": "x"}]})
    with pytest.raises(TypeError):
        emb_keeper.embed(["a", 1])  # type: ignore[list-item]
    with pytest.raises(TypeError):
        emb_keeper.embed(b"bytes")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        emb_keeper.embed(None)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        module_client.llm.model(123)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        module_client.llm.model(LLM_KEY, ttl="1h")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        module_client.llm.load_new_instance(LLM_KEY, 5)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        module_client.llm.load_new_instance(LLM_KEY, ttl=-1)
    with pytest.raises(ValueError):
        module_client.list_loaded_models("everything")
    with pytest.raises(lms.InvalidConfigError):
        module_client.llm.model(LLM_KEY, config={"contextLength": "4k"})


def test_embedding_handles_have_no_llm_methods(emb_keeper: lms.EmbeddingModel) -> None:
    assert not hasattr(emb_keeper, "respond")
    assert not hasattr(emb_keeper, "complete")


def test_context_length_exceeded(module_client: lms.Client) -> None:
    small = module_client.llm.load_new_instance(
        LLM_KEY, "small-context", config={"contextLength": 64, "evalBatchSize": 64}
    )
    try:
        long_prompt = "one two three four five six seven eight nine ten " * 10
        with pytest.raises(lms.ContextLengthExceededError) as info:
            small.complete(long_prompt, {"maxTokens": 1})
        assert isinstance(info.value, ValueError)
        with pytest.raises(lms.ContextLengthExceededError):
            small.respond(long_prompt)
        with pytest.raises(lms.ContextLengthExceededError):
            small.evaluate(small.tokenize(long_prompt))
        # A prompt that fits generates until the context is full.
        result = small.complete("1, 2, 3, 4, 5,", {"maxTokens": False, "temperature": 0})
        assert result.stats.stop_reason == "contextLengthReached"
        assert result.stats.total_tokens_count is not None and result.stats.total_tokens_count <= 64
        assert small.complete("Hi", {"maxTokens": 1}).stats.predicted_tokens_count == 1
    finally:
        small.unload()
