"""The outcome history (``bus.outcomes``): every plugin's answer kept with its event, on
every lane; written by a real consumer's flush, trimmed by retention with the events."""

from __future__ import annotations

import time

import anyio
import pytest

from rapid_objection.bus import (
    Ack,
    AckStatus,
    AppRegistered,
    Bus,
    ConnectionInfo,
    Delivery,
    OutcomeRecord,
    Publisher,
    RecordedStatus,
    Retention,
)
from rapid_objection.bus import _outcomes as outcomes_module
from rapid_objection.bus._constants import RECORD_FIELD, TRACEBACK_LIMIT
from rapid_objection.bus._consumer import Handler
from rapid_objection.bus._contract import decode_dead_letter, encode
from rapid_objection.bus._retention import trim_events
from rapid_objection.bus._retry import Backoff, RetryPolicy

from .helpers import consumer_of_handler, until

pytestmark = pytest.mark.anyio

SQLITE = ConnectionInfo(dialect="sqlite")


def record(
    entry_id: str,
    plugin: str = "audit",
    *,
    status: RecordedStatus = "ok",
    consumer: str = "audit-1",
    at: float = 0.0,
) -> OutcomeRecord:
    return OutcomeRecord(
        entry_id=entry_id,
        event_id=f"EV-{entry_id}",
        type="app_registered",
        app="shop",
        plugin=plugin,
        consumer=consumer,
        status=status,
        time=1_700_000_000.0 + at,
    )


