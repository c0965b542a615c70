"""How big the dead-letter stream ``ro:{ns}:dlq`` may grow, and how dead letters are
written within those bounds.

Every writer caps the stream as it adds to it (an exact MAXLEN, and MINID for the age,
in the same MULTI/EXEC), and a registry trims it now and then for the age alone, so
the bounds hold with or without a registry. An entry that was no envelope at all is
kept as a prefix with its size and digest, once for all plugins.
"""

from __future__ import annotations

import hashlib
import time
from typing import Annotated

import msgspec
from msgspec.structs import replace

from ._constants import DLQ_MAX_AGE, DLQ_MAX_LEN, DLQ_PAYLOAD_PREFIX, RECORD_FIELD
from ._contract import DeadLetter, encode
from ._history import time_to_id
from ._keys import Keys
from ._redis import Redis
from ._redis_batch import Batch


class DeadLetterBounds(msgspec.Struct, frozen=True, kw_only=True):
    """``[bus] dlq_max_len``, ``dlq_max_age`` and ``dlq_payload_prefix``."""

    max_len: Annotated[int, msgspec.Meta(ge=1)] = DLQ_MAX_LEN
    """Dead letters kept at most; the oldest go first."""
    max_age: Annotated[float, msgspec.Meta(gt=0)] = DLQ_MAX_AGE
    """Seconds a dead letter is kept."""
    payload_prefix: Annotated[int, msgspec.Meta(ge=0)] = DLQ_PAYLOAD_PREFIX
    """Bytes kept of an entry that was no envelope at all."""


def is_garbage(letter: DeadLetter) -> bool:
    """A dead letter of an entry that was no envelope at all (and not a deleted one)."""
    return letter.event_id is None and bool(letter.data or letter.data_size)


def cut_down(letter: DeadLetter, bounds: DeadLetterBounds) -> DeadLetter:
    """An undecodable entry's letter with only the first ``payload_prefix`` bytes of its
    data, and the size and SHA-256 of all of it; any other letter as it is."""
    if not is_garbage(letter) or letter.data_size is not None:
        return letter
    data = letter.data
    return replace(
        letter,
        data=data[: bounds.payload_prefix],
        data_size=len(data),
        data_sha256=hashlib.sha256(data).hexdigest(),
    )


def add_dead_letter(batch: Batch, keys: Keys, letter: DeadLetter, bounds: DeadLetterBounds) -> None:
    """Queue ``letter`` into ``batch``, with the trims that keep the stream in bounds."""
    batch.xadd(keys.dlq, {RECORD_FIELD: encode(letter)}, maxlen=bounds.max_len, exact=True)
    batch.xtrim_minid(keys.dlq, time_to_id(time.time() - bounds.max_age))


async def first_to_dead_letter(
    redis: Redis, keys: Keys, bounds: DeadLetterBounds, entry_id: str, plugin: str
) -> bool:
    """Whether ``plugin`` writes the one dead letter of undecodable entry ``entry_id``:
    the first plugin to ask does (and so does it again, should its write be retried);
    every other plugin's copy of the same garbage is left out."""
    key, me = keys.dlq_seen(entry_id), plugin.encode()
    if await redis.set(key, me, ttl_ms=int(bounds.max_age * 1000), only_if_absent=True):
        return True
    return await redis.get(key) in (None, me)


async def trim_dead_letters(
    redis: Redis, keys: Keys, bounds: DeadLetterBounds, *, now: float | None = None
) -> int:
    """Apply ``bounds``' age and count to the dead-letter stream; returns how many
    letters went."""
    cut = time_to_id((time.time() if now is None else now) - bounds.max_age)
    removed = await redis.xtrim(keys.dlq, minid=cut)
    return removed + await redis.xtrim(keys.dlq, maxlen=bounds.max_len)
