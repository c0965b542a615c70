"""``rapid-objection run registry.toml``: a long-running registry, run in a subprocess.

Most tests use the embedded bus (``memory://``), which lives inside the registry's own
process, with the demo's sample plugins running inline; the flag tests use the real Redis.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.abc import Process

from rapid_objection.bus import Bus, ConnectionInfo, Envelope, HealthCheck
from rapid_objection.bus.testing import purge
from rapid_objection.core import AppRegistry, PluginVeto
from rapid_objection.core._config import load_registry_config
from rapid_objection.plugin_workers import PluginInterface
from tests.e2e import CLI, REPO_ROOT, one_line_error, run_cli, subprocess_env

pytestmark = pytest.mark.anyio

SAMPLE = REPO_ROOT / "tests" / "core" / "sample_app"
SECRET_URL = "redis://user:hunter2@127.0.0.1:1/0"  # noqa: S105 - a fake password that must not show
READY = "running:"
"""What ``run`` prints once its apps are registered."""


class SlowShutdown(PluginInterface):
    """Takes ten seconds over each connection_shutdown: a slow clean shutdown."""

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        super().__init__("slow-shutdown", "1.0.0")

    async def on_connection_shutdown(
        self, app_name: str, connection: ConnectionInfo, options: dict[str, Any]
    ) -> None:
        await anyio.sleep(10)


class StuckHook:
    """A plain ``def`` hook that blocks its thread for a minute: it cannot be cancelled."""

    name = "stuck-hook"
    version = "1.0.0"

    async def initialize(self, registry: Any, config: dict[str, Any]) -> None:
        """Nothing to open."""

    async def shutdown(self) -> None:
        """Nothing to release."""

    def get_status(self) -> dict[str, Any]:
        return {}

    def on_app_registered(self, app_name: str, connection: ConnectionInfo, config: Any) -> None:
        time.sleep(60)


async def no_worker_left(namespace: str) -> None:
    """Wait (5 s at most) until no worker process of ``namespace`` runs."""
    with anyio.fail_after(5):
        while processes_with("worker", "--namespace", namespace):
            await anyio.sleep(0.05)


async def kill_workers_and_purge(redis_url: str, namespace: str) -> None:
    """After a test: SIGKILL the worker processes of ``namespace`` left, empty it."""
    for pid in processes_with("worker", "--namespace", namespace):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    async with Bus.connect(redis_url, namespace) as bus:
        await purge(bus)


def processes_with(*words: str) -> list[int]:
    """Pids of live processes whose command line holds every one of ``words``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            arguments = (entry / "cmdline").read_bytes().split(b"\0")
            if all(word.encode() in arguments for word in words):
                found.append(int(entry.name))
    return found


def registry_file(tmp_path: Path, body: str, *, registry: str = "") -> Path:
    """A registry file in ``tmp_path``: id ``run-test`` (and ``registry`` lines), the
    embedded bus, then ``body``."""
    path = tmp_path / "registry.toml"
    head = f'[registry]\nid = "run-test"\n{registry}\n[bus]\nurl = "memory://"\n'
    path.write_text(f"{head}ack_timeout = 3.0\n\n{body}")
    return path


def sqlite_app(tmp_path: Path, name: str) -> str:
    """An ``[apps.<name>]`` table: a SQLite file with the sample migrations and seeds."""
    return (
        f"[apps.{name}]\n"
        f'database.url = "sqlite:///{tmp_path / name}.db"\n'
        f'migrations.directory = "{SAMPLE / "migrations"}"\n'
        f'seeds.directory = "{SAMPLE / "seeds"}"\n\n'
    )


DEMO_PLUGINS = """
[plugins.audit-log]
module = "tests.core.demo_plugins:AuditLogPlugin"
required = true

[plugins.monitoring]
module = "tests.core.demo_plugins:MonitoringPlugin"

"""


