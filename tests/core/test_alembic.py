"""Alembic mode: an existing script directory, a version table per app, batches and rollback.

Each test writes its own script directory (``env.py`` taking the connection and the
version table from ``config.attributes``, and revisions ``rev1``, ``rev2``...) and runs
on SQLite, the real PostgreSQL and the real MariaDB (``database_url``), or on SQLite and
PostgreSQL only where DDL is transactional (``sql_url``).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import sqlalchemy as sa

from rapid_objection.core._alembic import AlembicMigrations, version_table
from rapid_objection.core._config import MigrationsConfig
from rapid_objection.core._errors import ConfigError, MigrationFailed
from rapid_objection.core._runners import Runner
from tests.core.fixtures_migrations import (
    ENV_PY_WITHOUT_VERSION_TABLE,
    FAIL,
    AlembicScripts,
    create_table,
    drop_table,
)


@pytest.fixture
def scripts(tmp_path: Path) -> AlembicScripts:
    """Two revisions: create table ``items``, then add its column ``name``."""
    made = AlembicScripts.at(tmp_path / "alembic", table="items")
    made.create_table()
    made.add_column("name")
    return made


def make(
    engine: sa.Engine, scripts: AlembicScripts, app: str = "shop"
) -> Runner[AlembicMigrations]:
    return Runner(
        AlembicMigrations(
            app, engine, MigrationsConfig(alembic=str(scripts.directory), lock_timeout=10)
        )
    )


def tables(engine: sa.Engine) -> set[str]:
    return set(sa.inspect(engine).get_table_names())


def columns(engine: sa.Engine, table: str) -> set[str]:
    return {column["name"] for column in sa.inspect(engine).get_columns(table)}


def versions(engine: sa.Engine, table: str) -> list[str]:
    with engine.connect() as connection:
        found = connection.execute(
            sa.select(sa.column("version_num", sa.String)).select_from(sa.table(table))
        )
        return list(found.scalars())


BATCH_ONE = [
    ("shop", "alembic:+rev1", 1),
    ("shop", "alembic:+rev2", 1),
    ("shop", "alembic:base", 1),
]
"""The rows of an upgrade from base over rev1 and rev2: one per revision, one of the start."""


def tracked(engine: sa.Engine) -> list[tuple[str, str, int]]:
    with engine.connect() as connection:
        rows = connection.execute(sa.text("SELECT app, name, batch FROM ro_migrations")).all()
    # Sorted here: server collations order '+' apart from letters differently.
    return sorted(
        ((app, name, batch) for app, name, batch in rows), key=lambda row: (row[0], row[2], row[1])
    )


class TestVersionTable:
    @pytest.mark.parametrize(
        ("app", "expected"),
        [
            pytest.param("shop", "alembic_version_shop", id="plain"),
            pytest.param("shop_v2", "alembic_version_shop_v2", id="underscore"),
        ],
    )
    def test_is_named_after_the_app(self, app: str, expected: str) -> None:
        """A name of lower-case letters, digits and single underscores is kept as it is."""
        assert version_table(app) == expected

    def test_other_names_are_sanitised_with_a_hash_of_the_name(self) -> None:
        """Lower-case letters, digits and underscores only, then ``__`` and a hash."""
        assert re.fullmatch(
            r"alembic_version_my_shop_eu__[0-9a-f]{12}", version_table("My-Shop.eu")
        )

    def test_distinct_app_names_get_distinct_tables(self) -> None:
        """Names that sanitise alike (``shop-v2``, ``shop_v2``, ``Shop.V2``) stay apart."""
        names = ["shop-v2", "shop_v2", "Shop.V2", "shop.v2", "SHOP_V2", "shop__v2", "shop_v2__"]
        assert len({version_table(name) for name in names}) == len(names)

    def test_a_table_named_by_an_older_version_is_taken_over(
        self, engine: sa.Engine, scripts: AlembicScripts
    ) -> None:
        """``My-Shop`` migrated into ``alembic_version_my_shop`` goes on from there."""
        make(engine, scripts, "My-Shop").apply()
        with engine.begin() as connection:
            today = connection.dialect.identifier_preparer.quote(version_table("My-Shop"))
            connection.execute(sa.text(f"ALTER TABLE {today} RENAME TO alembic_version_my_shop"))
        scripts.revision(create_table("extra"), drop_table("extra"))
        assert make(engine, scripts, "My-Shop").apply().items == ("rev3",)
        assert "alembic_version_my_shop" not in tables(engine)
        assert make(engine, scripts, "My-Shop").status()["current"] == "rev3"

    def test_apps_whose_names_sanitise_alike_migrate_apart(
        self, engine: sa.Engine, tmp_path: Path
    ) -> None:
        """``shop-v2`` and ``shop_v2`` in one database each keep their own revisions."""
        dashed = AlembicScripts.at(tmp_path / "dashed", table="dashed", prefix="d")
        dashed.create_table()
        underscored = AlembicScripts.at(tmp_path / "underscored", table="under", prefix="u")
        underscored.create_table()
        assert make(engine, dashed, "shop-v2").apply().items == ("d1",)
        assert make(engine, underscored, "shop_v2").apply().items == ("u1",)
        assert make(engine, dashed, "shop-v2").status()["current"] == "d1"
        assert make(engine, underscored, "shop_v2").undo().success
        assert make(engine, dashed, "shop-v2").status()["current"] == "d1"
        assert {"dashed"} <= tables(engine)
        assert "under" not in tables(engine)

    def test_a_long_name_is_shortened_but_stays_distinct(self) -> None:
        """Names fit PostgreSQL's 63 characters; a hash keeps long app names apart."""
        first, second = version_table("a" * 80), version_table("a" * 81)
        assert len(first) <= 63
        assert len(second) <= 63
        assert first != second


