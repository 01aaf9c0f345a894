"""The remote backend: a `modelhost serve` process's lifecycle API over HTTP (docs/http-api.md).

`RemoteHost`, `RemoteInstance` and `RemoteGeneration` have the shape of `_core.Host`, `_core.Instance` and
`_core.Generation` (`_backend`), so `Client("host:port")` is the in-process API over the wire: the same handles, the
same exception classes (the server names the class in ``error.type``), load progress from the server's events,
arrays as exact float32 bytes. It needs `httpx` (``pip install 'modelhost[remote]'``).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from . import errors
from .config import load_config_from_core
from .errors import (
    AuthenticationError,
    ClientClosedError,
    ModelHostError,
    ServerBusyError,
    ServerConnectionError,
)

if TYPE_CHECKING:
    import httpx

    from ._backend import ProgressCallback

__all__ = [
    "API_PREFIX",
    "DEFAULT_PORT",
    "RemoteGeneration",
    "RemoteHost",
    "RemoteInstance",
    "api_base_url",
    "default_port",
    "find_local_api_host",
    "is_api_host",
    "probe_api_host",
    "read_server_state",
    "server_state_path",
    "stop_server",
]

API_PREFIX = "/api/modelhost/v1"
DEFAULT_PORT = 41234
"""The port `modelhost serve` and `modelhost server start` use unless told otherwise."""

# Seconds to wait for a connection; reads wait as long as a load or a queued request takes.
_CONNECT_TIMEOUT = 10.0
_PROBE_TIMEOUT = 2.0

_HOST_PORT = re.compile(r"^(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?):[0-9]{1,5}$")

# The core's flat prediction keys and LM Studio's names for them, which the server parses.
_PREDICTION_KEYS = {
    "max_tokens": "maxTokens",
    "temperature": "temperature",
    "top_k": "topKSampling",
    "top_p": "topPSampling",
    "min_p": "minPSampling",
    "repeat_penalty": "repeatPenalty",
    "stop_strings": "stopStrings",
    "seed": "seed",
}

# Error types the server names that are not modelhost classes.
_BUILTIN_ERRORS: dict[str, type[Exception]] = {
    "ValueError": ValueError,
    "PermissionError": PermissionError,
    "OSError": OSError,
    "authentication_error": AuthenticationError,
}


def is_api_host(location: str) -> bool:
    """Whether a client's positional argument names a server: ``host:port`` or an ``http(s)://`` URL.

    Anything else is a models directory (write ``./name:123`` for a directory that looks like ``host:port``).
    """
    return location.startswith(("http://", "https://")) or _HOST_PORT.match(location) is not None


def api_base_url(api_host: str) -> str:
    """``http://host:port`` for ``host:port`` or a URL (a trailing slash dropped)."""
    if not isinstance(api_host, str) or not is_api_host(api_host):
        raise errors.InvalidConfigError(f"api_host must be 'host:port' or an http(s):// URL, got {api_host!r}")
    return (api_host if "://" in api_host else f"http://{api_host}").rstrip("/")


def _httpx() -> Any:
    try:
        import httpx
    except ImportError as e:  # the base wheel needs numpy only
        raise ImportError("a remote client needs httpx: pip install 'modelhost[remote]'") from e
    return httpx


def _auth_headers(api_token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_token}"} if api_token else {}


def probe_api_host(
    api_host: str, api_token: str | None = None, timeout: float = _PROBE_TIMEOUT
) -> dict[str, Any] | None:
    """The health answer of the modelhost server at ``api_host``, or None when none answers there."""
    httpx = _httpx()
    try:
        response = httpx.get(
            f"{api_base_url(api_host)}{API_PREFIX}/health", headers=_auth_headers(api_token), timeout=timeout
        )
    except (httpx.TransportError, errors.InvalidConfigError):
        return None
    if response.status_code == 401:
        return {"status": "unauthorized"}  # a server is there; it wants a token
    try:
        body = response.json()
    except ValueError:
        return None
    if response.status_code != 200 or not isinstance(body, dict) or body.get("status") != "ok":
        return None
    return body


def stop_server(api_host: str, api_token: str | None = None) -> None:
    """Ask the server at ``api_host`` to stop (it drains the requests in flight first)."""
    httpx = _httpx()
    url = f"{api_base_url(api_host)}{API_PREFIX}/server/stop"
    try:
        response = httpx.post(url, headers=_auth_headers(api_token), timeout=_CONNECT_TIMEOUT)
    except httpx.TransportError as e:
        raise ServerConnectionError(f"no answer from the modelhost server at {api_host}: {e}") from e
    _raise_for(response)


