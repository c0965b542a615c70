"""The memory a namespace takes, per family of keys, as ``status`` shows it."""

from __future__ import annotations

import json

import pytest

from rapid_objection.bus import AppRegistered, Bus, ConnectionInfo, Publisher, collect_status
from rapid_objection.bus._constants import RECORD_FIELD
from rapid_objection.bus._footprint import FAMILIES, family_of, memory_report
from tests.e2e import run_cli

pytestmark = pytest.mark.anyio

SQLITE = ConnectionInfo(dialect="sqlite")


async def _fill(bus: Bus, events: int) -> None:
    publisher = Publisher(bus, "reg-mem")
    for _ in range(events):
        await publisher.publish(AppRegistered(connection=SQLITE), app="a")
    await bus.redis.xadd(bus.keys.dlq, {RECORD_FIELD: b"x" * 100})
    await bus.redis.hset(bus.keys.apps, "a", b"reg-mem")
    await bus.redis.xadd(bus.keys.acks("reg-mem"), {b"a": b"ack"})


class TestFamilyOf:
    @pytest.mark.parametrize(
        ("suffix", "family"),
        [
            ("events", "events"),
            ("outcomes", "outcomes"),
            ("acks:reg-a", "acks"),
            ("dlq", "dlq"),
            ("failures", "failures"),
            ("failures:count", "failures"),
            ("plugins", "directory"),
            ("registry-lease:reg-a", "directory"),
            ("retention-lease", "directory"),
            ("once:audit:01J:copy", "once"),
            ("something-new", "other"),
        ],
    )
    def test_each_key_has_its_family(self, suffix: str, family: str) -> None:
        """Every key of a namespace falls in one named family (``other`` if unknown)."""
        assert family_of(suffix) == family


class TestMemoryReport:
    async def test_bytes_per_family_or_why_not(self, bus: Bus) -> None:
        """On a real Redis every family with keys has its MEMORY USAGE in bytes and the
        total adds them up; the embedded bus counts the keys and says plainly that it
        cannot measure bytes."""
        await _fill(bus, 20)
        report = await memory_report(bus)
        families = {family.name: family for family in report.families}
        assert list(families) == [name for name, _ in FAMILIES]
        keys = {name: family.keys for name, family in families.items()}
        assert keys == {
            "events": 1,
            "outcomes": 0,
            "acks": 1,
            "dlq": 1,
            "failures": 0,
            "directory": 1,
            "once": 0,
            "other": 0,
        }
        if bus.redis.embedded:
            assert report.unavailable == "not available on the embedded bus (no MEMORY USAGE)"
            assert report.total_bytes is None
            assert all(family.bytes is None for family in report.families)
            return
        assert report.unavailable is None
        assert families["events"].bytes is not None
        assert families["events"].bytes > 20 * 200
        assert families["dlq"].bytes is not None
        assert families["dlq"].bytes > 100
        assert families["failures"].bytes == 0
        assert report.total_bytes == sum(family.bytes or 0 for family in report.families)

    async def test_status_carries_the_memory_report(self, redis_bus: Bus, redis_url: str) -> None:
        """``collect_status`` includes it, and ``status --json`` prints it, per family,
        and the table shows a Memory section."""
        await _fill(redis_bus, 5)
        report = await collect_status(redis_bus)
        assert report.memory is not None
        assert report.memory.total_bytes
        args = ("status", "--bus-url", redis_url, "--namespace", redis_bus.namespace)
        code, out, _ = await run_cli(*args, "--json")
        assert code == 0
        memory = json.loads(out)["memory"]
        events = next(f for f in memory["families"] if f["name"] == "events")
        assert events["keys"] == 1
        assert events["bytes"] > 0
        assert memory["total_bytes"] >= events["bytes"]
        code, out, _ = await run_cli(*args)
        assert code == 0
        assert "Memory" in out
        assert "events" in out
