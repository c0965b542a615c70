"""``register_app`` is all or nothing: a registration that fails at any stage leaves the
database, the connection table and the bus as they were before it.

Every test runs on SQLite and on the real PostgreSQL (``sql_url``). The database starts
with an earlier registration of the app (batch 1 of its migrations and seeds, kept by
an unregistration without rollback); the registration under test applies batch 2 and
then fails: batch 1 must survive it, batch 2 must be gone, row for row.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import pytest
import sqlalchemy as sa

from rapid_objection.bus import Bus, ConnectionInfo
from rapid_objection.bus._redis_memory import forget_memory_server
from rapid_objection.core import (
    AppRegistry,
    ConnectionFailed,
    MigrationFailed,
    ModelLoadError,
    PluginVeto,
    RegistryError,
    SeedFailed,
)
from rapid_objection.plugin_workers import PluginInterface
from tests.core.fixtures_migrations import (
    FAIL,
    AlembicScripts,
    Scripts,
    create_table,
    delete,
    drop_table,
    insert,
    server_connections,
)

pytestmark = pytest.mark.anyio

HOOKS = (
    "app_registration_started",
    "connection_created",
    "auto_operations_started",
    "auto_operations_completed",
    "app_registered",
)


class Refuser(PluginInterface):
    """Fails the hook named by ``refuse`` (a veto, as required with on_failure abort) and
    records the context of every operation_failed it receives; with ``stall``, its
    app_registered hook never returns (``stalled`` is set when it starts)."""

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        super().__init__("refuser", "1.0.0")
        self.refuse: str | None = None
        self.stall = False
        self.stalled = anyio.Event()
        self.failures: list[tuple[str, dict[str, Any]]] = []

    def _check(self, hook: str) -> None:
        if self.refuse == hook:
            raise PermissionError(f"refused at {hook}")

    async def on_app_registration_started(self, app_name: str, config: Any) -> None:
        self._check("app_registration_started")

    async def on_connection_created(self, app_name: str, connection: ConnectionInfo) -> None:
        self._check("connection_created")

    async def on_auto_operations_started(self, app_name: str, connection: Any, config: Any) -> None:
        self._check("auto_operations_started")

    async def on_auto_operations_completed(self, app_name: str, result: Any) -> None:
        self._check("auto_operations_completed")

    async def on_app_registered(self, app_name: str, connection: Any, config: Any) -> None:
        self._check("app_registered")
        if self.stall:
            self.stalled.set()
            await anyio.sleep_forever()

    async def on_operation_failed(
        self, app_name: str, operation: str, error: Any, context: dict[str, Any]
    ) -> None:
        self.failures.append((app_name, dict(context)))


@dataclass
class Bench:
    """A registry on an embedded bus, its refusing plugin, and the bus to look at."""

    registry: AppRegistry
    refuser: Refuser
    bus: Bus
    errors: list[dict[str, Any]] = field(default_factory=list)


@pytest.fixture
async def bench() -> AsyncIterator[Bench]:
    name = f"registry-{secrets.token_hex(4)}"
    url = f"memory://{name}"
    try:
        async with (
            AppRegistry({"bus": {"url": url, "ack_timeout": 5}}) as registry,
            Bus.connect(url) as bus,
        ):
            refuser: Refuser = await registry.load_plugin(
                Refuser, required=True, on_failure="abort", max_deliveries=1
            )
            await registry.refresh_plugins()
            made = Bench(registry, refuser, bus)
            registry.on("error", made.errors.append)
            yield made
    finally:
        forget_memory_server(name)


FENCE = "ro_owners"
"""The fence of app ownership: the highest ownership token the database has seen. A
failed registration leaves its token there on purpose (a fence that went back would
let a stale owner in again), so snapshots leave it out."""


def snapshot(url: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every table of the database and its rows (tracking times and the fence left out)."""
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    try:
        with engine.connect() as connection:
            found: dict[str, list[tuple[Any, ...]]] = {}
            for table in set(sa.inspect(connection).get_table_names()) - {FENCE}:
                reflected = sa.Table(table, sa.MetaData(), autoload_with=connection)
                shown = [c for c in reflected.c if not c.name.endswith("_at")]
                rows = connection.execute(sa.select(*shown)).all()
                found[table] = sorted(tuple(row) for row in rows)
            return found
    finally:
        engine.dispose()


async def no_server_connections(url: str) -> None:
    """The server holds no session on the database within a second (a session whose
    client closed ends a moment later on the server)."""
    with anyio.fail_after(1):
        while server_connections(url) != 0:
            await anyio.sleep(0.02)


@dataclass
class Shop:
    """The app's files: batch 1 (table items, seed first) applied by an earlier
    registration; batch 2 (table orders, seed second) pending."""

    url: str
    migrations: Scripts
    seeds: Scripts
    models: str | None = None

    def config(self) -> dict[str, Any]:
        config: dict[str, Any] = {
            "database": {"url": self.url},
            "migrations": {"directory": str(self.migrations.directory)},
            "seeds": {"directory": str(self.seeds.directory)},
        }
        if self.models is not None:
            config["models"] = {"module": self.models}
        return config


