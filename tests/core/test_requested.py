"""Migrations and seeds on request: ``app.migrate()``, ``rollback_migrations``, ``seed``,
``rollback_seeds`` and ``migration_status()`` on a registered app.

On SQLite and the real PostgreSQL (``sql_url``); the lock between two processes also on
the real MariaDB (``database_url``); refusals that no dialect changes on SQLite alone.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import sqlalchemy as sa

from rapid_objection.bus._contract import Request
from rapid_objection.core import (
    AppNotOwned,
    AppRegistry,
    ChangeResult,
    ConfigError,
    MigrationFailed,
    PluginVeto,
)
from rapid_objection.core._requested import answer
from tests.core.change_plugins import ChangeRecorder
from tests.core.fixtures_migrations import (
    FAIL,
    AlembicScripts,
    Scripts,
    add_column,
    app_config,
    drop_column,
    insert,
    labels,
    until,
    wait_for,
)
from tests.e2e import REPO_ROOT, subprocess_env

pytestmark = pytest.mark.anyio


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A SQLite file: for behaviour that is the same on every dialect."""
    return f"sqlite:///{tmp_path / 'shop.db'}"


def columns(url: str, table: str = "items") -> set[str]:
    engine = sa.create_engine(url)
    try:
        inspector = sa.inspect(engine)
        if not inspector.has_table(table):
            return set()
        return {column["name"] for column in inspector.get_columns(table)}
    finally:
        engine.dispose()


class TestMigrate:
    async def test_a_new_file_is_applied_as_the_next_batch(
        self, registry: AppRegistry, sql_url: str, migrations: Scripts
    ) -> None:
        """A migration added to a registered app is applied by migrate() as batch 2; the
        typed result says what ran, what was already there and how long it took."""
        recorder = await registry.load_plugin(ChangeRecorder, required=True)
        app = await registry.register_app("shop", app_config(sql_url, migrations))
        migrations.migration(
            "002_notes.py", add_column("items", "notes"), drop_column("items", "notes")
        )
        assert app.migration_status().pending == ("002_notes.py",)

        result = await app.migrate()

        assert isinstance(result, ChangeResult)
        assert (result.action, result.ran, result.batches) == ("migrate", ("002_notes.py",), (2,))
        assert result.skipped == ("001_items.py",)
        assert set(result.durations) == {"002_notes.py"}
        assert result.duration > 0
        assert "notes" in columns(sql_url)
        status = app.migration_status()
        assert (status.mode, status.batch, status.pending) == ("files", 2, ())
        assert [(f.name, f.batch) for f in status.migrations] == [
            ("001_items.py", 1),
            ("002_notes.py", 2),
        ]
        requested = [e for e in recorder.seen if e["trigger"] == "requested"]
        assert requested == [
            {
                "event": "auto_operations_started",
                "app": "shop",
                "trigger": "requested",
                "action": "migrate",
                "options": {},
                "version": 2,
            },
            {
                "event": "auto_operations_completed",
                "app": "shop",
                "trigger": "requested",
                "action": "migrate",
                "success": True,
                "ran": ["002_notes.py"],
                "version": 2,
            },
        ]
        # A registration's own auto-operations stay version 1: older workers read them.
        assert {e["version"] for e in recorder.seen if e["trigger"] == "registration"} == {1}

    async def test_nothing_pending_is_a_success_that_ran_nothing(
        self, registry: AppRegistry, sqlite_url: str, migrations: Scripts
    ) -> None:
        """migrate() with nothing pending makes no batch."""
        app = await registry.register_app("shop", app_config(sqlite_url, migrations))
        result = await app.migrate()
        assert (result.ran, result.batches, result.skipped) == ((), (), ("001_items.py",))

    async def test_an_app_without_migrations_is_refused_before_any_event(
        self, registry: AppRegistry, sqlite_url: str, seeds: Scripts, migrations: Scripts
    ) -> None:
        """An app with seeds only has nothing to migrate: ConfigError naming the key."""
        config = app_config(sqlite_url, migrations, seeds)
        config["migrations"]["enabled"] = False
        config["seeds"]["enabled"] = False
        app = await registry.register_app("shop", config)
        with pytest.raises(ConfigError, match=r"migrations\.directory"):
            await app.migrate()


