"""SPEC §2: the catalog (from headers only), model keys, aliases, paths and the GGUF header parser."""

from __future__ import annotations

from pathlib import Path

import modelhost as lms
import pytest
from gguf_writer import read_gguf_header
from helpers import EMB_ALIAS, EMB_KEY, LLM_ALIAS, LLM_KEY, emb_path, link_or_copy, llm_path
from modelhost import _core

pytestmark = pytest.mark.timeout(60)


def test_list_downloaded_models(client: lms.Client, models_dir: Path) -> None:
    before = _core.mapped_file_count()
    models = client.list_downloaded_models()
    assert _core.mapped_file_count() == before  # headers only: nothing stays mapped
    by_key = {m.model_key: m for m in models}
    assert {LLM_KEY, EMB_KEY} <= set(by_key)

    llm = by_key[LLM_KEY]
    assert isinstance(llm, lms.DownloadedModel)
    assert (llm.type, llm.format, llm.architecture) == ("llm", "gguf", "llama")
    assert Path(llm.path) == llm_path(models_dir)
    assert llm.size_bytes == llm_path(models_dir).stat().st_size
    assert llm.quantization == "Q4_1"
    assert llm.max_context_length == 8192
    assert llm.params_string == "135M"
    assert llm.display_name
    assert llm.vision is False

    emb = by_key[EMB_KEY]
    assert (emb.type, emb.format, emb.architecture) == ("embedding", "safetensors", "bert")
    assert Path(emb.path) == emb_path(models_dir)
    assert emb.size_bytes >= (emb_path(models_dir) / "model.safetensors").stat().st_size
    assert emb.max_context_length is not None and emb.max_context_length >= 256
    assert emb.display_name


def test_list_downloaded_by_kind(client: lms.Client) -> None:
    llms = client.list_downloaded_models("llm")
    embeddings = client.list_downloaded_models("embedding")
    assert {m.type for m in llms} == {"llm"}
    assert {m.type for m in embeddings} == {"embedding"}
    assert LLM_KEY in {m.model_key for m in llms}
    assert EMB_KEY in {m.model_key for m in embeddings}
    assert client.llm.list_downloaded() == llms
    assert client.embedding.list_downloaded() == embeddings
    with pytest.raises(ValueError):
        client.list_downloaded_models("image")


def test_downloaded_model_loads_itself(client: lms.Client) -> None:
    (entry,) = [m for m in client.list_downloaded_models("llm") if m.model_key == LLM_KEY]
    handle = entry.model()
    assert isinstance(handle, lms.LLM)
    assert handle.model_key == LLM_KEY
    second = entry.load_new_instance(instance_identifier="from-listing")
    assert second.identifier == "from-listing"
    (emb_entry,) = [m for m in client.list_downloaded_models("embedding") if m.model_key == EMB_KEY]
    assert isinstance(emb_entry.model(), lms.EmbeddingModel)


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        (LLM_KEY, LLM_KEY),
        (LLM_ALIAS, LLM_KEY),
        ("SmolLM2-135M-Instruct-GGUF", LLM_KEY),
        (LLM_KEY.lower(), LLM_KEY),
    ],
)
def test_keys_and_aliases_resolve(client: lms.Client, key: str, expected: str) -> None:
    assert client.llm.model(key).model_key == expected


@pytest.mark.parametrize("key", [EMB_KEY, EMB_ALIAS, "all-MiniLM-L6-v2"])
def test_embedding_keys_and_aliases_resolve(client: lms.Client, key: str) -> None:
    assert client.embedding.model(key).model_key == EMB_KEY


def test_absolute_paths_are_always_accepted(client: lms.Client, models_dir: Path, tmp_path: Path) -> None:
    llm = client.llm.model(str(llm_path(models_dir)))
    assert Path(llm.get_info().path) == llm_path(models_dir)
    assert client.llm.model(llm_path(models_dir)) == llm  # a Path works too
    outside = link_or_copy(llm_path(models_dir), tmp_path / "elsewhere" / "model.gguf")
    other = client.llm.model(str(outside))
    assert Path(other.get_info().path) == outside
    assert other.complete("Hi", {"maxTokens": 1}).stats.predicted_tokens_count == 1
    emb = client.embedding.model(str(emb_path(models_dir)))
    assert Path(emb.get_info().path) == emb_path(models_dir)


