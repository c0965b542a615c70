"""Fixtures of the fault suite: a redis-server per test, the two lanes, the report line.

The process lane needs ``redis-server`` on PATH. Outside CI a missing or failing server
skips the lane with one line; with ``CI=true`` (as in ``tests/conftest.py``) it fails.
"""

from __future__ import annotations

import os
import secrets
import shutil
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn, Protocol

import pytest

from rapid_objection.bus import Bus
from rapid_objection.bus._redis_memory import forget_memory_server

from .server import RedisServer, ServerError
from .tally import Tally
from .workers import Workers, in_process_workers, process_workers

IN_CI = os.environ.get("CI") == "true"
SCENARIO_LINE = "fault scenario"
"""The user property that carries a scenario's report line to the terminal summary
(a property travels with the test's report, from an xdist worker to the controller)."""
_LINES: list[str] = []


class Report(Protocol):
    def __call__(self, tally: Tally, note: str = "") -> None: ...


def _unavailable(message: str) -> NoReturn:
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


NOT_ON_PATH = "redis-server lane: redis-server is not on PATH"


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """A missing redis-server skips the lane before any fixture runs: raised here, the
    skips of all its tests share one location, so ``-ra`` shows them as one line."""
    if item.get_closest_marker("redis_server") and shutil.which("redis-server") is None:
        _unavailable(NOT_ON_PATH)


@pytest.fixture(scope="session")
def redis_server_path() -> str:
    found = shutil.which("redis-server")
    if found is None:
        _unavailable(NOT_ON_PATH)
    return found


@pytest.fixture
async def server(redis_server_path: str, tmp_path: Path) -> AsyncIterator[RedisServer]:
    """A redis-server of this test's own; stopped (and its data left in tmp_path) after."""
    started = RedisServer(redis_server_path, tmp_path)
    try:
        await started.start()
    except ServerError as exc:
        _unavailable(f"redis-server lane: {exc}")
    try:
        yield started
    finally:
        await started.stop()


@pytest.fixture
async def server_bus(server: RedisServer, namespace: str) -> AsyncIterator[Bus]:
    async with Bus.connect(server.url, namespace) as bus:
        yield bus


@dataclass
class Lane:
    """Where a scenario runs: worker processes on a redis-server, or in-process on
    the embedded bus."""

    name: str
    bus: Bus
    url: str
    directory: Path

    @property
    def processes(self) -> bool:
        return self.name == "process"

    def workers(self) -> AbstractAsyncContextManager[Workers]:
        if self.processes:
            return process_workers(self.bus, self.url, self.directory)
        return in_process_workers(self.bus)


@pytest.fixture(params=[pytest.param("process", marks=pytest.mark.redis_server), "embedded"])
def lane_url(request: pytest.FixtureRequest) -> Iterator[str]:
    if request.param == "process":
        server: RedisServer = request.getfixturevalue("server")
        yield server.url
        return
    name = f"faults-{secrets.token_hex(6)}"
    yield f"memory://{name}"
    forget_memory_server(name)


@pytest.fixture
async def lane(lane_url: str, namespace: str, tmp_path: Path) -> AsyncIterator[Lane]:
    name = "embedded" if lane_url.startswith("memory:") else "process"
    async with Bus.connect(lane_url, namespace) as bus:
        yield Lane(name, bus, lane_url, tmp_path)


@pytest.fixture
def report(request: pytest.FixtureRequest) -> Report:
    """``report(tally, note)``: the scenario's line, on stderr and in the summary.

    Request it first, so that its clock includes the other fixtures' setup."""
    started = time.monotonic()

    def write(tally: Tally, note: str = "") -> None:
        extra = f" ({note})" if note else ""
        took = time.monotonic() - started
        line = f"{request.node.name}: {tally.line()}{extra} in {took:.1f}s"
        print(line, file=sys.stderr)
        summarise(request, line)

    return write


def summarise(request: pytest.FixtureRequest, line: str) -> None:
    """Repeat ``line`` in the session's terminal summary."""
    request.node.user_properties.append((SCENARIO_LINE, line))


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "call":
        _LINES.extend(str(v) for k, v in report.user_properties if k == SCENARIO_LINE)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _LINES:
        terminalreporter.section("fault scenarios")
        for line in _LINES:
            terminalreporter.write_line(line)
