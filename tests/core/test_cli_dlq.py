"""``dlq list`` and ``dlq redrive`` as ``python -m rapid_objection.core._cli`` on a real Redis."""

from __future__ import annotations

import json
import re
import sys
from typing import Any

import anyio
import pytest

from rapid_objection.bus import (
    AppRegistered,
    Bus,
    ConnectionInfo,
    DeadLetterEntry,
    DeadLetters,
    Publisher,
)
from rapid_objection.bus._constants import EVENT_FIELD
from rapid_objection.bus._contract import decode_envelope
from rapid_objection.plugin_workers import PluginInterface
from rapid_objection.plugin_workers.testing import running_worker
from tests.e2e import REPO_ROOT, subprocess_env

pytestmark = pytest.mark.anyio

PLUGIN = "cli-dead"
CONSUMER = "cli-dead-worker-1"


class AlwaysFails(PluginInterface):
    def __init__(self) -> None:
        super().__init__(PLUGIN, "1.0.0")

    async def on_app_registered(
        self, app_name: str, connection: ConnectionInfo, config: dict[str, Any]
    ) -> None:
        raise RuntimeError("the backup disk is full")


@pytest.fixture
async def letter(redis_bus: Bus) -> DeadLetterEntry:
    """One dead letter: an app_registered event that ``PLUGIN`` failed twice."""
    async with (
        running_worker(AlwaysFails(), redis_bus, consumer=CONSUMER, max_deliveries=2),
        Publisher(redis_bus, "cli-registry") as publisher,
    ):
        await publisher.publish(AppRegistered(connection=ConnectionInfo(dialect="sqlite")), app="a")
        with anyio.fail_after(1.5):
            while not (found := await DeadLetters(redis_bus).list()):
                await anyio.sleep(0.02)
    [entry] = found
    return entry


async def dlq(bus: Bus, url: str, *args: str) -> tuple[int, str, str]:
    """Run ``python -m rapid_objection.core._cli dlq *args`` on ``bus``: (exit, stdout, stderr)."""
    argv = [sys.executable, "-m", "rapid_objection.core._cli", "dlq", args[0], "--bus-url", url]
    argv += ["--namespace", bus.namespace, *args[1:]]
    with anyio.fail_after(15):
        done = await anyio.run_process(argv, check=False, cwd=REPO_ROOT, env=subprocess_env())
    return done.returncode, done.stdout.decode(), done.stderr.decode()


class TestList:
    async def test_json_lines_carry_the_provenance_but_not_the_data(
        self, redis_bus: Bus, redis_url: str, letter: DeadLetterEntry
    ) -> None:
        """``dlq list --json`` prints one JSON object per letter with its id, plugin,
        consumer and attempts, and without the encoded event."""
        code, out, err = await dlq(redis_bus, redis_url, "list", "--json")
        assert code == 0, err
        [row] = [json.loads(line) for line in out.splitlines()]
        assert (row["id"], row["plugin"], row["consumer"], row["attempts"]) == (
            letter.id,
            PLUGIN,
            CONSUMER,
            2,
        )
        assert row["event_id"] == letter.letter.event_id
        assert "data" not in row

    async def test_the_table_shows_the_letter(
        self, redis_bus: Bus, redis_url: str, letter: DeadLetterEntry
    ) -> None:
        """``dlq list`` prints a table in which the letter's id, plugin and consumer
        appear whole, also when the output is not a terminal."""
        code, out, err = await dlq(redis_bus, redis_url, "list")
        assert code == 0, err
        assert letter.id in out
        assert PLUGIN in out
        assert CONSUMER in out


class TestRedrive:
    async def test_prints_the_new_event_id(
        self, redis_bus: Bus, redis_url: str, letter: DeadLetterEntry
    ) -> None:
        """``dlq redrive ID`` prints the id of the new event, which is on the stream and
        names the event it replaces; the letter is gone."""
        code, out, err = await dlq(redis_bus, redis_url, "redrive", letter.id)
        assert code == 0, err
        match = re.search(r"as event (\S+) \(stream entry (\S+)\)", out)
        assert match is not None, out
        event_id, entry_id = match.groups()
        [(_, fields)] = await redis_bus.redis.xrange(
            redis_bus.keys.events, entry_id, entry_id, count=1
        )
        envelope = decode_envelope(fields[EVENT_FIELD])
        assert (envelope.id, envelope.replaces, envelope.target) == (
            event_id,
            letter.letter.event_id,
            PLUGIN,
        )
        assert await DeadLetters(redis_bus).list() == []

    @pytest.mark.parametrize("letter_id", ["1-1", "no-such-id"], ids=["well-formed", "malformed"])
    async def test_an_unknown_id_is_one_line_and_exit_1(
        self, redis_bus: Bus, redis_url: str, letter_id: str
    ) -> None:
        """Re-driving an id that is not a dead letter prints one line naming it on stderr,
        nothing on stdout, no traceback, and exits 1."""
        code, out, err = await dlq(redis_bus, redis_url, "redrive", letter_id)
        assert "Traceback" not in out + err
        assert (code, out) == (1, "")
        [line] = err.splitlines()
        assert letter_id in line
