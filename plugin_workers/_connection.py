"""The ``connection`` a hook receives: what the app's connection is, and a way to use it.

The event carries a ``bus.ConnectionInfo`` (dialect, host, database, user, the URL with
its password masked, pool figures, sharing). ``await connection.engine()`` gives a
SQLAlchemy engine: the registry's live engine when the plugin runs inline, otherwise
one built with the worker's own credentials for that app, from the worker config
(``databases.<app> = "<url>"``) or the environment (``RAPID_OBJECTION_DATABASE_URL_<APP>``).
SQLAlchemy is imported only then, so that a worker that never asks stays light.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from rapid_objection._extras import create_engine
from rapid_objection.bus import ConnectionInfo

from ._errors import EngineUnavailable

if TYPE_CHECKING:
    import sqlalchemy as sa

LiveEngines = Callable[[str], "sa.Engine"]
"""app -> the registry's live engine (inline mode); raises KeyError when it has none."""

ENV_PREFIX = "RAPID_OBJECTION_DATABASE_URL_"


def credentials_variable(app: str) -> str:
    """The environment variable holding a worker's URL for ``app``."""
    return ENV_PREFIX + re.sub(r"[^A-Za-z0-9]", "_", app).upper()


class Engines:
    """A worker's own engines, one per app, built on first use and disposed at the end."""

    def __init__(self, config: Mapping[str, Any], live: LiveEngines | None = None) -> None:
        databases = config.get("databases", {})
        self._urls: dict[str, str] = dict(databases) if isinstance(databases, Mapping) else {}
        self._live = live
        self._engines: dict[str, sa.Engine] = {}
        self._lock = threading.Lock()

    def url_for(self, app: str) -> str | None:
        return self._urls.get(app) or os.environ.get(credentials_variable(app))

    def engine(self, app: str) -> sa.Engine:
        if self._live is not None:
            try:
                return self._live(app)
            except KeyError:
                pass
        with self._lock:
            if app in self._engines:
                return self._engines[app]
            url = self.url_for(app)
            if url is None:
                raise EngineUnavailable(
                    app,
                    f"this worker has no credentials for app {app!r}: set databases.{app} in "
                    f"its config or {credentials_variable(app)} in its environment",
                )
            self._engines[app] = engine = create_engine(url)
            return engine

    def dispose(self) -> None:
        with self._lock:
            for engine in self._engines.values():
                engine.dispose()
            self._engines.clear()


class Connection(ConnectionInfo, frozen=True, dict=True):
    """A hook's ``connection`` argument: the event's ConnectionInfo, plus ``engine()``."""

    @classmethod
    def of(cls, app: str, info: ConnectionInfo, engines: Engines | None) -> Connection:
        """The ``connection`` of ``app``'s hook, carrying ``info``'s fields."""
        connection = cls(*(getattr(info, name) for name in info.__struct_fields__))
        # Runtime state beside the fields: a frozen Struct refuses setattr, and its
        # __dict__ (dict=True) is what msgspec offers for state that is not encoded.
        connection.__dict__.update(_app=app, _engines=engines, _info=info)
        return connection

    @property
    def info(self) -> ConnectionInfo:
        """The ConnectionInfo the event carries."""
        info: ConnectionInfo = self.__dict__["_info"]
        return info

    def __repr__(self) -> str:
        return f"<Connection {self.__dict__['_app']!r} {self.url}>"

    def __eq__(self, other: object) -> bool:
        """Equal to the ConnectionInfo it carries (and to a Connection carrying it)."""
        if isinstance(other, ConnectionInfo):
            return self.info == (other.info if isinstance(other, Connection) else other)
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.info)

    async def engine(self) -> sa.Engine:
        """A SQLAlchemy engine for the app (see the module docstring for which one)."""
        app: str = self.__dict__["_app"]
        engines: Engines | None = self.__dict__["_engines"]
        if engines is None:
            raise EngineUnavailable(app, f"no engines are available for app {app!r} here")
        import anyio

        return await anyio.to_thread.run_sync(engines.engine, app)
