"""Leases: a live consumer keeps every entry it still runs, however its ids sort and
however long its drain takes, on both lanes."""

from __future__ import annotations

import anyio
import pytest

from rapid_objection.bus import Bus
from rapid_objection.bus._ids import id_key, next_id, sorted_ids

from .helpers import Runs, add_at, burst_ids, consumer_of, until

pytestmark = pytest.mark.anyio


class TestIds:
    @pytest.mark.parametrize(
        ("ids", "ordered"),
        [
            (["5-10", "5-9", "5-2"], ["5-2", "5-9", "5-10"]),
            (["10-0", "9-99"], ["9-99", "10-0"]),
            (["7", "6-1"], ["6-1", "7"]),
        ],
        ids=["sequence", "milliseconds", "bare"],
    )
    def test_ids_sort_as_numbers(self, ids: list[str], ordered: list[str]) -> None:
        """Stream ids compare by (milliseconds, sequence), never as text."""
        assert sorted_ids(ids) == ordered

    def test_next_id_is_the_smallest_after(self) -> None:
        """The id after "5-9" is "5-10", which sorts after it."""
        assert next_id("5-9") == "5-10"
        assert id_key(next_id("5-9")) > id_key("5-9")


class TestRenewal:
    async def test_a_burst_of_one_millisecond_keeps_every_lease(self, bus: Bus) -> None:
        """Twelve entries of one millisecond, all running longer than the idle threshold,
        are all renewed: a live peer reclaims none of them and each runs once."""
        runs = Runs(seconds=1.2)
        await bus.ensure_group(runs.plugin)
        async with consumer_of(bus, runs, "holder", concurrency=12) as holder:
            envelopes = await add_at(bus, burst_ids(12), apps=[f"a{n}" for n in range(12)])
            await until(lambda: runs.running == 12)
            async with consumer_of(bus, runs, "peer"):
                await until(lambda: sum(runs.calls.values()) >= 12 and runs.running == 0, 5)
                await anyio.sleep(0.2)  # a stolen entry would be running again by now
            assert holder.in_flight == 0
        assert runs.twice == []
        assert set(runs.calls) == {envelope.id for envelope in envelopes}
        assert {consumer for consumer, _, _ in runs.started} == {"holder"}

    async def test_a_long_drain_after_stop_keeps_its_leases(self, bus: Bus) -> None:
        """A stopping consumer that still runs its read batch for several idle periods
        keeps renewing the leases of its tail: the live peer takes none of it."""
        runs = Runs(seconds=0.25)
        await bus.ensure_group(runs.plugin)
        await add_at(bus, burst_ids(6), apps=["shop"] * 6)  # one read takes all six
        async with consumer_of(bus, runs, "leaver") as leaver:
            await until(lambda: leaver.in_flight == 6)
            async with consumer_of(bus, runs, "peer"):
                leaver.stop()  # six hooks of 0.25 s: a drain of five idle periods
                await until(lambda: sum(runs.calls.values()) >= 6, 5)
                await anyio.sleep(0.5)
        assert runs.twice == []
