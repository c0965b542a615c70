"""Fixtures of the end-to-end lane: a real-Redis bus and a pool of worker processes."""

from __future__ import annotations

import secrets
import signal
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import anyio
import pytest
from anyio.abc import Process

from rapid_objection.bus import Bus, GroupMissing

from . import CLI, REPO_ROOT, subprocess_env
from .plugins import Recorder

READY_TIMEOUT = 20.0
"""Seconds a worker process gets to import, connect, announce itself and start reading."""

STOP_TIMEOUT = 5.0
"""Seconds between SIGTERM and SIGKILL on teardown."""


@dataclass
class WorkerProcess:
    """One ``rapid-objection worker`` process and the consumer name it runs under."""

    plugin: str
    consumer: str
    process: Process
    log_path: Path
    _log: IO[bytes] = field(repr=False)

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def running(self) -> bool:
        return self.process.returncode is None

    def signal(self, signum: signal.Signals) -> None:
        if self.running:
            self.process.send_signal(signum)

    def log(self) -> str:
        """Everything the process wrote so far (stdout and stderr)."""
        return self.log_path.read_text(errors="replace")

    async def reap(self) -> None:
        """Wait for the process to end and release its resources."""
        with anyio.CancelScope(shield=True):
            await self.process.wait()
            await self.process.aclose()
        self._log.close()


class WorkerPool:
    """Starts worker processes on one namespace and stops every one of them at the end."""

    def __init__(self, bus: Bus, url: str, logs: Path) -> None:
        self.bus = bus
        self.url = url
        self.logs = logs
        self.processes: list[WorkerProcess] = []

    async def start(
        self,
        plugin: type[Recorder],
        count: int = 1,
        *,
        options: Sequence[str] = (),
        launcher: Sequence[str] = (CLI,),
    ) -> list[WorkerProcess]:
        """Start ``count`` workers of ``plugin``; returns once each of them is reading.

        ``launcher``: the command before ``worker`` (a script that wraps the CLI)."""
        target = f"{plugin.__module__}:{plugin.__qualname__}"
        started = []
        for _ in range(count):
            consumer = f"{plugin.NAME}-{secrets.token_hex(3)}"
            log_path = self.logs / f"{consumer}.log"
            log = log_path.open("wb")
            command = [*launcher, "worker", target, "--bus-url", self.url]
            command += ["--namespace", self.bus.namespace, "--consumer", consumer, *options]
            process = await anyio.open_process(
                command, stdin=None, stdout=log, stderr=log, cwd=REPO_ROOT, env=subprocess_env()
            )
            worker = WorkerProcess(plugin.NAME, consumer, process, log_path, log)
            self.processes.append(worker)
            started.append(worker)
        for worker in started:
            await self._ready(worker)
        return started

    async def _ready(self, worker: WorkerProcess) -> None:
        """Wait until ``worker`` is in the directory and a consumer of its plugin's group."""
        with anyio.move_on_after(READY_TIMEOUT):
            while worker.running:
                if await self._announced(worker) and await self._reading(worker):
                    return
                await anyio.sleep(0.05)
        state = "still not ready" if worker.running else f"exited {worker.process.returncode}"
        pytest.fail(f"worker {worker.consumer} {state}; its output:\n{worker.log()}")

    async def _announced(self, worker: WorkerProcess) -> bool:
        return any(
            info.consumer == worker.consumer and info.pid == worker.pid
            for info in await self.bus.directory.workers(worker.plugin)
        )

    async def _reading(self, worker: WorkerProcess) -> bool:
        redis, key = self.bus.redis, self.bus.keys.events
        # A worker announces itself a moment before its group (and the stream) exist, and
        # XINFO CONSUMERS on a missing stream is an error the adapter does not map.
        if worker.plugin not in {group.name for group in await redis.xinfo_groups(key)}:
            return False
        try:
            infos = await redis.xinfo_consumers(key, worker.plugin)
        except GroupMissing:
            return False
        return any(info.name == worker.consumer for info in infos)

    async def stop_all(self) -> None:
        """SIGTERM every running worker, SIGKILL those still there after ``STOP_TIMEOUT``."""
        for worker in self.processes:
            worker.signal(signal.SIGTERM)
        with anyio.move_on_after(STOP_TIMEOUT, shield=True):
            for worker in self.processes:
                await worker.process.wait()
        for worker in self.processes:
            worker.signal(signal.SIGKILL)
            await worker.reap()


@pytest.fixture
async def workers(redis_bus: Bus, redis_url: str, tmp_path: Path) -> AsyncIterator[WorkerPool]:
    """Worker processes on ``redis_bus``'s namespace, all stopped (then purged) on teardown."""
    pool = WorkerPool(redis_bus, redis_url, tmp_path)
    try:
        yield pool
    finally:
        await pool.stop_all()
