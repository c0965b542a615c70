"""Fixtures of the dashboard tests: one namespace with a history in it, the dashboard as
real ``rapid-objection dashboard`` processes (one read-only, one with actions), and one
headless Chromium from Debian's packages, each started once per test module (so that a
module's actions never change what another module sees, whichever process runs it).

Outside CI a missing Redis, Chromium or Playwright skips these tests with one line; in
CI (``CI=true``) it fails them, like every other lane.
"""

from __future__ import annotations

import json
import re
import secrets
import signal
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import pytest
from anyio.abc import Process
from anyio.streams.text import TextReceiveStream

from rapid_objection.bus import (
    AppRegistered,
    Bus,
    ConnectionInfo,
    DeadLetterEntry,
    DeadLetters,
    Publisher,
    WaitResult,
)
from rapid_objection.bus._publisher import PluginPolicy
from rapid_objection.bus.testing import purge
from rapid_objection.plugin_workers import PluginInterface
from rapid_objection.plugin_workers.testing import running_worker
from tests.conftest import IN_CI
from tests.e2e import CLI, REPO_ROOT, subprocess_env

if TYPE_CHECKING:
    from playwright.async_api import Browser

CHROMIUM = Path("/usr/bin/chromium")
"""Debian's chromium (``apt-get install chromium``; .ci/run installs it in CI)."""

READY_TIMEOUT = 20.0
"""Seconds a dashboard process gets to import, connect and listen."""

REGISTRY = "dash-registry"
OK_PLUGIN = "dash-ok"
FAILING_PLUGIN = "dash-fails"
APP = "shop"


class Answers(PluginInterface):
    """Answers ``app_registered`` at once."""

    def __init__(self, name: str = OK_PLUGIN) -> None:
        super().__init__(name, "1.2.0")

    async def on_app_registered(
        self, app_name: str, connection: ConnectionInfo, config: dict[str, Any]
    ) -> None:
        return None


class Fails(PluginInterface):
    """Raises on ``app_registered``: with two deliveries, a dead letter."""

    def __init__(self) -> None:
        super().__init__(FAILING_PLUGIN, "0.9.0")

    async def on_app_registered(
        self, app_name: str, connection: ConnectionInfo, config: dict[str, Any]
    ) -> None:
        raise RuntimeError("the backup disk is full")


def lane_missing(message: str) -> None:
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


@dataclass
class Scene:
    """What the session's namespace holds before any dashboard starts."""

    bus: Bus
    url: str
    events: list[WaitResult]
    """The app_registered events published, oldest first; each answered by both plugins."""
    letters: list[DeadLetterEntry]
    """The dead letters of the two events (``FAILING_PLUGIN`` failed each twice)."""


@pytest.fixture(scope="module")
async def scene(redis_url: str) -> AsyncIterator[Scene]:
    """A namespace of its own: two app_registered events that ``OK_PLUGIN`` answered and
    ``FAILING_PLUGIN`` failed twice each (failure records and two dead letters)."""
    async with Bus.connect(redis_url, f"t-dash-{secrets.token_hex(4)}") as bus:
        try:
            policies = {OK_PLUGIN: PluginPolicy(required=True)}
            info = ConnectionInfo(dialect="sqlite", database="shop.db")
            async with (
                running_worker(Answers(), bus, consumer=f"{OK_PLUGIN}-1"),
                running_worker(Fails(), bus, consumer=f"{FAILING_PLUGIN}-1", max_deliveries=2),
                Publisher(bus, REGISTRY, policies=policies) as publisher,
            ):
                events = []
                for _ in range(2):
                    events.append(await publisher.emit(AppRegistered(connection=info), app=APP))
                with anyio.fail_after(5):
                    while len(letters := await DeadLetters(bus).list()) < 2:
                        await anyio.sleep(0.02)
            yield Scene(bus, redis_url, events, letters)
        finally:
            with anyio.CancelScope(shield=True):
                await purge(bus)


