"""The audit plugin: every lifecycle event into a SQL table, for audit beyond the stream.

The event stream is the short-term history; its retention trims it. ``AuditPlugin``
keeps one row per event (unique on the event id, so a re-delivery adds nothing) in a
table of any database SQLAlchemy reaches, written before the event is acknowledged,
in a worker thread. ``AuditStore`` is the same table seen from a program. The columns
and every configuration key are described in ``docs/plugins.md``.
"""

from __future__ import annotations

import os
import re
import socket
import time
from collections import Counter
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final

import anyio
import msgspec
import sqlalchemy as sa
from sqlalchemy.dialects.mysql import MEDIUMTEXT

from rapid_objection._extras import create_engine
from rapid_objection.bus import Envelope, mask_url
from rapid_objection.bus._contract import event_id_time
from rapid_objection.plugin_workers import PluginInterface, RegistryView, current_delivery

if TYPE_CHECKING:
    from rapid_objection.bus import AppRollbackCompleted, AutoOperationsCompleted, ConnectionInfo
    from rapid_objection.plugin_workers import RemoteError

VERSION: Final = "1.0.0"
DEFAULT_URL: Final = "sqlite:///rapid_objection_audit.db"
DEFAULT_TABLE: Final = "ro_audit"
TABLE_NAME: Final = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,47}$")
"""A plain identifier; short enough that the index names built from it fit every dialect."""


class AuditConfig(msgspec.Struct, frozen=True, kw_only=True):
    """The audit plugin's ``config`` table; every key has a default."""

    url: str = DEFAULT_URL
    """SQLAlchemy URL of the audit store (a sync driver)."""
    table: str = DEFAULT_TABLE
    record_acks: bool = True
    """Write this plugin's own handling record into the ``acks`` column (else ``[]``)."""
    custom: tuple[str, ...] = ()
    """Names of custom events (``registry.emit(name, ...)``) to record as well."""


def parse_config(config: Mapping[str, Any]) -> AuditConfig:
    """The audit configuration, checked; raises ``ValueError`` naming the bad key."""
    try:
        parsed = msgspec.convert(dict(config), AuditConfig)
    except msgspec.ValidationError as exc:
        raise ValueError(f"audit configuration: {exc}") from None
    if not TABLE_NAME.match(parsed.table):
        raise ValueError(
            f"audit configuration: table {parsed.table!r} is not a plain identifier "
            "(letters, digits and '_', at most 48)"
        )
    try:
        sa.make_url(parsed.url)
    except (sa.exc.ArgumentError, ValueError):
        raise ValueError("audit configuration: url is not a database URL") from None
    return parsed


