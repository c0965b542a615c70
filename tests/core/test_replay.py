"""Replay: the history selected by time, app and type, and re-delivered to one plugin.

The in-process tests run on both bus lanes; the command-line tests run
``rapid-objection replay`` in a subprocess against the real Redis.
"""

from __future__ import annotations

import json
import time
from datetime import datetime
from typing import Any

import anyio
import msgspec
import pytest

from rapid_objection.bus import (
    AppRegistered,
    Bus,
    ConnectionInfo,
    Envelope,
    HealthCheck,
    HistoryEntry,
    OperationFailed,
    Payload,
    Publisher,
)
from rapid_objection.bus.testing import drained
from rapid_objection.core._errors import ReplayError
from rapid_objection.core._replay import (
    Selection,
    copy_for,
    parse_time,
    provenance,
    redeliver,
    select,
    summary,
)
from rapid_objection.plugin_workers import PluginInterface, current_delivery
from rapid_objection.plugin_workers.testing import running_worker
from tests.e2e import run_cli

pytestmark = pytest.mark.anyio

NOW = 1_714_564_800.0
"""2024-05-01T12:00:00Z."""
CONNECTION = ConnectionInfo(dialect="sqlite", url="sqlite:///shop.db")
REGISTRY = "replay-registry"


class Seen(PluginInterface):
    """Remembers every envelope whose ``app_registered`` hook it ran."""

    def __init__(self, name: str) -> None:
        super().__init__(name, "1.0.0")
        self.envelopes: list[Envelope] = []

    async def on_app_registered(
        self, app_name: str, connection: ConnectionInfo, config: dict[str, Any]
    ) -> str:
        self.envelopes.append(current_delivery().envelope)
        return app_name


async def publish(bus: Bus, plan: list[tuple[str, Payload]]) -> list[HistoryEntry]:
    """Publish ``plan`` as registry ``REGISTRY`` (nobody awaited); the history entries."""
    publisher = Publisher(bus, REGISTRY)
    published = []
    for app, payload in plan:
        envelope, entry_id = await publisher.publish(payload, app=app)
        published.append(HistoryEntry(entry_id, envelope))
    return published


def registered(app: str) -> tuple[str, Payload]:
    return app, AppRegistered(connection=CONNECTION, config={"app": app})


def mixed() -> list[tuple[str, Payload]]:
    """Two apps, three event types."""
    return [
        registered("shop"),
        ("shop", HealthCheck(health={"status": "healthy"})),
        registered("blog"),
        ("blog", OperationFailed(operation="migrations", error_type="E", error_message="no")),
        ("shop", HealthCheck(health={"status": "unhealthy", "error": "down"})),
        registered("shop"),
    ]


async def selected(bus: Bus, selection: Selection) -> list[str]:
    return [entry.entry_id async for entry in select(bus, selection)]


class TestParseTime:
    @pytest.mark.parametrize(
        ("text", "ago"),
        [
            ("-15m", 900),
            ("-2h", 7200),
            ("-1d", 86_400),
            ("-30s", 30),
            ("-1w", 604_800),
            ("-1.5h", 5400),
            ("15m", 900),
            ("now", 0),
        ],
        ids=["minutes", "hours", "days", "seconds", "weeks", "fraction", "no-minus", "now"],
    )
    def test_relative_times_count_back_from_now(self, text: str, ago: float) -> None:
        """``-15m``, ``-2h``, ``-1d`` and the like are that long before now."""
        assert parse_time(text, now=NOW) == NOW - ago

    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("2024-05-01T12:00:00Z", NOW),
            ("2024-05-01T12:00:00+00:00", NOW),
            ("2024-05-01T14:00:00+02:00", NOW),
            ("2024-05-01T12:00:00.250Z", NOW + 0.25),
        ],
        ids=["zulu", "utc-offset", "other-offset", "milliseconds"],
    )
    def test_iso_8601_times_with_an_offset(self, text: str, expected: float) -> None:
        """An ISO 8601 time with ``Z`` or an offset is that instant."""
        assert parse_time(text) == expected

    def test_iso_8601_without_an_offset_is_local_time(self) -> None:
        """A time without an offset (or a date alone) is read as local time."""
        assert parse_time("2024-05-01T12:00:00") == datetime(2024, 5, 1, 12).timestamp()
        assert parse_time("2024-05-01") == datetime(2024, 5, 1).timestamp()

    @pytest.mark.parametrize("text", ["yesterday", "-15x", "", "15 minutes", "2024-13-01"])
    def test_anything_else_is_refused_with_the_accepted_forms(self, text: str) -> None:
        """An unreadable time raises ``ReplayError`` that shows both accepted forms."""
        with pytest.raises(ReplayError, match=r"ISO 8601.*-15m"):
            parse_time(text)


