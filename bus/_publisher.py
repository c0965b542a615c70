"""A registry's side of the bus: publish events and await their required acks (which
its ack reader, bus/_ack_reader.py, hands to the waits)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import anyio
import msgspec

from ._ack_reader import AckReader
from ._bus import Bus
from ._constants import (
    ACK_STREAM_GONE_TTL_MS,
    DEFAULT_ACK_TIMEOUT,
    DIRECTORY_REFRESH,
    DLQ_TRIM_INTERVAL,
    HEARTBEAT_INTERVAL,
    REGISTRY_GONE_AFTER,
    RETENTION_INTERVAL,
)
from ._contract import (
    Ack,
    AppSchema,
    Envelope,
    Failure,
    Link,
    Manifest,
    Payload,
    RegistryInfo,
    encode,
    new_event_id,
    payload_type,
    written_version,
)
from ._diagnosis import Diagnosis, failure_of, no_live_consumer
from ._dlq_bounds import trim_dead_letters
from ._errors import BusUnavailable, RegistryIdTaken
from ._keys import unique_name
from ._liveness import Liveness
from ._redact import redact_struct
from ._restore import Restorer
from ._retention import Retention, trim_events
from ._signatures import digest
from ._waits import Outcome, Wait, WaitResult

log = logging.getLogger("rapid_objection.bus")

ACK_GRACE = 0.25
"""Seconds added to a plugin's hook timeout, so that the worker's own timeout ack
(sent when the hook overruns) reaches the registry before the registry gives up."""


@dataclass(frozen=True, slots=True)
class Emission:
    """One event for ``Publisher.emit_many``: its payload, its app, and (when not the
    registry's policy) the plugins it waits for."""

    payload: Payload
    app: str = ""
    required: Iterable[str] | None = None
    trace: str | None = None


@dataclass(frozen=True, slots=True)
class _Pending:
    """An event of ``emit_many`` between its envelope and its result."""

    envelope: Envelope
    data: bytes
    """The envelope encoded."""
    wait: Wait
    unserved: list[Failure]
    started: float
    deadline: float


@dataclass(frozen=True, slots=True)
class PluginPolicy:
    """What a registry's configuration says of one plugin."""

    required: bool | None = None
    """None: as the plugin's manifest says; True: awaited even before any worker ran."""
    timeout: float | None = None
    """The plugin's hook timeout, which is also its ack deadline (plus ``ACK_GRACE``)."""
    starting: bool = False
    """This registry is starting the plugin's first worker: its events wait in the group
    for it until their deadline, instead of failing at once for want of a live consumer."""


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
        self.schemas: dict[str, AppSchema] = {}
        """Where each app's migrations stand; the heartbeat shows it."""
        self.manifests: dict[str, Manifest] = {}
        self.liveness = Liveness(bus.directory)
        self.retention = retention
        self.acks = AckReader(bus, self.registry_id)
        self._waits = self.acks.waits
        self._seq = 0
        self._chain = new_event_id() if bus.keyring is not None else None
        self._prev: bytes | None = None
        self._encoded: tuple[str, bytes] | None = None
        """The last envelope made, encoded once (its digest links the next one)."""
        self._started = time.time()
        self._refreshed = 0.0
        self._dlq_trimmed = 0.0
        self._stack: AsyncExitStack | None = None
        self._holder = f"{socket.gethostname()}|{os.getpid()}"
        self._published = "0-0"
        """The entry id of the newest event this registry published."""
        self._position = "0-0"
        """``_published`` as of the last heartbeat that found the namespace whole: where
        a group the namespace lost comes back (every event after it is delivered)."""
        self.restorer = Restorer(
            f"registry {self.registry_id!r}", f"namespace {bus.namespace!r} at {bus.url}"
        )
        """What this registry puts back when the namespace lost it (bus/_restore.py): its
        record, the groups of the plugins its configuration lists, its ack position.
        Whatever else a registry owns there (app owners) adds a step of its own."""
        self.restorer.add("registry record", self._beat)

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
                self.restorer.add(f"consumer group {plugin!r}", self._group_restorer(plugin))
            self.restorer.add("ack stream", self.acks.restore_position)
            newest = await self.bus.redis.xrevrange(self.bus.keys.events, "+", "-", count=1)
            self._published = self._position = newest[0][0] if newest else "0-0"
            # The reader first: it loads the saved ack position, which the first
            # heartbeat would otherwise overwrite with the initial one.
            await group.start(self.acks.run)
            await self._beat()
            group.start_soon(self._heartbeat)
            if self.retention is not None:
                group.start_soon(self._retain)
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
                    await self.bus.redis.pexpire(self.acks.key, ACK_STREAM_GONE_TTL_MS)
                else:
                    # A stable id comes back: it continues after the last ack it read.
                    await self.acks.save_position()
            except BusUnavailable:
                log.warning("could not remove registry %s from %s", self.registry_id, self.bus.url)

    # -- the required set -----------------------------------------------------------------

    async def refresh_directory(self) -> None:
        """Re-read the plugin manifests and the workers' heartbeats (done every few
        seconds in the background)."""
        self.manifests = await self.bus.directory.manifests()
        await self.liveness.refresh()
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
        envelope = Envelope(
            id=new_event_id(now),
            type=event_type,
            version=written_version(payload),
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
            link=None if self._chain is None else Link(self._chain, self._prev),
        )
        if self._chain is not None:
            data = encode(envelope)
            self._prev = digest(data)
            self._encoded = (envelope.id, data)
        return envelope

    def _encoding(self, envelope: Envelope) -> bytes:
        """``envelope`` encoded: once only, when ``envelope()`` chained it already."""
        made, self._encoded = self._encoded, None
        return made[1] if made is not None and made[0] == envelope.id else encode(envelope)

    async def _send(self, envelope: Envelope) -> str:
        """Publish ``envelope``, encoded once."""
        return await self.bus.publish_encoded(envelope.id, self._encoding(envelope))

    async def publish(
        self, payload: Payload, *, app: str = "", trace: str | None = None
    ) -> tuple[Envelope, str]:
        """Publish without waiting for anyone; returns the envelope and its entry id."""
        envelope = self.envelope(payload, app=app, trace=trace)
        self._published = entry_id = await self._send(envelope)
        return envelope, entry_id

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

        A required plugin without a live consumer (no worker heartbeat within the
        liveness window) is decided at once: ``timed_out``, and a ``no_consumer`` failure
        recorded, without waiting for the deadline. Plugins that did not answer in time
        are diagnosed with XPENDING: the consumer holding the event is named, and a
        ``timeout``, ``crashed`` or ``no_consumer`` failure is recorded against it.
        Raises ``BusUnavailable`` when Redis cannot be reached.
        """
        emission = Emission(payload, app=app, required=required, trace=trace)
        return (await self.emit_many([emission], timeout=timeout))[0]

    async def emit_many(
        self, events: Iterable[Emission | Payload], *, timeout: float | None = None
    ) -> list[WaitResult]:
        """``emit`` for several events at once (each of its own app, when it says so):
        published in one round trip, in order, then awaited together; their results
        in the same order. Each event waits for its own required plugins until its own
        deadline, as ``emit`` would.

        Raises ``BusUnavailable`` when any of them could not be published (the others
        were, and are delivered; their acks count as late).
        """
        pending: list[_Pending] = []
        try:
            for event in events:
                emission = event if isinstance(event, Emission) else Emission(event)
                pending.append(await self._begin(emission, timeout))
            if not pending:
                return []
            entry_ids = await self.bus.publish_encoded_many(
                [(p.envelope.id, p.data) for p in pending]
            )
            self._published = entry_ids[-1]
            await self.bus.failures.record(
                [
                    msgspec.structs.replace(failure, entry_id=entry_id)
                    for p, entry_id in zip(pending, entry_ids, strict=True)
                    for failure in p.unserved
                ]
            )
            return [
                await self._conclude(p, entry_id)
                for p, entry_id in zip(pending, entry_ids, strict=True)
            ]
        finally:
            for p in pending:
                del self._waits[p.envelope.id]

    async def _begin(self, emission: Emission, timeout: float | None) -> _Pending:
        """One event's envelope, encoded, and its wait registered (before it is sent:
        an ack can come back before the publish returns)."""
        event_type = payload_type(emission.payload)
        needed = (
            tuple(emission.required)
            if emission.required is not None
            else self.required_for(event_type)
        )
        started = time.monotonic()
        limit = timeout if timeout is not None else self._deadline_for(needed)
        envelope = self.envelope(
            emission.payload,
            app=emission.app,
            required=needed,
            deadline=time.time() + limit,
            trace=emission.trace,
        )
        data = self._encoding(envelope)
        wait = Wait(frozenset(needed))
        unserved = [
            failure_of(
                envelope,
                self.registry_id,
                plugin,
                None,
                "no_consumer",
                error=no_live_consumer(plugin),
            )
            for plugin in await self.liveness.absent(self._may_fail_at_once(needed))
        ]
        for failure in unserved:
            # Fail closed, and at once: nobody alive would answer before the deadline.
            wait.add(Outcome(plugin=failure.plugin, status="timed_out", error=failure.error))
        self._waits[envelope.id] = wait
        return _Pending(envelope, data, wait, unserved, started, started + limit)

    async def _conclude(self, pending: _Pending, entry_id: str) -> WaitResult:
        """Wait for one published event's acks until its deadline, diagnose what is missing."""
        envelope, wait = pending.envelope, pending.wait
        while not wait.complete and (left := pending.deadline - time.monotonic()) > 0:
            # asyncio.timeout, not an anyio scope: once per event on the registry's
            # hot path (4 us against 11); the registry runs on asyncio (redis-py).
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(left):
                    await wait.woken.wait()
            if not wait.complete and wait.woken.is_set():
                # The heartbeat found a plugin still missing without a live consumer.
                wait.rearm()
                await self._diagnosis(envelope, entry_id).run(wait.missing(), wait, early=True)
        if missing := wait.missing():
            # Still registered: an ack that lands during the diagnosis resolves it.
            await self._diagnosis(envelope, entry_id).run(missing, wait)
        ended = wait.completed_at if wait.completed_at is not None else time.monotonic()
        outcomes = wait.outcomes
        return WaitResult(
            event_id=envelope.id,
            entry_id=entry_id,
            type=envelope.type,
            app=envelope.app,
            required=envelope.required,
            outcomes={plugin: outcomes[plugin] for plugin in envelope.required},
            elapsed=ended - pending.started,
            others=dict(wait.others),
        )

    def _diagnosis(self, envelope: Envelope, entry_id: str) -> Diagnosis:
        return Diagnosis(self.bus, self.registry_id, envelope, entry_id, self.acks.catch_up)

    def _may_fail_at_once(self, plugins: Iterable[str]) -> list[str]:
        """The plugins of ``plugins`` that are decided once they lack a live consumer:
        all but those this registry is starting (their events wait for the first worker)."""
        return [
            plugin
            for plugin in plugins
            if (policy := self.policies.get(plugin)) is None or not policy.starting
        ]

    def _wake_unserved(self) -> None:
        """Wake the waits whose missing plugins include one that has lost its last live
        consumer: they are decided now rather than at their deadline."""
        for wait in self._waits.values():
            if any(not self.liveness.live(p) for p in self._may_fail_at_once(wait.missing())):
                wait.wake()

    # -- background -----------------------------------------------------------------------

    async def _heartbeat(self) -> None:
        while True:
            await anyio.sleep(HEARTBEAT_INTERVAL)
            try:
                if await self._beat():
                    # Its record was gone: the namespace lost its data (an empty restart).
                    await self.restorer.restore("registry record")
                    await self.refresh_directory()
                else:
                    self._position = self._published
                if time.monotonic() - self._refreshed >= DIRECTORY_REFRESH:
                    await self.refresh_directory()
                else:
                    await self.liveness.refresh()
                self._wake_unserved()
                if time.monotonic() - self._dlq_trimmed >= DLQ_TRIM_INTERVAL:
                    # Writers cap the dead letters too; this applies the age alone.
                    self._dlq_trimmed = time.monotonic()
                    bus = self.bus
                    await trim_dead_letters(bus.redis, bus.keys, bus.dead_letters)
            except BusUnavailable as exc:
                log.warning("heartbeat of registry %s: %s", self.registry_id, exc)

    async def _retain(self) -> None:
        """Trim the event stream every ``RETENTION_INTERVAL``, one registry of the
        namespace at a time (whoever takes the short lease): two trims at once could
        each remove the same excess, leaving fewer events than ``max_len``."""
        assert self.retention is not None
        warned: set[str] = set()
        lease = int(RETENTION_INTERVAL * 900)  # ms: free again before this one's next pass
        while True:
            await anyio.sleep(RETENTION_INTERVAL)
            try:
                if await self.bus.redis.set(
                    self.bus.keys.retention_lease,
                    self.registry_id.encode(),
                    ttl_ms=max(lease, 1),
                    only_if_absent=True,
                ):
                    await trim_events(self.bus, self.retention, warned=warned)
            except BusUnavailable as exc:
                log.warning("retention of registry %s: %s", self.registry_id, exc)

    def _group_restorer(self, plugin: str) -> Callable[[], Awaitable[bool]]:
        async def restore() -> bool:
            return await self.bus.ensure_group(plugin, start=self._position)

        return restore

    async def _clean_up_gone_registries(self) -> None:
        """Drop the ack streams and entries of registries gone for long (crashed ones
        never remove themselves); their acks have nobody left to read them."""
        now = time.time()
        for info in await self.bus.directory.registries():
            if info.id != self.registry_id and now - info.seen > REGISTRY_GONE_AFTER:
                await self.bus.redis.delete(self.bus.keys.acks(info.id))
                await self.bus.redis.hdel(self.bus.keys.ack_positions, info.id)
                await self.bus.directory.forget_registry(info.id)

    async def _beat(self) -> bool:
        """Write the heartbeat (and hold the id); True when the record was not there."""
        info = RegistryInfo(
            id=self.registry_id,
            host=socket.gethostname(),
            pid=os.getpid(),
            started=self._started,
            seen=time.time(),
            apps=tuple(sorted(self.apps)),
            required=tuple(sorted(name for name, p in self.policies.items() if p.required)),
            signed=self.bus.keyring is not None,
            schemas={app: schema for app, schema in self.schemas.items() if app in self.apps},
        )
        new = await self.bus.directory.beat_registry(info)
        other = await self.bus.directory.claim_registry(self.registry_id, self._holder)
        if other is not None:
            log.error(
                "registry id %s is now held by %s as well: give one of them another id",
                self.registry_id,
                other,
            )
        await self.acks.save_position()
        return new

    @property
    def late_acks(self) -> int:
        """Acks of events nobody waits for any more (past their deadline, or published
        before this registry restarted: those are kept in ``unclaimed_acks``)."""
        return self.acks.late

    @property
    def unclaimed_acks(self) -> deque[Ack]:
        return self.acks.unclaimed

    def stats(self) -> dict[str, Any]:
        return {"registry": self.registry_id, "waiting": len(self._waits), "seq": self._seq}