class TestAlembic:
    async def test_a_new_revision_is_applied_rolled_back_and_applied_again(
        self, registry: AppRegistry, sql_url: str, tmp_path: Path
    ) -> None:
        """An app whose migrations are Alembic revisions: a revision added after its
        registration is applied by migrate(), undone by rollback_migrations() (down to
        the revision before, not further), and applied again; migration_status() names
        the revision at each point, and a required plugin sees each request."""
        recorder = await registry.load_plugin(ChangeRecorder, required=True)
        scripts = AlembicScripts.at(tmp_path / "alembic", table="items")
        first = scripts.create_table()
        config = {"database": {"url": sql_url}, "migrations": {"alembic": str(scripts.directory)}}
        app = await registry.register_app("shop", config)
        second = scripts.add_column("notes")
        status = app.migration_status()
        assert (status.mode, status.revision, status.head) == ("alembic", first, second)
        assert status.pending == (second,)

        forward = await app.migrate()

        assert (forward.ran, forward.batches) == ((second,), (2,))
        assert "notes" in columns(sql_url)
        status = app.migration_status()
        assert (status.revision, status.pending) == (second, ())
        assert [(f.name, f.batch) for f in status.migrations] == [(first, 1), (second, 2)]

        back = await app.rollback_migrations()

        assert (back.ran, back.batches) == ((second,), (2,))
        assert "notes" not in columns(sql_url)
        assert columns(sql_url)  # the table of the first revision stays
        assert app.migration_status().revision == first
        again = await app.migrate()
        assert again.ran == (second,)
        assert "notes" in columns(sql_url)
        requested = [
            (e["event"], e["action"]) for e in recorder.seen if e["trigger"] == "requested"
        ]
        assert requested == [
            ("auto_operations_started", "migrate"),
            ("auto_operations_completed", "migrate"),
            ("auto_operations_started", "rollback_migrations"),
            ("auto_operations_completed", "rollback_migrations"),
            ("auto_operations_started", "migrate"),
            ("auto_operations_completed", "migrate"),
        ]


class TestDemoShop:
    async def test_its_seeds_roll_back_and_apply_again(
        self, registry: AppRegistry, sql_url: str
    ) -> None:
        """The bundled shop app (the compose file's): its seeds undone and applied again
        leave one order of the kettle, on SQLite and on PostgreSQL (whose ids go on
        from where the first seeding left them)."""
        shop = Path(REPO_ROOT / "core" / "demo_apps" / "shop")
        config = {
            "database": {"url": sql_url},
            "migrations": {"directory": str(shop / "migrations")},
            "seeds": {"directory": str(shop / "seeds")},
        }
        app = await registry.register_app("shop", config)
        await app.rollback_seeds()
        again = await app.seed()
        assert again.ran == ("001_products.py", "002_orders.py")
        engine = sa.create_engine(sql_url, poolclass=sa.NullPool)
        try:
            with engine.connect() as connection:
                orders = connection.execute(
                    sa.text(
                        "SELECT products.name, orders.quantity FROM orders "
                        "JOIN products ON products.id = orders.product_id"
                    )
                ).all()
        finally:
            engine.dispose()
        assert [tuple(row) for row in orders] == [("kettle", 2)]


