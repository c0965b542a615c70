"""Database connections: URLs from the config, the shared-engine table, each app's face.

``Engines`` is one registry's table of SQLAlchemy engines. An app gets an engine of its
own unless it asks to share one:

* ``use_connection = "billing"`` reuses app billing's engine (billing must be open and
  have ``database.shared = true``);
* ``use_connection = true`` reuses the newest shared engine;
* ``database.shared = true`` with the same real URL (password included) and the same
  engine settings (``connect_args``, pool settings, ``echo``) as an open shared engine
  reuses that engine; an app whose settings differ (another ``search_path``, say) gets
  an engine of its own.

An engine is counted by the apps that use it and disposed with the last one; a disposed
engine refuses new connections, so an app that outlives its registration fails loudly
instead of opening connections nobody will close, and a connection that was checked out
when it was disposed is closed as soon as it is returned. An in-memory SQLite database is one
shared connection (``TurnPool``, one thread at a time), so every connection and session
sees the same data.

Everything here is synchronous (the registry runs it in a worker thread) and the table
is guarded by a lock. The identity key of an engine carries the password: it is never
logged, put in an error or sent on the bus.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.orm import Session

from rapid_objection._extras import missing_extra
from rapid_objection.bus import ConnectionInfo, mask_url

from ._config import AppConfig, DatabaseConfig
from ._errors import AppAlreadyRegistered, ConfigError, ConnectionFailed
from ._memory_pool import TurnPool
from ._operable import Operable

CONNECT_TIMEOUT: Final = 5
"""Seconds a driver waits for the server on open, unless the user set a timeout."""

# (backend, driver) -> the connect argument that bounds the wait for the server.
_TIMEOUT_ARGUMENT: Final[dict[tuple[str, str], str]] = {
    ("postgresql", "psycopg"): "connect_timeout",
    ("postgresql", "psycopg2"): "connect_timeout",
    ("mysql", "pymysql"): "connect_timeout",
    ("mysql", "mysqldb"): "connect_timeout",
    ("mariadb", "pymysql"): "connect_timeout",
    ("mariadb", "mysqldb"): "connect_timeout",
}

READ_TIMEOUT: Final = 300
"""MySQL/MariaDB drivers: seconds a read or write of one statement may wait for the
server before the connection is dropped (a longer statement needs ``read_timeout`` set)."""

# Connect arguments that notice a server that stopped answering, per (backend, driver):
# TCP keepalives for libpq (a dead peer is found within about a minute, even while a
# statement waits for its answer), socket read and write timeouts for the MySQL drivers.
_KEEPALIVES: Final = {
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
}
_MYSQL_TIMEOUTS: Final = {"read_timeout": READ_TIMEOUT, "write_timeout": READ_TIMEOUT}
_ANSWER_ARGUMENTS: Final[dict[tuple[str, str], dict[str, int]]] = {
    ("postgresql", "psycopg"): _KEEPALIVES,
    ("postgresql", "psycopg2"): _KEEPALIVES,
    ("mysql", "pymysql"): _MYSQL_TIMEOUTS,
    ("mysql", "mysqldb"): _MYSQL_TIMEOUTS,
    ("mariadb", "pymysql"): _MYSQL_TIMEOUTS,
    ("mariadb", "mysqldb"): _MYSQL_TIMEOUTS,
}

# Pool arguments only a queue pool accepts (StaticPool rejects them).
_QUEUE_ONLY: Final = ("pool_size", "max_overflow", "pool_timeout")


def masked(url: sa.URL) -> str:
    """A URL as text with its password (and any secret query parameter) masked."""
    return mask_url(url.render_as_string(hide_password=True))


def _reason(exc: BaseException, url: sa.URL) -> str:
    """The first line of a driver's error, with the password taken out if it shows."""
    cause = exc.orig if isinstance(exc, sa.exc.DBAPIError) and exc.orig is not None else exc
    text = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
    if url.password:
        text = text.replace(str(url.password), "***")
    return text


