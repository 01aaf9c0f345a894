"""modelhost on Ray Serve: many replicas, each a modelhost host, and each request routed to a replica that already
holds its model (Serve's model multiplexing, sized by modelhost's memory budget). Needs ``pip install
'modelhost[ray]'``. See docs/scale-out.md.

```python
import ray
from ray import serve
import modelhost.ray

ray.init()
serve.run(modelhost.ray.app(models_dir="/models", replicas=2, memory_budget=4 << 30), name="modelhost")
# POST http://127.0.0.1:8000/v1/chat/completions {"model": "smollm2-135m-instruct", ...}, as `modelhost serve`
serve.shutdown()
```
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..errors import ModelHostError
from ._cli import init_local
from ._config import DEFAULT_APP_NAME, DEFAULT_PORT, RayServeConfig, models_per_replica

if TYPE_CHECKING:
    from ray.serve import Application

__all__ = [
    "DEFAULT_APP_NAME",
    "DEFAULT_PORT",
    "RayServeConfig",
    "app",
    "init_local",
    "models_per_replica",
    "serve_module",
    "status",
]

_INSTALL_HINT = "modelhost.ray needs Ray Serve: pip install 'modelhost[ray]'"
INGRESS_MAX_ONGOING_REQUESTS = 1000
"""The ingress only parses and streams, so it admits many requests; the replicas bound the work."""


def serve_module() -> Any:
    """``ray.serve``, or an ImportError saying how to install it."""
    try:
        from ray import serve
    except ImportError as e:
        raise ImportError(_INSTALL_HINT) from e
    return serve


def app(
    models_dir: str | None = None,
    replicas: int = 1,
    memory_budget: int | None = None,
    ttl: float | None = None,
    *,
    config: RayServeConfig | None = None,
    **settings: Any,
) -> Application:
    """A Serve application serving the models dir's models over the OpenAI routes of ``modelhost serve``:
    ``serve.run(modelhost.ray.app(...), name=...)``.

    Args:
        models_dir: The models directory on every replica's node (see ``RayServeConfig``).
        replicas: How many replicas, each one modelhost host.
        memory_budget: Bytes of models per replica.
        ttl: Idle seconds before a replica unloads a model on its own (None: never).
        config: A whole ``RayServeConfig`` instead of the arguments.
        **settings: Other ``RayServeConfig`` fields (``threads``, ``context_length``, ``api_token``, ...).

    Returns:
        The application (ingress, replicas and the status registry), to pass to ``serve.run``.

    Raises:
        InvalidConfigError: A bad setting.
        ImportError: Ray Serve is not installed.
    """
    if config is None:
        config = RayServeConfig(
            models_dir=models_dir, replicas=replicas, memory_budget=memory_budget, ttl=ttl, **settings
        )
    elif models_dir is not None or replicas != 1 or memory_budget is not None or ttl is not None or settings:
        raise ModelHostError("give either config= or the settings as arguments, not both")
    serve = serve_module()
    from ._ingress import ModelhostIngress
    from ._registry import ModelhostRegistry
    from ._replica import ModelhostReplica

    fields = config.to_dict()
    registry = serve.deployment(ModelhostRegistry, name="ModelhostRegistry", ray_actor_options={"num_cpus": 0})
    replica = serve.deployment(
        ModelhostReplica,
        name="ModelhostReplica",
        num_replicas=config.replicas,
        max_ongoing_requests=config.max_ongoing_requests,
        ray_actor_options={"num_cpus": config.replica_cpus},
    )
    ingress = serve.deployment(
        ModelhostIngress,
        name="ModelhostIngress",
        max_ongoing_requests=INGRESS_MAX_ONGOING_REQUESTS,
        ray_actor_options={"num_cpus": 0},
    )
    registry_node = registry.bind()
    application: Application = ingress.bind(replica.bind(fields, registry_node), registry_node, fields)
    return application


def status(name: str = DEFAULT_APP_NAME) -> list[dict[str, Any]]:
    """What each live replica of the running application ``name`` holds: its models (key, memory, requests in
    flight), its memory budget and peak, and its load/unload history. Needs a connection to the cluster
    (``ray.init(address=...)``).

    Raises:
        ModelHostError: No such application is running.
    """
    serve = serve_module()
    try:
        handle = serve.get_deployment_handle("ModelhostRegistry", app_name=name)
        replicas: list[dict[str, Any]] = handle.replicas.remote().result(timeout_s=30)
    except Exception as e:
        raise ModelHostError(f"no modelhost application {name!r} is running on this Ray cluster: {e}") from e
    return replicas