class TestDiscover:
    def test_lists_revisions_oldest_first(self, tmp_path: Path, scripts: AlembicScripts) -> None:
        """``discover()`` walks the script directory from base to head."""
        engine = sa.create_engine(f"sqlite:///{tmp_path / 'x.db'}")
        assert make(engine, scripts).changes.discover() == ["rev1", "rev2"]
        engine.dispose()

    def test_a_directory_that_is_not_an_alembic_one_is_a_config_error(self, tmp_path: Path) -> None:
        """A missing or broken script directory is reported with its key."""
        engine = sa.create_engine(f"sqlite:///{tmp_path / 'x.db'}")
        migrations = Runner(
            AlembicMigrations("shop", engine, MigrationsConfig(alembic=str(tmp_path / "nowhere")))
        )
        with pytest.raises(ConfigError, match="not a usable Alembic script directory") as raised:
            migrations.apply()
        assert raised.value.path == "migrations.alembic"
        engine.dispose()

    def test_needs_a_directory(self, tmp_path: Path) -> None:
        """Without ``migrations.alembic`` there is nothing to run."""
        engine = sa.create_engine("sqlite://")
        with pytest.raises(ConfigError, match=r"migrations\.alembic"):
            AlembicMigrations("shop", engine, MigrationsConfig())
        engine.dispose()


