"""``modelhost ray serve|status``: the Ray Serve application from the command line (docs/cli.md)."""

from __future__ import annotations

import argparse
import json
import math
import os
import socket
import sys
import time
from typing import Any

from .._signals import stop_on_signals
from ..errors import ModelHostError
from ._config import DEFAULT_APP_NAME, DEFAULT_PORT, RayServeConfig

__all__ = ["add_ray_commands", "init_local", "run_ray_command"]

LOCAL_OBJECT_STORE_BYTES = 100 * 1024 * 1024
"""A local cluster's object store: requests and answers are small, so the minimum Ray accepts is plenty."""
_POLL_S = 0.5


def add_ray_commands(commands: Any) -> None:
    """Add ``ray serve`` and ``ray status`` to the CLI's subcommands."""
    ray = commands.add_parser("ray", help="serve the models on a Ray cluster (needs 'modelhost[ray]')")
    actions = ray.add_subparsers(dest="action", required=True, metavar="ACTION")
    serve = actions.add_parser("serve", help="run the Ray Serve application (Ctrl-C stops it)")
    serve.add_argument("--replicas", type=int, default=1, help="replicas, one modelhost host each (default 1)")
    serve.add_argument("--models-dir", help="models directory on every node (default: $MODELHOST_MODELS_DIR, ...)")
    serve.add_argument("--host", default="127.0.0.1", help="address the HTTP proxies bind (default 127.0.0.1)")
    serve.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"port; 0 picks a free one (default {DEFAULT_PORT})"
    )
    serve.add_argument("--budget", type=int, help="bytes of models per replica (modelhost's memory budget)")
    serve.add_argument("--ttl", type=float, help="idle seconds before a replica unloads a model (default: never)")
    serve.add_argument("--threads", type=int, default=1, help="compute threads per replica (default 1)")
    serve.add_argument("--num-cpus", type=float, help="CPUs Ray reserves per replica (default: --threads)")
    serve.add_argument("--context-length", type=int, help="context length LLMs load with")
    serve.add_argument("--models-per-replica", type=int, help="Serve's model cache size (default: from --budget)")
    serve.add_argument("--max-ongoing-requests", type=int, default=4, help="requests per replica at once")
    serve.add_argument("--api-token", help="require this bearer token (default: $LM_API_TOKEN, $LMSTUDIO_API_TOKEN)")
    serve.add_argument("--name", default=DEFAULT_APP_NAME, help=f"application name (default {DEFAULT_APP_NAME})")
    serve.add_argument("--address", help="Ray cluster (default: $RAY_ADDRESS, a running one, else a local one)")
    serve.add_argument(
        "--detach", action="store_true", help="leave it running on the (existing) cluster and return at once"
    )
    status = actions.add_parser("status", help="which replica holds which model")
    status.add_argument("--name", default=DEFAULT_APP_NAME, help=f"application name (default {DEFAULT_APP_NAME})")
    status.add_argument("--address", help="Ray cluster (default: $RAY_ADDRESS or the running one)")
    status.add_argument("--json", action="store_true", help="print JSON (with each replica's load/unload events)")


def init_local(num_cpus: int, temp_dir: str | None = None) -> None:
    """Start a lean single-machine Ray cluster: no dashboard, a small object store, workers' output to log files."""
    import ray

    ray.init(
        num_cpus=num_cpus,
        include_dashboard=False,
        object_store_memory=LOCAL_OBJECT_STORE_BYTES,
        log_to_driver=False,
        _temp_dir=temp_dir,
    )


def _connect(address: str | None) -> bool:
    """Connect to the cluster at ``address`` (or $RAY_ADDRESS, or a running one); False if there is none."""
    import ray

    address = address or os.environ.get("RAY_ADDRESS")
    try:
        ray.init(address=address or "auto", log_to_driver=False)
    except ConnectionError:
        if address:
            raise
        return False
    return True


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def _listening(host: str, port: int) -> tuple[str, int]:
    """Where Serve's proxies listen: a Serve instance already running on the cluster keeps its own HTTP options
    (``serve.start`` only logs that it ignores ours), so ask its controller."""
    from ray.serve.context import _get_global_client
    from ray.serve.exceptions import RayServeException

    try:
        client = _get_global_client()
    except RayServeException:
        client = None
    if client is None:
        return host, port
    return str(client.http_config.host), int(client.http_config.port)


def _serve(args: argparse.Namespace) -> int:
    from . import app, serve_module

    token = (
        args.api_token
        if args.api_token is not None
        else (os.environ.get("LM_API_TOKEN") or os.environ.get("LMSTUDIO_API_TOKEN") or None)
    )
    config = RayServeConfig(
        models_dir=os.path.abspath(args.models_dir) if args.models_dir else None,
        replicas=args.replicas,
        memory_budget=args.budget,
        ttl=args.ttl,
        threads=args.threads,
        num_cpus=args.num_cpus,
        context_length=args.context_length,
        models_per_replica=args.models_per_replica,
        max_ongoing_requests=args.max_ongoing_requests,
        api_token=token or None,
        name=args.name,
    )
    serve = serve_module()
    import ray

    existing = _connect(args.address)
    if not existing:
        if args.detach:
            raise ModelHostError("--detach needs a running Ray cluster (`ray start --head`); none was found")
        init_local(max(os.cpu_count() or 1, math.ceil(config.replicas * config.replica_cpus)))
    port = _free_port(args.host) if args.port == 0 else args.port
    try:
        serve.start(http_options={"host": args.host, "port": port})
        serve.run(app(config=config), name=config.name, route_prefix="/")
        host, port = _listening(args.host, port)
        if not args.detach:
            stop_on_signals()  # after Ray's own handlers, before the URL: whoever reads it may signal at once
        try:
            print(f"modelhost on Ray Serve serving on http://{host}:{port}", flush=True)
            if args.detach:
                return 0
            while True:
                time.sleep(_POLL_S)
        except KeyboardInterrupt:
            pass
        serve.delete(config.name)
    finally:
        if not existing:
            serve.shutdown()
            ray.shutdown()
    print("modelhost on Ray Serve stopped", file=sys.stderr)
    return 0


def _megabytes(n: object) -> str:
    return f"{int(n) / 1e6:.0f} MB" if isinstance(n, (int, float)) else "-"


def _status(args: argparse.Namespace) -> int:
    from . import status

    if not _connect(args.address):
        raise ModelHostError("no Ray cluster is running (give --address or set $RAY_ADDRESS)")
    replicas = status(args.name)
    if args.json:
        print(json.dumps(replicas, indent=2))
        return 0
    if not replicas:
        print(f"application {args.name!r}: no replica has reported yet")
        return 0
    for r in replicas:
        print(
            f"replica {r['replica']} on {r['node']} (pid {r['pid']}): {_megabytes(r['resident_bytes'])} of "
            f"{_megabytes(r['memory_budget']) if r['memory_budget'] else 'no budget'}, "
            f"up to {r['models_per_replica']} models, {r['loads']} loads, {r['unloads']} unloads"
        )
        for m in r["models"]:
            print(
                f"  {m['key']}  {m['type']}  {m['status']}  {m['in_flight']} in flight  {_megabytes(m['memory_bytes'])}"
            )
        if not r["models"]:
            print("  (no model loaded)")
    return 0


def run_ray_command(args: argparse.Namespace) -> int:
    """Run ``modelhost ray ACTION``; returns the exit status."""
    return _serve(args) if args.action == "serve" else _status(args)
