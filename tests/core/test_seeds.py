"""Seeds: discovery, batches tracked per app, failures, unseed in reverse, status, the lock.

Every test runs on SQLite, the real PostgreSQL and the real MariaDB (``database_url``).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from rapid_objection.core._config import SeedsConfig
from rapid_objection.core._errors import ConfigError, SeedFailed
from rapid_objection.core._runners import Runner
from rapid_objection.core._seeds import Seeds
from tests.core.fixtures_migrations import FAIL, Scripts, delete, insert, until, wait_for


@pytest.fixture
def engine(database_url: str) -> Iterator[sa.Engine]:
    """An engine on a database with a ``users (id, label)`` table to seed."""
    created = sa.create_engine(database_url)
    metadata = sa.MetaData()
    sa.Table(
        "users",
        metadata,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("label", sa.String(50), unique=True),
    )
    metadata.create_all(created)
    yield created
    created.dispose()


@pytest.fixture
def scripts(tmp_path: Path) -> Scripts:
    return Scripts.at(tmp_path / "seeds")


def make(engine: sa.Engine, directory: Path, app: str = "shop", **config: Any) -> Runner[Seeds]:
    return Runner(Seeds(app, engine, SeedsConfig(directory=str(directory), **config)))


def labels(engine: sa.Engine) -> list[str]:
    with engine.connect() as connection:
        return list(connection.execute(sa.text("SELECT label FROM users ORDER BY label")).scalars())


def tracked(engine: sa.Engine, table: str = "ro_seeds") -> list[tuple[str, str, int]]:
    with engine.connect() as connection:
        app, name = sa.column("app", sa.String), sa.column("name", sa.String)
        batch = sa.column("batch", sa.Integer)
        rows = connection.execute(
            sa.select(app, name, batch).select_from(sa.table(table)).order_by(app, batch, name)
        ).all()
    return [(app, name, batch) for app, name, batch in rows]


def user_seed(scripts: Scripts, name: str, label: str, *, unseed: bool = True) -> Path:
    """A seed inserting user ``label``; its unseed (unless left out) deletes it."""
    return scripts.seed(
        name, insert("users", label, via="connection"), delete("users", label) if unseed else None
    )


class TestDiscover:
    def test_orders_files_and_finds_optional_unseed(
        self, engine: sa.Engine, scripts: Scripts
    ) -> None:
        """Seeds are ordered by number then name; ``unseed`` is optional."""
        user_seed(scripts, "10_last.py", "c")
        user_seed(scripts, "2_second.py", "b", unseed=False)
        user_seed(scripts, "1_first.py", "a")
        found = make(engine, scripts.directory).changes.discover()
        assert [seed.name for seed in found] == ["1_first.py", "2_second.py", "10_last.py"]
        assert [seed.unseed is None for seed in found] == [False, True, False]

    @pytest.mark.parametrize(
        ("name", "source", "message"),
        [
            pytest.param("admin.py", "def seed(c): pass\n", "NNN_name.py", id="no-number"),
            pytest.param(
                "001_admin.py", "def unseed(c): pass\n", "no callable seed()", id="no-seed"
            ),
            pytest.param(
                "001_admin.py",
                "def seed(c): pass\nunseed = 3\n",
                "unseed is not callable",
                id="unseed-not-callable",
            ),
        ],
    )
    def test_a_bad_file_is_a_config_error_naming_it(
        self, engine: sa.Engine, scripts: Scripts, name: str, source: str, message: str
    ) -> None:
        """A malformed seed file is reported with its path and ``seeds.directory``."""
        path = scripts.raw(name, source)
        with pytest.raises(ConfigError, match=message) as raised:
            make(engine, scripts.directory).apply()
        assert raised.value.file == str(path)
        assert raised.value.path == "seeds.directory"


class TestRun:
    def test_seeds_pending_files_in_order_as_one_batch(
        self, engine: sa.Engine, scripts: Scripts
    ) -> None:
        """Each pending seed runs once, in order, tracked per app in ``ro_seeds``."""
        user_seed(scripts, "001_admin.py", "admin")
        user_seed(scripts, "002_guest.py", "guest")
        result = make(engine, scripts.directory).apply()
        assert result.operation == "seeds"
        assert result.success
        assert result.items == ("001_admin.py", "002_guest.py")
        assert result.details["batch"] == 1
        assert scripts.calls() == ["seed 001_admin.py", "seed 002_guest.py"]
        assert labels(engine) == ["admin", "guest"]
        assert tracked(engine) == [("shop", "001_admin.py", 1), ("shop", "002_guest.py", 1)]
        columns = {column["name"] for column in sa.inspect(engine).get_columns("ro_seeds")}
        assert columns == {"app", "name", "batch", "seeded_at"}

    def test_is_idempotent_and_new_files_form_the_next_batch(
        self, engine: sa.Engine, scripts: Scripts
    ) -> None:
        """A second run seeds nothing; a file added later is batch 2."""
        user_seed(scripts, "001_admin.py", "admin")
        seeds = make(engine, scripts.directory)
        seeds.apply()
        assert seeds.apply().items == ()
        user_seed(scripts, "002_guest.py", "guest")
        assert seeds.apply().details["batch"] == 2
        assert labels(engine) == ["admin", "guest"]
        assert scripts.calls() == ["seed 001_admin.py", "seed 002_guest.py"]

    def test_a_failing_seed_raises_naming_it_and_leaves_nothing(
        self, engine: sa.Engine, scripts: Scripts
    ) -> None:
        """The failed seed's rows are rolled back and it is not tracked; earlier seeds stay."""
        user_seed(scripts, "001_admin.py", "admin")
        scripts.seed("002_half.py", f"{insert('users', 'half', via='connection')}\n{FAIL}")
        user_seed(scripts, "003_guest.py", "guest")
        with pytest.raises(SeedFailed) as raised:
            make(engine, scripts.directory).apply()
        assert raised.value.app == "shop"
        assert raised.value.seed == "002_half.py"
        assert "RuntimeError: boom" in raised.value.reason
        assert "001_admin.py" in raised.value.reason
        assert labels(engine) == ["admin"]
        assert tracked(engine) == [("shop", "001_admin.py", 1)]

    def test_a_database_error_in_a_seed_is_reported(
        self, engine: sa.Engine, scripts: Scripts
    ) -> None:
        """A seed that breaks a constraint fails with the driver's error, untracked."""
        user_seed(scripts, "001_admin.py", "admin")
        user_seed(scripts, "002_again.py", "admin")
        with pytest.raises(SeedFailed, match=r"002_again\.py"):
            make(engine, scripts.directory).apply()
        assert tracked(engine) == [("shop", "001_admin.py", 1)]

    def test_apps_are_tracked_apart(self, engine: sa.Engine, tmp_path: Path) -> None:
        """Two apps of one database each have their own batches in one table."""
        shop, blog = Scripts.at(tmp_path / "shop"), Scripts.at(tmp_path / "blog")
        user_seed(shop, "001_admin.py", "admin")
        user_seed(blog, "001_admin.py", "editor")
        make(engine, shop.directory, "shop").apply()
        make(engine, blog.directory, "blog").apply()
        assert tracked(engine) == [("blog", "001_admin.py", 1), ("shop", "001_admin.py", 1)]

    def test_the_tracking_table_name_is_configurable(
        self, engine: sa.Engine, scripts: Scripts
    ) -> None:
        """``seeds.table`` names the tracking table."""
        user_seed(scripts, "001_admin.py", "admin")
        make(engine, scripts.directory, table="seed_log").apply()
        assert tracked(engine, "seed_log") == [("shop", "001_admin.py", 1)]


