"""A registry's ack reader: one background task that reads the registry's own ack
stream (``ro:{ns}:acks:<registry>``) and resolves the waits in memory, so waiting costs
no polling and several registries on one bus never see each other's acks."""

from __future__ import annotations

import logging
from collections import deque

import anyio
import anyio.lowlevel
import msgspec
from anyio.abc import TaskStatus

from ._ack_check import AckCheck
from ._bus import Bus
from ._constants import READ_BATCH, READ_BLOCK_MS
from ._contract import Ack, decode_ack_entry
from ._errors import BusUnavailable
from ._ids import id_key
from ._retry import Outage
from ._waits import Outcome, Wait

log = logging.getLogger("rapid_objection.bus")

CATCH_UP_PATIENCE = 1.0
"""Seconds a diagnosis waits for the ack reader to reach the ack stream's end."""

UNCLAIMED_KEPT = 1000
"""Acks nobody waits for that are kept for inspection (tests, a restarted registry)."""


class AckReader:
    """Reads one registry's ack stream and hands each ack to the wait of its event."""

    def __init__(self, bus: Bus, registry_id: str) -> None:
        self.bus = bus
        self.registry_id = registry_id
        self.key = bus.keys.acks(registry_id)
        self.waits: dict[str, Wait] = {}
        """The events awaited now, by event id (registered before they are sent: an ack
        can come back before the publish returns)."""
        self.position = "0-0"
        """The id of the last ack entry read."""
        self.saved = ""
        """``position`` as last written to ``ro:{ns}:ack-positions``."""
        self.late = 0
        """Acks of events nobody waits for any more: past their deadline, or published
        before this registry restarted (those are kept in ``unclaimed``)."""
        self.unclaimed: deque[Ack] = deque(maxlen=UNCLAIMED_KEPT)
        self._advanced = anyio.Event()
        """Set (and replaced) each time a batch has been routed."""
        self._check = AckCheck(bus.keyring, registry_id) if bus.keyring is not None else None

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Resolve waits from the ack stream until cancelled: one reader, no polling."""
        redis = self.bus.redis
        # Continue where this registry id stopped reading (acks that arrived while it
        # was down are still there); a new id starts at the stream's end.
        saved = await redis.hget(self.bus.keys.ack_positions, self.registry_id)
        if saved is not None:
            self.position = saved.decode()
        else:
            self.position = await self._newest() or "0-0"
        self.saved = self.position
        task_status.started()
        outage = Outage()
        while True:
            try:
                entries = await redis.xread(
                    self.key, self.position, count=READ_BATCH, block_ms=READ_BLOCK_MS
                )
                outage.over()
            except BusUnavailable as exc:
                log.warning("ack reader of registry %s: %s", self.registry_id, exc)
                await outage.pause()
                continue
            for entry_id, fields in entries:
                self.position = entry_id
                self._route(fields)
            if entries:
                self._advanced.set()
                self._advanced = anyio.Event()
            if self._check is not None and self._check.forged:
                await self._record_forged()
            if entries:
                # The waiters just resolved run (and publish their next events) before
                # this reader spends a command's worth of CPU on its next blocking read.
                await anyio.lowlevel.checkpoint()

    async def catch_up(self) -> None:
        """Wait (briefly) until every ack written so far has been routed."""
        newest = await self._newest()
        if newest is None:
            return
        target = id_key(newest)
        with anyio.move_on_after(CATCH_UP_PATIENCE):
            while id_key(self.position) < target:
                await self._advanced.wait()

    async def save_position(self) -> None:
        """Write ``position`` where a restart of this registry id reads it, if it moved."""
        if self.position != self.saved:
            await self.bus.redis.hset(
                self.bus.keys.ack_positions, self.registry_id, self.position.encode()
            )
            self.saved = self.position

    async def restore_position(self) -> bool:
        """Read the stream from its start again when it was lost (gone, or newer than
        nothing read here): every ack in it came after the loss. True when it was lost."""
        if self.position == "0-0":
            return False
        newest = await self._newest()
        if newest is not None and id_key(newest) >= id_key(self.position):
            return False
        self.position = "0-0"
        self.saved = ""  # the saved position went too: the next save writes it
        return True

    async def _newest(self) -> str | None:
        """The id of the ack stream's newest entry; None when it is empty or gone."""
        newest = await self.bus.redis.xrevrange(self.key, "+", "-", count=1)
        return newest[0][0] if newest else None

    def _route(self, fields: dict[bytes, bytes]) -> None:
        try:
            acks = decode_ack_entry(fields)
        except (KeyError, msgspec.DecodeError, msgspec.ValidationError):
            log.warning("registry %s skipped an undecodable ack", self.registry_id)
            return
        if self._check is not None and not self._check.genuine(fields, acks):
            return
        for ack in acks:
            wait = self.waits.get(ack.event_id)
            if wait is None:
                self.late += 1
                self.unclaimed.append(ack)
            else:
                wait.add(Outcome.from_ack(ack))

    async def _record_forged(self) -> None:
        assert self._check is not None
        failures = self._check.take()
        try:
            await self.bus.failures.record(failures)
        except BusUnavailable as exc:
            log.warning("registry %s could not record forged acks: %s", self.registry_id, exc)
