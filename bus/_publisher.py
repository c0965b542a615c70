"""A registry's side of the bus: publish events and await their required acks.

Each registry reads its own ack stream (``ro:{ns}:acks:<registry>``) with one
background reader that resolves the waits in memory, so waiting costs no polling and
several registries on one bus never see each other's acks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections import deque
from collections.abc import Iterable, Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import anyio
import anyio.lowlevel
import msgspec
from anyio.abc import TaskStatus

from ._bus import Bus
from ._constants import (
    ACK_STREAM_GONE_TTL_MS,
    DEFAULT_ACK_TIMEOUT,
    DIRECTORY_REFRESH,
    HEARTBEAT_INTERVAL,
    READ_BATCH,
    READ_BLOCK_MS,
    REGISTRY_GONE_AFTER,
    RETENTION_INTERVAL,
)
from ._contract import (
    SCHEMA_VERSIONS,
    Ack,
    Envelope,
    Failure,
    FailureKind,
    Manifest,
    Payload,
    RegistryInfo,
    decode_ack_entry,
    new_event_id,
    payload_type,
)
from ._directory import is_alive
from ._errors import BusUnavailable, GroupMissing, RegistryIdTaken
from ._ids import id_key
from ._keys import unique_name
from ._redact import redact_struct
from ._redis import PendingEntry
from ._retention import Retention, trim_events
from ._retry import Outage
from ._waits import Outcome, WaitResult

log = logging.getLogger("rapid_objection.bus")

CATCH_UP_PATIENCE = 1.0
"""Seconds a diagnosis waits for the ack reader to reach the ack stream's end."""

ACK_GRACE = 0.25
"""Seconds added to a plugin's hook timeout, so that the worker's own timeout ack
(sent when the hook overruns) reaches the registry before the registry gives up."""


@dataclass(frozen=True, slots=True)
class PluginPolicy:
    """What a registry's configuration says of one plugin."""

    required: bool | None = None
    """None: as the plugin's manifest says; True: awaited even before any worker ran."""
    timeout: float | None = None
    """The plugin's hook timeout, which is also its ack deadline (plus ``ACK_GRACE``)."""


@dataclass
class _Wait:
    required: frozenset[str]
    outcomes: dict[str, Outcome] = field(default_factory=dict)
    others: dict[str, Outcome] = field(default_factory=dict)
    done: anyio.Event = field(default_factory=anyio.Event)

    def add(self, outcome: Outcome) -> None:
        if outcome.plugin not in self.required:
            self.others[outcome.plugin] = outcome
            return
        if outcome.plugin in self.outcomes:
            return  # the first answer (or the diagnosis) stands; a re-delivery's is late
        self.outcomes[outcome.plugin] = outcome
        if len(self.outcomes) == len(self.required):
            self.done.set()


