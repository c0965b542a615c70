"""``rapid-objection keys init | export | rotate``: the keyring of a bus (docs/security.md)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from rapid_objection.bus._keyfile import KeyFile

from ._args import Parser


def add_parser(commands: Any) -> None:
    parser: Parser = commands.add_parser(
        "keys", help="create, export and rotate the keys that sign events and acks"
    )
    actions = parser.add_subparsers(title="actions", required=True, parser_class=Parser)
    init: Parser = actions.add_parser(
        "init", help="a new keyring (or new plugins' keys added to one), mode 0600"
    )
    init.add_argument("path", metavar="PATH")
    init.add_argument(
        "--plugin", action="append", default=[], metavar="NAME", help="a plugin (repeatable)"
    )
    init.set_defaults(run=run_init)
    export: Parser = actions.add_parser(
        "export", help="what one plugin's workers need, and nothing else, into FILE"
    )
    export.add_argument("path", metavar="PATH")
    export.add_argument("--plugin", required=True, metavar="NAME")
    export.add_argument("--out", required=True, metavar="FILE")
    export.set_defaults(run=run_export)
    rotate: Parser = actions.add_parser(
        "rotate", help="a new key for every owner (it signs; the old ones still verify)"
    )
    rotate.add_argument("path", metavar="PATH")
    rotate.add_argument(
        "--retire",
        action="store_true",
        help="instead, remove every key but the newest: the old ones stop verifying",
    )
    rotate.set_defaults(run=run_rotate)


def run_init(args: argparse.Namespace) -> int:
    path = Path(args.path)
    if path.exists():
        ring = KeyFile.load(path)
        added = [name for name in dict.fromkeys(args.plugin) if name not in ring.plugins]
        ring.with_plugins(added).save(path)
        print(f"{path}: added keys of {', '.join(added) or 'no new plugin'}")
        return 0
    KeyFile.generate(list(dict.fromkeys(args.plugin))).save(path, new=True)
    names = ", ".join(dict.fromkeys(args.plugin)) or "no plugin yet"
    print(f"created keyring {path} (registry key; plugins: {names})")
    return 0


def run_export(args: argparse.Namespace) -> int:
    KeyFile.load(args.path).export(args.plugin).save(args.out)
    print(f"wrote the keys of plugin {args.plugin!r} to {args.out}")
    return 0


def run_rotate(args: argparse.Namespace) -> int:
    ring = KeyFile.load(args.path)
    if args.retire:
        ring.retired().save(args.path)
        print(f"{args.path}: only the newest key of each owner is left")
    else:
        ring.rotated().save(args.path)
        print(
            f"{args.path}: new keys sign from now on; the previous ones verify until "
            "`keys rotate --retire` (export the plugins' keys again before that)"
        )
    return 0
