"""A hypothesis state machine: load / model / load_new_instance / unload / TTL expiry against a plain model of the
instance table. Invariants: the loaded set, identifiers, handle liveness and the shared mappings agree."""

from __future__ import annotations

import time
from dataclasses import dataclass

import modelhost as lms
import pytest
from helpers import EMB_ALIAS, EMB_KEY, LLM_ALIAS, LLM_KEY, default_models_dir, wait_until
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from modelhost import _core

KEYS = {"llm": (LLM_KEY, LLM_ALIAS), "embedding": (EMB_KEY, EMB_ALIAS)}
MODEL_KEY = {"llm": LLM_KEY, "embedding": EMB_KEY}
CUSTOM_IDS = ("a", "b")
SHORT_TTL = 0.2


@dataclass
class Expected:
    identifier: str
    kind: str
    reference: str


class InstanceTable(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.baseline = _core.mapped_file_count()
        self.client = lms.Client(default_models_dir())
        self.table: dict[str, Expected] = {}  # identifier -> what we expect loaded
        self.handles: list[lms.ModelHandle] = []

    def _namespace(self, kind: str) -> lms.LlmNamespace | lms.EmbeddingNamespace:
        return self.client.llm if kind == "llm" else self.client.embedding

    def _record(self, handle: lms.ModelHandle, kind: str) -> None:
        self.handles.append(handle)
        self.table[handle.identifier] = Expected(handle.identifier, kind, handle.instance_reference)

    @rule(kind=st.sampled_from(["llm", "embedding"]), alias=st.booleans())
    def model(self, kind: str, alias: bool) -> None:
        key = KEYS[kind][1 if alias else 0]
        existing = {e.reference for e in self.table.values() if e.kind == kind}  # one model per kind here
        handle = self._namespace(kind).model(key, ttl=None)
        assert handle.model_key == MODEL_KEY[kind]
        if existing:
            assert handle.instance_reference in existing
        else:
            assert handle.identifier not in self.table
            self._check_new_identifier(handle, kind)
            self._record(handle, kind)

    def _check_new_identifier(self, handle: lms.ModelHandle, kind: str) -> None:
        key = MODEL_KEY[kind]
        assert handle.identifier == key or (
            handle.identifier.startswith(key + ":") and handle.identifier.rsplit(":", 1)[1].isdigit()
        ), handle.identifier

    @rule(kind=st.sampled_from(["llm", "embedding"]))
    def model_without_key(self, kind: str) -> None:
        loaded = {e.reference for e in self.table.values() if e.kind == kind}
        if not loaded:
            with pytest.raises(lms.NoModelLoadedError):
                self._namespace(kind).model()
        else:
            assert self._namespace(kind).model().instance_reference in loaded

    @rule(
        kind=st.sampled_from(["llm", "embedding"]),
        alias=st.booleans(),
        identifier=st.sampled_from([None, *CUSTOM_IDS]),
    )
    def load_new_instance(self, kind: str, alias: bool, identifier: str | None) -> None:
        key = KEYS[kind][1 if alias else 0]
        if identifier is not None and identifier in self.table:
            with pytest.raises(lms.InstanceExistsError):
                self._namespace(kind).load_new_instance(key, identifier, ttl=None)
            return
        handle = self._namespace(kind).load_new_instance(key, identifier, ttl=None)
        if identifier is None:
            self._check_new_identifier(handle, kind)
        else:
            assert handle.identifier == identifier
        assert handle.identifier not in self.table
        self._record(handle, kind)

    @rule(identifier=st.sampled_from(CUSTOM_IDS))
    def model_by_identifier(self, identifier: str) -> None:
        expected = self.table.get(identifier)
        kind = expected.kind if expected else "llm"
        if expected is None:
            with pytest.raises(lms.ModelNotFoundError):
                self._namespace(kind).model(identifier)
        else:
            assert self._namespace(kind).model(identifier).instance_reference == expected.reference

    @precondition(lambda self: bool(self.handles))
    @rule(data=st.data(), twice=st.booleans())
    def unload_handle(self, data: st.DataObject, twice: bool) -> None:
        handle = data.draw(st.sampled_from(self.handles))
        handle.unload()
        if twice:
            handle.unload()
        current = self.table.get(handle.identifier)
        if current is not None and current.reference == handle.instance_reference:
            del self.table[handle.identifier]

    @rule(data=st.data())
    def unload_by_identifier(self, data: st.DataObject) -> None:
        candidates = [*sorted(self.table), "never-loaded"]
        identifier = data.draw(st.sampled_from(candidates))
        expected = self.table.get(identifier)
        if expected is None:
            with pytest.raises(lms.ModelNotFoundError):
                self.client.llm.unload(identifier)
        else:
            self._namespace(expected.kind).unload(identifier)
            del self.table[identifier]

    @rule(kind=st.sampled_from(["llm", "embedding"]))
    def ttl_expiry(self, kind: str) -> None:
        handle = self._namespace(kind).load_new_instance(KEYS[kind][0], "short-lived", ttl=SHORT_TTL)
        assert handle.is_loaded()
        deadline = time.monotonic() + 3
        while handle.is_loaded() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not handle.is_loaded(), "not evicted by its TTL"
        assert "short-lived" not in {h.identifier for h in self.client.list_loaded_models()}
        # The memory goes right after: wait for the mapping to be released (if no other instance holds it).
        expected = self.baseline + len({e.kind for e in self.table.values()})
        wait_until(lambda: _core.mapped_file_count() == expected, timeout=2)

    @invariant()
    def table_matches(self) -> None:
        loaded = {h.identifier: h for h in self.client.list_loaded_models()}
        assert set(loaded) == set(self.table)
        for identifier, expected in self.table.items():
            assert loaded[identifier].instance_reference == expected.reference
            assert isinstance(loaded[identifier], lms.LLM if expected.kind == "llm" else lms.EmbeddingModel)
        live = {e.reference for e in self.table.values()}
        for handle in self.handles:
            assert handle.is_loaded() == (handle.instance_reference in live)
        kinds_loaded = {e.kind for e in self.table.values()}
        assert _core.mapped_file_count() == self.baseline + len(kinds_loaded)  # one mapping per file

    def teardown(self) -> None:
        self.client.close()
        assert _core.mapped_file_count() == self.baseline


InstanceTable.TestCase.settings = settings(
    max_examples=15,
    stateful_step_count=10,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestInstanceTable = pytest.mark.timeout(300)(InstanceTable.TestCase)
