"""``rapid-objection worker module:Class``: run one consumer of a plugin's group."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import time
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

from rapid_objection.bus._constants import DEFAULT_NAMESPACE
from rapid_objection.bus._topology import with_options
from rapid_objection.plugin_workers._settings import ENV_PARENT_PID, ENV_WORKER_TABLE

from ._args import DEFAULT_SERVER_URL, Parser, UsageError, add_bus_options, add_keyring_option
from ._logs import add_log_options, configure

if TYPE_CHECKING:
    from rapid_objection.bus import Bus
    from rapid_objection.bus._dlq_bounds import DeadLetterBounds
    from rapid_objection.bus._keyring import Keyring
    from rapid_objection.plugin_workers._settings import WorkerTable

    from .._config import PluginConfig


def add_parser(commands: Any) -> None:
    parser: Parser = commands.add_parser(
        "worker", help="run a plugin worker (one consumer of the plugin's group)"
    )
    parser.add_argument("plugin", help="module:Class or an entry-point name")
    parser.add_argument("--config", type=Path, help="TOML file with the plugin's configuration")
    add_bus_options(parser, None)
    add_keyring_option(parser, "this plugin's export of the keyring: events and acks are signed")
    parser.add_argument("--consumer", help="a stable consumer name (default: host-pid-random)")
    parser.add_argument(
        "--concurrency", type=int, help="hooks run at once, for different apps (default 1)"
    )
    parser.add_argument("--timeout", type=float, help="hook timeout in seconds (default 5)")
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
        default=os.environ.get(ENV_WORKER_TABLE),
        help="the plugin's table as JSON (name, config, required and the worker settings), "
        f"instead of the file's; a supervising registry passes it in env {ENV_WORKER_TABLE}, "
        "out of sight of ps",
    )
    add_log_options(parser, "info")
    parser.set_defaults(run=run)


def read_config(
    path: Path, target: str, *, bus_url: str | None = None, namespace: str | None = None
) -> tuple[PluginConfig, dict[str, Any]]:
    """(plugin table, bus table) from a worker's TOML file.

    A file with any of the registry's tables (``[bus]``, ``[plugins]``, ``[apps]``...)
    is a registry file: read and checked as ``run`` reads it with the same ``bus_url``
    and ``namespace`` flags (a typo in ``[bus]`` is the same error). Its plugin table is
    the ``[plugins.<name>]`` whose ``module`` is ``target``, else the one named
    ``target``, else the only one. Any other file is the plugin's configuration itself.
    """
    from .._config import PluginConfig, RegistryConfig, expand_environment
    from .._errors import ConfigError
    from ._run import load

    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise UsageError(f"cannot read config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"config file {path} is not valid TOML: {exc}") from None
    # Tables, not keys: a plugin's own configuration may well have a key ``apps``.
    registry_tables = set(RegistryConfig.__struct_fields__)
    if not any(isinstance(data[key], dict) for key in registry_tables & data.keys()):
        try:
            return PluginConfig(config=expand_environment(data, file=str(path))), {}
        except ConfigError as exc:
            raise UsageError(str(exc)) from None
    plugins = load(path, bus_url, namespace).plugins
    chosen = [name for name, table in plugins.items() if table.module == target] or [
        name for name in plugins if name == target or len(plugins) == 1
    ]
    if not chosen:
        # Running without the configuration the file was meant to give is worse than
        # not running: the plugin would start with its defaults, unnoticed.
        raise UsageError(
            f"registry file {path} has no table for plugin {target!r} "
            f"(no [plugins.<name>] with module = {target!r} or named {target!r})"
        )
    # Checked by ``load`` already: the expansion cannot fail now.
    bus = expand_environment(data.get("bus", {}), file=str(path), path="bus")
    return plugins[chosen[0]], bus


def worker_table(args: argparse.Namespace) -> tuple[WorkerTable, dict[str, Any]]:
    """(what this worker runs with, the file's bus table): the file's plugin table, or the
    one handed as JSON, with the command line's flags over its worker settings."""
    import msgspec

    from rapid_objection.plugin_workers._settings import WorkerTable

    from .._config import PluginConfig, convert
    from .._errors import ConfigError

    table, bus_table = (
        read_config(args.config, args.plugin, bus_url=args.bus_url, namespace=args.namespace)
        if args.config
        else (None, {})
    )
    if args.config_json:
        try:
            handed = WorkerTable.decode(args.config_json)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise UsageError(f"--config-json: {exc}") from None
    else:
        base = table or PluginConfig()
        handed = WorkerTable.of(None, base.config, base)
    flags = {
        "timeout": args.timeout,
        "max_deliveries": args.max_deliveries,
        "claim_idle": args.claim_idle,
        "concurrency": args.concurrency,
    }
    given = {key: value for key, value in flags.items() if value is not None}
    try:
        handed = convert({**msgspec.structs.asdict(handed), **given}, WorkerTable)
    except ConfigError as exc:
        # Only a flag can be out of bounds here: the file and the JSON were checked.
        raise UsageError(f"--{exc.path.replace('_', '-')}: {exc.reason}") from None
    if table is not None and table.required:
        handed = msgspec.structs.replace(handed, required=True)
    return handed, bus_table


def run(args: argparse.Namespace) -> int:
    from rapid_objection.plugin_workers import (
        PluginLoadError,
        Worker,
        build_plugin,
        load_plugin_class,
    )
    from rapid_objection.plugin_workers._loader import validate_interface
    from rapid_objection.plugin_workers._worker import plugin_name

    table, bus_table = worker_table(args)
    url = args.bus_url or bus_table.get("url") or DEFAULT_SERVER_URL
    url = with_options(url, cluster=args.cluster, min_replicas=args.min_replicas)
    if url.startswith("memory:"):
        raise UsageError(
            "a worker process cannot join memory:// (the embedded bus lives inside one "
            "registry process); give --bus-url redis://..."
        )
    if args.consumer is not None and ("|" in args.consumer or not args.consumer.strip()):
        raise UsageError(f"--consumer {args.consumer!r} must be non-empty without '|'")
    namespace = args.namespace or bus_table.get("namespace") or DEFAULT_NAMESPACE
    config = dict(table.config)
    if "" not in sys.path and os.getcwd() not in sys.path:
        # Like `python -m`: a plugin module in the working directory is importable.
        sys.path.insert(0, os.getcwd())
    try:
        plugin_class = load_plugin_class(args.plugin)
        validate_interface(plugin_class)  # as the registry checks it, with the same message
    except PluginLoadError as exc:
        # A supervising registry waits for this plugin under its table's name: tell it
        # why not (import or interface), or it only sees the process exit.
        if table.name:
            anyio.run(_report, url, namespace, table.name, args.consumer or table.name, exc)
        raise
    try:
        plugin = build_plugin(plugin_class, config)
    except PluginLoadError as exc:
        # A supervising registry may be waiting for this worker: tell it why not.
        name = table.name or plugin_class.__name__
        anyio.run(_report, url, namespace, name, args.consumer or name, exc)
        raise
    configure(args)
    keyring = _keyring(args.keyring, table.name or plugin_name(plugin))

    parent = _supervising_parent()

    dead_letters = table.dead_letters or _dead_letter_bounds(bus_table, args.config)

    async def main() -> None:
        async with await _connected(url, namespace, dead_letters, keyring) as bus:
            worker = Worker(
                plugin,
                bus,
                settings=table,
                consumer=args.consumer,
                config=config,
                required=args.required or table.required,
                name=table.name,
            )
            async with anyio.create_task_group() as group:
                group.start_soon(_stop_on_signal, worker, group.cancel_scope)
                if parent is not None:
                    group.start_soon(_stop_with_parent, worker, parent)
                await worker.run()
                group.cancel_scope.cancel()
            consumer = worker.consumer
            # The counterpart of the startup banner: a log shows where a worker ended.
            logging.getLogger("rapid_objection.worker").info(
                "worker %s of plugin %s stopped: %d handled (%d failed, %d dead-lettered)",
                worker.consumer_name,
                worker.name,
                consumer.handled,
                consumer.failed,
                consumer.dead_lettered,
            )

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


def _dead_letter_bounds(bus_table: dict[str, Any], path: Path | None) -> DeadLetterBounds:
    """The ``dlq_*`` keys of the ``[bus]`` table of the worker's file (a registry's file),
    else their defaults: a worker caps the dead letters it writes as the registry does."""
    from .._config import BusSection, convert
    from .._errors import ConfigError

    try:
        return convert(bus_table, BusSection, prefix="bus").dead_letters
    except ConfigError as exc:
        raise UsageError(f"config file {path}: {exc}") from None


def _keyring(path: str | None, plugin: str) -> Keyring | None:
    """The worker's keys (an export of its plugin, or a whole ring holding its keys)."""
    if path is None:
        return None
    from rapid_objection.bus._keyring import Keyring

    keyring = Keyring.load(path)
    mine = keyring.keys.plugins.get(plugin, ())
    if keyring.plugin not in (None, plugin) or not any(key.secret for key in mine):
        raise UsageError(f"--keyring {path}: {keyring.describe()} holds no key of {plugin!r}")
    return keyring


async def _connected(
    url: str, namespace: str, dead_letters: DeadLetterBounds, keyring: Keyring | None = None
) -> Bus:
    """The opened bus; while Redis does not answer, try again with backoff, saying so
    once (a worker started before its Redis, as containers are, waits for it)."""
    from rapid_objection.bus import Bus, BusUnavailable
    from rapid_objection.bus._retry import Outage

    outage, said = Outage(), False
    while True:
        bus = Bus.connect(url, namespace, dead_letters=dead_letters, keyring=keyring)
        try:
            return await bus.open()
        except BusUnavailable as exc:
            await bus.close()
            if not said:
                logging.getLogger("rapid_objection.worker").warning(
                    # redis-py's reasons end with a full stop: not before the ";".
                    "%s; trying again until it answers",
                    str(exc).rstrip("."),
                )
                said = True
            await outage.pause()


PARENT_CHECK_INTERVAL = 1.0
"""Seconds between two looks at whether the supervising registry is still there."""


def _supervising_parent() -> int | None:
    """The supervising registry's pid, if this worker has one and it is still its parent.

    On Linux the kernel also sends SIGTERM when the parent dies (PR_SET_PDEATHSIG), so
    the worker drains at once; everywhere, the watcher below notices within a second.
    """
    value = os.environ.pop(ENV_PARENT_PID, None)
    if value is None or not value.isdigit() or os.getppid() != int(value):
        return None
    if sys.platform == "linux":
        import ctypes

        pr_set_pdeathsig = 1
        with contextlib.suppress(OSError, AttributeError):  # the watcher still notices
            ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
    return int(value)


async def _stop_with_parent(worker: Any, parent: int) -> None:
    """Stop (draining, as on SIGTERM) once the supervising registry is gone: a worker
    never outlives its registry, nor runs beside the workers of its next start."""
    # Polling: no event tells a process that its parent died (but PR_SET_PDEATHSIG).
    while os.getppid() == parent:  # noqa: ASYNC110
        await anyio.sleep(PARENT_CHECK_INTERVAL)
    logging.getLogger("rapid_objection.worker").warning(
        "stopping %s: its registry (pid %d) is gone", worker.consumer_name, parent
    )
    worker.stop()


async def _stop_on_signal(worker: Any, scope: anyio.CancelScope) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for _ in signals:
            logging.getLogger("rapid_objection.worker").info(
                "stopping %s: draining in-flight hooks", worker.consumer_name
            )
            worker.stop()
            return
