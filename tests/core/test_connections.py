"""Connections: URLs, shared and reference-counted engines, each app's face."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from rapid_objection.bus import mask_url
from rapid_objection.core._config import AppConfig, DatabaseConfig
from rapid_objection.core._connections import ConnectionManager, Engines, build_url
from rapid_objection.core._errors import AppAlreadyRegistered, ConfigError, ConnectionFailed
from tests.core.fixtures_migrations import server_connections

SECRET = "hunter2"  # noqa: S105 - a planted password that must never show


def db(url: str, **settings: Any) -> DatabaseConfig:
    return DatabaseConfig(url=url, **settings)


def select_one(engine: sa.Engine) -> int | None:
    with engine.connect() as connection:
        value: int | None = connection.execute(sa.text("SELECT 1")).scalar()
        return value


class TestBuildUrl:
    def test_url(self) -> None:
        """``database.url`` is parsed as it is, password included."""
        url = build_url("shop", db(f"postgresql+psycopg://shop:{SECRET}@db:5433/shop"))
        assert (url.drivername, url.host, url.port, url.database) == (
            "postgresql+psycopg",
            "db",
            5433,
            "shop",
        )
        assert url.password == SECRET

    def test_parts(self) -> None:
        """Without a URL the parts make one, the dialect naming dialect and driver."""
        config = DatabaseConfig(
            dialect="mysql+pymysql",
            host="db",
            port=3307,
            database="shop",
            user="shop",
            password=SECRET,
            query={"charset": "utf8mb4"},
        )
        url = build_url("shop", config)
        assert url.render_as_string(hide_password=False) == (
            f"mysql+pymysql://shop:{SECRET}@db:3307/shop?charset=utf8mb4"
        )

    def test_parts_override_the_url(self) -> None:
        """Parts next to a URL override its components, so a password can stay out of it."""
        config = DatabaseConfig(url="postgresql+psycopg://shop@db/shop", password=SECRET)
        assert build_url("shop", config).password == SECRET

    @pytest.mark.parametrize(
        ("config", "path"),
        [
            pytest.param(db(f"::{SECRET}::"), "apps.shop.database.url", id="malformed-url"),
            pytest.param(DatabaseConfig(), "apps.shop.database.url", id="nothing"),
            pytest.param(
                DatabaseConfig(host="db", password=SECRET),
                "apps.shop.database.dialect",
                id="parts-without-dialect",
            ),
        ],
    )
    def test_config_errors(self, config: DatabaseConfig, path: str) -> None:
        """A URL that is missing or malformed is a ConfigError at its dotted path, no password."""
        with pytest.raises(ConfigError) as caught:
            build_url("shop", config)
        assert caught.value.path == path
        assert path in str(caught.value)
        assert SECRET not in str(caught.value)

    @pytest.mark.parametrize(
        ("url", "says"),
        [
            pytest.param(f"nosuch://u:{SECRET}@h/d", "dialect 'nosuch'", id="unknown-dialect"),
            pytest.param(f"mysql+mysqldb://u:{SECRET}@h/d", "'mysqldb'", id="missing-driver"),
        ],
    )
    def test_not_installed(self, url: str, says: str) -> None:
        """A dialect or driver that is not installed fails the connection, saying which."""
        with pytest.raises(ConnectionFailed) as caught:
            build_url("shop", db(url))
        assert caught.value.app == "shop"
        assert says in str(caught.value)
        assert "not installed" in str(caught.value)
        assert SECRET not in str(caught.value)
        assert "***" in caught.value.url


class TestOpen:
    def test_new_engine_checked(self, engines: Engines, database_url: str) -> None:
        """An app gets a new engine, already proven by SELECT 1, counted once."""
        lease = engines.open("shop", db(database_url), None)
        assert not lease.reused
        assert not lease.shared
        assert select_one(lease.engine) == 1
        assert engines.is_open("shop")
        assert engines.info("shop").reference_count == 1

    def test_not_shared_by_default(self, engines: Engines, database_url: str) -> None:
        """Two apps on one URL get two engines unless they ask to share."""
        first = engines.open("shop", db(database_url), None)
        second = engines.open("billing", db(database_url), None)
        assert first.engine is not second.engine
        assert first.key == second.key
        assert engines.count() == 2
        assert engines.apps_of(first.key) == ("billing", "shop")

    def test_use_connection_by_name(self, engines: Engines, database_url: str) -> None:
        """``use_connection = "billing"`` reuses billing's shared engine and counts the app."""
        billing = engines.open("billing", db(database_url, shared=True), None)
        shop = engines.open("shop", DatabaseConfig(), "billing")
        assert shop.reused
        assert shop.shared
        assert shop.engine is billing.engine
        assert engines.count() == 1
        info = engines.info("shop")
        assert (info.reference_count, info.apps) == (2, ("billing", "shop"))

    def test_reference_counting(self, engines: Engines, database_url: str) -> None:
        """The engine stays for the apps still using it and is disposed with the last one."""
        billing = engines.open("billing", db(database_url, shared=True), None)
        engines.open("shop", DatabaseConfig(), "billing")
        gone = engines.release("billing")
        assert (gone.last_reference, gone.shared) == (False, True)
        assert gone.info.apps == ("billing", "shop")
        assert not engines.is_open("billing")
        assert select_one(billing.engine) == 1
        assert engines.info("shop").apps == ("shop",)
        assert engines.count() == 1
        last = engines.release("shop")
        assert engines.count() == 0
        assert (last.last_reference, last.shared) == (True, True)
        assert last.info.reference_count == 1
        with pytest.raises(sa.exc.InvalidRequestError, match="is closed"):
            select_one(billing.engine)

    def test_use_connection_true_takes_newest(
        self, engines: Engines, database_url: str, tmp_path: Path
    ) -> None:
        """``use_connection = true`` reuses the shared engine opened last."""
        engines.open("older", db(f"sqlite:///{tmp_path / 'older.db'}", shared=True), None)
        newest = engines.open("newest", db(database_url, shared=True), None)
        engines.open("private", db(f"sqlite:///{tmp_path / 'private.db'}"), None)
        assert engines.open("shop", DatabaseConfig(), True).engine is newest.engine
        desk = db(f"sqlite:///{tmp_path / 'desk.db'}")
        assert engines.open("desk", desk, use_connection=False).reused is False

    def test_same_real_url_shared(self, engines: Engines, database_url: str) -> None:
        """``shared = true`` on the URL of an open shared engine reuses it."""
        first = engines.open("billing", db(database_url, shared=True), None)
        second = engines.open("shop", db(database_url, shared=True), None)
        assert second.reused
        assert second.engine is first.engine
        assert engines.info("billing").reference_count == 2

    def test_shared_needs_both(self, engines: Engines, database_url: str) -> None:
        """A shared app does not take a private engine, nor a private app a shared one."""
        private = engines.open("billing", db(database_url), None)
        shared = engines.open("shop", db(database_url, shared=True), None)
        other = engines.open("desk", db(database_url), None)
        assert len({id(private.engine), id(shared.engine), id(other.engine)}) == 3

    def test_different_connect_args_are_different_connections(
        self, engines: Engines, postgres_url: str
    ) -> None:
        """Two shared apps on one URL with their own search_path keep their own schemas."""
        admin = sa.create_engine(postgres_url)
        with admin.begin() as connection:
            connection.execute(sa.text("CREATE SCHEMA billing"))
            connection.execute(sa.text("CREATE SCHEMA shop"))
        admin.dispose()
        billing = engines.open(
            "billing",
            db(postgres_url, shared=True, connect_args={"options": "-csearch_path=billing"}),
            None,
        )
        shop = engines.open(
            "shop",
            db(postgres_url, shared=True, connect_args={"options": "-csearch_path=shop"}),
            None,
        )
        assert not shop.reused
        with shop.engine.begin() as connection:
            connection.execute(sa.text("CREATE TABLE orders (id integer)"))
        with billing.engine.connect() as connection:
            found = (
                connection.execute(
                    sa.text(
                        "SELECT table_schema FROM information_schema.tables"
                        " WHERE table_name = 'orders'"
                    )
                )
                .scalars()
                .all()
            )
        assert found == ["shop"]

    @pytest.mark.parametrize(
        "settings",
        [
            pytest.param({"connect_args": {"timeout": 7}}, id="connect_args"),
            pytest.param({"pool_recycle": 60.0}, id="pool_recycle"),
            pytest.param({"pool_pre_ping": True}, id="pool_pre_ping"),
            pytest.param({"echo": True}, id="echo"),
        ],
    )
    def test_shared_only_with_the_same_settings(
        self, engines: Engines, tmp_path: Path, settings: dict[str, Any]
    ) -> None:
        """An engine's connect arguments and pool settings are part of what is shared."""
        url = f"sqlite:///{tmp_path / 'one.db'}"
        first = engines.open("billing", db(url, shared=True), None)
        second = engines.open("shop", db(url, shared=True, **settings), None)
        assert not second.reused
        assert second.engine is not first.engine
        same = engines.open("desk", db(url, shared=True, **settings), None)
        assert same.engine is second.engine

    def test_identity_is_the_real_url(self, engines: Engines, postgres_admin_url: str) -> None:
        """URLs that differ only by password are different connections (trust auth ignores it)."""
        url = sa.make_url(postgres_admin_url)
        one, two = SECRET + "-one", SECRET + "-two"
        first = engines.open(
            "a", db(url.set(password=one).render_as_string(False), shared=True), None
        )
        second = engines.open(
            "b", db(url.set(password=two).render_as_string(False), shared=True), None
        )
        assert not second.reused
        assert first.engine is not second.engine
        assert first.key != second.key
        assert engines.info("a").url == engines.info("b").url

    def test_concurrent_shared_opens_make_one_engine(
        self, engines: Engines, database_url: str
    ) -> None:
        """Apps opening one shared URL at once end up on one engine."""
        barrier = threading.Barrier(4)

        def open_app(name: str) -> sa.Engine:
            barrier.wait()
            return engines.open(name, db(database_url, shared=True), None).engine

        with ThreadPoolExecutor(4) as pool:
            opened = list(pool.map(open_app, ["a", "b", "c", "d"]))
        assert all(engine is opened[0] for engine in opened)
        assert engines.info("a").reference_count == 4

    @pytest.mark.parametrize(
        ("use", "says"),
        [
            pytest.param("billing", "'billing', which is not open", id="not-open"),
            pytest.param("private", "'private', which is not shared", id="not-shared"),
            pytest.param(True, "none is open", id="no-shared"),
            pytest.param("shop", "its own connection", id="itself"),
        ],
    )
    def test_use_connection_errors(
        self, engines: Engines, database_url: str, use: str | bool, says: str
    ) -> None:
        """A connection that cannot be reused is a ConfigError naming both apps."""
        engines.open("private", db(database_url), None)
        with pytest.raises(ConfigError) as caught:
            engines.open("shop", DatabaseConfig(), use)
        assert caught.value.path == "apps.shop.use_connection"
        assert says in str(caught.value)
        assert "'shop'" in str(caught.value)
        assert not engines.is_open("shop")

    def test_twice(self, engines: Engines, database_url: str) -> None:
        """An app has one engine at a time."""
        engines.open("shop", db(database_url), None)
        with pytest.raises(AppAlreadyRegistered):
            engines.open("shop", db(database_url), None)

    @pytest.mark.parametrize(
        "url",
        [
            pytest.param(f"postgresql+psycopg://shop:{SECRET}@127.0.0.1:1/shop", id="postgresql"),
            pytest.param(f"mysql+pymysql://shop:{SECRET}@127.0.0.1:1/shop", id="mariadb"),
            pytest.param("sqlite:////nonexistent-dir/shop.db", id="sqlite"),
        ],
    )
    def test_unreachable(self, engines: Engines, url: str) -> None:
        """A server that does not answer fails the open, naming the app and the masked URL."""
        with pytest.raises(ConnectionFailed) as caught:
            engines.open("shop", db(url), None)
        error = caught.value
        assert error.app == "shop"
        assert SECRET not in str(error)
        assert error.url == sa.make_url(url).render_as_string(hide_password=True)
        assert f"app 'shop' cannot connect to {error.url}" in str(error)
        assert error.reason
        assert not engines.is_open("shop")

    def test_unreachable_with_a_query_password(self, engines: Engines) -> None:
        """A password given as ``?password=`` is masked too, and the message keeps the
        ': ' before the reason when masked again where it is shown (``run`` does)."""
        url = f"postgresql+psycopg://nouser@127.0.0.1:1/shop?password={SECRET}"
        with pytest.raises(ConnectionFailed) as caught:
            engines.open("shop", db(url), None)
        message = str(caught.value)
        assert SECRET not in message
        assert (
            "cannot connect to postgresql+psycopg://nouser@127.0.0.1:1/shop?password=***: "
            in message
        )
        assert mask_url(message) == message

    def test_engine_arguments_refused(self, engines: Engines, tmp_path: Path) -> None:
        """Settings the driver's URL form rejects are a ConfigError, without the password."""
        with pytest.raises(ConfigError) as caught:
            engines.open("shop", db(f"sqlite://u:{SECRET}@/{tmp_path}/x.db"), None)
        assert caught.value.path == "apps.shop.database"
        assert SECRET not in str(caught.value)


