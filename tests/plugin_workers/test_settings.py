"""A plugin's worker settings, described once: the registry's table, the table a
supervised worker is handed, the worker command line and ``Worker`` agree."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import msgspec
import pytest

from rapid_objection.bus._redis_memory import forget_memory_server
from rapid_objection.core import AppRegistry, ConfigError, PluginConfig
from rapid_objection.core._cli import build_parser
from rapid_objection.core._cli._args import UsageError
from rapid_objection.core._cli._worker import worker_table
from rapid_objection.plugin_workers import PluginInterface, WorkerSettings
from rapid_objection.plugin_workers._settings import WorkerTable

HERE = "tests.plugin_workers.test_settings"
SETTINGS: dict[str, Any] = {
    "timeout": 2.5,
    "max_deliveries": 3,
    "claim_idle": 0.5,
    "concurrency": 4,
}

OUT_OF_BOUNDS = [
    pytest.param("timeout", 0, id="timeout-zero"),
    pytest.param("max_deliveries", 0, id="max-deliveries-zero"),
    pytest.param("claim_idle", -1.0, id="claim-idle-negative"),
    pytest.param("concurrency", 0, id="concurrency-zero"),
]


class Validating(PluginInterface):
    """Keeps the configurations its validate_configuration was called with."""

    def __init__(self) -> None:
        super().__init__("validating", "1.0.0")
        self.validated: list[dict[str, Any]] = []

    def validate_configuration(self, config: dict[str, Any]) -> None:
        self.validated.append(config)


def worker_args(*argv: str) -> Any:
    return build_parser("worker").parse_args(["worker", f"{HERE}:Validating", *argv])


class TestRegistryTable:
    @pytest.mark.parametrize(("key", "value"), OUT_OF_BOUNDS)
    def test_bounds_are_checked_where_the_table_is_read(self, key: str, value: float) -> None:
        """A setting out of its bounds in ``[plugins.<name>]`` is a ConfigError naming the key."""
        with pytest.raises(ConfigError) as caught:
            AppRegistry({"plugins": {"p": {"module": f"{HERE}:Validating", key: value}}})
        assert caught.value.path == f"plugins.p.{key}"

    def test_plugin_config_embeds_the_worker_settings(self) -> None:
        """The registry's plugin table is a ``WorkerSettings``: the same keys and defaults."""
        settings = PluginConfig(module="m:C", **SETTINGS).worker_settings()
        assert settings == WorkerSettings(**SETTINGS)
        assert PluginConfig().worker_settings() == WorkerSettings()

    @pytest.mark.anyio
    async def test_an_inline_worker_runs_with_the_table_and_validates_once(self) -> None:
        """An inline plugin's worker gets the table's settings as they are, and the plugin's
        ``validate_configuration`` runs once (by the worker), not twice."""
        token = secrets.token_hex(4)
        bus = f"settings-{token}"
        table = {"module": f"{HERE}:Validating", "config": {"token": token}, **SETTINGS}
        registry = AppRegistry({"bus": {"url": f"memory://{bus}"}, "plugins": {"v": table}})
        try:
            await registry.initialize()
            loaded = registry.plugins.loaded("v")
            assert loaded is not None
            assert loaded.worker is not None
            assert loaded.worker.settings == WorkerSettings(**SETTINGS)
            (heartbeat,) = await loaded.worker.bus.directory.workers("v")
            assert heartbeat.concurrency == SETTINGS["concurrency"]
            assert loaded.instance.validated == [{"token": token}]
        finally:
            await registry.shutdown()
            forget_memory_server(bus)


class TestHandedTable:
    def test_round_trip(self) -> None:
        """What a supervising registry encodes is what the worker process decodes."""
        table = WorkerTable.of("audit", {"url": "sqlite://"}, PluginConfig(**SETTINGS))
        assert WorkerTable.decode(table.encode()) == table
        assert table.worker_settings() == WorkerSettings(**SETTINGS)

    def test_worker_reads_the_handed_table(self) -> None:
        """``--config-json`` (the supervisor's environment variable) sets name, config and
        settings."""
        handed = WorkerTable.of("audit", {"k": "v"}, WorkerSettings(**SETTINGS))
        table, bus = worker_table(worker_args("--config-json", handed.encode()))
        assert (table, bus) == (handed, {})

    @pytest.mark.parametrize(("key", "value"), OUT_OF_BOUNDS)
    def test_a_handed_value_out_of_bounds_is_refused(self, key: str, value: float) -> None:
        """A handed setting out of bounds is one usage line naming it."""
        text = msgspec.json.encode({key: value}).decode()
        with pytest.raises(UsageError, match=rf"--config-json: .* `\$\.{key}`"):
            worker_table(worker_args("--config-json", text))


