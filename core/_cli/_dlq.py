"""``rapid-objection dlq list | redrive ID...``: what plugins gave up on, and a second try."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import anyio
import msgspec
from rich.console import Console
from rich.table import Table

from rapid_objection.bus import Bus, DeadLetterEntry, DeadLetters
from rapid_objection.bus._constants import DEFAULT_NAMESPACE

from ._args import (
    DEFAULT_SERVER_URL,
    Parser,
    add_bus_options,
    add_keyring_option,
    bus_url,
    keyring_of,
)
from ._namespace import namespace_bus


def add_parser(commands: Any) -> None:
    parser: Parser = commands.add_parser("dlq", help="list or re-drive dead letters")
    actions = parser.add_subparsers(title="actions", required=True, parser_class=Parser)
    listing: Parser = actions.add_parser("list", help="the dead letters, oldest first")
    add_bus_options(listing, DEFAULT_SERVER_URL)
    listing.add_argument("--count", type=int, default=100)
    listing.add_argument("--json", action="store_true", help="JSON lines, for machines")
    listing.set_defaults(run=run_list)
    redrive: Parser = actions.add_parser(
        "redrive", help="publish dead letters again, for their plugin only"
    )
    add_bus_options(redrive, DEFAULT_SERVER_URL)
    redrive.add_argument("ids", nargs="+", metavar="ID", help="dead-letter entry ids")
    add_keyring_option(redrive, "the whole keyring: the re-driven copies are signed")
    redrive.set_defaults(run=run_redrive)


def run_list(args: argparse.Namespace) -> int:
    async def main() -> list[DeadLetterEntry]:
        async with namespace_bus(args) as bus:
            return await DeadLetters(bus).list(count=args.count)

    entries = anyio.run(main)
    if args.json:
        for entry in entries:
            print(msgspec.json.encode(entry.row()).decode())
        return 0
    table = Table(title=f"Dead letters ({len(entries)})")
    for column in ("id", "when", "plugin", "consumer", "event", "app", "attempts"):
        # The id is what `dlq redrive` takes: never cut it (or the names) short.
        table.add_column(column, no_wrap=column in ("id", "plugin", "consumer"))
    table.add_column("last error", ratio=1, overflow="fold")
    for entry in entries:
        letter = entry.letter
        table.add_row(
            entry.id,
            time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(letter.last_time)),
            letter.plugin,
            letter.consumer,
            letter.type or "(undecodable)",
            letter.app or "-",
            str(letter.attempts),
            letter.last_error,
        )
    Console(width=None if sys.stdout.isatty() else 200).print(table)
    return 0


def run_redrive(args: argparse.Namespace) -> int:
    async def main() -> None:
        url, namespace = bus_url(args), args.namespace or DEFAULT_NAMESPACE
        async with Bus.connect(url, namespace, keyring=keyring_of(args)) as bus:
            letters = DeadLetters(bus)
            for letter_id in args.ids:
                done = await letters.redrive(letter_id)
                print(
                    f"re-drove {letter_id} to plugin {done.plugin!r} as event {done.event_id} "
                    f"(stream entry {done.entry_id})"
                )

    anyio.run(main)
    return 0
