"""``rapid-objection run registry.toml``: a long-running registry.

It initializes an ``AppRegistry`` from the file (``--bus-url`` and ``--namespace``, or
their environment variables, override its ``[bus]`` table), prints which plugins loaded
and which failed, registers every ``[apps.*]`` table of the file (printing each step
with the plugins' acks), runs health monitoring when the file enables it, and serves
until SIGTERM or SIGINT. Then it shuts down: connection_shutdown for each app, plugins
unloaded (inline ones stopped, supervised workers stopped), bus closed; exit 0.

An app that fails to register is one line on stderr naming the app, the stage and the
error (its registration is rolled back: it leaves nothing behind). Then the registry
registers no further app, shuts down cleanly and exits 1: the file says these apps
are to be served, and they are not all there. With ``--keep-going`` it registers the
other apps, serves those that registered and says which failed; it then exits 0
after its clean shutdown, as usual.

A plugin that fails to load is reported. One marked ``required = true`` stays awaited,
as through the Python API: each of its hooks fails at once (``no_consumer``) while no
live worker of it runs, so with ``on_failure = "abort"`` no app registers without it,
and once a worker of it announces itself it is served again. A plugin that is not
required and fails to load is not awaited: the registry runs without it.

A stop requested while plugins load or an app registers takes effect once that step
ends (an app is never left half-registered); a second signal exits at once (status
130), without a clean shutdown, after killing the worker processes the registry
supervises (none is left running on its own). After a shutdown the process exits with
its status even when a plugin's plain ``def`` hook is still stuck in its thread.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
from msgspec.structs import replace

from rapid_objection.bus import Outcome, WaitResult, mask_url

from ._args import Parser, UsageError, add_bus_options
from ._logs import add_log_options, configure

if TYPE_CHECKING:
    from .._config import BusSection, RegistryConfig
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
    parser.add_argument(
        "--keep-going",
        action="store_true",
        help="serve the apps that registered when others fail (default: shut down, exit 1)",
    )
    add_log_options(parser, "warning")
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
    if min_replicas is not None and min_replicas < 0:
        raise UsageError(f"--min-replicas must be at least 0, not {min_replicas}")
    if overrides:
        config = replace(config, bus=replace(config.bus, **overrides))
    check_bus(config.bus, path)
    return config


def check_bus(bus: BusSection, path: Path) -> None:
    """The bus settings checked as the bus will check them, naming the key: a usage
    error before anything starts (or prints), not a failure once it has."""
    from rapid_objection.bus import BusUrlError, NamespaceError
    from rapid_objection.bus._keys import check_namespace
    from rapid_objection.bus._topology import parse

    from .._errors import ConfigError

    # The flags were checked as they were parsed: what fails here is the file's.
    checks: tuple[tuple[str, Callable[[str], object], str], ...] = (
        ("namespace", check_namespace, bus.namespace),
        ("url", parse, bus.connect_url),
    )
    for key, check, value in checks:
        try:
            check(value)
        except (NamespaceError, BusUrlError) as exc:
            error = ConfigError(str(exc), path=f"bus.{key}", file=str(path))
            raise UsageError(str(error)) from None


def load_args(args: argparse.Namespace) -> RegistryConfig:
    """``load`` of the command line's ``config`` and bus options."""
    return load(
        args.config,
        args.bus_url,
        args.namespace,
        cluster=args.cluster,
        min_replicas=args.min_replicas,
    )


def run(args: argparse.Namespace) -> int:
    from ._preflight import check_file

    config = load_args(args)
    check_file(config, args.config)
    configure(args)
    code: int = anyio.run(partial(serve, config, keep_going=args.keep_going))
    return code


def _exit_now(code: int) -> None:
    """A plain ``def`` hook still running in its thread would keep the process alive
    after the shutdown (the event loop and the interpreter wait for it): exit anyway."""
    warn("rapid-objection: a plugin's hook is still running in its thread; exiting anyway")
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


async def serve(config: RegistryConfig, *, keep_going: bool = False) -> int:
    """Run a registry from ``config`` until SIGTERM or SIGINT; returns the exit status.

    ``keep_going``: an app that fails to register does not stop the others.
    """
    from .._registry import AppRegistry

    registry = AppRegistry(config)
    stop = anyio.Event()
    # Signals are caught from the start: a stop during startup is still a clean one.
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with anyio.create_task_group() as group:
            group.start_soon(_watch, signals, stop, registry)
            try:
                code = await _serve(registry, stop, keep_going=keep_going)
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
        registry.plugins.abandon_loading()  # a startup waiting for workers ends now