def sqlite_tables(path: Path) -> set[str]:
    with contextlib.closing(sqlite3.connect(path)) as connection:
        rows = connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        return {name for (name,) in rows}


async def health_checks(bus: Bus) -> list[Envelope]:
    return [entry.envelope async for entry in bus.history.iterate(types=["health_check"])]


class Run:
    """One ``rapid-objection run`` process, its output in files."""

    def __init__(self, process: Process, out: Path, err: Path) -> None:
        self.process = process
        self.out_path, self.err_path = out, err

    @property
    def out(self) -> str:
        return self.out_path.read_text()

    @property
    def err(self) -> str:
        return self.err_path.read_text()

    async def printed(self, text: str, *, timeout: float = 30.0) -> None:
        """Wait until the process printed ``text`` on stdout."""
        with anyio.move_on_after(timeout):
            while self.process.returncode is None:
                if text in self.out:
                    return
                await anyio.sleep(0.05)
        if text not in self.out:
            pytest.fail(f"never printed {text!r}; stdout:\n{self.out}\nstderr:\n{self.err}")

    def signal(self, signum: signal.Signals) -> None:
        self.process.send_signal(signum)

    async def exit_code(self, *, timeout: float = 30.0) -> int:
        with anyio.fail_after(timeout):
            return await self.process.wait()


@asynccontextmanager
async def running(tmp_path: Path, *args: str) -> AsyncIterator[Run]:
    """``rapid-objection run *args``, killed at the end if it still runs."""
    out, err = tmp_path / "run.out", tmp_path / "run.err"
    files = [out.open("wb"), err.open("wb")]
    process = await anyio.open_process(
        [CLI, "run", *args],
        stdin=None,
        stdout=files[0],
        stderr=files[1],
        cwd=REPO_ROOT,
        env=subprocess_env(),
    )
    try:
        yield Run(process, out, err)
    finally:
        with anyio.CancelScope(shield=True):
            if process.returncode is None:
                process.kill()
            await process.wait()
            await process.aclose()
            for file in files:
                file.close()


