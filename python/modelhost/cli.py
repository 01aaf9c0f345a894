"""``modelhost``: serve models over HTTP, and list, load, chat with and embed them (LM Studio's ``lms``).

Every command but ``serve`` talks to a running server: ``--host``, else ``$MODELHOST_API_HOST``, else the local one
if it answers (the one ``modelhost server start`` recorded, else 127.0.0.1 on ``$MODELHOST_PORT``, default 41234).
Without one (or with ``--local`` or ``--models-dir``) it works in this process. ``--json`` output is documented in
docs/cli.md and stays stable.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from . import _remote
from ._signals import stop_on_signals
from .chat import Chat
from .client import Client, _env_api_token
from .errors import ModelHostError, ModelKindError, ModelNotFoundError, ModelUnloadedError
from .handles import AnyModelHandle
from .models import ModelInstanceInfo
from .ray._cli import add_ray_commands, run_ray_command

__all__ = ["main"]

# Seconds `server start` waits for the new server to answer, and `server stop` for it to go.
_START_TIMEOUT = 60.0
_STOP_TIMEOUT = 60.0
_POLL = 0.1
# `server status` exits with LSB's "program is not running".
_NOT_RUNNING = 3


class _CliClient(Client):
    """A client whose loads are the CLI's: a ``close()`` never unloads them (a server keeps them)."""

    _loaded_by = "cli"


class _UsageError(Exception):
    """A command line that cannot run (exit status 2)."""


def _add_connection(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", help="server to use, host:port or URL (default: the local one if it answers)")
    parser.add_argument("--api-token", help="the server's API token (default: $LM_API_TOKEN, $LMSTUDIO_API_TOKEN)")
    parser.add_argument("--local", action="store_true", help="work in this process even if a server answers")
    parser.add_argument("--models-dir", help="models directory, in-process (implies --local)")


def _add_serving(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1, loopback only)")
    parser.add_argument("--port", type=int, help="port; 0 picks a free one (default $MODELHOST_PORT or 41234)")
    parser.add_argument("--api-token", help="require this bearer token (default: $LM_API_TOKEN, $LMSTUDIO_API_TOKEN)")
    parser.add_argument("--cors", action="store_true", help="allow cross-origin requests from any origin")
    parser.add_argument("--models-dir", help="models directory (default: $MODELHOST_MODELS_DIR or ~/.cache/...)")
    parser.add_argument("--memory-budget", type=int, help="bytes the loaded instances may take in all")
    parser.add_argument("--max-loaded", type=int, help="most instances loaded at once")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="modelhost", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="serve the models over HTTP in the foreground (Ctrl-C stops)")
    _add_serving(serve)

    server = commands.add_parser("server", help="start, stop or query a background server")
    actions = server.add_subparsers(dest="action", required=True, metavar="ACTION")
    start = actions.add_parser("start", help="start a server in the background")
    _add_serving(start)
    start.add_argument("--json", action="store_true", help="print the server's state as JSON")
    for name, help_text in (("stop", "stop the server (it drains requests in flight)"), ("status", "is one running")):
        action = actions.add_parser(name, help=help_text)
        action.add_argument("--host", help="server, host:port or URL (default: the local one)")
        action.add_argument("--api-token", help="the server's API token")
        action.add_argument("--json", action="store_true", help="print JSON")

    ls = commands.add_parser("ls", help="list downloaded models")
    kinds = ls.add_mutually_exclusive_group()
    kinds.add_argument("--llm", action="store_true", help="only LLMs")
    kinds.add_argument("--embedding", action="store_true", help="only embedding models")
    ls.add_argument("--json", action="store_true", help="print JSON")
    _add_connection(ls)

    ps = commands.add_parser("ps", help="list loaded instances")
    ps.add_argument("--json", action="store_true", help="print JSON")
    _add_connection(ps)

    load = commands.add_parser("load", help="load a new instance of a model")
    load.add_argument("key", help="model key or alias")
    load.add_argument("--identifier", help="the instance's identifier (default: the key, then key:2, ...)")
    load.add_argument("--ttl", type=float, help="idle seconds before it unloads itself (default: never)")
    load.add_argument("--context-length", type=int, help="tokens of context")
    load.add_argument("--gpu", help="share of layers on GPUs: 0..1, max or off")
    load.add_argument("--estimate-only", action="store_true", help="print the memory it would take; load nothing")
    load.add_argument("--json", action="store_true", help="print JSON")
    _add_connection(load)

    unload = commands.add_parser("unload", help="unload an instance (or every instance of a model key)")
    unload.add_argument("identifier", nargs="?", help="instance identifier or model key")
    unload.add_argument("--all", action="store_true", help="unload every instance")
    unload.add_argument("--json", action="store_true", help="print JSON")
    _add_connection(unload)

    chat = commands.add_parser("chat", help="chat with an LLM (one prompt, stdin when piped, else interactive)")
    chat.add_argument("key", help="model key, alias or instance identifier")
    chat.add_argument("prompt_words", nargs="*", metavar="PROMPT", help="the prompt (same as -p)")
    chat.add_argument("-p", "--prompt", help="the user message; print the reply and exit")
    chat.add_argument("-s", "--system", help="system prompt")
    chat.add_argument("--stats", action="store_true", help="print prediction statistics to stderr")
    chat.add_argument("--max-tokens", type=int, help="most tokens per reply")
    chat.add_argument("--temperature", type=float, help="sampling temperature (0: greedy)")
    chat.add_argument("--context-length", type=int, help="context length, if this loads the model")
    _add_connection(chat)

    add_ray_commands(commands)

    embed = commands.add_parser("embed", help="print embedding vectors (one JSON array per line)")
    embed.add_argument("key", help="model key, alias or instance identifier")
    embed.add_argument("texts", nargs="+", metavar="TEXT", help="texts to embed")
    _add_connection(embed)
    return parser


