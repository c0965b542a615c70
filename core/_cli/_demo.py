"""``rapid-objection demo``: one app's whole lifecycle on the embedded bus, acks shown live.

Two sample plugins (``core._demo_plugins``) run as inline workers, tasks of this
process on the same bus; a registry-side ``Publisher`` that requires both publishes
the lifecycle events of the sample app "shop" in the documented order (DESIGN §5),
waits for the acks of each, and prints them as they come. Then it shows the plugins'
status and the app's history read back from the stream. No server is needed: the
default bus is ``memory://demo``. A ``redis://`` URL works too.

Until the registry (``AppRegistry``) exists, the payloads are the ones it would
publish for a SQLite app with two migrations, two seeds and two models.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import anyio
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from bus import (
    HOOK_TYPES,
    AppRegistered,
    AppRegistrationStarted,
    AppRollbackCompleted,
    AppRollbackStarted,
    AppUnregistered,
    AppUnregistrationStarted,
    AutoOperationsCompleted,
    AutoOperationsStarted,
    Bus,
    ConnectionCreated,
    ConnectionInfo,
    ConnectionShutdown,
    HealthCheck,
    OperationResult,
    Outcome,
    Payload,
    PluginPolicy,
    Publisher,
    StatusReport,
    WaitResult,
    collect_status,
    default_registry_id,
    mask_url,
    payload_type,
)

from ._args import Parser

DEFAULT_URL: Final = "memory://demo"
DEFAULT_NAMESPACE: Final = "demo"
APP: Final = "shop"
HOOK_TIMEOUT: Final = 5.0
"""Seconds each sample plugin's hook may run; also its ack deadline."""

PLANTED_PASSWORD: Final = "demo-Pl4nted-S3cret"  # noqa: S105 - planted on purpose
"""In the sample app's configuration on purpose: it must never show up in the output,
because nothing the demo prints comes from anywhere but the bus, which redacts it."""

_STATUS_STYLE: Final = {
    "acked": "green",
    "skipped": "yellow",
    "failed": "bold red",
    "timed_out": "bold red",
}


