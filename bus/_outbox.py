"""The event stream's outbox: concurrent publishes share pipelined round trips, and each
caller gets its own answer.

When a round trip fails (a lost connection, a lost reply, one refused XADD), some of
its entries may have reached the stream and others not. The outbox then reads the tail
of the stream for the envelope ids it sent: the ones found are published (their callers
get their entry ids), the others are sent once more under the same envelope id. Only
what still cannot be sent fails, and only its own caller.
"""

from __future__ import annotations

import anyio

from ._constants import EVENT_FIELD
from ._errors import BusUnavailable
from ._heads import decode_head
from ._redis import Redis

RECOVERY_SCAN = 1_000
"""Stream entries, newest first, searched for the envelopes of a failed round trip."""

RECOVERY_ATTEMPTS = 3
"""Rounds of "find what landed, resend the rest" before the remaining callers fail."""

RECOVERY_PAUSE = 0.05
"""Seconds before the first recovery round (doubled for each further one)."""


class _Slot:
    __slots__ = ("done", "entry_id", "error", "event_id", "fields")

    def __init__(self, event_id: str, fields: dict[bytes, bytes]) -> None:
        self.event_id = event_id
        self.fields = fields
        self.done = anyio.Event()
        self.entry_id = ""
        self.error: BaseException | None = None

    def answer(self, entry_id: str = "", error: BaseException | None = None) -> None:
        self.entry_id, self.error = entry_id, error
        self.done.set()


class Outbox:
    """Coalesces concurrent publishes into pipelined round trips."""

    def __init__(self, redis: Redis, key: str) -> None:
        self._redis = redis
        self._key = key
        self._queue: list[_Slot] = []
        self._sending = False

    async def publish(self, event_id: str, fields: dict[bytes, bytes]) -> str:
        """Append ``fields`` (the encoded envelope ``event_id``, and its signatures);
        returns its entry id."""
        return (await self.publish_many([(event_id, fields)]))[0]

    async def publish_many(self, events: list[tuple[str, dict[bytes, bytes]]]) -> list[str]:
        """``publish`` of several events, in order, in the same round trip; their entry
        ids. Raises the first error when any of them could not be sent."""
        slots = [_Slot(event_id, fields) for event_id, fields in events]
        self._queue.extend(slots)
        if self._sending:
            for slot in slots:
                await slot.done.wait()
        else:
            self._sending = True
            try:
                # Shielded: the events of other callers ride on this round trip. No yield
                # before the first send (that would cost a lone caller latency): callers
                # that arrive while it is in flight go together in the next one.
                with anyio.CancelScope(shield=True):
                    while self._queue:
                        await self._send()
            finally:
                self._sending = False
        for slot in slots:
            if slot.error is not None:
                raise slot.error
        return [slot.entry_id for slot in slots]

    async def _send(self) -> None:
        slots, self._queue = self._queue, []
        try:
            ids = await self._write(slots)
        except Exception as exc:
            await self._recover(slots, exc)
            return
        for slot, entry_id in zip(slots, ids, strict=True):
            slot.answer(entry_id)

    async def _write(self, slots: list[_Slot]) -> list[str]:
        if len(slots) == 1:
            return [await self._redis.xadd(self._key, slots[0].fields)]
        return await self._redis.xadd_many(self._key, [s.fields for s in slots])

    async def _recover(self, slots: list[_Slot], error: Exception) -> None:
        """Answer each slot of a failed round trip: found in the stream, resent, or failed."""
        delay = RECOVERY_PAUSE
        for _ in range(RECOVERY_ATTEMPTS):
            await anyio.sleep(delay)
            delay *= 2
            try:
                landed = await self._landed({slot.event_id for slot in slots})
            except BusUnavailable as exc:
                error = exc
                continue
            missing = []
            for slot in slots:
                if slot.event_id in landed:
                    slot.answer(landed[slot.event_id])
                else:
                    missing.append(slot)
            slots = missing
            if not slots:
                return
            try:
                ids = await self._write(slots)
            except Exception as exc:
                error = exc
                continue
            for slot, entry_id in zip(slots, ids, strict=True):
                slot.answer(entry_id)
            return
        for slot in slots:
            slot.answer(error=error)

    async def _landed(self, event_ids: set[str]) -> dict[str, str]:
        """Envelope id -> entry id, for those of ``event_ids`` in the stream's tail."""
        found: dict[str, str] = {}
        for entry_id, fields in await self._redis.xrevrange(self._key, "+", "-", RECOVERY_SCAN):
            head = decode_head(fields.get(EVENT_FIELD, b""))
            if head is not None and head.id in event_ids:
                found[head.id] = entry_id
        return found