class TestPool:
    def test_settings_applied(self, engines: Engines, database_url: str) -> None:
        """Pool size, overflow, timeout, recycle, pre-ping and echo reach the engine."""
        settings = DatabaseConfig(
            url=database_url,
            pool_size=3,
            max_overflow=2,
            pool_timeout=7.0,
            pool_recycle=60.0,
            pool_pre_ping=True,
            echo=True,
        )
        engine = engines.open("shop", settings, None).engine
        pool = engine.pool
        assert isinstance(pool, sa.QueuePool)
        assert pool.size() == 3
        assert pool._max_overflow == 2
        assert pool._timeout == 7.0
        assert pool._recycle == 60.0
        assert pool._pre_ping
        assert engine.echo
        assert engines.info("shop").pool_size == 3

    def test_connect_args(self, engines: Engines, database_url: str) -> None:
        """``connect_args`` go to the driver as given."""
        backend = sa.make_url(database_url).get_backend_name()
        arguments: dict[str, dict[str, Any]] = {
            "sqlite": {"isolation_level": "IMMEDIATE"},
            "postgresql": {"application_name": "ro-test"},
            "mysql": {"init_command": "SET @ro_marker = 'ro-test'"},
        }
        engine = engines.open(
            "shop", db(database_url, connect_args=arguments[backend]), None
        ).engine
        with engine.connect() as connection:
            raw: Any = connection.connection.dbapi_connection
            if backend == "sqlite":
                assert raw.isolation_level == "IMMEDIATE"
            else:
                query = {
                    "postgresql": "SELECT current_setting('application_name')",
                    "mysql": "SELECT @ro_marker",
                }[backend]
                assert connection.execute(sa.text(query)).scalar() == "ro-test"

    def test_connect_timeout_default(self, engines: Engines, database_url: str) -> None:
        """Server drivers wait 5 s at most to connect unless told otherwise; SQLite gets none."""
        engine = engines.open("shop", db(database_url), None).engine
        _, params = engine.dialect.create_connect_args(engine.url)
        backend = engine.url.get_backend_name()
        if backend == "sqlite":
            assert "connect_timeout" not in params
        else:
            with engine.connect() as connection:
                raw: Any = connection.connection.dbapi_connection
                if backend == "postgresql":
                    assert raw.info.get_parameters().get("connect_timeout", "5") == "5"
                else:
                    assert raw.connect_timeout == 5

    def test_a_silent_server_is_noticed_by_the_driver(
        self, engines: Engines, database_url: str
    ) -> None:
        """PostgreSQL connections send TCP keepalives; MySQL ones time reads and writes out."""
        engine = engines.open("shop", db(database_url), None).engine
        backend = engine.url.get_backend_name()
        if backend == "sqlite":
            return  # no server, no socket
        with engine.connect() as connection:
            raw: Any = connection.connection.dbapi_connection
            if backend == "postgresql":
                parameters = raw.info.get_parameters()
                assert parameters.get("keepalives") == "1"
                assert parameters.get("keepalives_idle") == "30"
            else:
                assert raw._read_timeout == 300
                assert raw._write_timeout == 300

    def test_user_read_timeout_kept(self, engines: Engines, mariadb_admin_url: str) -> None:
        """A read timeout the user set is left alone."""
        engine = engines.open(
            "shop", db(mariadb_admin_url, connect_args={"read_timeout": 3}), None
        ).engine
        with engine.connect() as connection:
            raw: Any = connection.connection.dbapi_connection
            assert raw._read_timeout == 3

    def test_user_connect_timeout_kept(self, engines: Engines, mariadb_admin_url: str) -> None:
        """A connect timeout the user set is left alone."""
        engine = engines.open(
            "shop", db(mariadb_admin_url, connect_args={"connect_timeout": 2}), None
        ).engine
        with engine.connect() as connection:
            raw: Any = connection.connection.dbapi_connection
            assert raw.connect_timeout == 2


