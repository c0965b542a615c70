"""Serving the dashboard with uvicorn: on a socket bound first (``--port 0`` picks a free
port, which is then known), stopping gracefully on SIGINT or SIGTERM."""

from __future__ import annotations

import logging
import signal
import socket
from collections.abc import Callable

import anyio
import uvicorn
from starlette.applications import Starlette

GRACEFUL_SHUTDOWN = 1
"""Seconds open pages (a live feed never ends by itself) get when the dashboard stops."""


class _Server(uvicorn.Server):
    """uvicorn's server, saying when it listens and when it stops."""

    def __init__(
        self,
        config: uvicorn.Config,
        listening: Callable[[], None],
        stopping: Callable[[], None],
    ) -> None:
        super().__init__(config)
        self._listening = listening
        self._stopping = stopping

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            self._listening()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self._stopping()
        await super().shutdown(sockets)


def bind(host: str, port: int) -> socket.socket:
    """A socket bound to ``host``:``port``; ``OSError`` (the address is taken, or not
    this machine's) says why not. uvicorn's own binding exits the process instead."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


async def serve(
    app: Starlette,
    host: str,
    port: int,
    *,
    listening: Callable[[int], None],
    stopping: Callable[[], None],
) -> None:
    """Serve ``app`` on ``host``:``port`` until a stop signal: ``listening(port)`` once
    connections are accepted, ``stopping()`` when a stop begins (before the server waits
    for the open responses). ``OSError`` when the address cannot be bound."""
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,  # the process's logging, not uvicorn's own
        access_log=False,
        http="h11",
        ws="none",
        lifespan="on",
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN,
    )
    if not logging.getLogger().isEnabledFor(logging.DEBUG):
        # Its start and stop lines say what the dashboard's own line on stdout says.
        logging.getLogger("uvicorn.error").setLevel(logging.WARNING)
    sock = bind(host, port)
    bound = sock.getsockname()[1]
    server = _Server(config, lambda: listening(bound), stopping)
    async with anyio.create_task_group() as tasks:
        # Before uvicorn takes the signals over (and after it hands them back, raising
        # what it caught again), a stop signal stops the server gracefully.
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:

            async def watch() -> None:
                async for _ in signals:
                    server.should_exit = True

            tasks.start_soon(watch)
            await server.serve(sockets=[sock])
            tasks.cancel_scope.cancel()
