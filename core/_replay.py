"""Replay: the event history selected by time, app and type, and re-delivered to one plugin.

The stream is the audit history (docs/operations.md). ``select`` reads it back; ``redeliver``
publishes, for each selected event, a copy meant for one plugin only: a new id and time,
``replay=True``, ``target=<plugin>`` and ``replaces=<original id>``. Every other plugin's
workers acknowledge such a copy without calling anything. Nothing is published unless
``execute=True``: the default is a dry run that says what would be re-delivered.

A copy keeps the rest of the original envelope, the publishing registry and its sequence
number included (as a dead-letter re-drive does): it is still that registry's event. Its
ack goes to that registry's ack stream, where a live registry counts it as late and a
gone registry's stream expires on its own.

Copies already in the history (earlier replays and dead-letter re-drives, which carry
``replaces``) are listed like any event but never re-delivered again: the event they copy
is re-delivered instead when it is in the selection, so a second replay of the same
window does not double every event.
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator, Collection, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import msgspec
from msgspec.structs import replace

from rapid_objection.bus import (
    AutoOperationsCompleted,
    Bus,
    ConnectionCreated,
    ConnectionShutdown,
    Custom,
    Envelope,
    GroupMissing,
    HealthCheck,
    HistoryEntry,
    OperationFailed,
    OutcomeRecord,
    new_event_id,
)
from rapid_objection.bus._directory import is_alive
from rapid_objection.bus._outcomes import matches
from rapid_objection.bus._tracing import copy_span, traceparent

from ._errors import ReplayError

_RELATIVE = re.compile(r"-?(?P<amount>\d+(?:\.\d+)?)(?P<unit>[smhdw])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}
PAGE_SIZE = 500
"""Events read per XRANGE while selecting."""


def parse_time(text: str, *, now: float | None = None) -> float:
    """A Unix time from ISO 8601 (``2024-05-01T12:00:00Z``; without an offset it is local
    time) or from a time relative to now (``-15m``, ``-2h``, ``-1d``, ``-30s``, ``-1w``;
    the minus sign is optional, and ``now`` is accepted)."""
    value = text.strip()
    current = time.time() if now is None else now
    if value == "now":
        return current
    relative = _RELATIVE.fullmatch(value)
    if relative is not None:
        return current - float(relative["amount"]) * _UNIT_SECONDS[relative["unit"]]
    try:
        return datetime.fromisoformat(value).timestamp()
    except ValueError:
        raise ReplayError(
            f"{text!r} is neither an ISO 8601 time (2024-05-01T12:00:00Z) nor a relative "
            "one (-15m, -2h, -1d)"
        ) from None


@dataclass(frozen=True, slots=True)
class Selection:
    """Which events of the history: a time window, an app, event types, a count; and,
    by their outcomes, a plugin, a consumer, statuses."""

    since: float | None = None
    until: float | None = None
    app: str | None = None
    types: Collection[str] = ()
    limit: int | None = None
    """At most this many events; None: all of them."""
    plugin: str | None = None
    """Only events with an outcome of this plugin (and only those outcomes)."""
    consumer: str | None = None
    """Only events with an outcome of this consumer (and only those outcomes)."""
    statuses: Collection[str] = ()
    """Only events with an outcome of one of these statuses (and only those outcomes)."""
    newest_first: bool = False
    """The newest events first (``--last N``: with ``limit``, the newest N)."""

    @property
    def by_outcome(self) -> bool:
        """Whether the selection looks at the events' outcomes."""
        return self.plugin is not None or self.consumer is not None or bool(self.statuses)

    def outcomes_of(self, records: Sequence[OutcomeRecord]) -> list[OutcomeRecord]:
        """The records of ``records`` that the outcome filters keep."""
        return [
            record
            for record in records
            if matches(record, plugin=self.plugin, consumer=self.consumer, statuses=self.statuses)
        ]


