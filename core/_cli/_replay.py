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

from rapid_objection.bus import (
    EVENT_TYPES,
    RECORDED_STATUSES,
    Bus,
    Envelope,
    HistoryEntry,
    OutcomeRecord,
)
from rapid_objection.bus._constants import DEFAULT_NAMESPACE
from rapid_objection.bus._ids import id_key
from rapid_objection.bus._verify import Audit, verify_history

from .._errors import ReplayError
from .._follow import follow
from .._outage import OutageNotice
from .._replay import Selection, answered, details, parse_time, redeliver
from ._args import (
    DEFAULT_SERVER_URL,
    Parser,
    UsageError,
    add_bus_options,
    add_keyring_option,
    bus_url,
    keyring_of,
)
from ._namespace import namespace_bus
from ._outcome_views import follow_jsonl, follow_line, outcome_table, when
from ._status import stop_on_signal

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
        "--last", type=_positive, metavar="N", help="the newest N events, newest first"
    )
    parser.add_argument(
        "--outcomes",
        action="store_true",
        help="show each plugin's outcome of each event (consumer, status, attempt, "
        "duration, error; the traceback in --format jsonl)",
    )
    parser.add_argument(
        "--plugin", help="only events with an outcome of this plugin (and only those outcomes)"
    )
    parser.add_argument(
        "--consumer",
        help="only events with an outcome of this consumer (and only those outcomes)",
    )
    parser.add_argument(
        "--status",
        dest="statuses",
        action="extend",
        nargs="+",
        default=[],
        choices=RECORDED_STATUSES,
        metavar="STATUS",
        help="only events with an outcome of these statuses (repeatable): "
        + ", ".join(RECORDED_STATUSES),
    )
    parser.add_argument(
        "--follow",
        action="store_true",
        help="after the selection (none unless --since or --last), show new events and "
        "their outcomes as they come, until Ctrl-C",
    )
    parser.add_argument(
        "--to-plugin", metavar="NAME", help="re-deliver the selected events to this plugin only"
    )
    parser.add_argument(
        "--execute", action="store_true", help="with --to-plugin: publish (default: a dry run)"
    )
    parser.add_argument(
        "--verify",
        action="store_true",
        help="check every selected event and every registry's chain against the keyring; "
        "exit 1 when anything is forged, altered or missing",
    )
    parser.add_argument(
        "--archive",
        metavar="DB_URL",
        help="with --verify: check the audit plugin's table in this database (its url) "
        "instead of the stream",
    )
    parser.add_argument(
        "--archive-table",
        metavar="NAME",
        default="ro_audit",
        help="with --archive: the audit table's name (the plugin's table, default ro_audit)",
    )
    add_keyring_option(parser, "the whole keyring: copies are signed, --verify checks")
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
    return Selection(
        since,
        until,
        args.app,
        tuple(args.types),
        args.last or args.limit,
        plugin=args.plugin,
        consumer=args.consumer,
        statuses=tuple(args.statuses),
        newest_first=args.last is not None,
    )


def _check(args: argparse.Namespace, selection: Selection) -> None:
    """Refuse the combinations of flags that mean nothing together."""
    if args.execute and not args.to_plugin:
        raise UsageError("--execute re-delivers events and needs --to-plugin NAME")
    if args.last and args.limit:
        raise UsageError("--last N (the newest) and --limit N (the oldest): choose one")
    if args.verify and (args.to_plugin or args.limit or args.last or args.follow):
        raise UsageError(
            "--verify checks a window of the history: not with --to-plugin, --limit, "
            "--last or --follow"
        )
    if args.verify and selection.by_outcome:
        raise UsageError(
            "--verify checks events, not outcomes: not with --plugin, --consumer, --status"
        )
    if args.to_plugin and (args.last or args.follow):
        raise UsageError(
            "--to-plugin re-delivers a window oldest first: not with --last or --follow"
        )
    if args.follow and (args.until or args.limit):
        raise UsageError("--follow shows what comes next: not with --until or --limit")
    if args.archive and not args.verify:
        raise UsageError("--archive is what --verify checks: add --verify")


def run(args: argparse.Namespace) -> int:
    selection = _selection(args)
    _check(args, selection)
    try:
        if args.archive:
            return _verify_archive(args, selection)
        if args.verify:
            return anyio.run(_verify, args, selection)
        if args.to_plugin:
            return anyio.run(_redeliver, args, selection)
        if args.follow:
            try:
                return anyio.run(_follow, args, selection)
            except KeyboardInterrupt:
                return 0  # Ctrl-C is how a follow ends
        return anyio.run(_list, args, selection)
    except ReplayError as exc:
        raise UsageError(str(exc)) from None


def _console() -> Console:
    # Off a terminal, size tables to their content: ids are never cut short.
    return Console(width=None if sys.stdout.isatty() else 10_000, highlight=False)


def _jsonl(
    entry_id: str | None, envelope: Envelope, outcomes: Sequence[OutcomeRecord] | None = None
) -> str:
    row = {"entry_id": entry_id, **msgspec.to_builtins(envelope)}
    if outcomes is not None:
        row["outcomes"] = [msgspec.to_builtins(record) for record in outcomes]
    return msgspec.json.encode(row).decode()


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
        table.add_row(
            when(envelope.time),
            envelope.id,
            envelope.type,
            envelope.app or "-",
            envelope.registry,
            escape(details(envelope)),
        )
    return table


