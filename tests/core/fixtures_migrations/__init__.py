"""Writers of migration, seed and Alembic script directories for the data-layer tests.

Each test writes the files it needs into its own ``tmp_path``. Every generated function
first appends a line (``up 001_users.py``, ``seed 001_admin.py`` ...) to a journal
file, so that a test can read back which functions ran, in which order, in which
process. Function bodies are given as source text; the snippets below cover the usual
ones.
"""

from __future__ import annotations

import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FAIL = 'raise RuntimeError("boom")'


def create_table(table: str) -> str:
    return (
        f'op.create_table({table!r}, sa.Column("id", sa.Integer, primary_key=True),'
        ' sa.Column("label", sa.String(50)))'
    )


def drop_table(table: str) -> str:
    return f"op.drop_table({table!r})"


def add_column(table: str, column: str) -> str:
    return (
        f"with op.batch_alter_table({table!r}) as batch:\n"
        f"    batch.add_column(sa.Column({column!r}, sa.String(50)))"
    )


def drop_column(table: str, column: str) -> str:
    return f"with op.batch_alter_table({table!r}) as batch:\n    batch.drop_column({column!r})"


def insert(table: str, label: str, *, via: str = "op") -> str:
    """An INSERT through ``op`` (a migration) or ``connection`` (a seed)."""
    run = "op.execute" if via == "op" else "connection.execute"
    # Source text of a generated file, with the test's own names: no injection.
    return f"{run}(sa.text(\"INSERT INTO {table} (label) VALUES ('{label}')\"))"  # noqa: S608


def delete(table: str, label: str) -> str:
    return f"connection.execute(sa.text(\"DELETE FROM {table} WHERE label = '{label}'\"))"  # noqa: S608


def wait_for(marker: Path, go: Path) -> str:
    """Touch ``marker``, then wait (at most 30 s) until ``go`` exists: holds a batch open."""
    return (
        f"Path({str(marker)!r}).touch()\n"
        "deadline = time.monotonic() + 30\n"
        f"while not Path({str(go)!r}).exists() and time.monotonic() < deadline:\n"
        "    time.sleep(0.02)"
    )


def until(path: Path, timeout: float = 30.0) -> None:
    """Wait until ``path`` exists (a marker written by a generated function)."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} did not appear within {timeout} s"
        time.sleep(0.02)


_HEADER = """\
import time
from pathlib import Path

import sqlalchemy as sa


def _note(event):
    with Path({journal!r}).open("a") as journal:
        journal.write(event + "\\n")

"""


def _function(name: str, argument: str, event: str, body: str) -> str:
    return f"\ndef {name}({argument}):\n    _note({event!r})\n{textwrap.indent(body, '    ')}\n"


@dataclass
class Scripts:
    """A directory of ``NNN_name.py`` files and the journal their functions write."""

    directory: Path
    journal: Path

    @classmethod
    def at(cls, directory: Path) -> Scripts:
        directory.mkdir(parents=True, exist_ok=True)
        return cls(directory, directory.parent / f"{directory.name}.journal")

    def _write(self, name: str, source: str) -> Path:
        path = self.directory / name
        path.write_text(_HEADER.format(journal=str(self.journal)) + source)
        return path

    def migration(self, name: str, upgrade: str = "pass", downgrade: str = "pass") -> Path:
        return self._write(
            name,
            _function("upgrade", "op", f"up {name}", upgrade)
            + _function("downgrade", "op", f"down {name}", downgrade),
        )

    def seed(self, name: str, seed: str = "pass", unseed: str | None = "pass") -> Path:
        source = _function("seed", "connection", f"seed {name}", seed)
        if unseed is not None:
            source += _function("unseed", "connection", f"unseed {name}", unseed)
        return self._write(name, source)

    def raw(self, name: str, source: str) -> Path:
        path = self.directory / name
        path.write_text(source)
        return path

    def calls(self) -> list[str]:
        """The journal: one line per generated function called, in order."""
        if not self.journal.exists():
            return []
        return self.journal.read_text().splitlines()


# --- Alembic -------------------------------------------------------------------------

ENV_PY = """\
from alembic import context

config = context.config
connection = config.attributes.get("connection")
if connection is None:
    raise RuntimeError("this environment runs only with a connection handed in")