def default_port() -> int:
    """``$MODELHOST_PORT``, else 41234: where a local server is looked for, and where one starts by default."""
    value = os.environ.get("MODELHOST_PORT", "")
    return int(value) if value.isdigit() and 0 < int(value) < 65536 else DEFAULT_PORT


def server_state_path() -> Path:
    """The file a running ``modelhost serve`` records its URL and pid in: ``server.json`` in
    ``$MODELHOST_STATE_DIR``, else ``~/.cache/modelhost``."""
    directory = os.environ.get("MODELHOST_STATE_DIR")
    base = Path(directory).expanduser() if directory else Path.home() / ".cache" / "modelhost"
    return base / "server.json"


def read_server_state() -> dict[str, Any] | None:
    """What the running server recorded (``url``, ``pid``, ``models_dir``), or None."""
    try:
        with open(server_state_path(), encoding="utf-8") as f:
            state = json.load(f)
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) and isinstance(state.get("url"), str) else None


def find_local_api_host(api_token: str | None = None) -> str | None:
    """The local modelhost server that answers, as ``host:port``: the one in the state file, else
    ``127.0.0.1:<default_port()>``. None when none does (or httpx is not installed)."""
    state = read_server_state()
    candidates = [state["url"]] if state else []
    candidates.append(f"127.0.0.1:{default_port()}")
    for candidate in candidates:
        try:
            if probe_api_host(candidate, api_token) is not None:
                return str(candidate).removeprefix("http://")
        except ImportError:
            return None
    return None


def _error_from(status: int, body: object, fallback: str) -> Exception:
    """The exception a server's error answer stands for: the class it names, else one chosen by the status."""
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return ModelHostError(f"HTTP {status}: {fallback[:500]}")
    message = str(error.get("message") or fallback)
    name = str(error.get("type") or "")
    cls: type[Exception] | None = _BUILTIN_ERRORS.get(name)
    candidate = getattr(errors, name, None) if name.isidentifier() else None
    if cls is None and isinstance(candidate, type) and issubclass(candidate, ModelHostError):
        cls = candidate
    if cls is None:
        cls = {401: AuthenticationError, 503: ServerBusyError}.get(status, ModelHostError)
    return cls(message)


def _raise_for(response: httpx.Response) -> None:
    if response.status_code < 400:
        return
    text = response.text
    try:
        body = json.loads(text)
    except ValueError:
        body = None
    raise _error_from(response.status_code, body, text)


def _sse_events(lines: Iterator[str]) -> Iterator[tuple[str, Any]]:
    """Server-Sent Events as (event name, parsed JSON data)."""
    event, data = "message", list[str]()
    for line in lines:
        if not line:
            if data:
                yield event, json.loads("\n".join(data))
            event, data = "message", []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "event":
            event = value
        elif name == "data":
            data.append(value)
    if data:
        yield event, json.loads("\n".join(data))


def _array(data: Mapping[str, Any]) -> npt.NDArray[np.float32]:
    """A float32 array from ``{"shape", "dtype", "data": base64 little-endian bytes}``, bit for bit."""
    if data.get("dtype") != "float32":
        raise ModelHostError(f"the server sent an array of dtype {data.get('dtype')!r}, expected float32")
    shape = tuple(int(n) for n in data["shape"])
    values = np.frombuffer(base64.b64decode(data["data"]), dtype="<f4")
    result: npt.NDArray[np.float32] = values.astype(np.float32).reshape(shape)
    return result


