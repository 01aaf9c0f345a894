"""The embedding handle on all-MiniLM-L6-v2, against sentence-transformers (SPEC §6)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import modelhost as lms
import numpy as np
import pytest
from helpers import EMB_KEY, emb_path, load_ref

pytestmark = pytest.mark.timeout(120)

REF = load_ref("minilm.json")
CASES: list[dict[str, Any]] = REF["cases"]
DIM = 384


def _check_close(ours: np.ndarray, reference: list[float]) -> None:
    ref = np.asarray(reference, dtype=np.float64)
    got = ours.astype(np.float64)
    cosine = float(got @ ref / (np.linalg.norm(got) * np.linalg.norm(ref)))
    assert cosine >= 0.99999, cosine
    assert float(np.max(np.abs(got - ref))) <= 1e-4


def test_batch_matches_sentence_transformers(emb: lms.EmbeddingModel) -> None:
    vectors = emb.embed([case["text"] for case in CASES])
    assert vectors.dtype == np.float32
    assert vectors.shape == (len(CASES), DIM)
    for vector, case in zip(vectors, CASES):
        _check_close(vector, case["embedding"])
    similarity = vectors @ vectors.T
    np.testing.assert_allclose(similarity, REF["cosine_similarity_matrix_of_embeddings"], atol=1e-4)


@pytest.mark.parametrize("case", CASES, ids=lambda c: repr(c["text"][:20]))
def test_single_text(emb: lms.EmbeddingModel, case: dict[str, Any]) -> None:
    vector = emb.embed(case["text"])
    assert vector.shape == (DIM,)
    assert vector.dtype == np.float32
    _check_close(vector, case["embedding"])
    assert float(np.linalg.norm(vector)) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("case", CASES, ids=lambda c: repr(c["text"][:20]))
def test_tokenize_matches_sentence_transformers(emb: lms.EmbeddingModel, case: dict[str, Any]) -> None:
    ids = emb.tokenize(case["text"])
    assert ids == case["input_ids"]  # [CLS] ... [SEP], truncated at max_seq_length=256
    assert emb.count_tokens(case["text"]) == case["n_tokens"]


def test_shapes_and_input_types(emb: lms.EmbeddingModel) -> None:
    assert emb.embed([]).shape == (0, DIM)
    assert emb.embed([]).dtype == np.float32
    assert emb.embed(("a", "b")).shape == (2, DIM)
    assert emb.embed(iter(["a", "b", "c"])).shape == (3, DIM)
    np.testing.assert_allclose(emb.embed(["a"])[0], emb.embed("a"), atol=1e-6)
    for bad in (["a", 1], [None], b"text", 42, None, [b"a"]):
        with pytest.raises(TypeError):
            emb.embed(bad)  # type: ignore[arg-type]


def test_padding_does_not_change_vectors(emb: lms.EmbeddingModel) -> None:
    short, long = "short", " ".join(["a much longer sentence"] * 20)
    together = emb.embed([short, long])
    np.testing.assert_allclose(together[0], emb.embed(short), atol=1e-5)
    np.testing.assert_allclose(together[1], emb.embed(long), atol=1e-5)


def test_large_batch(emb: lms.EmbeddingModel) -> None:
    texts = [f"sentence number {i}" for i in range(100)]
    vectors = emb.embed(texts)
    assert vectors.shape == (100, DIM)
    assert np.all(np.isfinite(vectors))
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_info_and_load_config(emb: lms.EmbeddingModel, models_dir: Path) -> None:
    info = emb.get_info()
    assert isinstance(info, lms.EmbeddingModelInstanceInfo)
    assert info.type == "embedding"
    assert info.model_key == EMB_KEY
    assert info.format == "safetensors"
    assert info.architecture == "bert"
    assert Path(info.path) == emb_path(models_dir)
    assert info.context_length == emb.get_context_length() > 0
    assert info.vision is False
    config = emb.get_load_config()
    assert isinstance(config, lms.EmbeddingLoadModelConfig)
    assert config.context_length == emb.get_context_length()


def _rss_growth(models_dir: Path, config: dict[str, Any]) -> tuple[int, int, int]:
    """In a fresh process (nothing else mapped or cached): RSS growth over a load and one request, the part of it
    the request added, and the load's memory estimate."""
    code = textwrap.dedent(
        f"""
        import modelhost as mh
        def rss():
            return int(open("/proc/self/statm").read().split()[1]) * 4096
        client = mh.Client({str(models_dir)!r})
        estimate = client.embedding.estimate({EMB_KEY!r}, {config!r}).total_bytes
        start = rss()
        model = client.embedding.model({EMB_KEY!r}, config={config!r})
        loaded = rss()
        model.embed(["hello world", "a second, somewhat longer sentence"])
        print(rss() - start, rss() - loaded, estimate)
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    total, request, estimate = (int(v) for v in done.stdout.split())
    return total, request, estimate


def test_first_embedding_holds_the_layers_once(models_dir: Path) -> None:
    """The first request may copy the layers' matrices into the kernels' order (AVX-512), but then releases the
    mapped pages they came from: RSS grows by about the layers once (~42 MB of MiniLM's 87 MB file), not twice."""
    _, request, _ = _rss_growth(models_dir, {})
    layers = 6 * 4 * (3 * 384 * 384 + 384 * 384 + 2 * 384 * 1536)
    assert request < 1.5 * layers, f"RSS grew by {request / 2**20:.1f} MiB, the layers are {layers / 2**20:.1f} MiB"


@pytest.mark.parametrize("try_mmap", [True, False])
def test_estimate_covers_a_loaded_and_used_model(models_dir: Path, try_mmap: bool) -> None:
    """What a load and its first request add to RSS stays within the estimate the memory budget uses, mapped or
    owned (where the owned copy and the packed layers are both held)."""
    total, _, estimate = _rss_growth(models_dir, {"tryMmap": try_mmap})
    assert total <= 1.1 * estimate, f"RSS grew by {total / 2**20:.1f} MiB, the estimate is {estimate / 2**20:.1f} MiB"
