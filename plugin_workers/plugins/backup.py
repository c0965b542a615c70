"""The backup plugin: copies of an app's database on registration, before rollback, on schedule.

When a copy is made:

* ``on_app_registered``: kind ``registered``;
* ``on_app_rollback_started``: kind ``rollback``, before seeds and migrations are undone;
* every ``interval`` seconds (when set): kind ``scheduled``, for each app this worker
  saw registered and not yet unregistered.

How, by database:

* SQLite file: SQLite's online backup API (``sqlite3.Connection.backup``), a
  consistent copy while the app keeps working; one ``.sqlite`` file.
* SQLite in memory: the same API on the registry's live connection, which only an
  inline plugin can reach; a worker in another process skips it, saying why.
* any other dialect: a portable dump, one directory with ``schema.sql`` (each table's
  ``CREATE TABLE`` and indexes, compiled for the dialect), one ``<table>.jsonl`` per table
  (a JSON object per row) and ``manifest.json`` (tables, row counts, columns), read in
  one transaction (REPEATABLE READ on PostgreSQL and MySQL, so the tables agree).

Copies go to ``<directory>/<app>/<UTC time>-<kind>[.sqlite]``, are written under a
hidden name and renamed when complete, and only the newest ``keep`` are kept per app.
A hook makes its copy through ``run_once``, so a re-delivered event makes no second
copy. The hooks answer with the copy's path and size.

Whose database: only one the plugin reaches on its own, never a path, URL or credential
taken from the event. Inline, that is the registry's live engine; in a worker, the URL
of its ``databases`` table (or ``RAPID_OBJECTION_DATABASE_URL_<APP>``) for the event's
app. An event for an app without one, or naming another database than that one, is
refused with a ``PermanentError`` saying why, and nothing is copied.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

import anyio
import msgspec

from rapid_objection.plugin_workers import (
    Connection,
    PermanentError,
    PluginInterface,
    RegistryView,
    run_once,
)

if TYPE_CHECKING:
    import sqlalchemy as sa

    from rapid_objection.bus import ConnectionInfo

log = logging.getLogger("rapid_objection.plugins.backup")

VERSION: Final = "1.0.0"
Kind = Literal["registered", "rollback", "scheduled"]
COPY_NAME: Final = re.compile(r"^\d{8}T\d{6}\.\d{6}Z-[a-z]+(\.sqlite)?$")
"""A finished copy's name (partial ones start with a dot and never match)."""
SAFE_NAME: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,99}$")
MEMORY_DATABASES: Final = (None, "", ":memory:")
SNAPSHOT_DIALECTS: Final = ("postgresql", "mysql", "mariadb")
"""Dialects whose dump reads every table in one REPEATABLE READ snapshot."""


class BackupConfig(msgspec.Struct, frozen=True, kw_only=True):
    """The backup plugin's ``config`` table."""

    directory: str | None = None
    """Where copies go (required); created when missing."""
    keep: int = 5
    """Copies kept per app; older ones are deleted after each new copy."""
    interval: float | None = None
    """Seconds between scheduled copies of every app this worker saw registered; off when unset."""
    databases: dict[str, str] = {}
    """app -> URL this worker uses for the app (see ``plugin_workers.Connection``)."""


def parse_config(config: Mapping[str, Any]) -> BackupConfig:
    """The backup configuration, checked; raises ``ValueError`` with the seed's texts."""
    if not config.get("directory"):
        raise ValueError("Backup directory is required")
    try:
        parsed = msgspec.convert(dict(config), BackupConfig)
    except msgspec.ValidationError as exc:
        raise ValueError(f"backup configuration: {exc}") from None
    if parsed.keep < 1:
        raise ValueError(f"backup configuration: keep must be at least 1, not {parsed.keep}")
    if parsed.interval is not None and not parsed.interval > 0:
        raise ValueError("backup configuration: interval must be positive (or left out)")
    return parsed


@dataclass(frozen=True, slots=True)
class Source:
    """What a copy is made from: a SQLite file, a live in-memory SQLite engine, or an
    engine to dump table by table."""

    how: Literal["sqlite-file", "sqlite-memory", "dump"]
    path: str | None = None
    engine: Any = None


@dataclass(frozen=True, slots=True)
class Copy:
    """One finished copy."""

    app: str
    kind: str
    path: Path
    size: int
    format: Literal["sqlite", "dump"]
    time: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "app": self.app,
            "kind": self.kind,
            "path": str(self.path),
            "size": self.size,
            "format": self.format,
            "time": self.time,
        }


def _stamp(now: float) -> str:
    return datetime.fromtimestamp(now, UTC).strftime("%Y%m%dT%H%M%S.%fZ")


