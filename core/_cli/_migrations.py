"""``rapid-objection migrations new APP NAME``: the next migration file of an app.

Numbered files: the next ``NNN_name.py`` in the app's ``migrations.directory``, with
``upgrade(op)`` and ``downgrade(op)`` stubs. Alembic mode (``migrations.alembic``): a
new revision through Alembic; with ``--autogenerate``, Alembic compares the app's models
(``[apps.APP.models]``) with its database, which must be migrated to the heads first.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ._args import Parser, UsageError


def add_parser(commands: Any) -> None:
    parser: Parser = commands.add_parser(
        "migrations",
        help="write a new migration file of an app",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = parser.add_subparsers(title="actions", required=True, parser_class=Parser)
    new: Parser = actions.add_parser("new", help="the next migration file, with stubs")
    new.add_argument("app", metavar="APP")
    new.add_argument("name", metavar="NAME", help="what it does: add_index, 'add notes'")
    new.add_argument(
        "--config", type=Path, required=True, metavar="registry.toml", help="the registry file"
    )
    new.add_argument(
        "--autogenerate",
        action="store_true",
        help="Alembic mode: compare the app's models with its database",
    )
    new.set_defaults(run=run_new)


def run_new(args: argparse.Namespace) -> int:
    from .._scripts import new_migration
    from ._run import load

    config = load(args.config, None, None)
    app = config.apps.get(args.app)
    if app is None:
        raise UsageError(f"app {args.app!r} is not in the registry file (no [apps.{args.app}])")
    if app.migrations.alembic:
        path = _revision(args.app, app, args.name, autogenerate=args.autogenerate)
    elif args.autogenerate:
        raise UsageError("--autogenerate needs Alembic mode (migrations.alembic)")
    else:
        path = str(new_migration(app.migrations.directory, args.name))
    print(path)
    return 0


def _revision(name: str, app: Any, message: str, *, autogenerate: bool) -> str:
    from .._alembic import AlembicMigrations
    from .._connections import Engines
    from .._models import load_models

    models = None
    if autogenerate:
        if not (app.models.module or app.models.classes):
            raise UsageError(f"--autogenerate needs the models of app {name!r} ([models])")
        models = load_models(name, app.models)
    engines = Engines()
    try:
        engine = engines.open(name, app.database, None).engine
        metadata = None if models is None else models.metadata
        return AlembicMigrations(name, engine, app.migrations).new_revision(message, metadata)
    finally:
        engines.close_all()
        if models is not None:
            models.clear()  # the app's copies of its model modules go with them
