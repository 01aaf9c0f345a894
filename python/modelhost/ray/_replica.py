"""One Serve replica: a modelhost host, its HTTP server on loopback, and Serve's multiplexed model cache over it.

The replica does not re-implement the OpenAI routes: it forwards each request, unchanged, to the modelhost server
it runs on 127.0.0.1 (with a token of its own) and streams the answer back, so the bodies, the errors and the
streams are exactly those of ``modelhost serve``. What it adds is residency, kept in step with Serve:

- Serve's ``@serve.multiplexed`` loader (sized by ``models_per_replica``) loads a model through the host
  (``client.llm.model(key)``: get-or-load, so a model already loaded is never loaded twice) and returns a
  ``_ServeSlot``; Serve's LRU releases the slot, which unloads the model.
- A model is never unloaded under a request of this replica: a release while requests are in flight is
  deferred to the end of the last one, and a slot taken again before then cancels it. A load waits for such
  deferred unloads first, so the models loaded never outnumber Serve's slots (which the budget holds). The
  ingress resolves aliases to the catalog key first, so one model never holds two slots.
- A model the host unloaded on its own (its TTL, or its budget's eviction when deferred unloads overlap a load)
  is loaded again when the next request for it arrives.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import secrets
import time
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
from ray import serve
from ray.serve.handle import DeploymentHandle

from ..client import Client
from ..errors import ModelHostError
from ..handles import AnyModelHandle
from ._config import RayServeConfig, load_config_dict, models_per_replica

logger = logging.getLogger("modelhost.ray")

REPORT_INTERVAL_S = 2.0
"""How often a replica reports its state to the registry (and after every load and unload)."""
EVENTS_KEPT = 2000
"""Load/unload events a replica keeps for its status."""
_ANSWER_HEADERS = ("content-type", "retry-after", "cache-control")
"""Headers of the local server's answer that reach the client (the rest describe the loopback connection)."""


@dataclass
class _Residency:
    """One model on this replica, as Serve and the host see it."""

    key: str
    kind: str
    handle: AnyModelHandle | None = None
    held_by_serve: bool = False
    in_flight: int = 0


@dataclass
class _Stats:
    loads: int = 0
    unloads: int = 0
    reloads: int = 0
    duplicate_loads: int = 0
    peak_resident_bytes: int = 0
    events: collections.deque[dict[str, Any]] = field(default_factory=lambda: collections.deque(maxlen=EVENTS_KEPT))


class _ServeSlot:
    """What the multiplexed loader returns: Serve holds it while it counts the model as loaded on this replica.

    Serve calls ``__del__`` when its LRU drops the model and awaits it when it is a coroutine function, which runs
    the release on the replica's event loop, in order with the requests. The garbage collector calls the class's
    ``__del__`` instead, which a coroutine function would turn into a never-awaited coroutine; so the awaitable one
    is an instance attribute, and the class has none.
    """

    def __init__(self, replica: ModelhostReplica, key: str) -> None:
        self.key = key
        self._replica: ModelhostReplica | None = replica
        self.__del__: Callable[[], Awaitable[None]] = self._release

    async def _release(self) -> None:
        replica, self._replica = self._replica, None
        if replica is not None:
            replica._release(self.key)


