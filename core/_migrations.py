"""An app's migrations: ``NNN_name.py`` files with ``upgrade(op)`` and ``downgrade(op)``.

``op`` is Alembic's ``Operations`` over the batch's connection, so ``op.create_table``,
``op.add_column`` and ``op.batch_alter_table`` work on every dialect (SQLite included).
Progress is tracked per app in one table (``ro_migrations``) shared by the apps of a
database; a batch runs under a database lock (both in ``rapid_objection.core._tracking``).

* ``latest()`` applies the pending files, in order, as one new batch. Each file and its
  tracking row form one step: a transaction on PostgreSQL, a SAVEPOINT of the batch's
  transaction on SQLite, so that a failed file leaves nothing behind. MySQL/MariaDB
  commit DDL statement by statement: there the row is written right after its file
  succeeds, and a failed file may leave the statements that ran before its error. A
  failure stops the batch and raises ``MigrationFailed`` naming the file; the files
  before it stay applied and tracked, and its reason says which.
* ``rollback()`` undoes the newest batch in reverse order, each ``downgrade(op)`` with
  the deletion of its row as one step. It stops at the first step that fails and
  *returns* a failed result (``error`` names the file; ``details`` has ``failed`` and
  ``remaining``, the names still applied) rather than raising, so that unregistration
  can report it. It raises for nothing of its own: a lock, a file or the database that
  fails gives a failed result too (``details["error_type"]``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Final

import sqlalchemy as sa
from alembic.operations import Operations
from alembic.runtime.migration import MigrationContext

from rapid_objection.bus import OperationResult

from ._config import MigrationsConfig
from ._errors import MigrationFailed, RegistryError
from ._tracking import (
    Batch,
    LockNotTaken,
    Script,
    Tracker,
    applied_status,
    backward,
    describe,
    discover,
    exclusive,
    failed_result,
    failure_reason,
    forward,
    undo_result,
)

log = logging.getLogger("rapid_objection.migrations")

OPERATION: Final = "migrations"
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
    engine: sa.Engine, tracker: Tracker, config: MigrationsConfig
) -> AbstractContextManager[Batch]:
    """The batch lock of one app's migrations (plain or Alembic)."""
    return exclusive(
        engine, tracker, purpose=LOCK_PURPOSE, what="migration", timeout=config.lock_timeout
    )


class Migrations:
    """The migrations of app ``app`` in ``config.directory`` on ``engine``."""

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

    def latest(self) -> OperationResult:
        """Apply the pending files as one new batch; ``MigrationFailed`` names a failed one."""
        started = time.perf_counter()
        scripts = self._scripts()
        try:
            with migration_lock(self.engine, self.tracker, self.config) as batch:
                progress = forward(batch, self.tracker, scripts, _upgrade)
        except LockNotTaken as exc:
            raise MigrationFailed(self.app, exc.lock, str(exc)) from None
        except sa.exc.SQLAlchemyError as exc:
            raise MigrationFailed(self.app, self.config.table, describe(exc)) from exc
        if progress.failed is not None:
            reason = failure_reason(progress, batch.transactional_ddl)
            raise MigrationFailed(self.app, progress.failed, reason) from progress.error
        for name in progress.done:
            log.info("app %r: applied migration %s (batch %s)", self.app, name, progress.batch)
        return OperationResult(
            operation=OPERATION,
            success=True,
            items=tuple(progress.done),
            duration=time.perf_counter() - started,
            details={
                "action": "latest",
                "batch": progress.batch,
                "transactional_ddl": batch.transactional_ddl,
                "durations": progress.durations,
            },
        )

    def rollback(self) -> OperationResult:
        """Undo the newest batch in reverse order; a failed result names the failed file."""
        started = time.perf_counter()
        details = {"action": "rollback"}
        try:
            scripts = {script.name: script for script in self._scripts()}
            with migration_lock(self.engine, self.tracker, self.config) as batch:
                progress = backward(batch, self.tracker, scripts, _downgrade)
        except (RegistryError, LockNotTaken, sa.exc.SQLAlchemyError) as exc:
            return failed_result(OPERATION, exc, started, details)
        for name in progress.done:
            log.info("app %r: rolled back migration %s", self.app, name)
        return undo_result(OPERATION, progress, started, details)

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
