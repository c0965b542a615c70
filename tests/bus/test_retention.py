"""Retention of the event stream, on both lanes: by length and age, clamped to what the
plugins' groups still need."""

from __future__ import annotations

import time

import anyio
import pytest

from rapid_objection.bus import AppRegistered, Bus, ConnectionInfo, Publisher, Retention
from rapid_objection.bus import _publisher as publisher_module
from rapid_objection.bus._retention import oldest_needed, trim_events

pytestmark = pytest.mark.anyio

SQLITE = ConnectionInfo(dialect="sqlite")

ASKS_FOR_EVERYTHING = [Retention(max_len=0), Retention(max_age=1)]
"""Rules that, left alone, would trim the whole stream (age: with ``now`` an hour ahead)."""
RULE_IDS = ["max_len", "max_age"]


async def _publish(bus: Bus, count: int) -> list[str]:
    """Append ``count`` events; returns their stream entry ids."""
    publisher = Publisher(bus, "reg-ret")
    return [
        (await publisher.publish(AppRegistered(connection=SQLITE), app="a"))[1]
        for _ in range(count)
    ]


async def _read(bus: Bus, group: str, count: int, *, ack: bool = True) -> list[str]:
    """Consumer ``c`` of ``group`` reads ``count`` new entries and, unless told, acks them."""
    entries = await bus.redis.xreadgroup(bus.keys.events, group, "c", count=count, block_ms=None)
    ids = [entry_id for entry_id, _ in entries]
    if ack:
        await bus.redis.xack(bus.keys.events, group, ids)
    return ids


async def _stream(bus: Bus, start: str = "-") -> list[str]:
    return [entry_id for entry_id, _ in await bus.redis.xrange(bus.keys.events, start, "+", 1000)]


def _an_hour_ahead() -> float:
    return time.time() + 3600


class TestRetention:
    @pytest.mark.parametrize(
        ("max_age", "max_len"),
        [(0, None), (-1.0, None), (None, -1)],
        ids=["zero-age", "negative-age", "negative-len"],
    )
    def test_a_rule_that_makes_no_sense_is_refused(
        self, max_age: float | None, max_len: int | None
    ) -> None:
        """A non-positive age or a negative length is a ValueError, not a silent no-op."""
        with pytest.raises(ValueError, match="retention"):
            Retention(max_age=max_age, max_len=max_len)


class TestTrimEvents:
    async def test_max_len_keeps_the_newest_when_every_group_is_caught_up(self, bus: Bus) -> None:
        """With every group caught up, max_len=N keeps exactly the newest N entries."""
        await bus.ensure_group("p")
        ids = await _publish(bus, 6)
        await _read(bus, "p", 6)
        assert await trim_events(bus, Retention(max_len=2)) == 4
        assert await _stream(bus) == ids[-2:]

    async def test_max_age_drops_the_entries_older_than_the_age(self, bus: Bus) -> None:
        """max_age drops every entry older than ``now - max_age`` and keeps the younger."""
        await bus.ensure_group("p")
        old = await _publish(bus, 3)
        await anyio.sleep(0.02)
        young = await _publish(bus, 2)
        await _read(bus, "p", 5)
        cutoff = int(young[0].partition("-")[0]) / 1000
        assert await trim_events(bus, Retention(max_age=60), now=cutoff + 60) == len(old)
        assert await _stream(bus) == young

    async def test_the_stricter_of_age_and_length_wins(self, bus: Bus) -> None:
        """With both limits set, whichever drops more is applied."""
        ids = await _publish(bus, 5)
        assert await trim_events(bus, Retention(max_age=3600, max_len=1)) == 4
        assert await _stream(bus) == ids[-1:]

    @pytest.mark.parametrize("rule", ASKS_FOR_EVERYTHING, ids=RULE_IDS)
    async def test_an_entry_a_group_has_pending_is_kept(self, bus: Bus, rule: Retention) -> None:
        """An entry a consumer read and did not ack is kept, and so is all after it."""
        await bus.ensure_group("p")
        ids = await _publish(bus, 6)
        read = await _read(bus, "p", 6, ack=False)
        await bus.redis.xack(bus.keys.events, "p", read[:2] + read[3:])
        assert await trim_events(bus, rule, now=_an_hour_ahead()) == 2
        assert await _stream(bus) == ids[2:]

    @pytest.mark.parametrize("rule", ASKS_FOR_EVERYTHING, ids=RULE_IDS)
    async def test_entries_a_group_was_not_delivered_yet_are_kept(
        self, bus: Bus, rule: Retention
    ) -> None:
        """Entries after a group's last delivered one (its lag) are kept."""
        await bus.ensure_group("p")
        ids = await _publish(bus, 6)
        await _read(bus, "p", 2)
        assert await trim_events(bus, rule, now=_an_hour_ahead()) == 2
        assert await _stream(bus) == ids[2:]

    @pytest.mark.parametrize("rule", ASKS_FOR_EVERYTHING, ids=RULE_IDS)
    async def test_the_slowest_group_decides(self, bus: Bus, rule: Retention) -> None:
        """With one group caught up and one behind, the one behind bounds the trim."""
        await bus.ensure_group("fast")
        await bus.ensure_group("slow")
        ids = await _publish(bus, 6)
        await _read(bus, "fast", 6)
        await _read(bus, "slow", 4)
        assert await trim_events(bus, rule, now=_an_hour_ahead()) == 4
        assert await _stream(bus) == ids[4:]

    @pytest.mark.parametrize(
        ("rule", "kept"),
        [(Retention(max_len=2), 2), (Retention(max_age=1), 0), (Retention(), 5)],
        ids=["max_len", "max_age", "no-limit"],
    )
    async def test_without_groups_the_rule_alone_applies(
        self, bus: Bus, rule: Retention, kept: int
    ) -> None:
        """A stream nobody consumes is trimmed exactly as the rule says."""
        ids = await _publish(bus, 5)
        assert await trim_events(bus, rule, now=_an_hour_ahead()) == 5 - kept
        assert await _stream(bus) == ids[len(ids) - kept :]


