"""The ingress: the HTTP entry of a modelhost application on Ray Serve. It reads the request's ``model``, resolves
it to the catalog key, and hands the request to a replica through Serve's multiplexed routing (a replica that holds
the model if one can take it), then streams the replica's answer back unchanged."""

from __future__ import annotations

import hmac
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any, cast

from ray.exceptions import ActorUnavailableError, RayActorError
from ray.serve.handle import DeploymentHandle, DeploymentResponseGenerator
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from .. import __version__
from ._config import RayServeConfig

logger = logging.getLogger("modelhost.ray")

ROUTE_KINDS = {
    "/v1/chat/completions": "llm",
    "/v1/completions": "llm",
    "/v1/embeddings": "embedding",
    "/api/v0/chat/completions": "llm",
    "/api/v0/completions": "llm",
    "/api/v0/embeddings": "embedding",
}
"""POST routes whose body names a model: routed to a replica that holds it."""
ANY_REPLICA_ROUTES = {"/v1/models"}
"""GET routes every replica answers alike (the catalog is the same on every node)."""
HEALTH_ROUTE = "/api/modelhost/v1/health"
STATUS_ROUTE = "/api/modelhost/v1/ray/status"

MAX_BODY_BYTES = 16 * 1024 * 1024
"""As the single-machine server's limit: a larger body is refused before it reaches a replica."""
KEY_CACHE_S = 30.0
"""How long a resolved model name is trusted (a catalog changes rarely; a new model is found on its first miss)."""
RETRIES_ON_REPLICA_DEATH = 1
"""A request whose replica died before any of its answer was sent is tried once more on another replica."""
_REPLICA_DIED = (RayActorError, ActorUnavailableError)
_FORWARDED_HEADERS = ("content-type", "accept")


def error_response(status: int, message: str, kind: str, code: str, param: str | None = None) -> JSONResponse:
    """An error with the OpenAI body, as the single-machine server answers it."""
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return JSONResponse(body, status_code=status)


def _sse_error(message: str, code: str) -> bytes:
    body = {"error": {"message": message, "type": "server_error", "param": None, "code": code}}
    return f"data: {json.dumps(body)}\n\n".encode()


def _model_of(body: bytes) -> str | None:
    """The body's ``model`` when it is a JSON object naming one; else None (the replica's server reports why)."""
    try:
        parsed = json.loads(body)
    except ValueError:
        return None
    model = parsed.get("model") if isinstance(parsed, dict) else None
    return model if isinstance(model, str) and model.strip() else None


class _BodyTooLarge(Exception):
    pass


async def _read_body(request: Request) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise _BodyTooLarge
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise _BodyTooLarge
        chunks.append(chunk)
    return b"".join(chunks)


class ModelhostIngress:
    """The ingress deployment (one replica is plenty: it only parses, routes and streams)."""

    def __init__(
        self, replicas: DeploymentHandle[Any], registry: DeploymentHandle[Any], settings: dict[str, Any]
    ) -> None:
        self._replicas = replicas
        self._registry = registry
        self._config = RayServeConfig.from_dict(settings)
        self._keys: dict[str, tuple[float, dict[str, str]]] = {}

    async def __call__(self, request: Request) -> Response:
        """Serve one HTTP request."""
        token = self._config.api_token
        if token:
            given = request.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
                return error_response(401, "missing or wrong API token", "authentication_error", "invalid_api_key")
        path, method = request.url.path, request.method
        if path == HEALTH_ROUTE and method == "GET":
            return JSONResponse({"status": "ok", "version": __version__, "ray": True, "app": self._config.name})
        if path == STATUS_ROUTE and method == "GET":
            return JSONResponse({"replicas": await self._registry.replicas.remote()})
        if path in ANY_REPLICA_ROUTES and method == "GET":
            return await self._forward(request, b"", None)
        if path in ROUTE_KINDS and method == "POST":
            try:
                body = await _read_body(request)
            except _BodyTooLarge:
                return error_response(413, "the body is over the limit", "invalid_request_error", "body_too_large")
            return await self._forward(request, body, await self._route_key(path, body))
        if path in ROUTE_KINDS or path in ANY_REPLICA_ROUTES or path in (HEALTH_ROUTE, STATUS_ROUTE):
            return error_response(
                405, f"{method} is not allowed on {path}", "invalid_request_error", "method_not_allowed"
            )
        return error_response(
            404,
            f"no route {path} on the Ray Serve ingress: it serves the OpenAI routes (/v1/models, /v1/chat/completions, "
            "/v1/completions, /v1/embeddings), their LM Studio /api/v0 forms and the health and status routes; the "
            "lifecycle API addresses one host's instances and is not served here (docs/scale-out.md)",
            "invalid_request_error",
            "unknown_route",
        )

    async def _route_key(self, path: str, body: bytes) -> str | None:
        """The catalog key to route by, or None to let any replica answer (no model, an unknown one, or a model of
        the other kind: the replica's server gives the single-machine error without loading anything)."""
        model = _model_of(body)
        if model is None:
            return None
        cached = self._keys.get(model)
        if cached is None or cached[0] < time.monotonic():
            resolved: dict[str, str] | None = await self._replicas.resolve.remote(model)
            if resolved is None:
                return None
            cached = (time.monotonic() + KEY_CACHE_S, resolved)
            self._keys[model] = cached
        resolved = cached[1]
        return resolved["key"] if resolved["kind"] == ROUTE_KINDS[path] else None

    async def _forward(self, request: Request, body: bytes, key: str | None) -> Response:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        headers = {k: v for k, v in request.headers.items() if k.lower() in _FORWARDED_HEADERS}
        handle = self._replicas.options(stream=True, multiplexed_model_id=key or "")
        for attempt in range(RETRIES_ON_REPLICA_DEATH + 1):
            answer = cast(
                "DeploymentResponseGenerator[Any]", handle.forward.remote(request.method, target, headers, body)
            )
            try:
                head: dict[str, Any] = await answer.__anext__()
                if "text/event-stream" in head["headers"].get("content-type", ""):
                    return StreamingResponse(
                        self._rest_of_stream(answer), status_code=head["status"], headers=head["headers"]
                    )
                content = b"".join([chunk async for chunk in answer])
                return Response(content, status_code=head["status"], headers=head["headers"])
            except _REPLICA_DIED as e:
                answer.cancel()  # type: ignore[no-untyped-call]
                logger.warning("modelhost ingress: the replica died under a request (attempt %d): %s", attempt + 1, e)
                last_error = e
        return error_response(
            503,
            f"the replica serving this request died and so did its retry ({type(last_error).__name__}); "
            "the next request goes to a live replica",
            "server_error",
            "replica_unavailable",
        )

    async def _rest_of_stream(self, answer: DeploymentResponseGenerator[Any]) -> AsyncIterator[bytes]:
        try:
            async for chunk in answer:
                yield chunk
        except _REPLICA_DIED as e:
            logger.warning("modelhost ingress: the replica died under a stream: %s", e)
            yield _sse_error(
                f"the replica serving this stream died ({type(e).__name__}); the stream is incomplete",
                "replica_unavailable",
            )
        finally:
            answer.cancel()  # type: ignore[no-untyped-call]  # a client that left cancels the replica's request, and so its generation