def build_url(app: str, db: DatabaseConfig) -> sa.URL:
    """The URL of an app's database: ``database.url``, or the parts with ``dialect``.

    Parts given next to a URL override its components (so the password can be kept out
    of the URL). Raises ``ConfigError`` for a URL that is missing or malformed and
    ``ConnectionFailed`` for a dialect or driver that is not installed.
    """
    path = f"apps.{app}.database"
    parts: dict[str, Any] = {
        "drivername": db.dialect,
        "host": db.host,
        "port": db.port,
        "database": db.database,
        "username": db.user,
        "password": db.password,
    }
    given = {key: value for key, value in parts.items() if value is not None}
    if db.url is not None:
        try:
            url = sa.make_url(db.url)
        except (sa.exc.ArgumentError, ValueError, TypeError):
            # The text may hold a password, so it is not shown back.
            raise ConfigError(
                "not a database URL (expected dialect+driver://user:password@host:port/database)",
                path=f"{path}.url",
            ) from None
        url = url.set(**given)
    elif db.dialect is None:
        if given:
            raise ConfigError("required with the URL parts", path=f"{path}.dialect")
        raise ConfigError(
            "a database URL (or dialect and its parts) is required", path=f"{path}.url"
        )
    else:
        try:
            url = sa.URL.create(**given)
        except (sa.exc.ArgumentError, ValueError, TypeError) as exc:
            raise ConfigError(str(exc), path=f"{path}.dialect") from None
    if db.query:
        url = url.update_query_dict(db.query)
    try:
        dialect = url.get_dialect()
        dialect.import_dbapi()
    except sa.exc.NoSuchModuleError:
        raise ConnectionFailed(
            app, masked(url), f"dialect {url.drivername!r} is not installed"
        ) from None
    except ImportError as exc:
        extra = missing_extra(exc, f"app {app!r} ({url.drivername})")
        if extra is not None:
            raise extra from None
        raise ConnectionFailed(
            app,
            masked(url),
            f"driver {url.get_driver_name()!r} of {url.get_backend_name()!r} is not installed"
            f" ({exc})",
        ) from None
    if dialect.is_async:
        raise ConnectionFailed(
            app, masked(url), f"driver {url.get_driver_name()!r} is async; use a sync driver"
        )
    return url


def is_memory_sqlite(url: sa.URL) -> bool:
    """Whether ``url`` is an in-memory SQLite database (``sqlite://``, ``:memory:``)."""
    return url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:")


def _engine_arguments(url: sa.URL, db: DatabaseConfig) -> dict[str, Any]:
    """``create_engine`` keyword arguments from the pool settings, for this URL's pool."""
    connect_args = dict(db.connect_args)
    arguments: dict[str, Any] = {"echo": db.echo, "pool_pre_ping": db.pool_pre_ping}
    for name in ("pool_size", "max_overflow", "pool_timeout", "pool_recycle"):
        value = getattr(db, name)
        if value is not None:
            arguments[name] = value
    if is_memory_sqlite(url):
        # One connection, used from every thread, one thread at a time: the only way
        # all sessions see one in-memory database without ending each other's
        # transactions.
        arguments["poolclass"] = TurnPool
        connect_args.setdefault("check_same_thread", False)
        for name in _QUEUE_ONLY:
            if name != "pool_timeout":  # how long a thread waits for its turn
                arguments.pop(name, None)
    driver = (url.get_backend_name(), url.get_driver_name())
    timeout = _TIMEOUT_ARGUMENT.get(driver)
    if timeout is not None and timeout not in connect_args and timeout not in url.query:
        connect_args[timeout] = CONNECT_TIMEOUT
    for name, value in _ANSWER_ARGUMENTS.get(driver, {}).items():
        if name not in connect_args and name not in url.query:
            connect_args[name] = value
    arguments["connect_args"] = connect_args
    return arguments


def answer_timeout(db: DatabaseConfig) -> float:
    """Seconds a health check waits for an answer: the connect timeout the user set,
    else ``CONNECT_TIMEOUT``."""
    given = db.connect_args.get("connect_timeout", db.query.get("connect_timeout"))
    try:
        return float(given) if given is not None else float(CONNECT_TIMEOUT)
    except (TypeError, ValueError):
        return float(CONNECT_TIMEOUT)


def identity(url: sa.URL, db: DatabaseConfig) -> str:
    """What makes two apps' engines one: the real URL and every engine setting."""
    settings = {
        "connect_args": db.connect_args,
        "pool_size": db.pool_size,
        "max_overflow": db.max_overflow,
        "pool_timeout": db.pool_timeout,
        "pool_recycle": db.pool_recycle,
        "pool_pre_ping": db.pool_pre_ping,
        "echo": db.echo,
    }
    shown = json.dumps(settings, sort_keys=True, default=repr)
    return f"{url.render_as_string(hide_password=False)} {shown}"


def _close_on_checkin(dbapi_connection: Any, record: Any) -> None:
    """A connection returned to a disposed engine's pool is closed, not kept."""
    if dbapi_connection is not None:
        record.invalidate()


def _refuse(app: str) -> Any:
    def refuse(*_: Any) -> Any:
        raise sa.exc.InvalidRequestError(f"the connection of app {app!r} is closed")

    return refuse


@dataclass(frozen=True)
class Lease:
    """An app's hold on an engine; ``key`` is the engine's identity (holds the password)."""

    engine: sa.Engine
    reused: bool
    shared: bool
    key: str = field(repr=False)


@dataclass(frozen=True)
class Release:
    """What letting go of an app's engine did; ``info`` is the connection as it was."""

    last_reference: bool
    shared: bool
    info: ConnectionInfo


