"""The history with its outcomes: selection by outcome (``--plugin``, ``--consumer``,
``--status``), newest first (``--last``), and ``follow``; on every bus lane."""

from __future__ import annotations

import signal
import time

import anyio
import pytest

from rapid_objection.bus import (
    AppRegistered,
    AppUnregistered,
    Bus,
    ConnectionInfo,
    HistoryEntry,
    Manifest,
    OutcomeRecord,
    Publisher,
    RecordedStatus,
)
from rapid_objection.core import _follow as follow_module
from rapid_objection.core._follow import follow
from rapid_objection.core._replay import Selection, answered, redeliver
from tests.e2e import CLI, REPO_ROOT, run_cli, subprocess_env

pytestmark = pytest.mark.anyio

CONNECTION = ConnectionInfo(dialect="sqlite")


async def publish(bus: Bus, apps: list[str]) -> list[HistoryEntry]:
    publisher = Publisher(bus, "reg-h")
    found = []
    for app in apps:
        envelope, entry_id = await publisher.publish(AppRegistered(connection=CONNECTION), app=app)
        found.append(HistoryEntry(entry_id, envelope))
    return found


def outcome(
    entry: HistoryEntry, plugin: str, status: RecordedStatus = "ok", consumer: str = "c1"
) -> OutcomeRecord:
    return OutcomeRecord(
        entry_id=entry.entry_id,
        event_id=entry.envelope.id,
        type=entry.envelope.type,
        app=entry.envelope.app,
        plugin=plugin,
        consumer=consumer,
        status=status,
        time=time.time(),
        error="boom" if status == "error" else None,
    )


async def chosen(bus: Bus, selection: Selection) -> list[tuple[str, list[str]]]:
    return [
        (found.entry.envelope.app, [f"{r.plugin}:{r.status}" for r in found.outcomes])
        async for found in answered(bus, selection)
    ]


class TestAnswered:
    async def test_outcome_filters_keep_events_and_outcomes_that_match(self, bus: Bus) -> None:
        """Without filters every event comes with all its outcomes (none yet: empty);
        ``plugin`` and ``statuses`` keep only the events with a matching outcome and
        only those outcomes; ``consumer`` likewise; ``newest_first`` with a limit is
        the newest N."""
        a, b, _ = await publish(bus, ["a", "b", "c"])
        await bus.outcomes.record(
            [
                outcome(a, "audit"),
                outcome(a, "backup", "error", consumer="c2"),
                outcome(b, "audit", "timeout"),
            ]
        )
        assert await chosen(bus, Selection()) == [
            ("a", ["audit:ok", "backup:error"]),
            ("b", ["audit:timeout"]),
            ("c", []),
        ]
        assert await chosen(bus, Selection(plugin="audit", statuses=("timeout", "error"))) == [
            ("b", ["audit:timeout"])
        ]
        assert await chosen(bus, Selection(consumer="c2")) == [("a", ["backup:error"])]
        assert await chosen(bus, Selection(limit=2, newest_first=True)) == [
            ("c", []),
            ("b", ["audit:timeout"]),
        ]
        assert await chosen(bus, Selection(limit=1, newest_first=True, plugin="audit")) == [
            ("b", ["audit:timeout"])
        ]

    async def test_to_plugin_re_delivers_the_events_a_status_selects(self, bus: Bus) -> None:
        """``redeliver`` with ``statuses`` copies only the events whose outcome failed."""
        a, b = await publish(bus, ["a", "b"])
        await bus.ensure_group("audit")
        await bus.outcomes.record([outcome(a, "audit"), outcome(b, "audit", "error")])
        replay = await redeliver(bus, "audit", Selection(plugin="audit", statuses=("error",)))
        assert [done.original.entry_id for done in replay.redeliveries] == [b.entry_id]


