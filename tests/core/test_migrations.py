"""Plain migrations: discovery, batches, tracking, transactional steps, rollback, the lock.

Each database test runs on SQLite, the real PostgreSQL and the real MariaDB
(``database_url``), or on SQLite and PostgreSQL only where DDL is transactional
(``sql_url``).
"""

from __future__ import annotations

import multiprocessing
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from rapid_objection.bus import OperationResult
from rapid_objection.core._config import DatabaseConfig, MigrationsConfig
from rapid_objection.core._connections import Engines
from rapid_objection.core._errors import ConfigError, MigrationFailed
from rapid_objection.core._migrations import Migrations
from rapid_objection.core._runners import Runner
from tests.core.fixtures_migrations import (
    FAIL,
    Scripts,
    add_column,
    create_table,
    drop_column,
    drop_table,
    insert,
    until,
    wait_for,
)


@pytest.fixture
def scripts(tmp_path: Path) -> Scripts:
    return Scripts.at(tmp_path / "migrations")


@pytest.fixture
def sqlite_engine(tmp_path: Path) -> Iterator[sa.Engine]:
    created = sa.create_engine(f"sqlite:///{tmp_path / 'discover.db'}")
    yield created
    created.dispose()


def make(
    engine: sa.Engine, directory: Path, app: str = "shop", **config: Any
) -> Runner[Migrations]:
    return Runner(Migrations(app, engine, MigrationsConfig(directory=str(directory), **config)))


def tables(engine: sa.Engine) -> set[str]:
    return set(sa.inspect(engine).get_table_names())


def columns(engine: sa.Engine, table: str) -> set[str]:
    return {column["name"] for column in sa.inspect(engine).get_columns(table)}


def tracked(engine: sa.Engine, table: str = "ro_migrations") -> list[tuple[str, str, int]]:
    with engine.connect() as connection:
        app, name = sa.column("app", sa.String), sa.column("name", sa.String)
        batch = sa.column("batch", sa.Integer)
        rows = connection.execute(
            sa.select(app, name, batch).select_from(sa.table(table)).order_by(app, batch, name)
        ).all()
    return [(app, name, batch) for app, name, batch in rows]


def count(engine: sa.Engine, table: str) -> int:
    with engine.connect() as connection:
        counted = sa.select(sa.func.count()).select_from(sa.table(table))
        return int(connection.execute(counted).scalar_one())


