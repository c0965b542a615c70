"""The backup plugin: copies that restore, once per event, pruned, on schedule."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest

from rapid_objection.bus import (
    Ack,
    AppRegistered,
    AppRollbackStarted,
    Bus,
    ConnectionInfo,
    Publisher,
)
from rapid_objection.core import AppRegistry
from rapid_objection.plugin_workers import RegistryView
from rapid_objection.plugin_workers.plugins.backup import (
    BackupPlugin,
    copies,
    parse_config,
    prune,
    read_dump,
)
from rapid_objection.plugin_workers.testing import call_hook, envelope_for
from tests.e2e import CLI, REPO_ROOT, subprocess_env

pytestmark = pytest.mark.anyio

Deliver = Callable[..., Awaitable[Ack]]
SAMPLE = Path(__file__).parents[2] / "core" / "sample_app"
BACKUP = "rapid_objection.plugin_workers.plugins.backup:BackupPlugin"


def make_database(path: Path, names: list[str]) -> None:
    """A SQLite file with a ``users`` table holding ``names``."""
    with contextlib.closing(sqlite3.connect(path)) as connection, connection:
        connection.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
        connection.executemany("INSERT INTO users (name) VALUES (?)", [(n,) for n in names])


def names_in_copy(copy: str | Path) -> list[str]:
    """The user names in a copy: a SQLite file or a dump folder."""
    path = Path(copy)
    if path.is_dir():
        return sorted(row["name"] for row in read_dump(path, "users"))
    with contextlib.closing(sqlite3.connect(path)) as connection:
        return sorted(name for (name,) in connection.execute("SELECT name FROM users"))


def sample_app(url: str) -> dict[str, Any]:
    """The sample app (users admin and guest) on ``url``."""
    return {
        "database": {"url": url},
        "migrations": {"directory": str(SAMPLE / "migrations")},
        "seeds": {"directory": str(SAMPLE / "seeds")},
    }


def registered(path: Path) -> AppRegistered:
    return AppRegistered(connection=ConnectionInfo(dialect="sqlite", database=str(path)))


def own(path: Path) -> dict[str, str]:
    """The ``databases`` table of a worker whose app ``shop`` is the SQLite file ``path``."""
    return {"shop": f"sqlite:///{path}"}


class TestSqliteFile:
    async def test_a_copy_restores_the_same_rows(self, tmp_path: Path) -> None:
        """A registered SQLite app's copy opens with the same rows; the hook names it."""
        database = tmp_path / "shop.db"
        make_database(database, ["admin", "guest"])
        plugin = BackupPlugin({"directory": str(tmp_path / "backups")})
        ack = await call_hook(plugin, registered(database), app="shop", databases=own(database))
        assert isinstance(ack, Ack)
        assert ack.status == "ok", ack.error
        result = ack.result
        assert (result["app"], result["kind"], result["format"]) == ("shop", "registered", "sqlite")
        path = Path(result["path"])
        assert path.parent == tmp_path / "backups" / "shop"
        assert result["size"] == len(path.read_bytes()) > 0  # noqa: ASYNC240 - a small file
        assert names_in_copy(path) == ["admin", "guest"]

    async def test_a_missing_database_is_an_error(self, tmp_path: Path) -> None:
        """A path that does not exist fails the hook and leaves no partial copy."""
        plugin = BackupPlugin({"directory": str(tmp_path / "backups")})
        absent = tmp_path / "absent.db"
        ack = await call_hook(plugin, registered(absent), app="shop", databases=own(absent))
        assert isinstance(ack, Ack)
        assert (ack.status, ack.error_type) == ("error", "FileNotFoundError")
        assert list((tmp_path / "backups" / "shop").iterdir()) == []
        assert not (tmp_path / "absent.db").exists()
        assert plugin.get_status()["failed"] == 1

    async def test_a_redelivered_event_makes_no_second_copy(
        self, tmp_path: Path, view: RegistryView, deliver: Deliver
    ) -> None:
        """The same event delivered again (after a crash) is answered without copying."""
        database = tmp_path / "shop.db"
        make_database(database, ["admin"])
        plugin = BackupPlugin({"directory": str(tmp_path / "backups"), "databases": own(database)})
        await plugin.initialize(view, {})
        try:
            envelope = envelope_for(registered(database), app="shop")
            first = await deliver(plugin, envelope)
            again = await deliver(plugin, envelope, attempt=2)
        finally:
            await plugin.shutdown()
        assert first.result["kind"] == "registered"
        assert again.result == {
            "app": "shop",
            "kind": "registered",
            "skipped": "already copied for this event",
        }
        assert len(copies(tmp_path / "backups", "shop")) == 1

    async def test_retention_keeps_the_newest(self, tmp_path: Path) -> None:
        """With ``keep = 2`` four copies leave the two newest."""
        database = tmp_path / "shop.db"
        make_database(database, ["admin"])
        plugin = BackupPlugin({"directory": str(tmp_path / "backups"), "keep": 2})
        made = []
        for _ in range(4):
            ack = await call_hook(plugin, registered(database), app="shop", databases=own(database))
            assert isinstance(ack, Ack)
            made.append(Path(ack.result["path"]))
        assert copies(tmp_path / "backups", "shop") == made[2:]

    def test_prune_ignores_partial_and_foreign_files(self, tmp_path: Path) -> None:
        """Only finished copies count and go: partial copies and other files stay."""
        folder = tmp_path / "shop"
        folder.mkdir()
        names = [
            "20240101T000000.000000Z-registered.sqlite",
            "20240102T000000.000000Z-scheduled",
            "20240103T000000.000000Z-rollback.sqlite",
        ]
        (folder / names[0]).touch()
        (folder / names[1]).mkdir()  # a dump is a folder
        (folder / names[1] / "manifest.json").touch()
        (folder / names[2]).touch()
        (folder / ".20240104T000000.000000Z-scheduled.sqlite.partial").touch()
        (folder / "notes.txt").touch()
        deleted = prune(tmp_path, "shop", 1)
        assert [path.name for path in deleted] == names[:2]
        assert sorted(path.name for path in folder.iterdir()) == sorted(
            [names[2], ".20240104T000000.000000Z-scheduled.sqlite.partial", "notes.txt"]
        )


