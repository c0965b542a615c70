"""Stream entry ids ("<milliseconds>-<sequence>") compared as numbers, never as text.

As text "5-10" sorts before "5-9": any burst of more than ten entries in one
millisecond (a pipelined publish) would come out of order.
"""

from __future__ import annotations

from collections.abc import Iterable


def id_key(entry_id: str) -> tuple[int, int]:
    """The sort key of a stream entry id: (milliseconds, sequence)."""
    millis, _, seq = entry_id.partition("-")
    return int(millis), int(seq or 0)


def sorted_ids(entry_ids: Iterable[str]) -> list[str]:
    """``entry_ids`` in stream order."""
    return sorted(entry_ids, key=id_key)


def next_id(entry_id: str) -> str:
    """The smallest id after ``entry_id``."""
    millis, seq = id_key(entry_id)
    return f"{millis}-{seq + 1}"