class TestMemorySqlite:
    @pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:"])
    def test_one_database(self, engines: Engines, url: str) -> None:
        """A table made on one connection is seen by another, a Session and another thread."""
        engine = engines.open("shop", db(url, pool_size=5, max_overflow=1), None).engine
        assert isinstance(engine.pool, sa.StaticPool)
        with engine.begin() as connection:
            connection.execute(sa.text("CREATE TABLE t (x INTEGER)"))
            connection.execute(sa.text("INSERT INTO t VALUES (42)"))
        with engine.connect() as other:
            assert other.execute(sa.text("SELECT x FROM t")).scalar() == 42
        with Session(engine) as session:
            assert session.execute(sa.text("SELECT x FROM t")).scalar() == 42

        def from_thread() -> Any:
            with engine.connect() as connection:
                return connection.execute(sa.text("SELECT x FROM t")).scalar()

        with ThreadPoolExecutor(1) as pool:
            assert pool.submit(from_thread).result() == 42
        assert engines.info("shop").pool_size is None

    def test_one_thread_at_a_time(self, engines: Engines) -> None:
        """Another thread waits for the connection, up to ``pool_timeout`` seconds."""
        engine = engines.open("shop", db("sqlite://", pool_timeout=0.2), None).engine

        def from_thread() -> Any:
            with engine.connect() as connection:
                return connection.execute(sa.text("SELECT 1")).scalar()

        with engine.connect() as held, ThreadPoolExecutor(1) as pool:
            with pytest.raises(sa.exc.TimeoutError, match="in use by another thread"):
                pool.submit(from_thread).result()
            assert held.execute(sa.text("SELECT 3")).scalar() == 3
        with ThreadPoolExecutor(1) as pool:
            assert pool.submit(from_thread).result() == 1

    def test_two_apps_two_databases(self, engines: Engines) -> None:
        """Two private in-memory apps do not see each other's tables."""
        first = engines.open("a", db("sqlite://"), None).engine
        second = engines.open("b", db("sqlite://"), None).engine
        with first.begin() as connection:
            connection.execute(sa.text("CREATE TABLE t (x INTEGER)"))
        with second.connect() as connection, pytest.raises(sa.exc.OperationalError):
            connection.execute(sa.text("SELECT x FROM t"))