class TestOutcomeLog:
    async def test_for_events_returns_each_events_outcomes_in_recorded_order(
        self, bus: Bus
    ) -> None:
        """for_events maps each asked entry id to its outcomes, oldest first; an entry
        without any maps to an empty list, and other events' outcomes stay out."""
        await bus.outcomes.record(
            [
                record("1700000000000-1", "backup", at=2),
                record("1700000000000-1", "audit", at=1),
                record("1700000000000-2", "audit", status="error"),
                record("1700000090000-0", "audit", at=5),  # another run of entries
                record("1700000000500-0", "audit"),  # not asked for
            ]
        )
        found = await bus.outcomes.for_events(
            ["1700000000000-1", "1700000090000-0", "1700000000000-2", "1700000001000-0"]
        )
        assert {entry: [(r.plugin, r.status) for r in rs] for entry, rs in found.items()} == {
            "1700000000000-1": [("audit", "ok"), ("backup", "ok")],
            "1700000000000-2": [("audit", "error")],
            "1700000090000-0": [("audit", "ok")],
            "1700000001000-0": [],
        }

    async def test_a_burst_shares_members_and_single_records_still_read(self, bus: Bus) -> None:
        """Records of one millisecond go in one member; a member holding a single
        record (as the first version wrote them) is read back too."""
        await bus.outcomes.record([record("1700000000000-1"), record("1700000000000-2", at=1)])
        batch = bus.redis.batch()
        batch.zadd(bus.keys.outcomes, {encode(record("1700000000000-3", at=2)): 1700000000000})
        await batch.execute()
        assert await bus.redis._client.zcard(bus.keys.outcomes) == 2
        found = await bus.outcomes.between(1700000000000, 1700000000000)
        assert [r.entry_id for r in found] == [f"1700000000000-{n}" for n in (1, 2, 3)]

    async def test_recent_is_newest_first_and_filters_across_pages(
        self, bus: Bus, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """recent(count) gives the newest events' outcomes first, filtered by plugin,
        consumer and status, reading page by page (a page ends inside a millisecond)."""
        monkeypatch.setattr(outcomes_module, "READ_PAGE", 7)
        written = [
            record(
                f"17000000{n // 3:05d}-{n % 3}",
                "audit" if n % 2 else "backup",
                status="error" if n % 5 == 0 else "ok",
                at=n,
            )
            for n in range(40)
        ]
        await bus.outcomes.record(written)
        newest = await bus.outcomes.recent(12)
        assert newest == list(reversed(written))[:12]
        errors = await bus.outcomes.recent(100, statuses=("error",), plugin="backup")
        assert errors == [
            r for r in reversed(written) if r.status == "error" and r.plugin == "backup"
        ]
        assert await bus.outcomes.recent(5, consumer="nobody") == []


FAST_RETRY = RetryPolicy(max_deliveries=3, backoff=Backoff(first=0.001, cap=0.002))


def handler_failing(times: dict[str, int], plugin: str) -> Handler:
    """Raises (deep down: a traceback far over the limit) the first ``times[app]`` attempts at an
    event of that app, then acks ok; events of app ``skip`` are acked as skipped."""
    calls: dict[str, int] = {}

    # Two functions in turn: the traceback keeps every frame (a repeated one is folded).
    def ping(depth: int, message: str) -> None:
        if depth == 0:
            raise ValueError(message)
        pong(depth - 1, message)

    def pong(depth: int, message: str) -> None:
        ping(depth, message)

    async def handler(delivery: Delivery) -> Ack:
        envelope = delivery.envelope
        status: AckStatus = "skipped" if envelope.app == "skip" else "ok"
        calls[envelope.id] = calls.get(envelope.id, 0) + 1
        if calls[envelope.id] <= times.get(envelope.app, 0):
            ping(100, f"boom {calls[envelope.id]} at {envelope.app}")
        return Ack(
            event_id=envelope.id,
            plugin=plugin,
            consumer="c1",
            status=status,
            attempt=delivery.attempt,
            duration=0.001,
        )

    return handler


class TestWrittenWithTheAcks:
    async def test_a_consumer_keeps_every_attempt_with_its_traceback(self, bus: Bus) -> None:
        """A real consumer's flush records each attempt (the retried ones too), bounded
        tracebacks included; a skipped ack is no outcome; a dead letter and its failure
        record keep the last traceback."""
        publisher = Publisher(bus, "reg-o")
        apps = ["fine", "flaky", "poison", "skip"]
        await bus.ensure_group("audit")
        entries = {
            app: (await publisher.publish(AppRegistered(connection=SQLITE), app=app))[1]
            for app in apps
        }
        handler = handler_failing({"flaky": 1, "poison": 99}, "audit")
        async with consumer_of_handler(bus, "audit", "c1", handler) as consumer:
            consumer.retry = FAST_RETRY
            await until(lambda: consumer.handled + consumer.dead_lettered >= 3)
        found = await bus.outcomes.for_events(entries.values())
        by_app = {app: found[entry] for app, entry in entries.items()}
        assert [(r.status, r.attempt) for r in by_app["fine"]] == [("ok", 1)]
        assert [(r.status, r.attempt) for r in by_app["flaky"]] == [("error", 1), ("ok", 2)]
        assert [(r.status, r.attempt) for r in by_app["poison"]] == [
            ("error", 1),
            ("error", 2),
            ("dead_lettered", 3),
        ]
        assert by_app["skip"] == []
        first_error = by_app["flaky"][0]
        assert (first_error.consumer, first_error.error_type) == ("c1", "ValueError")
        assert first_error.traceback is not None
        assert first_error.traceback.endswith("ValueError: boom 1 at flaky\n")
        assert "bytes of traceback cut" in first_error.traceback
        assert len(first_error.traceback.encode()) <= TRACEBACK_LIMIT
        last = by_app["poison"][-1]
        assert last.traceback is not None
        assert "boom 3 at poison" in last.traceback
        (letter_entry,) = await bus.redis.xrange(bus.keys.dlq, "-", "+", count=10)
        letter = decode_dead_letter(letter_entry[1][RECORD_FIELD])
        assert letter.traceback == last.traceback
        failures = await bus.failures.recent(10, kind="dead_lettered")
        assert [f.traceback for f in failures] == [last.traceback]
        assert failures[0].entry_id == entries["poison"]

    async def test_retention_trims_the_outcomes_with_their_events(self, bus: Bus) -> None:
        """Trimming the stream drops the outcomes of the events it removed, and keeps
        those of the events it kept."""
        publisher = Publisher(bus, "reg-o")
        old = [(await publisher.publish(AppRegistered(connection=SQLITE), app="a"))[1]]
        await anyio.sleep(0.01)
        kept = [(await publisher.publish(AppRegistered(connection=SQLITE), app="a"))[1]]
        await bus.outcomes.record([record(old[0]), record(kept[0])])
        removed = await trim_events(bus, Retention(max_len=1))
        assert removed == 1
        found = await bus.outcomes.for_events([*old, *kept])
        assert (len(found[old[0]]), len(found[kept[0]])) == (0, 1)
        assert len(await bus.outcomes.recent(10)) == 1


class TestRegistryVerdicts:
    async def test_a_required_plugin_without_a_consumer_is_an_outcome(self, bus: Bus) -> None:
        """A wait decided at once as no_consumer is in the outcome history too."""
        async with Publisher(bus, "reg-o") as publisher:
            result = await publisher.emit(
                AppRegistered(connection=SQLITE), app="shop", required=["ghost"], timeout=1.0
            )
        found = await bus.outcomes.for_events([result.entry_id])
        assert [(r.plugin, r.status, r.consumer) for r in found[result.entry_id]] == [
            ("ghost", "no_consumer", None)
        ]
        assert time.time() - found[result.entry_id][0].time < 60
