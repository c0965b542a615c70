"""``rapid-objection migrate``, ``seed`` and ``migrations new``: through a running
registry on the bus, or ``--direct`` on the database alone."""

from __future__ import annotations

import json
import secrets
import shutil
import signal
from pathlib import Path

import alembic
import anyio
import pytest

from rapid_objection.bus import Bus
from rapid_objection.bus.testing import purge
from rapid_objection.core._cli import main
from tests.core.fixtures_migrations import (
    ENV_PY,
    AlembicScripts,
    Scripts,
    add_column,
    create_table,
    drop_column,
    drop_table,
)
from tests.core.test_cli_run import READY, running
from tests.e2e import CLI, REPO_ROOT, one_line_error, run_cli, subprocess_env


def registry_file(tmp_path: Path, body: str, *, bus: str = 'url = "memory://"') -> Path:
    path = tmp_path / "registry.toml"
    path.write_text(f'[registry]\nid = "migrate-test"\n\n[bus]\n{bus}\nack_timeout = 5.0\n\n{body}')
    return path


def shop(tmp_path: Path, migrations: Path) -> str:
    return (
        "[apps.shop]\n"
        f'database.url = "sqlite:///{tmp_path / "shop.db"}"\n'
        f'migrations.directory = "{migrations}"\n\n'
    )


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """``rapid-objection *args`` in this process: (exit code, stdout, stderr)."""
    try:
        code = main(list(args))
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def migrations(tmp_path: Path) -> Scripts:
    made = Scripts.at(tmp_path / "migrations")
    made.migration("001_items.py", create_table("items"), drop_table("items"))
    return made


