"""The tracking table of migrations and seeds: which files of an app ran, in which batch.

One table per kind (``ro_migrations``, ``ro_seeds`` by default), shared by every app of
a database: ``app``, ``name`` (the file name), ``batch`` and the time it ran;
``(app, name)`` is the primary key. Batches are numbered per app from 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.dialects import mysql
from sqlalchemy.schema import CreateTable

from ._scripts import sort_key


@dataclass(frozen=True, slots=True)
class Row:
    name: str
    batch: int
    at: datetime
    """UTC, timezone-aware."""


class Tracker:
    """One app's rows in a tracking table (``time_column``: ``migrated_at``, ``seeded_at``)."""

    def __init__(self, table: str, *, app: str, time_column: str) -> None:
        self.app = app
        self.time_column = time_column
        self.table = sa.Table(
            table,
            sa.MetaData(),
            sa.Column("app", sa.String(255), primary_key=True),
            sa.Column("name", sa.String(255), primary_key=True),
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
        if not self.exists(connection):
            try:
                connection.execute(CreateTable(self.table, if_not_exists=True))
                connection.commit()
            except sa.exc.DBAPIError:
                # Another app of this database (which holds another lock) created it
                # meanwhile; PostgreSQL reports that race as a unique violation.
                connection.rollback()
                if not self.exists(connection):
                    raise
        connection.commit()

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

    def last_batch(self, connection: sa.Connection) -> tuple[int, list[str]] | None:
        """The newest batch and its names in the order they were applied, or None."""
        rows = self.rows(connection)
        if not rows:
            return None
        batch = rows[-1].batch
        return batch, [row.name for row in rows if row.batch == batch]

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
