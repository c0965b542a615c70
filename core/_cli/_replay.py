"""``rapid-objection replay``: the event history by time, app and type; ``--to-plugin NAME``
re-delivers it to that plugin alone (a dry run unless ``--execute``)."""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections.abc import Sequence
from typing import Any

import anyio
import msgspec
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from rapid_objection.bus import EVENT_TYPES, Bus, Envelope, HistoryEntry
from rapid_objection.bus._constants import DEFAULT_NAMESPACE

from .._errors import ReplayError
from .._replay import Selection, parse_time, provenance, redeliver, select, summary
from ._args import DEFAULT_SERVER_URL, Parser, UsageError, add_bus_options, bus_url
from ._namespace import namespace_bus

# argparse takes "-15m" for an unknown option rather than the value of --since; values
# that look like relative times are read as values, as negative numbers are.
_VALUE_WITH_A_DASH = re.compile(r"^-\d+(\.\d+)?[smhdw]?$|^-\d*\.\d+$")


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def add_parser(commands: Any) -> None:
    parser: Parser = commands.add_parser(
        "replay",
        help="show the event history; re-deliver it to one plugin (--to-plugin)",
        description=__doc__,
    )
    parser._negative_number_matcher = _VALUE_WITH_A_DASH
    add_bus_options(parser, DEFAULT_SERVER_URL)
    parser.add_argument(
        "--since", help="from this time: ISO 8601 (2024-05-01T12:00:00Z) or relative (-15m)"
    )
    parser.add_argument("--until", help="up to this time (ISO 8601 or relative, like --since)")
    parser.add_argument("--app", help="only events of this app")
    parser.add_argument(
        "--type",
        dest="types",
        action="extend",
        nargs="+",
        default=[],
        choices=EVENT_TYPES,
        metavar="TYPE",
        help="only events of these types (repeatable): " + ", ".join(EVENT_TYPES),
    )
    parser.add_argument("--format", choices=("table", "jsonl"), default="table")
    parser.add_argument("--limit", type=_positive, help="at most this many events, oldest first")
    parser.add_argument(
        "--to-plugin", metavar="NAME", help="re-deliver the selected events to this plugin only"
    )
    parser.add_argument(
        "--execute", action="store_true", help="with --to-plugin: publish (default: a dry run)"
    )
    parser.set_defaults(run=run)


def _selection(args: argparse.Namespace) -> Selection:
    now = time.time()
    bounds: dict[str, float | None] = {}
    for flag in ("since", "until"):
        text = getattr(args, flag)
        try:
            bounds[flag] = None if text is None else parse_time(text, now=now)
        except ReplayError as exc:
            raise UsageError(f"--{flag}: {exc}") from None
    since, until = bounds["since"], bounds["until"]
    if since is not None and until is not None and since > until:
        raise UsageError(f"--since ({args.since}) is after --until ({args.until})")
    return Selection(since, until, args.app, tuple(args.types), args.limit)


def run(args: argparse.Namespace) -> int:
    if args.execute and not args.to_plugin:
        raise UsageError("--execute re-delivers events and needs --to-plugin NAME")
    selection = _selection(args)
    try:
        if args.to_plugin:
            return anyio.run(_redeliver, args, selection)
        return anyio.run(_list, args, selection)
    except ReplayError as exc:
        raise UsageError(str(exc)) from None


def _console() -> Console:
    # Off a terminal, size tables to their content: ids are never cut short.
    return Console(width=None if sys.stdout.isatty() else 10_000, highlight=False)


def _jsonl(entry_id: str | None, envelope: Envelope) -> str:
    row = {"entry_id": entry_id, **msgspec.to_builtins(envelope)}
    return msgspec.json.encode(row).decode()


def _when(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds))


def _table(title: str, entries: Sequence[HistoryEntry]) -> Table:
    # No vertical rules, ids and times whole: on a narrow terminal the names fold, and
    # the details most.
    table = Table(title=title, box=box.SIMPLE)
    for column in ("time", "event", "type"):
        table.add_column(column, no_wrap=True)
    for column in ("app", "registry"):  # the sequence numbers are in --format jsonl
        table.add_column(column, overflow="fold")
    table.add_column("details", ratio=1, min_width=16, overflow="fold")
    for entry in entries:
        envelope = entry.envelope
        details = " ".join(filter(None, (provenance(envelope), summary(envelope))))
        table.add_row(
            _when(envelope.time),
            envelope.id,
            envelope.type,
            envelope.app or "-",
            envelope.registry,
            escape(details),
        )
    return table


async def _list(args: argparse.Namespace, selection: Selection) -> int:
    async with namespace_bus(args) as bus:
        if args.format == "jsonl":
            async for entry in select(bus, selection):
                print(_jsonl(entry.entry_id, entry.envelope))
            return 0
        entries = [entry async for entry in select(bus, selection)]
    noun = "event" if len(entries) == 1 else "events"
    title = f"History of namespace {bus.namespace} ({len(entries)} {noun})"
    _console().print(_table(title, entries))
    return 0


async def _redeliver(args: argparse.Namespace, selection: Selection) -> int:
    async with Bus.connect(bus_url(args), args.namespace or DEFAULT_NAMESPACE) as bus:
        replay = await redeliver(bus, args.to_plugin, selection, execute=args.execute)
    plugin = replay.plugin
    count = len(replay.redeliveries)
    noun = "event" if count == 1 else "events"
    skipped = f"; {len(replay.skipped)} copies of earlier events skipped" if replay.skipped else ""
    console = _console()

    def say(line: str) -> None:
        # With JSON lines on stdout, the sentences go to stderr.
        if args.format == "table":
            console.print(escape(line))
        else:
            print(line, file=sys.stderr)

    if args.format == "jsonl":
        for done in replay.redeliveries:
            if replay.executed:
                print(_jsonl(done.entry_id, done.copy))
            else:
                print(_jsonl(done.original.entry_id, done.original.envelope))
    elif replay.executed:
        table = Table(title=f"Re-delivered to plugin {plugin} ({count} {noun})")
        for column in ("original event", "copy", "stream entry", "type", "app"):
            table.add_column(column, no_wrap=True)
        for done in replay.redeliveries:
            envelope = done.original.envelope
            table.add_row(envelope.id, done.copy.id, done.entry_id, envelope.type, envelope.app)
        console.print(table)
    else:
        originals = [done.original for done in replay.redeliveries]
        console.print(_table(f"Would re-deliver to plugin {plugin} ({count} {noun})", originals))
    if replay.executed:
        say(f"re-delivered {count} {noun} to plugin {plugin!r}{skipped}")
    else:
        say(
            f"dry run: would re-deliver {count} {noun} to plugin {plugin!r}{skipped}; "
            "add --execute to publish them"
        )
    if replay.live_workers == 0 and count:
        say(
            f"note: plugin {plugin!r} has no live worker now; the events wait in its "
            "group until one starts"
        )
    return 0