@dataclass(eq=False)
class _Entry:
    engine: sa.Engine
    key: str = field(repr=False)
    shared: bool
    serial: int
    """Creation order: ``use_connection = true`` takes the newest shared engine."""
    owner: str
    apps: set[str] = field(default_factory=set)


def _pool_figures(pool: sa.Pool) -> dict[str, int]:
    """Size and use of a queue pool; other pools (static, null) have no such figures."""
    if not isinstance(pool, sa.QueuePool):
        return {}
    return {
        "size": pool.size(),
        "checked_out": pool.checkedout(),
        "overflow": pool.overflow(),
        "checked_in": pool.checkedin(),
    }


class Engines:
    """The engines of one registry, shared and reference-counted by app."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_app: dict[str, _Entry] = {}
        self._serial = 0

    def open(self, app: str, db: DatabaseConfig, use_connection: str | bool | None) -> Lease:
        """An engine for ``app``: a shared one it asked for, or a new one checked with SELECT 1."""
        if use_connection is not None and use_connection is not False:
            with self._lock:
                self._check_free(app)
                return self._attach(app, self._wanted(app, use_connection), reused=True)
        url = build_url(app, db)
        key = identity(url, db)
        if db.shared:
            with self._lock:
                self._check_free(app)
                existing = self._shared_with_key(key)
                if existing is not None:
                    return self._attach(app, existing, reused=True)
        # Connecting may take seconds; other apps are not held up meanwhile.
        engine = self._create(app, url, db)
        with self._lock:
            try:
                self._check_free(app)
            except AppAlreadyRegistered:
                engine.dispose()
                raise
            existing = self._shared_with_key(key) if db.shared else None
            if existing is not None:  # another thread opened the same shared engine first
                engine.dispose()
                return self._attach(app, existing, reused=True)
            self._serial += 1
            entry = _Entry(engine, key, db.shared, self._serial, owner=app)
            return self._attach(app, entry, reused=False)

    def release(self, app: str) -> Release:
        """Let go of ``app``'s engine; the last app to go disposes it."""
        with self._lock:
            entry = self._by_app.pop(app, None)
            if entry is None:
                raise KeyError(app)
            info = self._info(entry)
            entry.apps.discard(app)
            last = not entry.apps
            if last:
                self._close(app, entry)
            return Release(last_reference=last, shared=entry.shared, info=info)

    def close_all(self) -> list[tuple[tuple[str, ...], Release]]:
        """Dispose every engine (registry shutdown): its apps and what closing did, per engine."""
        with self._lock:
            closed: list[tuple[tuple[str, ...], Release]] = []
            for entry in self._entries():
                apps = tuple(sorted(entry.apps))
                info = self._info(entry)
                self._close(entry.owner, entry)
                closed.append((apps, Release(last_reference=True, shared=entry.shared, info=info)))
            self._by_app.clear()
            return closed

    def info(self, app: str) -> ConnectionInfo:
        """What plugins may know of ``app``'s connection (no password)."""
        with self._lock:
            entry = self._by_app.get(app)
            if entry is None:
                raise KeyError(app)
            return self._info(entry)

    def apps_of(self, key: str) -> tuple[str, ...]:
        """The apps whose engines have identity ``key``, sorted."""
        with self._lock:
            return tuple(sorted(app for app, entry in self._by_app.items() if entry.key == key))

    def count(self) -> int:
        """How many engines are open (a shared engine counts once)."""
        with self._lock:
            return len(self._entries())

    def is_open(self, app: str) -> bool:
        with self._lock:
            return app in self._by_app

    def engine(self, app: str) -> sa.Engine:
        with self._lock:
            entry = self._by_app.get(app)
            if entry is None:
                raise KeyError(app)
            return entry.engine

    # --- under the lock -----------------------------------------------------------------

    def _entries(self) -> list[_Entry]:
        unique = {id(entry): entry for entry in self._by_app.values()}
        return sorted(unique.values(), key=lambda entry: entry.serial)

    def _check_free(self, app: str) -> None:
        if app in self._by_app:
            raise AppAlreadyRegistered(app)

    def _shared_with_key(self, key: str) -> _Entry | None:
        for entry in self._entries():
            if entry.shared and entry.key == key:
                return entry
        return None

    def _wanted(self, app: str, use_connection: str | bool) -> _Entry:
        path = f"apps.{app}.use_connection"
        if use_connection is True:
            shared = [entry for entry in self._entries() if entry.shared]
            if not shared:
                raise ConfigError(
                    f"app {app!r} asks for the newest shared connection, but none is open",
                    path=path,
                )
            return shared[-1]
        other = str(use_connection)
        if other == app:
            raise ConfigError(f"app {app!r} cannot reuse its own connection", path=path)
        entry = self._by_app.get(other)
        if entry is None:
            raise ConfigError(
                f"app {app!r} asks for the connection of app {other!r}, which is not open",
                path=path,
            )
        if not entry.shared:
            raise ConfigError(
                f"app {app!r} asks for the connection of app {other!r}, which is not shared"
                f" (set apps.{other}.database.shared = true)",
                path=path,
            )
        return entry

    def _attach(self, app: str, entry: _Entry, *, reused: bool) -> Lease:
        entry.apps.add(app)
        self._by_app[app] = entry
        return Lease(engine=entry.engine, reused=reused, shared=entry.shared, key=entry.key)

    def _close(self, app: str, entry: _Entry) -> None:
        # dispose() closes the connections in the pool; one checked out now would go
        # back into the discarded pool and stay open until garbage collection.
        sa.event.listen(entry.engine.pool, "checkin", _close_on_checkin)
        entry.engine.dispose()
        sa.event.listen(entry.engine, "do_connect", _refuse(app))

    def _info(self, entry: _Entry) -> ConnectionInfo:
        return connection_info(entry.engine, shared=entry.shared, apps=tuple(sorted(entry.apps)))

    # --- outside the lock ---------------------------------------------------------------

    @staticmethod
    def _create(app: str, url: sa.URL, db: DatabaseConfig) -> sa.Engine:
        try:
            engine = sa.create_engine(url, **_engine_arguments(url, db))
        except (TypeError, sa.exc.ArgumentError) as exc:
            raise ConfigError(_reason(exc, url), path=f"apps.{app}.database") from None
        try:
            with engine.connect() as connection:
                connection.execute(sa.text("SELECT 1"))
        except (sa.exc.SQLAlchemyError, OSError) as exc:
            engine.dispose()
            raise ConnectionFailed(app, masked(url), _reason(exc, url)) from None
        return engine


