"""``rapid-objection status``: registries, plugins, consumers and failures of a namespace."""

from __future__ import annotations

import argparse
import signal
import sys
import time
from typing import Any

import anyio
from anyio.abc import TaskStatus
from rich.console import Console, RenderableType
from rich.table import Table
from rich.text import Text

from rapid_objection.bus import Bus, BusUnavailable, RegistryInfo, StatusReport, collect_status

from .._outage import OutageNotice
from ._args import DEFAULT_SERVER_URL, Parser, UsageError, add_bus_options
from ._namespace import namespace_bus


def add_parser(commands: Any) -> None:
    parser: Parser = commands.add_parser(
        "status", help="show registries, plugins, consumers and recent failures"
    )
    add_bus_options(parser, DEFAULT_SERVER_URL)
    parser.add_argument("--json", action="store_true", help="one JSON object, for machines")
    parser.add_argument("--failures", type=int, default=20, help="recent failures to show")
    parser.add_argument(
        "--check",
        action="store_true",
        help="a health check: exit 1, saying why, when a required plugin has no live"
        " consumer or a registry stopped heartbeating; exit 0 and print nothing else",
    )
    parser.add_argument(
        "--host",
        help="with --check: fail too unless a live registry or consumer (see --role) runs"
        ' on HOST (a container\'s healthcheck: --host "$(hostname)")',
    )
    parser.add_argument(
        "--watch",
        action="store_true",
        help="redraw the tables every second until Ctrl-C (with --json: one object a second)",
    )
    parser.add_argument(
        "--role",
        choices=("registry", "consumer"),
        help="with --host: only a registry, or only a consumer, counts",
    )
    parser.set_defaults(run=run)


WATCH_INTERVAL = 1.0
"""Seconds between two redraws of ``status --watch``."""


def run(args: argparse.Namespace) -> int:
    if args.failures < 0:
        raise UsageError(f"--failures must be at least 0, not {args.failures}")
    if args.watch:
        if args.check:
            raise UsageError("--watch and --check do not go together (--check answers once)")
        anyio.run(watch, args)
        return 0

    async def main() -> StatusReport:
        async with namespace_bus(args) as bus:
            return await collect_status(bus, recent=args.failures)

    report = anyio.run(main)
    if args.check:
        return check(report, args.host, args.role)
    if args.json:
        print(report.json().decode())
    else:
        # Off a terminal, size tables to their content: names are never cut short.
        render(report, Console(width=None if sys.stdout.isatty() else 10_000))
    return 0


async def watch(args: argparse.Namespace) -> None:
    """``--watch``: collect and redraw every second (rich Live: the screen is redrawn in
    place) until SIGINT or SIGTERM, which end it cleanly, the last tables left shown.

    A bus that becomes unavailable does not end it: the outage is shown (above the last
    tables, or on stderr with ``--json``) and collecting goes on until Redis answers."""
    from rich.console import Group
    from rich.live import Live

    console = Console(width=None if sys.stdout.isatty() else 10_000)
    outage = OutageNotice(_to_stderr if args.json else None, every=WATCH_INTERVAL)
    async with namespace_bus(args) as bus, anyio.create_task_group() as group:
        await group.start(stop_on_signal, group.cancel_scope)
        if args.json:
            while True:
                report = await collect(bus, args.failures, outage)
                if report is not None:
                    print(report.json().decode(), flush=True)
                await anyio.sleep(WATCH_INTERVAL)
        else:
            # One refresh per update, by us: rich's own refresh thread is not needed.
            shown: list[RenderableType] = []
            with Live(console=console, auto_refresh=False) as live:
                while True:
                    report = await collect(bus, args.failures, outage)
                    if report is not None:
                        shown = tables(report)
                    live.update(Group(*banner(outage), *shown), refresh=True)
                    await anyio.sleep(WATCH_INTERVAL)


def _to_stderr(line: str) -> None:
    print(f"rapid-objection status: {line}", file=sys.stderr, flush=True)


async def collect(bus: Bus, recent: int, outage: OutageNotice) -> StatusReport | None:
    """The status report, or None while the bus is unavailable (``outage`` is told)."""
    try:
        report = await collect_status(bus, recent=recent)
    except BusUnavailable as exc:
        outage.failed(exc)
        return None
    outage.answered()
    return report


def banner(outage: OutageNotice) -> list[Text]:
    """A red line saying the bus is down and for how long; none while it answers."""
    line = outage.line()
    # Text, not markup: the reason may hold brackets ("[Errno 111]").
    return [] if line is None else [Text(f"{line}; the tables below are from before", "red")]


async def stop_on_signal(
    scope: anyio.CancelScope, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
) -> None:
    """Cancel ``scope`` at the first SIGINT or SIGTERM (a clean end, exit 0); started
    (``TaskGroup.start``) once the signals are caught."""
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        task_status.started()
        async for _ in signals:
            scope.cancel()
            return


