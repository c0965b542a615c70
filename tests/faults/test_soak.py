"""The delivery promises under random faults, as properties of one bounded run.

Three worker processes of one plugin handle bursts of pipelined events for twenty apps
with random hook durations (a few of them always fail), while workers join, stop
(SIGTERM) and die (SIGKILL) at random moments. Afterwards, from what the hooks recorded
on the server and what the registry's waits said:

* every event was handled at least once (or, when its hook always fails, dead-lettered);
* no event was running in two live workers at the same time;
* the events of each app started in stream order;
* every required wait ended with its true outcome;
* the dead letters hold only events whose hooks really failed ``max_deliveries`` times.

The seed is printed (``SOAK_SEED`` replays one) with the counts.
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import anyio
import pytest

from rapid_objection.bus import AppRegistered, Bus, ConnectionInfo, Publisher
from rapid_objection.bus._constants import RECORD_FIELD
from rapid_objection.bus._contract import decode_dead_letter
from rapid_objection.bus.testing import drained

from .conftest import summarise
from .plugins import Timed, runs_key
from .server import RedisServer
from .workers import ProcessWorkers, process_workers

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

APPS = 20
WORKERS = 3
PUBLISH_FOR = 8.0
"""Seconds of bursts; the faults happen inside this window."""
BURST = (5, 20)
"""Events per burst, published at once (one pipelined round trip)."""
BURST_GAP = (0.3, 0.8)
HOOK_SLEEP = (0.0, 0.2)
FAIL_RATE = 0.05
MAX_DELIVERIES = 3
CLAIM_IDLE = 1.0
HOOK_TIMEOUT = 3.0
WAIT_TIMEOUT = 6.0
"""The registry's deadline: longer than a reclaim after a kill (about ``CLAIM_IDLE``)."""
ACK_MARGIN = 0.5
"""Seconds an ack may take from the end of its hook to the registry (flush, read)."""
DRAIN_TIMEOUT = 30.0


@dataclass(frozen=True, slots=True)
class Run:
    event: str
    consumer: str
    start: float
    end: float | None
    outcome: str


@dataclass(frozen=True, slots=True)
class Waited:
    event: str
    entry_id: str
    app: str
    fails: bool
    status: str
    consumer: str | None
    ended: float


class Chaos:
    """Joins, stops and kills at random moments; keeps at least two workers alive."""

    def __init__(self, workers: ProcessWorkers, rng: random.Random) -> None:
        self.workers = workers
        self.rng = rng
        self.alive: list[str] = []
        self.killed: dict[str, float] = {}
        self.stopped: list[str] = []
        self.joined = 0
        self.held_by_killed: set[str] = set()

    async def start(self, count: int) -> None:
        self.alive += await self.workers.start(
            Timed,
            count,
            concurrency=self.rng.choice([1, 2, 4]),
            timeout=HOOK_TIMEOUT,
            max_deliveries=MAX_DELIVERIES,
            claim_idle=CLAIM_IDLE,
        )

    async def run(self) -> None:
        plan = ["kill", "stop", "join", "kill"]
        self.rng.shuffle(plan)
        moments = sorted(self.rng.uniform(1.0, PUBLISH_FOR - 1.0) for _ in plan)
        began = time.monotonic()
        for moment, action in zip(moments, plan, strict=True):
            await anyio.sleep(max(0.0, moment - (time.monotonic() - began)))
            if action == "join":
                await self.start(1)
                self.joined += 1
                continue
            victim = self.rng.choice(self.alive)
            self.alive.remove(victim)
            if action == "kill":
                await self.workers.kill(victim)
                self.killed[victim] = time.time()
                # What it held when it died: read (a delivery counted), maybe never run.
                bus = self.workers.bus
                rows = await bus.redis.xpending(
                    bus.keys.events, Timed.NAME, consumer=victim, count=100_000
                )
                self.held_by_killed.update(row.entry_id for row in rows)
            else:
                self.workers.terminate(victim)
                self.stopped.append(victim)
            if len(self.alive) < 2:
                await self.start(1)


