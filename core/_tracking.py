"""What migrations and seeds share: numbered files, the tracking table, the batch lock.

Numbered files
    ``NNN_name.py`` in one directory, in order of number (as an integer), then name.
    Each is loaded with importlib from its path under a unique module name; nothing is
    added to ``sys.path``. Names starting with ``_`` or ``.`` are helpers and skipped;
    any other ``.py`` file with another name is a configuration error naming it.

The tracking table
    One table per kind (``ro_migrations``, ``ro_seeds`` by default), shared by every app
    of a database: ``app``, ``name`` (the file name), ``batch`` and the time it ran;
    ``(app, name)`` is the primary key. Batches are numbered per app from 1.

The batch lock
    Held for a whole batch, so that two processes never run one app's batch at once:

    * PostgreSQL: a session advisory lock (``pg_try_advisory_lock``) on a 64-bit hash of
      the purpose and the app (advisory locks are per database), polled until the
      timeout and unlocked in ``finally``; a connection that cannot unlock is
      invalidated, which ends its session and so the lock.
    * MySQL/MariaDB: ``GET_LOCK('ro_<purpose>_<app>_<hash of database and app>', 0)``,
      polled until the timeout, ``RELEASE_LOCK`` in ``finally`` (the hash keeps apps of
      the same name in other databases of the server apart).
    * SQLite: the batch is one write transaction whose first statement is a write to
      the tracking table. That write takes SQLite's RESERVED lock, which excludes every
      other writer (in this process or another) until COMMIT; the busy timeout is set to
      the lock timeout for it. Each file then runs in a SAVEPOINT, so that a failed file
      is undone alone and the files before it commit with the batch. (The write is also
      what makes pysqlite open a transaction at all: it would run DDL in autocommit.)
    * Any other dialect: the lock within this process only.

    Before the database lock, a lock per engine and purpose/app within this process is
    taken as well, so that threads sharing one connection (in-memory SQLite) queue.
"""

from __future__ import annotations

import hashlib
import importlib.util
import itertools
import re
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.dialects import mysql
from sqlalchemy.schema import CreateTable

from rapid_objection.bus import OperationResult

from ._errors import ConfigError

NUMBERED: Final = re.compile(r"^(?P<number>\d+)_(?P<label>\w+)\.py$")
"""A migration or seed file name: ``001_create_users.py``."""

_POLL_FIRST: Final = 0.02
_POLL_MAX: Final = 0.25
"""Seconds between two tries of a lock held elsewhere: from the first, doubling to the max."""

_SQL_SHOWN: Final = 300
"""Characters of a failed statement shown in an error."""

_NOT_TRANSACTIONAL: Final = (
    "this database commits DDL statement by statement (MySQL/MariaDB): statements of "
    "the failed file that ran before the error stay applied"
)


# --- numbered files ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Script:
    """One loaded ``NNN_name.py`` file."""

    name: str
    """The file name, as the tracking table records it."""
    number: int
    path: Path
    module: ModuleType

    def function(self, attribute: str) -> Callable[..., object] | None:
        found = getattr(self.module, attribute, None)
        return found if callable(found) else None


def sort_key(name: str) -> tuple[int, str]:
    """Files in order of number, then name; a name without a number goes last."""
    match = NUMBERED.match(name)
    return (int(match["number"]), name) if match else (sys.maxsize, name)


_loads = itertools.count()
"""Numbers the loads: two threads loading one file get two module names."""


def _load(path: Path, kind: str, key: str) -> ModuleType:
    module_name = f"_rapid_objection_{kind}_{next(_loads)}_{path.stem}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ConfigError("cannot be loaded as a Python file", path=key, file=str(path))
    module = importlib.util.module_from_spec(spec)
    # Registered while it runs (dataclasses and the like look their module up), then
    # forgotten: the file is loaded afresh on every discovery.
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        raise ConfigError(
            f"cannot be loaded: {type(exc).__name__}: {exc}", path=key, file=str(path)
        ) from exc
    finally:
        sys.modules.pop(module_name, None)
    return module