def _app_folder(directory: Path, app: str) -> Path:
    if not SAFE_NAME.match(app) or app.strip(".") == "":
        raise ValueError(f"app name {app!r} cannot name a backup folder")
    return directory / app


def copies(directory: str | Path, app: str) -> list[Path]:
    """The finished copies of ``app`` under ``directory``, oldest first."""
    folder = _app_folder(Path(directory), app)
    if not folder.is_dir():
        return []
    return sorted(path for path in folder.iterdir() if COPY_NAME.match(path.name))


def prune(directory: str | Path, app: str, keep: int) -> list[Path]:
    """Delete all but the newest ``keep`` copies of ``app``; returns what was deleted."""
    found = copies(directory, app)
    doomed = found[: max(0, len(found) - keep)]
    for path in doomed:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):  # another copier pruned it first
                path.unlink()
    return doomed


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(item.stat().st_size for item in path.rglob("*") if item.is_file())
    return path.stat().st_size


def copy_sqlite_file(path: str, target: Path) -> None:
    """Copy the SQLite database ``path`` into ``target`` with the online backup API."""
    source_path = Path(path).resolve()
    if not source_path.is_file():
        raise FileNotFoundError(f"SQLite database {source_path} does not exist")
    # Read-only: a copier must never create or change the database it copies.
    source = sqlite3.connect(f"{source_path.as_uri()}?mode=ro", uri=True)
    try:
        with contextlib.closing(sqlite3.connect(target)) as copy:
            source.backup(copy)
    finally:
        source.close()


def copy_sqlite_engine(engine: sa.Engine, target: Path) -> None:
    """Copy the database behind a live SQLite engine (an in-memory one) into ``target``."""
    raw = engine.raw_connection()
    try:
        connection = raw.driver_connection
        if not isinstance(connection, sqlite3.Connection):
            raise TypeError(f"engine {engine.url} is not a pysqlite engine")
        with contextlib.closing(sqlite3.connect(target)) as copy:
            connection.backup(copy)
    finally:
        raw.close()


def _json_fallback(value: Any) -> Any:
    """Values msgspec does not encode by itself (e.g. PostgreSQL's intervals, ranges)."""
    return str(value)


_row_encoder: Final = msgspec.json.Encoder(enc_hook=_json_fallback)


def dump(engine: sa.Engine, target: Path, *, app: str, kind: str) -> None:
    """A portable dump of every table of ``engine``'s database into the folder ``target``."""
    import sqlalchemy as sa
    from sqlalchemy.schema import CreateIndex, CreateTable

    target.mkdir(parents=True)
    metadata = sa.MetaData()
    options: dict[str, Any] = {}
    if engine.dialect.name in SNAPSHOT_DIALECTS:
        options["isolation_level"] = "REPEATABLE READ"
    tables: list[dict[str, Any]] = []
    with engine.connect().execution_options(**options) as connection:
        metadata.reflect(bind=connection)
        ddl: list[str] = []
        for number, table in enumerate(metadata.sorted_tables, start=1):
            ddl.append(str(CreateTable(table).compile(dialect=engine.dialect)).strip() + ";")
            for index in sorted(table.indexes, key=lambda index: str(index.name)):
                ddl.append(str(CreateIndex(index).compile(dialect=engine.dialect)).strip() + ";")
            file_name = (
                f"{table.name}.jsonl" if SAFE_NAME.match(table.name) else f"table-{number}.jsonl"
            )
            rows = 0
            result = connection.execution_options(yield_per=1000).execute(sa.select(table))
            with (target / file_name).open("wb") as out:
                for row in result.mappings():
                    out.write(_row_encoder.encode({str(k): v for k, v in row.items()}) + b"\n")
                    rows += 1
            tables.append(
                {
                    # str(): SQLAlchemy's quoted_name is a str subclass msgspec refuses.
                    "name": str(table.name),
                    "file": file_name,
                    "rows": rows,
                    "columns": [str(column.name) for column in table.columns],
                }
            )
        connection.rollback()
    (target / "schema.sql").write_text("\n\n".join(ddl) + "\n", encoding="utf-8")
    manifest = {
        "app": app,
        "kind": kind,
        "dialect": engine.dialect.name,
        "time": time.time(),
        "tables": tables,
    }
    (target / "manifest.json").write_bytes(msgspec.json.format(msgspec.json.encode(manifest)))