@dataclass
class Dashboard:
    """One ``rapid-objection dashboard`` process."""

    process: Process
    url: str
    """``http://127.0.0.1:PORT/``"""
    token: str | None
    log_path: Path
    lines: list[str] = field(default_factory=list)

    def log(self) -> list[dict[str, Any]]:
        """What it logged so far (it runs with ``--log-format json``): one record a line."""
        text = self.log_path.read_text()
        return [json.loads(line) for line in text.splitlines() if line.startswith("{")]

    async def stop(self) -> int:
        """SIGTERM, and the exit status (it stops gracefully, open pages or not)."""
        with anyio.CancelScope(shield=True):
            if self.process.returncode is None:
                self.process.send_signal(signal.SIGTERM)
            with anyio.move_on_after(10):
                await self.process.wait()
            if self.process.returncode is None:
                self.process.kill()
            code = await self.process.wait()
            await self.process.aclose()
        return code


async def start_dashboard(scene: Scene, log_path: Path, *args: str) -> Dashboard:
    """Start ``rapid-objection dashboard`` on the scene's namespace, on a free port,
    logging JSON lines to ``log_path``, and wait until it says where it listens."""
    command = [CLI, "dashboard", "--bus-url", scene.url, "--namespace", scene.bus.namespace]
    command += ["--port", "0", "--log-format", "json", *args]
    with log_path.open("wb") as log:  # the child keeps its own descriptor
        process = await anyio.open_process(
            command, cwd=REPO_ROOT, env=subprocess_env(), stderr=log
        )
    assert process.stdout is not None
    lines: list[str] = []
    token = None
    with anyio.fail_after(READY_TIMEOUT):
        buffer = ""
        async for text in TextReceiveStream(process.stdout):
            buffer += text
            *done, buffer = buffer.split("\n")
            lines += done
            for line in done:
                if found := re.search(r"token: (\S+)$", line):
                    token = found[1]
                if found := re.search(r"(http://\S+/)$", line):
                    return Dashboard(process, found[1], token, log_path, lines)
    raise AssertionError(f"the dashboard ended before it listened: {lines}")


@pytest.fixture(scope="module")
async def dashboards(
    scene: Scene, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[tuple[Dashboard, Dashboard]]:
    """(read-only, with actions): two dashboards of the scene's namespace."""
    found: dict[str, Dashboard] = {}
    logs = tmp_path_factory.mktemp("dashboard-logs")

    async def start(name: str, *args: str) -> None:
        found[name] = await start_dashboard(scene, logs / f"{name}.log", *args)

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(start, "read-only")
        tasks.start_soon(start, "actions", "--allow-actions", "--interval", "0.2")
    try:
        yield found["read-only"], found["actions"]
    finally:
        for dashboard in found.values():
            assert await dashboard.stop() == 0


@pytest.fixture(scope="module")
def read_only(dashboards: tuple[Dashboard, Dashboard]) -> Dashboard:
    return dashboards[0]


@pytest.fixture(scope="module")
def with_actions(dashboards: tuple[Dashboard, Dashboard]) -> Dashboard:
    return dashboards[1]


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    """Debian's headless chromium, driven by Playwright (never a downloaded browser)."""
    if not CHROMIUM.exists():  # noqa: ASYNC240 - once per session, before anything runs
        lane_missing(f"browser lane: {CHROMIUM} is missing (apt-get install chromium)")
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        lane_missing("browser lane: playwright is not installed (pip install -e '.[dev]')")
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=str(CHROMIUM))
        try:
            yield launched
        finally:
            await launched.close()


async def http(
    method: str, url: str, body: Any = None, *, token: str | None = None
) -> tuple[int, Any]:
    """One request with a JSON body (or none): (status, the JSON answer)."""
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data, headers, method=method)  # noqa: S310 - ours

    def send() -> tuple[int, Any]:
        try:
            with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as refused:
            return refused.code, json.loads(refused.read())

    return await anyio.to_thread.run_sync(send)
