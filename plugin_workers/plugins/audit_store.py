"""The audit table: its columns, one row per event, and ``AuditStore`` to write and read it.

Each row keeps, beside the columns that make it easy to query, the event exactly as it
travelled: the encoded envelope and its signatures (the stream's ``e`` and ``s``
fields). With them an archived row is verified as the stream is (``replay --verify
--archive``, ``audit_verify.py``): who signed it, that no column was altered, and that
no event of a registry is missing between two that are present.
"""

from __future__ import annotations

import re
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Any, Final

import msgspec
import sqlalchemy as sa
from sqlalchemy.dialects.mysql import MEDIUMBLOB, MEDIUMTEXT

from rapid_objection._extras import create_engine
from rapid_objection.bus import Envelope, mask_url
from rapid_objection.bus._contract import event_id_time

DEFAULT_URL: Final = "sqlite:///rapid_objection_audit.db"
DEFAULT_TABLE: Final = "ro_audit"
TABLE_NAME: Final = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,47}$")
"""A plain identifier; short enough that the index names built from it fit every dialect."""

_PG_ARRAYS: Final = {
    "time": "float8",
    "registry": "text",
    "app": "text",
    "type": "text",
    "event_id": "text",
    "seq": "int8",
    "payload": "text",
    "acks": "text",
    "consumer": "text",
    "replay": "bool",
    "recorded": "float8",
    "envelope": "bytea",
    "signatures": "bytea",
}
"""The PostgreSQL type of each column's array in a batch insert (``unnest``)."""

SIGNED_COLUMNS: Final = ("envelope", "signatures")
"""Columns added after the first version: a table made before them gets them on start."""


def audit_table(metadata: sa.MetaData, name: str = DEFAULT_TABLE) -> sa.Table:
    """The audit table ``name`` in ``metadata``."""
    # MySQL's TEXT and BLOB stop at 64 KiB; an app's configuration may not.
    text = sa.Text().with_variant(MEDIUMTEXT(), "mysql")
    binary = sa.LargeBinary().with_variant(MEDIUMBLOB(), "mysql")
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
        sa.Column("payload", text, nullable=False),
        sa.Column("acks", sa.Text(), nullable=False),
        sa.Column("consumer", sa.String(255), nullable=False),
        sa.Column("replay", sa.Boolean(), nullable=False),
        sa.Column("recorded", sa.Double(), nullable=False),
        # Null only in rows written before the audit plugin kept them (they do not verify).
        sa.Column("envelope", binary, nullable=True),
        sa.Column("signatures", binary, nullable=True),
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


def event_columns(envelope: Envelope) -> dict[str, Any]:
    """The columns of a row that the signed event decides (``verify_archive`` compares
    them with it). A copy (a replay, a dead-letter re-drive) is recorded as the event it
    replaces: under the original id and time, so that it fills a gap and never doubles
    a row."""
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
        "replay": envelope.replay,
    }