class TestSelect:
    async def test_everything_oldest_first_without_filters(self, bus: Bus) -> None:
        """No filter: every event of the stream, oldest first."""
        published = await publish(bus, mixed())
        assert await selected(bus, Selection()) == [entry.entry_id for entry in published]

    @pytest.mark.parametrize(
        ("selection", "expected"),
        [
            (Selection(app="shop"), [0, 1, 4, 5]),
            (Selection(types=("health_check",)), [1, 4]),
            (Selection(types=("app_registered", "operation_failed")), [0, 2, 3, 5]),
            (Selection(app="blog", types=("app_registered",)), [2]),
            (Selection(limit=2), [0, 1]),
            (Selection(app="shop", limit=3), [0, 1, 4]),
            (Selection(app="nowhere"), []),
        ],
        ids=["app", "type", "types", "app-and-type", "limit", "limit-after-filter", "none"],
    )
    async def test_filters_and_limit(
        self, bus: Bus, selection: Selection, expected: list[int]
    ) -> None:
        """App and type filters select events; the limit counts selected events only."""
        published = await publish(bus, mixed())
        assert await selected(bus, selection) == [published[i].entry_id for i in expected]

    async def test_limit_across_pages(self, bus: Bus, monkeypatch: pytest.MonkeyPatch) -> None:
        """A limit larger than a page still stops at exactly that many events."""
        monkeypatch.setattr("rapid_objection.core._replay.PAGE_SIZE", 2)
        published = await publish(bus, [registered(f"app-{n}") for n in range(7)])
        assert await selected(bus, Selection(limit=5)) == [e.entry_id for e in published[:5]]
        assert len(await selected(bus, Selection())) == 7

    async def test_time_window(self, bus: Bus) -> None:
        """``since`` and ``until`` keep the events published between two moments."""
        early = await publish(bus, [registered("shop")])
        await anyio.sleep(0.02)
        start = time.time()
        await anyio.sleep(0.02)  # stream ids are milliseconds: keep the moments apart
        middle = await publish(bus, [registered("shop"), registered("blog")])
        await anyio.sleep(0.02)
        end = time.time()
        await anyio.sleep(0.02)
        late = await publish(bus, [registered("shop")])
        ids = [entry.entry_id for entry in middle]
        assert await selected(bus, Selection(since=start, until=end)) == ids
        assert await selected(bus, Selection(until=start)) == [early[0].entry_id]
        assert await selected(bus, Selection(since=end)) == [late[0].entry_id]


class TestCopy:
    def test_copy_is_a_new_event_for_one_plugin_naming_its_original(self) -> None:
        """A copy has a new id and time, replay and target set, replaces = the original's
        id, nobody awaiting it; everything else is the original's."""
        original = Envelope(
            id="01HX0000000000000000000000",
            type="app_registered",
            version=1,
            registry="reg-a",
            app="shop",
            time=NOW,
            seq=7,
            required=("audit",),
            deadline=NOW + 10,
            payload=AppRegistered(connection=CONNECTION),
            trace="00-abc-def-01",
        )
        copy = copy_for(original, "audit", now=NOW + 60)
        assert copy.id != original.id
        assert len(copy.id) == 26
        assert (copy.time, copy.replay, copy.target, copy.replaces) == (
            NOW + 60,
            True,
            "audit",
            original.id,
        )
        assert (copy.required, copy.deadline) == ((), 0.0)
        kept = ("type", "version", "registry", "app", "seq", "payload", "trace")
        assert {k: getattr(copy, k) for k in kept} == {k: getattr(original, k) for k in kept}
        assert provenance(copy) == f"replay of {original.id} for audit"
        assert provenance(original) == ""