class Publisher:
    """Publishes one registry's events and waits for the acks they require."""

    def __init__(
        self,
        bus: Bus,
        registry_id: str | None = None,
        *,
        policies: Mapping[str, PluginPolicy] | None = None,
        ack_timeout: float = DEFAULT_ACK_TIMEOUT,
        retention: Retention | None = None,
        ephemeral: bool | None = None,
    ) -> None:
        self.bus = bus
        self.registry_id = registry_id or unique_name()
        self._ephemeral = registry_id is None if ephemeral is None else ephemeral
        self.policies = dict(policies or {})
        self.ack_timeout = ack_timeout
        self.apps: set[str] = set()
        self.manifests: dict[str, Manifest] = {}
        self.retention = retention
        self.late_acks = 0
        """Acks of events nobody waits for any more: past their deadline, or published
        before this registry restarted (those are kept in ``unclaimed_acks``)."""
        self.unclaimed_acks: deque[Ack] = deque(maxlen=1000)
        self._ack_position = "0-0"
        self._saved_position = ""
        self._trimmed = 0.0
        self._ack_key = bus.keys.acks(self.registry_id)
        self._waits: dict[str, _Wait] = {}
        self._advanced = anyio.Event()
        """Set (and replaced) each time the ack reader has routed a batch."""
        self._seq = 0
        self._started = time.time()
        self._refreshed = 0.0
        self._stack: AsyncExitStack | None = None
        self._holder = f"{socket.gethostname()}|{os.getpid()}"

    async def __aenter__(self) -> Publisher:
        async with AsyncExitStack() as stack:
            other = await self.bus.directory.claim_registry(self.registry_id, self._holder)
            if other is not None:
                # Two processes under one id would share consumer names and an ack stream.
                raise RegistryIdTaken(self.registry_id, other)
            group = await stack.enter_async_context(anyio.create_task_group())
            stack.callback(group.cancel_scope.cancel)
            await self.refresh_directory()
            await self._clean_up_gone_registries()
            for plugin in self.policies:
                # Events published before a plugin's first worker starts wait for it.
                await self.bus.ensure_group(plugin)
            # The reader first: it loads the saved ack position, which the first
            # heartbeat would otherwise overwrite with the initial one.
            await group.start(self._read_acks)
            await self._beat()
            group.start_soon(self._heartbeat)
            self._stack = stack.pop_all()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            await stack.aclose()
        with anyio.move_on_after(2, shield=True):
            try:
                await self.bus.directory.forget_registry(self.registry_id)
                await self.bus.directory.release_registry(self.registry_id, self._holder)
                if self._ephemeral:
                    # A generated id never comes back: its position and acks are litter.
                    # The stream expires soon rather than now (see ACK_STREAM_GONE_TTL_MS).
                    await self.bus.redis.hdel(self.bus.keys.ack_positions, self.registry_id)
                    await self.bus.redis.pexpire(self._ack_key, ACK_STREAM_GONE_TTL_MS)
                elif self._ack_position != self._saved_position:
                    # A stable id comes back: it continues after the last ack it read.
                    await self.bus.redis.hset(
                        self.bus.keys.ack_positions,
                        self.registry_id,
                        self._ack_position.encode(),
                    )
            except BusUnavailable:
                log.warning("could not remove registry %s from %s", self.registry_id, self.bus.url)

    # -- the required set -----------------------------------------------------------------

    async def refresh_directory(self) -> None:
        """Re-read the plugin manifests (done every few seconds in the background)."""
        self.manifests = await self.bus.directory.manifests()
        self._refreshed = time.monotonic()

    def required_for(self, event_type: str) -> tuple[str, ...]:
        """Plugins whose ack an event of ``event_type`` awaits.

        A plugin is required when this registry's policy says so (or, without a policy,
        when its manifest does), and it implements the hook; a required plugin whose
        manifest is not known yet is awaited on every hook.
        """
        if event_type == "custom":
            return ()
        required: list[str] = []
        for plugin in sorted(set(self.policies) | set(self.manifests)):
            policy = self.policies.get(plugin)
            manifest = self.manifests.get(plugin)
            wanted = policy.required if policy is not None and policy.required is not None else None
            if wanted is None:
                wanted = manifest.required if manifest is not None else False
            if wanted and (manifest is None or event_type in manifest.hooks):
                required.append(plugin)
        return tuple(required)

    def _deadline_for(self, required: Iterable[str]) -> float:
        """The wait of one event: the longest of its required plugins' deadlines, each
        the plugin's configured hook timeout (plus grace) or else ``ack_timeout``."""
        deadlines = [
            policy.timeout + ACK_GRACE
            if (policy := self.policies.get(plugin)) is not None and policy.timeout is not None
            else self.ack_timeout
            for plugin in required
        ]
        return max(deadlines, default=self.ack_timeout)

    # -- publishing -----------------------------------------------------------------------

    def envelope(
        self,
        payload: Payload,
        *,
        app: str = "",
        required: tuple[str, ...] = (),
        deadline: float = 0.0,
        replay: bool = False,
        replaces: str | None = None,
        trace: str | None = None,
    ) -> Envelope:
        """A new envelope from this registry with the next sequence number."""
        event_type = payload_type(payload)
        self._seq += 1
        now = time.time()
        payload = redact_struct(payload)
        return Envelope(
            id=new_event_id(now),
            type=event_type,
            version=SCHEMA_VERSIONS[event_type],
            registry=self.registry_id,
            app=app,
            time=now,
            seq=self._seq,
            required=required,
            deadline=deadline,
            payload=payload,
            replay=replay,
            replaces=replaces,
            trace=trace,
        )

    async def publish(self, payload: Payload, *, app: str = "") -> tuple[Envelope, str]:
        """Publish without waiting for anyone; returns the envelope and its entry id."""
        envelope = self.envelope(payload, app=app)
        return envelope, await self.bus.publish(envelope)

    async def emit(
        self,
        payload: Payload,
        *,
        app: str = "",
        timeout: float | None = None,
        required: Iterable[str] | None = None,
        trace: str | None = None,
    ) -> WaitResult:
        """Publish one event and wait until every required plugin answered or time ran out.

        Plugins that did not answer in time are diagnosed with XPENDING: the consumer
        holding the event is named, and a ``timeout`` or ``no_consumer`` failure is
        recorded against it. Raises ``BusUnavailable`` when Redis cannot be reached.
        """
        event_type = payload_type(payload)
        needed = tuple(required) if required is not None else self.required_for(event_type)
        started = time.monotonic()
        limit = timeout if timeout is not None else self._deadline_for(needed)
        envelope = self.envelope(
            payload, app=app, required=needed, deadline=time.time() + limit, trace=trace
        )
        wait = _Wait(frozenset(needed))
        self._waits[envelope.id] = wait
        try:
            entry_id = await self.bus.publish(envelope)
            if needed and not wait.done.is_set():
                # asyncio.timeout, not an anyio scope: once per event on the registry's
                # hot path (4 us against 11); the registry runs on asyncio (redis-py).
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(limit - (time.monotonic() - started)):
                        await wait.done.wait()
            missing = [plugin for plugin in needed if plugin not in wait.outcomes]
            if missing:
                # Still registered: an ack that lands during the diagnosis resolves it.
                await self._diagnose(envelope, entry_id, missing, wait)
            outcomes = dict(wait.outcomes)
        finally:
            del self._waits[envelope.id]
        return WaitResult(
            event_id=envelope.id,
            entry_id=entry_id,
            type=event_type,
            app=app,
            required=needed,
            outcomes={plugin: outcomes[plugin] for plugin in needed},
            elapsed=time.monotonic() - started,
            others=dict(wait.others),
        )

    async def _diagnose(
        self, envelope: Envelope, entry_id: str, missing: list[str], wait: _Wait
    ) -> None:
        """Who held each missing plugin's copy of the event; records one failure each.

        An ack written between the deadline and the XPENDING below is not lost: the
        worker writes it with its XACK in one transaction, so once XPENDING has been
        asked, reading the ack stream up to its end finds every such ack.
        """
        redis, key = self.bus.redis, self.bus.keys.events
        workers = await self.bus.directory.workers()
        held: dict[str, list[PendingEntry]] = {}
        for plugin in missing:
            try:
                held[plugin] = await redis.xpending(
                    key, plugin, start=entry_id, end=entry_id, count=1
                )
            except GroupMissing:
                held[plugin] = []
        await self._catch_up()
        failures: list[Failure] = []
        for plugin in missing:
            if plugin in wait.outcomes:
                continue  # answered after all: its ack is the outcome
            pending = held[plugin]
            holder = pending[0].consumer if pending else None
            alive = any(w.plugin == plugin and is_alive(w.seen) for w in workers)
            holder_alive = any(
                w.plugin == plugin and w.consumer == holder and is_alive(w.seen) for w in workers
            )
            kind: FailureKind
            if holder is not None:
                # A holder whose heartbeat stopped died with the event in hand.
                kind = "timeout" if holder_alive else "crashed"
            else:
                kind = "timeout" if alive else "no_consumer"
            if holder is not None:
                error = f"no ack from consumer {holder!r} before the deadline"
            elif alive:
                error = "no consumer of the group had taken the event before the deadline"
            else:
                error = f"no live consumer of plugin {plugin!r}"
            wait.outcomes[plugin] = Outcome(
                plugin=plugin, status="timed_out", consumer=holder, error=error
            )
            failures.append(
                Failure(
                    event_id=envelope.id,
                    type=envelope.type,
                    app=envelope.app,
                    plugin=plugin,
                    consumer=holder,
                    kind=kind,
                    error=error,
                    attempt=pending[0].deliveries if pending else 0,
                    time=time.time(),
                    registry=self.registry_id,
                )
            )
        await self.bus.failures.record(failures)

    async def _catch_up(self) -> None:
        """Wait (briefly) until the ack reader has routed every ack written so far."""
        newest = await self.bus.redis.xrevrange(self._ack_key, "+", "-", count=1)
        if not newest:
            return
        target = id_key(newest[0][0])
        with anyio.move_on_after(CATCH_UP_PATIENCE):
            while id_key(self._ack_position) < target:
                await self._advanced.wait()

    # -- background -----------------------------------------------------------------------

    async def _read_acks(
        self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Resolve waits from this registry's ack stream: one reader, no polling."""
        redis = self.bus.redis
        # Continue where this registry id stopped reading (acks that arrived while it
        # was down are still there); a new id starts at the stream's end.
        saved = await redis.hget(self.bus.keys.ack_positions, self.registry_id)
        if saved is not None:
            self._ack_position = saved.decode()
        else:
            newest = await redis.xrevrange(self._ack_key, "+", "-", count=1)
            self._ack_position = newest[0][0] if newest else "0-0"
        self._saved_position = self._ack_position
        task_status.started()
        outage = Outage()
        while True:
            try:
                entries = await redis.xread(
                    self._ack_key, self._ack_position, count=READ_BATCH, block_ms=READ_BLOCK_MS
                )
                outage.over()
            except BusUnavailable as exc:
                log.warning("ack reader of registry %s: %s", self.registry_id, exc)
                await outage.pause()
                continue
            for entry_id, fields in entries:
                self._ack_position = entry_id
                self._route(fields)
            if entries:
                self._advanced.set()
                self._advanced = anyio.Event()
            if entries:
                # The waiters just resolved run (and publish their next events) before
                # this reader spends a command's worth of CPU on its next blocking read.
                await anyio.lowlevel.checkpoint()

    def _route(self, fields: dict[bytes, bytes]) -> None:
        try:
            acks = decode_ack_entry(fields)
        except (KeyError, msgspec.DecodeError, msgspec.ValidationError):
            log.warning("registry %s skipped an undecodable ack", self.registry_id)
            return
        for ack in acks:
            self._resolve(ack)

    def _resolve(self, ack: Ack) -> None:
        wait = self._waits.get(ack.event_id)
        if wait is None:
            self.late_acks += 1
            self.unclaimed_acks.append(ack)
            return
        wait.add(Outcome.from_ack(ack))

    async def _heartbeat(self) -> None:
        while True:
            await anyio.sleep(HEARTBEAT_INTERVAL)
            try:
                await self._beat()
                if time.monotonic() - self._refreshed >= DIRECTORY_REFRESH:
                    await self.refresh_directory()
                if self.retention and time.monotonic() - self._trimmed >= RETENTION_INTERVAL:
                    self._trimmed = time.monotonic()
                    await trim_events(self.bus, self.retention)
            except BusUnavailable as exc:
                log.warning("heartbeat of registry %s: %s", self.registry_id, exc)

    async def _clean_up_gone_registries(self) -> None:
        """Drop the ack streams and entries of registries gone for long (crashed ones
        never remove themselves); their acks have nobody left to read them."""
        now = time.time()
        for info in await self.bus.directory.registries():
            if info.id != self.registry_id and now - info.seen > REGISTRY_GONE_AFTER:
                await self.bus.redis.delete(self.bus.keys.acks(info.id))
                await self.bus.redis.hdel(self.bus.keys.ack_positions, info.id)
                await self.bus.directory.forget_registry(info.id)

    async def _beat(self) -> None:
        info = RegistryInfo(
            id=self.registry_id,
            host=socket.gethostname(),
            pid=os.getpid(),
            started=self._started,
            seen=time.time(),
            apps=tuple(sorted(self.apps)),
            required=tuple(sorted(name for name, p in self.policies.items() if p.required)),
        )
        await self.bus.directory.beat_registry(info)
        other = await self.bus.directory.claim_registry(self.registry_id, self._holder)
        if other is not None:
            log.error(
                "registry id %s is now held by %s as well: give one of them another id",
                self.registry_id,
                other,
            )
        if self._ack_position != self._saved_position:
            await self.bus.redis.hset(
                self.bus.keys.ack_positions, self.registry_id, self._ack_position.encode()
            )
            self._saved_position = self._ack_position

    def stats(self) -> dict[str, Any]:
        return {"registry": self.registry_id, "waiting": len(self._waits), "seq": self._seq}
