"""Plugins of the fault scenarios (``tests.faults.plugins:Recorder``), in processes or
in-process.

Each records on the server side every call of its hook (``calls``, at the start) and
every event it handled (``handled``, at the end), so that duplicates and losses are
computed from what Redis saw, not from what a process that may have been killed
believed. A record is one field ``<event id>|<call token>`` of a hash, written with HSET:
unlike HINCRBY it can be retried when Redis goes away before answering (a reply lost
in a shutdown) without counting one call twice.
"""

from __future__ import annotations

import json
import secrets
import time
from typing import Any, ClassVar, Literal

import anyio

from rapid_objection.bus import BusUnavailable, ConnectionInfo
from rapid_objection.bus._keys import Keys
from rapid_objection.plugin_workers import PluginInterface, RegistryView, current_delivery

Count = Literal["calls", "handled"]

RECORD_RETRY_CAP = 0.5
"""Seconds; the longest pause between two tries of a record while Redis is away."""


def count_key(keys: Keys, kind: Count, plugin: str) -> str:
    """The hash ``<event id>|<call token> -> 1`` of ``kind`` for ``plugin``."""
    return f"{keys.prefix}faults:{kind}:{plugin}"


class Recorder(PluginInterface):
    """Handles ``app_registered``: records the call, sleeps ``config["sleep"]`` seconds,
    records the event as handled, then lingers ``config["linger"]`` seconds."""

    NAME: ClassVar[str] = "fault-recorder"

    def __init__(self) -> None:
        super().__init__(self.NAME, "1.0.0")

    async def on_app_registered(
        self, app_name: str, connection: ConnectionInfo, config: dict[str, Any]
    ) -> None:
        call = self.call()
        await self.record("calls", call)
        await anyio.sleep(float(config.get("sleep", 0.0)))
        await self.record("handled", call)
        await anyio.sleep(float(config.get("linger", 0.0)))

    @staticmethod
    def call() -> str:
        """``<event id>|<token>``: this call of the hook, unique."""
        return f"{current_delivery().envelope.id}|{secrets.token_hex(6)}"

    async def record(self, kind: Count, call: str) -> None:
        """HSET, tried again while Redis is away (the hook timeout bounds it), so that
        the outage scenario records the hooks that straddle the outage too."""
        view = self.registry
        assert isinstance(view, RegistryView), "initialize() runs before any hook"
        key, delay = count_key(view.bus.keys, kind, self.name), 0.05
        while True:
            try:
                await view.bus.redis.hset(key, call, b"1")
                return
            except BusUnavailable:
                await anyio.sleep(delay)
                delay = min(delay * 2, RECORD_RETRY_CAP)


class Raiser(Recorder):
    """Records the call, then always raises."""

    NAME = "fault-raiser"

    async def on_app_registered(
        self, app_name: str, connection: ConnectionInfo, config: dict[str, Any]
    ) -> None:
        await self.record("calls", self.call())
        raise RuntimeError("this hook always fails")


def runs_key(keys: Keys, plugin: str) -> str:
    """The hash ``<event id>|<call token> -> JSON run record`` of ``plugin``'s hook calls."""
    return f"{keys.prefix}faults:runs:{plugin}"


class Timed(Recorder):
    """Records each run of its hook with its consumer, start and end time and outcome;
    sleeps ``config["sleep"]`` seconds, and raises when ``config["fail"]``."""

    NAME = "fault-timed"

    async def on_app_registered(
        self, app_name: str, connection: ConnectionInfo, config: dict[str, Any]
    ) -> None:
        call, started = self.call(), time.time()
        await self.run_record(call, started, None, "running")
        await anyio.sleep(float(config.get("sleep", 0.0)))
        if config.get("fail"):
            await self.run_record(call, started, time.time(), "raised")
            raise RuntimeError("this event always fails")
        await self.run_record(call, started, time.time(), "ok")

    async def run_record(
        self, call: str, started: float, ended: float | None, outcome: str
    ) -> None:
        view = self.registry
        assert isinstance(view, RegistryView), "initialize() runs before any hook"
        record = {
            "consumer": view.consumer,
            "start": started,
            "end": ended,
            "outcome": outcome,
            "attempt": current_delivery().attempt,
        }
        key, delay = runs_key(view.bus.keys, self.name), 0.05
        while True:
            try:
                await view.bus.redis.hset(key, call, json.dumps(record).encode())
                return
            except BusUnavailable:
                await anyio.sleep(delay)
                delay = min(delay * 2, RECORD_RETRY_CAP)