class TestOldestNeeded:
    async def test_no_groups_need_nothing(self, bus: Bus) -> None:
        """Without consumer groups no entry is needed: None."""
        await _publish(bus, 3)
        assert await oldest_needed(bus) is None

    @pytest.mark.parametrize(
        ("reads", "unacked", "needed_from"),
        [
            ({"p": 5}, {}, 5),
            ({"p": 5}, {"p": [1, 3]}, 1),
            ({"p": 2}, {}, 2),
            ({"p": 5, "q": 3}, {}, 3),
            ({"p": 4, "q": 5}, {"q": [2]}, 2),
            ({"p": 0}, {}, 0),
        ],
        ids=[
            "caught-up",
            "pending",
            "lag",
            "two-groups-lag",
            "lag-and-pending",
            "nothing-read",
        ],
    )
    async def test_the_bound_is_the_oldest_entry_some_group_needs(
        self,
        bus: Bus,
        reads: dict[str, int],
        unacked: dict[str, list[int]],
        needed_from: int,
    ) -> None:
        """The entries at or after the returned id are exactly those from the oldest one
        that a group has pending or was not delivered yet (none when all caught up)."""
        for group in reads:
            await bus.ensure_group(group)
        ids = await _publish(bus, 5)
        for group, count in reads.items():
            read = await _read(bus, group, count, ack=False) if count else []
            keep = {read[i] for i in unacked.get(group, [])}
            await bus.redis.xack(bus.keys.events, group, [i for i in read if i not in keep])
        needed = await oldest_needed(bus)
        assert needed is not None
        assert await _stream(bus, needed) == ids[needed_from:]


class TestPublisherRetention:
    async def test_a_publisher_with_retention_trims_on_its_own(
        self, bus: Bus, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A running Publisher(retention=...) trims the stream in the background, and
        still not past what a group has not been delivered."""
        monkeypatch.setattr(publisher_module, "HEARTBEAT_INTERVAL", 0.02)
        monkeypatch.setattr(publisher_module, "RETENTION_INTERVAL", 0.05)
        await bus.ensure_group("p")
        ids = await _publish(bus, 8)
        await _read(bus, "p", 5)
        async with Publisher(bus, "reg-trim", retention=Retention(max_len=1)):
            with anyio.fail_after(1.5):
                while await bus.redis.xlen(bus.keys.events) > 3:
                    await anyio.sleep(0.02)
            await anyio.sleep(0.15)  # a few more trims: none goes further
        assert await _stream(bus) == ids[5:]


class TestRetentionKeepsUp:
    async def test_a_burst_far_over_the_old_cap_stays_bounded_and_every_group_gets_all(
        self, bus: Bus
    ) -> None:
        """25,000 events published as fast as the bus takes them (the old trim removed at
        most 10,000 a minute) leave the stream at exactly ``max_len`` within two trim
        intervals, while a fast and a lagging group were each delivered every event."""
        max_len, total, chunk = 1_000, 25_000, 500
        await bus.ensure_group("fast")
        await bus.ensure_group("slow")
        published: list[str] = []
        received: dict[str, list[str]] = {"fast": [], "slow": []}

        async def consume(group: str, count: int, pause: float) -> None:
            while len(received[group]) < total:
                entries = await bus.redis.xreadgroup(
                    bus.keys.events, group, "c", count=count, block_ms=100
                )
                ids = [entry_id for entry_id, _ in entries]
                await bus.redis.xack(bus.keys.events, group, ids)
                received[group] += ids
                await anyio.sleep(pause)

        async with Publisher(bus, "reg-burst", retention=Retention(max_len=max_len)):
            with anyio.fail_after(60):
                async with anyio.create_task_group() as group:
                    group.start_soon(consume, "fast", 1_000, 0)
                    group.start_soon(consume, "slow", 200, 0.01)
                    for _ in range(total // chunk):
                        published += await bus.redis.xadd_many(
                            bus.keys.events, [{b"e": b"x" * 64}] * chunk
                        )
                with anyio.fail_after(2.5):
                    while await bus.redis.xlen(bus.keys.events) != max_len:
                        await anyio.sleep(0.05)
        assert received == {"fast": published, "slow": published}
        assert await _stream(bus) == published[-max_len:]