class TestDiscover:
    def test_orders_by_number_then_name(self, sqlite_engine: sa.Engine, scripts: Scripts) -> None:
        """Files are ordered by their number as an integer, then by file name."""
        for name in ["10_late.py", "2_b.py", "002_a.py", "1_first.py"]:
            scripts.migration(name)
        found = make(sqlite_engine, scripts.directory).changes.discover()
        assert [migration.name for migration in found] == [
            "1_first.py",
            "002_a.py",
            "2_b.py",
            "10_late.py",
        ]
        assert [migration.number for migration in found] == [1, 2, 2, 10]

    def test_skips_helpers_and_other_files(
        self, sqlite_engine: sa.Engine, scripts: Scripts
    ) -> None:
        """``_helpers.py``, ``__init__.py``, other files and subdirectories are no migrations."""
        scripts.migration("001_users.py")
        scripts.raw("_helpers.py", "X = 1\n")
        scripts.raw("__init__.py", "")
        scripts.raw("README.md", "notes\n")
        (scripts.directory / "__pycache__").mkdir()
        found = make(sqlite_engine, scripts.directory).changes.discover()
        assert [migration.name for migration in found] == ["001_users.py"]

    @pytest.mark.parametrize(
        ("name", "source", "message"),
        [
            pytest.param("create_users.py", "", "is not named NNN_name.py", id="no-number"),
            pytest.param("001-users.py", "", "is not named NNN_name.py", id="dash"),
            pytest.param(
                "001_users.py", "def upgrade(op): pass\n", "no callable downgrade()", id="no-down"
            ),
            pytest.param(
                "001_users.py", "def downgrade(op): pass\n", "no callable upgrade()", id="no-up"
            ),
            pytest.param(
                "001_users.py",
                "upgrade = 1\ndef downgrade(op): pass\n",
                "no callable upgrade()",
                id="not-callable",
            ),
            pytest.param("001_users.py", "def upgrade(:\n", "SyntaxError", id="syntax"),
            pytest.param(
                "001_users.py", "import no_such_module_here\n", "ModuleNotFoundError", id="import"
            ),
        ],
    )
    def test_a_bad_file_is_a_config_error_naming_it(
        self, sqlite_engine: sa.Engine, scripts: Scripts, name: str, source: str, message: str
    ) -> None:
        """A malformed name, a missing function or a file that cannot load names the file."""
        scripts.migration("000_fine.py")
        path = scripts.raw(name, source)
        with pytest.raises(ConfigError, match=message) as raised:
            make(sqlite_engine, scripts.directory).changes.discover()
        assert raised.value.file == str(path)
        assert raised.value.path == "migrations.directory"
        assert name in str(raised.value)

    def test_a_bad_file_stops_latest_before_anything_runs(
        self, sqlite_engine: sa.Engine, scripts: Scripts
    ) -> None:
        """``latest()`` validates every file before it applies any."""
        scripts.migration("001_users.py", create_table("users"))
        scripts.raw("002_broken.py", "def upgrade(op): pass\n")
        with pytest.raises(ConfigError, match=r"002_broken\.py"):
            make(sqlite_engine, scripts.directory).apply()
        assert scripts.calls() == []

    def test_loads_without_touching_sys_path_or_modules(
        self, sqlite_engine: sa.Engine, scripts: Scripts
    ) -> None:
        """Files are loaded from their paths: ``sys.path`` and ``sys.modules`` stay as they were."""
        scripts.migration("001_users.py")
        path_before, modules_before = list(sys.path), set(sys.modules)
        make(sqlite_engine, scripts.directory).changes.discover()
        assert sys.path == path_before
        assert {name for name in set(sys.modules) - modules_before if "001" in name} == set()

    def test_a_missing_directory_is_a_config_error(
        self, sqlite_engine: sa.Engine, tmp_path: Path
    ) -> None:
        """A configured directory that does not exist is reported with its key."""
        with pytest.raises(ConfigError, match="is not a directory") as raised:
            make(sqlite_engine, tmp_path / "nowhere").changes.discover()
        assert raised.value.path == "migrations.directory"

    def test_no_directory_means_no_migrations(self, sqlite_engine: sa.Engine) -> None:
        """Without a directory there is nothing to apply."""
        migrations = Runner(Migrations("shop", sqlite_engine, MigrationsConfig()))
        assert migrations.changes.discover() == []
        assert migrations.apply().items == ()