# --- Connecting -------------------------------------------------------------------------------------------------


def _token(args: argparse.Namespace) -> str | None:
    token: str | None = getattr(args, "api_token", None)
    return token if token is not None else _env_api_token()


def _server_address(args: argparse.Namespace) -> str | None:
    """The server a command talks to: --host, $MODELHOST_API_HOST, else the local one if it answers."""
    explicit = getattr(args, "host", None) or os.environ.get("MODELHOST_API_HOST")
    if explicit:
        return str(explicit)
    return _remote.find_local_api_host(_token(args))


def _open(args: argparse.Namespace) -> Client:
    if args.local or args.models_dir is not None:
        return _CliClient(models_dir=args.models_dir)
    address = _server_address(args)
    if address is None:
        return _CliClient()
    return _CliClient(api_host=address, api_token=_token(args))


def _in_process_note(client: Client, what: str) -> None:
    if client.api_host is None:
        print(
            f"note: no server is running, so {what} this process only (start one with `modelhost server start`)",
            file=sys.stderr,
        )


def _print_json(value: object) -> None:
    print(json.dumps(value, indent=2, sort_keys=False))


def _table(rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())


def _megabytes(n: int | None) -> str:
    return "" if n is None else f"{n / 1e6:.0f} MB"


# --- Serving ----------------------------------------------------------------------------------------------------


def _serve(args: argparse.Namespace) -> int:
    stop_on_signals()  # first: whoever reads the URL printed below may signal at once
    port = _remote.default_port() if args.port is None else args.port
    client = Client(models_dir=args.models_dir, memory_budget=args.memory_budget, max_loaded=args.max_loaded)
    server = client.serve(args.host, port, api_token=args.api_token, cors=args.cors)
    state = {
        "url": server.url,
        "pid": os.getpid(),
        "port": server.port,
        "models_dir": client.models_dir,
        "api_token_required": bool(args.api_token if args.api_token is not None else _env_api_token()),
        "started": time.time(),
    }
    path = _remote.server_state_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(f".{os.getpid()}.tmp")
        temporary.write_text(json.dumps(state), encoding="utf-8")
        temporary.replace(path)
        print(f"modelhost serving on {server.url}", flush=True)  # after the state file: whoever reads this finds both
        server.wait()  # returns on SIGTERM or Ctrl-C
    except KeyboardInterrupt:
        pass  # the signal came before wait() began: stop as it would have
    finally:
        server.stop()
        current = _remote.read_server_state()
        if current is not None and current.get("pid") == os.getpid():
            path.unlink(missing_ok=True)
        client.close()
    print("modelhost server stopped", file=sys.stderr)
    return 0