def discover(
    directory: str | None,
    *,
    kind: str,
    required: Sequence[str],
    optional: Sequence[str] = (),
) -> list[Script]:
    """The ``NNN_name.py`` files of ``directory``, loaded and checked, in order.

    ``kind`` is the config section (``migrations``, ``seeds``); every error is a
    ``ConfigError`` naming the file and ``<kind>.directory``.
    """
    key = f"{kind}.directory"
    if directory is None:
        return []
    root = Path(directory)
    if not root.is_dir():
        raise ConfigError(f"{directory} is not a directory", path=key)
    scripts: list[Script] = []
    for path in root.iterdir():
        if not path.is_file() or path.suffix != ".py" or path.name[:1] in ("_", "."):
            continue
        match = NUMBERED.match(path.name)
        if match is None:
            raise ConfigError(f"{path.name!r} is not named NNN_name.py", path=key, file=str(path))
        module = _load(path, kind, key)
        script = Script(path.name, int(match["number"]), path, module)
        for attribute in required:
            if script.function(attribute) is None:
                raise ConfigError(f"has no callable {attribute}()", path=key, file=str(path))
        for attribute in optional:
            if hasattr(module, attribute) and script.function(attribute) is None:
                raise ConfigError(f"{attribute} is not callable", path=key, file=str(path))
        scripts.append(script)
    scripts.sort(key=lambda script: sort_key(script.name))
    return scripts


def describe(exc: BaseException) -> str:
    """An exception as one line for an error: its type, message and failed statement."""
    if isinstance(exc, sa.exc.DBAPIError) and exc.orig is not None:
        text = str(exc.orig).strip().splitlines()
        described = f"{type(exc.orig).__name__}: {text[0] if text else ''}"
        if exc.statement:
            statement = " ".join(exc.statement.split())
            described += f" [SQL: {statement[:_SQL_SHOWN]}]"
        return described
    return f"{type(exc).__name__}: {exc}"


# --- the tracking table --------------------------------------------------------------


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


# --- the batch lock ------------------------------------------------------------------


class LockNotTaken(Exception):  # noqa: N818 - reads as the condition
    """The batch lock was held elsewhere for the whole timeout.

    Internal: ``Migrations`` and ``Seeds`` turn it into ``MigrationFailed``/``SeedFailed``.
    """

    def __init__(self, lock: str, what: str, app: str, timeout: float) -> None:
        self.lock = lock
        super().__init__(
            f"could not take the {what} lock {lock!r} within {timeout:g} s: another "
            f"process or thread is running a {what} batch of app {app!r}"
        )


@dataclass(slots=True)
class Batch:
    """A connection that holds the batch lock; ``step()`` is one file and its row."""

    connection: sa.Connection
    step: Callable[[], AbstractContextManager[object]]
    transactional_ddl: bool


_local_locks: weakref.WeakKeyDictionary[sa.Engine, dict[str, threading.Lock]] = (
    weakref.WeakKeyDictionary()
)
_local_guard = threading.Lock()


def _local_lock(engine: sa.Engine, key: str) -> threading.Lock:
    with _local_guard:
        return _local_locks.setdefault(engine, {}).setdefault(key, threading.Lock())


def lock_name(purpose: str, app: str, database: str | None) -> str:
    """The MySQL/MariaDB lock name (at most 64 characters) of one app's batches."""
    digest = hashlib.sha1(
        f"{database}\0{purpose}\0{app}".encode(), usedforsecurity=False
    ).hexdigest()[:10]
    return f"ro_{purpose}_{app}"[:53] + f"_{digest}"


def advisory_key(purpose: str, app: str) -> int:
    """The PostgreSQL advisory lock key (a signed 64-bit integer) of one app's batches."""
    digest = hashlib.sha1(f"ro\0{purpose}\0{app}".encode(), usedforsecurity=False).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


@dataclass(frozen=True, slots=True)
class _Wait:
    """How long a lock may be waited for: the timeout and its deadline on the monotonic clock."""

    timeout: float
    deadline: float

    def left(self) -> float:
        return max(0.0, self.deadline - time.monotonic())


def _poll(attempt: Callable[[], bool], wait: _Wait) -> bool:
    """Call ``attempt`` until it returns True or the deadline passes (one try at least)."""
    pause = _POLL_FIRST
    while True:
        if attempt():
            return True
        left = wait.left()
        if left <= 0:
            return False
        time.sleep(min(pause, left))
        pause = min(pause * 2, _POLL_MAX)


def _in_transaction(connection: sa.Connection) -> Callable[[], AbstractContextManager[object]]:
    """Steps as transactions of their own; reads made before a step are committed first."""

    @contextmanager
    def step() -> Iterator[None]:
        if connection.in_transaction():
            connection.commit()
        with connection.begin():
            yield

    return step