class TestLatest:
    def test_applies_pending_files_in_order_as_one_batch(
        self, engine: sa.Engine, scripts: Scripts
    ) -> None:
        """Every pending file runs in order and is tracked in batch 1."""
        scripts.migration("001_users.py", create_table("users"), drop_table("users"))
        scripts.migration(
            "002_email.py", add_column("users", "email"), drop_column("users", "email")
        )
        scripts.migration("003_orders.py", create_table("orders"), drop_table("orders"))
        result = make(engine, scripts.directory).apply()
        assert result.operation == "migrations"
        assert result.success
        assert result.items == ("001_users.py", "002_email.py", "003_orders.py")
        assert result.details["batch"] == 1
        assert scripts.calls() == ["up 001_users.py", "up 002_email.py", "up 003_orders.py"]
        assert {"users", "orders", "ro_migrations"} <= tables(engine)
        assert "email" in columns(engine, "users")
        assert tracked(engine) == [
            ("shop", "001_users.py", 1),
            ("shop", "002_email.py", 1),
            ("shop", "003_orders.py", 1),
        ]

    def test_is_idempotent(self, engine: sa.Engine, scripts: Scripts) -> None:
        """A second call applies nothing and opens no batch."""
        scripts.migration("001_users.py", create_table("users"))
        migrations = make(engine, scripts.directory)
        migrations.apply()
        again = migrations.apply()
        assert again.success
        assert again.items == ()
        assert again.details["batch"] is None
        assert scripts.calls() == ["up 001_users.py"]
        assert tracked(engine) == [("shop", "001_users.py", 1)]

    def test_new_files_form_the_next_batch(self, engine: sa.Engine, scripts: Scripts) -> None:
        """Files added later are applied as batch 2, the applied ones are left alone."""
        scripts.migration("001_users.py", create_table("users"))
        migrations = make(engine, scripts.directory)
        migrations.apply()
        scripts.migration("002_orders.py", create_table("orders"))
        scripts.migration("003_items.py", create_table("items"))
        result = migrations.apply()
        assert result.items == ("002_orders.py", "003_items.py")
        assert result.details["batch"] == 2
        assert tracked(engine) == [
            ("shop", "001_users.py", 1),
            ("shop", "002_orders.py", 2),
            ("shop", "003_items.py", 2),
        ]

    def test_tracking_table_has_app_name_batch_and_time(
        self, engine: sa.Engine, scripts: Scripts
    ) -> None:
        """The table has app, name, batch and migrated_at; (app, name) is unique."""
        scripts.migration("001_users.py")
        before = time.time()
        make(engine, scripts.directory).apply()
        assert columns(engine, "ro_migrations") == {"app", "name", "batch", "migrated_at"}
        status = make(engine, scripts.directory).status()
        migrated_at = status["applied"][0]["migrated_at"]
        assert datetime.fromisoformat(migrated_at).timestamp() >= before - 2
        with pytest.raises(sa.exc.IntegrityError), engine.begin() as connection:
            connection.execute(
                sa.text(
                    "INSERT INTO ro_migrations (app, name, batch, migrated_at) "
                    "VALUES ('shop', '001_users.py', 9, CURRENT_TIMESTAMP)"
                )
            )

    def test_apps_share_the_tracking_table(self, engine: sa.Engine, tmp_path: Path) -> None:
        """Two apps of one database are tracked apart in one table, each from batch 1."""
        shop = Scripts.at(tmp_path / "shop")
        blog = Scripts.at(tmp_path / "blog")
        shop.migration("001_users.py", create_table("users"))
        blog.migration("001_posts.py", create_table("posts"))
        blog.migration("002_tags.py", create_table("tags"))
        make(engine, shop.directory, "shop").apply()
        make(engine, blog.directory, "blog").apply()
        assert tracked(engine) == [
            ("blog", "001_posts.py", 1),
            ("blog", "002_tags.py", 1),
            ("shop", "001_users.py", 1),
        ]
        make(engine, shop.directory, "shop").undo()
        assert tracked(engine) == [("blog", "001_posts.py", 1), ("blog", "002_tags.py", 1)]

    def test_app_names_that_differ_in_case_are_tracked_apart(
        self, engine: sa.Engine, tmp_path: Path
    ) -> None:
        """``Ledger`` and ``ledger`` each run their own files; undoing one keeps the other's."""
        upper = Scripts.at(tmp_path / "upper")
        lower = Scripts.at(tmp_path / "lower")
        upper.migration("001_init.py", create_table("upper_items"), drop_table("upper_items"))
        lower.migration("001_init.py", create_table("lower_items"), drop_table("lower_items"))
        assert make(engine, upper.directory, "Ledger").apply().items == ("001_init.py",)
        assert make(engine, lower.directory, "ledger").apply().items == ("001_init.py",)
        assert {"upper_items", "lower_items"} <= tables(engine)
        assert make(engine, lower.directory, "ledger").undo().items == ("001_init.py",)
        assert tracked(engine) == [("Ledger", "001_init.py", 1)]
        assert "upper_items" in tables(engine)
        assert "lower_items" not in tables(engine)

    def test_a_tracking_table_made_with_the_default_collation_compares_case_too(
        self, engine: sa.Engine, tmp_path: Path
    ) -> None:
        """A table an older version created (MariaDB: case-insensitive names) is fixed in place."""
        with engine.begin() as connection:
            connection.execute(
                sa.text(
                    "CREATE TABLE ro_migrations (app VARCHAR(255) NOT NULL, name VARCHAR(255)"
                    " NOT NULL, batch INTEGER NOT NULL, migrated_at TIMESTAMP NOT NULL,"
                    " PRIMARY KEY (app, name))"
                )
            )
        upper = Scripts.at(tmp_path / "upper")
        lower = Scripts.at(tmp_path / "lower")
        upper.migration("001_init.py", create_table("upper_items"))
        lower.migration("001_init.py", create_table("lower_items"))
        make(engine, upper.directory, "Ledger").apply()
        assert make(engine, lower.directory, "ledger").apply().items == ("001_init.py",)
        assert {"upper_items", "lower_items"} <= tables(engine)

    def test_the_tracking_table_name_is_configurable(
        self, engine: sa.Engine, scripts: Scripts
    ) -> None:
        """``migrations.table`` names the tracking table."""
        scripts.migration("001_users.py")
        make(engine, scripts.directory, table="schema_migrations").apply()
        assert "ro_migrations" not in tables(engine)
        assert tracked(engine, "schema_migrations") == [("shop", "001_users.py", 1)]

    def test_a_failing_migration_raises_naming_it_and_is_not_tracked(
        self, engine: sa.Engine, scripts: Scripts
    ) -> None:
        """The batch stops at the failed file; the files before it stay applied and tracked."""
        scripts.migration("001_users.py", create_table("users"))
        scripts.migration("002_broken.py", FAIL)
        scripts.migration("003_orders.py", create_table("orders"))
        with pytest.raises(MigrationFailed) as raised:
            make(engine, scripts.directory).apply()
        assert raised.value.app == "shop"
        assert raised.value.migration == "002_broken.py"
        assert "RuntimeError: boom" in raised.value.reason
        assert "applied and tracked before it in batch 1: 001_users.py" in raised.value.reason
        assert scripts.calls() == ["up 001_users.py", "up 002_broken.py"]
        assert tracked(engine) == [("shop", "001_users.py", 1)]
        assert "orders" not in tables(engine)

    def test_a_fixed_file_applies_in_the_next_batch(
        self, engine: sa.Engine, scripts: Scripts
    ) -> None:
        """After a failure, the next call starts again at the failed file."""
        scripts.migration("001_users.py", create_table("users"))
        scripts.migration("002_orders.py", FAIL)
        migrations = make(engine, scripts.directory)
        with pytest.raises(MigrationFailed):
            migrations.apply()
        scripts.migration("002_orders.py", create_table("orders"))
        result = migrations.apply()
        assert result.items == ("002_orders.py",)
        assert tracked(engine) == [("shop", "001_users.py", 1), ("shop", "002_orders.py", 2)]

    def test_a_failed_migration_leaves_no_partial_table(
        self, sql_engine: sa.Engine, scripts: Scripts
    ) -> None:
        """Where DDL is transactional, the failed file's statements are undone with it."""
        scripts.migration("001_users.py", create_table("users"))
        scripts.migration(
            "002_half.py",
            f"{create_table('half')}\n{add_column('users', 'email')}\n{FAIL}",
        )
        with pytest.raises(MigrationFailed, match=r"002_half\.py"):
            make(sql_engine, scripts.directory).apply()
        assert "half" not in tables(sql_engine)
        assert "email" not in columns(sql_engine, "users")
        assert tracked(sql_engine) == [("shop", "001_users.py", 1)]

    @pytest.mark.parametrize("database_url", ["mariadb"], indirect=True)
    def test_on_mariadb_a_failed_migration_keeps_its_ddl_and_says_so(
        self, engine: sa.Engine, scripts: Scripts
    ) -> None:
        """MariaDB commits DDL at once: the table stays, untracked, and the error says why."""
        scripts.migration("001_half.py", f"{create_table('half')}\n{FAIL}")
        with pytest.raises(MigrationFailed, match="statement by statement"):
            make(engine, scripts.directory).apply()
        assert "half" in tables(engine)
        assert tracked(engine) == []

    def test_op_works_on_data_too(self, engine: sa.Engine, scripts: Scripts) -> None:
        """``op.execute`` runs in the file's step, with the DDL before it."""
        scripts.migration("001_users.py", f"{create_table('users')}\n{insert('users', 'first')}")
        make(engine, scripts.directory).apply()
        assert count(engine, "users") == 1