class TestInfo:
    def test_fields(self, engines: Engines, database_url: str) -> None:
        """info() describes the connection without its password."""
        url = sa.make_url(database_url)
        engines.open("billing", db(database_url, shared=True, pool_size=4), None)
        engines.open("shop", DatabaseConfig(), "billing")
        info = engines.info("shop")
        driver = {"sqlite": "pysqlite", "postgresql": "psycopg", "mysql": "pymysql"}
        assert info.dialect == url.get_backend_name()
        assert info.driver == driver[info.dialect]
        assert (info.host, info.port, info.database, info.user) == (
            url.host,
            url.port,
            url.database,
            url.username,
        )
        assert info.url == url.render_as_string(hide_password=True)
        assert (info.pool_size, info.pool_checked_out) == (4, 0)
        assert (info.shared, info.reference_count, info.apps) == (True, 2, ("billing", "shop"))

    def test_password_masked(self, engines: Engines, postgres_admin_url: str) -> None:
        """The URL in info() never carries the password."""
        url = sa.make_url(postgres_admin_url).set(password=SECRET)
        engines.open("shop", db(url.render_as_string(hide_password=False)), None)
        info = engines.info("shop")
        assert SECRET not in info.url
        assert "***" in info.url

    def test_unknown_app(self, engines: Engines) -> None:
        with pytest.raises(KeyError):
            engines.info("nobody")
        with pytest.raises(KeyError):
            engines.release("nobody")


