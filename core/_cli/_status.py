"""``rapid-objection status``: registries, plugins, consumers and failures of a namespace."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import anyio
import msgspec
from rich.console import Console
from rich.table import Table

from rapid_objection.bus import StatusReport, collect_status

from ._args import DEFAULT_SERVER_URL, Parser, add_bus_options
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
        "--role",
        choices=("registry", "consumer"),
        help="with --host: only a registry, or only a consumer, counts",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    async def main() -> StatusReport:
        async with namespace_bus(args) as bus:
            return await collect_status(bus, recent=args.failures)

    report = anyio.run(main)
    if args.check:
        return check(report, args.host, args.role)
    if args.json:
        print(msgspec.json.encode(report).decode())
    else:
        # Off a terminal, size tables to their content: names are never cut short.
        render(report, Console(width=None if sys.stdout.isatty() else 10_000))
    return 0


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


def _by(registries: tuple[str, ...]) -> str:
    return f" (by {', '.join(registries)})" if registries else ""


def _yes(flag: bool) -> str:
    return "[green]yes[/]" if flag else "[red]no[/]"


def render(report: StatusReport, console: Console) -> None:
    """The report as rich tables."""
    console.print(
        f"bus [bold]{report.url}[/] namespace [bold]{report.namespace}[/]: "
        f"{report.events} events in the stream, {report.dead_letters} dead letters"
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
            ", ".join(info.apps) or "-",
            _ago(report.time - info.seen),
        )
    console.print(registries)
    plugins = Table(title="Plugins")
    for column in ("plugin", "version", "required", "hooks", "pending", "lag", "consumers"):
        plugins.add_column(column)
    consumers = Table(title="Consumers")
    for column in ("plugin", "consumer", "alive", "pending", "idle", "handled", "failures"):
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
            )
    console.print(plugins)
    console.print(consumers)
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
    console.print(failures)
