"""The one config object of a modelhost application on Ray Serve, and the rule that sizes Serve's model cache."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidConfigError, ModelHostError

__all__ = ["RayServeConfig", "models_per_replica"]

DEFAULT_APP_NAME = "modelhost"
DEFAULT_PORT = 8000


@dataclass(frozen=True)
class RayServeConfig:
    """Everything a modelhost application on Ray Serve is built from (``modelhost.ray.app(**fields)``, the CLI's
    flags). Each replica reads it on its own node.

    Attributes:
        models_dir: The models directory on every node that runs a replica (the same path on each, or a shared
            mount). Default: ``$MODELHOST_MODELS_DIR`` on the replica's node, else ``~/.cache/modelhost/models``.
        replicas: How many replicas (one modelhost host each).
        memory_budget: Bytes the models of one replica may take (modelhost's ``estimate()``); loads beyond it evict
            idle models, least recently used first, never one in flight. None: no budget.
        ttl: Idle seconds after which a replica unloads a model on its own; None: only Serve's LRU and the budget
            unload (the default).
        threads: Compute threads per replica (``RAYON_NUM_THREADS``).
        num_cpus: CPUs Ray reserves per replica; default ``threads``.
        context_length: Context length LLMs are loaded with; default the model's (at most 4096).
        models_per_replica: Serve's ``max_num_models_per_replica``; default derived from the budget
            (``models_per_replica()``), or every model in the catalog without a budget.
        max_ongoing_requests: Requests one replica accepts at once (running and queued); above it Serve routes to
            another replica, which loads the model too.
        api_token: Bearer token the ingress requires; None: no token.
        name: The Serve application's name.
    """

    models_dir: str | None = None
    replicas: int = 1
    memory_budget: int | None = None
    ttl: float | None = None
    threads: int = 1
    num_cpus: float | None = None
    context_length: int | None = None
    models_per_replica: int | None = None
    max_ongoing_requests: int = 4
    api_token: str | None = None
    name: str = DEFAULT_APP_NAME

    def __post_init__(self) -> None:
        """Check every field, so a bad value fails where it is given, not on a remote node."""
        _positive_int("replicas", self.replicas)
        _positive_int("threads", self.threads)
        _positive_int("max_ongoing_requests", self.max_ongoing_requests)
        for name in ("memory_budget", "context_length", "models_per_replica"):
            value = getattr(self, name)
            if value is not None:
                _positive_int(name, value)
        if self.ttl is not None and (isinstance(self.ttl, bool) or not isinstance(self.ttl, (int, float))):
            raise InvalidConfigError(f"ttl must be seconds or None, not {self.ttl!r}")
        if self.ttl is not None and not self.ttl > 0:
            raise InvalidConfigError(f"ttl must be positive, not {self.ttl!r}")
        if self.num_cpus is not None and (
            isinstance(self.num_cpus, bool) or not isinstance(self.num_cpus, (int, float)) or self.num_cpus < 0
        ):
            raise InvalidConfigError(f"num_cpus must be a number >= 0, not {self.num_cpus!r}")
        if not isinstance(self.name, str) or not self.name:
            raise InvalidConfigError(f"name must be a non-empty string, not {self.name!r}")
        if self.models_dir is not None and not isinstance(self.models_dir, str):
            object.__setattr__(self, "models_dir", os.fspath(self.models_dir))

    @property
    def replica_cpus(self) -> float:
        """CPUs Ray reserves for each replica."""
        return float(self.threads) if self.num_cpus is None else float(self.num_cpus)

    def load_config(self) -> dict[str, Any]:
        """The load config a replica's LLM loads use (empty: the model's defaults)."""
        return {} if self.context_length is None else {"contextLength": self.context_length}

    def to_dict(self) -> dict[str, Any]:
        """Plain fields, to send to the replicas."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RayServeConfig:
        """From ``to_dict()``'s output; an unknown field raises ``InvalidConfigError`` naming it."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InvalidConfigError(f"unknown Ray Serve config field(s): {', '.join(unknown)}")
        return cls(**data)


def _positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidConfigError(f"{name} must be a positive integer, not {value!r}")


def models_per_replica(estimates: Mapping[str, int], memory_budget: int | None) -> int:
    """Serve's ``max_num_models_per_replica`` for a replica with ``memory_budget`` bytes over a catalog whose models
    take ``estimates`` bytes each (``estimate()`` with the replica's load config).

    The rule: as many models as the budget holds when each is as large as the largest model that fits the budget
    at all, ``budget // largest``, at least 1 and at most the catalog's size. So any set of models Serve keeps on
    a replica fits its budget, and Serve's LRU (which routes) evicts before modelhost's budget (which protects
    memory) has to; modelhost's own LRU stays as the backstop. Without a budget: the catalog's size. A model
    larger than the budget is left out of the rule: it can never load (``InsufficientMemoryError``, HTTP 507).

    Raises:
        ModelHostError: The catalog is empty.
    """
    if not estimates:
        raise ModelHostError("the models directory has no models: nothing to serve")
    if memory_budget is None:
        return len(estimates)
    fitting = [size for size in estimates.values() if size <= memory_budget]
    if not fitting:
        return 1
    return max(1, min(len(estimates), memory_budget // max(fitting)))


def load_config_dict(config: RayServeConfig, kind: str) -> dict[str, Any]:
    """The load config a replica passes for a model of ``kind`` (context length is an LLM setting)."""
    return config.load_config() if kind == "llm" else {}
