"""A required plugin whose only worker was SIGKILLed: its stale heartbeat counts for
nothing, and registrations fail closed, whatever the registry saw before."""

from __future__ import annotations

import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from rapid_objection.bus import Bus, collect_status
from rapid_objection.bus._directory import is_alive
from rapid_objection.core import AppRegistry, PluginVeto

from .conftest import WorkerPool, WorkerProcess
from .plugins import Gatekeeper

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

HOOK_TIMEOUT = 10.0
"""The plugin's ack deadline: the vetoes below come long before it."""


def gated(bus: Bus, redis_url: str, registry: str) -> dict[str, Any]:
    """A registry on ``bus``'s namespace whose external gatekeeper is required, abort."""
    return {
        "registry": {"id": registry},
        "bus": {"url": redis_url, "namespace": bus.namespace},
        "plugin_manager": {"load_timeout": 0.5},
        "plugins": {
            Gatekeeper.NAME: {
                "module": f"{Gatekeeper.__module__}:Gatekeeper",
                "mode": "external",
                "required": True,
                "on_failure": "abort",
                "timeout": HOOK_TIMEOUT,
            }
        },
    }


async def until_stale(bus: Bus, worker: WorkerProcess) -> None:
    """Wait until the killed worker's heartbeat has aged past the liveness window."""
    with anyio.fail_after(10):
        while True:
            [info] = [w for w in await bus.directory.workers() if w.consumer == worker.consumer]
            if not is_alive(info.seen):
                return
            await anyio.sleep(0.2)


@pytest.fixture
async def registries() -> AsyncIterator[list[AppRegistry]]:
    made: list[AppRegistry] = []
    yield made
    with anyio.CancelScope(shield=True):
        for registry in made:
            await registry.shutdown()


async def vetoed(registry: AppRegistry, tmp_path: Path, app: str) -> None:
    started = time.monotonic()
    with pytest.raises(PluginVeto, match="no live consumer") as caught:
        await registry.register_app(app, {"database": {"url": f"sqlite:///{tmp_path / app}.db"}})
    assert time.monotonic() - started < 2.0
    assert (caught.value.plugin, caught.value.event) == (
        Gatekeeper.NAME,
        "app_registration_started",
    )
    assert not registry.has_app(app)
    assert not (tmp_path / f"{app}.db").exists()


class TestStaleHeartbeat:
    async def test_registrations_fail_closed_after_the_only_worker_is_killed(
        self,
        redis_bus: Bus,
        redis_url: str,
        workers: WorkerPool,
        registries: list[AppRegistry],
        tmp_path: Path,
    ) -> None:
        """Registry A loads the plugin while its worker runs and registers an app through
        it. The worker is SIGKILLed; once its heartbeat is stale, A's next registration is
        vetoed at once, and so is one on registry B started afterwards (whose load fails:
        the stale record is no live worker); ``status`` shows the no_consumer failures."""
        (worker,) = await workers.start(Gatekeeper)
        first = AppRegistry(gated(redis_bus, redis_url, "fail-closed-a"))
        registries.append(first)
        assert (await first.initialize()).loaded_plugins == [Gatekeeper.NAME]
        await first.register_app("shop", {"database": {"url": f"sqlite:///{tmp_path}/shop.db"}})

        worker.signal(signal.SIGKILL)
        assert await worker.process.wait() == -signal.SIGKILL
        await until_stale(redis_bus, worker)
        await vetoed(first, tmp_path, "evil-a")

        second = AppRegistry(gated(redis_bus, redis_url, "fail-closed-b"))
        registries.append(second)
        result = await second.initialize()
        assert [(f.name, f.phase) for f in result.failed_plugins] == [(Gatekeeper.NAME, "manifest")]
        await vetoed(second, tmp_path, "evil-b")

        report = await collect_status(redis_bus)
        vetoes = {
            (f.registry, f.app)
            for f in report.recent_failures
            if f.kind == "no_consumer" and f.type == "app_registration_started"
        }
        assert vetoes == {("fail-closed-a", "evil-a"), ("fail-closed-b", "evil-b")}
        assert f"required plugin {Gatekeeper.NAME!r} has no live consumer" in report.problems()
