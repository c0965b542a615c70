"""A ``redis-server`` of the test's own: a loopback port, an AOF in the test's directory,
stopped with SIGTERM and started again on the same port with the same data."""

from __future__ import annotations

import signal
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import IO

import anyio
import redis.asyncio as aioredis
from anyio.abc import Process
from redis import exceptions as redis_errors

FIRST_PORT = 16_400
PORTS_TRIED = 200
READY_TIMEOUT = 10.0
"""Seconds a starting server gets to answer PING (loading its AOF included)."""
STOP_TIMEOUT = 10.0
"""Seconds between SIGTERM and SIGKILL."""


class ServerError(Exception):
    """The server could not be started; the message is one line."""


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class RedisServer:
    """One ``redis-server`` process; ``start`` again after ``stop`` keeps port and data."""

    def __init__(self, executable: str, directory: Path) -> None:
        self.executable = executable
        self.directory = directory
        self.port = 0
        self.log_path = directory / "redis-server.log"
        self._process: Process | None = None
        self._log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def unix_url(self) -> str:
        """The same server through its Unix socket."""
        return f"unix://{self.directory / 'redis.sock'}?db=0"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.returncode is None

    def command(self) -> list[str]:
        # Every write reaches the AOF before its reply (appendfsync always), so a stop
        # and a start lose nothing that a client was told had been written.
        return [
            self.executable,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "yes",
            "--appendfsync", "always",
            "--dir", str(self.directory),
            "--unixsocket", str(self.directory / "redis.sock"),
            "--daemonize", "no",
        ]  # fmt: skip

    async def start(self) -> None:
        """Start (on a free port from ``FIRST_PORT`` the first time) and wait for PING."""
        if self.port:
            await self._launch()
            return
        for port in range(FIRST_PORT, FIRST_PORT + PORTS_TRIED):
            if not _port_is_free(port):
                continue
            self.port = port
            try:
                await self._launch()
                return
            except ServerError:
                if self._bound_elsewhere():
                    continue  # another process took the port in between: try the next
                raise
        raise ServerError(f"no free port in {FIRST_PORT}-{FIRST_PORT + PORTS_TRIED - 1}")

    async def _answering_is_ours(self) -> bool:
        # Another test process (pytest-xdist) may have taken the port between the check
        # and our bind: its server then answers PING here while ours exits with "Address
        # already in use". Only the server whose process id is ours counts as started.
        assert self._process is not None
        async with self.admin() as client:
            info = await client.info("server")
        return int(info["process_id"]) == self._process.pid

    def _bound_elsewhere(self) -> bool:
        return "Address already in use" in self.log()

    async def _launch(self) -> None:
        self._log = self.log_path.open("ab")
        self._process = await anyio.open_process(
            self.command(), stdin=None, stdout=self._log, stderr=self._log, cwd=self.directory
        )
        with anyio.move_on_after(READY_TIMEOUT):
            while self.running:
                try:
                    if await self._answering_is_ours():
                        return
                except (redis_errors.RedisError, OSError):
                    pass
                await anyio.sleep(0.02)
        reason = "did not answer PING" if self.running else "exited"
        await self.stop()
        last = self.log().strip().splitlines()[-1:] or ["(no output)"]
        raise ServerError(f"redis-server on port {self.port} {reason}: {last[0]}")

    async def stop(self) -> None:
        """SIGTERM (the server writes its AOF and exits), SIGKILL after ``STOP_TIMEOUT``."""
        process, self._process = self._process, None
        if process is not None:
            with anyio.CancelScope(shield=True):
                if process.returncode is None:
                    process.send_signal(signal.SIGTERM)
                    with anyio.move_on_after(STOP_TIMEOUT):
                        await process.wait()
                    if process.returncode is None:
                        process.kill()
                await process.wait()
                await process.aclose()
        if self._log is not None:
            self._log.close()
            self._log = None

    @asynccontextmanager
    async def admin(self) -> AsyncIterator[aioredis.Redis]:
        """A plain client for what the bus never does (CLIENT PAUSE, CLIENT KILL)."""
        client = aioredis.Redis(host="127.0.0.1", port=self.port)
        try:
            yield client
        finally:
            await client.aclose()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
