"""The ``rapid-objection`` command line, run in a subprocess the way users run it."""

from __future__ import annotations

import json
import secrets
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

from rapid_objection.bus import AppRegistered, Bus, ConnectionInfo, Publisher, mask_url
from rapid_objection.bus._publisher import PluginPolicy
from rapid_objection.core._cli import main
from rapid_objection.plugin_workers import PluginInterface
from rapid_objection.plugin_workers.testing import running_worker
from tests.conftest import MISSING_DATABASE_PASSWORD
from tests.e2e import REPO_ROOT, one_line_error, run_cli, subprocess_env
from tests.topologies import Servers, free_ports

pytestmark = pytest.mark.anyio

PLUGIN = "cli-probe"
REGISTRY = "cli-registry"
SECRET_URL = "redis://user:hunter2@127.0.0.1:1/0"  # noqa: S105 - a fake password that must not show
"""Nothing listens on port 1: connecting fails at once, and the password must not show."""


class Probe(PluginInterface):
    def __init__(self) -> None:
        super().__init__(PLUGIN, "2.3.4")

    async def on_app_registered(
        self, app_name: str, connection: ConnectionInfo, config: dict[str, Any]
    ) -> str:
        return app_name


@pytest.fixture
def consumer() -> str:
    """A consumer name as long as the default ``host-pid-xxxx`` ones."""
    return f"probe-worker-{secrets.token_hex(6)}"


@asynccontextmanager
async def live(bus: Bus, consumer: str) -> AsyncIterator[None]:
    """A registry that published one event and a worker of ``PLUGIN`` that acked it."""
    policies = {PLUGIN: PluginPolicy(required=True)}
    async with (
        running_worker(Probe(), bus, consumer=consumer, required=True),
        Publisher(bus, REGISTRY, policies=policies) as publisher,
    ):
        event = AppRegistered(connection=ConnectionInfo(dialect="sqlite"))
        assert (await publisher.emit(event, app="shop", timeout=5)).ok
        yield


class TestStatus:
    async def test_json_lists_registries_plugins_and_their_consumers(
        self, redis_bus: Bus, redis_url: str, consumer: str
    ) -> None:
        """``status --json`` is one JSON object naming the live registry, the plugin with
        its manifest, and the plugin's consumer, alive."""
        async with live(redis_bus, consumer):
            code, out, err = await run_cli(
                "status", "--json", "--bus-url", redis_url, "--namespace", redis_bus.namespace
            )
        assert code == 0, err
        report = json.loads(out)
        assert report["namespace"] == redis_bus.namespace
        assert report["events"] == 1
        assert [(r["info"]["id"], r["alive"]) for r in report["registries"]] == [(REGISTRY, True)]
        (plugin,) = report["plugins"]
        assert (plugin["name"], plugin["version"], plugin["required"]) == (PLUGIN, "2.3.4", True)
        assert plugin["hooks"] == ["app_registered"]
        assert [(c["name"], c["alive"], c["pending"]) for c in plugin["consumers"]] == [
            (consumer, True, 0)
        ]

    async def test_table_names_the_plugin_and_its_consumer(
        self, redis_bus: Bus, redis_url: str, consumer: str
    ) -> None:
        """``status`` prints tables in which the plugin and consumer names appear whole,
        also when the output is not a terminal."""
        async with live(redis_bus, consumer):
            code, out, err = await run_cli(
                "status", "--bus-url", redis_url, "--namespace", redis_bus.namespace
            )
        assert code == 0, err
        assert PLUGIN in out
        assert consumer in out
        assert REGISTRY in out

    async def test_unreachable_bus_is_one_line_naming_the_address_not_the_password(
        self,
    ) -> None:
        """A bus that does not answer: one line with host and port, without the password."""
        line = one_line_error(*await run_cli("status", "--bus-url", SECRET_URL))
        assert "127.0.0.1:1" in line
        assert "hunter2" not in line