class TestInMemory:
    async def test_a_worker_elsewhere_skips_with_a_reason(self, tmp_path: Path) -> None:
        """Outside the registry's process a memory database cannot be reached: skipped."""
        plugin = BackupPlugin({"directory": str(tmp_path)})
        ack = await call_hook(plugin, AppRegistered(connection=ConnectionInfo(dialect="sqlite")))
        assert isinstance(ack, Ack)
        assert ack.status == "ok"
        assert "only an inline backup plugin" in ack.result["skipped"]
        assert "only an inline backup plugin" in plugin.get_status()["skipped"]["app"]
        assert copies(tmp_path, "app") == []

    async def test_inline_copies_the_live_database(
        self, registry: AppRegistry, tmp_path: Path
    ) -> None:
        """Inline in the registry, the live in-memory database is copied, rows and all."""
        plugin: BackupPlugin = await registry.load_plugin(
            BackupPlugin, {"directory": str(tmp_path)}, required=True
        )
        await registry.refresh_plugins()
        await registry.register_app("shop", sample_app("sqlite://"))
        [copy] = copies(tmp_path, "shop")
        assert names_in_copy(copy) == ["admin", "guest"]
        assert plugin.get_status()["last"]["shop"]["path"] == str(copy)


class TestInRegistry:
    async def test_copies_on_registration_and_before_rollback(
        self, registry: AppRegistry, sql_url: str, tmp_path: Path
    ) -> None:
        """On each lane: a copy when registered and one before rollback, both with the rows."""
        directory = tmp_path / "backups"
        await registry.load_plugin(BackupPlugin, {"directory": str(directory)}, required=True)
        await registry.refresh_plugins()
        await registry.register_app("shop", sample_app(sql_url))
        await registry.unregister_app("shop")
        made = copies(directory, "shop")
        assert [path.name.split("-")[1].split(".")[0] for path in made] == [
            "registered",
            "rollback",
        ]
        assert [names_in_copy(path) for path in made] == [["admin", "guest"]] * 2

    @pytest.mark.parametrize("sql_url", ["postgresql"], indirect=True)
    async def test_a_dump_is_portable(
        self, registry: AppRegistry, sql_url: str, tmp_path: Path
    ) -> None:
        """Other dialects: schema.sql, one JSON-lines file per table and a manifest."""
        await registry.load_plugin(BackupPlugin, {"directory": str(tmp_path)}, required=True)
        await registry.refresh_plugins()
        await registry.register_app("shop", sample_app(sql_url))
        [dump] = copies(tmp_path, "shop")
        schema = (dump / "schema.sql").read_text()
        assert "CREATE TABLE users" in schema
        rows = read_dump(dump, "users")
        assert {(row["name"], row["email"]) for row in rows} == {
            ("admin", "a@x.org"),
            ("guest", None),
        }
        manifest = msgspec.json.decode((dump / "manifest.json").read_bytes())
        assert (manifest["app"], manifest["kind"], manifest["dialect"]) == (
            "shop",
            "registered",
            "postgresql",
        )
        [users] = [table for table in manifest["tables"] if table["name"] == "users"]
        assert (users["rows"], users["columns"]) == (2, ["id", "name", "email"])

    async def test_scheduled_copies_of_registered_apps(
        self, registry: AppRegistry, tmp_path: Path
    ) -> None:
        """With ``interval`` set, the registered apps are copied on schedule until they go."""
        plugin: BackupPlugin = await registry.load_plugin(
            BackupPlugin,
            {"directory": str(tmp_path / "backups"), "interval": 0.1, "keep": 50},
            required=True,  # so that unregister_app returns after the plugin heard of it
        )
        await registry.refresh_plugins()
        await registry.register_app("shop", sample_app(f"sqlite:///{tmp_path / 'shop.db'}"))
        with anyio.fail_after(5):
            while not any("scheduled" in p.name for p in copies(tmp_path / "backups", "shop")):
                await anyio.sleep(0.05)
        assert plugin.apps == ["shop"]
        await registry.unregister_app("shop")
        assert plugin.apps == []
        assert plugin.get_status()["scheduler"] is True


