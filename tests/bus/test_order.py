"""Per-app order across the group: an app's newer events wait while an older one is
pending with another consumer (a dead one included), on both lanes."""

from __future__ import annotations

import anyio
import pytest

from rapid_objection.bus import Bus

from .helpers import Runs, add_at, burst_ids, consumer_of, until

pytestmark = pytest.mark.anyio


class TestOrderThroughReclaims:
    @pytest.mark.parametrize("concurrency", [1, 4], ids=["inline", "lanes"])
    async def test_a_reclaimed_event_runs_before_the_newer_ones_of_its_app(
        self, bus: Bus, concurrency: int
    ) -> None:
        """Event 1 of an app is held by a consumer that died; events 2 and 3 of that app
        reach a live consumer, which runs them only after reclaiming 1: order [1, 2, 3]."""
        runs = Runs()
        await bus.ensure_group(runs.plugin)
        first, second, third = burst_ids(3)
        [one] = await add_at(bus, [first], apps=["shop"])
        taken = await bus.redis.xreadgroup(
            bus.keys.events, runs.plugin, "dead-1", count=1, block_ms=None
        )
        assert [entry_id for entry_id, _ in taken] == [first]
        two, three = await add_at(bus, [second, third], apps=["shop", "shop"])
        async with consumer_of(bus, runs, "live-1", concurrency=concurrency, claim_idle=0.3):
            await until(lambda: len(runs.started) >= 3, 5)
        order = [event for _, event, _ in runs.started]
        assert order == [one.id, two.id, three.id]

    async def test_another_apps_events_are_not_held_back(self, bus: Bus) -> None:
        """Only the app with an older pending event waits; another app's event runs at
        once, before the dead consumer's event is even reclaimed."""
        runs = Runs()
        await bus.ensure_group(runs.plugin)
        first, second = burst_ids(2)
        await add_at(bus, [first], apps=["shop"])
        await bus.redis.xreadgroup(bus.keys.events, runs.plugin, "dead-1", count=1, block_ms=None)
        [blog] = await add_at(bus, [second], apps=["blog"])
        async with consumer_of(bus, runs, "live-1", claim_idle=2.0):
            await until(lambda: len(runs.started) >= 1, 1.5)
            await anyio.sleep(0.1)
        assert [event for _, event, _ in runs.started] == [blog.id]
