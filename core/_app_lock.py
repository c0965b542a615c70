"""The app lock: one per app and database, held across a whole registration or unregistration.

The batch locks (``_locks``) keep two processes from running one app's batch at once,
but a registration runs two batches (migrations, then seeds) and a failed one undoes
them again, as an unregistration does: between two batches another process could
register the app, seed over a schema that is then dropped. The app lock spans them all.

* PostgreSQL: a session advisory lock (purpose ``app``) on a connection of the app's
  engine kept for the whole span.
* MySQL/MariaDB: ``GET_LOCK`` likewise.
* SQLite file: ``flock`` on ``<database file>-rolock`` next to the database (SQLite's
  own locks are POSIX ``fcntl`` locks on the database file, which one more descriptor of
  that file opened and closed here would release).
* In-memory SQLite (one process) and any other dialect: the lock within this process.

A lock within this process is taken first in every case, so threads queue without
polling the database. ``acquire()`` and ``release()`` are synchronous and may run in
two different threads (the registry runs each in a worker thread).
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from pathlib import Path
from typing import IO, Final

import sqlalchemy as sa

from ._errors import MigrationFailed
from ._locks import LockNotTaken, Wait, advisory_key, local_lock, lock_name, poll, release

PURPOSE: Final = "app"
_DOING: Final = "a registration or unregistration"


class AppLock:
    """The lock of app ``app`` on ``engine``'s database; ``MigrationFailed`` after ``timeout``."""

    def __init__(self, engine: sa.Engine, app: str, timeout: float) -> None:
        self.engine = engine
        self.app = app
        self.timeout = timeout
        self._local: threading.Lock = local_lock(engine, f"{PURPOSE}\0{app}")
        self._connection: sa.Connection | None = None
        self._unlock: sa.Executable | None = None
        self._file: IO[bytes] | None = None

    def acquire(self) -> None:
        wait = Wait(self.timeout, time.monotonic() + self.timeout)
        if not self._local.acquire(timeout=max(self.timeout, 0.0)):
            raise self._not_taken(f"{PURPOSE} lock in this process")
        try:
            self._take(wait)
        except BaseException:
            self._local.release()
            raise

    def release(self) -> None:
        try:
            if self._connection is not None and self._unlock is not None:
                release(self._connection, self._unlock)
                self._connection.close()
            if self._file is not None:
                self._file.close()  # closing the descriptor ends its flock
        finally:
            self._connection = self._unlock = self._file = None
            self._local.release()

    def _not_taken(self, lock: str) -> MigrationFailed:
        reason = LockNotTaken(lock, PURPOSE, self.app, self.timeout, doing=_DOING)
        return MigrationFailed(self.app, lock, str(reason))

    def _take(self, wait: Wait) -> None:
        url = self.engine.url
        backend = url.get_backend_name()
        if backend == "postgresql":
            key = advisory_key(PURPOSE, self.app)
            self._hold(
                wait,
                sa.select(sa.func.pg_try_advisory_lock(key)),
                sa.select(sa.func.pg_advisory_unlock(key)),
                f"pg_advisory_lock({key})",
            )
        elif backend in ("mysql", "mariadb"):
            name = lock_name(PURPOSE, self.app, url.database)
            self._hold(
                wait,
                sa.select(sa.func.get_lock(name, 0)),
                sa.select(sa.func.release_lock(name)),
                name,
            )
        elif backend == "sqlite" and url.database not in (None, "", ":memory:"):
            self._flock(Path(url.database or ""), wait)

    def _hold(self, wait: Wait, lock: sa.Executable, unlock: sa.Executable, shown: str) -> None:
        connection = self.engine.connect()

        def attempt() -> bool:
            taken = connection.execute(lock).scalar()
            connection.commit()
            return taken in (True, 1)

        try:
            if not poll(attempt, wait):
                raise self._not_taken(shown)
        except BaseException:
            connection.close()
            raise
        self._connection, self._unlock = connection, unlock

    def _flock(self, database: Path, wait: Wait) -> None:
        if sys.platform == "win32":  # no flock: the lock within this process only
            return
        import fcntl

        path = database.with_name(database.name + "-rolock")
        handle = path.open("ab")

        def attempt() -> bool:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            return True

        try:
            if not poll(attempt, wait):
                raise self._not_taken(str(path))
        except BaseException:
            with contextlib.suppress(OSError):
                handle.close()
            raise
        self._file = handle
