"""The tracking table of migrations and seeds: which files of an app ran, in which batch.

One table per kind (``ro_migrations``, ``ro_seeds`` by default), shared by every app of
a database: ``app``, ``name`` (the file name), ``batch`` and the time it ran;
``(app, name)`` is the primary key. Batches are numbered per app from 1.

Names compare byte for byte on every dialect: ``Ledger`` and ``ledger`` are two apps.
SQLite and PostgreSQL compare text that way by default; MySQL/MariaDB columns get a
binary collation (``utf8mb4_bin``), and a table created before with a case-insensitive
one is altered to it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

import sqlalchemy as sa
from sqlalchemy.dialects import mysql
from sqlalchemy.schema import CreateTable

from ._scripts import sort_key

BINARY_COLLATION: Final = "utf8mb4_bin"
"""MySQL/MariaDB: names compared byte for byte (the default collation ignores case)."""


def name_type() -> sa.types.TypeEngine[str]:
    return sa.String(255).with_variant(
        mysql.VARCHAR(255, charset="utf8mb4", collation=BINARY_COLLATION), "mysql", "mariadb"
    )


def ensure_table(connection: sa.Connection, table: sa.Table) -> bool:
    """Create ``table`` if it is missing (committed); whether this created it."""
    if sa.inspect(connection).has_table(table.name):
        return False
    try:
        connection.execute(CreateTable(table, if_not_exists=True))
        connection.commit()
    except sa.exc.DBAPIError:
        # Another app of this database (which holds another lock) created it
        # meanwhile; PostgreSQL reports that race as a unique violation.
        connection.rollback()
        if not sa.inspect(connection).has_table(table.name):
            raise
    return True


@dataclass(frozen=True, slots=True)
class Row:
    name: str
    batch: int
    at: datetime
    """UTC, timezone-aware."""


class NewerBatch(Exception):  # noqa: N818 - reads as the condition
    """A batch newer than the one to undo is tracked (another registration applied it)."""

    def __init__(self, app: str, batch: int, newest: int) -> None:
        super().__init__(
            f"app {app!r}: batch {newest} was applied after batch {batch} (by another "
            f"registration); undo batch {newest} first"
        )


class Tracker:
    """One app's rows in a tracking table (``time_column``: ``migrated_at``, ``seeded_at``)."""

    def __init__(self, table: str, *, app: str, time_column: str) -> None:
        self.app = app
        self.time_column = time_column
        self.table = sa.Table(
            table,
            sa.MetaData(),
            sa.Column("app", name_type(), primary_key=True),
            sa.Column("name", name_type(), primary_key=True),
            sa.Column("batch", sa.Integer, nullable=False),
            # Naive UTC: the one datetime type every dialect stores alike (MySQL with
            # microseconds, like the others).
            sa.Column(
                time_column,
                sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb"),
                nullable=False,
            ),
        )

    def exists(self, connection: sa.Connection) -> bool:
        return sa.inspect(connection).has_table(self.table.name)

    def ensure(self, connection: sa.Connection) -> None:
        """Create the table if it is missing, and end the transaction this opened."""
        if not ensure_table(connection, self.table) and connection.dialect.name in (
            "mysql",
            "mariadb",
        ):
            self._binary_names(connection)
        connection.commit()

    def _binary_names(self, connection: sa.Connection) -> None:
        """A table created with a case-insensitive collation gets the binary one."""
        collations = connection.execute(
            sa.text(
                "SELECT column_name, collation_name FROM information_schema.columns"
                " WHERE table_schema = DATABASE() AND table_name = :table"
                " AND column_name IN ('app', 'name')"
            ),
            {"table": self.table.name},
        ).all()
        if all(collation == BINARY_COLLATION for _, collation in collations):
            return
        connection.execute(
            sa.text(
                f"ALTER TABLE `{self.table.name}`"
                f" MODIFY app VARCHAR(255) CHARACTER SET utf8mb4 COLLATE {BINARY_COLLATION}"
                " NOT NULL,"
                f" MODIFY name VARCHAR(255) CHARACTER SET utf8mb4 COLLATE {BINARY_COLLATION}"
                " NOT NULL"
            )
        )

    def rows(self, connection: sa.Connection) -> list[Row]:
        """This app's rows in the order they were applied."""
        table = self.table
        found = connection.execute(
            sa.select(table.c.name, table.c.batch, table.c[self.time_column]).where(
                table.c.app == self.app
            )
        ).all()
        rows = [Row(name, batch, at.replace(tzinfo=UTC)) for name, batch, at in found]
        rows.sort(key=lambda row: (row.batch, sort_key(row.name)))
        return rows

    def last_batch(
        self, connection: sa.Connection, batch: int | None = None
    ) -> tuple[int, list[str]] | None:
        """Batch ``batch`` (the newest when None) and its names in the order they were
        applied, or None when it has no rows.

        Raises ``NewerBatch`` when a batch newer than ``batch`` is tracked: undoing an
        older batch under a newer one would pull the ground from under it.
        """
        rows = self.rows(connection)
        if not rows:
            return None
        newest = rows[-1].batch
        if batch is None:
            batch = newest
        elif newest > batch:
            raise NewerBatch(self.app, batch, newest)
        names = [row.name for row in rows if row.batch == batch]
        return (batch, names) if names else None

    def next_batch(self, connection: sa.Connection) -> int:
        table = self.table
        newest = connection.execute(
            sa.select(sa.func.max(table.c.batch)).where(table.c.app == self.app)
        ).scalar()
        return int(newest or 0) + 1

    def record(self, connection: sa.Connection, name: str, batch: int) -> None:
        now = datetime.now(UTC).replace(tzinfo=None)
        connection.execute(
            sa.insert(self.table).values(
                app=self.app, name=name, batch=batch, **{self.time_column: now}
            )
        )

    def forget(self, connection: sa.Connection, name: str) -> None:
        table = self.table
        connection.execute(sa.delete(table).where(table.c.app == self.app, table.c.name == name))

    def touch(self, connection: sa.Connection) -> None:
        """A write that changes nothing (no row has an empty name): SQLite's write lock."""
        table = self.table
        connection.execute(
            sa.update(table)
            .where(table.c.app == self.app, table.c.name == "")
            .values(batch=table.c.batch)
        )
