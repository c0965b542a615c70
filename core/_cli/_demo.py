"""``rapid-objection demo``: two apps' lifecycles with the bundled plugins, acks shown live.

Runs on the embedded bus (``memory://``), so it needs no server: an ``AppRegistry``
with the three bundled plugins inline (audit, metrics, backup; audit and backup
required), two SQLite apps with migrations, seeds and models (``rapid_objection.core.demo_apps``).
Every step is printed as the plugins acknowledge it; then a status table, and the
shop's audit trail read back from the audit plugin's table.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Final

import anyio
from rich.console import Console
from rich.markup import escape
from rich.status import Status
from rich.table import Table

from ._args import Parser, bus_url_arg, namespace_arg

DEMO_BUS_URL: Final = "memory://demo"
DEMO_NAMESPACE: Final = "demo"
APPS: Final = ("shop", "blog")


def add_parser(commands: Any) -> None:
    parser: Parser = commands.add_parser(
        "demo", help="two apps' lifecycles with the bundled plugins on the embedded bus"
    )
    parser.add_argument(
        "--bus-url", type=bus_url_arg, default=DEMO_BUS_URL, help=f"default {DEMO_BUS_URL}"
    )
    parser.add_argument("--namespace", type=namespace_arg, default=DEMO_NAMESPACE)
    parser.add_argument(
        "--directory", type=Path, help="where the databases, audit and backups go (default: temp)"
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    # Off a terminal (make demo into a log, a pipe) rich would wrap at 80 columns and
    # split each step's acks over lines: size it for them instead.
    console = Console(highlight=False, width=None if sys.stdout.isatty() else 160)
    if args.directory is not None:
        args.directory.mkdir(parents=True, exist_ok=True)
        return anyio.run(run_demo, console, args.bus_url, args.namespace, args.directory)
    with tempfile.TemporaryDirectory(prefix="rapid-objection-demo-") as scratch:
        return anyio.run(run_demo, console, args.bus_url, args.namespace, Path(scratch))


def demo_config(bus_url: str, namespace: str, directory: Path) -> dict[str, Any]:
    """The registry of the demo: the bundled plugins inline, two apps."""
    from rapid_objection.core.demo_apps import ROOT

    def app(name: str) -> dict[str, Any]:
        return {
            "database": {"url": f"sqlite:///{directory / (name + '.db')}"},
            "migrations": {"directory": str(ROOT / name / "migrations")},
            "seeds": {"directory": str(ROOT / name / "seeds")},
            "models": {"module": f"rapid_objection.core.demo_apps.{name}.models"},
        }

    return {
        "registry": {"id": "demo-registry"},
        "bus": {"url": bus_url, "namespace": namespace, "ack_timeout": 10},
        "plugins": {
            "audit": {
                "module": "rapid_objection.plugin_workers.plugins.audit:AuditPlugin",
                "required": True,
                "config": {"url": f"sqlite:///{directory / 'audit.db'}"},
            },
            "backup": {
                "module": "rapid_objection.plugin_workers.plugins.backup:BackupPlugin",
                "required": True,
                "config": {"directory": str(directory / "backups"), "keep": 3},
            },
            "metrics": {
                "module": "rapid_objection.plugin_workers.plugins.metrics:MetricsPlugin",
                "config": {"port": 0, "refresh_interval": 60},
            },
        },
        "apps": {name: app(name) for name in APPS},
    }


class StepPrinter:
    """Listeners that show each step while it waits, then its acks."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.status: Status | None = None
        self.steps = 0
        self.missing: list[str] = []

    def started(self, event: dict[str, Any]) -> None:
        text = f"[bold]{event['app']}[/] {event['event']}: waiting for the plugins' acks"
        if self.status is None:
            self.status = self.console.status(text)
            self.status.start()
        else:
            self.status.update(text)

    def finished(self, event: dict[str, Any]) -> None:
        result = event["result"]
        self.steps += 1
        if not result.ok:
            self.missing.append(f"{event['app']} {event['event']}")
        answers = []
        for outcome in {**result.others, **result.outcomes}.values():
            mark = {"acked": "[green]✓[/]", "skipped": "[dim]-[/]"}.get(outcome.status, "[red]✗[/]")
            took = f" {outcome.duration * 1000:.1f}ms" if outcome.duration is not None else ""
            answers.append(f"{mark} {outcome.plugin}{took}")
        awaited = ", ".join(answers) or "[dim]no plugin implements it[/]"
        self.console.print(
            f"{self.steps:>3} [bold]{event['app']:<5}[/] {event['event']:<27} "
            f"{result.elapsed * 1000:6.1f}ms  {awaited}"
        )

    def stop(self) -> None:
        if self.status is not None:
            self.status.stop()
            self.status = None


