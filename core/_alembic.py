"""An app's migrations from an existing Alembic script directory (``migrations.alembic``).

Alembic's own command API runs them (``command.upgrade``/``command.downgrade``), with the
script directory's ``env.py``. That ``env.py`` must use what the registry hands it in
``config.attributes`` (Alembic's "sharing a connection" recipe, plus the version table)::

    connection = context.config.attributes["connection"]
    context.configure(
        connection=connection,
        version_table=context.config.attributes["version_table"],
    )
    with context.begin_transaction():
        context.run_migrations()

``attributes`` also carries ``app``. The version table is per app
(``alembic_version_<app>``, see ``version_table``), so that apps sharing a database keep
their own revisions; distinct app names always get distinct tables (``shop-v2``,
``shop_v2`` and ``Shop.V2`` included). An ``env.py`` that ignores it is detected after
the upgrade and reported as a failure. An app migrated by an older version, whose table
then had the sanitised name alone, gets its table renamed on its next batch.

* Applying upgrades to every head as one batch under the app's migration lock (the one
  plain migrations take) and records, in the migrations tracking table, the heads it
  started from as a row ``alembic:<heads>`` (``alembic:base`` from an empty database,
  ``alembic:a+b`` from two heads) and each revision it applied as a row
  ``alembic:+<revision>``. A batch is a set of revisions: with branches and merges,
  every revision reachable from the new heads and not from the old ones. The upgrade
  and its rows are one transaction where DDL is transactional (PostgreSQL, SQLite). On
  MySQL/MariaDB, which commit DDL at once, Alembic runs its own transaction per
  revision (so that the version table stays true) and the rows follow; a failed
  upgrade keeps the revisions that succeeded, and they are tracked so that an undo can
  return; the error says that the failed revision's statements may remain. A failure
  raises ``MigrationFailed`` naming the revision that failed.
* Undoing downgrades exactly the batch's revisions, on every branch, newest first
  (Alembic's own steps through ``env.py``), checks that the heads are the ones the
  batch started from, and only then deletes its rows, in one transaction where
  possible. A database migrated by hand since (the revisions above the starting heads
  are not the ones recorded) is refused with a failed result.

Both run through the one routine of ``_runners``: ``Runner(AlembicMigrations(...))``.

``alembic.context`` and ``alembic.op`` are process-wide proxies, so Alembic runs in one
thread of a process at a time (a lock here; waiting for it counts against
``lock_timeout``).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import Any, Final

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.environment import EnvironmentContext
from alembic.runtime.migration import MigrationContext, MigrationStep
from alembic.script import ScriptDirectory

from ._config import MigrationsConfig
from ._errors import ConfigError
from ._locks import Batch, LockNotTaken
from ._migrations import KIND, migration_lock
from ._runners import Progress
from ._scripts import describe
from ._tracking import Tracker

log = logging.getLogger("rapid_objection.migrations")

ROW_PREFIX: Final = "alembic:"
"""Tracking rows of Alembic batches: ``alembic:<heads the upgrade started from>``."""
APPLIED_PREFIX: Final = "alembic:+"
"""And one row per revision the batch applied: ``alembic:+<revision>``."""
BASE: Final = "base"

_IDENTIFIER_MAX: Final = 63
"""PostgreSQL's identifier limit (MySQL allows 64)."""
_PREFIX: Final = "alembic_version_"
_PLAIN: Final = re.compile(r"[0-9a-z]+(_[0-9a-z]+)*")
"""Names kept as they are: no upper case, no ``.`` or ``-``, no ``__``, no edge ``_``."""

_alembic_lock = threading.Lock()
"""One Alembic run per process: ``alembic.context`` and ``alembic.op`` are global proxies."""


def version_table(app: str) -> str:
    """``alembic_version_<app>``, one table per distinct app name, at most 63 characters.

    A name of lower-case letters, digits and single underscores is used as it is; any
    other is sanitised and followed by ``__`` and a hash of the exact name, which a kept
    name never contains: two names never share a table (but for a hash collision).
    """
    if _PLAIN.fullmatch(app) and len(_PREFIX) + len(app) <= _IDENTIFIER_MAX:
        return _PREFIX + app
    digest = hashlib.sha256(app.encode()).hexdigest()[:12]
    sanitised = re.sub(r"_+", "_", re.sub(r"[^0-9a-z_]", "_", app.lower()))
    room = _IDENTIFIER_MAX - len(_PREFIX) - len(digest) - 2
    return f"{_PREFIX}{sanitised[:room].rstrip('_')}__{digest}"


def _legacy_version_table(app: str) -> str:
    """The name older versions gave (shared by names that sanitise alike)."""
    name = _PREFIX + re.sub(r"[^0-9a-z_]", "_", app.lower())
    if len(name) > _IDENTIFIER_MAX:
        digest = hashlib.sha1(app.encode(), usedforsecurity=False).hexdigest()[:8]
        name = f"{name[: _IDENTIFIER_MAX - 9]}_{digest}"
    return name


