"""FailureLog: failure records against the consumer that held the event, and their counters."""

from __future__ import annotations

from typing import Any

import pytest

from rapid_objection.bus import Bus, Failure, FailureCount, FailureKind

pytestmark = pytest.mark.anyio


def failure(
    n: int,
    *,
    plugin: str = "audit",
    consumer: str | None = "audit-1",
    kind: FailureKind = "error",
) -> Failure:
    return Failure(
        event_id=f"EVENT{n:04d}",
        type="app_registered",
        app="shop",
        plugin=plugin,
        consumer=consumer,
        kind=kind,
        error=f"ValueError: boom {n}",
        time=1_700_000_000.0 + n,
        registry="reg-a",
    )


class TestFailureLog:
    async def test_records_are_read_back_newest_first(self, bus: Bus) -> None:
        """recent() returns the recorded failures, newest first, as they were written."""
        written = [failure(n) for n in range(3)]
        await bus.failures.record(written)
        assert await bus.failures.recent() == list(reversed(written))

    async def test_recording_nothing_writes_nothing(self, bus: Bus) -> None:
        """record([]) is a no-op: no stream and no counters appear."""
        await bus.failures.record([])
        assert await bus.failures.recent() == []
        assert await bus.failures.counts() == []

    @pytest.mark.parametrize(
        ("filters", "expected"),
        [
            pytest.param({"plugin": "backup"}, [4, 3], id="plugin"),
            pytest.param({"consumer": "audit-2"}, [2], id="consumer"),
            pytest.param({"kind": "timeout"}, [3, 1], id="kind"),
            pytest.param({"plugin": "backup", "kind": "timeout"}, [3], id="plugin-and-kind"),
            pytest.param({"consumer": "nobody"}, [], id="no-match"),
        ],
    )
    async def test_recent_filters(
        self, bus: Bus, filters: dict[str, Any], expected: list[int]
    ) -> None:
        """recent() keeps only the failures of the given plugin, consumer and kind."""
        await bus.failures.record(
            [
                failure(0),
                failure(1, kind="timeout"),
                failure(2, consumer="audit-2"),
                failure(3, plugin="backup", consumer="backup-1", kind="timeout"),
                failure(4, plugin="backup", consumer=None, kind="no_consumer"),
            ]
        )
        found = await bus.failures.recent(**filters)
        assert [f.event_id for f in found] == [f"EVENT{n:04d}" for n in expected]

    async def test_recent_limits_the_count_across_pages(self, bus: Bus) -> None:
        """recent(count) returns exactly the newest ``count`` matches, even past one page."""
        await bus.failures.record(
            [failure(n, kind="timeout" if n % 2 else "error") for n in range(250)]
        )
        found = await bus.failures.recent(120, kind="error")
        assert [f.event_id for f in found] == [f"EVENT{n:04d}" for n in range(248, 8, -2)]

    async def test_counts_add_up_per_plugin_consumer_and_kind(self, bus: Bus) -> None:
        """Counters grow per (plugin, consumer, kind); a failure without consumer counts as None."""
        await bus.failures.record([failure(0), failure(1)])
        await bus.failures.record(
            [
                failure(2, kind="timeout"),
                failure(3, plugin="backup", consumer=None, kind="no_consumer"),
                failure(4, plugin="backup", consumer=None, kind="no_consumer"),
            ]
        )
        assert await bus.failures.counts() == [
            FailureCount("audit", "audit-1", "error", 2),
            FailureCount("audit", "audit-1", "timeout", 1),
            FailureCount("backup", None, "no_consumer", 2),
        ]