def read_dump(path: str | Path, table: str) -> list[dict[str, Any]]:
    """The rows of ``table`` in the dump at ``path`` (a helper for restores and checks)."""
    folder = Path(path)
    manifest = msgspec.json.decode((folder / "manifest.json").read_bytes())
    for entry in manifest["tables"]:
        if entry["name"] == table:
            lines = (folder / entry["file"]).read_bytes().splitlines()
            return [msgspec.json.decode(line) for line in lines if line]
    raise KeyError(f"the dump at {folder} has no table {table!r}")


def make_copy(directory: Path, app: str, source: Source, kind: str, keep: int) -> Copy:
    """Make one copy of ``app`` from ``source`` and prune the old ones."""
    folder = _app_folder(directory, app)
    folder.mkdir(parents=True, exist_ok=True)
    now = time.time()
    is_dump = source.how == "dump"
    name = f"{_stamp(now)}-{kind}" + ("" if is_dump else ".sqlite")
    partial = folder / f".{name}.partial"
    try:
        if source.how == "sqlite-file":
            assert source.path is not None
            copy_sqlite_file(source.path, partial)
        elif source.how == "sqlite-memory":
            copy_sqlite_engine(source.engine, partial)
        else:
            dump(source.engine, partial, app=app, kind=kind)
        final = folder / name
        os.replace(partial, final)
    except BaseException:
        if partial.is_dir():
            shutil.rmtree(partial, ignore_errors=True)
        else:
            partial.unlink(missing_ok=True)
        raise
    prune(directory, app, keep)
    return Copy(app, kind, final, _size(final), "dump" if is_dump else "sqlite", now)


_IN_REGISTRY: Final = (
    "the in-memory SQLite database of app {app!r} lives in the registry's process; only "
    "an inline backup plugin can copy it"
)


def refused(reason: str) -> PermanentError:
    """An event the backup plugin will not act on: retrying cannot change that."""
    return PermanentError(f"backup plugin refused the event: {reason}")


def _same_file(named: str, own: str) -> bool:
    return Path(named).resolve() == Path(own).resolve()


def _check_named(
    app: str, named: str | None, own: str | None, *, same: Callable[[str, str], bool]
) -> None:
    """Refuse an event that names another database for ``app`` than the plugin's own."""
    if named and own and not same(named, own):
        raise refused(
            f"the event names database {named!r} for app {app!r}, but this worker's own "
            f"configuration for {app!r} names {own!r}"
        )


