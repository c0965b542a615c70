"""``rapid-objection run registry.toml``: a long-running registry.

It initializes an ``AppRegistry`` from the file (``--bus-url`` and ``--namespace``, or
their environment variables, override its ``[bus]`` table), prints which plugins loaded
and which failed, registers every ``[apps.*]`` table of the file (printing each step
with the plugins' acks; an app that fails is reported and the others go on), runs
health monitoring when the file enables it, and serves until SIGTERM or SIGINT. Then it
shuts down: connection_shutdown for each app, plugins unloaded (inline ones stopped),
bus closed; exit 0.

Exit 1, after a clean shutdown, when a plugin marked ``required = true`` failed to load:
the file says the registry must not run its apps without it. A plugin that is not
required and fails to load is reported, and the registry runs without it.

A stop requested while plugins load or an app registers takes effect once that step
ends (an app is never left half-registered); a second signal exits at once (status
130), without a clean shutdown, after killing the worker processes the registry
supervises (none is left running on its own). After a shutdown the process exits with
its status even when a plugin's plain ``def`` hook is still stuck in its thread.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
from msgspec.structs import replace

from rapid_objection.bus import Outcome, WaitResult, mask_url

from ._args import Parser, UsageError, add_bus_options

if TYPE_CHECKING:
    from .._config import RegistryConfig
    from .._registry import AppRegistry
    from .._results import FailedPluginInfo

EXIT_AT_ONCE = 130
"""The exit status after a second stop signal (as for an interrupted command)."""




def add_parser(commands: Any) -> None:
    parser: Parser = commands.add_parser(
        "run",
        help="run a registry: load plugins, register the file's apps, serve until SIGTERM",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("config", type=Path, metavar="registry.toml", help="the registry file")
    add_bus_options(parser, None)
    parser.set_defaults(run=run)


def say(line: str) -> None:
    print(line, flush=True)


def warn(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def load(
    path: Path,
    bus_url: str | None,
    namespace: str | None,
    *,
    cluster: bool | None = None,
    min_replicas: int | None = None,
) -> RegistryConfig:
    """The registry file with the command line's bus settings; ``UsageError`` names the key."""
    from .._config import load_registry_config
    from .._errors import ConfigError

    try:
        config = load_registry_config(path)
    except ConfigError as exc:
        raise UsageError(str(exc)) from None
    overrides = {
        key: value
        for key, value in (
            ("url", bus_url),
            ("namespace", namespace),
            ("cluster", cluster),
            ("min_replicas", min_replicas),
        )
        if value is not None
    }
    return replace(config, bus=replace(config.bus, **overrides)) if overrides else config


def run(args: argparse.Namespace) -> int:
    config = load(
        args.config,
        args.bus_url,
        args.namespace,
        cluster=args.cluster,
        min_replicas=args.min_replicas,
    )
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    code: int = anyio.run(serve, config)
    return code


def _exit_now(code: int) -> None:
    """A plain ``def`` hook still running in its thread would keep the process alive
    after the shutdown (the event loop and the interpreter wait for it): exit anyway."""
    warn("rapid-objection: a plugin's hook is still running in its thread; exiting anyway")
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


async def serve(config: RegistryConfig) -> int:
    """Run a registry from ``config`` until SIGTERM or SIGINT; returns the exit status."""
    from .._registry import AppRegistry

    registry = AppRegistry(config)
    stop = anyio.Event()
    # Signals are caught from the start: a stop during startup is still a clean one.
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with anyio.create_task_group() as group:
            group.start_soon(_watch, signals, stop, registry)
            try:
                code = await _serve(registry, stop)
            finally:
                group.cancel_scope.cancel()
    return code


async def _watch(
    signals: AsyncIterator[signal.Signals], stop: anyio.Event, registry: AppRegistry
) -> None:
    async for signum in signals:
        name = signum.name
        if stop.is_set():
            warn(f"received {name} again: exiting at once, without a clean shutdown")
            # Its supervised workers live in sessions of their own: kill them, or they
            # would outlive the registry.
            registry.plugins.kill_processes()
            os._exit(EXIT_AT_ONCE)
        say(f"received {name}: shutting down (send it again to exit at once)")
        stop.set()


