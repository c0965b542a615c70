"""The dead-letter stream ``ro:{ns}:dlq``: list what plugins gave up on, and re-drive it."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

import msgspec
from msgspec.structs import replace

from ._bus import Bus
from ._constants import RECORD_FIELD
from ._contract import DeadLetter, decode_dead_letter, decode_envelope, new_event_id
from ._errors import RedriveError
from ._tracing import copy_span, traceparent

_ENTRY_ID = re.compile(r"\d+(-\d+)?")


@dataclass(frozen=True, slots=True)
class DeadLetterEntry:
    id: str
    """The dead-letter stream's entry id: what ``dlq redrive`` takes."""
    letter: DeadLetter

    def row(self) -> dict[str, Any]:
        """The letter as ``dlq list --json`` (and the dashboard) shows it: the id that
        ``redrive`` takes and every field but the encoded event."""
        row = msgspec.structs.asdict(self.letter) | {"id": self.id}
        row.pop("data")
        return row


@dataclass(frozen=True, slots=True)
class Redriven:
    letter_id: str
    event_id: str
    """The new event's id; its envelope names the one it replaces."""
    entry_id: str
    plugin: str


class DeadLetters:
    """Read and re-drive the dead letters of one namespace."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus

    async def list(self, *, count: int = 100, after: str = "-") -> list[DeadLetterEntry]:
        """Oldest first, up to ``count`` entries after ``after``."""
        if after != "-" and not _ENTRY_ID.fullmatch(after):
            raise RedriveError(after, "not a stream entry id (like 1712345678901-0)")
        start = after if after == "-" else f"({after}"
        entries = await self.bus.redis.xrange(self.bus.keys.dlq, start, "+", count=count)
        return [
            DeadLetterEntry(entry_id, decode_dead_letter(f[RECORD_FIELD]))
            for entry_id, f in entries
        ]

    async def get(self, letter_id: str) -> DeadLetterEntry:
        if not _ENTRY_ID.fullmatch(letter_id):
            raise RedriveError(letter_id, "not a stream entry id (like 1712345678901-0)")
        entries = await self.bus.redis.xrange(self.bus.keys.dlq, letter_id, letter_id, count=1)
        if not entries:
            raise RedriveError(letter_id, f"no such entry in {self.bus.keys.dlq}")
        return DeadLetterEntry(entries[0][0], decode_dead_letter(entries[0][1][RECORD_FIELD]))

    async def redrive(self, letter_id: str) -> Redriven:
        """Publish the dead event again, for its plugin only, as a new event that names
        the one it replaces; the dead letter is then removed."""
        entry = await self.get(letter_id)
        letter = entry.letter
        if self.bus.keyring is not None:
            verdict = self.bus.keyring.audit_event(letter.data, letter.signature)
            if verdict.signer is None:
                # Re-signing it would launder what nobody of ours published.
                raise RedriveError(letter_id, f"it does not verify: {verdict.reason}")
        try:
            original = decode_envelope(letter.data)
        except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as exc:
            raise RedriveError(letter_id, f"it was never a valid envelope ({exc})") from None
        now = time.time()
        with copy_span("redrive", original, letter.plugin):
            envelope = replace(
                original,
                id=new_event_id(now),
                time=now,
                replaces=original.original_id,  # a re-driven copy still names the first
                target=letter.plugin,
                required=(),
                deadline=0.0,
                # Without OpenTelemetry here, the copy keeps the original's trace.
                trace=traceparent() or original.trace,
            )
            entry_id = await self.bus.publish(envelope)
        await self.bus.redis.xdel(self.bus.keys.dlq, letter_id)
        return Redriven(letter_id, envelope.id, entry_id, letter.plugin)