def add_parser(commands: Any) -> None:
    parser: Parser = commands.add_parser(
        "demo",
        help="run an app's lifecycle on the embedded bus with two inline plugins",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    # No environment fallback on purpose: `make demo` must work with no server whatever
    # RAPID_OBJECTION_BUS_URL says.
    parser.add_argument(
        "--bus-url",
        default=DEFAULT_URL,
        help=f"the bus (default {DEFAULT_URL}: embedded, no server; redis://... works too)",
    )
    parser.add_argument(
        "--namespace",
        default=DEFAULT_NAMESPACE,
        help=f"the bus namespace (default {DEFAULT_NAMESPACE})",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    console = Console(highlight=False)

    async def main() -> DemoReport:
        async with Bus.connect(args.bus_url, args.namespace) as bus:
            return await run_demo(bus, console)

    report = anyio.run(main)
    return 0 if report.ok else 1


# --- the sample app ----------------------------------------------------------------------


def sample_config() -> dict[str, Any]:
    """The configuration of "shop", with a password the bus must mask."""
    return {
        "database": {"url": "sqlite:///shop.db", "shared": False, "pool_size": 5},
        "migrations": {"enabled": True, "directory": "apps/shop/migrations"},
        "seeds": {"enabled": True, "directory": "apps/shop/seeds"},
        "models": {"enabled": True, "module": "shop.models"},
        "backup": {
            "target": (
                f"postgresql+psycopg://backup:{PLANTED_PASSWORD}@backup.internal:5432/shop_backups"
            ),
            "schedule": "0 3 * * *",
        },
    }


def sample_connection(*, checked_out: int = 0) -> ConnectionInfo:
    """What the registry would say of shop's SQLite engine."""
    url = "sqlite:///shop.db"
    return ConnectionInfo(
        dialect="sqlite",
        driver="pysqlite",
        database="shop.db",
        url=mask_url(url),
        pool_size=5,
        pool_checked_out=checked_out,
        shared=False,
        reference_count=1,
        apps=(APP,),
    )


@dataclass(frozen=True, slots=True)
class Step:
    """One event of the lifecycle: what the registry is doing, and the payload it sends."""

    doing: str
    payload: Payload


def lifecycle(config: dict[str, Any]) -> list[Step]:
    """register_app, a health check, unregister_app: eleven events in the order of §5."""
    connection = sample_connection()
    migrations = ("001_create_customers.py", "002_create_orders.py")
    seeds = ("001_customers.py", "002_orders.py")
    models = ("Customer", "Order")
    options = {"rollback": True, "force": False}
    return [
        Step("register_app: starting", AppRegistrationStarted(config=config)),
        Step("new SQLite connection", ConnectionCreated(connection=connection, reused=False)),
        Step(
            "migrations, seeds, models: starting",
            AutoOperationsStarted(connection=connection, config=config),
        ),
        Step(
            "2 migrations, 2 seeds, 2 models done",
            AutoOperationsCompleted(
                operations=(
                    OperationResult(
                        operation="migrations",
                        success=True,
                        items=migrations,
                        duration=0.0123,
                        details={"batch": 1},
                    ),
                    OperationResult(
                        operation="seeds",
                        success=True,
                        items=seeds,
                        duration=0.0041,
                        details={"rows": 42},
                    ),
                    OperationResult(
                        operation="models", success=True, items=models, duration=0.0008
                    ),
                ),
                success=True,
            ),
        ),
        Step("shop is registered", AppRegistered(connection=connection, config=config)),
        Step(
            "health check: SELECT 1",
            HealthCheck(
                health={
                    "status": "healthy",
                    "response_time_ms": 0.42,
                    "pool": {"size": 5, "checked_out": 1},
                    "checked_at": time.time(),
                }
            ),
        ),
        Step("unregister_app: starting", AppUnregistrationStarted(options=options)),
        Step("rollback: starting", AppRollbackStarted(connection=connection, options=options)),
        Step(
            "rolled back: seeds, migrations, models",
            AppRollbackCompleted(
                steps=(
                    OperationResult(
                        operation="seeds",
                        success=True,
                        items=tuple(reversed(seeds)),
                        duration=0.0022,
                    ),
                    OperationResult(
                        operation="migrations",
                        success=True,
                        items=tuple(reversed(migrations)),
                        duration=0.0097,
                        details={"batch": 1},
                    ),
                    OperationResult(
                        operation="models", success=True, items=models, duration=0.0001
                    ),
                ),
                success=True,
            ),
        ),
        Step(
            "closing the connection (last reference)",
            ConnectionShutdown(connection=connection, shared=False, last_reference=True),
        ),
        Step("shop is unregistered", AppUnregistered(options=options)),
    ]


# --- running it --------------------------------------------------------------------------


@dataclass
class PluginTally:
    acked: int = 0
    skipped: int = 0
    failed: int = 0
    not_awaited: int = 0
    durations: list[float] = field(default_factory=list)


@dataclass
class DemoReport:
    results: list[WaitResult] = field(default_factory=list)
    tallies: dict[str, PluginTally] = field(default_factory=dict)
    audited: list[str] = field(default_factory=list)
    """The event types the audit-log plugin recorded, in the order it saw them."""
    elapsed: float = 0.0

    @property
    def ok(self) -> bool:
        return all(result.ok for result in self.results)


async def run_demo(bus: Bus, console: Console) -> DemoReport:
    """Start the two inline workers, publish shop's lifecycle, print acks, stop cleanly."""
    from plugin_workers import PluginInterface, Worker

    from .._demo_plugins import AuditLogPlugin, MonitoringPlugin

    started, begun = time.perf_counter(), time.time()
    audit, monitoring = AuditLogPlugin(), MonitoringPlugin()
    plugins: list[PluginInterface] = [audit, monitoring]
    registry_id = f"demo-{default_registry_id()}"
    report = DemoReport(tallies={plugin.name: PluginTally() for plugin in plugins})
    console.print(
        f"[bold]rapid-objection demo[/]: bus [bold]{escape(bus.url)}[/] namespace "
        f"[bold]{escape(bus.namespace)}[/], registry [bold]{escape(registry_id)}[/]"
    )
    workers = [
        Worker(plugin, bus, required=True, timeout=HOOK_TIMEOUT, registry_id=registry_id)
        for plugin in plugins
    ]
    async with anyio.create_task_group() as group:
        try:
            for worker in workers:
                await group.start(worker.run)
                hooks = worker.manifest.hooks
                what = "every hook" if len(hooks) == len(HOOK_TYPES) else ", ".join(hooks)
                console.print(
                    f"started inline worker [cyan]{worker.name}[/] "
                    f"(consumer {escape(worker.consumer_name)}) for {escape(what)}"
                )
            policies = {
                worker.name: PluginPolicy(required=True, timeout=HOOK_TIMEOUT) for worker in workers
            }
            async with Publisher(bus, registry_id, policies=policies) as publisher:
                publisher.apps.add(APP)
                consumer_width = max(len(worker.consumer_name) for worker in workers)
                console.print()
                for number, step in enumerate(lifecycle(sample_config()), 1):
                    result = await _emit(publisher, step, number, console)
                    report.results.append(result)
                    _tally(report, result, plugins)
                    _print_acks(console, result, plugins, consumer_width)
                publisher.apps.discard(APP)
                status = await collect_status(bus)
                _print_summary(console, status, report, workers)
                await _print_history(console, bus, registry_id, since=begun - 1)
        finally:
            # Stop reading; each worker acks what it holds, shuts its plugin down, leaves.
            for worker in workers:
                worker.stop()
    report.elapsed = time.perf_counter() - started
    report.audited = audit.events(APP)
    console.print(
        f"workers drained and left the bus; plugins shut down "
        f"(audit-log kept {len(audit.records)} records, running={audit.running})"
    )
    if report.ok:
        console.print(f"[green]demo finished in {report.elapsed:.2f}s[/]")
    else:
        failed = sum(not result.ok for result in report.results)
        console.print(f"[bold red]{failed} event(s) missed a required ack[/]")
    return report


async def _emit(publisher: Publisher, step: Step, number: int, console: Console) -> WaitResult:
    event_type = payload_type(step.payload)
    with console.status(f"[bold]{event_type}[/]: waiting for the required acks"):
        result = await publisher.emit(step.payload, app=APP)
    console.print(
        Text.assemble(
            (f"{number:>2} ", "dim"),
            (f"{result.type:<27}", "bold"),
            step.doing,
            (f"  {result.elapsed * 1000:.1f} ms", "dim"),
        )
    )
    return result


def _tally(report: DemoReport, result: WaitResult, plugins: Sequence[Any]) -> None:
    for plugin in plugins:
        tally = report.tallies[plugin.name]
        outcome = result.outcomes.get(plugin.name)
        if outcome is None:
            tally.not_awaited += 1
        elif outcome.status == "acked":
            tally.acked += 1
        elif outcome.status == "skipped":
            tally.skipped += 1
        else:
            tally.failed += 1
        if outcome is not None and outcome.duration is not None:
            tally.durations.append(outcome.duration)


def _result_text(value: Any) -> str:
    """A result as JSON with spaces, so that a long one wraps between its items."""
    if value is None:
        return "-"
    return json.dumps(value, default=str)


def _print_acks(
    console: Console, result: WaitResult, plugins: Sequence[Any], consumer_width: int
) -> None:
    """One row per plugin: status, consumer, hook duration, result (wrapped in its column)."""
    grid = Table.grid(padding=(0, 1))
    grid.add_column(width=2)
    grid.add_column(style="cyan", no_wrap=True, width=max(len(p.name) for p in plugins))
    grid.add_column(no_wrap=True, width=9)
    grid.add_column(style="dim", no_wrap=True, width=consumer_width)
    grid.add_column(justify="right", no_wrap=True, width=8)
    grid.add_column(overflow="fold")
    for plugin in plugins:
        outcome: Outcome | None = result.outcomes.get(plugin.name)
        if outcome is None:
            note = Text("not awaited (no hook)", "dim")
            grid.add_row("", plugin.name, Text("-", "dim"), "", "", note)
            continue
        duration = "-" if outcome.duration is None else f"{outcome.duration * 1000:.2f} ms"
        answer = Text(outcome.error, "red") if outcome.error else Text(_result_text(outcome.result))
        grid.add_row(
            "",
            plugin.name,
            Text(outcome.status, _STATUS_STYLE.get(outcome.status, "")),
            outcome.consumer or "-",
            duration,
            answer,
        )
    if result.type == "health_check":
        health: dict[str, Any] = {}
        for value in result.results().values():
            if isinstance(value, dict):
                health.update(value)
        merged = Text(_result_text(health))
        grid.add_row("", Text("health", "bold"), "merged", f"into {result.app}'s", "", merged)
    console.print(grid)


def _yes(flag: bool) -> str:
    return "[green]yes[/]" if flag else "[red]no[/]"


def _print_summary(
    console: Console, status: StatusReport, report: DemoReport, workers: Sequence[Any]
) -> None:
    """One column per plugin of this run: the bus's view (status) and this run's acks."""
    shown = [plugin for plugin in status.plugins if plugin.name in report.tallies]
    table = Table(title=f"Plugins on {status.url}, namespace {status.namespace}")
    table.add_column("")
    for plugin in shown:
        table.add_column(plugin.name, style="cyan")
    handled = {worker.name: worker.consumer.handled for worker in workers}

    def row(label: str, values: Sequence[str]) -> None:
        table.add_row(label, *values)

    tallies = [report.tallies[plugin.name] for plugin in shown]
    row("version", [plugin.version or "-" for plugin in shown])
    row("required", [_yes(plugin.required) for plugin in shown])
    row("hooks implemented", [f"{len(plugin.hooks)} of {len(HOOK_TYPES)}" for plugin in shown])
    row(
        "consumers alive",
        [
            f"{sum(c.alive for c in plugin.consumers)} of {len(plugin.consumers)}"
            for plugin in shown
        ],
    )
    row("events handled", [str(handled.get(plugin.name, "-")) for plugin in shown])
    row("acked (awaited)", [str(tally.acked) for tally in tallies])
    row("not awaited", [str(tally.not_awaited) for tally in tallies])
    row("failed or timed out", [str(tally.failed + tally.skipped) for tally in tallies])
    row(
        "mean hook time",
        [
            f"{sum(t.durations) / len(t.durations) * 1000:.2f} ms" if t.durations else "-"
            for t in tallies
        ],
    )
    row("pending / lag", [f"{p.pending} / {'-' if p.lag is None else p.lag}" for p in shown])
    console.print()
    console.print(table)


def _describe(payload: Payload) -> str:  # noqa: PLR0911 - one case per event type
    """A short line about a payload as it was stored on the bus (already redacted)."""
    match payload:
        case AppRegistrationStarted(config=config):
            return f"config: backup.target={config.get('backup', {}).get('target')}"
        case ConnectionCreated(connection=connection, reused=reused):
            return f"{connection.url} reused={reused}"
        case AutoOperationsStarted(connection=connection):
            return connection.url
        case (
            AutoOperationsCompleted(operations=operations) | AppRollbackCompleted(steps=operations)
        ):
            return ", ".join(f"{op.operation} {len(op.items)}" for op in operations)
        case AppRegistered(connection=connection) | AppRollbackStarted(connection=connection):
            return connection.url
        case ConnectionShutdown(last_reference=last):
            return f"last_reference={last}"
        case HealthCheck(health=health):
            return f"status={health.get('status')}"
        case AppUnregistrationStarted(options=options) | AppUnregistered(options=options):
            return _result_text(options)
    return ""


async def _print_history(console: Console, bus: Bus, registry_id: str, *, since: float) -> None:
    table = Table(title=f"History of {APP!r}, read back from {bus.keys.events}")
    table.add_column("seq", justify="right")
    table.add_column("entry id", no_wrap=True)
    table.add_column("event", no_wrap=True)
    table.add_column("payload (as stored)", ratio=1, overflow="fold")
    async for entry in bus.history.iterate(app=APP, since=since):
        envelope = entry.envelope
        if envelope.registry != registry_id:  # an earlier run on a shared namespace
            continue
        table.add_row(str(envelope.seq), entry.entry_id, envelope.type, _describe(envelope.payload))
    console.print(table)
