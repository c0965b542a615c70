"""The data layer under the registry's lifecycles: what a registration applied is what
its unregistration undoes, under one lock per app; shutdown and registrations in flight.

Every test runs on SQLite, the real PostgreSQL and the real MariaDB (``database_url``).
"""

from __future__ import annotations

import secrets
import textwrap
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import pytest
import sqlalchemy as sa

from rapid_objection.bus._redis_memory import forget_memory_server
from rapid_objection.core import AppRegistry, MigrationFailed, RegistryError, SeedFailed
from tests.core.fixtures_migrations import (
    FAIL,
    Scripts,
    app_config,
    create_table,
    delete,
    drop_table,
    insert,
    labels,
    server_connections,
    until,
    wait_for,
)
from tests.core.freezing_proxy import FreezingProxy, freezing_proxy

pytestmark = pytest.mark.anyio


def tables(url: str) -> set[str]:
    engine = sa.create_engine(url)
    try:
        return set(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()


class TestUnregisterUndoesThisRegistration:
    async def test_a_retried_unregister_leaves_older_seed_batches(
        self,
        registry: AppRegistry,
        database_url: str,
        migrations: Scripts,
        seeds: Scripts,
        tmp_path: Path,
    ) -> None:
        """Seeds undone, migrations failing: the retry undoes no older seed batch."""
        config = app_config(database_url, migrations, seeds)
        await registry.register_app("shop", config)
        await registry.unregister_app("shop", rollback=False)
        seeds.seed(
            "002_second.py", insert("items", "second", via="connection"), delete("items", "second")
        )
        refuse = tmp_path / "refuse-downgrade"
        migrations.migration(
            "002_guard.py",
            "pass",
            f"if Path({str(refuse)!r}).exists():\n    raise RuntimeError('not now')",
        )
        refuse.touch()
        await registry.register_app("shop", config)
        assert labels(database_url) == ["first", "second"]
        failed = await registry.unregister_app("shop")
        assert not failed.success
        assert registry.has_app("shop")
        assert labels(database_url) == ["first"]
        refuse.unlink()
        retried = await registry.unregister_app("shop")
        assert retried.success
        assert labels(database_url) == ["first"]
        assert seeds.calls().count("unseed 001_first.py") == 0

    async def test_a_registration_that_seeded_nothing_unseeds_nothing(
        self, registry: AppRegistry, database_url: str, migrations: Scripts, seeds: Scripts
    ) -> None:
        """The seeds and migrations of an earlier registration stay with their owner."""
        config = app_config(database_url, migrations, seeds)
        await registry.register_app("shop", config)
        await registry.unregister_app("shop", rollback=False)
        await registry.register_app("shop", config)
        result = await registry.unregister_app("shop")
        assert result.success
        assert labels(database_url) == ["first"]
        assert "unseed 001_first.py" not in seeds.calls()


@pytest.fixture
async def other_registry() -> AsyncIterator[AppRegistry]:
    """A second registry (another bus): another process as far as the database can tell."""
    name = f"registry-{secrets.token_hex(4)}"
    async with AppRegistry({"bus": {"url": f"memory://{name}", "ack_timeout": 5}}) as reg:
        yield reg
    forget_memory_server(name)


class TestOneLockPerApp:
    async def test_nobody_registers_between_an_unregisters_seeds_and_migrations(
        self,
        registry: AppRegistry,
        other_registry: AppRegistry,
        database_url: str,
        migrations: Scripts,
        tmp_path: Path,
    ) -> None:
        """A registration waits for the whole rollback: it never seeds a schema then dropped."""
        inside, go = tmp_path / "inside", tmp_path / "go"
        seeds = Scripts.at(tmp_path / "seeds")
        seeds.seed(
            "001_first.py",
            insert("items", "first", via="connection"),
            f"if not Path({str(go)!r}).exists():\n"
            + textwrap.indent(wait_for(inside, go), "    ")
            + "\n"
            + delete("items", "first"),
        )
        config = app_config(database_url, migrations, seeds)
        await registry.register_app("shop", config)
        registered: list[object] = []
        async with anyio.create_task_group() as group:
            group.start_soon(registry.unregister_app, "shop")
            await anyio.to_thread.run_sync(until, inside)

            async def register_elsewhere() -> None:
                registered.append(await other_registry.register_app("shop", config))

            group.start_soon(register_elsewhere)
            await anyio.sleep(0.5)  # long enough for a registration that does not wait
            go.touch()
        assert registered
        assert "items" in tables(database_url)
        assert labels(database_url) == ["first"]


class TestAFailedRegistrationRollsBack:
    async def test_a_failing_seed_undoes_the_migrations_it_followed(
        self, registry: AppRegistry, database_url: str, migrations: Scripts, tmp_path: Path
    ) -> None:
        """All or nothing: the database keeps nothing of a registration that failed."""
        seeds = Scripts.at(tmp_path / "seeds")
        seeds.seed("001_broken.py", FAIL)
        with pytest.raises(SeedFailed):
            await registry.register_app("shop", app_config(database_url, migrations, seeds))
        assert "items" not in tables(database_url)
        assert migrations.calls() == ["up 001_items.py", "down 001_items.py"]
        await registry.register_app("shop", app_config(database_url, migrations))
        assert "items" in tables(database_url)


class TestShutdownDuringARegistration:
    async def test_shutdown_rolls_the_registration_back_before_closing_engines(
        self, database_url: str, tmp_path: Path
    ) -> None:
        """Shutdown waits for the running batch, the registration rolls back and says why."""
        inside, go = tmp_path / "inside", tmp_path / "go"
        migrations = Scripts.at(tmp_path / "migrations")
        migrations.migration(
            "001_items.py",
            create_table("items") + "\n" + wait_for(inside, go),
            drop_table("items"),
        )
        name = f"registry-{secrets.token_hex(4)}"
        registry = AppRegistry({"bus": {"url": f"memory://{name}", "ack_timeout": 5}})
        raised: list[BaseException] = []
        shut_down = anyio.Event()

        async def register() -> None:
            try:
                await registry.register_app("shop", app_config(database_url, migrations))
            except Exception as exc:
                raised.append(exc)

        waited: list[bool] = []

        async def release_later() -> None:
            await anyio.sleep(0.3)
            waited.append(not shut_down.is_set())  # shutdown waits for the batch under way
            go.touch()

        try:
            async with anyio.create_task_group() as group:
                await registry.initialize()  # its task group nests in this one
                group.start_soon(register)
                await anyio.to_thread.run_sync(until, inside)
                group.start_soon(release_later)
                await registry.shutdown()
                shut_down.set()
        finally:
            forget_memory_server(name)
        assert waited == [True]
        assert [type(exc) for exc in raised] == [RegistryError]
        assert "shutting down" in str(raised[0])
        assert migrations.calls() == ["up 001_items.py", "down 001_items.py"]
        assert "items" not in tables(database_url)
        assert not registry.has_app("shop")
        assert server_connections(database_url) == 0


@pytest.fixture
def frozen_later(database_url: str) -> Iterator[FreezingProxy]:
    """A proxy in front of the lane's server, closed after 20 s at the latest (so that a
    test of code that would hang on it fails instead of hanging)."""
    with freezing_proxy(database_url) as proxy:
        watchdog = threading.Timer(20, proxy.close)
        watchdog.start()
        yield proxy
        watchdog.cancel()


@pytest.mark.parametrize("database_url", ["postgresql", "mariadb"], indirect=True)
class TestAServerThatStopsAnswering:
    async def test_a_health_check_reports_unhealthy_in_time(
        self, registry: AppRegistry, database_url: str, frozen_later: FreezingProxy
    ) -> None:
        """A frozen server makes the check unhealthy after the connect timeout, not hang."""
        url = frozen_later.url(database_url)
        await registry.register_app(
            "shop", {"database": {"url": url, "connect_args": {"connect_timeout": 1}}}
        )
        assert (await registry.check_health("shop"))["status"] == "healthy"
        frozen_later.freeze()
        started = time.monotonic()
        health = await registry.check_health("shop")
        assert time.monotonic() - started < 5
        assert health["status"] == "unhealthy"
        assert "did not answer within 1 s" in health["error"]

    async def test_unregister_with_a_timeout_returns_in_time(
        self,
        registry: AppRegistry,
        database_url: str,
        migrations: Scripts,
        frozen_later: FreezingProxy,
    ) -> None:
        """``unregister_app(timeout=...)`` raises TimeoutError on time; the app stays."""
        await registry.register_app("shop", app_config(frozen_later.url(database_url), migrations))
        frozen_later.freeze()
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            await registry.unregister_app("shop", timeout=1)
        assert time.monotonic() - started < 5
        assert registry.has_app("shop")


class TestSharedInMemorySQLite:
    """Apps sharing one in-memory SQLite database (its one connection) through the registry."""

    @staticmethod
    def slow_migrations(tmp_path: Path, app: str) -> Scripts:
        made = Scripts.at(tmp_path / app)
        for number in range(1, 6):
            upgrade = f"{create_table(f'{app}_{number}')}\ntime.sleep(0.01)"
            made.migration(f"{number:03}_{app}_{number}.py", upgrade)
        return made

    @staticmethod
    def books_balance(registry: AppRegistry) -> tuple[set[str], set[str]]:
        """The tables every tracked migration promised, and the tables there are."""
        with registry.get_app("billing").connect() as connection:
            names = connection.execute(sa.text("SELECT name FROM ro_migrations")).scalars()
            promised = {name.removesuffix(".py")[4:] for name in names}
            present = set(sa.inspect(connection).get_table_names())
        return promised, present

    async def test_two_sharing_apps_registering_at_once(
        self, registry: AppRegistry, tmp_path: Path
    ) -> None:
        """Both register; every migration tracked has its table."""
        await registry.register_app("billing", {"database": {"url": "sqlite://", "shared": True}})
        configs = {
            app: {
                "use_connection": "billing",
                "migrations": {"directory": str(self.slow_migrations(tmp_path, app).directory)},
            }
            for app in ("shop", "blog")
        }
        async with anyio.create_task_group() as group:
            for app, config in configs.items():
                group.start_soon(registry.register_app, app, config)
        promised, present = self.books_balance(registry)
        assert len(promised) == 10
        assert promised <= present

    async def test_a_session_in_use_while_a_sharing_app_registers(
        self, registry: AppRegistry, tmp_path: Path
    ) -> None:
        """Another thread's session commits and rolls back meanwhile; the books still balance."""
        billing = await registry.register_app(
            "billing", {"database": {"url": "sqlite://", "shared": True}}
        )
        with billing.connect() as connection:
            connection.execute(sa.text("CREATE TABLE notes (id INTEGER PRIMARY KEY)"))
            connection.commit()
        stop = threading.Event()
        errors: list[BaseException] = []

        def busy() -> None:
            try:
                while not stop.is_set():
                    with billing.session() as session:
                        session.execute(sa.text("INSERT INTO notes DEFAULT VALUES"))
                        session.commit()
                        session.execute(sa.text("SELECT count(*) FROM notes"))
                        session.rollback()
            except BaseException as exc:
                errors.append(exc)

        user = threading.Thread(target=busy)
        user.start()
        try:
            migrations = self.slow_migrations(tmp_path, "shop")
            await registry.register_app(
                "shop",
                {
                    "use_connection": "billing",
                    "migrations": {"directory": str(migrations.directory)},
                },
            )
        finally:
            stop.set()
            await anyio.to_thread.run_sync(user.join, 30)
        assert errors == []
        promised, present = self.books_balance(registry)
        assert len(promised) == 5
        assert promised <= present


class TestAFailedRegistrationUndoesOnlyItsOwn:
    async def test_seeds_of_an_earlier_registration_survive_a_failed_migration(
        self, registry: AppRegistry, database_url: str, migrations: Scripts, seeds: Scripts
    ) -> None:
        """The failed registration never seeded: the earlier registration's seeds stay."""
        config = app_config(database_url, migrations, seeds)
        await registry.register_app("shop", config)
        await registry.unregister_app("shop", rollback=False)
        migrations.migration("002_broken.py", FAIL)
        with pytest.raises(MigrationFailed):
            await registry.register_app("shop", config)
        assert labels(database_url) == ["first"]
        assert "unseed 001_first.py" not in seeds.calls()
        assert "down 001_items.py" not in migrations.calls()