class TestRollback:
    def test_undoes_the_last_batch_in_reverse_order(
        self, engine: sa.Engine, scripts: Scripts
    ) -> None:
        """Only the newest batch is undone, its files newest first."""
        scripts.migration("001_users.py", create_table("users"), drop_table("users"))
        migrations = make(engine, scripts.directory)
        migrations.apply()
        scripts.migration("002_orders.py", create_table("orders"), drop_table("orders"))
        scripts.migration(
            "003_email.py", add_column("orders", "email"), drop_column("orders", "email")
        )
        migrations.apply()
        result = migrations.undo()
        assert result.success
        assert result.operation == "migrations"
        assert result.items == ("003_email.py", "002_orders.py")
        assert result.details["batch"] == 2
        assert scripts.calls()[-2:] == ["down 003_email.py", "down 002_orders.py"]
        assert tracked(engine) == [("shop", "001_users.py", 1)]
        assert "orders" not in tables(engine)
        assert "users" in tables(engine)

    def test_each_rollback_undoes_one_more_batch(self, engine: sa.Engine, scripts: Scripts) -> None:
        """Rolling back twice undoes batch 2, then batch 1; then there is nothing to undo."""
        scripts.migration("001_users.py", create_table("users"), drop_table("users"))
        make(engine, scripts.directory).apply()
        scripts.migration("002_orders.py", create_table("orders"), drop_table("orders"))
        make(engine, scripts.directory).apply()
        assert make(engine, scripts.directory).undo().items == ("002_orders.py",)
        assert make(engine, scripts.directory).undo().items == ("001_users.py",)
        nothing = make(engine, scripts.directory).undo()
        assert nothing.success
        assert nothing.items == ()
        assert nothing.details["batch"] is None
        assert tracked(engine) == []
        assert tables(engine) == {"ro_migrations"}

    def test_stops_at_a_failing_downgrade_and_reports_it(
        self, engine: sa.Engine, scripts: Scripts
    ) -> None:
        """The files after the failing one stay undone; it and those before it stay applied."""
        scripts.migration("001_users.py", create_table("users"), drop_table("users"))
        scripts.migration("002_orders.py", create_table("orders"), FAIL)
        scripts.migration("003_items.py", create_table("items"), drop_table("items"))
        migrations = make(engine, scripts.directory)
        migrations.apply()
        result = migrations.undo()
        assert not result.success
        assert result.error is not None
        assert result.error.startswith("002_orders.py: RuntimeError: boom")
        assert result.items == ("003_items.py",)
        assert result.details["failed"] == "002_orders.py"
        assert result.details["remaining"] == ["002_orders.py", "001_users.py"]
        assert "down 001_users.py" not in scripts.calls()
        assert tracked(engine) == [("shop", "001_users.py", 1), ("shop", "002_orders.py", 1)]
        assert "items" not in tables(engine)

    def test_a_failed_downgrade_is_undone_with_its_step(
        self, sql_engine: sa.Engine, scripts: Scripts
    ) -> None:
        """Where DDL is transactional, a downgrade that fails half-way changes nothing."""
        scripts.migration(
            "001_users.py",
            f"{create_table('users')}\n{add_column('users', 'email')}",
            f"{drop_column('users', 'email')}\n{FAIL}",
        )
        migrations = make(sql_engine, scripts.directory)
        migrations.apply()
        assert not migrations.undo().success
        assert "email" in columns(sql_engine, "users")
        assert tracked(sql_engine) == [("shop", "001_users.py", 1)]

    def test_a_missing_file_stops_the_rollback(self, engine: sa.Engine, scripts: Scripts) -> None:
        """A tracked file that is gone cannot be downgraded: the result names it."""
        scripts.migration("001_users.py", create_table("users"), drop_table("users"))
        gone = scripts.migration("002_orders.py", create_table("orders"), drop_table("orders"))
        migrations = make(engine, scripts.directory)
        migrations.apply()
        gone.unlink()
        result = migrations.undo()
        assert not result.success
        assert result.details["failed"] == "002_orders.py"
        assert "no longer in the directory" in (result.error or "")
        assert len(tracked(engine)) == 2

    def test_a_config_error_is_a_failed_result(self, engine: sa.Engine, scripts: Scripts) -> None:
        """Rollback never raises for its own failures: a bad file gives a failed result."""
        scripts.migration("001_users.py")
        migrations = make(engine, scripts.directory)
        migrations.apply()
        scripts.raw("002_bad.py", "")
        result = migrations.undo()
        assert not result.success
        assert result.details["error_type"] == "ConfigError"
        assert "002_bad.py" in (result.error or "")