class RemoteHost:
    """The server's host, seen through its lifecycle API. One per remote `Client`; thread-safe."""

    def __init__(self, api_host: str, api_token: str | None = None) -> None:
        """Connect and check that a modelhost server answers.

        Raises:
            ServerConnectionError: Nothing (or not a modelhost server) answers at ``api_host``.
            AuthenticationError: The server wants a token and ``api_token`` is missing or wrong.
        """
        http = _httpx()
        self.api_host = api_host
        self.base_url = api_base_url(api_host)
        self._transport_error: type[Exception] = http.TransportError
        self._http: httpx.Client = http.Client(
            base_url=self.base_url + API_PREFIX,
            headers=_auth_headers(api_token),
            timeout=http.Timeout(None, connect=_CONNECT_TIMEOUT),
            limits=http.Limits(max_connections=None, max_keepalive_connections=32),
        )
        self.client_id = uuid.uuid4().hex
        self._closed = False
        try:
            health = self.request("GET", "/health")
        except BaseException:
            self._http.close()
            raise
        if not isinstance(health, dict) or health.get("status") != "ok":
            self._http.close()
            raise ServerConnectionError(f"{self.base_url} is not a modelhost server")
        self._models_dir = str(health.get("models_dir", ""))
        self.server_version = str(health.get("version", ""))

    @property
    def models_dir(self) -> str:
        """The server's models directory."""
        return self._models_dir

    def _check_open(self) -> None:
        if self._closed:
            raise ClientClosedError("the client is closed")

    def _unreachable(self, e: BaseException) -> ServerConnectionError:
        return ServerConnectionError(f"no answer from the modelhost server at {self.base_url}: {e}")

    def request(
        self, method: str, path: str, body: Mapping[str, Any] | None = None, params: Mapping[str, str] | None = None
    ) -> Any:
        """One call: the answer's JSON, or the error it stands for raised."""
        try:
            response = self._http.request(method, path, json=body, params=params)
        except self._transport_error as e:
            raise self._unreachable(e) from e
        _raise_for(response)
        return response.json()

    @contextlib.contextmanager
    def events(self, path: str, body: Mapping[str, Any]) -> Iterator[Iterator[tuple[str, Any]]]:
        """A call answered with Server-Sent Events; leaving the block closes the connection (which the server takes
        as a cancellation)."""
        response = self.open_events(path, body)
        try:
            yield self.iter_events(response)
        finally:
            response.close()

    def open_events(self, path: str, body: Mapping[str, Any]) -> httpx.Response:
        """Send a call that answers with events; the open response (errors before the stream are raised)."""
        request = self._http.build_request("POST", path, json=body, headers={"Accept": "text/event-stream"})
        try:
            response = self._http.send(request, stream=True)
        except self._transport_error as e:
            raise self._unreachable(e) from e
        if response.status_code >= 400:
            try:
                response.read()
            finally:
                response.close()
            _raise_for(response)
        return response

    def iter_events(self, response: httpx.Response) -> Iterator[tuple[str, Any]]:
        """The events of an open response; a broken connection is a `ServerConnectionError`."""
        try:
            yield from _sse_events(response.iter_lines())
        except self._transport_error as e:
            raise self._unreachable(e) from e

    def list_downloaded(self, kind: str | None = None) -> list[dict[str, Any]]:
        """Catalog entries of the server's models directory."""
        self._check_open()
        params = {"kind": kind} if kind is not None else {}
        models: list[dict[str, Any]] = self.request("GET", "/models/downloaded", params=params)["models"]
        return models

    def _load(
        self, path: str, body: dict[str, Any], on_progress: ProgressCallback | None, no_hup: bool, loaded_by: str | None
    ) -> RemoteInstance:
        self._check_open()
        body["no_hup"] = no_hup
        if loaded_by is None:  # without a client id a load is the server's own, as the CLI's loads are
            body["client"] = self.client_id
        if on_progress is None:
            return RemoteInstance(self, self.request("POST", path, body))
        with self.events(path, body) as events:
            for event, data in events:
                if event == "model_load.progress":
                    on_progress(float(data["progress"]))  # if this raises, the connection closes: load cancelled
                elif event == "model_load.done":
                    return RemoteInstance(self, data)
                elif event == "error":
                    raise _error_from(500, data, "the load failed")
        raise ServerConnectionError(f"{self.base_url} ended the load without a result")

    def model(
        self,
        kind: str,
        key: str | None,
        ttl: float | None,
        config: dict[str, Any],
        on_progress: ProgressCallback | None,
        no_hup: bool = False,
        loaded_by: str | None = None,
    ) -> RemoteInstance:
        """Get-or-load on the server."""
        body = {"kind": kind, "key": key, "ttl": ttl, "config": _load_config_body(config, kind)}
        return self._load("/models/model", body, on_progress, no_hup, loaded_by)

    def load_new_instance(
        self,
        kind: str,
        key: str,
        identifier: str | None,
        ttl: float | None,
        config: dict[str, Any],
        on_progress: ProgressCallback | None,
        no_hup: bool = False,
        loaded_by: str | None = None,
    ) -> RemoteInstance:
        """A new instance on the server."""
        body = {
            "kind": kind,
            "key": key,
            "identifier": identifier,
            "ttl": ttl,
            "config": _load_config_body(config, kind),
        }
        return self._load("/models/load_new_instance", body, on_progress, no_hup, loaded_by)

    def list_loaded(self, kind: str | None = None) -> list[RemoteInstance]:
        """Every instance the server has loaded (none once this client is closed, as in-process)."""
        if self._closed:
            return []
        params = {"kind": kind} if kind is not None else {}
        infos = self.request("GET", "/models/loaded", params=params)["instances"]
        return [RemoteInstance(self, {"info": info}) for info in infos]

    def unload(self, kind: str | None, key_or_identifier: str) -> list[str]:
        """Unload by identifier, or every instance of a model key; the identifiers unloaded."""
        self._check_open()
        unloaded: list[str] = self.request("POST", "/models/unload", {"kind": kind, "key": key_or_identifier})[
            "unloaded"
        ]
        return unloaded

    def estimate(self, kind: str, key: str, config: dict[str, Any]) -> dict[str, Any]:
        """What a load would cost on the server."""
        self._check_open()
        body = {"kind": kind, "key": key, "config": _load_config_body(config, kind)}
        estimate: dict[str, Any] = self.request("POST", "/models/estimate", body)
        return estimate

    def close(self) -> None:
        """Unload this client's own loads (not those with ``no_hup``); then its own calls raise `ClientClosedError`.
        Idempotent; a server that is already gone has nothing left to unload. As in-process, handles on instances
        that stay loaded keep working: the connections go when the last of them does."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(ServerConnectionError):
            self.request("POST", "/client/close", {"client": self.client_id})

    def __del__(self) -> None:
        """Drop the connections once neither the client nor a handle needs them."""
        http = getattr(self, "_http", None)
        if http is not None:
            with contextlib.suppress(Exception):
                http.close()


def _load_config_body(config: Mapping[str, Any], kind: str) -> dict[str, Any]:
    """The core's flat load config as LM Studio's camelCase dict, which the server parses as in-process."""
    return load_config_from_core(config, kind).to_dict() if config else {}


class RemoteInstance:
    """A loaded instance on the server. Like `_core.Instance` it holds no memory: after unload, calls raise
    `ModelUnloadedError` (the server checks the instance reference)."""

    def __init__(self, host: RemoteHost, loaded: Mapping[str, Any]) -> None:
        """Wrap ``{"info", "load_config"?}`` as the server answers a load or a listing."""
        info = loaded["info"]
        self._host = host
        self.identifier = str(info["identifier"])
        self.model_key = str(info["model_key"])
        self.kind = str(info["type"])
        self.instance_reference = str(info["instance_reference"])
        self._load_config: dict[str, Any] | None = loaded.get("load_config")

    def _call(self, path: str, **fields: Any) -> Any:
        body = {"identifier": self.identifier, "instance_reference": self.instance_reference, **fields}
        return self._host.request("POST", path, body)

    def is_loaded(self) -> bool:
        """Whether the server still has it loaded."""
        return bool(self._call("/instance/is_loaded")["loaded"])

    def info(self) -> dict[str, Any]:
        """The instance info, as `_core.Instance.info()`."""
        info: dict[str, Any] = self._call("/instance/info")
        return info

    def load_config(self) -> dict[str, Any]:
        """The applied load config (flat snake_case)."""
        if self._load_config is None:
            self._load_config = self._call("/instance/load_config")
        return dict(self._load_config)

    def unload(self) -> None:
        """Unload it; a no-op when it is already gone."""
        self._call("/instance/unload")

    def tokenize(self, text: str) -> list[int]:
        """Token ids as the model sees them."""
        tokens: list[int] = self._call("/instance/tokenize", text=text)["tokens"]
        return tokens

    def detokenize(self, tokens: Sequence[int]) -> str:
        """Text of token ids (LLMs)."""
        return str(self._call("/instance/detokenize", tokens=list(tokens))["text"])

    def context_length(self) -> int:
        """The context length it was loaded with."""
        return int(self.info()["context_length"])

    def apply_template(self, messages: Sequence[dict[str, str]], add_generation_prompt: bool) -> str:
        """The chat rendered with the model's template."""
        answer = self._call(
            "/instance/apply_prompt_template", messages=list(messages), add_generation_prompt=add_generation_prompt
        )
        return str(answer["prompt"])

    def generate(
        self,
        prompt: str | Sequence[int],
        config: dict[str, Any],
        on_prompt_progress: Callable[[float], object] | None = None,
    ) -> RemoteGeneration:
        """Start a streamed prediction from raw text or token ids; prompt progress as `_core.Instance.generate`."""
        prompt_field = prompt if isinstance(prompt, str) else list(prompt)
        return self._predict("/instance/complete", {"prompt": prompt_field}, config, on_prompt_progress)

    def generate_chat(
        self,
        messages: Sequence[dict[str, str]],
        config: dict[str, Any],
        on_prompt_progress: Callable[[float], object] | None = None,
    ) -> RemoteGeneration:
        """Start the assistant's reply to a chat: the server renders and tokenizes it as in-process
        `generate_chat` does (a BOS the template writes is not doubled)."""
        return self._predict("/instance/respond", {"messages": list(messages)}, config, on_prompt_progress)

    def _predict(
        self,
        path: str,
        prompt: Mapping[str, Any],
        config: dict[str, Any],
        on_prompt_progress: Callable[[float], object] | None,
    ) -> RemoteGeneration:
        body = {
            "identifier": self.identifier,
            "instance_reference": self.instance_reference,
            **prompt,
            "config": {_PREDICTION_KEYS[k]: v for k, v in config.items()},
            "stream": True,
        }
        return RemoteGeneration(self._host, path, body, on_prompt_progress)

    def evaluate(self, tokens: Sequence[int]) -> npt.NDArray[np.float32]:
        """Logits at every position, shape (len(tokens), vocab)."""
        return _array(self._call("/instance/evaluate", tokens=list(tokens)))

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """Embeddings, shape (len(texts), dim)."""
        return _array(self._call("/instance/embed", input=list(texts)))


