"""The commands that read until Ctrl-C (``status --watch``, ``replay --follow``) through a
Redis outage: each says the bus is down, keeps trying, and goes on when the server is
back (the same port, its data kept), saying so."""

from __future__ import annotations

import json
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import anyio
import pytest
from anyio.abc import ByteReceiveStream, Process

from rapid_objection.bus import AppUnregistered, Bus, Publisher
from tests.e2e import CLI, REPO_ROOT, subprocess_env

from .server import RedisServer

pytestmark = [pytest.mark.anyio, pytest.mark.slow, pytest.mark.redis_server]

WAIT = 20.0
"""Seconds any one thing the test waits for gets."""


class Stream:
    """What a process has written on one pipe so far, read on demand."""

    def __init__(self, pipe: ByteReceiveStream | None) -> None:
        assert pipe is not None
        self.pipe = pipe
        self.text = ""

    async def until(self, predicate: str | int) -> str:
        """Read until the text holds ``predicate`` (a string) or that many lines (an int)."""
        with anyio.fail_after(WAIT):
            while not (
                predicate in self.text
                if isinstance(predicate, str)
                else self.text.count("\n") >= predicate
            ):
                self.text += (await self.pipe.receive()).decode(errors="replace")
        return self.text


async def published(server: RedisServer, namespace: str) -> str:
    """Publish one event on the server's namespace; its id."""
    async with Bus.connect(server.url, namespace) as bus, Publisher(bus, "reg-outage") as pub:
        envelope, _ = await pub.publish(AppUnregistered(), app="shop")
    return envelope.id


@dataclass
class Reader:
    """A command that reads the server until Ctrl-C, and what it printed so far."""

    process: Process
    out: Stream
    err: Stream

    async def stopped(self) -> int:
        """SIGINT (Ctrl-C), then the exit status."""
        self.process.send_signal(signal.SIGINT)
        with anyio.fail_after(WAIT):
            return await self.process.wait()

    def said_the_outage(self, server: RedisServer) -> None:
        """Its stderr named the bus once it went away, in lines without a traceback."""
        assert f"bus unavailable at {server.url}" in self.err.text
        assert "Traceback" not in self.err.text
        assert ".;" not in self.err.text  # the reason's full stop is dropped before the ";"


@asynccontextmanager
async def reading(server: RedisServer, namespace: str, *args: str) -> AsyncIterator[Reader]:
    """``rapid-objection *args`` on the server's namespace; killed if it still runs after."""
    command = [CLI, *args, "--bus-url", server.url, "--namespace", namespace]
    async with await anyio.open_process(command, cwd=REPO_ROOT, env=subprocess_env()) as process:
        try:
            yield Reader(process, Stream(process.stdout), Stream(process.stderr))
        finally:
            if process.returncode is None:
                process.kill()


async def test_json_watch_rides_out_a_redis_outage(server: RedisServer, namespace: str) -> None:
    """The server stops mid-watch: one line on stderr names the bus and the cause, no
    object is printed while it is down, the process stays up, and when the server is
    back (same port, its data kept) the objects resume and a line says so."""
    await published(server, namespace)
    async with reading(server, namespace, "status", "--watch", "--json") as reader:
        out, err = reader.out, reader.err
        await out.until(1)
        await server.stop()
        await err.until("trying again")
        lines_when_down = (await out.until(1)).count("\n")
        await anyio.sleep(2.5)  # two collections that find the server down
        assert out.text.count("\n") <= lines_when_down + 1  # one may have been in flight
        assert reader.process.returncode is None
        await server.start()
        await err.until("bus back")
        printed = (await out.until(lines_when_down + 2)).count("\n")
        code = await reader.stopped()
    assert code == 0
    reader.said_the_outage(server)
    assert len(err.text.strip().splitlines()) == 2, err.text  # down once, back once
    last = json.loads(out.text.splitlines()[printed - 1])
    assert last["namespace"] == namespace
    assert last["events"] == 1


async def test_follow_rides_out_a_redis_outage(server: RedisServer, namespace: str) -> None:
    """``replay --follow`` shows an event, the server stops (one line on stderr naming
    the bus), comes back, and the event published then is shown: each event once, in
    order, and a line says the bus is back."""
    first = await published(server, namespace)
    async with reading(server, namespace, "replay", "--follow", "--format", "jsonl") as reader:
        out, err = reader.out, reader.err
        await anyio.sleep(1.0)  # following from the newest entry on
        before = await published(server, namespace)
        await out.until(before)
        await server.stop()
        await err.until("trying again")
        assert reader.process.returncode is None
        await server.start()
        after = await published(server, namespace)
        await out.until(after)
        await err.until("bus back")
        code = await reader.stopped()
    assert code == 0
    reader.said_the_outage(server)
    shown = [json.loads(line)["id"] for line in out.text.splitlines()]
    assert shown == [before, after]
    assert first not in shown  # --follow starts after what was there
