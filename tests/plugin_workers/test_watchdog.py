"""The hook watchdog: one lazily re-armed timer holds every running hook to its timeout."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from rapid_objection.bus import Ack, Delivery, HealthCheck
from rapid_objection.plugin_workers import Dispatcher, PluginInterface
from rapid_objection.plugin_workers.testing import envelope_for

pytestmark = pytest.mark.anyio


class Sleepy(PluginInterface):
    """Sleeps as long as the health status says."""

    def __init__(self) -> None:
        super().__init__("sleepy", "1.0.0")

    async def on_health_check(self, app_name: str, health_status: dict[str, Any]) -> str:
        await anyio.sleep(float(health_status["sleep"]))
        return app_name


def delivery(app: str, sleep: float) -> Delivery:
    return Delivery("0-1", envelope_for(HealthCheck(health={"sleep": sleep}), app=app))


class TestWatchdog:
    async def test_only_the_overrunning_hook_of_concurrent_ones_times_out(self) -> None:
        """Hooks running side by side: the one past its timeout is cancelled and acked as
        a HookTimeout; the quick ones before and after it answer normally."""
        dispatcher = Dispatcher(Sleepy(), "sleepy", "c-1", timeout=0.3)
        answers: dict[str, Ack] = {}

        async def run(app: str, sleep: float) -> None:
            answer = await dispatcher(delivery(app, sleep))
            assert isinstance(answer, Ack)
            answers[app] = answer

        async with anyio.create_task_group() as group:
            group.start_soon(run, "slow", 5.0)
            group.start_soon(run, "quick", 0.05)
            group.start_soon(run, "late-quick", 0.2)
        assert answers["slow"].error_type == "HookTimeout"
        assert (answers["quick"].status, answers["late-quick"].status) == ("ok", "ok")

    async def test_hooks_one_after_another_each_get_their_own_time(self) -> None:
        """Sequential hooks that together exceed one timeout are not cut short: each
        hook's deadline starts with the hook."""
        dispatcher = Dispatcher(Sleepy(), "sleepy", "c-1", timeout=0.3)
        for n in range(4):
            answer = await dispatcher(delivery(f"app-{n}", 0.15))
            assert isinstance(answer, Ack)
            assert answer.status == "ok"

    async def test_an_outside_cancellation_is_not_a_hook_timeout(self) -> None:
        """Cancelling the worker's task (a stop) propagates; it is not turned into an ack."""
        dispatcher = Dispatcher(Sleepy(), "sleepy", "c-1", timeout=5)
        with anyio.move_on_after(0.1) as scope:
            await dispatcher(delivery("shop", 2.0))
        assert scope.cancelled_caught