class TestWorker:
    async def test_a_worker_waits_for_its_redis_saying_so_once(self, tmp_path: Path) -> None:
        """A worker started before its Redis says once, naming the address and not the
        password, that the bus does not answer, keeps trying with backoff, and starts
        working as soon as a server answers there."""
        [port] = free_ports(1)
        url = f"redis://:hunter2@127.0.0.1:{port}/0"
        namespace = f"t-{secrets.token_hex(6)}"
        log = tmp_path / "worker.log"
        command = [sys.executable, "-m", "rapid_objection.core._cli", "worker"]
        command += ["tests.e2e.plugins:PluginA", "--bus-url", url, "--namespace", namespace]
        servers = Servers(tmp_path / "redis")
        with log.open("wb") as output:
            process = await anyio.open_process(
                command, stdout=output, stderr=output, cwd=REPO_ROOT, env=subprocess_env()
            )
        try:
            await anyio.sleep(2.5)
            assert process.returncode is None, log.read_text()
            waiting = [
                line
                for line in log.read_text().splitlines()
                if "does not" in line or "unavailable" in line
            ]
            assert len(waiting) == 1, log.read_text()
            assert f"127.0.0.1:{port}" in waiting[0]
            assert "hunter2" not in log.read_text()
            await anyio.to_thread.run_sync(servers.start, port, "--requirepass", "hunter2")
            async with Bus.connect(url, namespace) as bus:
                with anyio.fail_after(15):
                    while not await bus.directory.workers():
                        await anyio.sleep(0.1)
        finally:
            process.terminate()
            with anyio.move_on_after(10, shield=True):
                await process.wait()
            await process.aclose()
            servers.close()

    @pytest.mark.parametrize(
        ("target", "expected"),
        [
            ("no_such_module:X", "Failed to import plugin module 'no_such_module'"),
            ("tests.e2e.plugins:Nope", "Failed to import plugin module 'tests.e2e.plugins'"),
        ],
        ids=["missing-module", "missing-class"],
    )
    async def test_a_plugin_that_does_not_import_is_named_in_one_line(
        self, target: str, expected: str
    ) -> None:
        """A plugin that cannot be imported: the seed's error text, one line."""
        line = one_line_error(*await run_cli("worker", target, "--bus-url", SECRET_URL))
        assert expected in line

    async def test_a_plugin_whose_constructor_fails_is_one_line_with_the_reason(self) -> None:
        """A plugin class that rejects its configuration: one line naming it and why."""
        target = "tests.e2e.plugins:FailsToBuild"
        line = one_line_error(*await run_cli("worker", target, "--bus-url", SECRET_URL))
        assert "FailsToBuild" in line
        assert "option 'directory' is required" in line

    async def test_a_plugin_whose_initialize_fails_is_one_line_with_the_reason(
        self, redis_bus: Bus, redis_url: str
    ) -> None:
        """A plugin whose ``initialize`` raises: one line naming it and why, exit non-zero."""
        line = one_line_error(
            *await run_cli(
                "worker",
                "tests.e2e.plugins:FailsToInitialize",
                "--bus-url",
                redis_url,
                "--namespace",
                redis_bus.namespace,
            )
        )
        assert "e2e-fails-to-initialize" in line or "FailsToInitialize" in line
        assert "backup directory /nonexistent is not writable" in line

    async def test_a_wrong_value_in_the_config_file_is_one_line(self, tmp_path: Path) -> None:
        """A config file whose plugin table has a value of the wrong type: one line."""
        config = tmp_path / "worker.toml"
        config.write_text('[plugins.a]\nmodule = "tests.e2e.plugins:PluginA"\ntimeout = "soon"\n')
        argv = ["worker", "tests.e2e.plugins:PluginA", "--config", str(config)]
        line = one_line_error(*await run_cli(*argv, "--bus-url", SECRET_URL))
        assert "timeout" in line

    async def test_a_registry_file_is_refused_as_run_refuses_it(self, tmp_path: Path) -> None:
        """``worker audit --config`` of a registry file with a typo in ``[bus]`` (and no
        plugin table) is refused as ``run`` refuses it: the same line, exit 2, instead of
        a worker started in namespace ``default`` with the file as the plugin's config."""
        config = tmp_path / "typo2.toml"
        config.write_text('[bus]\nurl = "redis://127.0.0.1:1/0"\nnamespce = "probe-x"\n')
        worker = await run_cli("worker", "audit", "--config", str(config), timeout=15)
        registry = await run_cli("run", str(config))
        assert worker == registry
        assert worker[0] == 2
        line = one_line_error(*worker)
        assert f"invalid configuration in {config} at bus.namespce: unknown key" in line

    async def test_a_registry_file_without_the_plugins_table_is_one_line(
        self, tmp_path: Path
    ) -> None:
        """A registry file with no table for the plugin: one line naming both, exit 2."""
        config = tmp_path / "registry.toml"
        config.write_text('[bus]\nurl = "redis://127.0.0.1:1/0"\nnamespace = "probe-x"\n')
        code, out, err = await run_cli("worker", "audit", "--config", str(config), timeout=15)
        line = one_line_error(code, out, err)
        assert code == 2
        assert f"registry file {config} has no table for plugin 'audit'" in line

    @pytest.mark.parametrize("url", ["memory://", "memory://shared"], ids=["bare", "named"])
    async def test_the_embedded_bus_is_refused(self, url: str) -> None:
        """A worker process cannot join an embedded bus, which lives inside one process."""
        line = one_line_error(
            *await run_cli("worker", "tests.e2e.plugins:PluginA", "--bus-url", url)
        )
        assert "memory://" in line