class TestCloseAll:
    def test_every_engine(self, engines: Engines, database_url: str, tmp_path: Path) -> None:
        """Shutdown disposes each engine once, reporting its apps."""
        billing = engines.open("billing", db(database_url, shared=True), None)
        engines.open("shop", DatabaseConfig(), "billing")
        alone = engines.open("desk", db(f"sqlite:///{tmp_path / 'desk.db'}"), None)
        closed = engines.close_all()
        assert [(apps, release.last_reference, release.shared) for apps, release in closed] == [
            (("billing", "shop"), True, True),
            (("desk",), True, False),
        ]
        assert closed[0][1].info.reference_count == 2
        assert not engines.is_open("shop")
        for engine in (billing.engine, alone.engine):
            with pytest.raises(sa.exc.InvalidRequestError):
                select_one(engine)
        assert engines.close_all() == []


class TestConnectionManager:
    @pytest.fixture
    def manager(self, engines: Engines, database_url: str) -> ConnectionManager:
        config = AppConfig(database=db(database_url, shared=True))
        lease = engines.open("shop", config.database, None)
        return ConnectionManager(
            "shop",
            config,
            lease.engine,
            info_source=lambda: engines.info("shop"),
            reused=lease.reused,
            registered_at=1000.0,
        )

    def test_connect_and_session(self, manager: ConnectionManager) -> None:
        """The app's connections and sessions run on its engine."""
        with manager.connect() as connection:
            assert connection.execute(sa.text("SELECT 1")).scalar() == 1
        with manager.session() as session:
            assert session.get_bind() is manager.engine
            assert session.execute(sa.text("SELECT 1")).scalar() == 1
        with manager.session(autoflush=False) as session:
            assert not session.autoflush

    def test_status(self, manager: ConnectionManager, engines: Engines) -> None:
        """status() tells the app's connection, pool and models, without a password."""
        engines.open("billing", DatabaseConfig(), "shop")
        status = manager.status()
        assert status["app"] == "shop"
        assert status["open"] is True
        assert status["dialect"] == manager.engine.url.get_backend_name()
        assert status["url"] == manager.engine.url.render_as_string(hide_password=True)
        assert (status["shared"], status["reused"], status["reference_count"]) == (True, False, 2)
        assert status["apps"] == ["billing", "shop"]
        assert status["pool"]["checked_out"] == 0
        assert (status["models"], status["registered_at"]) == (0, 1000.0)
        assert manager.info().apps == ("billing", "shop")

    def test_status_after_release(self, manager: ConnectionManager, engines: Engines) -> None:
        """A released app still answers status(), as closed."""
        engines.release("shop")
        status = manager.status()
        assert (status["open"], status["reference_count"], status["pool"]) == (False, 0, {})

    def test_without_info_source(self, engines: Engines, database_url: str) -> None:
        """A manager made without the engine table describes its own engine."""
        lease = engines.open("shop", db(database_url), None)
        manager = ConnectionManager("shop", AppConfig(database=db(database_url)), lease.engine)
        assert manager.info().apps == ("shop",)
        assert manager.info().dialect == lease.engine.url.get_backend_name()
        status = manager.status()
        assert (status["open"], status["shared"], status["reference_count"]) == (True, False, 1)

    def test_repr_masked(self, engines: Engines, postgres_admin_url: str) -> None:
        url = sa.make_url(postgres_admin_url).set(password=SECRET)
        config = AppConfig(database=db(url.render_as_string(hide_password=False)))
        lease = engines.open("shop", config.database, None)
        manager = ConnectionManager("shop", config, lease.engine)
        assert SECRET not in repr(manager)
        assert SECRET not in repr(lease)
        assert SECRET not in str(manager.status())


class TestCheckedOutAtClose:
    @pytest.mark.parametrize("database_url", ["postgresql", "mariadb"], indirect=True)
    @pytest.mark.parametrize("close", ["release", "close_all"])
    def test_a_connection_out_when_its_engine_closes_is_closed_when_returned(
        self, engines: Engines, database_url: str, close: str
    ) -> None:
        """The server holds no session of an app once its connection comes back."""
        lease = engines.open("shop", db(database_url), None)
        connection = lease.engine.connect()
        connection.execute(sa.text("SELECT 1"))
        if close == "release":
            engines.release("shop")
        else:
            engines.close_all()
        assert server_connections(database_url) == 1  # still in use: left alone
        connection.close()
        assert server_connections(database_url) == 0