class TestDirect:
    def test_up_status_down_on_the_database_alone(
        self, tmp_path: Path, migrations: Scripts, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """--direct applies, lists and rolls back with no registry running."""
        config = str(registry_file(tmp_path, shop(tmp_path, migrations.directory)))
        migrations.migration(
            "002_notes.py", add_column("items", "notes"), drop_column("items", "notes")
        )
        code, out, _ = cli(capsys, "migrate", "shop", "--config", config, "--direct")
        assert code == 0
        assert "app shop: applied 001_items.py, 002_notes.py (batch 1)" in out
        code, out, _ = cli(capsys, "migrate", "shop", "status", "--config", config, "--direct")
        assert code == 0
        assert out.splitlines()[-1] == "app shop: 0 migrations pending"
        assert "002_notes.py" in out
        assert "applied  batch 1" in out
        code, out, _ = cli(
            capsys, "migrate", "shop", "down", "--config", config, "--direct", "--json"
        )
        assert code == 0
        undone = json.loads(out)
        assert (undone["action"], undone["ran"]) == (
            "rollback_migrations",
            ["002_notes.py", "001_items.py"],
        )

    def test_a_failing_file_exits_1_naming_it_and_the_database_error(
        self, tmp_path: Path, migrations: Scripts, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A failed batch is one line on stderr: the file and the database's error."""
        config = str(registry_file(tmp_path, shop(tmp_path, migrations.directory)))
        migrations.migration("002_bad.py", "op.execute('SELECT * FROM no_such_table')")
        code, out, err = cli(capsys, "migrate", "shop", "--config", config, "--direct")
        line = one_line_error(code, out, err)
        assert "002_bad.py" in line
        assert "no_such_table" in line
        assert "nothing of batch 1 is applied" in line

    def test_without_a_registry_the_bus_way_says_so(
        self, tmp_path: Path, migrations: Scripts, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Without --direct and no live owner of the app: a clear one-line error."""
        config = str(registry_file(tmp_path, shop(tmp_path, migrations.directory)))
        code, out, err = cli(capsys, "migrate", "shop", "--config", config)
        line = one_line_error(code, out, err)
        assert "no live registry owns app 'shop'" in line
        assert "--direct" in line


NOT_IN_FILE = [
    pytest.param([command, "nosuch", verb, *way], id=f"{command}-{verb}-{way_id}")
    for command in ("migrate", "seed")
    for verb in ("status", "up")
    for way, way_id in (([], "bus"), (["--direct"], "direct"))
]


class TestAppNotInFile:
    @pytest.mark.parametrize("argv", NOT_IN_FILE)
    def test_is_refused_before_the_bus_or_a_database(
        self,
        tmp_path: Path,
        migrations: Scripts,
        capsys: pytest.CaptureFixture[str],
        argv: list[str],
    ) -> None:
        """An app without its ``[apps.APP]`` table is refused up front, both ways and
        with the same line (exit 2): the bus (which does not answer here) is never
        asked, since no registry can own an app its file does not have."""
        bus = 'url = "redis://127.0.0.1:1/0"'
        config = str(registry_file(tmp_path, shop(tmp_path, migrations.directory), bus=bus))
        code, out, err = cli(capsys, *argv, "--config", config)
        line = one_line_error(code, out, err)
        assert code == 2
        assert line.endswith("app 'nosuch' is not in the registry file (no [apps.nosuch] table)")


class TestNew:
    def test_new_files_are_numbered_and_apply_cleanly(
        self, tmp_path: Path, migrations: Scripts, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """``migrations new`` writes the next NNN_name.py with stubs that apply."""
        config = str(registry_file(tmp_path, shop(tmp_path, migrations.directory)))
        code, out, _ = cli(capsys, "migrations", "new", "shop", "Add an index", "--config", config)
        assert code == 0
        path = Path(out.strip())
        assert path == migrations.directory / "002_add_an_index.py"
        assert "def upgrade(op):" in path.read_text()
        assert "def downgrade(op):" in path.read_text()
        code, out, _ = cli(capsys, "migrate", "shop", "--config", config, "--direct")
        assert code == 0
        assert "002_add_an_index.py" in out


MODELS = """\
from sqlalchemy import Integer, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "items"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    label: Mapped[str | None] = mapped_column(String(50))
    notes: Mapped[str | None] = mapped_column(String(200))
"""

AUTOGENERATE_ENV_PY = ENV_PY.replace(
    '    version_table=config.attributes.get("version_table", "alembic_version"),\n',
    '    version_table=config.attributes.get("version_table", "alembic_version"),\n'
    '    target_metadata=config.attributes.get("target_metadata"),\n'
    '    include_object=config.attributes.get("include_object"),\n',
)


class TestAutogenerate:
    def test_a_revision_from_the_models_applies_cleanly(
        self,
        tmp_path: Path,
        capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """``--autogenerate`` compares the models with the database (at its head) and
        writes the missing column; ``migrate --direct`` then applies it."""
        scripts = AlembicScripts.at(tmp_path / "alembic", table="items", env=AUTOGENERATE_ENV_PY)
        scripts.create_table()
        template = Path(alembic.__file__).parent / "templates" / "generic" / "script.py.mako"
        shutil.copy(template, scripts.directory)  # what `alembic init` puts there
        module = f"autogen_models_{secrets.token_hex(4)}"
        (tmp_path / f"{module}.py").write_text(MODELS)
        monkeypatch.syspath_prepend(str(tmp_path))
        body = (
            "[apps.shop]\n"
            f'database.url = "sqlite:///{tmp_path / "shop.db"}"\n'
            f'migrations.alembic = "{scripts.directory}"\n'
            f'models.module = "{module}"\n\n'
        )
        config = str(registry_file(tmp_path, body))
        assert cli(capsys, "migrate", "shop", "--config", config, "--direct")[0] == 0
        code, out, err = cli(
            capsys, "migrations", "new", "shop", "add notes", "--config", config, "--autogenerate"
        )
        assert code == 0, err
        written = Path(out.strip()).read_text()
        assert "op.add_column('items'" in written
        assert "ro_migrations" not in written  # the registry's own tables are left alone
        code, out, err = cli(capsys, "migrate", "shop", "--config", config, "--direct")
        assert code == 0, err
        code, out, _ = cli(
            capsys, "migrate", "shop", "status", "--config", config, "--direct", "--json"
        )
        status = json.loads(out)
        assert status["pending"] == []
        assert status["revision"] == status["head"] != "rev1"
        import sqlalchemy as sa

        engine = sa.create_engine(f"sqlite:///{tmp_path / 'shop.db'}")
        try:
            names = {column["name"] for column in sa.inspect(engine).get_columns("items")}
        finally:
            engine.dispose()
        assert "notes" in names


RECORDER = """\
[plugins.change-recorder]
module = "tests.core.change_plugins:ChangeRecorder"
required = true
on_failure = "abort"
[plugins.change-recorder.config]
journal = "{journal}"

"""


async def interrupted(*args: str) -> tuple[int, str]:
    """Run the command, Ctrl-C (SIGINT) it after a second: its status and stderr."""
    async with await anyio.open_process(
        [CLI, *args], cwd=REPO_ROOT, env=subprocess_env()
    ) as process:
        await anyio.sleep(1.0)
        process.send_signal(signal.SIGINT)
        with anyio.fail_after(20):
            code = await process.wait()
        assert process.stderr is not None
        return code, (await process.stderr.receive()).decode()


@pytest.mark.slow
@pytest.mark.anyio
async def test_migrate_through_a_running_registry(
    tmp_path: Path, migrations: Scripts, redis_url: str, namespace: str
) -> None:
    """``migrate``, ``status`` and ``down`` through the bus: the ``run`` process that owns
    the app does the work, its required plugin sees requested auto-operations, and
    ``rapid-objection status`` shows the app's batch and pending count."""
    journal = tmp_path / "journal.jsonl"
    bus = f'url = "{redis_url}"\nnamespace = "{namespace}"'
    config = registry_file(
        tmp_path,
        RECORDER.format(journal=journal) + shop(tmp_path, migrations.directory),
        bus=bus,
    )
    try:
        async with running(tmp_path, str(config)) as run:
            await run.printed(READY)
            migrations.migration(
                "002_notes.py", add_column("items", "notes"), drop_column("items", "notes")
            )
            code, out, err = await run_cli("migrate", "shop", "status", "--config", str(config))
            assert code == 0, err
            assert "app shop: 1 migration pending" in out
            code, out, err = await run_cli("migrate", "shop", "up", "--config", str(config))
            assert code == 0, err
            assert "app shop: applied 002_notes.py (batch 2)" in out
            code, out, err = await run_cli(
                "status", "--bus-url", redis_url, "--namespace", namespace
            )
            with anyio.fail_after(10):
                while "shop (batch 2, 0 pending)" not in out:
                    await anyio.sleep(0.2)
                    code, out, err = await run_cli(
                        "status", "--bus-url", redis_url, "--namespace", namespace
                    )
            code, out, err = await run_cli(
                "migrate", "shop", "down", "--steps", "1", "--config", str(config)
            )
            assert code == 0, err
            assert "app shop: undid 002_notes.py (batch 2)" in out
            # The registry's refusal comes back as the command's one-line error.
            code, out, err = await run_cli("seed", "shop", "up", "--config", str(config))
            line = one_line_error(code, out, err)
            assert "registry 'migrate-test'" in line
            assert "app 'shop' has no seeds" in line
            # Ctrl-C while the registry migrates stops the waiting, not the work; the
            # command says so.
            migrations.migration("003_slow.py", "import time\ntime.sleep(2)")
            code, said = await interrupted("migrate", "shop", "up", "--config", str(config))
            assert code == 130
            assert "interrupted: the request may already be with the registry" in said
            assert "`rapid-objection migrate shop status --config" in said
            with anyio.fail_after(20):
                while "app shop: 0 migrations pending" not in out:
                    await anyio.sleep(0.3)
                    code, out, err = await run_cli(
                        "migrate", "shop", "status", "--config", str(config)
                    )
            assert "003_slow.py" in out
        lines = [json.loads(line) for line in journal.read_text().splitlines()]
        requested = [
            (line["event"], line["action"]) for line in lines if line["trigger"] == "requested"
        ]
        assert requested == [
            ("auto_operations_started", "migrate"),
            ("auto_operations_completed", "migrate"),
            ("auto_operations_started", "rollback_migrations"),
            ("auto_operations_completed", "rollback_migrations"),
            ("auto_operations_started", "migrate"),
            ("auto_operations_completed", "migrate"),
        ]
        assert lines[-2]["options"]["requested_by"]  # who asked is in the event
    finally:
        with anyio.CancelScope(shield=True):
            async with Bus.connect(redis_url, namespace) as opened:
                await purge(opened)
