"""``rapid-objection migrate APP [status|up|down]`` and ``seed APP [status|up|down]``.

The registry that owns ``APP`` on the bus does the work and answers (its lease, fence,
locks and plugins, exactly as ``app.migrate()`` there): the command sends it a request
and prints its answer; it fails, saying so, when no live registry owns ``APP``. With
``--direct`` it works on the app's database alone instead, when no registry runs (the
same app lock, so it waits for, and is waited for by, any registry's work on the app;
no events are published). Either way ``APP`` must have its ``[apps.APP]`` table in the
file: another name is refused before any registry is asked.

``up`` applies the pending files as one new batch; ``down`` undoes the newest
``--steps`` batches; ``status`` lists each file applied (batch, time) or pending. A
failure exits 1 with the file and the database's error; in a database with
transactional DDL nothing of the failed batch stays.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

from ._args import Parser, UsageError, add_bus_options, add_keyring_option, fail

if TYPE_CHECKING:
    from .._config import RegistryConfig

VERBS = ("status", "up", "down")
VERB_ACTIONS = {
    "migrate": {"up": "migrate", "down": "rollback_migrations"},
    "seed": {"up": "seed", "down": "rollback_seeds"},
}


def add_parser(commands: Any, command: str = "migrate") -> None:
    what = "migrations" if command == "migrate" else "seeds"
    parser: Parser = commands.add_parser(
        command,
        help=f"apply, roll back or list a registered app's {what}",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("app", metavar="APP")
    parser.add_argument("verb", nargs="?", default="up", choices=VERBS, help="default: up")
    parser.add_argument("--steps", type=int, default=1, metavar="N", help="batches to undo")
    parser.add_argument(
        "--config", type=Path, required=True, metavar="registry.toml", help="the registry file"
    )
    parser.add_argument(
        "--direct", action="store_true", help="on the database alone (no registry runs)"
    )
    parser.add_argument(
        "--timeout", type=float, default=300.0, help="seconds to wait for the answer"
    )
    parser.add_argument("--json", action="store_true", help="one JSON object, for machines")
    add_bus_options(parser, None)
    add_keyring_option(parser, "the keyring that signs the request")
    parser.set_defaults(run=run, command=command)


def run(args: argparse.Namespace) -> int:
    from ._run import load_args

    if args.steps < 1:
        raise UsageError(f"--steps must be at least 1, not {args.steps}")
    config = load_args(args)
    if args.app not in config.apps:
        # Before asking the bus: no registry can own an app the file does not have, and
        # --direct could not work on it either.
        raise UsageError(
            f"app {args.app!r} is not in the registry file (no [apps.{args.app}] table)"
        )
    action = "status" if args.verb == "status" else VERB_ACTIONS[args.command][args.verb]
    if args.direct:
        result = on_database(config, args.app, action, args.steps)
    else:
        try:
            result = anyio.run(ask, config, args, action)
        except KeyboardInterrupt:
            if action == "status":
                raise
            # Ctrl-C stops the waiting, not the work: a request already sent is done by
            # the registry that owns the app, whatever happens to this command.
            fail(
                f"interrupted: the request may already be with the registry that owns app "
                f"{args.app!r}, which then carries it out; see `rapid-objection "
                f"{args.command} {args.app} status --config {args.config}`",
                130,
            )
    show(args, action, result)
    return 0


def on_database(config: RegistryConfig, app: str, action: str, steps: int) -> dict[str, Any]:
    from .._app_data import AppChanges
    from .._connections import Engines
    from .._requested import check_action, direct, status_of

    app_config = config.apps[app]  # run() refused an app the file does not have
    if action != "status":
        return direct(app, app_config, check_action(action, steps), steps).as_dict()
    engines = Engines()
    try:
        engine = engines.open(app, app_config.database, None).engine
        changes = AppChanges.of(app, engine, app_config)
        return status_of(app, changes.migrations, changes.seeds).as_dict()
    finally:
        engines.close_all()


async def ask(config: RegistryConfig, args: argparse.Namespace, action: str) -> dict[str, Any]:
    from rapid_objection.bus import Bus
    from rapid_objection.bus._directory import is_alive
    from rapid_objection.bus._keyring import Keyring
    from rapid_objection.bus._requests import Requests

    # --keyring defaults to the env's keyring already (add_keyring_option).
    path = args.keyring or config.bus.keyring
    keyring = Keyring.load(path) if path else None
    bus_settings = config.bus
    async with Bus.connect(
        bus_settings.connect_url, bus_settings.namespace, keyring=keyring
    ) as bus:
        holder = await bus.directory.owners.holder(args.app)
        live = {info.id for info in await bus.directory.registries() if is_alive(info.seen)}
        if holder is None or holder.owner not in live:
            fail(
                f"no live registry owns app {args.app!r} on {bus.url} (namespace "
                f"{bus.namespace!r}): start one (`rapid-objection run {args.config}`) or "
                "work on the database alone with --direct"
            )
        answer = await Requests(bus).ask(
            holder.owner, args.app, action, args.steps, timeout=args.timeout
        )
    if not answer.ok:
        fail(f"registry {answer.registry!r}: {answer.error}")
    return answer.result


def show(args: argparse.Namespace, action: str, result: dict[str, Any]) -> None:
    if args.json:
        print(json.dumps(result))
        return
    app = args.app
    if action == "status":
        kind = "migrations" if args.command == "migrate" else "seeds"
        if kind == "migrations" and result.get("mode") == "alembic":
            print(f"app {app}: revision {result['revision'] or 'base'} (head {result['head']})")
        for item in result[kind]:
            where = f"batch {item['batch']}" if item["state"] == "applied" else ""
            print(f"{item['name']:40} {item['state']:8} {where} {item['at'] or ''}".rstrip())
        pending = result["pending"] if kind == "migrations" else result["pending_seeds"]
        noun = kind if len(pending) != 1 else kind.removesuffix("s")
        print(f"app {app}: {len(pending)} {noun} pending")
        return
    verb = "applied" if action in ("migrate", "seed") else "undid"
    batches = ", ".join(str(batch) for batch in result["batches"])
    if not result["ran"]:
        print(f"app {app}: nothing to do ({action})")
        return
    print(
        f"app {app}: {verb} {', '.join(result['ran'])} (batch {batches}) in "
        f"{result['duration']:.2f} s"
    )