async def _serve(registry: AppRegistry, stop: anyio.Event, *, keep_going: bool) -> int:
    config = registry.config
    say(f"registry {registry.id}: bus {mask_url(config.bus.url)}, namespace {config.bus.namespace}")
    registry.on("step", _print_step)
    registry.on("plugin-waiting", _print_waiting)
    try:
        result = await registry.initialize()
    except Exception:
        if registry.initialized:  # failed after the bus opened: close what is open
            await registry.shutdown()
        raise
    code = 0
    failed: list[str] = []
    try:
        _report_plugins(registry, result.loaded_plugins, result.failed_plugins)
        if stop.is_set():
            say("stop requested during startup: no app registered")
        else:
            failed = await _register_apps(registry, stop, keep_going=keep_going)
            if failed and not keep_going:
                code = 1
            elif not stop.is_set():
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
    if failed and not keep_going:
        warn(
            f"rapid-objection: app {', '.join(failed)} failed to register; the registry shut "
            "down (--keep-going serves the apps that register)"
        )
    if not done.success:
        warn(f"rapid-objection: shutdown was not clean: {'; '.join(done.errors)}")
        code = code or 1
    if not done.finished:
        _exit_now(code)
    return code


def _print_waiting(event: dict[str, Any]) -> None:
    say(
        f"plugin {event['name']}: waiting up to {event['timeout']:g}s for a worker to announce "
        f"itself (start one with `rapid-objection worker {event['module']} ...`)"
    )


def _report_plugins(
    registry: AppRegistry, loaded: list[str], failed: list[FailedPluginInfo]
) -> None:
    """Print each plugin's load outcome."""
    configured = registry.config.plugins
    for name in loaded:
        plugin = configured[name]
        policy = "required" if plugin.required else "optional"
        say(f"plugin {name}: loaded ({plugin.mode}, {policy}, on_failure {plugin.on_failure})")
    for failure in failed:
        table = configured.get(failure.name)
        if table is not None and table.required:
            outcome = (
                f"; required: each of its hooks fails (no live consumer) until a worker "
                f"of it runs, on_failure {table.on_failure}"
            )
        else:
            outcome = "; the registry runs without it"
        say(f"plugin {failure.name}: FAILED to load ({failure.phase}): {failure.error}{outcome}")
    if not configured:
        say("plugins: none configured")


async def _register_apps(
    registry: AppRegistry, stop: anyio.Event, *, keep_going: bool
) -> list[str]:
    """Register each app of the file in order; returns the apps that failed.

    The first failure stops the rest unless ``keep_going``.
    """
    # What the registry reports of a failed registration: the stage (the first error
    # event of the app) and a rollback that failed too (phase "rollback").
    reported: dict[str, list[dict[str, Any]]] = {}

    def collect(event: dict[str, Any]) -> None:
        reported.setdefault(str(event.get("app")), []).append(event)

    registry.on("error", collect)
    failed: list[str] = []
    apps = list(registry.config.apps.items())
    try:
        for index, (name, app) in enumerate(apps):
            if stop.is_set():
                say("stop requested: the remaining apps are not registered")
                break
            say(f"app {name}: registering")
            reported.pop(name, None)
            try:
                manager = await registry.register_app(name, app)
            except Exception as exc:  # reported; the caller decides whether to go on
                warn(_failure_line(name, exc, reported.get(name, [])))
                failed.append(name)
                rest = [other for other, _ in apps[index + 1 :]]
                if not keep_going and rest:
                    say(f"the remaining apps are not registered: {', '.join(rest)}")
                if not keep_going:
                    break
                continue
            url = mask_url(str(manager.status().get("url", "")))
            say(f"app {name}: registered" + (f" on {url}" if url else ""))
    finally:
        registry.off("error", collect)
    return failed


def _failure_line(name: str, exc: Exception, events: list[dict[str, Any]]) -> str:
    """One line: the app, the stage, the error, and a rollback that failed too."""
    stages = [event["phase"] for event in events if event.get("phase") != "rollback"]
    rollback = [event["error"] for event in events if event.get("phase") == "rollback"]
    at = f" at stage {stages[0]}" if stages else ""
    line = f"app {name}: registration FAILED{at}: {mask_url(str(exc))}"
    if rollback:
        line += f"; rolling it back failed too: {rollback[0]}"
    return line


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