class TestRedeliver:
    async def test_dry_run_publishes_nothing(self, bus: Bus) -> None:
        """Without ``execute``, the copies are built and shown but nothing is published."""
        published = await publish(bus, mixed())
        await bus.ensure_group("audit")
        replay = await redeliver(bus, "audit", Selection(app="shop"))
        assert not replay.executed
        assert [d.original.entry_id for d in replay.redeliveries] == [
            published[i].entry_id for i in (0, 1, 4, 5)
        ]
        assert all(d.entry_id is None for d in replay.redeliveries)
        assert all(d.copy.replaces == d.original.envelope.id for d in replay.redeliveries)
        assert await bus.redis.xlen(bus.keys.events) == len(published)

    async def test_only_the_target_plugin_handles_the_copies(self, bus: Bus) -> None:
        """Executed, each selected event is published again as a copy that the target
        plugin's hook receives (replay, target, replaces set) and that the other plugin's
        workers acknowledge without calling their hook."""
        audit, backup = Seen("audit"), Seen("backup")
        async with running_worker(audit, bus), running_worker(backup, bus):
            originals = await publish(bus, [registered("shop"), registered("blog")])
            for plugin in ("audit", "backup"):
                await drained(bus, plugin)
            replay = await redeliver(bus, "audit", Selection(), execute=True)
            for plugin in ("audit", "backup"):
                await drained(bus, plugin)
        assert replay.executed
        assert replay.live_workers == 1
        assert [e.id for e in backup.envelopes] == [o.envelope.id for o in originals]
        copies = audit.envelopes[2:]
        assert [e.id for e in audit.envelopes[:2]] == [o.envelope.id for o in originals]
        assert [c.replaces for c in copies] == [o.envelope.id for o in originals]
        assert [c.id for c in copies] == [d.copy.id for d in replay.redeliveries]
        assert all(c.replay and c.target == "audit" for c in copies)
        history = [entry async for entry in select(bus, Selection())]
        assert [entry.entry_id for entry in history[2:]] == [
            d.entry_id for d in replay.redeliveries
        ]

    async def test_copies_are_not_re_delivered_again(self, bus: Bus) -> None:
        """Replaying a window that holds earlier copies re-delivers only the originals and
        reports the copies as skipped."""
        originals = await publish(bus, [registered("shop"), registered("blog")])
        await bus.ensure_group("audit")
        first = await redeliver(bus, "audit", Selection(), execute=True)
        second = await redeliver(bus, "audit", Selection(), execute=True)
        replaced = [d.copy.replaces for d in second.redeliveries]
        assert replaced == [entry.envelope.id for entry in originals]
        assert [entry.entry_id for entry in second.skipped] == [
            d.entry_id for d in first.redeliveries
        ]

    async def test_copies_wait_in_the_group_of_a_plugin_without_workers(self, bus: Bus) -> None:
        """A plugin with a group but no live worker gets the copies later, from its group."""
        await bus.ensure_group("audit")
        [original] = await publish(bus, [registered("shop")])
        replay = await redeliver(bus, "audit", Selection(), execute=True)
        assert replay.live_workers == 0
        audit = Seen("audit")
        async with running_worker(audit, bus):
            await drained(bus, "audit")
        [copy] = [d.copy.id for d in replay.redeliveries]
        assert [e.id for e in audit.envelopes] == [original.envelope.id, copy]

    async def test_an_empty_namespace_knows_no_plugin(self, bus: Bus) -> None:
        """Without a stream or any manifest, every plugin is unknown."""
        with pytest.raises(ReplayError, match=r"'audit' is unknown.*known plugins: none"):
            await redeliver(bus, "audit", Selection())

    async def test_an_unknown_plugin_is_refused(self, bus: Bus) -> None:
        """A plugin with neither a manifest nor a group is refused, naming the known ones."""
        await publish(bus, [registered("shop")])
        await bus.ensure_group("audit")
        with pytest.raises(ReplayError, match=r"'audti' is unknown.*known plugins: audit") as info:
            await redeliver(bus, "audti", Selection())
        assert info.value.plugin == "audti"
        assert await bus.redis.xlen(bus.keys.events) == 1


class TestSummary:
    @pytest.mark.parametrize(
        ("payload", "expected"),
        [
            (HealthCheck(health={"status": "healthy"}), "healthy"),
            (HealthCheck(health={"status": "unhealthy", "error": "down"}), "unhealthy: down"),
            (
                OperationFailed(operation="seeds", error_type="SeedFailed", error_message="x"),
                "seeds: SeedFailed: x",
            ),
            (AppRegistered(connection=CONNECTION), ""),
        ],
        ids=["healthy", "unhealthy", "failed", "plain"],
    )
    def test_one_line_per_payload(self, payload: Payload, expected: str) -> None:
        """Tables show a short description of the payloads that have one."""
        envelope = Envelope(
            id="x", type="custom", version=1, registry="r", time=0, seq=1, payload=payload
        )
        assert summary(envelope) == expected


# --- the command line, against the real Redis --------------------------------------------


async def replay_cli(bus: Bus, url: str, *args: str) -> tuple[int, str, str]:
    return await run_cli("replay", "--bus-url", url, "--namespace", bus.namespace, *args)