class BackupPlugin(PluginInterface):
    """Copies apps' databases into ``directory``: on registration, before rollback, on schedule."""

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        super().__init__("backup", VERSION)
        self.config = dict(config or {})
        self.settings: BackupConfig | None = None
        self.made = 0
        self.failed = 0
        self.skipped: dict[str, str] = {}
        """app -> why its last copy was skipped."""
        self.last: dict[str, dict[str, Any]] = {}
        """app -> its newest copy made here."""
        self._apps: dict[str, Source] = {}
        self._lock = threading.Lock()
        self._app_locks: dict[str, threading.Lock] = {}
        self._stop = threading.Event()
        self._scheduler: threading.Thread | None = None

    async def validate_configuration(self, config: dict[str, Any]) -> bool:
        parse_config({**self.config, **config})
        return True

    async def initialize(self, registry: RegistryView, config: dict[str, Any]) -> None:
        await super().initialize(registry, config)
        settings = self.settings = parse_config(self.config)
        assert settings.directory is not None
        directory = Path(settings.directory)
        await anyio.to_thread.run_sync(lambda: directory.mkdir(parents=True, exist_ok=True))
        if settings.interval is not None:
            self._stop.clear()
            self._scheduler = threading.Thread(
                target=self._schedule,
                args=(settings.interval,),
                name=f"{self.name}-schedule",
                daemon=True,
            )
            self._scheduler.start()

    async def shutdown(self) -> None:
        self._stop.set()
        scheduler, self._scheduler = self._scheduler, None
        if scheduler is not None:
            await anyio.to_thread.run_sync(scheduler.join)
        with self._lock:
            self._apps.clear()

    def get_status(self) -> dict[str, Any]:
        settings = self.settings
        with self._lock:
            return {
                **super().get_status(),
                "directory": settings.directory if settings else self.config.get("directory"),
                "keep": settings.keep if settings else None,
                "interval": settings.interval if settings else None,
                "scheduler": self._scheduler is not None,
                "apps": sorted(self._apps),
                "made": self.made,
                "failed": self.failed,
                "skipped": dict(self.skipped),
                "last": dict(self.last),
            }

    @property
    def apps(self) -> list[str]:
        """The apps whose copies this worker makes on schedule."""
        with self._lock:
            return sorted(self._apps)

    # -- hooks ----------------------------------------------------------------------------

    async def on_app_registered(
        self, app_name: str, connection: ConnectionInfo, config: dict[str, Any]
    ) -> dict[str, Any]:
        return await self._hook(app_name, connection, "registered", track=True)

    async def on_app_rollback_started(
        self, app_name: str, connection: ConnectionInfo, options: dict[str, Any]
    ) -> dict[str, Any]:
        return await self._hook(app_name, connection, "rollback", track=False)

    async def on_app_unregistered(self, app_name: str, options: dict[str, Any]) -> None:
        self._forget(app_name)

    async def on_connection_shutdown(
        self, app_name: str, connection: ConnectionInfo, options: dict[str, Any]
    ) -> None:
        # The engine is gone (registry shutdown, or the last app let go of it).
        self._forget(app_name, *connection.apps)

    # -- making copies -------------------------------------------------------------------

    def _settings(self) -> BackupConfig:
        if self.settings is None:
            self.settings = parse_config(self.config)
        return self.settings

    async def _hook(self, app: str, connection: Any, kind: Kind, *, track: bool) -> dict[str, Any]:
        self._settings()  # a bad configuration fails the hook before anything is read
        source = await self._source(app, connection)
        if isinstance(source, str):
            with self._lock:
                self.skipped[app] = source
            log.info("backup of %s skipped: %s", app, source)
            return {"app": app, "kind": kind, "skipped": source}
        if track:
            with self._lock:
                self._apps[app] = source
        made: Copy | None
        if self.registry is None:  # called outside a worker (a test, a script)
            made = await anyio.to_thread.run_sync(self._copy, app, source, kind)
        else:
            copy = anyio.to_thread.run_sync
            made = await run_once(
                self.registry, f"backup-{kind}", copy, self._copy, app, source, kind
            )
        if made is None:
            return {"app": app, "kind": kind, "skipped": "already copied for this event"}
        return made.as_dict()

    async def _source(self, app: str, connection: Any) -> Source | str:
        """Where to copy ``app`` from, or why it cannot be copied here.

        Only a database this plugin reaches on its own is copied: the registry's live
        engine when inline, else the worker's ``databases`` table or its environment for
        that app. The event's path, URL and credentials are never used: an event naming
        another database than that one is refused (``PermanentError``), so that whoever
        can write to the bus cannot have an arbitrary file copied.
        """
        info: ConnectionInfo = connection.info if isinstance(connection, Connection) else connection
        engine: sa.Engine | None = None
        problem = f"no engines are available for app {app!r} here"
        if isinstance(connection, Connection):
            try:
                engine = await connection.engine()
            except LookupError as exc:
                problem = str(exc)
        if engine is None:
            if info.dialect == "sqlite" and info.database in MEMORY_DATABASES:
                return _IN_REGISTRY.format(app=app)
            raise refused(f"{problem}; the database an event names is never copied")
        database = engine.url.database
        if engine.dialect.name != "sqlite":
            _check_named(app, info.database, database, same=lambda a, b: a == b)
            return Source("dump", engine=engine)
        if database in MEMORY_DATABASES:
            if self.registry is None or not self.registry.registry_id:
                return _IN_REGISTRY.format(app=app)
            return Source("sqlite-memory", engine=engine)
        assert database is not None
        _check_named(app, info.database, database, same=_same_file)
        return Source("sqlite-file", path=database)

    def _copy(self, app: str, source: Source, kind: str) -> Copy:
        """Make one copy (in a thread); one copy of an app at a time."""
        settings = self._settings()
        assert settings.directory is not None
        with self._lock:
            app_lock = self._app_locks.setdefault(app, threading.Lock())
        with app_lock:
            try:
                made = make_copy(Path(settings.directory), app, source, kind, settings.keep)
            except Exception:
                with self._lock:  # hooks and the scheduler count from different threads
                    self.failed += 1
                raise
        with self._lock:
            self.made += 1
            self.last[app] = made.as_dict()
            self.skipped.pop(app, None)
        log.info("backup of %s (%s): %s, %d bytes", app, kind, made.path, made.size)
        return made

    def _forget(self, *apps: str) -> None:
        with self._lock:
            for app in apps:
                self._apps.pop(app, None)

    def _schedule(self, interval: float) -> None:
        """The scheduler thread: every ``interval`` seconds, a copy of every tracked app."""
        while not self._stop.wait(interval):
            with self._lock:
                tracked = list(self._apps.items())
            for app, source in tracked:
                if self._stop.is_set():
                    return
                try:
                    self._copy(app, source, "scheduled")
                except Exception:  # one app's failure must not stop the others' copies
                    log.exception("scheduled backup of %s failed", app)