class TestServe:
    @pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "sigint"])
    async def test_registers_the_apps_serves_and_stops_cleanly_on_a_signal(
        self, tmp_path: Path, signum: signal.Signals
    ) -> None:
        """Plugins loaded, each app registered with its steps and the plugins' acks, a
        line once it runs; SIGTERM or Ctrl-C shuts down (connections closed, plugins
        unloaded) and exits 0."""
        config = registry_file(tmp_path, DEMO_PLUGINS + sqlite_app(tmp_path, "shop"))
        async with running(tmp_path, str(config)) as run:
            await run.printed(READY)
            run.signal(signum)
            code = await run.exit_code()
        out = run.out
        assert code == 0, run.err
        assert run.err == ""
        assert "registry run-test: bus memory://, namespace default" in out
        assert "plugin audit-log: loaded (inline, required, on_failure continue)" in out
        assert "plugin monitoring: loaded (inline, optional, on_failure continue)" in out
        assert "shop app_registered: audit-log acked (run-test-audit-log" in out
        assert "app shop: registered on sqlite:///" in out
        assert "running: 1 of 1 apps registered (shop)" in out
        assert f"received {signum.name}: shutting down" in out
        [shutdown] = [line for line in out.splitlines() if line.startswith("shutdown in")]
        closed, unloaded = shutdown.split(": ", 1)[1].split("; ")
        assert closed == "connections of apps closed: shop"
        assert sorted(unloaded.removeprefix("plugins unloaded: ").split(", ")) == [
            "audit-log",
            "monitoring",
        ]
        assert (tmp_path / "shop.db").exists()

    async def test_with_keep_going_a_failing_app_is_reported_and_the_others_register(
        self, tmp_path: Path
    ) -> None:
        """``--keep-going``: an app that cannot connect is one line on stderr naming the
        stage (its password masked); the apps before and after it register, the
        registry serves them, says which failed, and exits 0 on SIGTERM."""
        broken = '[apps.broken]\ndatabase.url = "postgresql+psycopg://u:hunter2@127.0.0.1:1/x"\n\n'
        body = sqlite_app(tmp_path, "first") + broken + sqlite_app(tmp_path, "last")
        config = str(registry_file(tmp_path, body))
        async with running(tmp_path, config, "--keep-going") as run:
            await run.printed(READY)
            run.signal(signal.SIGTERM)
            code = await run.exit_code()
        assert code == 0, run.err
        [line] = run.err.splitlines()
        assert line.startswith(
            "app broken: registration FAILED at stage connection: app 'broken' cannot connect"
        )
        assert "hunter2" not in run.out + run.err
        assert "running: 2 of 3 apps registered (first, last); failed: broken" in run.out
        assert "plugins: none configured" in run.out

    async def test_an_app_that_fails_stops_the_registry_with_status_1(
        self, tmp_path: Path, redis_url: str, namespace: str
    ) -> None:
        """Without ``--keep-going`` the first app that fails to register is one line
        naming the app, the stage and the error; its registration is rolled back, the
        apps after it are not registered, and the registry shuts down cleanly (the
        connections closed, its supervised worker stopped) and exits 1."""
        plugins = (
            "[plugins.monitoring]\n"
            'module = "tests.core.demo_plugins:MonitoringPlugin"\nmode = "process"\n\n'
        )
        broken = sqlite_app(tmp_path, "broken") + 'models.module = "tests.core.no_such_models"\n\n'
        body = plugins + sqlite_app(tmp_path, "first") + broken + sqlite_app(tmp_path, "last")
        config = str(registry_file(tmp_path, body))
        # The log flags of run reach the worker it supervises: its lines are JSON too.
        logs = ("--log-level", "info", "--log-format", "json")
        args = (config, "--bus-url", redis_url, "--namespace", namespace, *logs)
        try:
            async with running(tmp_path, *args) as run:
                code = await run.exit_code()
            await no_worker_left(namespace)
        finally:
            with anyio.CancelScope(shield=True):
                await kill_workers_and_purge(redis_url, namespace)
        assert code == 1, run.err
        # The log records (the registry's and its worker's, JSON) share the stderr.
        lines = run.err.splitlines()
        records = [json.loads(line) for line in lines if line.startswith("{")]
        (banner,) = [record for record in records if "hooks" in record]
        assert (banner["logger"], banner["plugin"]) == ("rapid_objection.worker", "monitoring")
        failure, last = [line for line in lines if not line.startswith("{")]
        assert failure.startswith(
            "app broken: registration FAILED at stage models: models of app 'broken' from "
            "'tests.core.no_such_models' cannot be loaded"
        )
        assert last == (
            "rapid-objection: app broken failed to register; the registry shut down "
            "(--keep-going serves the apps that register)"
        )
        out = run.out
        assert "app first: registered" in out
        assert "the remaining apps are not registered: last" in out
        assert "app last: registering" not in out
        assert READY not in out
        assert "connections of apps closed: first;" in out
        assert "plugins unloaded: monitoring" in out
        # Rolled back: only the registry's bookkeeping (tracking tables, ownership fence).
        assert sqlite_tables(tmp_path / "broken.db") == {"ro_migrations", "ro_seeds", "ro_owners"}
        assert "users" in sqlite_tables(tmp_path / "first.db")

    async def test_health_monitoring_as_configured(
        self, tmp_path: Path, redis_url: str, namespace: str
    ) -> None:
        """With ``enable_health_monitoring``, the registry checks each app every interval:
        health_check events of the app reach the bus while it runs."""
        monitoring = "enable_health_monitoring = true\nhealth_check_interval = 0.2\n"
        config = registry_file(tmp_path, sqlite_app(tmp_path, "shop"), registry=monitoring)
        args = (str(config), "--bus-url", redis_url, "--namespace", namespace)
        async with Bus.connect(redis_url, namespace) as bus, running(tmp_path, *args) as run:
            try:
                await run.printed("health checks every 0.2s")
                with anyio.fail_after(10):
                    while len(await health_checks(bus)) < 2:
                        await anyio.sleep(0.1)
                run.signal(signal.SIGTERM)
                assert await run.exit_code() == 0, run.err
                [health, *_] = await health_checks(bus)
                assert health.app == "shop"
                assert isinstance(health.payload, HealthCheck)
                assert health.payload.health["status"] == "healthy"
            finally:
                with anyio.CancelScope(shield=True):
                    await purge(bus)

    async def test_a_second_signal_exits_at_once(self, tmp_path: Path) -> None:
        """While a clean shutdown waits on a slow plugin, a second signal exits at once
        with status 130."""
        slow = (
            "[plugins.slow-shutdown]\n"
            'module = "tests.core.test_cli_run:SlowShutdown"\nrequired = true\ntimeout = 20.0\n\n'
        )
        config = registry_file(tmp_path, slow + sqlite_app(tmp_path, "shop"))
        async with running(tmp_path, str(config)) as run:
            await run.printed(READY)
            run.signal(signal.SIGTERM)
            await run.printed("received SIGTERM: shutting down")
            await anyio.sleep(0.5)
            assert run.process.returncode is None, "the clean shutdown should still wait"
            run.signal(signal.SIGTERM)
            code = await run.exit_code(timeout=5)
        assert code == 130
        assert "received SIGTERM again: exiting at once" in run.err

    async def test_a_second_signal_leaves_no_supervised_worker_behind(
        self, tmp_path: Path, redis_url: str, namespace: str
    ) -> None:
        """The exit at once of a second signal first kills the worker processes the
        registry supervises: none of them outlives it."""
        plugins = (
            "[plugins.slow-shutdown]\n"
            'module = "tests.core.test_cli_run:SlowShutdown"\nrequired = true\ntimeout = 20.0\n\n'
            "[plugins.monitoring]\n"
            'module = "tests.core.demo_plugins:MonitoringPlugin"\nmode = "process"\n\n'
        )
        config = registry_file(tmp_path, plugins + sqlite_app(tmp_path, "shop"))
        args = (str(config), "--bus-url", redis_url, "--namespace", namespace)
        try:
            async with running(tmp_path, *args) as run:
                await run.printed(READY)
                workers = processes_with("worker", "--namespace", namespace)
                assert len(workers) == 1
                run.signal(signal.SIGTERM)
                await run.printed("received SIGTERM: shutting down")
                await anyio.sleep(0.5)
                run.signal(signal.SIGTERM)
                assert await run.exit_code(timeout=5) == 130
            await no_worker_left(namespace)
        finally:
            with anyio.CancelScope(shield=True):
                await kill_workers_and_purge(redis_url, namespace)

    async def test_a_stuck_plain_def_hook_does_not_keep_the_process_alive(
        self, tmp_path: Path
    ) -> None:
        """A plain def hook blocked in its thread past the shutdown: the process still
        exits, with the documented status of a shutdown that was not clean (1)."""
        stuck = (
            '[plugins.stuck-hook]\nmodule = "tests.core.test_cli_run:StuckHook"\ntimeout = 0.5\n\n'
        )
        config = registry_file(
            tmp_path, stuck + sqlite_app(tmp_path, "shop"), registry="shutdown_timeout = 2.0"
        )
        async with running(tmp_path, str(config)) as run:
            await run.printed(READY)
            run.signal(signal.SIGTERM)
            code = await run.exit_code(timeout=15)
        assert code == 1, run.err
        assert "shutdown was not clean" in run.err
        assert "a plugin's hook is still running in its thread; exiting anyway" in run.err

    async def test_a_stop_during_startup_registers_nothing_and_exits_cleanly(
        self, tmp_path: Path
    ) -> None:
        """While it waits for an external plugin's worker it says so; SIGTERM then ends
        the wait at once (not at the load timeout): no app is registered and the
        registry shuts down cleanly with status 0."""
        external = (
            "[plugin_manager]\nload_timeout = 30\n\n"
            '[plugins.elsewhere]\nmodule = "x:Y"\nmode = "external"\n\n'
        )
        config = registry_file(tmp_path, external + sqlite_app(tmp_path, "shop"))
        async with running(tmp_path, str(config)) as run:
            await run.printed("plugin elsewhere: waiting up to 30s for a worker")
            run.signal(signal.SIGTERM)
            started = time.monotonic()
            code = await run.exit_code()
            took = time.monotonic() - started
        assert code == 0, run.err
        assert took < 10, run.out  # the 30 s load timeout was not waited out
        assert "(start one with `rapid-objection worker x:Y ...`)" in run.out
        assert "plugin elsewhere: FAILED to load (manifest): the registry is stopping" in run.out
        assert "stop requested during startup: no app registered" in run.out
        assert "app shop: registered" not in run.out
        assert READY not in run.out