class TestRollback:
    async def test_one_batch_back_and_forward_again(
        self, registry: AppRegistry, sql_url: str, migrations: Scripts
    ) -> None:
        """rollback_migrations() undoes the newest batch only; migrate() brings it back."""
        app = await registry.register_app("shop", app_config(sql_url, migrations))
        migrations.migration(
            "002_notes.py", add_column("items", "notes"), drop_column("items", "notes")
        )
        migrations.migration(
            "003_tags.py", add_column("items", "tags"), drop_column("items", "tags")
        )
        await app.migrate()

        back = await app.rollback_migrations()

        assert (back.action, back.ran, back.batches) == (
            "rollback_migrations",
            ("003_tags.py", "002_notes.py"),
            (2,),
        )
        assert columns(sql_url) == {"id", "label"}
        assert app.migration_status().pending == ("002_notes.py", "003_tags.py")
        forward = await app.migrate()
        assert forward.batches == (2,)
        assert columns(sql_url) == {"id", "label", "notes", "tags"}

    async def test_steps_undo_several_batches_and_unregister_undoes_the_rest(
        self, registry: AppRegistry, sql_url: str, migrations: Scripts
    ) -> None:
        """steps=2 undoes the two newest batches; an unregistration after a migrate()
        undoes every batch this registration made, the requested ones included."""
        app = await registry.register_app("shop", app_config(sql_url, migrations))
        migrations.migration(
            "002_notes.py", add_column("items", "notes"), drop_column("items", "notes")
        )
        await app.migrate()
        back = await app.rollback_migrations(steps=5)
        assert back.batches == (2, 1)
        assert columns(sql_url) == set()
        await app.migrate()
        migrations.migration(
            "003_tags.py", add_column("items", "tags"), drop_column("items", "tags")
        )
        await app.migrate()
        result = await registry.unregister_app("shop")
        assert result.success, result.errors
        assert columns(sql_url) == set()

    async def test_seeds_roll_back_and_run_again(
        self, registry: AppRegistry, sql_url: str, migrations: Scripts, seeds: Scripts
    ) -> None:
        """seed() runs a new seed file; rollback_seeds() unseeds it; a seed without
        unseed is only untracked and says so in ``skipped``."""
        app = await registry.register_app("shop", app_config(sql_url, migrations, seeds))
        seeds.seed("002_second.py", insert("items", "second", via="connection"), None)
        ran = await app.seed()
        assert (ran.action, ran.ran, ran.batches) == ("seed", ("002_second.py",), (2,))
        assert labels(sql_url) == ["first", "second"]
        back = await app.rollback_seeds()
        assert (back.ran, back.skipped) == (("002_second.py",), ("002_second.py",))
        assert app.migration_status().pending_seeds == ("002_second.py",)
        back = await app.rollback_seeds()
        assert back.ran == ("001_first.py",)
        assert labels(sql_url) == ["second"]


