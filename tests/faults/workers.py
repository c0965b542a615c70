"""Starting a plugin's workers, as processes or in-process, behind one small interface.

Process workers run ``python -m rapid_objection.core._cli worker`` (the ``rapid-objection worker``
command) with the test's options; every worker is stopped when its ``async with``
block ends.
"""

from __future__ import annotations

import secrets
import signal
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Protocol

import anyio
import pytest
from anyio.abc import Process

from rapid_objection.bus import Bus, GroupMissing
from rapid_objection.plugin_workers.testing import running_worker
from tests.e2e import REPO_ROOT, subprocess_env

from . import PYTHON
from .plugins import Recorder

READY_TIMEOUT = 20.0
"""Seconds a worker process gets to import, connect, announce itself and start reading."""

STOP_TIMEOUT = 10.0
"""Seconds between SIGTERM and SIGKILL when the block ends: a stopping worker first
flushes what it handled, which after an outage may wait out one reconnect pause (5 s)."""


class Workers(Protocol):
    async def start(
        self,
        plugin: type[Recorder],
        count: int = 1,
        *,
        concurrency: int = 1,
        timeout: float | None = None,
        max_deliveries: int | None = None,
        claim_idle: float | None = None,
        required: bool = False,
    ) -> list[str]:
        """Start ``count`` workers of ``plugin`` (announced required when ``required``);
        returns their consumer names once each of them reads its group."""
        ...


@dataclass(frozen=True, slots=True)
class Options:
    concurrency: int = 1
    timeout: float | None = None
    max_deliveries: int | None = None
    claim_idle: float | None = None
    required: bool = False


def _consumer_name(plugin: type[Recorder]) -> str:
    return f"{plugin.NAME}-{secrets.token_hex(3)}"


@dataclass
class WorkerProcess:
    consumer: str
    process: Process
    log_path: Path
    _log: IO[bytes] = field(repr=False)

    @property
    def running(self) -> bool:
        return self.process.returncode is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    async def reap(self) -> None:
        with anyio.CancelScope(shield=True):
            await self.process.wait()
            await self.process.aclose()
        self._log.close()


