"""Where the replicas of one application report their state, for ``modelhost ray status`` and the ingress's status
route. Serve gives no way to call one chosen replica, so each replica pushes its state here (after every load and
unload, and every ``REPORT_INTERVAL_S``); a replica that stops reporting is dropped after ``STALE_AFTER_S``."""

from __future__ import annotations

import time
from typing import Any

from ._replica import REPORT_INTERVAL_S

STALE_AFTER_S = 3 * REPORT_INTERVAL_S


class ModelhostRegistry:
    """The latest state each live replica reported (one registry replica per application)."""

    def __init__(self) -> None:
        self._replicas: dict[str, tuple[float, dict[str, Any]]] = {}

    def report(self, status: dict[str, Any]) -> None:
        """A replica's state (``ModelhostReplica.status()``); the newest replaces the last."""
        self._replicas[str(status["replica"])] = (time.monotonic(), status)

    def forget(self, replica: str) -> None:
        """A replica that shuts down leaves at once."""
        self._replicas.pop(replica, None)

    def replicas(self) -> list[dict[str, Any]]:
        """The states of the replicas that reported within ``STALE_AFTER_S``, by replica name."""
        now = time.monotonic()
        for name, (seen, _) in list(self._replicas.items()):
            if now - seen > STALE_AFTER_S:
                del self._replicas[name]
        return [status for _, (_, status) in sorted(self._replicas.items())]
