"""``rapid-objection groups drop NAME``: remove the consumer group of a retired plugin."""

from __future__ import annotations

import argparse
from typing import Any

import anyio

from rapid_objection.bus import Bus
from rapid_objection.bus._constants import DEFAULT_NAMESPACE
from rapid_objection.bus._directory import is_alive
from rapid_objection.bus._retention import drop_group

from ._args import DEFAULT_SERVER_URL, Parser, add_bus_options, bus_url, fail


def add_parser(commands: Any) -> None:
    parser: Parser = commands.add_parser("groups", help="manage the plugins' consumer groups")
    actions = parser.add_subparsers(title="actions", required=True, parser_class=Parser)
    drop: Parser = actions.add_parser(
        "drop", help="remove a plugin's consumer group (it then holds no retention back)"
    )
    add_bus_options(drop, DEFAULT_SERVER_URL)
    drop.add_argument("name", metavar="NAME", help="the plugin whose group goes")
    drop.add_argument(
        "--force", action="store_true", help="drop it even while a worker of it is alive"
    )
    drop.set_defaults(run=run_drop)


def run_drop(args: argparse.Namespace) -> int:
    async def main() -> bool:
        async with Bus.connect(bus_url(args), args.namespace or DEFAULT_NAMESPACE) as bus:
            workers = await bus.directory.workers(args.name)
            if not args.force and any(is_alive(worker.seen) for worker in workers):
                fail(
                    f"plugin {args.name!r} has a live worker: stop its workers first "
                    "(or pass --force)"
                )
            return await drop_group(bus, args.name)

    if not anyio.run(main):
        fail(f"no consumer group {args.name!r} on the event stream")
    print(f"dropped consumer group {args.name!r}")
    return 0