def _status(address: str | None, token: str | None) -> dict[str, Any]:
    health = _remote.probe_api_host(address, token) if address else None
    if health is None:
        return {"running": False}
    url = _remote.api_base_url(address) if address else None
    return {
        "running": True,
        "url": url,
        "pid": health.get("pid"),
        "version": health.get("version"),
        "models_dir": health.get("models_dir"),
        "authorized": health.get("status") == "ok",
    }


def _wait(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(_POLL)
    return True


def _server_start(args: argparse.Namespace) -> int:
    port = _remote.default_port() if args.port is None else args.port
    token = _token(args)
    if port != 0:
        running = _status(f"127.0.0.1:{port}", token)
        if running["running"]:
            return _report_start(args, running, "already running")
    command = [sys.executable, "-m", "modelhost", "serve", "--host", args.host, "--port", str(port)]
    for flag, value in (
        ("--models-dir", args.models_dir),
        ("--memory-budget", args.memory_budget),
        ("--max-loaded", args.max_loaded),
    ):
        if value is not None:
            command += [flag, str(value)]
    if args.cors:
        command.append("--cors")
    env = dict(os.environ)
    if args.api_token is not None:
        env["LM_API_TOKEN"] = args.api_token  # not on the command line, where `ps` would show it
    log_path = _remote.server_state_path().with_name("server.log")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )

    def answering() -> bool:
        state = _remote.read_server_state()
        return process.poll() is not None or (
            state is not None
            and state.get("pid") == process.pid
            and _remote.probe_api_host(str(state["url"]), token) is not None
        )

    if not _wait(answering, _START_TIMEOUT) or process.poll() is not None:
        if process.poll() is None:
            process.terminate()
        raise ModelHostError(f"the server did not start; see {log_path}")
    state = _remote.read_server_state() or {}
    return _report_start(args, _status(str(state.get("url")), token), "started")


def _report_start(args: argparse.Namespace, status: dict[str, Any], what: str) -> int:
    if args.json:
        _print_json(status)
    else:
        print(f"modelhost server {what} on {status['url']} (pid {status['pid']})")
    return 0


def _server_stop(args: argparse.Namespace) -> int:
    token = _token(args)
    address = _server_address(args)
    status = _status(address, token)
    if not status["running"] or address is None:
        if args.json:
            _print_json({"stopped": False, "running": False})
        else:
            print("no modelhost server is running")
        return 0
    _remote.stop_server(address, token)
    if not _wait(lambda: _remote.probe_api_host(address, token) is None, _STOP_TIMEOUT):
        raise ModelHostError(f"the server at {status['url']} did not stop within {_STOP_TIMEOUT:.0f} s")
    if args.json:
        _print_json({"stopped": True, "running": False, "url": status["url"], "pid": status["pid"]})
    else:
        print(f"modelhost server on {status['url']} stopped")
    return 0


def _server_status(args: argparse.Namespace) -> int:
    status = _status(_server_address(args), _token(args))
    if args.json:
        _print_json(status)
    elif status["running"]:
        print(f"modelhost server running on {status['url']} (pid {status['pid']}, models in {status['models_dir']})")
    else:
        print("no modelhost server is running")
    return 0 if status["running"] else _NOT_RUNNING


# --- Models -----------------------------------------------------------------------------------------------------


def _ls(client: Client, args: argparse.Namespace) -> int:
    kind = "llm" if args.llm else "embedding" if args.embedding else None
    models = client.list_downloaded_models(kind)
    loaded: dict[str, list[str]] = {}
    for handle in client.list_loaded_models(kind):
        loaded.setdefault(handle.model_key, []).append(handle.identifier)
    if args.json:
        fields = [f for f in vars(models[0]) if not f.startswith("_")] if models else []
        rows = [{**{f: getattr(m, f) for f in fields}, "loaded_instances": loaded.get(m.model_key, [])} for m in models]
        _print_json(rows)
        return 0
    table = [("KEY", "TYPE", "FORMAT", "ARCH", "PARAMS", "QUANT", "SIZE", "LOADED")]
    for m in models:
        table.append(
            (
                m.model_key,
                m.type,
                m.format,
                m.architecture or "",
                m.params_string or "",
                m.quantization or "",
                _megabytes(m.size_bytes),
                ", ".join(loaded.get(m.model_key, [])),
            )
        )
    _table(table)
    return 0