class ModelhostReplica:
    """A Serve deployment's replica running one modelhost host (see the module doc)."""

    async def __init__(self, settings: dict[str, Any], registry: DeploymentHandle[Any]) -> None:  # type: ignore[misc]
        # (Serve awaits an async constructor, on the event loop the requests run on.)
        self._config = RayServeConfig.from_dict(settings)
        # Before the first computation of this process, which sizes the compute pool once.
        os.environ["RAYON_NUM_THREADS"] = str(self._config.threads)
        self._registry = registry
        self._client = Client(
            self._config.models_dir, isolated=True, memory_budget=self._config.memory_budget, auto_evict=True
        )
        token = secrets.token_urlsafe(24)
        self._server = self._client.serve("127.0.0.1", 0, api_token=token)
        self._http = httpx.AsyncClient(
            base_url=self._server.url,
            headers={"Authorization": f"Bearer {token}"},
            timeout=httpx.Timeout(None, connect=10.0),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=64),
        )
        context = serve.get_replica_context()
        self._name = context.replica_id.unique_id
        self._kinds = self._catalog_kinds()
        self._max_models = self._config.models_per_replica or models_per_replica(
            self._estimates(), self._config.memory_budget
        )
        self._residency: dict[str, _Residency] = {}
        self._request_ended = asyncio.Event()
        self._stats = _Stats()
        self._started = time.time()

        async def load_serve_slot(model_id: str) -> _ServeSlot:
            return await self._take_slot(model_id)

        self._multiplexed = serve.multiplexed(max_num_models_per_replica=self._max_models)(load_serve_slot)
        self._reporter = asyncio.get_running_loop().create_task(self._report_forever())
        self.__del__: Callable[[], Awaitable[None]] = self._shutdown  # awaited by Serve; see _ServeSlot
        logger.info(
            "modelhost replica %s: models in %s, budget %s, %d models per replica, local server %s",
            self._name,
            self._client.models_dir,
            self._config.memory_budget,
            self._max_models,
            self._server.url,
        )

    # --- the catalog ---------------------------------------------------------------------------------------------

    def _catalog_kinds(self) -> dict[str, str]:
        return {m.model_key: m.type for m in self._client.list_downloaded_models()}

    def _estimates(self) -> dict[str, int]:
        sizes: dict[str, int] = {}
        for key, kind in self._kinds.items():
            namespace = self._client.llm if kind == "llm" else self._client.embedding
            try:
                sizes[key] = namespace.estimate(key, load_config_dict(self._config, kind)).total_bytes
            except ModelHostError as e:  # a broken file takes no room; requests for it get the load error
                logger.warning("modelhost replica: cannot estimate %s: %s", key, e)
        return sizes

    async def resolve(self, model: str) -> dict[str, str] | None:
        """The catalog key and kind a model name (key, alias) resolves to on this replica's models dir, by the
        local server's own rules (confined to the models dir); None when it names no model."""
        path = "/api/v0/models/" + urllib.parse.quote(model, safe="/")
        answer = await self._http.get(path)
        if answer.status_code != 200:
            return None
        body = answer.json()
        return {"key": str(body["id"]), "kind": "llm" if body.get("type") == "llm" else "embedding"}

    # --- residency ----------------------------------------------------------------------------------------------

    def _event(self, event: str, key: str, **extra: Any) -> None:
        self._stats.events.append({"t": time.time(), "event": event, "key": key, **extra})

    def _resident_bytes(self) -> int:
        total = 0
        for handle in self._client.list_loaded_models():
            try:
                total += int(handle.get_info().memory.get("total_bytes", 0))
            except ModelHostError:  # unloaded meanwhile
                continue
        self._stats.peak_resident_bytes = max(self._stats.peak_resident_bytes, total)
        return total

    def _is_loaded(self, state: _Residency) -> bool:
        return state.handle is not None and state.handle.is_loaded()

    async def _load(self, state: _Residency) -> None:
        """Get or load the model through the host, off the event loop."""
        namespace = self._client.llm if state.kind == "llm" else self._client.embedding
        before = {h.instance_reference for h in namespace.list_loaded()}
        started = time.monotonic()
        handle: AnyModelHandle = await asyncio.to_thread(
            namespace.model, state.key, ttl=self._config.ttl, config=load_config_dict(self._config, state.kind)
        )
        state.handle = handle
        if handle.instance_reference in before:
            self._event("found_loaded", state.key, instance=handle.instance_reference)
            return
        self._stats.loads += 1
        self._event(
            "load",
            state.key,
            instance=handle.instance_reference,
            seconds=round(time.monotonic() - started, 4),
            bytes=handle.get_info().memory.get("total_bytes"),
        )
        self._resident_bytes()
        self._report_soon()

    async def _take_slot(self, key: str) -> _ServeSlot:
        """Serve's loader: the model is loaded (just in time if it is not) and Serve holds a slot for it."""
        state = self._residency.get(key)
        if state is None:
            kind = self._kinds.get(key) or self._catalog_kinds().get(key)
            if kind is None:
                raise ModelHostError(f"{key!r} is not in this replica's models dir")
            state = self._residency[key] = _Residency(key, kind)
        if state.held_by_serve and self._is_loaded(state):
            # Serve asked for a model it already holds here: its cache and ours disagree.
            self._stats.duplicate_loads += 1
            self._event("duplicate_load", key)
        await self._drain_released()
        await self._load(state)
        state.held_by_serve = True
        return _ServeSlot(self, key)

    async def _drain_released(self) -> None:
        """Wait until the models Serve released under requests have been unloaded, so the models loaded are never
        more than Serve's slots, which the budget holds (``models_per_replica``): modelhost then never has to
        evict, and never refuses a load because the released model is still busy."""
        while any(s.in_flight and not s.held_by_serve for s in self._residency.values()):
            self._request_ended.clear()
            await self._request_ended.wait()

    def _release(self, key: str) -> None:
        """Serve's LRU dropped the model: unload it now, or when this replica's last request on it ends."""
        state = self._residency.get(key)
        if state is None:
            return
        state.held_by_serve = False
        if state.in_flight:
            self._event("unload_deferred", key, in_flight=state.in_flight)
            return
        self._unload(state, "serve_lru")

    def _unload(self, state: _Residency, reason: str) -> None:
        handle, state.handle = state.handle, None
        if handle is not None and handle.is_loaded():
            handle.unload()
            self._stats.unloads += 1
            self._event("unload", state.key, reason=reason, instance=handle.instance_reference)
            self._report_soon()

    async def _enter(self, key: str) -> _Residency | None:
        """A request on ``key`` starts: Serve's slot (loading it just in time), then the request is counted before
        anything can release it. None when the model cannot be loaded here (the local server then answers with
        the error it would give on one machine)."""
        try:
            await self._multiplexed(key)
        except Exception as e:  # the request still goes to the server, which reports the failure as on one machine
            logger.warning("modelhost replica: loading %s failed: %s", key, e)
            return None
        state = self._residency[key]
        state.in_flight += 1  # no await since the slot was taken: a release now defers to this request's end
        if not self._is_loaded(state):
            self._stats.reloads += 1
            self._event("reload", key)
            try:
                await self._load(state)
            except Exception as e:
                logger.warning("modelhost replica: reloading %s failed: %s", key, e)
        self._resident_bytes()
        return state

    def _exit(self, state: _Residency) -> None:
        state.in_flight -= 1
        if state.in_flight == 0 and not state.held_by_serve:
            self._unload(state, "serve_lru_deferred")
            self._request_ended.set()

    # --- requests -----------------------------------------------------------------------------------------------

    async def forward(
        self, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> AsyncIterator[dict[str, Any] | bytes]:
        """Forward one HTTP request to the local server: yields the answer's status and headers first, then its
        body as it streams. With a multiplexed model id, the model is resident here for the whole request."""
        key = serve.get_multiplexed_model_id()
        state = await self._enter(key) if key else None
        try:
            request = self._http.build_request(method, path, content=body, headers=headers)
            answer = await self._http.send(request, stream=True)
            try:
                kept = {k: v for k, v in answer.headers.items() if k.lower() in _ANSWER_HEADERS}
                kept["x-modelhost-replica"] = self._name
                yield {"status": answer.status_code, "headers": kept}
                async for chunk in answer.aiter_raw():
                    yield chunk
            finally:
                await answer.aclose()
        finally:
            if state is not None:
                self._exit(state)

    # --- status -------------------------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """This replica's state: which models it holds, their memory, and its load/unload history."""
        models = []
        for handle in self._client.list_loaded_models():
            try:
                info = handle.get_info()
            except ModelHostError:
                continue
            state = self._residency.get(info.model_key)
            models.append(
                {
                    "key": info.model_key,
                    "identifier": info.identifier,
                    "type": info.type,
                    "status": info.status,
                    "in_flight": state.in_flight if state else 0,
                    "held_by_serve": bool(state and state.held_by_serve),
                    "memory_bytes": int(info.memory.get("total_bytes", 0)),
                    "context_length": info.context_length,
                    "instance_reference": info.instance_reference,
                }
            )
        return {
            "replica": self._name,
            "node": os.uname().nodename,
            "pid": os.getpid(),
            "started": self._started,
            "reported": time.time(),
            "models_dir": self._client.models_dir,
            "memory_budget": self._config.memory_budget,
            "models_per_replica": self._max_models,
            "threads": self._config.threads,
            "resident_bytes": self._resident_bytes(),
            "peak_resident_bytes": self._stats.peak_resident_bytes,
            "models": models,
            "loads": self._stats.loads,
            "unloads": self._stats.unloads,
            "reloads": self._stats.reloads,
            "duplicate_loads": self._stats.duplicate_loads,
            "events": list(self._stats.events),
        }

    def _report_soon(self) -> None:
        asyncio.get_running_loop().create_task(self._report_once())

    async def _report_once(self) -> None:
        try:
            await self._registry.report.remote(self.status())
        except Exception as e:  # the registry restarts with the application; the next report refills it
            logger.debug("modelhost replica: report failed: %s", e)

    async def _report_forever(self) -> None:
        while True:
            await self._report_once()
            await asyncio.sleep(REPORT_INTERVAL_S)

    async def _shutdown(self) -> None:
        """Serve shuts the replica down: stop reporting, leave the registry, stop the server, unload everything."""
        self._reporter.cancel()
        try:
            await self._registry.forget.remote(self._name)
        except Exception as e:
            logger.debug("modelhost replica: leaving the registry failed: %s", e)
        await self._http.aclose()
        await asyncio.to_thread(self._server.stop)
        self._client.close()
