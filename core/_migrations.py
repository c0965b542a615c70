"""An app's migrations: ``NNN_name.py`` files with ``upgrade(op)`` and ``downgrade(op)``.

``op`` is Alembic's ``Operations`` over the batch's connection, so ``op.create_table``,
``op.add_column`` and ``op.batch_alter_table`` work on every dialect (SQLite included).
Progress is tracked per app in one table (``ro_migrations``, ``_tracking``) shared by
the apps of a database; a batch runs under a database lock (``_locks``) and the one
routine of ``_runners``: ``Runner(Migrations(...))``.

* Applying runs the pending files, in order, as one new batch. Each file and its
  tracking row form one step: a transaction on PostgreSQL, a SAVEPOINT of the batch's
  transaction on SQLite, so that a failed file leaves nothing behind. MySQL/MariaDB
  commit DDL statement by statement: there the row is written right after its file
  succeeds, and a failed file may leave the statements that ran before its error. A
  failure stops the batch and raises ``MigrationFailed`` naming the file; the files
  before it stay applied and tracked, and its reason says which.
* Undoing runs the newest batch's ``downgrade(op)`` in reverse order, each with the
  deletion of its row as one step, and stops at the first step that fails.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Final

import sqlalchemy as sa
from alembic.operations import Operations
from alembic.runtime.migration import MigrationContext

from ._config import MigrationsConfig
from ._errors import MigrationFailed
from ._locks import Batch, exclusive
from ._runners import Kind, Progress, applied_status, backward, failure_reason, forward
from ._scripts import Script, discover
from ._tracking import Tracker

KIND: Final = Kind("migrations", apply="latest", undo="rollback", failure=MigrationFailed)
LOCK_PURPOSE: Final = "migrate"
"""Shared with ``AlembicMigrations``: one app is migrated one way at a time."""


@dataclass(frozen=True, slots=True)
class Migration:
    """One migration file."""

    name: str
    number: int
    upgrade: Callable[[Operations], object]
    downgrade: Callable[[Operations], object]


def operations(connection: sa.Connection) -> Operations:
    """Alembic's ``op`` on ``connection``, outside any Alembic environment."""
    return Operations(MigrationContext.configure(connection=connection))


def migration_lock(
    engine: sa.Engine, tracker: Tracker, config: MigrationsConfig, *, atomic: bool = False
) -> AbstractContextManager[Batch]:
    """The batch lock of one app's migrations (plain or Alembic)."""
    return exclusive(
        engine,
        tracker,
        purpose=LOCK_PURPOSE,
        what="migration",
        timeout=config.lock_timeout,
        atomic=atomic,
    )


class Migrations:
    """The changes of app ``app``'s migrations in ``config.directory`` on ``engine``."""

    kind: Final = KIND

    def __init__(self, app: str, engine: sa.Engine, config: MigrationsConfig) -> None:
        self.app = app
        self.engine = engine
        self.config = config
        self.tracker = Tracker(config.table, app=app, time_column="migrated_at")

    def _scripts(self) -> list[Script]:
        return discover(self.config.directory, kind="migrations", required=("upgrade", "downgrade"))

    def discover(self) -> list[Migration]:
        """The migration files in order; a ``ConfigError`` names a malformed one."""
        return [_migration(script) for script in self._scripts()]

    def details(self) -> dict[str, Any]:
        return {}

    def lock(self, *, atomic: bool = False) -> AbstractContextManager[Batch]:
        return migration_lock(self.engine, self.tracker, self.config, atomic=atomic)

    def forward(self, batch: Batch) -> Progress:
        progress = forward(batch, self.tracker, self._scripts(), _upgrade)
        progress.details = {
            "transactional_ddl": batch.transactional_ddl,
            "durations": progress.durations,
        }
        if progress.failed is not None:
            progress.reason = failure_reason(progress, batch.transactional_ddl)
        return progress

    def backward(self, batch: Batch, target: int | None) -> Progress:
        scripts = {script.name: script for script in self._scripts()}
        return backward(batch, self.tracker, target, scripts, _downgrade)

    def status(self) -> dict[str, Any]:
        """``applied`` (name, batch, migrated_at), ``pending`` and ``missing`` file names."""
        names = [script.name for script in self._scripts()]
        return applied_status(self.tracker, self.engine, names)


def _migration(script: Script) -> Migration:
    upgrade, downgrade = script.function("upgrade"), script.function("downgrade")
    assert upgrade is not None  # discover() checked both
    assert downgrade is not None
    return Migration(script.name, script.number, upgrade, downgrade)


def _upgrade(connection: sa.Connection, script: Script) -> None:
    _migration(script).upgrade(operations(connection))


def _downgrade(connection: sa.Connection, script: Script) -> None:
    _migration(script).downgrade(operations(connection))
