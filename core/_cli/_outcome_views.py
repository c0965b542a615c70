"""How ``replay`` shows outcomes: a table of events with each plugin's outcome, and the
lines of ``--follow``."""

from __future__ import annotations

import time
from collections.abc import Collection, Sequence

import msgspec
from rich import box
from rich.markup import escape
from rich.table import Table

from rapid_objection.bus import Custom, Envelope, HistoryEntry, OutcomeRecord

from .._replay import Answered, details


def when(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds))


def _error(record: OutcomeRecord) -> str:
    """The error of an outcome on one line (the traceback is in --format jsonl)."""
    if record.error is None:
        return ""
    text = f"{record.error_type}: {record.error}" if record.error_type else record.error
    return text.splitlines()[0] if text else ""


def _duration(record: OutcomeRecord) -> str:
    return "" if record.duration is None else f"{record.duration * 1000:.1f} ms"


def _no_outcome(envelope: Envelope, hooked: Collection[str] | None) -> str:
    # Plugins acknowledge events they have no hook for as skipped, which is recorded
    # nowhere: "yet" would never end for those.
    unhooked = (
        hooked is not None
        and envelope.target is None
        and not isinstance(envelope.payload, Custom)
        and envelope.type not in hooked
    )
    return "none: no plugin has this hook" if unhooked else "no outcome yet"


def outcome_table(
    title: str, rows: Sequence[Answered], hooked: Collection[str] | None = None
) -> Table:
    """One line per outcome under its event; an event without any says so, and why
    when no plugin known on the bus has a hook for its type (``hooked``: the event
    types some plugin's manifest lists; None: not known)."""
    table = Table(title=title, box=box.SIMPLE)
    for column in ("time", "event", "type"):
        table.add_column(column, no_wrap=True)
    table.add_column("app", overflow="fold")
    for column in ("plugin", "consumer", "status", "attempt", "duration"):
        table.add_column(column, overflow="fold")
    table.add_column("error", ratio=1, min_width=16, overflow="fold")
    for found in rows:
        envelope = found.entry.envelope
        event = (when(envelope.time), envelope.id, envelope.type, envelope.app or "-")
        if not found.outcomes:
            table.add_row(*event, "-", "-", _no_outcome(envelope, hooked), "", "", "")
        for n, record in enumerate(found.outcomes):
            table.add_row(
                *(event if n == 0 else ("", "", "", "")),
                record.plugin,
                record.consumer or "-",
                record.status,
                str(record.attempt) if record.attempt else "-",
                _duration(record),
                escape(_error(record)),
            )
    return table


def follow_line(item: HistoryEntry | OutcomeRecord) -> str:
    """One line of ``replay --follow``: an event, or an outcome indented under it."""
    if isinstance(item, OutcomeRecord):
        parts = [
            f"  {item.status:<14}",
            item.plugin,
            f"consumer={item.consumer or '-'}",
            f"attempt={item.attempt or '-'}",
        ]
        if item.duration is not None:
            parts.append(_duration(item))
        parts.append(f"event={item.event_id}")
        if error := _error(item):
            parts.append(f"error={error}")
        return " ".join(parts)
    envelope = item.envelope
    said = details(envelope)
    app = envelope.app or "-"
    line = f"{when(envelope.time)} {envelope.id} {envelope.type} app={app}"
    return f"{line} registry={envelope.registry}" + (f" {said}" if said else "")


def follow_jsonl(item: HistoryEntry | OutcomeRecord) -> str:
    """One JSON line of ``replay --follow --format jsonl``: ``"kind"`` says which."""
    if isinstance(item, OutcomeRecord):
        row = {"kind": "outcome", **msgspec.to_builtins(item)}
    else:
        row = {"kind": "event", "entry_id": item.entry_id, **msgspec.to_builtins(item.envelope)}
    return msgspec.json.encode(row).decode()