async def run_demo(console: Console, bus_url: str, namespace: str, directory: Path) -> int:
    """The demo itself; returns the exit status."""
    from rapid_objection.core import AppRegistry
    from rapid_objection.plugin_workers.plugins.audit import AuditStore

    started = time.monotonic()
    printer = StepPrinter(console)
    config = demo_config(bus_url, namespace, directory)
    console.rule("rapid-objection demo")
    console.print(f"bus {bus_url} namespace {namespace}; files in {directory}")
    registry = AppRegistry(config)
    registry.on("step-started", printer.started)
    registry.on("step", printer.finished)
    try:
        async with registry:
            console.print(
                "plugins: "
                + ", ".join(f"{name} ({loaded.mode})" for name, loaded in _loaded(registry))
            )
            for name in APPS:
                console.rule(f"register_app({name!r})", style="dim")
                await registry.register_app(name, config["apps"][name])
            printer.stop()
            _show_shop(console, registry)
            console.rule("health checks", style="dim")
            for name in APPS:
                health = await registry.check_health(name)
                took = health["response_time_ms"]
                console.print(f"    {name}: {health['status']}, SELECT 1 in {took:.2f}ms")
            console.rule("unregister_app('blog')", style="dim")
            result = await registry.unregister_app("blog")
            printer.stop()
            console.print(
                "    rolled back: "
                + ", ".join(f"{step.operation} {list(step.items)}" for step in result.steps)
            )
            for table in _status_tables(await registry.get_status()):
                console.print(table)
            console.rule("shutdown (the shop's connection closes with the registry)", style="dim")
    finally:
        printer.stop()
    with AuditStore(f"sqlite:///{directory / 'audit.db'}") as store:
        trail = store.query(app="shop", limit=None)
    console.print(_audit_table(trail))
    took = time.monotonic() - started
    if printer.missing:
        console.print(
            f"[bold red]done[/] in {took:.1f}s: {printer.steps} steps; required acks missing "
            f"for {', '.join(printer.missing)}"
        )
        return 1
    console.print(
        f"[bold green]done[/] in {took:.1f}s: {printer.steps} steps, every one acknowledged "
        "by the required plugins"
    )
    return 0


def _loaded(registry: Any) -> list[tuple[str, Any]]:
    plugins = registry.plugins
    return sorted((name, plugins.loaded(name)) for name in plugins.get_all())


def _show_shop(console: Console, registry: Any) -> None:
    import sqlalchemy as sa

    shop = registry.get_app("shop")
    product = shop.models["Product"]
    with shop.session() as session:
        rows = session.execute(sa.select(product.name, product.price_cents)).all()
    listing = ", ".join(f"{name} {cents / 100:.2f}" for name, cents in rows)
    console.print(f"    shop.models['Product'] through shop.session(): {listing}")


def _status_tables(status: dict[str, Any]) -> list[Table]:
    table = Table(title=f"registry {status['registry']}: {status['app_count']} app(s)")
    for column in ("app", "dialect", "shared", "models", "health"):
        table.add_column(column)
    for name, app in status["apps"].items():
        health = app.get("health") or {}
        table.add_row(
            name, app["dialect"], str(app["shared"]), str(app["models"]), health.get("status", "-")
        )
    plugins = Table(title="plugins")
    for column in ("plugin", "mode", "required", "status", "consumers"):
        plugins.add_column(column)
    for name, plugin in sorted(status["plugins"]["plugins"].items()):
        consumers = ", ".join(escape(c["name"]) for c in plugin.get("consumers", []))
        plugins.add_row(
            name,
            plugin.get("mode", "-"),
            str(plugin.get("required", "-")),
            plugin["status"],
            consumers or "-",
        )
    return [table, plugins]


def _audit_table(trail: list[Any]) -> Table:
    table = Table(title=f"audit trail of 'shop' ({len(trail)} events, from the audit plugin)")
    for column in ("seq", "event", "time", "consumer"):
        table.add_column(column)
    for entry in trail:
        table.add_row(
            str(entry.seq),
            entry.type,
            time.strftime("%H:%M:%S", time.localtime(entry.time))
            + f".{int(entry.time % 1 * 1000):03d}",
            escape(entry.consumer),
        )
    return table