class ProcessWorkers:
    """Worker processes on one bus; ``kill`` one of them the hard way."""

    def __init__(self, bus: Bus, url: str, directory: Path) -> None:
        self.bus = bus
        self.url = url
        self.directory = directory
        self.processes: dict[str, WorkerProcess] = {}

    async def start(
        self,
        plugin: type[Recorder],
        count: int = 1,
        *,
        concurrency: int = 1,
        timeout: float | None = None,
        max_deliveries: int | None = None,
        claim_idle: float | None = None,
        required: bool = False,
    ) -> list[str]:
        target = f"{plugin.__module__}:{plugin.__qualname__}"
        options = Options(concurrency, timeout, max_deliveries, claim_idle, required)
        started: list[WorkerProcess] = []
        for _ in range(count):
            consumer = _consumer_name(plugin)
            command = self._command(target, consumer, options)
            log_path = self.directory / f"{consumer}.log"
            log = log_path.open("wb")
            process = await anyio.open_process(
                command, stdin=None, stdout=log, stderr=log, cwd=REPO_ROOT, env=subprocess_env()
            )
            worker = WorkerProcess(consumer, process, log_path, log)
            self.processes[consumer] = worker
            started.append(worker)
        for worker in started:
            await self._ready(plugin.NAME, worker)
        return [worker.consumer for worker in started]

    def _command(self, target: str, consumer: str, options: Options) -> list[str]:
        """``python -m rapid_objection.core._cli worker`` with the options that were asked for."""
        command = [PYTHON, "-m", "rapid_objection.core._cli", "worker", target]
        command += ["--bus-url", self.url]
        command += ["--namespace", self.bus.namespace, "--consumer", consumer]
        command += ["--concurrency", str(options.concurrency)]
        for flag, value in (
            ("--timeout", options.timeout),
            ("--max-deliveries", options.max_deliveries),
            ("--claim-idle", options.claim_idle),
        ):
            if value is not None:
                command += [flag, str(value)]
        return command + (["--required"] if options.required else [])

    async def _ready(self, plugin: str, worker: WorkerProcess) -> None:
        """Wait until ``worker`` is in the directory and a consumer of its group."""
        with anyio.move_on_after(READY_TIMEOUT):
            while worker.running:
                if await self._announced(plugin, worker) and await self._reading(plugin, worker):
                    return
                await anyio.sleep(0.05)
        state = "still not ready" if worker.running else f"exited {worker.process.returncode}"
        pytest.fail(f"worker {worker.consumer} {state}; its output:\n{worker.log()}")

    async def _announced(self, plugin: str, worker: WorkerProcess) -> bool:
        return any(
            info.consumer == worker.consumer and info.pid == worker.process.pid
            for info in await self.bus.directory.workers(plugin)
        )

    async def _reading(self, plugin: str, worker: WorkerProcess) -> bool:
        try:
            infos = await self.bus.redis.xinfo_consumers(self.bus.keys.events, plugin)
        except GroupMissing:
            return False
        return any(info.name == worker.consumer for info in infos)

    async def kill(self, consumer: str) -> None:
        """SIGKILL: no drain, no ack, no goodbye; returns once the process is gone."""
        worker = self.processes[consumer]
        worker.process.send_signal(signal.SIGKILL)
        with anyio.fail_after(STOP_TIMEOUT):
            await worker.process.wait()

    def terminate(self, consumer: str) -> None:
        """SIGTERM: the worker drains what it read and leaves; it is reaped at the end."""
        self.processes[consumer].process.send_signal(signal.SIGTERM)

    def running(self, consumer: str) -> bool:
        return self.processes[consumer].running

    def logs(self) -> str:
        return "\n".join(f"--- {name}\n{w.log()}" for name, w in self.processes.items())

    async def stop_all(self) -> None:
        """SIGTERM every running worker, SIGKILL those still there after ``STOP_TIMEOUT``."""
        for worker in self.processes.values():
            if worker.running:
                worker.process.send_signal(signal.SIGTERM)
        with anyio.move_on_after(STOP_TIMEOUT, shield=True):
            for worker in self.processes.values():
                await worker.process.wait()
        for worker in self.processes.values():
            if worker.running:
                worker.process.kill()
            await worker.reap()


@asynccontextmanager
async def process_workers(bus: Bus, url: str, directory: Path) -> AsyncIterator[ProcessWorkers]:
    workers = ProcessWorkers(bus, url, directory)
    try:
        yield workers
    finally:
        await workers.stop_all()


class InProcessWorkers:
    """Workers inside the test (``rapid_objection.plugin_workers.testing.running_worker``)."""

    def __init__(self, bus: Bus, stack: AsyncExitStack) -> None:
        self.bus = bus
        self._stack = stack

    async def start(
        self,
        plugin: type[Recorder],
        count: int = 1,
        *,
        concurrency: int = 1,
        timeout: float | None = None,
        max_deliveries: int | None = None,
        claim_idle: float | None = None,
        required: bool = False,
    ) -> list[str]:
        options: dict[str, float] = {}
        if timeout is not None:
            options["timeout"] = timeout
        if max_deliveries is not None:
            options["max_deliveries"] = max_deliveries
        if claim_idle is not None:
            options["claim_idle"] = claim_idle
        names = []
        for _ in range(count):
            name = _consumer_name(plugin)
            worker = running_worker(
                plugin(),
                self.bus,
                consumer=name,
                concurrency=concurrency,
                required=required,
                **options,
            )
            await self._stack.enter_async_context(worker)
            names.append(name)
        return names


@asynccontextmanager
async def in_process_workers(bus: Bus) -> AsyncIterator[InProcessWorkers]:
    async with AsyncExitStack() as stack:
        yield InProcessWorkers(bus, stack)