class TestUndoesWhatItApplied:
    def test_a_runner_undoes_its_own_batch_once(self, engine: sa.Engine, scripts: Scripts) -> None:
        """After its undo succeeded, a runner's second undo leaves the older batch alone."""
        scripts.migration("001_users.py", create_table("users"), drop_table("users"))
        make(engine, scripts.directory).apply()
        scripts.migration("002_orders.py", create_table("orders"), drop_table("orders"))
        migrations = make(engine, scripts.directory)
        migrations.apply()
        assert migrations.undo().items == ("002_orders.py",)
        again = migrations.undo()
        assert again.success
        assert again.items == ()
        assert tracked(engine) == [("shop", "001_users.py", 1)]

    def test_a_runner_that_found_nothing_pending_undoes_nothing(
        self, engine: sa.Engine, scripts: Scripts
    ) -> None:
        """An apply with nothing to do leaves the batch of an earlier apply to its owner."""
        scripts.migration("001_users.py", create_table("users"), drop_table("users"))
        make(engine, scripts.directory).apply()
        migrations = make(engine, scripts.directory)
        assert migrations.apply().items == ()
        assert migrations.undo().items == ()
        assert tracked(engine) == [("shop", "001_users.py", 1)]
        assert "users" in tables(engine)

    def test_a_runner_never_undoes_its_batch_under_a_newer_one(
        self, engine: sa.Engine, scripts: Scripts
    ) -> None:
        """A batch applied after this runner's by another one must be undone first."""
        scripts.migration("001_users.py", create_table("users"), drop_table("users"))
        first = make(engine, scripts.directory)
        first.apply()
        scripts.migration("002_orders.py", create_table("orders"), drop_table("orders"))
        make(engine, scripts.directory).apply()
        refused = first.undo()
        assert not refused.success
        assert refused.details["error_type"] == "NewerBatch"
        assert "batch 2 was applied after batch 1" in (refused.error or "")
        assert len(tracked(engine)) == 2