async def shop_with_batch_one(bench: Bench, url: str, tmp_path: Path) -> Shop:
    migrations = Scripts.at(tmp_path / "migrations")
    migrations.migration("001_items.py", create_table("items"), drop_table("items"))
    seeds = Scripts.at(tmp_path / "seeds")
    seeds.seed("001_first.py", insert("items", "first", via="connection"), delete("items", "first"))
    shop = Shop(url, migrations, seeds)
    await bench.registry.register_app("shop", shop.config())
    await bench.registry.unregister_app("shop", rollback=False)
    migrations.migration("002_orders.py", create_table("orders"), drop_table("orders"))
    seeds.seed(
        "002_second.py", insert("items", "second", via="connection"), delete("items", "second")
    )
    return shop


@dataclass(frozen=True)
class Failure:
    """Where a registration fails, and the error it raises."""

    stage: str
    error: type[BaseException]


FAILURES = [
    Failure("connection", ConnectionFailed),
    Failure("migrations", MigrationFailed),
    Failure("seeds", SeedFailed),
    Failure("models", ModelLoadError),
    *(Failure(hook, PluginVeto) for hook in HOOKS),
]


def break_at(stage: str, shop: Shop, bench: Bench) -> None:
    """Make the next registration of ``shop`` fail at ``stage``, after what comes before
    it was applied (``003_broken`` after ``002``, in the same batch)."""
    if stage == "connection":
        shop.url = "postgresql+psycopg://nobody@127.0.0.1:1/nothing"
    elif stage == "migrations":
        shop.migrations.migration("003_broken.py", FAIL)
    elif stage == "seeds":
        shop.seeds.seed("003_broken.py", FAIL)
    elif stage == "models":
        shop.models = "tests.core.no_such_models_module"
    else:
        bench.refuser.refuse = stage


def mend(stage: str, shop: Shop, bench: Bench, url: str) -> None:
    shop.url = url
    (shop.migrations.directory / "003_broken.py").unlink(missing_ok=True)
    (shop.seeds.directory / "003_broken.py").unlink(missing_ok=True)
    shop.models = None
    bench.refuser.refuse = None


class TestAFailedRegistrationLeavesNothing:
    @pytest.mark.parametrize("failure", FAILURES, ids=[f.stage for f in FAILURES])
    async def test_at_every_stage(
        self, bench: Bench, sql_url: str, tmp_path: Path, failure: Failure
    ) -> None:
        """The stage's own error is raised; operation_failed names the stage; the
        database holds exactly what it held before (batch 1, nothing of batch 2); the
        connection and the app's ownership are released; a mended registration then
        applies batch 2."""
        shop = await shop_with_batch_one(bench, sql_url, tmp_path)
        before = snapshot(sql_url)
        assert before["items"] == [(1, "first")]
        break_at(failure.stage, shop, bench)
        with pytest.raises(failure.error):
            await bench.registry.register_app("shop", shop.config())
        assert snapshot(sql_url) == before
        assert ("shop", failure.stage) in [
            (app, context["stage"]) for app, context in bench.refuser.failures
        ]
        assert not bench.registry.has_app("shop")
        assert bench.registry.engines.count() == 0
        await no_server_connections(sql_url)
        assert await bench.bus.directory.apps() == {}
        mend(failure.stage, shop, bench, sql_url)
        await bench.registry.register_app("shop", shop.config())
        assert [label for _, label in snapshot(sql_url)["items"]] == ["first", "second"]

    async def test_a_first_registration_leaves_only_the_empty_tracking_tables(
        self, bench: Bench, sql_url: str, tmp_path: Path
    ) -> None:
        """On an empty database: no table and no row of the app remains, only the
        tracking tables that every app of the database shares, without a row (and the
        ownership fence)."""
        migrations = Scripts.at(tmp_path / "migrations")
        migrations.migration("001_items.py", create_table("items"), drop_table("items"))
        seeds = Scripts.at(tmp_path / "seeds")
        seeds.seed("001_first.py", insert("items", "first", via="connection"))
        shop = Shop(sql_url, migrations, seeds, models="tests.core.no_such_models_module")
        with pytest.raises(ModelLoadError):
            await bench.registry.register_app("shop", shop.config())
        assert snapshot(sql_url) == {"ro_migrations": [], "ro_seeds": []}

    async def test_a_reused_shared_connection_keeps_its_first_app(
        self, bench: Bench, sql_url: str, tmp_path: Path
    ) -> None:
        """An app that reused a shared connection and failed drops its reference only:
        the app that opened the connection keeps it, with its data."""
        first = Scripts.at(tmp_path / "first")
        first.migration("001_users.py", create_table("users"), drop_table("users"))
        await bench.registry.register_app(
            "first",
            {
                "database": {"url": sql_url, "shared": True},
                "migrations": {"directory": str(first.directory)},
            },
        )
        migrations = Scripts.at(tmp_path / "migrations")
        migrations.migration("001_items.py", create_table("items"), drop_table("items"))
        before = snapshot(sql_url)
        with pytest.raises(ModelLoadError):
            await bench.registry.register_app(
                "second",
                {
                    "use_connection": "first",
                    "migrations": {"directory": str(migrations.directory)},
                    "models": {"module": "tests.core.no_such_models_module"},
                },
            )
        assert snapshot(sql_url) == before
        assert bench.registry.engines.info("first").reference_count == 1
        with bench.registry.get_app("first").connect() as connection:
            assert connection.execute(sa.text("SELECT count(*) FROM users")).scalar() == 0

    async def test_alembic_returns_to_the_revision_before(
        self, bench: Bench, sql_url: str, tmp_path: Path
    ) -> None:
        """Alembic mode: the failed registration's upgrade is downgraded again, to the
        revision the earlier registration left."""
        scripts = AlembicScripts.at(tmp_path / "alembic", table="items")
        scripts.create_table()
        config: dict[str, Any] = {
            "database": {"url": sql_url},
            "migrations": {"alembic": str(scripts.directory)},
        }
        await bench.registry.register_app("shop", config)
        await bench.registry.unregister_app("shop", rollback=False)
        scripts.add_column("name")
        before = snapshot(sql_url)
        config["models"] = {"module": "tests.core.no_such_models_module"}
        with pytest.raises(ModelLoadError):
            await bench.registry.register_app("shop", config)
        assert snapshot(sql_url) == before
        assert before["alembic_version_shop"] == [("rev1",)]