def audit_table(metadata: sa.MetaData, name: str = DEFAULT_TABLE) -> sa.Table:
    """The audit table ``name`` in ``metadata``."""
    return sa.Table(
        name,
        metadata,
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),  # SQLite's rowid alias
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column("time", sa.Double(), nullable=False),
        sa.Column("registry", sa.String(255), nullable=False),
        sa.Column("app", sa.String(255), nullable=False),
        sa.Column("type", sa.String(64), nullable=False),
        sa.Column("event_id", sa.String(64), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        # MySQL's TEXT stops at 64 KiB; an app's configuration may not.
        sa.Column("payload", sa.Text().with_variant(MEDIUMTEXT(), "mysql"), nullable=False),
        sa.Column("acks", sa.Text(), nullable=False),
        sa.Column("consumer", sa.String(255), nullable=False),
        sa.Column("replay", sa.Boolean(), nullable=False),
        sa.Column("recorded", sa.Double(), nullable=False),
        sa.UniqueConstraint("event_id", name=f"uq_{name}_event_id"),
        sa.Index(f"ix_{name}_time", "time"),
        sa.Index(f"ix_{name}_app_time", "app", "time"),
        sa.Index(f"ix_{name}_type_time", "type", "time"),
    )


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One row of the audit table, its JSON columns decoded."""

    id: int
    time: float
    registry: str
    app: str
    type: str
    event_id: str
    seq: int
    payload: dict[str, Any]
    acks: list[dict[str, Any]]
    consumer: str
    replay: bool
    recorded: float


def _seconds(value: float | datetime | None) -> float | None:
    """Unix seconds of a bound given as seconds or as a datetime (a naive one is local time,
    as ``datetime.timestamp`` reads it)."""
    if value is None or isinstance(value, int | float):
        return value
    return value.timestamp()


def _engine(url: str | sa.URL) -> sa.Engine:
    parsed = sa.make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database in (None, "", ":memory:"):
        # One connection for every thread: the only way they all see one memory database.
        return create_engine(
            parsed, poolclass=sa.StaticPool, connect_args={"check_same_thread": False}
        )
    return create_engine(parsed)


class AuditStore:
    """The audit table of one database: create it, write rows, query them (synchronous).

    ``AuditStore(url).query(app="shop")`` is an app's audit trail, oldest first.
    """

    def __init__(
        self, url: str | sa.URL = DEFAULT_URL, table: str = DEFAULT_TABLE, *, engine: Any = None
    ) -> None:
        if not TABLE_NAME.match(table):
            raise ValueError(f"table {table!r} is not a plain identifier")
        self.engine: sa.Engine = engine if engine is not None else _engine(url)
        self._owns_engine = engine is None
        self.table = audit_table(sa.MetaData(), table)
        self._exists = False

    @property
    def url(self) -> str:
        """The store's URL with its password masked."""
        return mask_url(self.engine.url.render_as_string(hide_password=True))

    def create(self) -> None:
        """Create the table and its indexes unless they exist."""
        try:
            self.table.create(self.engine, checkfirst=True)
        except sa.exc.DBAPIError:
            # Several audit workers start at once: another one created it between our
            # check and our CREATE (its indexes come in the same transaction).
            if not sa.inspect(self.engine).has_table(self.table.name):
                raise
        self._exists = True

    def record(self, row: Mapping[str, Any]) -> bool:
        """Insert one row unless its ``event_id`` is there; True when it was inserted."""
        with self.engine.begin() as connection:
            statement = self._insert_ignoring_duplicates(connection.dialect.name)
            if statement is not None:
                result = connection.execute(statement, dict(row))
                if result.returns_rows:
                    return result.first() is not None
                return bool(result.rowcount)
            # Another dialect: look first; the unique constraint still guards a race.
            seen = connection.execute(
                sa.select(self.table.c.id).where(self.table.c.event_id == row["event_id"])
            ).first()
            if seen is not None:
                return False
            connection.execute(self.table.insert(), dict(row))
            return True

    def _insert_ignoring_duplicates(self, dialect: str) -> Any:
        if dialect == "sqlite":
            from sqlalchemy.dialects import sqlite

            return sqlite.insert(self.table).on_conflict_do_nothing(index_elements=["event_id"])
        if dialect == "postgresql":
            from sqlalchemy.dialects import postgresql

            # RETURNING: with it psycopg's rowcount is -1, so a row back is the answer.
            return (
                postgresql.insert(self.table)
                .on_conflict_do_nothing(index_elements=["event_id"])
                .returning(self.table.c.id)
            )
        if dialect in ("mysql", "mariadb"):
            from sqlalchemy.dialects import mysql

            return mysql.insert(self.table).prefix_with("IGNORE")
        return None

    def query(
        self,
        app: str | None = None,
        types: Collection[str] = (),
        since: float | datetime | None = None,
        until: float | datetime | None = None,
        limit: int | None = 100,
    ) -> list[AuditEntry]:
        """Up to ``limit`` rows (None: all) of ``app`` and ``types`` with ``since <= time
        <= until``, oldest first; empty when the table does not exist yet."""
        if not self._exists:
            if not sa.inspect(self.engine).has_table(self.table.name):
                return []
            self._exists = True
        table = self.table
        statement = sa.select(table).order_by(table.c.time, table.c.id)
        if app is not None:
            statement = statement.where(table.c.app == app)
        if types:
            statement = statement.where(table.c.type.in_(sorted(set(types))))
        low, high = _seconds(since), _seconds(until)
        if low is not None:
            statement = statement.where(table.c.time >= low)
        if high is not None:
            statement = statement.where(table.c.time <= high)
        if limit is not None:
            statement = statement.limit(limit)
        with self.engine.connect() as connection:
            rows = connection.execute(statement).mappings().all()
        return [
            AuditEntry(
                id=row["id"],
                time=row["time"],
                registry=row["registry"],
                app=row["app"],
                type=row["type"],
                event_id=row["event_id"],
                seq=row["seq"],
                payload=msgspec.json.decode(row["payload"] or "{}"),
                acks=msgspec.json.decode(row["acks"] or "[]"),
                consumer=row["consumer"],
                replay=bool(row["replay"]),
                recorded=row["recorded"],
            )
            for row in rows
        ]

    def count(self) -> int:
        """How many rows the table holds (0 when it does not exist)."""
        if not sa.inspect(self.engine).has_table(self.table.name):
            return 0
        with self.engine.connect() as connection:
            return int(
                connection.execute(sa.select(sa.func.count()).select_from(self.table)).scalar_one()
            )

    def close(self) -> None:
        """Dispose of the engine (when the store made it)."""
        if self._owns_engine:
            self.engine.dispose()

    def __enter__(self) -> AuditStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def audit_row(
    envelope: Envelope, *, consumer: str, attempt: int, plugin: str, acks: bool
) -> dict[str, Any]:
    """The row that records ``envelope``.

    A copy (a replay, a dead-letter re-drive) is recorded as the event it replaces: under
    the original id and time, so that it fills a gap and never doubles a row.
    """
    now = time.time()
    own = {"plugin": plugin, "consumer": consumer, "attempt": attempt, "time": now}
    event_id, when = envelope.id, envelope.time
    if envelope.replaces is not None:
        event_id = envelope.replaces
        when = event_id_time(envelope.replaces) or envelope.time
    return {
        "time": when,
        "registry": envelope.registry,
        "app": envelope.app,
        "type": envelope.type,
        "event_id": event_id,
        "seq": envelope.seq,
        "payload": msgspec.json.encode(envelope.payload).decode(),
        "acks": msgspec.json.encode([own] if acks else []).decode(),
        "consumer": consumer,
        "replay": envelope.replay,
        "recorded": now,
    }