def _infos(client: Client) -> list[ModelInstanceInfo]:
    infos: list[ModelInstanceInfo] = []
    for handle in client.list_loaded_models():
        try:
            infos.append(handle.get_info())
        except ModelUnloadedError:  # unloaded since the listing
            continue
    return infos


def _instance_json(info: ModelInstanceInfo) -> dict[str, Any]:
    return {
        "identifier": info.identifier,
        "model_key": info.model_key,
        "type": info.type,
        "status": info.status,
        "in_flight": info.in_flight,
        "ttl": info.ttl,
        "expires_in": info.expires_in,
        "context_length": info.context_length,
        "memory_bytes": info.memory.get("total_bytes"),
        "device": info.device,
        "loaded_by": info.loaded_by,
        "last_used": info.last_used,
    }


def _ttl_text(info: ModelInstanceInfo) -> str:
    if info.ttl is None:
        return "none"
    left = "busy" if info.expires_in is None else f"{info.expires_in:.0f}s left"
    return f"{info.ttl:.0f}s ({left})"


def _ps(client: Client, args: argparse.Namespace) -> int:
    infos = _infos(client)
    if args.json:
        _print_json([_instance_json(i) for i in infos])
        return 0
    if not infos:
        print("no models are loaded" + ("" if client.api_host else " (no server is running)"))
        return 0
    table = [("IDENTIFIER", "MODEL", "TYPE", "STATUS", "TTL", "CONTEXT", "MEMORY", "DEVICE")]
    for i in infos:
        memory = i.memory.get("total_bytes")
        table.append(
            (
                i.identifier,
                i.model_key,
                i.type,
                i.status,
                _ttl_text(i),
                str(i.context_length),
                _megabytes(memory),
                i.device or "",
            )
        )
    _table(table)
    return 0


def _gpu_ratio(text: str) -> float | str:
    if text in ("max", "off"):
        return text
    try:
        return float(text)
    except ValueError:
        raise _UsageError(f"--gpu must be a number from 0 to 1, max or off, got {text!r}") from None


@contextmanager
def _progress_bar(enabled: bool, label: str) -> Iterator[Callable[[float], None] | None]:
    """A load-progress callback drawing a bar on stderr when it is a terminal (tqdm's, if installed)."""
    if not enabled or not sys.stderr.isatty():
        yield None
        return
    try:
        from tqdm import tqdm  # type: ignore[import-untyped]  # optional: `pip install 'modelhost[cli]'`
    except ImportError:

        def draw(fraction: float) -> None:
            filled = int(fraction * 30)
            print(f"\r{label} [{'#' * filled}{'.' * (30 - filled)}] {fraction:4.0%}", end="", file=sys.stderr)

        try:
            yield draw
        finally:
            print(file=sys.stderr)
        return
    bar = tqdm(total=100, desc=label, unit="%", file=sys.stderr, leave=False)

    def update(fraction: float) -> None:
        bar.update(round(fraction * 100) - bar.n)

    try:
        yield update
    finally:
        bar.close()


def _load(client: Client, args: argparse.Namespace) -> int:
    config: dict[str, Any] = {}
    if args.context_length is not None:
        config["contextLength"] = args.context_length
    if args.gpu is not None:
        config["gpu"] = {"ratio": _gpu_ratio(args.gpu)}
    namespaces = (client.llm, client.embedding)
    if args.estimate_only:
        for namespace in namespaces:
            try:
                estimate = namespace.estimate(args.key, config)
            except ModelKindError:
                continue
            if args.json:
                _print_json(vars(estimate))
            else:
                print(
                    f"{args.key}: {_megabytes(estimate.total_bytes)} (weights {_megabytes(estimate.weights_bytes)}, "
                    f"KV cache {_megabytes(estimate.kv_cache_bytes)}, scratch {_megabytes(estimate.scratch_bytes)})"
                )
            return 0
        raise ModelNotFoundError(f"no model matches {args.key!r}")
    started = time.monotonic()
    with _progress_bar(not args.json, f"loading {args.key}") as progress:
        handle: AnyModelHandle | None = None
        for namespace in namespaces:
            try:
                handle = namespace.load_new_instance(
                    args.key, args.identifier, ttl=args.ttl, config=config, on_load_progress=progress
                )
                break
            except ModelKindError:
                continue
        if handle is None:
            raise ModelNotFoundError(f"no model matches {args.key!r}")
    seconds = time.monotonic() - started
    info = handle.get_info()
    if args.json:
        _print_json({**_instance_json(info), "load_time_seconds": seconds})
    else:
        print(
            f"loaded {info.identifier} ({info.model_key}) in {seconds:.2f} s: context {info.context_length}, "
            f"{_megabytes(info.memory.get('total_bytes'))} on {info.device}"
        )
    _in_process_note(client, "it was loaded in")
    return 0