class TestAnswer:
    async def test_the_registry_logs_each_request_it_answers(
        self,
        registry: AppRegistry,
        sqlite_url: str,
        migrations: Scripts,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """A request from the bus that fails is a warning in the registry's own log
        (naming the app, the action, who asked and the error), not only in the answer
        the operator gets; one that succeeds is an info line saying what ran."""
        caplog.set_level(logging.INFO, "rapid_objection.registry")
        await registry.register_app("shop", app_config(sqlite_url, migrations))
        migrations.migration("002_notes.py", add_column("items", "notes"))
        applied = await answer(registry, request("migrate"))
        migrations.migration("003_bad.py", FAIL)
        refused = await answer(registry, request("migrate"))
        assert (applied.ok, refused.ok) == (True, False)
        said = [
            (record.levelname, record.getMessage())
            for record in caplog.records
            if "requested by" in record.getMessage()
        ]
        assert said == [
            ("INFO", "app shop: migrate requested by ops@host-1: 002_notes.py"),
            ("WARNING", f"app shop: migrate requested by ops@host-1 failed: {refused.error}"),
        ]
        assert "boom" in (refused.error or "")


def request(action: str) -> Request:
    return Request(id="r-1", registry="reg", app="shop", action=action, sender="ops@host-1")


class TestFailure:
    async def test_a_failing_file_mid_batch_leaves_nothing_of_the_batch(
        self, registry: AppRegistry, sql_url: str, migrations: Scripts
    ) -> None:
        """002 applies, 003 fails: with transactional DDL nothing of the batch stays,
        and the error names the file and the database's error."""
        recorder = await registry.load_plugin(ChangeRecorder, required=True)
        app = await registry.register_app("shop", app_config(sql_url, migrations))
        migrations.migration(
            "002_notes.py", add_column("items", "notes"), drop_column("items", "notes")
        )
        migrations.migration("003_bad.py", "op.execute('SELECT * FROM no_such_table')")
        migrations.migration("004_tags.py", add_column("items", "tags"))

        with pytest.raises(MigrationFailed) as caught:
            await app.migrate()

        assert caught.value.migration == "003_bad.py"
        assert "no_such_table" in str(caught.value)
        assert "nothing of batch 2 is applied" in str(caught.value)
        assert columns(sql_url) == {"id", "label"}
        status = app.migration_status()
        assert (status.batch, status.pending) == (1, ("002_notes.py", "003_bad.py", "004_tags.py"))
        completed = recorder.seen[-1]
        assert (completed["event"], completed["success"]) == ("auto_operations_completed", False)

    async def test_a_failing_downgrade_leaves_the_batch_whole(
        self, registry: AppRegistry, sql_url: str, migrations: Scripts
    ) -> None:
        """A rollback whose second step fails undoes nothing of the batch."""
        app = await registry.register_app("shop", app_config(sql_url, migrations))
        migrations.migration("002_notes.py", add_column("items", "notes"), FAIL)
        migrations.migration(
            "003_tags.py", add_column("items", "tags"), drop_column("items", "tags")
        )
        await app.migrate()
        with pytest.raises(MigrationFailed, match="boom") as caught:
            await app.rollback_migrations()
        assert caught.value.migration == "002_notes.py"
        assert "batch 2 stays applied" in str(caught.value)
        assert columns(sql_url) == {"id", "label", "notes", "tags"}
        assert app.migration_status().pending == ()

    async def test_a_required_plugin_vetoes_and_nothing_runs(
        self, registry: AppRegistry, sqlite_url: str, migrations: Scripts
    ) -> None:
        """A required plugin with on_failure abort refuses auto_operations_started."""
        await registry.load_plugin(
            ChangeRecorder, {"veto": ["migrate"]}, required=True, on_failure="abort"
        )
        app = await registry.register_app("shop", app_config(sqlite_url, migrations))
        migrations.migration("002_notes.py", add_column("items", "notes"))
        with pytest.raises(PluginVeto, match="not allowed now"):
            await app.migrate()
        assert app.migration_status().pending == ("002_notes.py",)

    async def test_a_registry_that_lost_the_app_refuses(
        self, registry: AppRegistry, sqlite_url: str, migrations: Scripts
    ) -> None:
        """Another registry took the app's lease: migrate() raises AppNotOwned and
        touches nothing."""
        app = await registry.register_app("shop", app_config(sqlite_url, migrations))
        migrations.migration("002_notes.py", add_column("items", "notes"))
        owners = registry.bus.directory.owners
        await owners.release("shop", registry.id)
        await owners.claim("shop", "usurper", 60_000)
        with pytest.raises(AppNotOwned):
            await app.migrate()
        assert "notes" not in columns(sqlite_url)


CHILD = textwrap.dedent(
    """
    import json, sys
    from rapid_objection.core import AppConfig
    from rapid_objection.core._requested import direct
    from rapid_objection.core._config import load_app_config
    config = load_app_config("shop", json.loads(sys.argv[1]))
    print(json.dumps(direct("shop", config, "migrate").as_dict()), flush=True)
    """
)


class TestTwoProcesses:
    def test_one_waits_for_the_other(
        self, database_url: str, migrations: Scripts, tmp_path: Path
    ) -> None:
        """Two processes migrate one app at once: the second waits on the app lock
        until the first is done, then finds nothing pending."""
        marker, go = tmp_path / "in-002", tmp_path / "go"
        migrations.migration("002_slow.py", wait_for(marker, go))
        config = json.dumps(app_config(database_url, migrations))
        command = [sys.executable, "-c", CHILD, config]
        env, root = subprocess_env(), REPO_ROOT
        first = subprocess.Popen(command, stdout=subprocess.PIPE, cwd=root, env=env)
        try:
            until(marker)
            second = subprocess.Popen(command, stdout=subprocess.PIPE, cwd=root, env=env)
            try:
                with pytest.raises(subprocess.TimeoutExpired):
                    second.wait(0.5)  # held on the lock while the first is inside 002
                go.touch()
                one = json.loads(first.communicate(timeout=30)[0])
                two = json.loads(second.communicate(timeout=30)[0])
            finally:
                second.kill()
        finally:
            first.kill()
        assert one["ran"] == ["001_items.py", "002_slow.py"]
        assert (two["ran"], two["skipped"]) == ([], ["001_items.py", "002_slow.py"])
