"""The head of an envelope: what a worker can read of an event it cannot decode in full.

An envelope of a newer schema version (or of an event type this worker does not know)
still names its id, registry and required plugins; with them the worker answers the
registry at once with an error ack instead of leaving it to wait for its deadline.
"""

from __future__ import annotations

from typing import Final

import msgspec

from ._contract import Link


class EnvelopeHead(msgspec.Struct, frozen=True, kw_only=True):
    """The fields of ``Envelope`` that every schema version keeps; the payload is skipped."""

    id: str
    type: str
    version: int
    registry: str
    app: str = ""
    time: float = 0.0
    required: tuple[str, ...] = ()
    target: str | None = None
    replay: bool = False
    seq: int = 0
    link: Link | None = None
    replaces: str | None = None


_head_decoder: Final = msgspec.msgpack.Decoder(EnvelopeHead)


def decode_head(data: bytes) -> EnvelopeHead | None:
    """The head of an encoded envelope; None when not even that can be read."""
    try:
        return _head_decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
