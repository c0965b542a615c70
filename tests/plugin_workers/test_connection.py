"""The hook's ``connection``: a typed ``ConnectionInfo`` with ``await connection.engine()``.

``RowCounter`` is also the typed example: mypy --strict checks this file, and the
``assert_type`` calls fail the type check if ``engine()`` or a field lost its type.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, assert_type

import msgspec
import pytest
import sqlalchemy as sa

from rapid_objection import PluginInterface
from rapid_objection.bus import Ack, AppRegistered, ConnectionInfo, ConnectionShutdown
from rapid_objection.plugin_workers import Connection, EngineUnavailable
from rapid_objection.plugin_workers.testing import call_hook

pytestmark = pytest.mark.anyio

INFO = ConnectionInfo(dialect="sqlite", driver="pysqlite", url="sqlite:///shop.db", apps=("shop",))


class RowCounter(PluginInterface):
    """Counts an app's rows through the engine its hook's connection gives."""

    def __init__(self) -> None:
        super().__init__("row-counter", "1.0.0")

    async def on_app_registered(
        self, app_name: str, connection: Connection, config: dict[str, Any]
    ) -> dict[str, Any]:
        engine = await connection.engine()
        assert_type(engine, sa.Engine)
        assert_type(connection.dialect, str)
        assert_type(connection.port, int | None)
        assert_type(connection.info, ConnectionInfo)
        with engine.connect() as db:
            rows = db.execute(sa.text("SELECT count(*) FROM item")).scalar_one()
        return {"dialect": connection.dialect, "rows": rows}


class OldStyle(PluginInterface):
    """A hook typed with ``ConnectionInfo``, as before ``Connection`` was typed: still valid."""

    def __init__(self) -> None:
        super().__init__("old-style", "1.0.0")

    async def on_connection_shutdown(
        self, app_name: str, connection: ConnectionInfo, options: dict[str, Any]
    ) -> str:
        return connection.url


@pytest.fixture
def shop_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'shop.db'}"
    engine = sa.create_engine(url)
    with engine.begin() as db:
        db.execute(sa.text("CREATE TABLE item (id INTEGER PRIMARY KEY)"))
        db.execute(sa.text("INSERT INTO item (id) VALUES (1), (2), (3)"))
    engine.dispose()
    return url


class TestConnection:
    async def test_engine_opens_the_apps_database(self, shop_url: str) -> None:
        """``await connection.engine()`` gives an engine on the database the worker names."""
        ack = await call_hook(
            RowCounter(), AppRegistered(connection=INFO), app="shop", databases={"shop": shop_url}
        )
        assert isinstance(ack, Ack)
        assert (ack.status, ack.result) == ("ok", {"dialect": "sqlite", "rows": 3})

    async def test_no_engine_is_an_engine_unavailable(self) -> None:
        """Without a URL for the app the hook fails with ``EngineUnavailable``, naming it."""
        ack = await call_hook(RowCounter(), AppRegistered(connection=INFO), app="shop")
        assert isinstance(ack, Ack)
        assert (ack.status, ack.error_type) == ("error", "EngineUnavailable")
        assert "'shop'" in (ack.error or "")

    async def test_a_connection_info_annotation_still_works(self) -> None:
        """A hook that types ``connection`` as ``ConnectionInfo`` receives one."""
        ack = await call_hook(OldStyle(), ConnectionShutdown(connection=INFO), app="shop")
        assert isinstance(ack, Ack)
        assert (ack.status, ack.result) == ("ok", INFO.url)

    def test_is_the_info_it_carries(self) -> None:
        """A Connection is a ConnectionInfo: equal to it, hashed like it, encoded like it."""
        connection = Connection.of("shop", INFO, None)
        assert isinstance(connection, ConnectionInfo)
        assert connection == INFO
        assert hash(connection) == hash(INFO)
        assert connection.info is INFO
        assert msgspec.json.encode(connection) == msgspec.json.encode(INFO)

    async def test_engine_error_is_a_lookup_error(self) -> None:
        """``EngineUnavailable`` is a ``LookupError``, as the error was before it had a name."""
        with pytest.raises(LookupError, match="no engines are available"):
            await Connection.of("shop", INFO, None).engine()
        assert issubclass(EngineUnavailable, LookupError)