class TestConfiguration:
    async def test_the_directory_is_required(self) -> None:
        """The seed's text: "Backup directory is required"."""
        with pytest.raises(ValueError, match=r"^Backup directory is required$"):
            await BackupPlugin().validate_configuration({})

    async def test_a_registry_refuses_the_plugin_without_directory(
        self, registry: AppRegistry
    ) -> None:
        """Loading it without a directory fails with the plugin's name and the reason."""
        with pytest.raises(Exception, match="Backup directory is required") as caught:
            await registry.load_plugin(BackupPlugin, {})
        assert "backup" in str(caught.value)

    def test_defaults(self) -> None:
        """keep 5, no schedule."""
        settings = parse_config({"directory": "x"})
        assert (settings.keep, settings.interval) == (5, None)

    @pytest.mark.parametrize(
        ("config", "message"),
        [
            pytest.param({"keep": 0}, "keep", id="keep"),
            pytest.param({"interval": -1}, "interval", id="interval"),
            pytest.param({"interval": "hourly"}, "interval", id="interval-type"),
        ],
    )
    async def test_invalid_configuration_is_refused(
        self, config: dict[str, Any], message: str
    ) -> None:
        """validate_configuration names what is wrong."""
        with pytest.raises(ValueError, match=message):
            await BackupPlugin({"directory": "x"}).validate_configuration(config)

    async def test_a_rollback_hook_copies_too(self, tmp_path: Path) -> None:
        """``on_app_rollback_started`` makes a ``rollback`` copy."""
        database = tmp_path / "shop.db"
        make_database(database, ["admin"])
        plugin = BackupPlugin({"directory": str(tmp_path / "b")})
        payload = AppRollbackStarted(
            connection=ConnectionInfo(dialect="sqlite", database=str(database))
        )
        ack = await call_hook(plugin, payload, app="shop", databases=own(database))
        assert isinstance(ack, Ack)
        assert ack.result["kind"] == "rollback"
        assert plugin.apps == []  # only registration puts an app on the schedule