class TestRequiredPlugins:
    async def test_a_required_plugin_that_fails_to_load_stays_awaited(self, tmp_path: Path) -> None:
        """A plugin marked required that cannot be imported is reported, and stays
        awaited: with on_failure "continue" the app registers, each of its steps
        reporting that the plugin has no live consumer, and the registry serves."""
        body = (
            '[plugins.backup]\nmodule = "no_such_module:Backup"\nrequired = true\n\n'
            + DEMO_PLUGINS
            + sqlite_app(tmp_path, "shop")
        )
        async with running(tmp_path, str(registry_file(tmp_path, body))) as run:
            await run.printed(READY)
            run.signal(signal.SIGTERM)
            code = await run.exit_code()
        assert code == 0, run.err
        assert "Traceback" not in run.out + run.err
        assert "plugin audit-log: loaded" in run.out
        assert "plugin backup: FAILED to load (import): Failed to import plugin module" in run.out
        assert "required: each of its hooks fails (no live consumer) until a worker" in run.out
        [started] = [line for line in run.out.splitlines() if "app_registration_started" in line]
        assert "backup TIMED OUT: no live consumer of plugin 'backup'" in started
        assert "app shop: registered" in run.out

    async def test_an_abort_plugin_without_a_worker_vetoes_the_apps(self, tmp_path: Path) -> None:
        """A required plugin with on_failure "abort" whose worker never announced itself:
        reported at load, and each app's registration is vetoed at once (no live
        consumer), as through the Python API."""
        body = (
            "[plugin_manager]\nload_timeout = 0.5\n\n"
            '[plugins.gate]\nmodule = "x:Gate"\nmode = "external"\nrequired = true\n'
            'on_failure = "abort"\ntimeout = 20.0\n\n' + sqlite_app(tmp_path, "shop")
        )
        async with running(tmp_path, str(registry_file(tmp_path, body))) as run:
            await run.printed("app shop: registering")
            started = time.monotonic()
            with anyio.fail_after(10):
                while "app shop: registration FAILED" not in run.err:
                    await anyio.sleep(0.05)
            took = time.monotonic() - started
            if run.process.returncode is None:
                run.signal(signal.SIGTERM)
            await run.exit_code()
        assert "plugin gate: FAILED to load (manifest)" in run.out
        assert "on_failure abort" in run.out
        [failed] = [line for line in run.err.splitlines() if "registration FAILED" in line]
        assert failed.startswith("app shop: registration FAILED")
        assert failed.endswith(
            ": plugin 'gate' (no consumer) stopped app_registration_started of app 'shop': "
            "no live consumer of plugin 'gate'"
        )
        assert took < 5  # decided at once, not at the plugin's 20 s deadline
        assert "app shop: registered" not in run.out
        assert not (tmp_path / "shop.db").exists()

    @pytest.mark.parametrize("on_failure", ["abort", "continue"])
    async def test_the_cli_and_the_api_agree(self, tmp_path: Path, on_failure: str) -> None:
        """One registry file, a required plugin whose worker is not running: ``run``
        and ``AppRegistry`` load, report and register (or veto) alike."""
        body = (
            "[plugin_manager]\nload_timeout = 0.3\n\n"
            '[plugins.gate]\nmodule = "x:Gate"\nmode = "external"\nrequired = true\n'
            f'on_failure = "{on_failure}"\n\n' + sqlite_app(tmp_path, "shop")
        )
        path = registry_file(tmp_path, body)
        async with running(tmp_path, str(path)) as run:
            with anyio.fail_after(20):
                while "app shop: registered" not in run.out and "FAILED" not in run.err:
                    await anyio.sleep(0.05)
            if run.process.returncode is None:
                run.signal(signal.SIGTERM)
            await run.exit_code()
        assert "plugin gate: FAILED to load (manifest)" in run.out
        registered = "app shop: registered" in run.out
        failures = [line for line in run.err.splitlines() if "registration FAILED" in line]

        config = load_registry_config(path)
        async with AppRegistry(config) as registry:
            failed = [failure.name for failure in registry.plugins.failed.values()]
            veto: PluginVeto | None = None
            try:
                await registry.register_app("shop", config.apps["shop"])
            except PluginVeto as caught:
                veto = caught
            assert registry.has_app("shop") is registered
        assert failed == ["gate"]
        assert registered is (on_failure == "continue")
        if veto is None:
            assert failures == []
        else:
            # The same veto, word for word, as the line run printed.
            assert "no live consumer of plugin 'gate'" in str(veto)
            [line] = failures
            assert line.startswith("app shop: registration FAILED")
            assert line.endswith(f": {veto}")

    async def test_an_optional_plugin_that_fails_to_load_is_reported_only(
        self, tmp_path: Path
    ) -> None:
        """A plugin that is not required and fails to load: reported, and the registry
        runs its apps without it."""
        body = '[plugins.extra]\nmodule = "no_such_module:Extra"\n\n' + sqlite_app(tmp_path, "a")
        async with running(tmp_path, str(registry_file(tmp_path, body))) as run:
            await run.printed(READY)
            run.signal(signal.SIGTERM)
            assert await run.exit_code() == 0, run.err
        assert "plugin extra: FAILED to load (import)" in run.out
        assert "the registry runs without it" in run.out
        assert "app a: registered" in run.out


