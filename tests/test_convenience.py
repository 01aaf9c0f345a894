"""LM Studio's convenience API: module-level functions on a lazily created default client."""

from __future__ import annotations

from pathlib import Path

import modelhost as lms
import modelhost._default
import pytest
from helpers import EMB_ALIAS, EMB_KEY, GEMMA_KEY, LLM_ALIAS, LLM_KEY

pytestmark = pytest.mark.timeout(60)


def test_default_client_is_lazy_and_shared(default_client: None, models_dir: Path) -> None:
    assert modelhost._default._default_client is None
    client = lms.get_default_client()
    assert lms.get_default_client() is client
    assert Path(client.models_dir) == models_dir
    llm = lms.llm(LLM_ALIAS)
    assert llm == client.llm.model(LLM_KEY)
    assert lms.llm() == llm
    emb = lms.embedding_model(EMB_ALIAS, ttl=None)
    assert emb == client.embedding.model(EMB_KEY)
    assert set(lms.list_loaded_models()) == {llm, emb}
    assert lms.list_loaded_models("embedding") == [emb]
    assert {m.model_key for m in lms.list_downloaded_models()} >= {LLM_KEY, EMB_KEY}
    assert {m.model_key for m in lms.list_downloaded_models("llm")} == {LLM_KEY, GEMMA_KEY}


def test_configure_before_first_use(default_client: None, models_dir: Path, tmp_path: Path) -> None:
    lms.configure_default_client(tmp_path, max_loaded=1)
    assert Path(lms.get_default_client().models_dir) == tmp_path
    assert lms.list_downloaded_models() == []
    with pytest.raises(RuntimeError):
        lms.configure_default_client(models_dir)


def test_reset_closes_the_default_client(default_client: None) -> None:
    llm = lms.llm(LLM_KEY)
    modelhost._default._reset_default_client()
    assert not llm.is_loaded()
    assert lms.llm(LLM_KEY) != llm  # a new client loads it anew


def test_no_model_loaded(default_client: None) -> None:
    with pytest.raises(lms.NoModelLoadedError):
        lms.llm()
    with pytest.raises(lms.NoModelLoadedError):
        lms.embedding_model()