def check(report: StatusReport, host: str | None, role: str | None) -> int:
    """``--check``: each problem on a line of its own on stderr, and exit 1."""
    problems = report.problems()
    if host is not None and not report.alive_on(host, role):
        problems.append(f"no live {role or 'registry or consumer'} on host {host!r}")
    for problem in problems:
        print(f"rapid-objection status: {problem}", file=sys.stderr)
    return 1 if problems else 0


def _ago(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds:.1f}s" if seconds < 120 else f"{seconds / 60:.0f}m"


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f} ms"


def _by(registries: tuple[str, ...]) -> str:
    return f" (by {', '.join(registries)})" if registries else ""


def _app(info: RegistryInfo, app: str) -> str:
    """An app and where its migrations stand: ``shop (batch 2, 1 pending)``."""
    schema = info.schemas.get(app)
    if schema is None:
        return app
    at = f"revision {schema.revision}" if schema.revision else f"batch {schema.batch or 0}"
    return f"{app} ({at}, {schema.pending} pending)"


def _yes(flag: bool) -> str:
    return "[green]yes[/]" if flag else "[red]no[/]"


def render(report: StatusReport, console: Console) -> None:
    """The report as rich tables."""
    for part in tables(report):
        console.print(part)


def tables(report: StatusReport) -> list[RenderableType]:
    """The report's lines and tables, in order (printed once, or redrawn by ``--watch``)."""
    parts: list[RenderableType] = [
        f"bus [bold]{report.url}[/] namespace [bold]{report.namespace}[/]: "
        f"{report.events} events in the stream, {report.dead_letters} dead letters"
    ]
    if report.signed:
        parts.append(
            f"authenticated: events and acks are signed; {report.unauthenticated} "
            f"unauthenticated events dead-lettered, {report.forged} forged acks ignored"
        )
    else:
        parts.append(
            "[red]unauthenticated[/]: no keyring (or not every live registry has one); "
            "any client that can write to this Redis can make hooks run (docs/security.md)"
        )
    registries = Table(title="Registries")
    for column in ("registry", "host", "pid", "alive", "apps", "last seen"):
        registries.add_column(column)
    for registry in report.registries:
        info = registry.info
        registries.add_row(
            info.id,
            info.host,
            str(info.pid),
            _yes(registry.alive),
            ", ".join(_app(info, app) for app in info.apps) or "-",
            _ago(report.time - info.seen),
        )
    parts.append(registries)
    plugins = Table(title="Plugins")
    for column in ("plugin", "version", "required", "hooks", "pending", "lag", "consumers"):
        plugins.add_column(column)
    consumers = Table(title="Consumers")
    for column in (
        "plugin",
        "consumer",
        "alive",
        "pending",
        "idle",
        "handled",
        "failures",
        "last hook",
    ):
        consumers.add_column(column)
    for plugin in report.plugins:
        alive = sum(consumer.alive for consumer in plugin.consumers)
        plugins.add_row(
            plugin.name,
            plugin.version or "-",
            _yes(plugin.required)
            + (f" ({', '.join(plugin.required_by)})" if plugin.required_by else ""),
            str(len(plugin.hooks)),
            str(plugin.pending),
            "-" if plugin.lag is None else str(plugin.lag),
            f"{alive} alive / {len(plugin.consumers)}",
        )
        for consumer in plugin.consumers:
            consumers.add_row(
                plugin.name,
                consumer.name,
                _yes(consumer.alive),
                str(consumer.pending),
                _ago(None if consumer.idle_ms is None else consumer.idle_ms / 1000),
                str(consumer.handled),
                str(consumer.failures),
                _ms(consumer.last_duration),
            )
    parts += [plugins, consumers]
    failures = Table(title="Recent failures")
    for column in ("when", "plugin", "consumer", "kind", "event", "app", "error"):
        failures.add_column(column)
    for failure in report.recent_failures:
        failures.add_row(
            time.strftime("%H:%M:%S", time.localtime(failure.time)),
            failure.plugin,
            failure.consumer or "-",
            failure.kind,
            failure.type,
            failure.app or "-",
            failure.error,
        )
    parts.append(failures)
    memory = memory_table(report)
    if memory is not None:
        parts.append(memory)
    return parts


def _size(size: int | None, estimated: bool = False) -> str:
    if size is None:
        return "-"
    if size < 1024:
        figure = f"{size} B"
    elif size < 2**20:
        figure = f"{size / 1024:.1f} KiB"
    else:
        figure = f"{size / 2**20:.1f} MiB"
    return f"~{figure}" if estimated else figure


def memory_table(report: StatusReport) -> Table | None:
    """Keys and bytes per family of keys (MEMORY USAGE), or why they are not measured."""
    memory = report.memory
    if memory is None:
        return None
    title = "Memory" + (f" ({memory.unavailable})" if memory.unavailable else "")
    table = Table(title=title)
    for column in ("keys of", "keys", "memory"):
        table.add_column(column)
    for family in memory.families:
        table.add_row(family.name, str(family.keys), _size(family.bytes, family.estimated))
    table.add_row("total", str(sum(f.keys for f in memory.families)), _size(memory.total_bytes))
    return table