class TestLatest:
    def test_upgrades_to_head_in_a_version_table_of_the_app(
        self, engine: sa.Engine, scripts: AlembicScripts
    ) -> None:
        """Every revision runs; the app's own version table holds the head."""
        result = make(engine, scripts).apply()
        assert result.success
        assert result.operation == "migrations"
        assert result.items == ("rev1", "rev2")
        assert result.details == {
            "action": "latest",
            "batch": 1,
            "from": "base",
            "to": "rev2",
            "version_table": "alembic_version_shop",
        }
        assert "name" in columns(engine, "items")
        assert versions(engine, "alembic_version_shop") == ["rev2"]
        assert "alembic_version" not in tables(engine)

    def test_records_the_revision_it_started_from(
        self, engine: sa.Engine, scripts: AlembicScripts
    ) -> None:
        """Each upgrade is a batch: a row of its starting heads and one per revision applied."""
        migrations = make(engine, scripts)
        migrations.apply()
        scripts.revision(create_table("extra"), drop_table("extra"))
        result = migrations.apply()
        assert result.items == ("rev3",)
        assert tracked(engine) == [
            *BATCH_ONE,
            ("shop", "alembic:+rev3", 2),
            ("shop", "alembic:rev2", 2),
        ]

    def test_is_idempotent(self, engine: sa.Engine, scripts: AlembicScripts) -> None:
        """At head, a second call changes and records nothing."""
        migrations = make(engine, scripts)
        migrations.apply()
        again = migrations.apply()
        assert again.success
        assert again.items == ()
        assert again.details["batch"] is None
        assert tracked(engine) == BATCH_ONE

    def test_two_apps_on_one_database_keep_separate_versions(
        self, engine: sa.Engine, tmp_path: Path
    ) -> None:
        """Each app's revisions live in its own version table, its batches in its own rows."""
        shop = AlembicScripts.at(tmp_path / "shop", table="items")
        shop.create_table()
        shop.add_column("name")
        blog = AlembicScripts.at(tmp_path / "blog", table="posts")
        blog.create_table()
        make(engine, shop, "shop").apply()
        assert make(engine, blog, "blog").status()["pending"] == ["rev1"]
        make(engine, blog, "blog").apply()
        assert versions(engine, "alembic_version_shop") == ["rev2"]
        assert versions(engine, "alembic_version_blog") == ["rev1"]
        assert make(engine, shop, "shop").undo().success
        assert "items" not in tables(engine)
        assert "posts" in tables(engine)
        assert versions(engine, "alembic_version_blog") == ["rev1"]
        assert make(engine, blog, "blog").status()["current"] == "rev1"

    def test_a_failing_revision_raises_naming_it_and_leaves_nothing(
        self, sql_engine: sa.Engine, scripts: AlembicScripts
    ) -> None:
        """Where DDL is transactional the whole upgrade and its row are undone."""
        scripts.revision(f"{create_table('extra')}\n{FAIL}", drop_table("extra"))
        with pytest.raises(MigrationFailed) as raised:
            make(sql_engine, scripts).apply()
        assert raised.value.migration == "rev3"
        assert "RuntimeError: boom" in raised.value.reason
        assert "nothing of this upgrade is applied" in raised.value.reason
        assert tables(sql_engine) == {"ro_migrations"}
        assert tracked(sql_engine) == []

    @pytest.mark.parametrize("database_url", ["mariadb"], indirect=True)
    def test_on_mariadb_a_failed_first_revision_says_what_may_remain(
        self, engine: sa.Engine, tmp_path: Path
    ) -> None:
        """DDL of the failed revision stays committed: the error says so and how to recover."""
        scripts = AlembicScripts.at(tmp_path / "alembic", table="items")
        scripts.revision(f"{create_table('items')}\n{FAIL}", drop_table("items"))
        with pytest.raises(MigrationFailed) as raised:
            make(engine, scripts).apply()
        reason = raised.value.reason
        assert "items" in tables(engine)  # what the revision did before its error
        assert "nothing of this upgrade is applied" not in reason
        assert "statements of rev1 that ran before the error may remain" in reason
        assert "drop what it created" in reason
        assert tracked(engine) == []

    @pytest.mark.parametrize("database_url", ["mariadb"], indirect=True)
    def test_on_mariadb_a_failed_upgrade_keeps_and_tracks_what_succeeded(
        self, engine: sa.Engine, scripts: AlembicScripts
    ) -> None:
        """MariaDB keeps the revisions before the failed one; rollback can return to base."""
        scripts.revision(FAIL, "pass")
        migrations = make(engine, scripts)
        with pytest.raises(MigrationFailed, match="applied and tracked before it") as raised:
            migrations.apply()
        assert raised.value.migration == "rev3"
        assert versions(engine, "alembic_version_shop") == ["rev2"]
        assert tracked(engine) == BATCH_ONE
        assert migrations.undo().items == ("rev2", "rev1")
        assert "items" not in tables(engine)

    def test_an_env_py_ignoring_the_version_table_is_reported(
        self, sql_engine: sa.Engine, tmp_path: Path
    ) -> None:
        """An ``env.py`` that does not use the version table handed in fails the upgrade."""
        scripts = AlembicScripts.at(
            tmp_path / "alembic", table="items", env=ENV_PY_WITHOUT_VERSION_TABLE
        )
        scripts.create_table()
        with pytest.raises(MigrationFailed, match=r"env\.py must configure"):
            make(sql_engine, scripts).apply()
        assert tables(sql_engine) == {"ro_migrations"}


class TestRollback:
    def test_returns_to_the_revision_recorded_before_the_last_upgrade(
        self, engine: sa.Engine, scripts: AlembicScripts
    ) -> None:
        """Rollback downgrades the newest batch only, newest revision first."""
        make(engine, scripts).apply()
        scripts.revision(create_table("extra"), drop_table("extra"))
        migrations = make(engine, scripts)
        migrations.apply()
        result = migrations.undo()
        assert result.success
        assert result.items == ("rev3",)
        assert result.details["to"] == "rev2"
        assert versions(engine, "alembic_version_shop") == ["rev2"]
        assert "extra" not in tables(engine)
        assert migrations.undo().items == ()
        second = make(engine, scripts).undo()
        assert second.items == ("rev2", "rev1")
        assert versions(engine, "alembic_version_shop") == []
        assert tables(engine) == {"ro_migrations", "alembic_version_shop"}
        assert tracked(engine) == []
        assert make(engine, scripts).undo().items == ()

    def test_a_failing_downgrade_gives_a_failed_result_naming_it(
        self, sql_engine: sa.Engine, scripts: AlembicScripts
    ) -> None:
        """The downgrade is undone, the batch stays tracked, the result names the revision."""
        scripts.revision(create_table("extra"), f"{drop_table('extra')}\n{FAIL}")
        migrations = make(sql_engine, scripts)
        migrations.apply()
        result = migrations.undo()
        assert not result.success
        assert (result.error or "").startswith("rev3: RuntimeError: boom")
        assert result.details["failed"] == "rev3"
        assert versions(sql_engine, "alembic_version_shop") == ["rev3"]
        assert "extra" in tables(sql_engine)
        assert tracked(sql_engine) == [*BATCH_ONE[:2], ("shop", "alembic:+rev3", 1), BATCH_ONE[2]]


