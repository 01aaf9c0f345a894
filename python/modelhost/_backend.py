"""What the public API runs on: a host, its instances and their generations, in-process or over HTTP.

`Client`, the namespaces, the handles and the streams are written once, against these types. Two backends have
the same methods: `_core.Host` / `_core.Instance` / `_core.Generation` (the Rust core, in this process) and
`_remote.RemoteHost` / `RemoteInstance` / `RemoteGeneration` (a `modelhost serve` process, docs/http-api.md).
Configs cross this boundary as the core's flat snake_case dicts (`LlmLoadModelConfig._to_core()`,
`LlmPredictionConfig._to_core()`); each backend takes them from there.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Union

if TYPE_CHECKING:
    from . import _core
    from ._remote import RemoteGeneration, RemoteHost, RemoteInstance

__all__ = ["GenerationBackend", "HostBackend", "InstanceBackend", "ProgressCallback"]

HostBackend = Union["_core.Host", "RemoteHost"]
"""A catalog plus a view of an instance table."""
InstanceBackend = Union["_core.Instance", "RemoteInstance"]
"""One loaded instance, as a handle sees it."""
GenerationBackend = Union["_core.Generation", "RemoteGeneration"]
"""A running prediction: fragments ``{"content", "tokens"}``, then a result."""
ProgressCallback = Callable[[float], object]
"""Load progress, 0.0 to 1.0; raising cancels the load."""