class TestARollbackThatFails:
    async def test_both_errors_are_reported(
        self, bench: Bench, sql_url: str, tmp_path: Path
    ) -> None:
        """A migration whose downgrade fails while a failed registration is undone: the
        stage's error is raised and names the rollback's failure too; operation_failed
        and the error listeners carry both."""
        shop = await shop_with_batch_one(bench, sql_url, tmp_path)
        shop.migrations.migration(
            "003_stuck.py", create_table("stuck"), 'raise RuntimeError("cannot drop stuck")'
        )
        break_at("models", shop, bench)
        with pytest.raises(ModelLoadError) as caught:
            await bench.registry.register_app("shop", shop.config())
        notes = "\n".join(getattr(caught.value, "__notes__", []))
        assert "failed at stage models" in notes
        assert "003_stuck.py" in notes
        assert "cannot drop stuck" in notes
        [(app, context)] = bench.refuser.failures
        assert app == "shop"
        assert context["stage"] == "models"
        assert "cannot drop stuck" in context["rollback_error"]
        phases = [error["phase"] for error in bench.errors if error["app"] == "shop"]
        assert phases == ["models", "rollback"]
        # Seeds were undone before the failing migration: only the migrations remain.
        assert snapshot(sql_url)["items"] == [(1, "first")]
        assert {"orders", "stuck"} <= set(snapshot(sql_url))
        assert not bench.registry.has_app("shop")
        assert bench.registry.engines.count() == 0

    async def test_a_cancelled_registration_says_its_rollback_failed(
        self, bench: Bench, sql_url: str, tmp_path: Path
    ) -> None:
        """Shutdown cancels a registration waiting on a plugin, and undoing it fails:
        the caller's error says the rollback failed (naming the step's error) instead of
        saying it was rolled back."""
        shop = await shop_with_batch_one(bench, sql_url, tmp_path)
        shop.migrations.migration(
            "003_stuck.py", create_table("stuck"), 'raise RuntimeError("cannot drop stuck")'
        )
        bench.refuser.stall = True
        outcome: list[RegistryError] = []

        async def register() -> None:
            try:
                await bench.registry.register_app("shop", shop.config())
            except RegistryError as exc:
                outcome.append(exc)

        async with anyio.create_task_group() as group:
            group.start_soon(register)
            with anyio.fail_after(10):
                await bench.refuser.stalled.wait()
            await bench.registry.shutdown(1.0)
        (error,) = outcome
        said = str(error)
        assert "shutting down: register_app('shop') was cancelled; " in said
        assert "failed at stage app_registered, and rolling it back failed too" in said
        assert "003_stuck.py" in said
        assert "cannot drop stuck" in said
        assert "was rolled back" not in said
        assert not bench.registry.has_app("shop")

    async def test_the_note_says_what_was_rolled_back(
        self, bench: Bench, sql_url: str, tmp_path: Path
    ) -> None:
        """A rollback that succeeds is said on the error as well: the stage and what
        was undone."""
        shop = await shop_with_batch_one(bench, sql_url, tmp_path)
        break_at("models", shop, bench)
        with pytest.raises(ModelLoadError) as caught:
            await bench.registry.register_app("shop", shop.config())
        [note] = caught.value.__notes__
        assert note == (
            "registration of app 'shop' failed at stage models and was rolled back: "
            "seeds batch 2 (002_second.py), migrations batch 2 (002_orders.py)"
        )
