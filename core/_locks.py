"""The batch lock: two processes never run one app's batch at once.

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
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Final

import sqlalchemy as sa

from ._tracking import Tracker

_POLL_FIRST: Final = 0.02
_POLL_MAX: Final = 0.25
"""Seconds between two tries of a lock held elsewhere: from the first, doubling to the max."""


class LockNotTaken(Exception):  # noqa: N818 - reads as the condition
    """The batch lock was held elsewhere for the whole timeout.

    Internal: the runner turns it into ``MigrationFailed``/``SeedFailed``.
    """

    def __init__(
        self, lock: str, what: str, app: str, timeout: float, doing: str | None = None
    ) -> None:
        self.lock = lock
        doing = doing or f"a {what} batch"
        super().__init__(
            f"could not take the {what} lock {lock!r} within {timeout:g} s: another "
            f"process or thread is running {doing} of app {app!r}"
        )


@dataclass(slots=True)
class Batch:
    """A connection that holds the batch lock; ``step()`` is one file and its row."""

    connection: sa.Connection
    step: Callable[[], AbstractContextManager[object]]
    transactional_ddl: bool
    atomic: bool = False
    """The whole batch is one transaction (each step a SAVEPOINT in it): an error
    raised out of the batch's ``with`` undoes every step (``exclusive(atomic=True)``
    on a dialect with transactional DDL)."""


_local_locks: weakref.WeakKeyDictionary[sa.Engine, dict[str, threading.Lock]] = (
    weakref.WeakKeyDictionary()
)
_local_guard = threading.Lock()


def local_lock(engine: sa.Engine, key: str) -> threading.Lock:
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
class Wait:
    """How long a lock may be waited for: the timeout and its deadline on the monotonic clock."""

    timeout: float
    deadline: float

    def left(self) -> float:
        return max(0.0, self.deadline - time.monotonic())


def poll(attempt: Callable[[], bool], wait: Wait) -> bool:
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


def release(connection: sa.Connection, statement: sa.Executable) -> None:
    try:
        connection.rollback()
        connection.execute(statement)
        connection.commit()
    except sa.exc.DBAPIError:
        # Closing the session is what releases a session lock when unlocking fails.
        connection.invalidate()


@contextmanager
def _postgresql(
    connection: sa.Connection,
    tracker: Tracker,
    purpose: str,
    what: str,
    wait: Wait,
    *,
    atomic: bool,
) -> Iterator[Batch]:
    key = advisory_key(purpose, tracker.app)

    def attempt() -> bool:
        taken = connection.execute(sa.select(sa.func.pg_try_advisory_lock(key))).scalar()
        connection.commit()
        return bool(taken)

    if not poll(attempt, wait):
        raise LockNotTaken(f"pg_advisory_lock({key})", what, tracker.app, wait.timeout)
    try:
        tracker.ensure(connection)
        if atomic:
            with connection.begin():
                yield Batch(connection, connection.begin_nested, True, atomic=True)
        else:
            yield Batch(connection, _in_transaction(connection), transactional_ddl=True)
    finally:
        release(connection, sa.select(sa.func.pg_advisory_unlock(key)))


@contextmanager
def _mysql(
    connection: sa.Connection, tracker: Tracker, purpose: str, what: str, wait: Wait
) -> Iterator[Batch]:
    name = lock_name(purpose, tracker.app, connection.engine.url.database)

    def attempt() -> bool:
        taken = connection.execute(sa.select(sa.func.get_lock(name, 0))).scalar()
        connection.commit()
        return taken == 1

    if not poll(attempt, wait):
        raise LockNotTaken(name, what, tracker.app, wait.timeout)
    try:
        tracker.ensure(connection)
        # DDL commits implicitly on MySQL/MariaDB: a step is atomic only for its DML.
        yield Batch(connection, _in_transaction(connection), transactional_ddl=False)
    finally:
        release(connection, sa.select(sa.func.release_lock(name)))


@contextmanager
def _sqlite(
    connection: sa.Connection, tracker: Tracker, what: str, wait: Wait, atomic: bool
) -> Iterator[Batch]:
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
        # One transaction already: atomic only says that a failed batch is undone whole.
        yield Batch(connection, connection.begin_nested, True, atomic=atomic)


@contextmanager
def exclusive(
    engine: sa.Engine,
    tracker: Tracker,
    *,
    purpose: str,
    what: str,
    timeout: float,
    atomic: bool = False,
) -> Iterator[Batch]:
    """A connection holding the batch lock of ``tracker.app`` for ``purpose``.

    ``purpose`` names the lock (``migrate``, ``seed``); ``what`` names it in the error
    (``migration``, ``seed``). Raises ``LockNotTaken`` after ``timeout`` seconds.
    ``atomic``: the batch is one transaction where DDL is transactional (PostgreSQL,
    SQLite; ``Batch.atomic`` says whether it is).
    """
    wait = Wait(timeout, time.monotonic() + timeout)
    local = local_lock(engine, f"{purpose}\0{tracker.app}")
    if not local.acquire(timeout=max(timeout, 0.0)):
        raise LockNotTaken(f"{purpose} lock in this process", what, tracker.app, timeout)
    try:
        with engine.connect() as connection:
            dialect = connection.dialect.name
            if dialect == "postgresql":
                held = _postgresql(connection, tracker, purpose, what, wait, atomic=atomic)
            elif dialect in ("mysql", "mariadb"):
                held = _mysql(connection, tracker, purpose, what, wait)
            elif dialect == "sqlite":
                held = _sqlite(connection, tracker, what, wait, atomic)
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