class TestSQLite:
    def test_an_in_memory_database_with_one_shared_connection(self, scripts: Scripts) -> None:
        """In-memory SQLite (one shared connection) migrates and is left with no transaction."""
        engine = sa.create_engine(
            "sqlite://", poolclass=sa.StaticPool, connect_args={"check_same_thread": False}
        )
        scripts.migration("001_users.py", create_table("users"), drop_table("users"))
        scripts.migration(
            "002_email.py", add_column("users", "email"), drop_column("users", "email")
        )
        migrations = make(engine, scripts.directory)
        assert migrations.apply().items == ("001_users.py", "002_email.py")
        assert "email" in columns(engine, "users")
        with engine.connect() as connection:
            driver = connection.connection.driver_connection
            assert driver is not None
            assert driver.in_transaction is False
        assert migrations.undo().success
        assert tables(engine) == {"ro_migrations"}
        engine.dispose()

    def test_the_busy_timeout_is_restored(self, sqlite_engine: sa.Engine, scripts: Scripts) -> None:
        """The lock wait changes the connection's busy timeout only for the lock itself."""
        scripts.migration("001_users.py", create_table("users"))

        def busy_timeout() -> int:
            with sqlite_engine.connect() as connection:
                return int(connection.exec_driver_sql("PRAGMA busy_timeout").scalar_one())

        before = busy_timeout()
        make(sqlite_engine, scripts.directory, lock_timeout=1.5).apply()
        assert busy_timeout() == before


