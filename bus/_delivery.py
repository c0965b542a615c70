"""What a consumer hands to a handler, and what it keeps of each finished entry."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from ._contract import Ack, DeadLetter, Envelope
from ._heads import EnvelopeHead
from ._retry import Deferred


@dataclass(frozen=True, slots=True)
class Delivery:
    """One event handed to a handler: the stream entry, its envelope and the attempt."""

    entry_id: str
    envelope: Envelope
    attempt: int = 1
    data: bytes = b""
    """The encoded envelope as read, kept for the dead-letter record."""
    signature: bytes = b""
    """Its signatures as read (with a keyring), kept with it: a re-drive checks them."""


Handler = Callable[[Delivery], Awaitable[Ack | Deferred]]

Prepare = Callable[[list[Delivery]], Awaitable[None]]
"""Called with the deliveries of a read batch, in stream order, just before their
handler calls are queued (a plugin's ``prepare_batch``: their I/O done at once)."""


@dataclass(frozen=True, slots=True)
class Done:
    """A finished entry: what to write for it, and whether to XACK it."""

    entry_id: str
    envelope: Envelope | EnvelopeHead | None
    """``EnvelopeHead`` when only the head could be decoded."""
    ack: Ack | None = None
    dead_letter: DeadLetter | None = None
    keep: bool = False
    """Leave the entry pending (a stopping worker hands it to a live consumer)."""
    tries: tuple[Ack, ...] = ()
    """The failed attempts that this worker retried before (kept as outcomes)."""


class Sink(Protocol):
    """Where finished entries go: the flush task's stream, or the inline reader's list."""

    def send_nowait(self, item: Done) -> None: ...


class ListSink:
    """Finished entries collected in a plain list (the inline reader flushes them)."""

    __slots__ = ("items",)

    def __init__(self) -> None:
        self.items: list[Done] = []

    def send_nowait(self, item: Done) -> None:
        self.items.append(item)
