"""The record of retention trims, with a keyring: what retention removed is not a gap.

Before a registry trims the event stream, it notes, per publisher chain, the highest
sequence number among the entries about to go, in ``ro:{ns}:trims`` (signed with the
registries' key). An audit then knows that the events of a chain up to that number
were removed by retention, and reports only what is missing beyond it.
"""

from __future__ import annotations

import time
from typing import Final

import msgspec

from ._bus import Bus
from ._constants import EVENT_FIELD, RECORD_FIELD, SIGNATURE_FIELD
from ._heads import decode_head
from ._ids import id_key
from ._keyring import Keyring
from ._signatures import decode_signatures, encode_signatures, tag, tag_matches

SCAN_PAGE: Final = 1_000
"""Entries read per XRANGE while noting what a trim removes."""

TRIMS_MAXLEN: Final = 100_000
"""Approximate cap of the trim record stream (one record per trim that removed anything)."""


class Trim(msgspec.Struct, frozen=True, kw_only=True):
    """One retention trim: entries before ``minid`` went; per chain the last seq that went."""

    minid: str
    time: float
    chains: dict[str, int] = {}


_trim_decoder: Final = msgspec.msgpack.Decoder(Trim)
_encoder: Final = msgspec.msgpack.Encoder()


async def note_trim(bus: Bus, keyring: Keyring, minid: str) -> None:
    """Record what trimming the event stream before ``minid`` removes, chain by chain."""
    chains: dict[str, int] = {}
    start = "-"
    limit = id_key(minid)
    while True:
        page = await bus.redis.xrange(bus.keys.events, start, "+", SCAN_PAGE)
        for entry_id, fields in page:
            if id_key(entry_id) >= limit:
                page = []
                break
            start = f"({entry_id}"
            head = decode_head(fields.get(EVENT_FIELD, b""))
            if head is not None and head.link is not None and head.replaces is None:
                chain = head.link.chain
                chains[chain] = max(chains.get(chain, 0), head.seq)
        if len(page) < SCAN_PAGE:
            break
    data = _encoder.encode(Trim(minid=minid, time=time.time(), chains=chains))
    registry = keyring.keys.registry
    fields = {RECORD_FIELD: data}
    if registry and registry[0].secret:
        fields[SIGNATURE_FIELD] = encode_signatures({registry[0].id: tag(registry[0].secret, data)})
    await bus.redis.xadd(bus.keys.trims, fields, maxlen=TRIMS_MAXLEN)


async def trimmed_chains(bus: Bus, keyring: Keyring) -> tuple[dict[str, int], int]:
    """Per chain the last seq retention removed, from the genuine trim records; and the
    number of records that do not verify (they explain nothing)."""
    secrets = {key.id: key.secret for key in keyring.keys.registry if key.secret}
    chains: dict[str, int] = {}
    refused = 0
    start = "-"
    while True:
        page = await bus.redis.xrange(bus.keys.trims, start, "+", SCAN_PAGE)
        for entry_id, fields in page:
            start = f"({entry_id}"
            data = fields.get(RECORD_FIELD, b"")
            signatures = decode_signatures(fields.get(SIGNATURE_FIELD))
            if not any(
                kid in secrets and tag_matches(secrets[kid], data, claimed)
                for kid, claimed in signatures.items()
            ):
                refused += 1
                continue
            for chain, seq in _trim_decoder.decode(data).chains.items():
                chains[chain] = max(chains.get(chain, 0), seq)
        if len(page) < SCAN_PAGE:
            return chains, refused