class TestBusFlags:
    async def test_flags_override_the_files_bus(
        self, tmp_path: Path, redis_url: str, namespace: str
    ) -> None:
        """``--bus-url`` and ``--namespace`` win over the file's [bus] table: the registry
        and its app show up in that namespace of the real Redis while it runs."""
        config = registry_file(tmp_path, sqlite_app(tmp_path, "shop"))
        args = (str(config), "--bus-url", redis_url, "--namespace", namespace)
        async with Bus.connect(redis_url, namespace) as bus, running(tmp_path, *args) as run:
            try:
                await run.printed(READY)
                assert f"bus {redis_url}, namespace {namespace}" in run.out
                assert await bus.directory.apps() == {"shop": "run-test"}
                with anyio.fail_after(5):  # the registry's next heartbeat names its apps
                    while [(r.id, r.apps) for r in await bus.directory.registries()] != [
                        ("run-test", ("shop",))
                    ]:
                        await anyio.sleep(0.1)
                run.signal(signal.SIGTERM)
                assert await run.exit_code() == 0, run.err
                assert await bus.directory.apps() == {}
                assert await bus.directory.registries() == []
                types = [entry.envelope.type async for entry in bus.history.iterate(app="shop")]
                assert types[-1] == "connection_shutdown"
            finally:
                with anyio.CancelScope(shield=True):
                    await purge(bus)

    async def test_an_unreachable_bus_is_one_line_without_the_password(
        self, tmp_path: Path
    ) -> None:
        """A bus that does not answer: one line naming its address, not its password."""
        config = registry_file(tmp_path, "")
        line = one_line_error(
            *await run_cli("run", str(config), "--bus-url", SECRET_URL), quiet=False
        )
        assert "127.0.0.1:1" in line
        assert "hunter2" not in line