def audit_row(
    envelope: Envelope,
    *,
    consumer: str,
    attempt: int,
    plugin: str,
    acks: bool,
    data: bytes | None = None,
    signatures: bytes | None = None,
) -> dict[str, Any]:
    """The row that records ``envelope``; ``data`` and ``signatures`` are the stream
    entry's fields as read (without them the row cannot be verified later)."""
    now = time.time()
    own = {"plugin": plugin, "consumer": consumer, "attempt": attempt, "time": now}
    return {
        **event_columns(envelope),
        "acks": msgspec.json.encode([own] if acks else []).decode(),
        "consumer": consumer,
        "recorded": now,
        "envelope": data or None,
        "signatures": signatures or None,
    }


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
        self._unnest_sql: str | None = None

    @property
    def url(self) -> str:
        """The store's URL with its password masked."""
        return mask_url(self.engine.url.render_as_string(hide_password=True))

    def create(self) -> None:
        """Create the table and its indexes unless they exist; add the columns a table
        made by an earlier version lacks."""
        try:
            self.table.create(self.engine, checkfirst=True)
        except sa.exc.DBAPIError:
            # Several audit workers start at once: another one created it between our
            # check and our CREATE (its indexes come in the same transaction).
            if not sa.inspect(self.engine).has_table(self.table.name):
                raise
        self._add_missing_columns()
        self._exists = True

    def _add_missing_columns(self) -> None:
        present = self._column_names()
        for name in SIGNED_COLUMNS:
            if name in present:
                continue
            column = self.table.c[name]
            with self.engine.begin() as connection:
                preparer = connection.dialect.identifier_preparer
                kind = column.type.compile(dialect=connection.dialect)
                try:
                    connection.execute(
                        sa.text(
                            f"ALTER TABLE {preparer.quote(self.table.name)} "
                            f"ADD COLUMN {preparer.quote(name)} {kind}"
                        )
                    )
                except sa.exc.DBAPIError:
                    # Another worker added it first.
                    if name not in self._column_names():
                        raise

    def _column_names(self) -> set[str]:
        """The columns the table has in the database (a fresh look each call)."""
        columns = sa.inspect(self.engine).get_columns(self.table.name)
        return {column["name"] for column in columns}

    def record(self, row: Mapping[str, Any]) -> bool:
        """Insert one row unless its ``event_id`` is there; True when it was inserted."""
        return bool(self.record_many([row]))

    def record_many(self, rows: Sequence[Mapping[str, Any]]) -> set[str]:
        """Insert, in one transaction and one statement, the rows whose ``event_id`` is not
        there yet (the first of several with one id); the event ids inserted."""
        unique: dict[str, dict[str, Any]] = {}
        for row in rows:
            unique.setdefault(row["event_id"], dict(row))
        if not unique:
            return set()
        values = list(unique.values())
        event_id = self.table.c.event_id
        with self.engine.begin() as connection:
            dialect = connection.dialect.name
            if dialect == "postgresql":
                return self._record_unnested(connection, values)
            if dialect == "sqlite":
                from sqlalchemy.dialects.sqlite import insert

                # One multi-row INSERT (SQLAlchemy's "insertmanyvalues"); RETURNING says
                # which rows were new.
                returning = (
                    insert(self.table)
                    .on_conflict_do_nothing(index_elements=["event_id"])
                    .returning(event_id)
                )
                return set(connection.execute(returning, values).scalars())
            # Another dialect: look first; the unique constraint still guards a race.
            seen = set(
                connection.execute(sa.select(event_id).where(event_id.in_(list(unique)))).scalars()
            )
            fresh = [row for row in values if row["event_id"] not in seen]
            if fresh:
                statement = self.table.insert()
                if dialect in ("mysql", "mariadb"):
                    statement = statement.prefix_with("IGNORE")
                connection.execute(statement, fresh)
            return {row["event_id"] for row in fresh}

    def _record_unnested(self, connection: sa.Connection, rows: list[dict[str, Any]]) -> set[str]:
        """PostgreSQL: the rows as one array per column, in one short statement that the
        server unnests (``INSERT ... SELECT FROM unnest(...)``): a multi-row VALUES of a
        read batch is 1,400 parameters that the driver parses anew for every batch, which
        cost more than the insert itself (docs/benchmarks.md)."""
        names = [column.name for column in self.table.columns if column.name != "id"]
        if self._unnest_sql is None:
            quote = connection.dialect.identifier_preparer.quote
            # %(name)b: each array travels in binary, with nothing to escape.
            arrays = ", ".join(f"%({name})b::{_PG_ARRAYS[name]}[]" for name in names)
            self._unnest_sql = (  # the names are checked identifiers; values are parameters
                f"INSERT INTO {quote(self.table.name)} ({', '.join(map(quote, names))}) "  # noqa: S608
                f"SELECT * FROM unnest({arrays}) "
                f"ON CONFLICT ({quote('event_id')}) DO NOTHING RETURNING {quote('event_id')}"
            )
        columns = {name: [row[name] for row in rows] for name in names}
        result = connection.exec_driver_sql(self._unnest_sql, columns)
        return {found for (found,) in result}

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
        if not self.exists():
            return []
        table = self.table
        statement = self.select(app, types, since, until).order_by(table.c.time, table.c.id)
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

    def exists(self) -> bool:
        """Whether the table exists (remembered once it does)."""
        if not self._exists:
            self._exists = sa.inspect(self.engine).has_table(self.table.name)
        return self._exists

    def select(
        self,
        app: str | None = None,
        types: Collection[str] = (),
        since: float | datetime | None = None,
        until: float | datetime | None = None,
    ) -> sa.Select[Any]:
        """The rows of ``app`` and ``types`` with ``since <= time <= until``, unordered."""
        table = self.table
        statement = sa.select(table)
        if app is not None:
            statement = statement.where(table.c.app == app)
        if types:
            statement = statement.where(table.c.type.in_(sorted(set(types))))
        low, high = _seconds(since), _seconds(until)
        if low is not None:
            statement = statement.where(table.c.time >= low)
        if high is not None:
            statement = statement.where(table.c.time <= high)
        return statement

    def count(self) -> int:
        """How many rows the table holds (0 when it does not exist)."""
        if not self.exists():
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