@dataclass(frozen=True, slots=True)
class Answered:
    """A selected event and its outcomes (those the selection keeps), oldest first."""

    entry: HistoryEntry
    outcomes: list[OutcomeRecord]


async def answered(
    bus: Bus, selection: Selection, *, outcomes: bool = True
) -> AsyncIterator[Answered]:
    """The selected events of ``bus``'s stream with their outcomes, read page by page
    (one outcome lookup per page); without ``outcomes`` and outcome filters, none are
    looked up."""
    if selection.limit is not None and selection.limit <= 0:
        return
    lookup = outcomes or selection.by_outcome
    remaining = selection.limit
    cursor: str | None = None
    while True:
        # With outcome filters a page may keep few of its events: read full pages.
        size = PAGE_SIZE if remaining is None or selection.by_outcome else min(PAGE_SIZE, remaining)
        page = await bus.history.page(
            after=cursor,
            since=selection.since,
            until=selection.until,
            app=selection.app,
            types=selection.types,
            size=size,
            newest_first=selection.newest_first,
        )
        found = (
            await bus.outcomes.for_events(entry.entry_id for entry in page.entries)
            if lookup and page.entries
            else {}
        )
        for entry in page.entries:
            kept = selection.outcomes_of(found.get(entry.entry_id, []))
            if selection.by_outcome and not kept:
                continue
            yield Answered(entry, kept)
            if remaining is not None:
                remaining -= 1
                if remaining == 0:
                    return
        if page.cursor is None:
            return
        cursor = page.cursor


async def select(bus: Bus, selection: Selection) -> AsyncIterator[HistoryEntry]:
    """The selected events of ``bus``'s stream, oldest first (or newest first)."""
    async for found in answered(bus, selection, outcomes=False):
        yield found.entry


def is_copy(envelope: Envelope) -> bool:
    """Whether the event is itself a copy (a replay or a dead-letter re-drive)."""
    return envelope.replaces is not None


def copy_for(
    envelope: Envelope, plugin: str, *, now: float | None = None, trace: str | None = None
) -> Envelope:
    """The copy of ``envelope`` that only ``plugin`` handles: a new id and time,
    ``replay``, ``target`` and ``replaces`` set, no registry waiting for it; ``trace``
    (the replay's own span) instead of the original's trace, when given."""
    moment = time.time() if now is None else now
    return replace(
        envelope,
        id=new_event_id(moment),
        time=moment,
        replay=True,
        target=plugin,
        replaces=envelope.original_id,
        required=(),
        deadline=0.0,
        trace=trace or envelope.trace,
    )


@dataclass(frozen=True, slots=True)
class Redelivery:
    """One selected event and its copy for the plugin."""

    original: HistoryEntry
    copy: Envelope
    entry_id: str | None = None
    """The copy's stream entry id once published; None in a dry run."""


@dataclass(frozen=True, slots=True)
class Replay:
    """What ``redeliver`` did (or, in a dry run, would do)."""

    plugin: str
    executed: bool
    redeliveries: list[Redelivery] = field(default_factory=list)
    skipped: list[HistoryEntry] = field(default_factory=list)
    """Selected events that are copies themselves, not re-delivered again."""
    live_workers: int = 0
    """Workers of the plugin alive now; with none, the copies wait in its group."""


async def check_plugin(bus: Bus, plugin: str) -> int:
    """The number of live workers of ``plugin``; raises ``ReplayError`` when nothing on the
    bus would ever receive its events (no manifest, no consumer group)."""
    manifests = await bus.directory.manifests()
    try:
        groups = {group.name for group in await bus.redis.xinfo_groups(bus.keys.events)}
    except GroupMissing:
        groups = set()
    if plugin not in manifests and plugin not in groups:
        known = sorted(set(manifests) | groups)
        listed = ", ".join(known) if known else "none"
        raise ReplayError(
            f"plugin {plugin!r} is unknown in namespace {bus.namespace!r} (no worker ever "
            f"announced it and it has no consumer group); known plugins: {listed}",
            plugin=plugin,
        )
    return sum(1 for worker in await bus.directory.workers(plugin) if is_alive(worker.seen))


