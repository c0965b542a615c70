"""Database lanes of the data-layer tests: SQLite, a real PostgreSQL and a real MariaDB.

``database_url`` runs a test on every lane; ``sql_url`` on SQLite and PostgreSQL only
(the behaviours docs/architecture.md promises on those two). PostgreSQL and MariaDB lanes get a
fresh database per test, dropped afterwards. Outside CI a lane whose server does not
answer is skipped with one line; with ``CI=true`` it fails instead.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from rapid_objection.bus._redis_memory import forget_memory_server
from rapid_objection.core import AppRegistry
from rapid_objection.core._connections import Engines
from tests.core.fixtures_migrations import (
    Scripts,
    create_table,
    delete,
    drop_table,
    insert,
)

POSTGRES_ADMIN_URL = os.environ.get(
    "RAPID_OBJECTION_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
MARIADB_ADMIN_URL = os.environ.get(
    "RAPID_OBJECTION_TEST_MARIADB_URL", "mysql+pymysql://root@127.0.0.1:3306/test"
)
IN_CI = os.environ.get("CI") == "true"


def _admin_engine(url: str) -> sa.Engine:
    """An AUTOCOMMIT engine without a pool, for CREATE/DROP DATABASE."""
    return sa.create_engine(
        url,
        isolation_level="AUTOCOMMIT",
        poolclass=sa.NullPool,
        connect_args={"connect_timeout": 1},
    )


def _answers(url: str) -> str | None:
    """None when the server answers ``SELECT 1``, else the reason."""
    engine = _admin_engine(url)
    try:
        with engine.connect() as connection:
            connection.execute(sa.text("SELECT 1"))
    except sa.exc.SQLAlchemyError as exc:
        return str(exc.orig if isinstance(exc, sa.exc.DBAPIError) else exc).splitlines()[0]
    finally:
        engine.dispose()
    return None


def _require(lane: str, url: str) -> str:
    reason = _answers(url)
    if reason is not None:
        shown = sa.make_url(url).render_as_string(hide_password=True)
        message = f"{lane} lane: {shown} does not answer ({reason})"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return url


@pytest.fixture(scope="session")
def postgres_admin_url() -> str:
    """The PostgreSQL server of the postgresql lane; skipped (or, in CI, failed) when down."""
    return _require("postgresql", POSTGRES_ADMIN_URL)


@pytest.fixture(scope="session")
def mariadb_admin_url() -> str:
    """The MariaDB server of the mariadb lane; skipped (or, in CI, failed) when down."""
    return _require("mariadb", MARIADB_ADMIN_URL)


def _fresh_name() -> str:
    return f"ro_t_{secrets.token_hex(6)}"


def _postgres_database(admin_url: str) -> Iterator[str]:
    name = _fresh_name()
    admin = _admin_engine(admin_url)
    try:
        with admin.connect() as connection:
            connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
        yield sa.make_url(admin_url).set(database=name).render_as_string(hide_password=False)
        with admin.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


def _mariadb_database(admin_url: str) -> Iterator[str]:
    name = _fresh_name()
    admin = _admin_engine(admin_url)
    try:
        with admin.connect() as connection:
            connection.execute(sa.text(f"CREATE DATABASE `{name}`"))
        yield sa.make_url(admin_url).set(database=name).render_as_string(hide_password=False)
        with admin.connect() as connection:
            # A connection a failed test left open would hold a metadata lock that makes
            # DROP DATABASE wait; MariaDB has no FORCE, so end those sessions first.
            leftover = connection.execute(
                sa.text("SELECT id FROM information_schema.processlist WHERE db = :name"),
                {"name": name},
            ).scalars()
            for session_id in list(leftover):
                with contextlib.suppress(sa.exc.DBAPIError):  # it may have ended meanwhile
                    connection.execute(sa.text(f"KILL {int(session_id)}"))
            connection.execute(sa.text(f"DROP DATABASE IF EXISTS `{name}`"))
    finally:
        admin.dispose()


def _lane_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    lane: str = request.param
    if lane == "sqlite":
        yield f"sqlite:///{tmp_path / 'lane.db'}"
    elif lane == "postgresql":
        yield from _postgres_database(request.getfixturevalue("postgres_admin_url"))
    else:
        yield from _mariadb_database(request.getfixturevalue("mariadb_admin_url"))


@pytest.fixture(params=["sqlite", "postgresql", "mariadb"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A URL of an empty database of its own, on each lane (SQLite file, PostgreSQL, MariaDB)."""
    yield from _lane_url(request, tmp_path)


@pytest.fixture(params=["sqlite", "postgresql"])
def sql_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A URL of an empty database of its own, on SQLite and on the real PostgreSQL."""
    yield from _lane_url(request, tmp_path)


@pytest.fixture
def postgres_url(postgres_admin_url: str) -> Iterator[str]:
    """A URL of an empty PostgreSQL database of its own (the postgresql lane only)."""
    yield from _postgres_database(postgres_admin_url)


@pytest.fixture
def engine(database_url: str) -> Iterator[sa.Engine]:
    """An engine on ``database_url``, disposed afterwards."""
    created = sa.create_engine(database_url)
    yield created
    created.dispose()


@pytest.fixture
def sql_engine(sql_url: str) -> Iterator[sa.Engine]:
    """An engine on ``sql_url``, disposed afterwards."""
    created = sa.create_engine(sql_url)
    yield created
    created.dispose()


@pytest.fixture
def engines() -> Iterator[Engines]:
    """A registry's engine table of its own, every engine closed afterwards."""
    table = Engines()
    yield table
    table.close_all()


# --- an app's registry, migrations and seeds (test_lifecycle_data, test_requested) ----


@pytest.fixture
async def registry() -> AsyncIterator[AppRegistry]:
    """A registry on an embedded bus of its own."""
    name = f"registry-{secrets.token_hex(4)}"
    async with AppRegistry({"bus": {"url": f"memory://{name}", "ack_timeout": 5}}) as reg:
        yield reg
    forget_memory_server(name)


@pytest.fixture
def migrations(tmp_path: Path) -> Scripts:
    """One migration: table ``items``."""
    made = Scripts.at(tmp_path / "migrations")
    made.migration("001_items.py", create_table("items"), drop_table("items"))
    return made


@pytest.fixture
def seeds(tmp_path: Path) -> Scripts:
    """One seed: item ``first``."""
    made = Scripts.at(tmp_path / "seeds")
    made.seed("001_first.py", insert("items", "first", via="connection"), delete("items", "first"))
    return made