class AuditPlugin(PluginInterface):
    """Writes every lifecycle event it receives (and chosen custom events) to ``ro_audit``."""

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        super().__init__("audit", VERSION)
        self.config = dict(config or {})
        self.store: AuditStore | None = None
        self.settings: AuditConfig | None = None
        self.consumer = ""
        self._looked_up = False
        self.recorded = 0
        self.duplicates = 0
        self.by_type: Counter[str] = Counter()
        self.last_event_id: str | None = None

    async def validate_configuration(self, config: dict[str, Any]) -> bool:
        parse_config({**self.config, **config})
        return True

    async def initialize(self, registry: RegistryView, config: dict[str, Any]) -> None:
        await super().initialize(registry, config)
        self.settings = parse_config(self.config)
        self.consumer = str(getattr(registry, "consumer", "") or "")
        store = AuditStore(self.settings.url, self.settings.table)
        try:
            await anyio.to_thread.run_sync(store.create)
        except BaseException:
            store.close()
            raise
        self.store = store
        for name in self.settings.custom:
            registry.on(name, self._record_custom)

    async def shutdown(self) -> None:
        store, self.store = self.store, None
        if store is not None:
            if self.registry is not None and self.settings is not None:
                for name in self.settings.custom:
                    self.registry.off(name, self._record_custom)
            await anyio.to_thread.run_sync(store.close)

    def get_status(self) -> dict[str, Any]:
        settings = self.settings or AuditConfig()
        return {
            **super().get_status(),
            "running": self.store is not None,
            "store": self.store.url if self.store is not None else mask_url(settings.url),
            "table": settings.table,
            "recorded": self.recorded,
            "duplicates": self.duplicates,
            "by_type": dict(sorted(self.by_type.items())),
            "last_event_id": self.last_event_id,
        }

    async def _record(self) -> dict[str, Any]:
        """Write the current event's row; the hook's answer says whether it was new."""
        store, settings = self.store, self.settings
        if store is None or settings is None:
            raise RuntimeError("the audit plugin is not initialized")
        delivery = current_delivery()
        envelope = delivery.envelope
        if not self.consumer and not self._looked_up:
            self._looked_up = True
            self.consumer = await self._find_consumer()
        row = audit_row(
            envelope,
            consumer=self.consumer,
            attempt=delivery.attempt,
            plugin=self._plugin_name(),
            acks=settings.record_acks,
        )
        inserted = await anyio.to_thread.run_sync(store.record, row)
        if inserted:
            self.recorded += 1
            self.by_type[envelope.type] += 1
        else:
            self.duplicates += 1
        self.last_event_id = row["event_id"]
        return {"event_id": row["event_id"], "recorded": inserted}

    def _plugin_name(self) -> str:
        """The name this plugin runs under (a registry may configure another than "audit")."""
        return self.registry.plugin if self.registry is not None else self.name

    async def _find_consumer(self) -> str:
        """This worker's consumer name, from the directory: the one worker of this plugin
        in this process (a RegistryView does not carry it); empty when not unique."""
        if self.registry is None:
            return ""
        host, pid = socket.gethostname(), os.getpid()
        mine = [
            worker.consumer
            for worker in await self.registry.bus.directory.workers(self._plugin_name())
            if worker.host == host and worker.pid == pid
        ]
        return mine[0] if len(mine) == 1 else ""

    async def _record_custom(self, data: Any) -> dict[str, Any]:
        return await self._record()

    # -- the twelve hooks: each records its event --------------------------------------

    async def on_app_registration_started(
        self, app_name: str, config: dict[str, Any]
    ) -> dict[str, Any]:
        return await self._record()

    async def on_connection_created(
        self, app_name: str, connection: ConnectionInfo
    ) -> dict[str, Any]:
        return await self._record()

    async def on_auto_operations_started(
        self, app_name: str, connection: ConnectionInfo, config: dict[str, Any]
    ) -> dict[str, Any]:
        return await self._record()

    async def on_auto_operations_completed(
        self, app_name: str, result: AutoOperationsCompleted
    ) -> dict[str, Any]:
        return await self._record()

    async def on_app_registered(
        self, app_name: str, connection: ConnectionInfo, config: dict[str, Any]
    ) -> dict[str, Any]:
        return await self._record()

    async def on_app_unregistration_started(
        self, app_name: str, options: dict[str, Any]
    ) -> dict[str, Any]:
        return await self._record()

    async def on_app_rollback_started(
        self, app_name: str, connection: ConnectionInfo, options: dict[str, Any]
    ) -> dict[str, Any]:
        return await self._record()

    async def on_app_rollback_completed(
        self, app_name: str, result: AppRollbackCompleted
    ) -> dict[str, Any]:
        return await self._record()

    async def on_connection_shutdown(
        self, app_name: str, connection: ConnectionInfo, options: dict[str, Any]
    ) -> dict[str, Any]:
        return await self._record()

    async def on_app_unregistered(self, app_name: str, options: dict[str, Any]) -> dict[str, Any]:
        return await self._record()

    async def on_operation_failed(
        self, app_name: str, operation: str, error: RemoteError, context: dict[str, Any]
    ) -> dict[str, Any]:
        return await self._record()

    async def on_health_check(self, app_name: str, health_status: dict[str, Any]) -> None:
        # Recorded, but nothing is returned: the answer would be merged into the app's health.
        await self._record()