class TestUnseed:
    def test_undoes_the_last_batch_in_reverse_order(
        self, engine: sa.Engine, scripts: Scripts
    ) -> None:
        """Only the newest batch is unseeded, newest file first."""
        user_seed(scripts, "001_admin.py", "admin")
        seeds = make(engine, scripts.directory)
        seeds.apply()
        user_seed(scripts, "002_guest.py", "guest")
        user_seed(scripts, "003_bot.py", "bot")
        seeds.apply()
        result = seeds.undo()
        assert result.success
        assert result.operation == "seeds"
        assert result.items == ("003_bot.py", "002_guest.py")
        assert scripts.calls()[-2:] == ["unseed 003_bot.py", "unseed 002_guest.py"]
        assert labels(engine) == ["admin"]
        assert tracked(engine) == [("shop", "001_admin.py", 1)]

    def test_a_seed_without_unseed_is_only_untracked(
        self, engine: sa.Engine, scripts: Scripts
    ) -> None:
        """Its rows stay; the result says it was untracked only."""
        user_seed(scripts, "001_admin.py", "admin", unseed=False)
        user_seed(scripts, "002_guest.py", "guest")
        seeds = make(engine, scripts.directory)
        seeds.apply()
        result = seeds.undo()
        assert result.success
        assert result.items == ("002_guest.py", "001_admin.py")
        assert result.details["untracked"] == ["001_admin.py"]
        assert labels(engine) == ["admin"]
        assert tracked(engine) == []

    def test_stops_at_a_failing_unseed_and_reports_it(
        self, engine: sa.Engine, scripts: Scripts
    ) -> None:
        """Later seeds stay unseeded; the failing one and earlier ones stay seeded and tracked."""
        user_seed(scripts, "001_admin.py", "admin")
        scripts.seed(
            "002_guest.py",
            insert("users", "guest", via="connection"),
            f"{delete('users', 'guest')}\n{FAIL}",
        )
        user_seed(scripts, "003_bot.py", "bot")
        seeds = make(engine, scripts.directory)
        seeds.apply()
        result = seeds.undo()
        assert not result.success
        assert (result.error or "").startswith("002_guest.py: RuntimeError: boom")
        assert result.items == ("003_bot.py",)
        assert result.details["remaining"] == ["002_guest.py", "001_admin.py"]
        assert labels(engine) == ["admin", "guest"]
        assert tracked(engine) == [("shop", "001_admin.py", 1), ("shop", "002_guest.py", 1)]

    def test_nothing_to_unseed(self, engine: sa.Engine, scripts: Scripts) -> None:
        """Without a batch, unseed succeeds with no items."""
        result = make(engine, scripts.directory).undo()
        assert result.success
        assert result.items == ()