class TestFollow:
    async def test_events_then_their_outcomes_as_they_come(
        self, bus: Bus, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """follow gives the backlog, then each new event of the selected app, and each
        outcome once, after its event; with outcome filters an event is given out only
        with its first matching outcome."""
        monkeypatch.setattr(follow_module, "OUTCOME_POLL", 0.01)
        (old,) = await publish(bus, ["shop"])
        newest = (await bus.redis.xrevrange(bus.keys.events, "+", "-", count=1))[0][0]
        seen: list[str] = []
        filtered: list[str] = []

        async def collect(
            selection: Selection, into: list[str], backlog: list[HistoryEntry]
        ) -> None:
            async for item in follow(bus, selection, after=newest, backlog=backlog):
                if isinstance(item, OutcomeRecord):
                    into.append(f"{item.app}:{item.plugin}:{item.status}")
                else:
                    into.append(f"event {item.envelope.app}")

        async with anyio.create_task_group() as group:
            group.start_soon(collect, Selection(app="shop"), seen, [old])
            group.start_soon(collect, Selection(statuses=("error",)), filtered, [])
            await anyio.sleep(0.05)
            first, other, second = await publish(bus, ["shop", "blog", "shop"])
            await bus.outcomes.record([outcome(old, "audit"), outcome(first, "audit")])
            await bus.outcomes.record([outcome(other, "audit", "error")])
            await bus.outcomes.record([outcome(second, "audit", "error")])
            with anyio.fail_after(5):
                while len(seen) < 6 or len(filtered) < 4:
                    await anyio.sleep(0.01)
            group.cancel_scope.cancel()
        assert seen == [
            "event shop",
            "event shop",
            "event shop",
            "shop:audit:ok",
            "shop:audit:ok",
            "shop:audit:error",
        ]
        assert filtered == ["event blog", "blog:audit:error", "event shop", "shop:audit:error"]

    async def test_only_the_newest_shown_events_are_followed(
        self, bus: Bus, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Past FOLLOW_OPEN shown events, the oldest one's outcomes are no longer looked
        for (each look reads every outcome since the oldest followed event)."""
        monkeypatch.setattr(follow_module, "FOLLOW_OPEN", 2)
        monkeypatch.setattr(follow_module, "FOLLOW_BLOCK_MS", 10)
        entries = await publish(bus, ["a", "b", "c"])
        await bus.outcomes.record([outcome(entry, "audit") for entry in entries])
        newest = entries[-1].entry_id
        got: list[str] = []
        with anyio.move_on_after(0.5):
            async for item in follow(bus, Selection(), after=newest, backlog=entries):
                got.append(item.app if isinstance(item, OutcomeRecord) else "event")
                if len(got) == 5:
                    break
        assert got == ["event", "event", "event", "b", "c"]


class TestCommand:
    async def test_the_table_shows_each_plugins_outcome_under_its_event(
        self, redis_bus: Bus, redis_url: str
    ) -> None:
        """``--outcomes`` lists each outcome (plugin, consumer, status, attempt, error)
        under its event, and says so of an event without any: not yet, or never when no
        plugin on the bus has a hook for its type (those are only acked as skipped)."""
        a, b = await publish(redis_bus, ["a", "b"])
        await redis_bus.outcomes.record(
            [outcome(a, "audit"), outcome(a, "backup", "error", consumer="backup-7")]
        )
        await redis_bus.directory.announce(Manifest(plugin="audit", hooks=("app_registered",)))
        unhooked, _ = await Publisher(redis_bus, "reg-h").publish(AppUnregistered(), app="c")
        code, out, err = await run_cli(
            "replay", "--bus-url", redis_url, "--namespace", redis_bus.namespace,
            "--outcomes", "--last", "5",
        )  # fmt: skip
        assert code == 0, err
        assert "(3 events, newest first)" in out
        assert out.index(b.envelope.id) < out.index(a.envelope.id)
        assert "no outcome yet" in out.split(b.envelope.id)[1].splitlines()[0]
        assert "none: no plugin has this hook" in out.split(unhooked.id)[1].splitlines()[0]
        backup = next(line for line in out.splitlines() if "backup-7" in line)
        assert backup.split()[:5] == ["backup", "backup-7", "error", "1", "boom"]


class TestFollowEnds:
    @pytest.mark.parametrize(
        ("how", "signum"),
        [("sigterm", signal.SIGTERM), ("sigint-ignored-by-its-shell", signal.SIGINT)],
    )
    async def test_a_signal_ends_it_with_status_0(
        self, redis_bus: Bus, redis_url: str, how: str, signum: signal.Signals
    ) -> None:
        """SIGTERM ends ``replay --follow`` cleanly, as Ctrl-C does; so does SIGINT when
        the shell that started it ignores SIGINT (a script's background job)."""
        command = [
            CLI, "replay", "--bus-url", redis_url, "--namespace", redis_bus.namespace,
            "--follow",
        ]  # fmt: skip
        if how.startswith("sigint-ignored"):
            command = ["sh", "-c", 'trap "" INT; exec "$@"', "sh", *command]
        async with await anyio.open_process(
            command, cwd=REPO_ROOT, env=subprocess_env()
        ) as process:
            assert process.stdout is not None
            try:
                with anyio.fail_after(20):
                    out = b""
                    while b"Following namespace" not in out:
                        out += await process.stdout.receive()
                process.send_signal(signum)
                with anyio.fail_after(20):
                    code = await process.wait()
            finally:
                if process.returncode is None:
                    process.kill()
        assert code == 0