class TestConfigErrors:
    @pytest.mark.parametrize(
        ("content", "expected"),
        [
            (None, "cannot read the file: No such file or directory"),
            ("[bus\n", "not valid TOML"),
            ('[bus]\nurl = "memory://"\nnamespase = "x"\n', "at bus.namespase: unknown key"),
            (
                '[apps.shop]\ndatabase.pool_size = "five"\n',
                "at apps.shop.database.pool_size: Expected `int | null`, got `str`",
            ),
            (
                '[plugins.audit]\nmodule = "x:Y"\nmode = "sidecar"\n',
                "at plugins.audit.mode: Invalid enum value 'sidecar' "
                "(one of 'inline', 'process', 'external')",
            ),
            ("[plugins.audit]\nrequired = true\n", "at plugins.audit.module: required"),
            (
                '[apps.shop]\nmigrations.directory = "."\n',
                "at apps.shop.database.url: a database URL (or dialect and its parts) is required",
            ),
            (
                '[apps.shop]\ndatabase.url = "sqlite://"\nseeds.directory = "no/such/dir"\n',
                "at apps.shop.seeds.directory: ",
            ),
            ('[bus]\nnamespace = "a b"\n', "at bus.namespace: invalid namespace 'a b'"),
            ('[bus]\nnamespace = ""\n', "at bus.namespace: invalid namespace ''"),
            ('[bus]\nurl = "http://x"\n', "at bus.url: invalid bus URL 'http://x'"),
        ],
        ids=[
            "missing",
            "not-toml",
            "unknown-key",
            "wrong-type",
            "bad-mode",
            "plugin-without-module",
            "app-without-database",
            "app-seeds-missing",
            "bad-namespace",
            "empty-namespace",
            "bad-url",
        ],
    )
    async def test_a_bad_registry_file_is_one_line_naming_the_file_and_key(
        self, tmp_path: Path, content: str | None, expected: str
    ) -> None:
        """A missing or invalid file: one line with the file and the dotted key, exit 2."""
        path = tmp_path / "registry.toml"
        if content is not None:
            path.write_text(content)
        code, out, err = await run_cli("run", str(path))
        line = one_line_error(code, out, err, quiet=False)
        assert code == 2
        assert out == ""
        assert str(path) in line
        assert expected in line

    @pytest.mark.parametrize(
        "argv",
        [["run"], ["run", "a.toml", "--nope"], ["run", "a.toml", "b.toml"]],
        ids=["no-file", "unknown-flag", "two-files"],
    )
    async def test_a_wrong_command_line_is_one_line(self, argv: list[str]) -> None:
        """A mistake on the command line: one line, exit 2."""
        code, out, err = await run_cli(*argv)
        one_line_error(code, out, err, quiet=False)
        assert code == 2

    @pytest.mark.parametrize(
        ("flag", "value", "expected"),
        [
            ("--namespace", "a:b", "invalid namespace 'a:b'"),
            ("--namespace", "a b", "invalid namespace 'a b'"),
            ("--namespace", "", "invalid namespace ''"),
            ("--bus-url", "http://x", "invalid bus URL 'http://x'"),
        ],
        ids=["reserved-character", "space", "empty", "url-scheme"],
    )
    async def test_a_bad_bus_flag_is_one_line_before_anything_runs(
        self, tmp_path: Path, flag: str, value: str, expected: str
    ) -> None:
        """A ``--namespace`` or ``--bus-url`` no bus can take: one usage line, exit 2,
        before the registry prints its header (nothing has started)."""
        config = registry_file(tmp_path, "")
        code, out, err = await run_cli("run", str(config), flag, value)
        line = one_line_error(code, out, err)
        assert code == 2
        assert expected in line