class TestStatus:
    def test_applied_and_pending(self, engine: sa.Engine, scripts: Scripts) -> None:
        """Status lists seeded files with batch and time, and the pending ones."""
        user_seed(scripts, "001_admin.py", "admin")
        seeds = make(engine, scripts.directory)
        assert seeds.status() == {"applied": [], "pending": ["001_admin.py"], "missing": []}
        seeds.apply()
        user_seed(scripts, "002_guest.py", "guest")
        status = seeds.status()
        assert [(entry["name"], entry["batch"]) for entry in status["applied"]] == [
            ("001_admin.py", 1)
        ]
        assert "seeded_at" in status["applied"][0]
        assert status["pending"] == ["002_guest.py"]


class TestLock:
    def test_a_second_run_waits_for_the_lock_and_times_out(
        self, database_url: str, engine: sa.Engine, scripts: Scripts, tmp_path: Path
    ) -> None:
        """While a batch of the app's seeds runs elsewhere, another run fails after the timeout."""
        inside, go = tmp_path / "inside", tmp_path / "go"
        scripts.seed(
            "001_admin.py", f"{insert('users', 'admin', via='connection')}\n{wait_for(inside, go)}"
        )
        first: list[object] = []
        thread = threading.Thread(
            target=lambda: first.append(make(engine, scripts.directory).apply())
        )
        other = sa.create_engine(database_url)
        thread.start()
        try:
            until(inside)
            seeds = make(other, scripts.directory)
            seeds.changes.lock_timeout = 0.3
            with pytest.raises(SeedFailed, match="could not take the seed lock"):
                seeds.apply()
        finally:
            go.touch()
            thread.join(timeout=30)
            other.dispose()
        assert labels(engine) == ["admin"]
        assert scripts.calls() == ["seed 001_admin.py"]