def _joined(revisions: tuple[str, ...] | list[str]) -> str:
    return "+".join(sorted(revisions)) or BASE


class AlembicMigrations:
    """The changes of app ``app``'s migrations from the Alembic scripts in ``config.alembic``."""

    kind: Final = KIND

    def __init__(self, app: str, engine: sa.Engine, config: MigrationsConfig) -> None:
        if not config.alembic:
            raise ConfigError("no Alembic script directory is set", path="migrations.alembic")
        self.app = app
        self.engine = engine
        self.config = config
        self.directory: str = config.alembic
        self.version_table = version_table(app)
        self.tracker = Tracker(config.table, app=app, time_column="migrated_at")

    # --- Alembic ---------------------------------------------------------------------

    def _alembic_config(self, connection: sa.Connection | None = None) -> Config:
        config = Config(
            attributes={
                "connection": connection,
                "version_table": self.version_table,
                "app": self.app,
            }
        )
        config.set_main_option("script_location", self.directory)
        return config

    def script(self) -> ScriptDirectory:
        """The script directory; a ``ConfigError`` when it is not a usable one."""
        try:
            script = ScriptDirectory.from_config(self._alembic_config())
            script.get_heads()  # reads every revision file
        except Exception as exc:  # a revision file runs when it is read: anything may fail
            raise ConfigError(
                f"not a usable Alembic script directory: {type(exc).__name__}: {exc}",
                path="migrations.alembic",
                file=self.directory,
            ) from exc
        return script

    def _current(self, connection: sa.Connection) -> tuple[str, ...]:
        context = MigrationContext.configure(
            connection=connection, opts={"version_table": self.version_table}
        )
        return tuple(context.get_current_heads())

    @contextmanager
    def lock(self, *, atomic: bool = False) -> Iterator[Batch]:
        """Alembic's process lock, then the app's migration lock."""
        with (
            self._process_lock(),
            migration_lock(self.engine, self.tracker, self.config, atomic=atomic) as batch,
        ):
            yield batch

    @contextmanager
    def _process_lock(self) -> Iterator[None]:
        """``_alembic_lock``, waited for up to ``lock_timeout``; ``LockNotTaken`` after."""
        timeout = self.config.lock_timeout
        if not _alembic_lock.acquire(timeout=max(timeout, 0.0)):
            raise LockNotTaken("alembic (in this process)", "migration", self.app, timeout)
        try:
            yield
        finally:
            _alembic_lock.release()

    # --- the changes --------------------------------------------------------------------

    def discover(self) -> list[str]:
        """The revisions from base to the heads, oldest first."""
        return [revision.revision for revision in reversed(list(self.script().walk_revisions()))]

    def details(self) -> dict[str, Any]:
        return {"version_table": self.version_table}

    def forward(self, batch: Batch) -> Progress:
        self._adopt_legacy_table(batch)
        script = self.script()
        heads = tuple(script.get_heads())
        progress, before = self._upgrade(batch, script, heads)
        progress.details = {"from": _joined(before), "to": _joined(heads)}
        if progress.failed is not None:
            progress.reason = self._upgrade_failure(progress, before, batch.transactional_ddl)
        return progress

    def _upgrade(
        self, batch: Batch, script: ScriptDirectory, heads: tuple[str, ...]
    ) -> tuple[Progress, tuple[str, ...]]:
        connection = batch.connection
        before = self._current(connection)
        progress = Progress()
        if set(before) == set(heads):
            return progress, before
        revisions = _above(script, heads, before)
        progress.batch = self.tracker.next_batch(connection)
        row = ROW_PREFIX + _joined(before)
        config = self._alembic_config(connection)
        try:
            if batch.transactional_ddl:
                with batch.step():
                    command.upgrade(config, "heads")
                    self._check(connection, heads)
                    self._track(connection, row, revisions, progress.batch)
            else:
                # DDL commits at once here: Alembic, outside our transaction, commits
                # each revision with its version, so the version table stays true.
                _settle(connection)
                command.upgrade(config, "heads")
                with batch.step():
                    self._check(connection, heads)
                    self._track(connection, row, revisions, progress.batch)
        except Exception as exc:
            progress.failed = _failed_revision(exc, script) or _joined(heads)
            progress.error = exc
            if not batch.transactional_ddl:
                # Track where the revisions that succeeded started from, so that
                # rollback() can return there.
                connection.rollback()
                reached = self._current(connection)
                if set(reached) != set(before):
                    progress.done = _above(script, reached, before)
                    with batch.step():
                        self._track(connection, row, progress.done, progress.batch)
            return progress, before
        progress.done = revisions
        return progress, before

    def _check(self, connection: sa.Connection, heads: tuple[str, ...]) -> None:
        after = self._current(connection)
        if set(after) != set(heads):
            raise RuntimeError(
                f"after the upgrade, {self.version_table} holds {_joined(after)}, not "
                f"{_joined(heads)}: env.py must configure the connection and the version "
                "table handed in config.attributes"
            )

    def _track(self, connection: sa.Connection, row: str, revisions: list[str], batch: int) -> None:
        """The heads the batch started from, and each revision it applied."""
        for name in (row, *(APPLIED_PREFIX + revision for revision in revisions)):
            # A row of that name is left only if the app was downgraded by hand since.
            self.tracker.forget(connection, name)
            self.tracker.record(connection, name, batch)

    def _upgrade_failure(
        self, progress: Progress, before: tuple[str, ...], transactional_ddl: bool
    ) -> str:
        reason = describe(progress.error or RuntimeError("failed"))
        if transactional_ddl:
            return f"{reason}; nothing of this upgrade is applied (still at {_joined(before)})"
        if progress.done:
            reason += (
                f"; applied and tracked before it (batch {progress.batch}, from "
                f"{_joined(before)}): {', '.join(progress.done)}"
            )
        else:
            reason += f"; no revision of this upgrade completed (still at {_joined(before)})"
        return (
            f"{reason}; this database commits DDL statement by statement (MySQL/MariaDB): "
            f"statements of {progress.failed} that ran before the error may remain. To "
            "recover, drop what it created (or complete it by hand and `alembic stamp` "
            "it), fix the revision, and register again"
        )

    def backward(self, batch: Batch, target: int | None) -> Progress:
        self._adopt_legacy_table(batch)
        return self._downgrade(batch, self.script(), target)

    def _adopt_legacy_table(self, batch: Batch) -> None:
        """Rename this app's version table from an older version's name to today's."""
        legacy = _legacy_version_table(self.app)
        connection = batch.connection
        if legacy == self.version_table:
            return
        inspector = sa.inspect(connection)
        if inspector.has_table(self.version_table) or not inspector.has_table(legacy):
            return
        # Only when this app's own tracking rows say it was upgraded with Alembic: a
        # table of that name may be another app's (``shop_v2``'s, for ``shop-v2``).
        if not any(row.name.startswith(ROW_PREFIX) for row in self.tracker.rows(connection)):
            return
        quote = connection.dialect.identifier_preparer.quote
        with batch.step():
            connection.execute(
                sa.text(f"ALTER TABLE {quote(legacy)} RENAME TO {quote(self.version_table)}")
            )
        log.info("app %r: version table %s renamed to %s", self.app, legacy, self.version_table)

    def _downgrade(
        self, batch: Batch, script: ScriptDirectory, target_batch: int | None
    ) -> Progress:
        connection = batch.connection
        progress = Progress()
        last = self.tracker.last_batch(connection, target_batch)
        if last is None:
            return progress
        progress.batch, rows = last
        starts = [row for row in rows if not row.startswith(APPLIED_PREFIX)]
        recorded = {row.removeprefix(APPLIED_PREFIX) for row in rows if row not in starts}
        target = starts[-1].removeprefix(ROW_PREFIX) if starts else BASE
        wanted = _split(target)
        current = self._current(connection)
        progress.details = {"from": _joined(current), "to": target}
        # Newest first: every branch above the heads the batch started from.
        revisions = list(reversed(_above(script, current, wanted)))
        config = self._alembic_config(connection)
        try:
            if recorded and set(revisions) != recorded:
                raise RuntimeError(
                    f"batch {progress.batch} applied {', '.join(sorted(recorded))}, but "
                    f"{_joined(current)} is above {target} by {', '.join(revisions) or 'nothing'}:"
                    " the database was migrated by hand since"
                )
            if batch.transactional_ddl:
                with batch.step():
                    _run_downgrades(config, script, revisions, target)
                    self._check_back(connection, wanted)
                    for row in rows:
                        self.tracker.forget(connection, row)
            else:
                _settle(connection)  # as in _upgrade: Alembic commits revision by revision
                _run_downgrades(config, script, revisions, target)
                with batch.step():
                    self._check_back(connection, wanted)
                    for row in rows:
                        self.tracker.forget(connection, row)
        except Exception as exc:
            progress.failed = _failed_revision(exc, script) or target
            progress.error = exc
            progress.remaining = revisions
            if not batch.transactional_ddl:
                connection.rollback()
                reached = self._current(connection)
                progress.done = [
                    name for name in revisions if name not in _above(script, reached, ())
                ]
                progress.remaining = list(reversed(_above(script, reached, wanted)))
            return progress
        progress.done = revisions
        return progress

    def _check_back(self, connection: sa.Connection, wanted: tuple[str, ...]) -> None:
        """After a downgrade the heads are the ones the batch started from, or it failed."""
        reached = self._current(connection)
        if set(reached) != set(wanted):
            raise RuntimeError(
                f"after the downgrade, {self.version_table} holds {_joined(reached)}, not "
                f"{_joined(wanted)}"
            )

    def new_revision(self, message: str, metadata: list[sa.MetaData] | None = None) -> str:
        """Write a new revision file (Alembic's ``revision``); its path. With ``metadata``
        (the app's models), Alembic's autogenerate compares it with the database, which
        must be at the heads: ``env.py`` passes ``target_metadata`` and ``include_object``
        from ``config.attributes`` to ``context.configure``."""
        self.script()  # a ConfigError when the directory is not a usable one
        with self._process_lock():
            try:
                with self.engine.connect() as connection:
                    config = self._alembic_config(connection)
                    config.attributes["target_metadata"] = metadata
                    config.attributes["include_object"] = _models_only
                    # Alembic prints "Generating <path> ... done": the caller says what it
                    # made.
                    with contextlib.redirect_stdout(io.StringIO()):
                        made = command.revision(
                            config, message=message, autogenerate=bool(metadata)
                        )
                    connection.commit()
            except Exception as exc:  # Alembic's own errors, a template missing, env.py's
                raise ConfigError(
                    f"Alembic could not write the revision: {type(exc).__name__}: {exc}",
                    path="migrations.alembic",
                    file=self.directory,
                ) from exc
        revisions = made if isinstance(made, list) else [made]
        found = [r for r in revisions if r is not None]
        if not found:
            raise ConfigError("Alembic wrote no revision", path="migrations.alembic")
        return str(found[0].path)

    def status(self) -> dict[str, Any]:
        """``current`` and ``head`` revisions, ``applied`` and ``pending`` ones, ``batches``."""
        script = self.script()
        heads = tuple(script.get_heads())
        with self.engine.connect() as connection:
            current = self._current(connection)
            tracked = self.tracker.rows(connection) if self.tracker.exists(connection) else []
        return {
            "current": _joined(current) if current else None,
            "head": _joined(heads) if heads else None,
            "version_table": self.version_table,
            "applied": _above(script, current, ()),
            "pending": _above(script, heads, current),
            "batches": [
                {"name": row.name, "batch": row.batch, "migrated_at": row.at.isoformat()}
                for row in tracked
            ],
        }