class TestRefusedBus:
    @pytest.mark.parametrize(
        "argv",
        [
            ["status"],
            ["replay"],
            ["dlq", "list"],
            ["groups", "drop", PLUGIN],
            ["worker", "tests.e2e.plugins:PluginA"],
            ["dashboard"],
            ["run", "{config}"],
            ["migrate", "shop", "--config", "{config}"],
        ],
        ids=[
            "status",
            "replay",
            "dlq-list",
            "groups-drop",
            "worker",
            "dashboard",
            "run",
            "migrate",
        ],
    )
    async def test_a_database_the_server_lacks_is_one_line_and_exit_1(
        self, missing_database_url: str, tmp_path: Path, argv: list[str]
    ) -> None:
        """A bus URL naming a database the server does not have: every command (a worker
        too, instead of waiting forever) exits 1 with one line naming the URL without its
        password and the server's reason."""
        config = tmp_path / "registry.toml"
        config.write_text(
            '[registry]\nid = "refused"\n[bus]\nurl = "memory://"\n\n'
            f'[apps.shop]\ndatabase.url = "sqlite:///{tmp_path / "shop.db"}"\n'
        )
        argv = [arg.format(config=config) for arg in argv]
        code, out, err = await run_cli(*argv, "--bus-url", missing_database_url, timeout=20)
        line = one_line_error(code, out, err, quiet=False)
        assert code == 1
        assert line.endswith(": SELECT refused: ERR DB index is out of range")
        assert mask_url(missing_database_url) in line
        assert MISSING_DATABASE_PASSWORD not in out + err


class TestUsage:
    @pytest.mark.parametrize(
        "argv",
        [
            [],
            ["nope"],
            ["--nope"],
            ["status", "--nope"],
            ["status", "--failures", "many"],
            ["status", "--namespace", "a:b"],
            ["demo", "--nope"],
            ["dlq"],
            ["dlq", "list", "--nope"],
            ["worker"],
            ["worker", "x:Y", "--concurrency", "0"],
            ["worker", "x:Y", "--concurrency", "two"],
            ["worker", "x:Y", "--nope"],
            ["worker", "x:Y", "--config", "/nonexistent/worker.toml"],
            ["worker", "x:Y", "--config-json", "{"],
            ["worker", "tests.e2e.plugins:PluginA", "--namespace", "a:b"],
        ],
        ids=[
            "no-command",
            "unknown-command",
            "unknown-global-flag",
            "status-unknown-flag",
            "status-bad-number",
            "status-bad-namespace",
            "demo-unknown-flag",
            "dlq-without-subcommand",
            "dlq-list-unknown-flag",
            "worker-without-plugin",
            "worker-zero-concurrency",
            "worker-bad-concurrency",
            "worker-unknown-flag",
            "worker-missing-config",
            "worker-bad-config-json",
            "worker-bad-namespace",
        ],
    )
    async def test_a_wrong_command_line_is_one_line_and_a_non_zero_exit(
        self, argv: list[str]
    ) -> None:
        """Every mistake on the command line is answered with one line, never a traceback."""
        line = one_line_error(*await run_cli(*argv))
        assert line.startswith("rapid-objection")

    async def test_the_cli_package_runs_with_python_dash_m(self) -> None:
        """``python -m rapid_objection.core._cli`` runs the console script's command line."""
        with anyio.fail_after(30):
            done = await anyio.run_process(
                [sys.executable, "-m", "rapid_objection.core._cli", "--help"],
                check=False,
                cwd=REPO_ROOT,
                env=subprocess_env(),
            )
        assert done.returncode == 0, done.stderr.decode()
        assert b"rapid-objection" in done.stdout