context.configure(
    connection=connection,
    version_table=config.attributes.get("version_table", "alembic_version"),
)
with context.begin_transaction():
    context.run_migrations()
"""

ENV_PY_WITHOUT_VERSION_TABLE = """\
from alembic import context

context.configure(connection=context.config.attributes["connection"])
with context.begin_transaction():
    context.run_migrations()
"""

_REVISION = """\
import sqlalchemy as sa
from alembic import op

revision = {revision!r}
down_revision = {down!r}
branch_labels = None
depends_on = None


def upgrade():
{upgrade}


def downgrade():
{downgrade}
"""


@dataclass
class AlembicScripts:
    """An Alembic script directory: ``env.py`` and revisions ``<prefix>1``, ``<prefix>2``..."""

    directory: Path
    table: str
    prefix: str
    revisions: list[str]

    @classmethod
    def at(
        cls, directory: Path, *, table: str, prefix: str = "rev", env: str = ENV_PY
    ) -> AlembicScripts:
        (directory / "versions").mkdir(parents=True)
        (directory / "env.py").write_text(env)
        return cls(directory, table, prefix, [])

    def revision(self, upgrade: str, downgrade: str) -> str:
        """Add a revision after the newest one; returns its id."""
        revision = f"{self.prefix}{len(self.revisions) + 1}"
        down = self.revisions[-1] if self.revisions else None
        source = _REVISION.format(
            revision=revision,
            down=down,
            upgrade=textwrap.indent(upgrade, "    "),
            downgrade=textwrap.indent(downgrade, "    "),
        )
        (self.directory / "versions" / f"{revision}_step.py").write_text(source)
        self.revisions.append(revision)
        return revision

    def on(self, revision: str, down: str | tuple[str, ...] | None, table: str | None) -> str:
        """Revision ``revision`` after ``down`` (a tuple merges branches) that creates
        ``table`` (None: a merge that runs nothing)."""
        upgrade, downgrade = (create_table(table), drop_table(table)) if table else ("pass", "pass")
        source = _REVISION.format(
            revision=revision,
            down=down,
            upgrade=textwrap.indent(upgrade, "    "),
            downgrade=textwrap.indent(downgrade, "    "),
        )
        (self.directory / "versions" / f"{revision}_step.py").write_text(source)
        self.revisions.append(revision)
        return revision

    def create_table(self) -> str:
        """A revision that creates the table."""
        return self.revision(create_table(self.table), drop_table(self.table))

    def add_column(self, column: str) -> str:
        """A revision that adds a column to the table (``batch_alter_table``)."""
        return self.revision(add_column(self.table, column), drop_column(self.table, column))


# --- an app's configuration and rows -------------------------------------------------


def app_config(url: str, migrations: Scripts, seeds: Scripts | None = None) -> dict[str, Any]:
    config: dict[str, Any] = {
        "database": {"url": url},
        "migrations": {"directory": str(migrations.directory)},
    }
    if seeds is not None:
        config["seeds"] = {"directory": str(seeds.directory)}
    return config


def labels(url: str) -> list[str]:
    """The labels in table ``items`` of ``url``'s database, sorted."""
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            return sorted(connection.execute(sa.text("SELECT label FROM items")).scalars())
    finally:
        engine.dispose()


# --- server connections --------------------------------------------------------------


def server_connections(url: str) -> int:
    """Sessions the server holds open on ``url``'s database, besides the one asking.

    PostgreSQL: ``pg_stat_activity``; MySQL/MariaDB: the process list; SQLite has no
    server (0).
    """
    import sqlalchemy as sa

    parsed = sa.make_url(url)
    backend = parsed.get_backend_name()
    if backend == "postgresql":
        query = (
            "SELECT count(*) FROM pg_stat_activity WHERE datname = :db AND pid <> pg_backend_pid()"
        )
    elif backend in ("mysql", "mariadb"):
        query = (
            "SELECT count(*) FROM information_schema.processlist WHERE db = :db"
            " AND id <> CONNECTION_ID()"
        )
    else:
        return 0
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    try:
        with engine.connect() as connection:
            return int(connection.execute(sa.text(query), {"db": parsed.database}).scalar() or 0)
    finally:
        engine.dispose()