class TestWorkerCommandLine:
    def test_flags_beat_the_file(self, tmp_path: Path) -> None:
        """The registry file's table gives the settings; a flag overrides its one key."""
        registry_file = tmp_path / "registry.toml"
        registry_file.write_text(
            f'[plugins.validating]\nmodule = "{HERE}:Validating"\nrequired = true\n'
            "timeout = 2.5\nconcurrency = 4\n[plugins.validating.config]\na = 1\n"
        )
        table, _ = worker_table(worker_args("--config", str(registry_file), "--timeout", "9"))
        assert table.worker_settings() == WorkerSettings(timeout=9.0, concurrency=4)
        assert (table.config, table.required) == ({"a": 1}, True)

    @pytest.mark.parametrize(("key", "value"), OUT_OF_BOUNDS)
    def test_a_flag_out_of_bounds_is_named(self, key: str, value: float) -> None:
        """``--timeout 0`` (and the like) is refused with the flag's name."""
        flag = f"--{key.replace('_', '-')}"
        with pytest.raises(UsageError, match=f"^{flag}: "):
            worker_table(worker_args(flag, str(value)))

    @pytest.mark.parametrize(("key", "value"), OUT_OF_BOUNDS)
    def test_a_file_value_out_of_bounds_is_named(
        self, tmp_path: Path, key: str, value: float
    ) -> None:
        """A registry file's out-of-bounds setting names the file and the dotted key."""
        registry_file = tmp_path / "registry.toml"
        registry_file.write_text(
            f'[plugins.validating]\nmodule = "{HERE}:Validating"\n{key} = {value}\n'
        )
        with pytest.raises(UsageError, match=rf"plugins\.validating\.{key}"):
            worker_table(worker_args("--config", str(registry_file)))


REGISTRY_FILE_ERRORS = [
    pytest.param(
        '[bus]\nurl = "redis://127.0.0.1:1/0"\nnamespce = "probe-x"\n',
        "at bus.namespce: unknown key",
        id="bus-typo",
    ),
    pytest.param(
        '[apps.shop]\ndatabase.pool_size = "five"\n',
        "at apps.shop.database.pool_size: Expected `int | null`, got `str`",
        id="app-wrong-type",
    ),
    pytest.param(
        '[bus]\nnamespace = "a b"\n[plugins.validating]\nmodule = "x:Y"\n',
        "at bus.namespace: invalid namespace 'a b'",
        id="bad-namespace",
    ),
]


def entry_point_args(*argv: str) -> Any:
    """``worker audit ...``: the plugin named by its entry point, as users often do."""
    return build_parser("worker").parse_args(["worker", "audit", *argv])


class TestWorkerFile:
    @pytest.mark.parametrize(("content", "expected"), REGISTRY_FILE_ERRORS)
    def test_a_file_with_registry_tables_is_checked_as_run_checks_it(
        self, tmp_path: Path, content: str, expected: str
    ) -> None:
        """A file with ``[bus]``, ``[apps]`` (or another registry table) is a registry
        file, with or without a plugin table: what ``run`` refuses in it is refused, with
        the same line, instead of the file becoming the plugin's configuration."""
        path = tmp_path / "typo.toml"
        path.write_text(content)
        with pytest.raises(UsageError) as caught:
            worker_table(worker_args("--config", str(path)))
        assert str(caught.value).startswith(f"invalid configuration in {path} {expected}")

    def test_a_registry_file_without_the_plugins_table_is_refused(self, tmp_path: Path) -> None:
        """A valid registry file with no table for the plugin: one line naming the file
        and the plugin, not a worker silently running without its configuration."""
        path = tmp_path / "registry.toml"
        path.write_text('[bus]\nurl = "redis://127.0.0.1:1/0"\nnamespace = "probe-x"\n')
        with pytest.raises(UsageError) as caught:
            worker_table(entry_point_args("--config", str(path)))
        assert str(caught.value).startswith(f"registry file {path} has no table for plugin 'audit'")

    def test_the_table_named_as_the_plugin_is_taken(self, tmp_path: Path) -> None:
        """``worker audit`` takes ``[plugins.audit]`` of a file with several tables, whose
        ``module`` spells the class out, and the file's ``[bus]``."""
        path = tmp_path / "registry.toml"
        path.write_text(
            '[bus]\nurl = "redis://127.0.0.1:1/0"\nnamespace = "probe-x"\n'
            '[plugins.audit]\nmodule = "rapid_objection.plugin_workers.plugins.audit:AuditPlugin"\n'
            'timeout = 2.5\n[plugins.audit.config]\ntable = "ro_audit_x"\n'
            '[plugins.metrics]\nmodule = "metrics"\n'
        )
        table, bus = worker_table(entry_point_args("--config", str(path)))
        assert (table.config, table.timeout) == ({"table": "ro_audit_x"}, 2.5)
        assert bus["namespace"] == "probe-x"

    def test_a_plugins_own_file_is_its_whole_configuration(self, tmp_path: Path) -> None:
        """A file without registry tables is the plugin's configuration as it is, key
        names such as ``apps`` (not a table) included; no bus settings come from it."""
        path = tmp_path / "backup.toml"
        path.write_text('directory = "backups"\napps = ["shop"]\n[databases]\nshop = "sqlite://"\n')
        table, bus = worker_table(entry_point_args("--config", str(path)))
        assert table.config == {
            "directory": "backups",
            "apps": ["shop"],
            "databases": {"shop": "sqlite://"},
        }
        assert bus == {}
