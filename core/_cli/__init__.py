"""The ``rapid-objection`` command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from importlib import import_module
from typing import Any, NoReturn

from ._args import Parser, UsageError, fail

COMMANDS = (
    "worker",
    "status",
    "demo",
    "dlq",
    "groups",
    "run",
    "replay",
    "keys",
    "acl",
    "dashboard",
    "migrate",
    "seed",
    "migrations",
)
"""Each is a module ``rapid_objection.core._cli._<command>`` with ``add_parser(commands)``."""


class _Version(argparse.Action):
    """``--version``: the installed distribution's version, looked up only when asked."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        kwargs.update(nargs=0, default=argparse.SUPPRESS)
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *args: Any) -> NoReturn:
        from importlib.metadata import version

        # The one place the version lives is pyproject.toml; the metadata is its copy.
        print(f"{parser.prog} {version('rapid-objection')}")
        parser.exit(0)


def build_parser(only: str | None = None) -> Parser:
    """The parser of every command, or of ``only`` one: a worker process then never
    imports what the other commands need (rich, SQLAlchemy), and stays light."""
    parser = Parser(prog="rapid-objection", description=__doc__)
    parser.add_argument("--version", action=_Version, help="print the version and exit")
    commands = parser.add_subparsers(title="commands", required=True, parser_class=Parser)
    for command in COMMANDS if only is None else (only,):
        import_module(f"{__name__}._{command}").add_parser(commands)
    return parser


def _single(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The one error inside (nested) single-error groups, else the group itself."""
    error: BaseException = group
    while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    return error


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; every expected failure is one line on stderr and a non-zero exit."""
    from rapid_objection import Error
    from rapid_objection.bus import BusUrlError, NamespaceError

    from ._namespace import UnusedNamespace

    arguments = list(sys.argv[1:] if argv is None else argv)
    only = "worker" if arguments[:1] == ["worker"] else None
    args = build_parser(only).parse_args(arguments)
    try:
        try:
            code: int = args.run(args)
        except BaseExceptionGroup as group:
            # A task group wraps what one of its tasks raised; show that error itself.
            raise _single(group) from None
    except UsageError as exc:
        fail(str(exc), 2)
    except (BusUrlError, NamespaceError) as exc:
        # A URL or namespace the user gave (a flag, a variable, a file's [bus]) that no
        # bus can take: a configuration error, whichever check found it first.
        fail(str(exc), 2)
    except UnusedNamespace as exc:
        fail(str(exc), exc.code)
    except Error as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        fail("interrupted", 130)
    return code


if __name__ == "__main__":
    sys.exit(main())