def _unload(client: Client, args: argparse.Namespace) -> int:
    if args.all == (args.identifier is not None):
        raise _UsageError("give an instance identifier or --all")
    unloaded: list[str] = []
    if args.all:
        for handle in client.list_loaded_models():
            handle.unload()
            unloaded.append(handle.identifier)
    else:
        for namespace in (client.llm, client.embedding):
            try:
                unloaded = namespace.unload(args.identifier)
                break
            except ModelNotFoundError:
                continue
        else:
            raise ModelNotFoundError(f"no loaded instance or model answers to {args.identifier!r}")
    if args.json:
        _print_json({"unloaded": unloaded})
    else:
        print(f"unloaded {', '.join(unloaded)}" if unloaded else "nothing was loaded")
    return 0


def _chat(client: Client, args: argparse.Namespace) -> int:
    load_config = {"contextLength": args.context_length} if args.context_length else None
    with _progress_bar(True, f"loading {args.key}") as progress:
        model = client.llm.model(args.key, config=load_config, on_load_progress=progress)
    prediction: dict[str, Any] = {}
    if args.max_tokens is not None:
        prediction["maxTokens"] = args.max_tokens
    if args.temperature is not None:
        prediction["temperature"] = args.temperature
    chat = Chat(args.system)
    prompt = args.prompt if args.prompt is not None else " ".join(args.prompt_words) or None
    if prompt is None and not sys.stdin.isatty():
        prompt = sys.stdin.read()
    interactive = prompt is None
    while True:
        if interactive:
            try:
                prompt = input("> ")
            except EOFError:
                print()
                return 0
            if not prompt.strip():
                return 0
        assert prompt is not None
        chat.add_user_message(prompt)
        stream = model.respond_stream(chat, prediction, on_message=chat.append)
        try:
            for fragment in stream:
                print(fragment.content, end="", flush=True)
        except KeyboardInterrupt:
            stream.close()
            print()
            return 130
        print()
        if args.stats:
            stats = stream.result().stats
            print(
                f"[{stats.predicted_tokens_count} tokens, {stats.tokens_per_second or 0:.1f} tok/s, "
                f"first token after {stats.time_to_first_token_sec or 0:.2f} s, {stats.stop_reason}]",
                file=sys.stderr,
            )
        if not interactive:
            return 0


def _embed(client: Client, args: argparse.Namespace) -> int:
    vectors = client.embedding.model(args.key).embed(args.texts)
    for vector in vectors:
        print(json.dumps(vector.tolist()))
    return 0


_MODEL_COMMANDS: dict[str, Callable[[Client, argparse.Namespace], int]] = {
    "ls": _ls,
    "ps": _ps,
    "load": _load,
    "unload": _unload,
    "chat": _chat,
    "embed": _embed,
}
_SERVER_ACTIONS: dict[str, Callable[[argparse.Namespace], int]] = {
    "start": _server_start,
    "stop": _server_stop,
    "status": _server_status,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0 ok, 1 error, 2 bad command line, 130 interrupted)."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "serve":
            return _serve(args)
        if args.command == "server":
            return _SERVER_ACTIONS[args.action](args)
        if args.command == "ray":
            return run_ray_command(args)
        with _open(args) as client:
            return _MODEL_COMMANDS[args.command](client, args)
    except _UsageError as e:
        parser.error(str(e))
    except (ModelHostError, OSError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