class ConnectionManager(Operable):
    """What ``register_app`` returns: one app's engine, sessions and models.

    ``info_source`` tells the app's connection as the engine table sees it now (shared,
    reference count, apps); it raises ``KeyError`` once the app's engine is released.
    """

    def __init__(
        self,
        name: str,
        config: AppConfig,
        engine: sa.Engine,
        *,
        info_source: Callable[[], ConnectionInfo] | None = None,
        reused: bool = False,
        registered_at: float | None = None,
    ) -> None:
        self.name = name
        self.config = config
        self.engine = engine
        self.reused = reused
        self.models: Mapping[str, type[Any]] = MappingProxyType({})
        """Class name -> declarative class; set by the registry once the models are loaded."""
        self.registered_at = time.time() if registered_at is None else registered_at
        self._info_source = info_source

    def __repr__(self) -> str:
        return f"<ConnectionManager {self.name!r} {masked(self.engine.url)}>"

    def connect(self) -> sa.Connection:
        return self.engine.connect()

    def session(self, **options: Any) -> Session:
        """A new ORM session bound to the app's engine (``Session`` keyword options pass)."""
        return Session(bind=self.engine, **options)

    def info(self) -> ConnectionInfo:
        """The app's connection now; ``KeyError`` once it is released."""
        if self._info_source is None:
            return connection_info(self.engine, shared=False, apps=(self.name,))
        return self._info_source()

    def status(self) -> dict[str, Any]:
        """A snapshot for status displays; works after release too (``open`` false)."""
        try:
            info: ConnectionInfo | None = self.info()
        except KeyError:
            info = None
        return {
            "app": self.name,
            "open": info is not None,
            "dialect": self.engine.url.get_backend_name(),
            "url": masked(self.engine.url),
            "shared": info.shared if info else False,
            "reused": self.reused,
            "reference_count": info.reference_count if info else 0,
            "apps": list(info.apps) if info else [],
            "pool": _pool_figures(self.engine.pool) if info else {},
            "models": len(self.models),
            "registered_at": self.registered_at,
        }


def connection_info(engine: sa.Engine, *, shared: bool, apps: tuple[str, ...]) -> ConnectionInfo:
    """What the bus may carry of an engine: its URL's parts (password masked), its pool."""
    url = engine.url
    figures = _pool_figures(engine.pool)
    return ConnectionInfo(
        dialect=url.get_backend_name(),
        driver=engine.dialect.driver,
        host=url.host,
        port=url.port,
        database=url.database,
        user=url.username,
        url=masked(url),
        pool_size=figures.get("size"),
        pool_checked_out=figures.get("checked_out"),
        shared=shared,
        reference_count=len(apps),
        apps=apps,
    )


def pool_figures(engine: sa.Engine) -> dict[str, int]:
    """Size, checked out, overflow and checked in of an engine's queue pool ({} otherwise)."""
    return _pool_figures(engine.pool)
