"""Fixtures: the real models dir, clients that close, the default client reset around a test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import modelhost
import modelhost._core
import modelhost._default
import pytest
from helpers import EMB_KEY, EMB_WEIGHTS, FAMILY_REPORT, LLM_FILE, LLM_KEY, default_models_dir


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    """The family checks' table (worst top-5 difference per architecture and weight type), when they ran."""
    text = config.stash.get(FAMILY_REPORT, None)
    if text is not None:
        terminalreporter.write_sep("=", "modelhost vs llama.cpp per file (.pytest_cache/modelhost/families.md)")
        terminalreporter.write(text)


@pytest.fixture(scope="module", autouse=True)
def nothing_mapped_after_the_module() -> Iterator[None]:
    """After each module (its clients closed), no model file is mapped any more, without waiting for the GC:
    closed clients, unloaded handles and finished predictions hold no memory."""
    yield
    count = modelhost._core.mapped_file_count()
    assert count == 0, f"{count} model file(s) still mapped after the module's clients closed"


@pytest.fixture(scope="session")
def models_dir() -> Path:
    """The real models dir, with both sample models in it."""
    path = default_models_dir()
    missing = [p for p in (path / LLM_KEY / LLM_FILE, path / EMB_KEY / EMB_WEIGHTS) if not p.is_file()]
    if missing:
        pytest.fail(f"sample models missing ({', '.join(map(str, missing))}): run `python scripts/fetch_models.py`")
    return path


@pytest.fixture
def client(models_dir: Path) -> Iterator[modelhost.Client]:
    """A fresh client on the real models dir, closed after the test."""
    with modelhost.Client(models_dir) as c:
        yield c


@pytest.fixture(scope="module")
def module_client(models_dir: Path) -> Iterator[modelhost.Client]:
    """A client shared by one test module (for tests that only use loaded models)."""
    with modelhost.Client(models_dir) as c:
        yield c


@pytest.fixture(scope="module")
def llm(module_client: modelhost.Client) -> modelhost.LLM:
    """SmolLM2, loaded once per module, never evicted."""
    return module_client.llm.model(LLM_KEY, ttl=None)


@pytest.fixture(scope="module")
def emb(module_client: modelhost.Client) -> modelhost.EmbeddingModel:
    """MiniLM, loaded once per module, never evicted."""
    return module_client.embedding.model(EMB_KEY, ttl=None)


@pytest.fixture
def default_client(models_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The convenience API's default client (and any `Client()`) on the real models dir; reset after the test."""
    monkeypatch.setenv("MODELHOST_MODELS_DIR", str(models_dir))
    modelhost._default._reset_default_client()
    yield
    modelhost._default._reset_default_client()