def test_unknown_key_lists_close_matches(client: lms.Client) -> None:
    with pytest.raises(lms.ModelNotFoundError) as info:
        client.llm.model("smollm2-135m-instrukt")
    assert isinstance(info.value, LookupError)
    assert LLM_KEY in str(info.value)
    with pytest.raises(lms.ModelNotFoundError, match="qwen"):
        client.llm.model("qwen/qwen3-4b-2507")
    with pytest.raises(lms.ModelNotFoundError):
        client.llm.load_new_instance("nothing-like-it")
    assert client.list_loaded_models() == []


def test_ambiguous_alias(models_dir: Path, tmp_path: Path) -> None:
    for publisher in ("alpha", "beta"):
        link_or_copy(llm_path(models_dir), tmp_path / publisher / "Twin-GGUF" / "twin.gguf")
    with lms.Client(tmp_path) as client:
        keys = {m.model_key for m in client.list_downloaded_models()}
        assert keys == {"alpha/Twin-GGUF", "beta/Twin-GGUF"}
        for alias in ("Twin-GGUF", "twin-gguf"):
            with pytest.raises(lms.ModelNotFoundError) as info:
                client.llm.model(alias)
            assert "alpha/Twin-GGUF" in str(info.value) and "beta/Twin-GGUF" in str(info.value)
        assert client.llm.model("alpha/Twin-GGUF").model_key == "alpha/Twin-GGUF"
        assert client.list_loaded_models()[0].model_key == "alpha/Twin-GGUF"


def test_a_repo_with_several_ggufs_has_one_key_per_file(models_dir: Path, tmp_path: Path) -> None:
    for name in ("model-a.gguf", "model-b.gguf"):
        link_or_copy(llm_path(models_dir), tmp_path / "pub" / "Multi-GGUF" / name)
    with lms.Client(tmp_path) as client:
        keys = {m.model_key for m in client.list_downloaded_models()}
        assert keys == {"pub/Multi-GGUF/model-a.gguf", "pub/Multi-GGUF/model-b.gguf"}
        assert client.llm.model("pub/Multi-GGUF/model-b.gguf").get_info().path.endswith("model-b.gguf")
        with pytest.raises(lms.ModelNotFoundError):
            client.llm.model("pub/Multi-GGUF")


def test_models_dir_resolution(models_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELHOST_MODELS_DIR", str(tmp_path))
    with lms.Client() as client:
        assert Path(client.models_dir) == tmp_path
        assert client.list_downloaded_models() == []
    with lms.Client(models_dir) as client:
        assert Path(client.models_dir) == models_dir
    monkeypatch.delenv("MODELHOST_MODELS_DIR")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert lms.default_models_dir() == tmp_path / ".cache" / "modelhost" / "models"


def test_missing_models_dir_is_an_empty_catalog(tmp_path: Path) -> None:
    with lms.Client(tmp_path / "does-not-exist") as client:
        assert client.list_downloaded_models() == []
        with pytest.raises(lms.ModelNotFoundError):
            client.llm.model(LLM_ALIAS)


def test_parse_gguf_header_of_the_real_file(models_dir: Path) -> None:
    header = _core.parse_gguf_header(str(llm_path(models_dir)))
    ours, _ = read_gguf_header(llm_path(models_dir))
    assert header["version"] == 3
    assert header["metadata"]["general.architecture"] == "llama"
    assert header["metadata"]["llama.context_length"] == 8192
    assert len(header["tensors"]) == len(ours.tensors) == 272
    tokens = header["metadata"].get("tokenizer.ggml.tokens")
    assert not (isinstance(tokens, list) and len(tokens) == 49152), "arrays are elided"