class TestEventsNamingOtherDatabases:
    """Defence in depth: the database an event names is never what gets copied."""

    async def test_a_forged_path_for_a_configured_app_is_refused(self, tmp_path: Path) -> None:
        """``connection.database=/some/other.db`` for an app whose database the worker
        knows: a permanent error naming the plugin and both paths; nothing copied."""
        database, other = tmp_path / "shop.db", tmp_path / "other.db"
        make_database(database, ["admin"])
        make_database(other, ["secret"])
        plugin = BackupPlugin({"directory": str(tmp_path / "backups")})
        ack = await call_hook(plugin, registered(other), app="shop", databases=own(database))
        assert isinstance(ack, Ack)
        assert (ack.status, ack.error_type, ack.permanent) == ("error", "PermanentError", True)
        assert "backup plugin refused the event" in (ack.error or "")
        assert str(other) in (ack.error or "")
        assert copies(tmp_path / "backups", "shop") == []

    async def test_an_app_without_a_database_of_its_own_is_refused(self, tmp_path: Path) -> None:
        """An app the worker has no credentials for: refused, the event's path unused."""
        other = tmp_path / "other.db"
        make_database(other, ["secret"])
        plugin = BackupPlugin({"directory": str(tmp_path / "backups")})
        ack = await call_hook(plugin, registered(other), app="shop", databases={})
        assert isinstance(ack, Ack)
        assert (ack.status, ack.error_type, ack.permanent) == ("error", "PermanentError", True)
        assert "no credentials for app 'shop'" in (ack.error or "")
        assert copies(tmp_path / "backups", "shop") == []

    @pytest.mark.slow
    async def test_a_worker_process_refuses_a_forged_registration(
        self, redis_bus: Bus, redis_url: str, sql_url: str, tmp_path: Path
    ) -> None:
        """A backup worker process with its own URL for ``shop``: an ``app_registered``
        that anyone with access to Redis could publish, naming another database, is
        answered with a permanent error and copies nothing; the genuine one is copied."""
        import sqlalchemy as sa

        engine = sa.create_engine(sql_url)
        with engine.begin() as connection:
            connection.execute(sa.text("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)"))
        own_database = engine.url.database
        dialect = engine.dialect.name
        engine.dispose()
        backups = tmp_path / "backups"
        config = tmp_path / "backup.toml"
        config.write_text(
            f'directory = "{backups}"\n[databases]\nshop = "{sql_url}"\n', encoding="utf-8"
        )
        elsewhere = str(tmp_path / "other.db") if dialect == "sqlite" else "postgres"
        async with (
            backup_worker(redis_bus, redis_url, config, tmp_path),
            Publisher(redis_bus, "forger") as publisher,
        ):
            forged, genuine = [
                await publisher.emit(
                    AppRegistered(connection=ConnectionInfo(dialect=dialect, database=name)),
                    app="shop",
                    required=["backup"],
                    timeout=15,
                )
                for name in (elsewhere, own_database)
            ]
        refused = forged.outcomes["backup"]
        assert (refused.status, refused.attempt) == ("failed", 1)
        assert "backup plugin refused the event" in (refused.error or "")
        assert genuine.outcomes["backup"].status == "acked", genuine.outcomes
        assert len(copies(backups, "shop")) == 1


@asynccontextmanager
async def backup_worker(bus: Bus, url: str, config: Path, logs: Path) -> AsyncIterator[None]:
    """``rapid-objection worker`` of the bundled backup plugin, reading its group."""
    log_path = logs / "backup-worker.log"
    command = [CLI, "worker", BACKUP, "--config", str(config), "--bus-url", url]
    command += ["--namespace", bus.namespace, "--consumer", "backup-1"]
    with log_path.open("wb") as log:
        process = await anyio.open_process(
            command, stdin=None, stdout=log, stderr=log, cwd=REPO_ROOT, env=subprocess_env()
        )
    try:
        with anyio.fail_after(20):
            while not await bus.directory.workers("backup"):
                assert process.returncode is None, log_path.read_text()
                await anyio.sleep(0.05)
        yield
    finally:
        process.terminate()
        with anyio.move_on_after(10, shield=True):
            await process.wait()
        if process.returncode is None:
            process.kill()
        await process.aclose()
