"""One host per process (SPEC §4): every Client() sees one instance table, TTL thread and memory accounting; a
client's close() unloads only what it loaded itself (not no_hup loads, the CLI's, the server's or another
client's); Client(isolated=True) keeps a private table."""

from __future__ import annotations

from pathlib import Path

import httpx
import modelhost as lms
import pytest
from helpers import EMB_KEY, LLM_KEY
from modelhost.cli import _CliClient

pytestmark = pytest.mark.timeout(120)


def identifiers(client: lms.Client) -> list[str]:
    return sorted(h.identifier for h in client.list_loaded_models())


def test_clients_share_the_process_table(models_dir: Path) -> None:
    with lms.Client(models_dir) as first, lms.Client(models_dir) as second:
        llm = first.llm.model(LLM_KEY)
        assert second.llm.model() == llm  # LM Studio's "the model that is loaded"
        assert second.llm.model(LLM_KEY) == llm  # found, not loaded again
        assert identifiers(second) == [LLM_KEY]
        other = second.llm.load_new_instance(LLM_KEY)
        assert other.identifier == f"{LLM_KEY}:2"  # numbered across clients
        assert identifiers(first) == [LLM_KEY, f"{LLM_KEY}:2"]
        assert first.llm.model(f"{LLM_KEY}:2") == other  # by identifier, whoever loaded it
        info = llm.get_info()
        assert (info.loaded_by, info.no_hup) == ("client", False)
        assert info.client_id and info.client_id != other.get_info().client_id
        # The second client's close unloads its own instance, not the first's.
        second.close()
        assert llm.is_loaded() and not other.is_loaded()
        assert identifiers(first) == [LLM_KEY]
        with pytest.raises(lms.ClientClosedError):
            second.llm.model(LLM_KEY)
    assert not llm.is_loaded()


def test_no_hup_outlives_the_client(models_dir: Path) -> None:
    with lms.Client(models_dir) as loader:
        kept = loader.embedding.model(EMB_KEY, no_hup=True)
        dropped = loader.llm.model(LLM_KEY)
    assert kept.is_loaded() and not dropped.is_loaded()
    assert kept.get_info().no_hup
    with lms.Client(models_dir) as later:
        assert later.embedding.model() == kept
        assert later.embedding.unload(EMB_KEY) == [EMB_KEY]  # anyone may unload it explicitly
    assert not kept.is_loaded()


def test_the_cli_loads_for_the_process(models_dir: Path) -> None:
    with _CliClient(models_dir) as cli:
        llm = cli.llm.load_new_instance(LLM_KEY, "from-cli")
        assert llm.get_info().loaded_by == "cli"
    assert llm.is_loaded()
    with lms.Client(models_dir) as client:
        assert client.llm.model("from-cli") == llm
        llm.unload()
        assert identifiers(client) == []


def test_the_default_client_and_scoped_clients_share(models_dir: Path, default_client: None) -> None:
    model = lms.llm(LLM_KEY)
    with lms.Client() as client:
        assert client.llm.model() == model
    assert model.is_loaded()  # the scoped client did not load it, so its close left it
    assert lms.list_loaded_models() == [model]


def test_an_isolated_client_has_its_own_table(models_dir: Path) -> None:
    with lms.Client(models_dir) as shared, lms.Client(models_dir, isolated=True) as private:
        mine = private.llm.model(LLM_KEY)
        assert identifiers(shared) == []
        with pytest.raises(lms.NoModelLoadedError):
            shared.llm.model()
        theirs = shared.llm.model(LLM_KEY)
        assert theirs != mine and theirs.identifier == mine.identifier == LLM_KEY
        assert identifiers(private) == [LLM_KEY]
        private.close()
        assert not mine.is_loaded() and theirs.is_loaded()


def test_limits_belong_to_the_client_that_loads(models_dir: Path) -> None:
    """Two budgets in one process: a load through the smaller one must bring the process's total within it,
    evicting another client's idle instance."""
    with lms.Client(models_dir) as probe:
        llm_needed = probe.llm.estimate(LLM_KEY).total_bytes
        emb_needed = probe.embedding.estimate(EMB_KEY).total_bytes
    with lms.Client(models_dir) as roomy, lms.Client(models_dir, memory_budget=max(llm_needed, emb_needed)) as tight:
        llm = roomy.llm.model(LLM_KEY)
        emb = tight.embedding.model(EMB_KEY)  # the process would hold both: over this client's budget
        assert emb.is_loaded() and not llm.is_loaded()
        assert roomy.llm.model(LLM_KEY).is_loaded()  # the roomy client has no limit: both fit for it
        assert identifiers(roomy) == [LLM_KEY, EMB_KEY]
    with lms.Client(models_dir) as roomy, lms.Client(models_dir, max_loaded=1, auto_evict=False) as strict:
        roomy.llm.model(LLM_KEY)
        with pytest.raises(lms.InsufficientMemoryError):
            strict.embedding.model(EMB_KEY)


def test_loads_over_http_belong_to_the_server(models_dir: Path) -> None:
    """A just-in-time load by the server is not any client's: closing the client that serves leaves it to the
    server, and the in-process clients see it."""
    with lms.Client(models_dir) as owner, owner.serve(port=0, api_token="") as server:
        r = httpx.post(f"{server.url}/v1/embeddings", json={"model": EMB_KEY, "input": "x"}, timeout=60)
        assert r.status_code == 200, r.text
        with lms.Client(models_dir) as other:
            (emb,) = other.embedding.list_loaded()
            assert emb.get_info().loaded_by == "server"
        assert emb.is_loaded()
    assert emb.is_loaded()  # the owner's close does not unload the server's loads either
    emb.unload()