def _release(connection: sa.Connection, statement: sa.Executable) -> None:
    try:
        connection.rollback()
        connection.execute(statement)
        connection.commit()
    except sa.exc.DBAPIError:
        # Closing the session is what releases a session lock when unlocking fails.
        connection.invalidate()


@contextmanager
def _postgresql(
    connection: sa.Connection, tracker: Tracker, purpose: str, what: str, wait: _Wait
) -> Iterator[Batch]:
    key = advisory_key(purpose, tracker.app)

    def attempt() -> bool:
        taken = connection.execute(sa.select(sa.func.pg_try_advisory_lock(key))).scalar()
        connection.commit()
        return bool(taken)

    if not _poll(attempt, wait):
        raise LockNotTaken(f"pg_advisory_lock({key})", what, tracker.app, wait.timeout)
    try:
        tracker.ensure(connection)
        yield Batch(connection, _in_transaction(connection), transactional_ddl=True)
    finally:
        _release(connection, sa.select(sa.func.pg_advisory_unlock(key)))


@contextmanager
def _mysql(
    connection: sa.Connection, tracker: Tracker, purpose: str, what: str, wait: _Wait
) -> Iterator[Batch]:
    name = lock_name(purpose, tracker.app, connection.engine.url.database)

    def attempt() -> bool:
        taken = connection.execute(sa.select(sa.func.get_lock(name, 0))).scalar()
        connection.commit()
        return taken == 1

    if not _poll(attempt, wait):
        raise LockNotTaken(name, what, tracker.app, wait.timeout)
    try:
        tracker.ensure(connection)
        # DDL commits implicitly on MySQL/MariaDB: a step is atomic only for its DML.
        yield Batch(connection, _in_transaction(connection), transactional_ddl=False)
    finally:
        _release(connection, sa.select(sa.func.release_lock(name)))


@contextmanager
def _sqlite(connection: sa.Connection, tracker: Tracker, what: str, wait: _Wait) -> Iterator[Batch]:
    tracker.ensure(connection)
    previous = int(connection.exec_driver_sql("PRAGMA busy_timeout").scalar() or 0)
    waited = int(wait.left() * 1000)
    connection.exec_driver_sql(f"PRAGMA busy_timeout = {waited}")
    connection.commit()
    with connection.begin():
        try:
            tracker.touch(connection)
        except sa.exc.OperationalError as exc:
            if "locked" in str(exc.orig) or "busy" in str(exc.orig):
                raise LockNotTaken(
                    f"sqlite write lock on {tracker.table.name}",
                    what,
                    tracker.app,
                    wait.timeout,
                ) from exc
            raise
        finally:
            connection.exec_driver_sql(f"PRAGMA busy_timeout = {previous}")
        yield Batch(connection, connection.begin_nested, transactional_ddl=True)


@contextmanager
def exclusive(
    engine: sa.Engine, tracker: Tracker, *, purpose: str, what: str, timeout: float
) -> Iterator[Batch]:
    """A connection holding the batch lock of ``tracker.app`` for ``purpose``.

    ``purpose`` names the lock (``migrate``, ``seed``); ``what`` names it in the error
    (``migration``, ``seed``). Raises ``LockNotTaken`` after ``timeout`` seconds.
    """
    wait = _Wait(timeout, time.monotonic() + timeout)
    local = _local_lock(engine, f"{purpose}\0{tracker.app}")
    if not local.acquire(timeout=max(timeout, 0.0)):
        raise LockNotTaken(f"{purpose} lock in this process", what, tracker.app, timeout)
    try:
        with engine.connect() as connection:
            dialect = connection.dialect.name
            if dialect == "postgresql":
                held = _postgresql(connection, tracker, purpose, what, wait)
            elif dialect in ("mysql", "mariadb"):
                held = _mysql(connection, tracker, purpose, what, wait)
            elif dialect == "sqlite":
                held = _sqlite(connection, tracker, what, wait)
            else:
                held = _unlocked(connection, tracker)
            with held as batch:
                yield batch
    finally:
        local.release()


@contextmanager
def _unlocked(connection: sa.Connection, tracker: Tracker) -> Iterator[Batch]:
    tracker.ensure(connection)
    yield Batch(connection, _in_transaction(connection), transactional_ddl=False)


# --- running a batch -----------------------------------------------------------------


@dataclass(slots=True)
class Progress:
    """How far a batch (forward or backward) went; ``failed`` stops it."""

    batch: int | None = None
    done: list[str] = field(default_factory=list)
    durations: dict[str, float] = field(default_factory=dict)
    failed: str | None = None
    error: BaseException | None = None
    remaining: list[str] = field(default_factory=list)
    """Backward: the names of the batch still applied after a failure."""