async def redeliver(
    bus: Bus, plugin: str, selection: Selection, *, execute: bool = False
) -> Replay:
    """Re-deliver the selected events to ``plugin`` alone; a dry run unless ``execute``.

    The selection is read completely before anything is published, so the copies (which
    land at the end of the same stream) are never selected themselves.
    """
    live = await check_plugin(bus, plugin)
    chosen: list[HistoryEntry] = []
    skipped: list[HistoryEntry] = []
    async for entry in select(bus, selection):
        (skipped if is_copy(entry.envelope) else chosen).append(entry)
    redeliveries: list[Redelivery] = []
    for entry in chosen:
        if not execute:
            redeliveries.append(Redelivery(entry, copy_for(entry.envelope, plugin)))
            continue
        # Each copy is a trace of its own, linked to the original's (OpenTelemetry).
        with copy_span("replay", entry.envelope, plugin):
            copy = copy_for(entry.envelope, plugin, trace=traceparent())
            redeliveries.append(Redelivery(entry, copy, await bus.publish(copy)))
    return Replay(plugin, execute, redeliveries, skipped, live)


def summary(envelope: Envelope) -> str:  # noqa: PLR0911 - one line per payload kind
    """A short human description of an event's payload, for tables."""
    payload = envelope.payload
    if isinstance(payload, OperationFailed):
        return f"{payload.operation}: {payload.error_type}: {payload.error_message}"
    if isinstance(payload, Custom):
        return f"{payload.name} from {payload.source}" if payload.source else payload.name
    if isinstance(payload, ConnectionCreated):
        reused = " (reused)" if payload.reused else ""
        return f"{payload.connection.url or payload.connection.dialect}{reused}"
    if isinstance(payload, ConnectionShutdown):
        why = "registry shutdown" if payload.registry_shutdown else "last reference"
        return f"{payload.connection.url or payload.connection.dialect} ({why})"
    if isinstance(payload, AutoOperationsCompleted):
        done = ", ".join(
            f"{op.operation} {'ok' if op.success else 'FAILED'}" for op in payload.operations
        )
        return done or ("ok" if payload.success else "FAILED")
    if isinstance(payload, HealthCheck):
        status = str(payload.health.get("status", ""))
        error = payload.health.get("error")
        return f"{status}: {error}" if error else status
    return ""


def provenance(envelope: Envelope) -> str:
    """``replay of <id> for <plugin>`` and the like; empty for an original event."""
    parts: list[str] = []
    if envelope.replay:
        parts.append("replay")
    elif envelope.replaces is not None:
        parts.append("re-drive")
    if envelope.replaces is not None:
        parts.append(f"of {envelope.replaces}")
    if envelope.target is not None:
        parts.append(f"for {envelope.target}")
    return " ".join(parts)


def details(envelope: Envelope) -> str:
    """Where an event comes from and what it says, on one line (``replay``'s tables and
    ``--follow``): its provenance, then its summary."""
    return " ".join(filter(None, (provenance(envelope), summary(envelope))))


def as_row(entry: HistoryEntry) -> dict[str, Any]:
    """One event for JSON readers (the dashboard): its stream entry id, its envelope as
    ``replay --format jsonl`` prints it, and the two short texts of the ``replay`` table."""
    envelope = entry.envelope
    return {
        "entry_id": entry.entry_id,
        **msgspec.to_builtins(envelope),
        "provenance": provenance(envelope),
        "summary": summary(envelope),
    }


def describe(entries: Sequence[HistoryEntry]) -> str:
    """``3 events (2 apps, 2 types)``."""
    apps = {entry.envelope.app for entry in entries if entry.envelope.app}
    types = {entry.envelope.type for entry in entries}
    noun = "event" if len(entries) == 1 else "events"
    return f"{len(entries)} {noun} ({len(apps)} apps, {len(types)} types)"