class TestBranchesAndMerges:
    """Script directories with branches and merges: a batch is the set of revisions it ran."""

    @pytest.fixture
    def tree(self, tmp_path: Path) -> AlembicScripts:
        """``r1``, then branch ``a`` (table ``ta``) on it."""
        made = AlembicScripts.at(tmp_path / "tree", table="t1")
        made.on("r1", None, "t1")
        made.on("a", "r1", "ta")
        return made

    def test_an_upgrade_of_one_more_branch_is_undone_alone(
        self, engine: sa.Engine, tree: AlembicScripts
    ) -> None:
        """From ``a``, branch ``b`` is applied, reported, recorded, and undone back to ``a``."""
        make(engine, tree).apply()
        tree.on("b", "r1", "tb")
        migrations = make(engine, tree)
        assert migrations.apply().items == ("b",)
        assert tracked(engine)[-2:] == [("shop", "alembic:+b", 2), ("shop", "alembic:a", 2)]
        result = migrations.undo()
        assert result.success
        assert result.items == ("b",)
        assert versions(engine, "alembic_version_shop") == ["a"]
        assert "tb" not in tables(engine)
        assert "ta" in tables(engine)
        assert [batch for _, _, batch in tracked(engine)] == [1, 1, 1]

    def test_a_merge_is_undone_with_the_branch_it_brought(
        self, engine: sa.Engine, tree: AlembicScripts
    ) -> None:
        """From ``a``, branch ``b`` and merge ``m`` are applied; undoing returns to ``a``."""
        make(engine, tree).apply()
        tree.on("b", "r1", "tb")
        tree.on("m", ("a", "b"), None)
        migrations = make(engine, tree)
        assert migrations.apply().items == ("b", "m")
        result = migrations.undo()
        assert result.success
        assert result.items == ("m", "b")
        assert versions(engine, "alembic_version_shop") == ["a"]
        assert "tb" not in tables(engine)

    def test_an_upgrade_from_two_heads_returns_to_both(
        self, engine: sa.Engine, tree: AlembicScripts
    ) -> None:
        """From heads ``a`` and ``b``, a merge is applied and undone back to both heads."""
        tree.on("b", "r1", "tb")
        make(engine, tree).apply()
        tree.on("m", ("a", "b"), None)
        migrations = make(engine, tree)
        assert migrations.apply().items == ("m",)
        result = migrations.undo()
        assert result.success
        assert result.details["to"] == "a+b"
        assert sorted(versions(engine, "alembic_version_shop")) == ["a", "b"]
        assert {"ta", "tb"} <= tables(engine)

    def test_an_undo_never_reports_success_short_of_the_recorded_heads(
        self, engine: sa.Engine, tree: AlembicScripts
    ) -> None:
        """A database migrated by hand since the batch is refused; the batch stays tracked."""
        make(engine, tree).apply()
        tree.on("b", "r1", "tb")
        migrations = make(engine, tree)
        migrations.apply()
        with engine.begin() as connection:  # someone took branch b away by hand
            connection.execute(sa.text("DELETE FROM alembic_version_shop WHERE version_num = 'b'"))
        result = migrations.undo()
        assert not result.success
        assert "migrated by hand" in (result.error or "")
        assert [batch for _, _, batch in tracked(engine)][-1] == 2


class TestStatus:
    def test_shows_current_and_head(self, engine: sa.Engine, scripts: AlembicScripts) -> None:
        """Status has the current and head revisions and what is applied and pending."""
        migrations = make(engine, scripts)
        before = migrations.status()
        assert before["current"] is None
        assert before["head"] == "rev2"
        assert before["applied"] == []
        assert before["pending"] == ["rev1", "rev2"]
        assert before["version_table"] == "alembic_version_shop"
        migrations.apply()
        after = migrations.status()
        assert after["current"] == "rev2"
        assert after["applied"] == ["rev1", "rev2"]
        assert after["pending"] == []
        assert [entry["name"] for entry in after["batches"]] == [name for _, name, _ in BATCH_ONE]
