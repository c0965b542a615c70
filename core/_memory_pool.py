"""The pool of an in-memory SQLite database: one connection, one user at a time.

An in-memory SQLite database lives in one DBAPI connection, so every app and session
that uses it shares that connection (SQLAlchemy's ``StaticPool``). A connection has one
transaction: when another thread commits or rolls back (a session ending, a pool reset
on return) while a migration batch runs, it ends the batch's transaction too, and a
file would be tracked as applied although its table was rolled back. ``TurnPool`` hands
the connection to one thread at a time: another thread waits for it (up to ``timeout``
seconds, then ``sqlalchemy.exc.TimeoutError``). The thread that has it may check it out
again, as it always could; SQLAlchemy checks the connection in once, when the inner use
ends, and the turn ends there (nesting in one thread was never safe: the inner use's
reset on return rolls back the outer one's transaction).
"""

from __future__ import annotations

import threading
from typing import Any

import sqlalchemy as sa
from sqlalchemy.pool import ConnectionPoolEntry

DEFAULT_TIMEOUT = 30.0
"""Seconds a thread waits for the connection, as a queue pool waits by default."""


class _Turn:
    """A fair lock (first come, first served) that its owning thread may take again
    (once given back, it is free) and any thread may give back."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._changed = threading.Condition()
        self._owner: int | None = None
        self._next = 0
        """The ticket the next waiting thread draws."""
        self._serving = 0
        """The ticket whose thread goes next."""
        self._gave_up: set[int] = set()

    def take(self) -> None:
        me = threading.get_ident()
        with self._changed:
            if self._owner == me:
                return
            ticket, self._next = self._next, self._next + 1
            if not self._changed.wait_for(
                lambda: self._owner is None and self._serving == ticket, timeout=self.timeout
            ):
                self._gave_up.add(ticket)
                self._skip_gave_up()
                raise sa.exc.TimeoutError(
                    f"the in-memory SQLite connection stayed in use by another thread for "
                    f"{self.timeout:g} s"
                )
            self._owner = me
            self._serving += 1

    def give_back(self) -> None:
        with self._changed:
            self._owner = None
            self._skip_gave_up()

    def _skip_gave_up(self) -> None:
        while self._serving in self._gave_up:
            self._gave_up.remove(self._serving)
            self._serving += 1
        self._changed.notify_all()


class TurnPool(sa.StaticPool):
    """``StaticPool`` whose one connection is used by one thread at a time."""

    def __init__(self, creator: Any, timeout: float = DEFAULT_TIMEOUT, **kwargs: Any) -> None:
        super().__init__(creator, **kwargs)
        self._turn = _Turn(timeout)

    def recreate(self) -> TurnPool:
        pool = super().recreate()
        assert isinstance(pool, TurnPool)
        pool._turn = _Turn(self._turn.timeout)
        return pool

    def status(self) -> str:
        return "TurnPool"

    def _do_get(self) -> ConnectionPoolEntry:
        self._turn.take()
        try:
            return super()._do_get()
        except BaseException:
            self._turn.give_back()
            raise

    def _do_return_conn(self, record: ConnectionPoolEntry) -> None:
        super()._do_return_conn(record)
        self._turn.give_back()