class TestSharedInMemorySQLite:
    """The one connection of an in-memory SQLite database shared by apps and their users."""

    @pytest.fixture
    def shared(self) -> Iterator[sa.Engine]:
        """An in-memory database as the registry opens one (``Engines``)."""
        engines = Engines()
        lease = engines.open("billing", DatabaseConfig(url="sqlite://", shared=True), None)
        with lease.engine.begin() as connection:
            connection.execute(sa.text("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)"))
        yield lease.engine
        engines.close_all()

    @staticmethod
    def slow_files(scripts: Scripts, prefix: str, count: int = 6) -> list[str]:
        names = []
        for number in range(1, count + 1):
            table = f"{prefix}_{number}"
            upgrade = f"{create_table(table)}\ntime.sleep(0.01)"
            names.append(scripts.migration(f"{number:03}_{table}.py", upgrade).name)
        return names

    def test_a_session_in_use_meanwhile_leaves_the_batch_whole(
        self, shared: sa.Engine, scripts: Scripts
    ) -> None:
        """Another thread's commits and rollbacks never end the batch: what is tracked exists."""
        names = self.slow_files(scripts, "shop")
        stop = threading.Event()
        errors: list[BaseException] = []

        def busy() -> None:
            try:
                while not stop.is_set():
                    with shared.begin() as connection:
                        connection.execute(sa.text("INSERT INTO notes (body) VALUES ('x')"))
                    with shared.connect() as connection:
                        connection.execute(sa.text("SELECT count(*) FROM notes"))
                        connection.rollback()
            except BaseException as exc:
                errors.append(exc)

        user = threading.Thread(target=busy)
        user.start()
        try:
            result = make(shared, scripts.directory).apply()
        finally:
            stop.set()
            user.join(timeout=30)
        assert errors == []
        assert list(result.items) == names
        assert {f"shop_{number}" for number in range(1, 7)} <= tables(shared)

    def test_two_sharing_apps_migrating_at_once_both_keep_their_books(
        self, shared: sa.Engine, tmp_path: Path
    ) -> None:
        """Two apps' batches on one connection take turns; each file tracked has its table."""
        shop, blog = Scripts.at(tmp_path / "shop"), Scripts.at(tmp_path / "blog")
        self.slow_files(shop, "shop")
        self.slow_files(blog, "blog")
        outcomes: dict[str, object] = {}

        def migrate(app: str, scripts: Scripts) -> None:
            try:
                outcomes[app] = make(shared, scripts.directory, app).apply().items
            except Exception as exc:
                outcomes[app] = exc

        threads = [
            threading.Thread(target=migrate, args=("shop", shop)),
            threading.Thread(target=migrate, args=("blog", blog)),
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        assert all(isinstance(items, tuple) and len(items) == 6 for items in outcomes.values())
        assert len(tracked(shared)) == 12
        assert {name for _, name, _ in tracked(shared)} == {
            f"{number:03}_{prefix}_{number}.py"
            for prefix in ("shop", "blog")
            for number in range(1, 7)
        }
        assert {f"{prefix}_{n}" for prefix in ("shop", "blog") for n in range(1, 7)} <= tables(
            shared
        )


class TestStatus:
    def test_applied_pending_and_missing(self, engine: sa.Engine, scripts: Scripts) -> None:
        """Status lists applied files (batch, time), pending ones and tracked ones now gone."""
        migrations = make(engine, scripts.directory)
        scripts.migration("001_users.py")
        assert migrations.status() == {
            "applied": [],
            "pending": ["001_users.py"],
            "missing": [],
        }
        gone = scripts.migration("002_orders.py")
        migrations.apply()
        gone.unlink()
        scripts.migration("003_items.py")
        status = migrations.status()
        assert [(entry["name"], entry["batch"]) for entry in status["applied"]] == [
            ("001_users.py", 1),
            ("002_orders.py", 1),
        ]
        assert all("migrated_at" in entry for entry in status["applied"])
        assert status["pending"] == ["003_items.py"]
        assert status["missing"] == ["002_orders.py"]


# --- the lock ------------------------------------------------------------------------


def _migrate_in_process(url: str, directory: str, ready: str, results: Any) -> None:
    """A child process: warm up, say it is ready, then migrate app shop (waiting up to 60 s)."""
    engine = sa.create_engine(url)
    try:
        migrations = Runner(Migrations("shop", engine, MigrationsConfig(directory=directory)))
        migrations.status()  # connects and imports what latest() needs, so it starts at once
        Path(ready).touch()
        results.put((ready, list(migrations.apply().items)))
    except Exception as exc:
        results.put((ready, repr(exc)))
    finally:
        engine.dispose()


def _holding_batch(
    engine: sa.Engine, scripts: Scripts, tmp_path: Path
) -> tuple[threading.Thread, list[OperationResult | BaseException], Path]:
    """A thread migrating app shop, paused inside its batch until the returned go file exists."""
    inside, go = tmp_path / "inside", tmp_path / "go"
    scripts.migration(
        "001_counter.py",
        f"{create_table('counter')}\n{insert('counter', 'ran')}\n{wait_for(inside, go)}",
        drop_table("counter"),
    )
    outcome: list[OperationResult | BaseException] = []

    def run() -> None:
        try:
            outcome.append(make(engine, scripts.directory).apply())
        except BaseException as exc:  # reported by the test
            outcome.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    until(inside)
    return thread, outcome, go


class TestLock:
    def test_two_processes_migrate_once(
        self, database_url: str, engine: sa.Engine, scripts: Scripts, tmp_path: Path
    ) -> None:
        """A second process waits for the first one's batch, then finds nothing pending."""
        inside, go = tmp_path / "inside", tmp_path / "go"
        ready = [str(tmp_path / "ready1"), str(tmp_path / "ready2")]
        scripts.migration(
            "001_counter.py",
            f"{create_table('counter')}\n{insert('counter', 'ran')}\n{wait_for(inside, go)}",
        )
        context = multiprocessing.get_context("spawn")
        results = context.Queue()
        arguments = (database_url, str(scripts.directory))
        first, second = (
            context.Process(target=_migrate_in_process, args=(*arguments, flag, results))
            for flag in ready
        )
        try:
            first.start()
            until(inside, timeout=60)
            second.start()
            until(Path(ready[1]), timeout=60)
            time.sleep(0.5)  # the second process is now waiting for the lock
            go.touch()
            outcomes = dict([results.get(timeout=60), results.get(timeout=60)])
        finally:
            go.touch()
            for process in (first, second):
                if process.pid is not None:
                    process.join(timeout=60)
        assert outcomes == {ready[0]: ["001_counter.py"], ready[1]: []}
        assert count(engine, "counter") == 1
        assert tracked(engine) == [("shop", "001_counter.py", 1)]
        assert scripts.calls() == ["up 001_counter.py"]

    def test_two_threads_migrate_once(
        self, database_url: str, engine: sa.Engine, scripts: Scripts, tmp_path: Path
    ) -> None:
        """Two threads with engines of their own: the lock lets one batch run, once."""
        thread, outcome, go = _holding_batch(engine, scripts, tmp_path)
        other = sa.create_engine(database_url)
        second: list[OperationResult] = []
        waiting = threading.Thread(
            target=lambda: second.append(make(other, scripts.directory).apply())
        )
        try:
            waiting.start()
            time.sleep(0.3)
            go.touch()
            thread.join(timeout=30)
            waiting.join(timeout=30)
        finally:
            go.touch()
            other.dispose()
        first = outcome[0]
        assert isinstance(first, OperationResult)
        assert first.items == ("001_counter.py",)
        assert second[0].items == ()
        assert count(engine, "counter") == 1
        assert scripts.calls() == ["up 001_counter.py"]

    def test_latest_fails_when_the_lock_is_not_free_in_time(
        self, database_url: str, engine: sa.Engine, scripts: Scripts, tmp_path: Path
    ) -> None:
        """Waiting longer than ``lock_timeout`` raises MigrationFailed saying so."""
        thread, outcome, go = _holding_batch(engine, scripts, tmp_path)
        other = sa.create_engine(database_url)
        try:
            started = time.monotonic()
            with pytest.raises(
                MigrationFailed, match="could not take the migration lock"
            ) as raised:
                make(other, scripts.directory, lock_timeout=0.4).apply()
            waited = time.monotonic() - started
        finally:
            go.touch()
            thread.join(timeout=30)
            other.dispose()
        assert raised.value.app == "shop"
        assert 0.3 <= waited < 10
        assert isinstance(outcome[0], OperationResult)
        assert scripts.calls() == ["up 001_counter.py"]

    def test_rollback_gives_a_failed_result_when_the_lock_is_not_free(
        self, database_url: str, engine: sa.Engine, scripts: Scripts, tmp_path: Path
    ) -> None:
        """A rollback that cannot take the lock in time reports it instead of raising."""
        thread, _, go = _holding_batch(engine, scripts, tmp_path)
        other = sa.create_engine(database_url)
        try:
            result = make(other, scripts.directory, lock_timeout=0.3).undo()
        finally:
            go.touch()
            thread.join(timeout=30)
            other.dispose()
        assert not result.success
        assert "could not take the migration lock" in (result.error or "")
        assert result.details["error_type"] == "LockNotTaken"

    def test_threads_sharing_one_engine_queue(
        self, engine: sa.Engine, scripts: Scripts, tmp_path: Path
    ) -> None:
        """Within a process, a second batch of the app on the same engine waits its turn."""
        thread, _, go = _holding_batch(engine, scripts, tmp_path)
        try:
            with pytest.raises(MigrationFailed, match="could not take the migration lock"):
                make(engine, scripts.directory, lock_timeout=0.2).apply()
        finally:
            go.touch()
            thread.join(timeout=30)

    def test_the_lock_is_released_after_a_failure(
        self, engine: sa.Engine, scripts: Scripts
    ) -> None:
        """A failed batch does not keep the lock: the next call can migrate at once."""
        scripts.migration("001_broken.py", FAIL)
        migrations = make(engine, scripts.directory, lock_timeout=0.5)
        with pytest.raises(MigrationFailed, match=r"001_broken\.py"):
            migrations.apply()
        scripts.migration("001_broken.py", create_table("users"))
        assert migrations.apply().items == ("001_broken.py",)
