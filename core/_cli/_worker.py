"""``rapid-objection worker module:Class``: run one consumer of a plugin's group."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

import anyio

from ._args import DEFAULT_SERVER_URL, Parser, UsageError, add_bus_options

ENV_PLUGIN_TABLE = "RAPID_OBJECTION_PLUGIN_TABLE"


def add_parser(commands: Any) -> None:
    parser: Parser = commands.add_parser(
        "worker", help="run a plugin worker (one consumer of the plugin's group)"
    )
    parser.add_argument("plugin", help="module:Class or an entry-point name")
    parser.add_argument("--config", type=Path, help="TOML file with the plugin's configuration")
    add_bus_options(parser, None)
    parser.add_argument("--consumer", help="a stable consumer name (default: host-pid-random)")
    parser.add_argument("--concurrency", type=int, default=1, help="hooks run at once (apps)")
    parser.add_argument("--timeout", type=float, help="hook timeout in seconds")
    parser.add_argument("--required", action="store_true", help="announce the plugin required")
    parser.add_argument(
        "--max-deliveries", type=int, help="attempts per event before dead-lettering (default 5)"
    )
    parser.add_argument(
        "--claim-idle",
        type=float,
        help="seconds before this worker takes over a dead consumer's events (default 5)",
    )
    parser.add_argument(
        "--config-json",
        default=os.environ.get(ENV_PLUGIN_TABLE),
        help="the plugin's table as JSON (config, timeout, required, max_deliveries); a "
        f"supervising registry passes it in env {ENV_PLUGIN_TABLE}, out of sight of ps",
    )
    parser.set_defaults(run=run)


def read_config(path: Path, target: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(plugin table, bus table) from a worker's TOML file.

    A registry file (with ``[plugins.<name>]`` tables) is accepted: the table whose
    ``module`` is ``target`` (or the only one) is used. Any other file is the plugin's
    configuration itself.
    """
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise UsageError(f"cannot read config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"config file {path} is not valid TOML: {exc}") from None
    bus = data.get("bus", {})
    plugins = data.get("plugins")
    if not isinstance(plugins, dict):
        return {"config": data}, {}
    tables = [table for table in plugins.values() if isinstance(table, dict)]
    chosen = [table for table in tables if table.get("module") == target] or (
        tables if len(tables) == 1 else []
    )
    if not chosen:
        raise UsageError(f"config file {path} has no [plugins.*] table with module = {target!r}")
    return chosen[0], bus if isinstance(bus, dict) else {}


def _number(given: float | None, table: dict[str, Any], key: str, default: float) -> float:
    """A flag's value, else the config table's, else the default; a bad type is one line."""
    if given is not None:
        return given
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise UsageError(f"config: {key!r} must be a number, not {value!r}")
    return float(value)


def run(args: argparse.Namespace) -> int:
    from rapid_objection.bus import Bus
    from rapid_objection.bus._constants import (
        CLAIM_IDLE,
        DEFAULT_HOOK_TIMEOUT,
        DEFAULT_MAX_DELIVERIES,
    )
    from rapid_objection.plugin_workers import (
        PluginLoadError,
        Worker,
        build_plugin,
        load_plugin_class,
    )

    table, bus_table = read_config(args.config, args.plugin) if args.config else ({}, {})
    if args.config_json:
        try:
            table = {**table, **json.loads(args.config_json)}
        except json.JSONDecodeError as exc:
            raise UsageError(f"--config-json is not valid JSON: {exc}") from None
    url = args.bus_url or bus_table.get("url") or DEFAULT_SERVER_URL
    if url.startswith("memory:"):
        raise UsageError(
            "a worker process cannot join memory:// (the embedded bus lives inside one "
            "registry process); give --bus-url redis://..."
        )
    if args.consumer is not None and ("|" in args.consumer or not args.consumer.strip()):
        raise UsageError(f"--consumer {args.consumer!r} must be non-empty without '|'")
    if args.concurrency < 1:
        raise UsageError(f"--concurrency must be at least 1, not {args.concurrency}")
    namespace = args.namespace or bus_table.get("namespace") or "default"
    config = dict(table.get("config", {}))
    if "" not in sys.path and os.getcwd() not in sys.path:
        # Like `python -m`: a plugin module in the working directory is importable.
        sys.path.insert(0, os.getcwd())
    plugin_class = load_plugin_class(args.plugin)
    try:
        plugin = build_plugin(plugin_class, config)
    except PluginLoadError as exc:
        # A supervising registry may be waiting for this worker: tell it why not.
        name = str(table.get("name") or plugin_class.__name__)
        anyio.run(_report, url, namespace, name, args.consumer or name, exc)
        raise
    timeout = _number(args.timeout, table, "timeout", DEFAULT_HOOK_TIMEOUT)
    max_deliveries = int(
        _number(args.max_deliveries, table, "max_deliveries", DEFAULT_MAX_DELIVERIES)
    )
    claim_idle = _number(args.claim_idle, table, "claim_idle", CLAIM_IDLE)
    for flag, value, least in (
        ("--timeout", timeout, 0.001),
        ("--max-deliveries", max_deliveries, 1),
        ("--claim-idle", claim_idle, 0.001),
    ):
        if value < least:
            raise UsageError(f"{flag} must be at least {least:g}, not {value:g}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    async def main() -> None:
        async with Bus.connect(url, namespace) as bus:
            worker = Worker(
                plugin,
                bus,
                consumer=args.consumer,
                concurrency=args.concurrency,
                config=config,
                timeout=timeout,
                required=args.required or bool(table.get("required", False)),
                max_deliveries=max_deliveries,
                claim_idle=claim_idle,
                name=table.get("name"),
            )
            async with anyio.create_task_group() as group:
                group.start_soon(_stop_on_signal, worker, group.cancel_scope)
                await worker.run()
                group.cancel_scope.cancel()

    anyio.run(main)
    return 0


async def _report(url: str, namespace: str, plugin: str, consumer: str, exc: Any) -> None:
    """Best effort: a bus that does not answer only loses the explanation."""
    from rapid_objection.bus import Bus, BusError, LoadError

    try:
        async with Bus.connect(url, namespace) as bus:
            with anyio.move_on_after(2):
                await bus.directory.report_load_error(
                    LoadError(
                        plugin=plugin,
                        consumer=consumer,
                        error=str(exc),
                        time=time.time(),
                        phase=getattr(exc, "phase", "build"),
                    )
                )
    except BusError:
        pass


async def _stop_on_signal(worker: Any, scope: anyio.CancelScope) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for _ in signals:
            logging.getLogger("rapid_objection.worker").info(
                "stopping %s: draining in-flight hooks", worker.consumer_name
            )
            worker.stop()
            return