async def publish_bursts(
    publisher: Publisher, rng: random.Random, waits: list[Waited], group: Any
) -> int:
    """Bursts of concurrent required emits until ``PUBLISH_FOR`` is over; returns how many."""
    published = 0

    async def emit(app: str, fails: bool, sleep: float) -> None:
        config = {"sleep": sleep, "fail": fails}
        payload = AppRegistered(connection=ConnectionInfo(dialect="sqlite"), config=config)
        result = await publisher.emit(payload, app=app, required=[Timed.NAME], timeout=WAIT_TIMEOUT)
        outcome = result.outcomes[Timed.NAME]
        waits.append(
            Waited(
                result.event_id,
                result.entry_id,
                app,
                fails,
                outcome.status,
                outcome.consumer,
                time.time(),
            )
        )

    ends = time.monotonic() + PUBLISH_FOR
    while time.monotonic() < ends:
        for _ in range(rng.randint(*BURST)):
            fails = rng.random() < FAIL_RATE
            group.start_soon(emit, f"app-{rng.randrange(APPS)}", fails, rng.uniform(*HOOK_SLEEP))
            published += 1
        await anyio.sleep(rng.uniform(*BURST_GAP))
    return published


async def read_runs(bus: Bus) -> list[Run]:
    raw = await bus.redis.hgetall(runs_key(bus.keys, Timed.NAME))
    runs = []
    for field, value in raw.items():
        record = json.loads(value)
        runs.append(
            Run(
                field.split("|")[0],
                record["consumer"],
                record["start"],
                record["end"],
                record["outcome"],
            )
        )
    return runs


def overlapping(runs: list[Run], killed: dict[str, float]) -> list[tuple[Run, Run]]:
    """Pairs of runs of one event by two consumers while both were alive."""
    found = []
    by_event: dict[str, list[Run]] = defaultdict(list)
    for run in runs:
        by_event[run.event].append(run)
    for event_runs in by_event.values():
        spans = []
        for run in event_runs:
            end = run.end if run.end is not None else killed.get(run.consumer)
            if end is not None:
                spans.append((run.start, end, run))
        for index, (start, end, run) in enumerate(spans):
            for other_start, other_end, other in spans[index + 1 :]:
                if other.consumer != run.consumer and start < other_end and other_start < end:
                    found.append((run, other))
    return found


def out_of_order(waits: list[Waited], runs: list[Run]) -> list[tuple[str, str]]:
    """(app, event) whose first start came before that of an older event of its app."""
    first_start: dict[str, float] = {}
    for run in runs:
        first_start[run.event] = min(first_start.get(run.event, run.start), run.start)
    found = []
    by_app: dict[str, list[Waited]] = defaultdict(list)
    for wait in waits:
        by_app[wait.app].append(wait)
    for app, events in by_app.items():
        events.sort(key=lambda w: tuple(int(part) for part in w.entry_id.split("-")))
        latest = 0.0
        for wait in events:
            started = first_start.get(wait.event)
            if started is None:
                continue
            if started < latest:
                found.append((app, wait.event))
            latest = max(latest, started)
    return found


def untrue_outcomes(waits: list[Waited], runs: list[Run], killed: dict[str, float]) -> list[Waited]:
    """Waits whose outcome the recorded runs contradict."""
    finished: dict[str, list[Run]] = defaultdict(list)
    for run in runs:
        if run.end is not None and run.consumer not in killed:
            finished[run.event].append(run)
    wrong = []
    for wait in waits:
        done = finished[wait.event]
        if wait.status == "acked":
            # The acking consumer ran it to the end (it may have been killed since).
            every = [r for r in runs if r.event == wait.event and r.consumer == wait.consumer]
            if wait.fails or not any(r.outcome == "ok" for r in every):
                wrong.append(wait)
        elif wait.status == "failed":
            if not wait.fails:
                wrong.append(wait)
        elif wait.status == "timed_out":
            # A timeout is true when no worker that stayed alive finished the event in
            # time for its ack to reach the registry.
            answered = [r for r in done if r.end is not None and r.end < wait.ended - ACK_MARGIN]
            settled = [r for r in answered if r.outcome == "ok"] if not wait.fails else []
            if settled:
                wrong.append(wait)
        else:
            wrong.append(wait)
    return wrong