async def _list(args: argparse.Namespace, selection: Selection) -> int:
    with_outcomes = args.outcomes or selection.by_outcome
    async with namespace_bus(args) as bus:
        if args.format == "jsonl":
            async for found in answered(bus, selection, outcomes=with_outcomes):
                outcomes = found.outcomes if with_outcomes else None
                print(_jsonl(found.entry.entry_id, found.entry.envelope, outcomes))
            return 0
        rows = [found async for found in answered(bus, selection, outcomes=with_outcomes)]
        manifests = (await bus.directory.manifests()).values() if with_outcomes else ()
    hooked = {hook for manifest in manifests for hook in manifest.hooks}
    noun = "event" if len(rows) == 1 else "events"
    order = ", newest first" if selection.newest_first else ""
    title = f"History of namespace {bus.namespace} ({len(rows)} {noun}{order})"
    if with_outcomes:
        _console().print(outcome_table(title, rows, hooked))
    else:
        _console().print(_table(title, [found.entry for found in rows]))
    return 0


async def _follow(args: argparse.Namespace, selection: Selection) -> int:
    # SIGINT and SIGTERM end it with status 0, also where SIGINT is ignored (started in
    # the background by a script), as they end `status --watch`; caught from the start.
    async with anyio.create_task_group() as group:
        await group.start(stop_on_signal, group.cancel_scope)
        await _follow_until_stopped(args, selection)
    return 0


async def _follow_until_stopped(args: argparse.Namespace, selection: Selection) -> None:
    console = _console()
    async with namespace_bus(args, used=False) as bus:
        backlog: list[HistoryEntry] = []
        if args.since is not None or args.last is not None:
            backlog = [found.entry async for found in answered(bus, selection, outcomes=False)]
            backlog.sort(key=lambda entry: id_key(entry.entry_id))
        newest = await bus.redis.xrevrange(bus.keys.events, "+", "-", count=1)
        after = newest[0][0] if newest else "0-0"
        if args.format == "table":
            console.print(
                escape(f"Following namespace {bus.namespace} (Ctrl-C to stop)"), soft_wrap=True
            )
            console.file.flush()  # into a pipe too: a reader knows it is following
        outage = OutageNotice(_say_on_stderr)
        async for item in follow(bus, selection, after=after, backlog=backlog, outage=outage):
            if args.format == "jsonl":
                print(follow_jsonl(item), flush=True)
            else:
                console.print(escape(follow_line(item)), soft_wrap=True)
                console.file.flush()


def _say_on_stderr(line: str) -> None:
    print(f"rapid-objection replay: {line}", file=sys.stderr, flush=True)


async def _verify(args: argparse.Namespace, selection: Selection) -> int:
    if args.keyring is None:
        raise UsageError("--verify needs the whole keyring: --keyring PATH (or its env)")
    async with namespace_bus(args) as bus:
        audit = await verify_history(
            bus,
            since=selection.since,
            until=selection.until,
            app=selection.app,
            types=selection.types,
        )
    return _report(audit)


def _verify_archive(args: argparse.Namespace, selection: Selection) -> int:
    import sqlalchemy

    from rapid_objection.bus import mask_url
    from rapid_objection.plugin_workers.plugins.audit_store import AuditStore
    from rapid_objection.plugin_workers.plugins.audit_verify import verify_archive

    keyring = keyring_of(args)
    if keyring is None:
        raise UsageError("--verify needs the whole keyring: --keyring PATH (or its env)")
    try:
        store = AuditStore(args.archive, args.archive_table)
    except (ValueError, sqlalchemy.exc.ArgumentError) as exc:
        raise UsageError(f"--archive: {exc}") from None
    try:
        if not store.exists():
            raise UsageError(f"--archive: {store.url} has no table {args.archive_table!r}")
        audit = verify_archive(
            store,
            keyring,
            since=selection.since,
            until=selection.until,
            app=selection.app,
            types=selection.types,
        )
    except sqlalchemy.exc.SQLAlchemyError as exc:
        reason = mask_url(str(getattr(exc, "orig", None) or exc)).strip().splitlines()[0]
        raise UsageError(f"--archive: {store.url}: {reason}") from None
    finally:
        store.close()
    return _report(audit)


def _report(audit: Audit) -> int:
    """Print what the verification found; the exit status (0: everything verified)."""
    for problem in audit.problems:
        if problem.kind == "missing":
            print(f"MISSING  {problem.detail}")
        else:
            event = f" event {problem.event_id}" if problem.event_id else ""
            print(
                f"{problem.kind.upper():8} {audit.noun} {problem.entry_id}{event}: {problem.detail}"
            )
    trimmed = f"; {audit.trimmed} removed by retention" if audit.trimmed else ""
    verdict = "all verified" if audit.ok else f"{len(audit.problems)} problems"
    print(
        f"{audit.checked} events checked, {audit.verified} verified, "
        f"{audit.chains} chains{trimmed}: {verdict}"
    )
    return 0 if audit.ok else 1


async def _redeliver(args: argparse.Namespace, selection: Selection) -> int:
    keyring = keyring_of(args)
    url, namespace = bus_url(args), args.namespace or DEFAULT_NAMESPACE
    async with Bus.connect(url, namespace, keyring=keyring) as bus:
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
