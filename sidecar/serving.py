"""Serving the proxy and the admin port in one event loop, and stopping them with a drain.

uvicorn's own signal handling re-raises SIGTERM once its server has stopped, so the process
died with status 143 before anything after the servers (the ledger's close, the tracer's
flush) ran, and Kubernetes recorded an error exit on every rollout. Here the signals are the
caller's: SIGTERM (or a first SIGINT) asks every server to stop accepting, closes idle
keep-alive connections and lets requests in flight finish, for at most ``drain_timeout_s``;
what is still running then is cancelled (logged with its count). A second SIGINT stops at
once. :func:`serve_until_signalled` returns when every server has stopped, so the caller can
close the sidecar and flush its traces, and the process exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Generator, Sequence
from typing import Protocol

import uvicorn

__all__ = ["DrainingServer", "StoppableServer", "serve_until_signalled"]

log = logging.getLogger("mlwarden.sidecar.serving")

_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StoppableServer(Protocol):
    """What :func:`serve_until_signalled` drives: uvicorn's server (the admin port) and the
    public port's (:class:`~mlwarden.sidecar.server.HttpServer`)."""

    should_exit: bool
    force_exit: bool

    async def serve(self) -> None: ...


class DrainingServer(uvicorn.Server):
    """A uvicorn server that leaves signals to :func:`serve_until_signalled`."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


async def serve_until_signalled(servers: Sequence[StoppableServer]) -> list[int]:
    """Serve until a signal, or until one server stops (a port already taken stops the other
    too); returns the signals received. A server's failure is raised after all have stopped."""
    loop = asyncio.get_running_loop()
    received: list[int] = []

    def on_signal(sig: int) -> None:
        received.append(sig)
        hurry = sig == signal.SIGINT and any(s.should_exit for s in servers)
        if not hurry:
            log.info("%s: draining requests in flight, then stopping", signal.Signals(sig).name)
        for server in servers:
            server.should_exit = True
            if hurry:
                server.force_exit = True

    installed = []
    for sig in _SIGNALS:
        try:
            loop.add_signal_handler(sig, on_signal, sig)
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread
            continue
        installed.append(sig)
    try:
        tasks = [asyncio.ensure_future(s.serve()) for s in servers]
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for server in servers:
            server.should_exit = True
        await asyncio.gather(*tasks, return_exceptions=True)
        for task in done:
            task.result()
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
    return received
