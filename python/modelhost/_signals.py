"""How the serving commands (``modelhost serve``, ``modelhost ray serve``) stop on signals."""

from __future__ import annotations

import signal
from typing import NoReturn

__all__ = ["stop_on_signals"]


def _terminate(signum: int, frame: object) -> NoReturn:
    raise KeyboardInterrupt


def stop_on_signals() -> None:
    """Make SIGTERM stop the command as Ctrl-C does (``KeyboardInterrupt``), and Ctrl-C stop it even where SIGINT
    came in ignored, as a background job of a non-interactive shell inherits it: uvicorn and llama.cpp's server
    handle both signals whatever they inherited, too."""
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGINT, signal.default_int_handler)