def forward(
    batch: Batch,
    tracker: Tracker,
    scripts: Sequence[Script],
    run: Callable[[sa.Connection, Script], object],
) -> Progress:
    """The pending scripts as one new batch, each with its row in one step, in order.

    Stops at the first script that fails; the ones before it stay applied and tracked.
    """
    connection = batch.connection
    applied = {row.name for row in tracker.rows(connection)}
    pending = [script for script in scripts if script.name not in applied]
    progress = Progress()
    if not pending:
        return progress
    progress.batch = tracker.next_batch(connection)
    for script in pending:
        started = time.perf_counter()
        try:
            with batch.step():
                run(connection, script)
                tracker.record(connection, script.name, progress.batch)
        except Exception as exc:
            progress.failed, progress.error = script.name, exc
            break
        finally:
            progress.durations[script.name] = time.perf_counter() - started
        progress.done.append(script.name)
    return progress


def backward(
    batch: Batch,
    tracker: Tracker,
    scripts: Mapping[str, Script],
    run: Callable[[sa.Connection, Script], object],
) -> Progress:
    """The newest batch undone in reverse order, each script with its row in one step.

    Stops at the first script that fails (or whose file is gone); the ones undone
    before it stay undone, it and the ones after it stay applied.
    """
    connection = batch.connection
    last = tracker.last_batch(connection)
    progress = Progress()
    if last is None:
        return progress
    progress.batch, names = last
    for index, name in enumerate(reversed(names)):
        started = time.perf_counter()
        try:
            script = scripts.get(name)
            if script is None:
                raise FileNotFoundError(f"{name} is tracked but no longer in the directory")
            with batch.step():
                run(connection, script)
                tracker.forget(connection, name)
        except Exception as exc:
            progress.failed, progress.error = name, exc
            progress.remaining = list(reversed(names))[index:]
            break
        finally:
            progress.durations[name] = time.perf_counter() - started
        progress.done.append(name)
    return progress


def applied_status(tracker: Tracker, engine: sa.Engine, names: Sequence[str]) -> dict[str, Any]:
    """``applied`` (name, batch, time) and ``pending`` names; ``missing``: tracked, no file."""
    with engine.connect() as connection:
        rows = tracker.rows(connection) if tracker.exists(connection) else []
    tracked = {row.name for row in rows}
    return {
        "applied": [
            {"name": row.name, "batch": row.batch, tracker.time_column: row.at.isoformat()}
            for row in rows
        ],
        "pending": [name for name in names if name not in tracked],
        "missing": [row.name for row in rows if row.name not in set(names)],
    }


def failure_reason(progress: Progress, transactional_ddl: bool) -> str:
    """Why a forward batch stopped, and what it left applied and tracked."""
    reason = describe(progress.error or RuntimeError("failed"))
    if progress.done:
        reason += f"; applied and tracked before it in batch {progress.batch}: " + ", ".join(
            progress.done
        )
    if not transactional_ddl:
        reason += f"; {_NOT_TRANSACTIONAL}"
    return reason


def undo_result(
    operation: str, progress: Progress, started: float, details: Mapping[str, Any]
) -> OperationResult:
    """The result of a backward batch: failed when a step failed, naming its file."""
    shown: dict[str, Any] = {
        **details,
        "batch": progress.batch,
        "durations": progress.durations,
    }
    error = None
    if progress.failed is not None:
        error = f"{progress.failed}: {describe(progress.error or RuntimeError('failed'))}"
        shown |= {"failed": progress.failed, "remaining": progress.remaining}
        if progress.error is not None:
            shown["error_type"] = type(progress.error).__name__
    return OperationResult(
        operation=operation,
        success=progress.failed is None,
        items=tuple(progress.done),
        duration=time.perf_counter() - started,
        error=error,
        details=shown,
    )


def failed_result(
    operation: str, exc: BaseException, started: float, details: Mapping[str, Any]
) -> OperationResult:
    """A backward batch that could not start: the lock, the files, the database."""
    error = describe(exc) if isinstance(exc, sa.exc.SQLAlchemyError) else str(exc)
    return OperationResult(
        operation=operation,
        success=False,
        duration=time.perf_counter() - started,
        error=error,
        details={**details, "error_type": type(exc).__name__},
    )