class TestSoak:
    @pytest.mark.redis_server
    async def test_the_promises_hold_under_random_faults(
        self, request: pytest.FixtureRequest, server: RedisServer, server_bus: Bus
    ) -> None:
        """Handled at least once, never twice at once, in per-app order, true outcomes,
        and only really failing events in the dead letters."""
        seed = int(os.environ.get("SOAK_SEED", random.randrange(1_000_000)))
        rng = random.Random(seed)
        bus = server_bus
        began = time.monotonic()
        waits: list[Waited] = []
        async with process_workers(bus, server.url, server.directory) as workers:
            chaos = Chaos(workers, rng)
            await chaos.start(WORKERS)
            async with Publisher(bus, "soak-registry") as publisher:
                await publisher.refresh_directory()
                async with anyio.create_task_group() as group:
                    group.start_soon(chaos.run)
                    published = await publish_bursts(publisher, rng, waits, group)
            await drained(bus, Timed.NAME, timeout=DRAIN_TIMEOUT)
        runs = await read_runs(bus)
        letters = [
            decode_dead_letter(fields[RECORD_FIELD])
            for _, fields in await bus.redis.xrange(bus.keys.dlq, "-", "+", 100_000)
        ]
        failing = {w.event for w in waits if w.fails}
        ok_runs: dict[str, int] = defaultdict(int)
        raised: dict[str, int] = defaultdict(int)
        for run in runs:
            if run.outcome == "ok":
                ok_runs[run.event] += 1
            elif run.outcome == "raised":
                raised[run.event] += 1
        unhandled = [w.event for w in waits if not w.fails and ok_runs[w.event] == 0]
        overlaps = overlapping(runs, chaos.killed)
        disorder = out_of_order(waits, runs)
        untrue = untrue_outcomes(waits, runs, chaos.killed)
        touched_by_kills = {r.event for r in runs if r.consumer in chaos.killed} | {
            w.event for w in waits if w.entry_id in chaos.held_by_killed
        }
        wrong_letters = [
            letter.event_id
            for letter in letters
            if letter.event_id not in failing
            or (
                raised[letter.event_id] < MAX_DELIVERIES and letter.event_id not in touched_by_kills
            )
        ]
        statuses: dict[str, int] = defaultdict(int)
        for wait in waits:
            statuses[wait.status] += 1
        line = (
            f"soak seed={seed}: events={published} apps={APPS} runs={len(runs)} "
            f"handled={sum(1 for e in ok_runs if ok_runs[e])} "
            f"reruns={sum(1 for e in ok_runs if ok_runs[e] > 1)} "
            f"dead_letters={len(letters)} failing={len(failing)} "
            f"acked={statuses['acked']} failed={statuses['failed']} "
            f"timed_out={statuses['timed_out']} kills={len(chaos.killed)} "
            f"stops={len(chaos.stopped)} joins={chaos.joined} "
            f"overlaps={len(overlaps)} out_of_order={len(disorder)} "
            f"untrue={len(untrue)} unhandled={len(unhandled)} "
            f"wrong_letters={len(wrong_letters)} in {time.monotonic() - began:.1f}s"
        )
        print(line, file=sys.stderr)
        summarise(request, line)
        for letter in letters:
            if letter.event_id in wrong_letters:
                print(
                    "letter",
                    letter.event_id,
                    letter.attempts,
                    raised[letter.event_id or ""],
                    letter.last_error,
                    file=sys.stderr,
                )
        for wait in untrue:
            print("untrue", wait, [r for r in runs if r.event == wait.event], file=sys.stderr)
        assert len(waits) == published
        assert unhandled == []
        assert overlaps == []
        assert disorder == []
        assert untrue == []
        assert sorted(letter.event_id or "" for letter in letters) == sorted(failing)
        assert wrong_letters == []
