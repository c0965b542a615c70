"""The outcome history end to end: a real worker process answers, ``replay --follow``
(a real process, stopped with SIGINT) shows the events and outcomes as they come, and
``replay --outcomes`` finds them afterwards with their tracebacks."""

from __future__ import annotations

import json
import signal
import subprocess
from typing import Any

import anyio
import pytest

from rapid_objection.bus import AppRegistered, Bus, ConnectionInfo, Publisher

from . import CLI, REPO_ROOT, run_cli, subprocess_env
from .conftest import WorkerPool
from .plugins import Refuser

pytestmark = [pytest.mark.anyio]

CONNECTION = ConnectionInfo(dialect="sqlite", url="sqlite:///shop.db")


async def _lines_until(stream: Any, done: Any, timeout: float = 20.0) -> list[dict[str, Any]]:
    """JSON lines read from ``stream`` until ``done(rows)`` holds."""
    rows: list[dict[str, Any]] = []
    buffer = b""
    with anyio.fail_after(timeout):
        while not done(rows):
            chunk = await stream.receive()
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            rows.extend(json.loads(line) for line in lines if line.strip())
    return rows


class TestOutcomesEndToEnd:
    async def test_follow_shows_outcomes_live_and_replay_finds_them_after(
        self, redis_bus: Bus, redis_url: str, workers: WorkerPool
    ) -> None:
        """A follow process prints both events and the worker's ok and error outcomes as
        they come, and ends cleanly on SIGINT (exit 0); afterwards ``--outcomes
        --status error`` finds the refused event alone, its traceback included (the same
        as its failure record's)."""
        await workers.start(Refuser)
        bus_args = ["--bus-url", redis_url, "--namespace", redis_bus.namespace]
        follow = await anyio.open_process(
            [CLI, "replay", *bus_args, "--follow", "--since", "-1m", "--format", "jsonl"],
            stdin=subprocess.DEVNULL,
            cwd=REPO_ROOT,
            env=subprocess_env(),
        )
        try:
            publisher = Publisher(redis_bus, "reg-e2e")
            good, _ = await publisher.publish(
                AppRegistered(connection=CONNECTION, config={}), app="good"
            )
            bad, bad_entry = await publisher.publish(
                AppRegistered(connection=CONNECTION, config={"refuse": "no way"}), app="bad"
            )
            assert follow.stdout is not None

            def both_answered(rows: list[dict[str, Any]]) -> bool:
                return len([row for row in rows if row["kind"] == "outcome"]) >= 2

            rows = await _lines_until(follow.stdout, both_answered)
            follow.send_signal(signal.SIGINT)
            with anyio.fail_after(10):
                code = await follow.wait()
            assert follow.stderr is not None
            err = (await follow.stderr.receive()).decode() if code != 0 else ""
            assert code == 0, err
        finally:
            if follow.returncode is None:
                follow.kill()
            await follow.aclose()
        events = [row["id"] for row in rows if row["kind"] == "event"]
        assert events == [good.id, bad.id]
        outcomes = {row["event_id"]: row for row in rows if row["kind"] == "outcome"}
        assert outcomes[good.id]["status"] == "ok"
        assert outcomes[good.id]["plugin"] == Refuser.NAME
        assert outcomes[bad.id]["status"] == "error"
        assert outcomes[bad.id]["error"] == "refused: no way"
        # Each outcome comes after its event.
        assert rows.index(outcomes[bad.id]) > [r.get("id") for r in rows].index(bad.id)

        code, out, err = await run_cli(
            "replay", *bus_args, "--outcomes", "--status", "error", "--last", "5",
            "--format", "jsonl",
        )  # fmt: skip
        assert code == 0, err
        [row] = [json.loads(line) for line in out.splitlines()]
        assert (row["id"], row["entry_id"]) == (bad.id, bad_entry)
        [outcome] = row["outcomes"]
        assert (outcome["status"], outcome["error_type"]) == ("error", "PermanentError")
        assert outcome["consumer"].startswith(Refuser.NAME)
        assert "raise PermanentError" in outcome["traceback"]
        assert outcome["traceback"].endswith("PermanentError: refused: no way\n")
        [failure] = await redis_bus.failures.recent(10, kind="error")
        assert (failure.traceback, failure.entry_id) == (outcome["traceback"], bad_entry)