class TestCommand:
    async def test_jsonl_is_one_envelope_per_line_with_its_entry_id(
        self, redis_bus: Bus, redis_url: str
    ) -> None:
        """``--format jsonl`` prints each selected event as the JSON of its envelope plus
        ``entry_id``; ``--app``, ``--type`` and ``--since`` select."""
        published = await publish(redis_bus, mixed())
        code, out, err = await replay_cli(
            redis_bus, redis_url, "--format", "jsonl", "--app", "shop", "--type",
            "app_registered", "--since", "-5m",
        )  # fmt: skip
        assert code == 0, err
        rows = [json.loads(line) for line in out.splitlines()]
        expected = [published[0], published[5]]
        assert [row["entry_id"] for row in rows] == [entry.entry_id for entry in expected]
        decoded = [msgspec.json.decode(line, type=Envelope) for line in out.splitlines()]
        assert decoded == [entry.envelope for entry in expected]

    async def test_table_shows_the_events(self, redis_bus: Bus, redis_url: str) -> None:
        """The table names each event's id, type and app in full."""
        published = await publish(redis_bus, mixed())
        code, out, err = await replay_cli(redis_bus, redis_url, "--limit", "3")
        assert code == 0, err
        assert "(3 events)" in out
        for entry in published[:3]:
            assert entry.envelope.id in out
        assert published[3].envelope.id not in out
        assert "migrations: E: no" not in out

    async def test_a_window_in_the_past_is_empty(self, redis_bus: Bus, redis_url: str) -> None:
        """``--until`` before the first event selects nothing."""
        await publish(redis_bus, mixed())
        code, out, err = await replay_cli(
            redis_bus, redis_url, "--format", "jsonl", "--until", "2020-01-01T00:00:00Z"
        )
        assert (code, out) == (0, ""), err

    async def test_to_plugin_is_a_dry_run_unless_execute(
        self, redis_bus: Bus, redis_url: str
    ) -> None:
        """``--to-plugin`` alone says what it would re-deliver and publishes nothing;
        with ``--execute`` it publishes one copy per event, for that plugin."""
        published = await publish(redis_bus, mixed())
        await redis_bus.ensure_group("audit")
        args = ("--to-plugin", "audit", "--type", "health_check")
        code, out, err = await replay_cli(redis_bus, redis_url, *args)
        assert code == 0, err
        assert "dry run: would re-deliver 2 events to plugin 'audit'" in out
        assert "no live worker" in out
        assert await redis_bus.redis.xlen(redis_bus.keys.events) == len(published)

        code, out, err = await replay_cli(redis_bus, redis_url, *args, "--format", "jsonl")
        assert code == 0, err
        rows = [json.loads(line) for line in out.splitlines()]
        assert [row["entry_id"] for row in rows] == [published[i].entry_id for i in (1, 4)]
        assert "dry run: would re-deliver 2 events" in err

        code, out, err = await replay_cli(
            redis_bus, redis_url, *args, "--execute", "--format", "jsonl"
        )
        assert code == 0, err
        assert "re-delivered 2 events to plugin 'audit'" in err
        history = [entry async for entry in select(redis_bus, Selection())]
        assert len(history) == len(published) + 2
        copies = [msgspec.json.decode(line, type=Envelope) for line in out.splitlines()]
        assert copies == [entry.envelope for entry in history[-2:]]
        assert [json.loads(line)["entry_id"] for line in out.splitlines()] == [
            entry.entry_id for entry in history[-2:]
        ]
        assert [copy.replaces for copy in copies] == [published[i].envelope.id for i in (1, 4)]
        assert all(copy.target == "audit" and copy.replay for copy in copies)

        code, out, err = await replay_cli(redis_bus, redis_url, *args, "--execute")
        assert code == 0, err
        assert "re-delivered 2 events to plugin 'audit'; 2 copies of earlier events skipped" in out

    @pytest.mark.parametrize(
        ("args", "expected"),
        [
            (["--since", "yesterday"], "--since: 'yesterday' is neither an ISO 8601"),
            (["--until", "-1x"], "--until"),
            (["--since", "-1h", "--until", "-2h"], "--since (-1h) is after --until (-2h)"),
            (["--execute"], "--execute re-delivers events and needs --to-plugin"),
            (["--to-plugin", "nobody"], "plugin 'nobody' is unknown"),
            (["--type", "app_registred"], "invalid choice: 'app_registred'"),
            (["--limit", "0"], "must be at least 1"),
            (["--format", "csv"], "invalid choice: 'csv'"),
            (["--last", "2", "--limit", "2"], "--last N (the newest) and --limit N"),
            (["--follow", "--until", "-1h"], "--follow shows what comes next"),
        ],
        ids=[
            "bad-since",
            "bad-until",
            "since-after-until",
            "execute-alone",
            "unknown-plugin",
            "unknown-type",
            "zero-limit",
            "unknown-format",
            "last-and-limit",
            "follow-until",
        ],
    )
    async def test_mistakes_are_one_line(
        self, redis_bus: Bus, redis_url: str, args: list[str], expected: str
    ) -> None:
        """Every mistake is one line on stderr naming it, a non-zero exit, no traceback."""
        code, out, err = await replay_cli(redis_bus, redis_url, *args)
        assert code != 0
        assert out == ""
        assert "Traceback" not in err
        [line] = err.splitlines()
        assert line.startswith("rapid-objection")
        assert expected in line