async def _serve(registry: AppRegistry, stop: anyio.Event) -> int:
    config = registry.config
    say(f"registry {registry.id}: bus {mask_url(config.bus.url)}, namespace {config.bus.namespace}")
    registry.on("step", _print_step)
    try:
        result = await registry.initialize()
    except Exception:
        if registry.initialized:  # failed after the bus opened: close what is open
            await registry.shutdown()
        raise
    code = 0
    try:
        missing = _report_plugins(registry, result.loaded_plugins, result.failed_plugins)
        if missing:
            code = 1
        elif stop.is_set():
            say("stop requested during startup: no app registered")
        else:
            await _register_apps(registry, stop)
            if not stop.is_set():
                _announce(registry)
                await stop.wait()
    finally:
        done = await registry.shutdown()
        apps = ", ".join(done.apps_shut_down) or "none"
        plugins = ", ".join(done.plugins_shut_down) or "none"
        say(
            f"shutdown in {done.duration:.2f}s: connections of apps closed: {apps}; "
            f"plugins unloaded: {plugins}"
        )
    if missing:
        reasons = "; ".join(f"{name}: {error}" for name, error in missing)
        warn(f"rapid-objection: required plugins did not load ({reasons})")
    if not done.success:
        warn(f"rapid-objection: shutdown was not clean: {'; '.join(done.errors)}")
        code = code or 1
    if not done.finished:
        _exit_now(code)
    return code


def _report_plugins(
    registry: AppRegistry, loaded: list[str], failed: list[FailedPluginInfo]
) -> list[tuple[str, str]]:
    """Print each plugin's load outcome; returns the required ones that failed."""
    configured = registry.config.plugins
    for name in loaded:
        plugin = configured[name]
        policy = "required" if plugin.required else "optional"
        say(f"plugin {name}: loaded ({plugin.mode}, {policy}, on_failure {plugin.on_failure})")
    missing: list[tuple[str, str]] = []
    for failure in failed:
        table = configured.get(failure.name)
        required = table is not None and table.required
        say(
            f"plugin {failure.name}: FAILED to load ({failure.phase}): {failure.error}"
            + ("" if required else "; the registry runs without it")
        )
        if required:
            missing.append((failure.name, failure.error))
    if not configured:
        say("plugins: none configured")
    return missing


async def _register_apps(registry: AppRegistry, stop: anyio.Event) -> None:
    """Register each app of the file in order; one that fails does not stop the others."""
    for name, app in registry.config.apps.items():
        if stop.is_set():
            say("stop requested: the remaining apps are not registered")
            return
        say(f"app {name}: registering")
        try:
            manager = await registry.register_app(name, app)
        except Exception as exc:  # reported, and the next app goes on
            warn(f"app {name}: registration FAILED: {mask_url(str(exc))}")
            continue
        url = mask_url(str(manager.status().get("url", "")))
        say(f"app {name}: registered" + (f" on {url}" if url else ""))


def _announce(registry: AppRegistry) -> None:
    apps = registry.get_all_apps()
    wanted = list(registry.config.apps)
    failed = [name for name in wanted if name not in apps]
    names = ", ".join(apps) or "none"
    line = f"running: {len(apps)} of {len(wanted)} apps registered ({names})"
    if failed:
        line += f"; failed: {', '.join(failed)}"
    settings = registry.config.registry
    if settings.enable_health_monitoring:
        line += f"; health checks every {settings.health_check_interval:g}s"
    say(line + "; SIGTERM or Ctrl-C stops the registry")


def _outcome(outcome: Outcome) -> str:
    held = f" by {outcome.consumer}" if outcome.consumer else ""
    if outcome.status == "acked":
        took = f", {outcome.duration * 1000:.0f} ms" if outcome.duration is not None else ""
        return f"{outcome.plugin} acked ({outcome.consumer}{took})"
    if outcome.status == "skipped":
        return f"{outcome.plugin} skipped{held}"
    if outcome.status == "failed":
        return f"{outcome.plugin} FAILED{held}: {outcome.error}"
    return f"{outcome.plugin} TIMED OUT{held}: {outcome.error}"


def _print_step(payload: dict[str, Any]) -> None:
    result: WaitResult = payload["result"]
    answers = [_outcome(o) for o in (*result.outcomes.values(), *result.others.values())]
    said = ", ".join(answers) if answers else "no plugin awaited"
    say(f"  {payload['app']} {payload['event']}: {said}")