class RemoteGeneration:
    """A prediction streaming from the server. Iterating yields fragments ``{"content", "tokens"}``; closing the
    connection (``close()``, or dropping it) cancels it on the server."""

    def __init__(
        self,
        host: RemoteHost,
        path: str,
        body: Mapping[str, Any],
        on_prompt_progress: Callable[[float], object] | None = None,
    ) -> None:
        """Start it; errors found before it streams (a prompt past the context, say) are raised here."""
        self._host = host
        self._on_prompt_progress = on_prompt_progress
        self._response = host.open_events(path, body)
        self._events = host.iter_events(self._response)
        self._lock = threading.Lock()
        self._result: dict[str, Any] | None = None
        self._closed = False
        self._prediction_id: str | None = None
        # The server sends the prediction's id first, so cancel() works before the first token.
        try:
            event, data = next(self._events, ("", None))
        except BaseException:
            self.close()
            raise
        if event != "prediction.started" or not isinstance(data, dict):
            self.close()
            if event == "error":
                raise _error_from(500, data, "the prediction failed")
            raise ServerConnectionError(f"{host.base_url} did not start the prediction (got {event!r})")
        self._prediction_id = str(data["prediction_id"])

    def __iter__(self) -> RemoteGeneration:
        """The generation is its own iterator."""
        return self

    def __next__(self) -> dict[str, Any]:
        """The next fragment; StopIteration once the result has arrived."""
        if self._closed:
            raise StopIteration
        try:
            for event, data in self._events:
                if event == "prediction.fragment":
                    fragment: dict[str, Any] = data
                    return fragment
                # A raising callback closes the connection below, which stops the prediction on the server.
                if event == "prediction.prompt_progress" and self._on_prompt_progress is not None:
                    self._on_prompt_progress(float(data["progress"]))
                if event == "prediction.result":
                    self._result = data
                    self.close()
                    raise StopIteration
                if event == "error":
                    raise _error_from(500, data, "the prediction failed")
        except BaseException:
            self.close()
            raise
        self.close()
        raise ServerConnectionError(f"{self._host.base_url} ended the prediction without a result")

    def cancel(self) -> None:
        """Ask the server to stop after the current token; the stream then ends with stop reason "userStopped"."""
        with self._lock:
            if self._closed or self._prediction_id is None:
                return
        self._host.request("POST", "/prediction/cancel", {"prediction_id": self._prediction_id})

    def result(self) -> dict[str, Any]:
        """Run to the end, then ``{"content", "tokens", "stats"}``."""
        for _ in self:
            pass
        if self._result is None:
            raise ModelHostError("the prediction was closed before it finished")
        return self._result

    def close(self) -> None:
        """Drop the connection (the server cancels the prediction if it is still running)."""
        with self._lock:
            self._closed = True
        self._response.close()

    def __del__(self) -> None:
        """An abandoned generation closes its connection."""
        response = getattr(self, "_response", None)
        if response is not None:
            with contextlib.suppress(Exception):
                response.close()
