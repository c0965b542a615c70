"""Health checks: a real SELECT 1, timed, with pool figures; never raising."""

from __future__ import annotations

import time

import pytest
import sqlalchemy as sa

from rapid_objection.core._config import DatabaseConfig
from rapid_objection.core._connections import Engines
from rapid_objection.core._health import check

SECRET = "hunter2"  # noqa: S105 - a planted password that must never show


class TestHealthy:
    def test_healthy(self, engines: Engines, database_url: str) -> None:
        """A database that answers is healthy, with response time and pool figures."""
        engine = engines.open("shop", DatabaseConfig(url=database_url, pool_size=3), None).engine
        before = time.time()
        health = check("shop", engine)
        assert health["status"] == "healthy"
        assert health["app"] == "shop"
        assert "error" not in health
        assert 0 <= health["response_time_ms"] < 5000
        assert before <= health["checked_at"] <= time.time()
        assert health["pool"]["size"] == 3
        assert health["pool"]["checked_out"] == 0
        assert set(health["pool"]) == {"size", "checked_out", "overflow", "checked_in"}

    def test_checked_out_counted(self, engines: Engines, sql_url: str) -> None:
        """A connection the app holds shows in the pool figures."""
        engine = engines.open("shop", DatabaseConfig(url=sql_url), None).engine
        with engine.connect():
            assert check("shop", engine)["pool"]["checked_out"] == 1

    def test_memory_sqlite(self, engines: Engines) -> None:
        """An in-memory database is healthy; its single connection has no pool figures."""
        engine = engines.open("shop", DatabaseConfig(url="sqlite://"), None).engine
        health = check("shop", engine)
        assert (health["status"], health["pool"]) == ("healthy", {})


class TestUnhealthy:
    def test_released(self, engines: Engines, sql_url: str) -> None:
        """A connection closed with its last app is unhealthy, saying so."""
        engine = engines.open("shop", DatabaseConfig(url=sql_url), None).engine
        engines.release("shop")
        health = check("shop", engine)
        assert health["status"] == "unhealthy"
        assert "is closed" in health["error"]

    @pytest.mark.parametrize(
        "url",
        [
            pytest.param(f"postgresql+psycopg://shop:{SECRET}@127.0.0.1:1/shop", id="postgresql"),
            pytest.param(f"mysql+pymysql://shop:{SECRET}@127.0.0.1:1/shop", id="mariadb"),
            pytest.param("sqlite:////nonexistent-dir/shop.db", id="sqlite"),
        ],
    )
    def test_unreachable(self, url: str) -> None:
        """A server that does not answer is unhealthy; the error carries no password."""
        engine = sa.create_engine(url, connect_args={"connect_timeout": 1} if "@" in url else {})
        try:
            health = check("shop", engine)
        finally:
            engine.dispose()
        assert health["status"] == "unhealthy"
        assert health["error"]
        assert SECRET not in str(health)
        assert health["response_time_ms"] >= 0

    def test_server_gone(self, engines: Engines, postgres_admin_url: str) -> None:
        """A server that drops the app's connections makes the next check unhealthy."""
        url = sa.make_url(postgres_admin_url).set(password=SECRET)
        settings = DatabaseConfig(url=url.render_as_string(hide_password=False), pool_size=1)
        engine = engines.open("shop", settings, None).engine
        with engine.connect() as connection:
            pid = connection.execute(sa.text("SELECT pg_backend_pid()")).scalar()
        admin = sa.create_engine(postgres_admin_url, poolclass=sa.NullPool)
        try:
            with admin.connect() as connection:
                connection.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        finally:
            admin.dispose()
        health = check("shop", engine)
        assert health["status"] == "unhealthy"
        assert SECRET not in str(health)
        assert check("shop", engine)["status"] == "healthy"  # the pool replaced the connection
