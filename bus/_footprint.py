"""The memory a namespace takes in Redis, per family of keys (``status``).

Every key of the namespace is found with SCAN and weighed with MEMORY USAGE; a family
of more than ``MEMORY_SAMPLE`` keys (``run_once`` markers, mostly) is weighed from a
sample of that many and scaled up, and says so. The embedded bus (fakeredis) has no
MEMORY command: its figures are not available, and the report says why.
"""

from __future__ import annotations

from typing import Final

import msgspec

from ._bus import Bus
from ._errors import BusRefused

MEMORY_SAMPLE: Final = 1_000
"""Keys of one family weighed at most; past that the family's bytes are scaled up."""

FAMILIES: Final = (
    ("events", "the event stream"),
    ("outcomes", "the outcome history (each plugin's answer to each event)"),
    ("acks", "the registries' ack streams"),
    ("dlq", "the dead-letter stream"),
    ("failures", "failure records and counters"),
    ("directory", "manifests, heartbeats, apps, ack positions, orphans, leases"),
    ("once", "run_once markers"),
    ("other", "any other key under the namespace's prefix"),
)
"""Family name and what it holds, in the order ``status`` shows them."""

_EXACT: Final = {"events": "events", "outcomes": "outcomes", "dlq": "dlq", "failures": "failures"}
_PREFIXES: Final = (
    ("acks:", "acks"),
    ("once:", "once"),
    ("failures:", "failures"),
    ("dlq-seen:", "dlq"),
)
_DIRECTORY: Final = frozenset(
    {"plugins", "workers", "registries", "apps", "ackpos", "load-errors", "orphans"}
)


class KeyFamily(msgspec.Struct, frozen=True, kw_only=True):
    """The keys of one family and the bytes they take (None: not measured)."""

    name: str
    keys: int
    bytes: int | None = None
    estimated: bool = False
    """True when weighed from a sample of ``MEMORY_SAMPLE`` keys and scaled up."""


class MemoryReport(msgspec.Struct, frozen=True, kw_only=True):
    families: tuple[KeyFamily, ...]
    total_bytes: int | None = None
    unavailable: str | None = None
    """Why the bytes are not measured (the embedded bus, or MEMORY refused)."""


def family_of(suffix: str) -> str:
    """The family of a key, from what follows ``ro:{namespace}:``."""
    if suffix in _EXACT:
        return _EXACT[suffix]
    for prefix, family in _PREFIXES:
        if suffix.startswith(prefix):
            return family
    if suffix in _DIRECTORY or suffix.endswith("lease") or "-lease:" in suffix:
        return "directory"
    return "other"


async def memory_report(bus: Bus) -> MemoryReport:
    """Keys and bytes per family of ``bus``'s namespace."""
    prefix = bus.keys.prefix
    pattern = prefix.replace("{", "\\{").replace("}", "\\}") + "*"
    grouped: dict[str, list[str]] = {name: [] for name, _ in FAMILIES}
    for key in await bus.redis.scan_keys(pattern):
        grouped[family_of(key[len(prefix) :])].append(key)
    counts = {name: len(keys) for name, keys in grouped.items()}
    if bus.redis.embedded:
        return _unmeasured(counts, "not available on the embedded bus (no MEMORY USAGE)")
    families = []
    try:
        for name, keys in grouped.items():
            weighed = await bus.redis.memory_usage(keys[:MEMORY_SAMPLE])
            measured = sum(size or 0 for size in weighed)
            estimated = len(keys) > len(weighed)
            if estimated:
                measured = round(measured * len(keys) / len(weighed))
            families.append(
                KeyFamily(name=name, keys=len(keys), bytes=measured, estimated=estimated)
            )
    except BusRefused as exc:
        return _unmeasured(counts, f"not available: {exc.reason}")
    return MemoryReport(
        families=tuple(families), total_bytes=sum(family.bytes or 0 for family in families)
    )


def _unmeasured(counts: dict[str, int], why: str) -> MemoryReport:
    return MemoryReport(
        families=tuple(KeyFamily(name=name, keys=count) for name, count in counts.items()),
        unavailable=why,
    )
