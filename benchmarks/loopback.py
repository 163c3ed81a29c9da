"""What every benchmark that starts servers needs: a free loopback port, an app served on it."""

from __future__ import annotations

import socket
from typing import Any

__all__ = ["LOOPBACK", "free_port", "serve"]

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """A port the OS has just given out on loopback (free unless someone races for it)."""
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def serve(app: Any, port: int) -> None:
    """Serve ``app`` under uvicorn on loopback until the process is stopped."""
    import uvicorn

    uvicorn.run(app, host=LOOPBACK, port=port, log_level="warning", access_log=False, lifespan="on")