BAD_BUS_OPTIONS = ["--namespace", ""], ["--namespace", "bad:ns"], ["--bus-url", "http://x"]
"""An empty namespace, one with a character the key scheme reserves, a URL no bus takes."""

TAKING_NAMESPACE = [
    ["status"],
    ["dlq", "list"],
    ["dlq", "redrive", "1-0"],
    ["replay"],
    ["dashboard"],
    ["groups", "drop", "audit"],
    ["worker", "x:Y"],
    ["run", "registry.toml"],
    ["migrate", "shop", "--config", "registry.toml"],
    ["seed", "shop", "--config", "registry.toml"],
    ["demo"],
]
"""A command line of every command that takes ``--namespace`` and ``--bus-url``."""


def in_process(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """``rapid-objection *argv`` in this process (for what is refused before any I/O)."""
    try:
        code = main(list(argv))
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


class TestBusOptions:
    @pytest.mark.parametrize("option", BAD_BUS_OPTIONS, ids=["empty", "reserved", "url"])
    @pytest.mark.parametrize("command", TAKING_NAMESPACE, ids=lambda argv: "-".join(argv[:2]))
    async def test_a_namespace_or_url_no_bus_takes_is_a_usage_error(
        self, capsys: pytest.CaptureFixture[str], command: list[str], option: list[str]
    ) -> None:
        """``--namespace ''`` (never taken for ``default``), ``--namespace bad:ns`` and
        ``--bus-url http://x`` are one usage line, exit 2, for every command."""
        code, out, err = in_process(capsys, *command, *option)
        line = one_line_error(code, out, err)
        assert code == 2
        assert f"invalid {'bus URL' if option[0] == '--bus-url' else 'namespace'}" in line
        assert repr(option[1]) in line

    @pytest.mark.parametrize("value", ["", "bad:ns"], ids=["empty", "reserved"])
    async def test_acl_refuses_a_bad_namespace_too(
        self, capsys: pytest.CaptureFixture[str], value: str
    ) -> None:
        """``acl`` (no bus URL) refuses the same namespaces the same way."""
        code, out, err = in_process(capsys, "acl", "--role", "registry", "--namespace", value)
        assert code == 2
        assert f"invalid namespace {value!r}" in one_line_error(code, out, err)

    async def test_an_empty_variable_counts_as_unset(
        self, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """``RAPID_OBJECTION_NAMESPACE=`` (as a shell leaves it) means the default."""
        monkeypatch.setenv("RAPID_OBJECTION_NAMESPACE", "")
        code, out, err = in_process(capsys, "acl", "--role", "registry")
        assert code == 0, err
        assert "~ro:{default}:*" in out

    async def test_a_malformed_variable_is_refused_as_the_flag_is(
        self, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A namespace in the environment that no bus takes: one usage line, exit 2."""
        monkeypatch.setenv("RAPID_OBJECTION_NAMESPACE", "a b")
        code, out, err = in_process(capsys, "status")
        assert code == 2
        assert "invalid namespace 'a b'" in one_line_error(code, out, err)


class NoLifecycle:
    """A class the registry refuses: it has no initialize, shutdown or get_status."""

    name = "no-lifecycle"


async def test_the_worker_command_refuses_what_the_registry_refuses() -> None:
    """``rapid-objection worker`` applies the registry's interface check, same message."""
    code, _, err = await run_cli(
        "worker", "tests.core.test_cli:NoLifecycle", "--bus-url", "redis://127.0.0.1:1/0"
    )
    assert code == 1, err
    assert "Plugin must implement initialize() method" in err
    assert len(err.strip().splitlines()) == 1