def _models_only(
    item: object, name: str | None, type_: str, reflected: bool, compare_to: object
) -> bool:
    """Autogenerate's filter: a table of the database that no model declares is left
    alone (an app may share its database with others, and the registry keeps its own
    tables there); dropping a table is written by hand."""
    return not (type_ == "table" and reflected and compare_to is None)


def _settle(connection: sa.Connection) -> None:
    """End the transaction our reads opened, so that Alembic runs its own."""
    if connection.in_transaction():
        connection.commit()


def _split(joined: str) -> tuple[str, ...]:
    return () if joined == BASE else tuple(joined.split("+"))


def _above(
    script: ScriptDirectory, upper: str | tuple[str, ...], lower: tuple[str, ...]
) -> list[str]:
    """Revisions applied at heads ``upper`` but not at heads ``lower``, oldest first.

    Sets of ancestors, so that branches and merges count whole: every branch below
    ``upper`` that ``lower`` does not reach.
    """
    if not upper:
        return []
    reached = [revision.revision for revision in script.iterate_revisions(upper, BASE)]
    below = (
        {revision.revision for revision in script.iterate_revisions(lower, BASE)}
        if lower
        else set()
    )
    return [revision for revision in reversed(reached) if revision not in below]


def _run_downgrades(
    config: Config, script: ScriptDirectory, revisions: list[str], target: str
) -> None:
    """Downgrade exactly ``revisions`` (newest first) through the script directory's env.py."""

    def steps(_heads: object, _context: object) -> list[MigrationStep]:
        return [
            MigrationStep.downgrade_from_script(script.revision_map, script.get_revision(name))
            for name in revisions
        ]

    with EnvironmentContext(
        config, script, fn=steps, as_sql=False, starting_rev=None, destination_rev=target
    ):
        script.run_env()


def _failed_revision(exc: BaseException, script: ScriptDirectory) -> str | None:
    """The revision whose code raised ``exc``: the innermost frame of a revision file."""
    known = {revision.revision for revision in script.walk_revisions()}
    found: str | None = None
    traceback: TracebackType | None = exc.__traceback__
    while traceback is not None:
        revision = traceback.tb_frame.f_globals.get("revision")
        if isinstance(revision, str) and revision in known:
            found = revision
        traceback = traceback.tb_next
    return found
