"""The ``rapid-objection`` command line."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from . import _demo, _dlq, _replay, _run, _status, _worker
from ._args import Parser, UsageError, fail


def build_parser() -> Parser:
    parser = Parser(prog="rapid-objection", description=__doc__)
    commands = parser.add_subparsers(title="commands", required=True, parser_class=Parser)
    _worker.add_parser(commands)
    _status.add_parser(commands)
    _demo.add_parser(commands)
    _dlq.add_parser(commands)
    _run.add_parser(commands)
    _replay.add_parser(commands)
    return parser


def _single(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The one error inside (nested) single-error groups, else the group itself."""
    error: BaseException = group
    while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    return error


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; every expected failure is one line on stderr and a non-zero exit."""
    from bus import BusError
    from plugin_workers import PluginLoadError

    args = build_parser().parse_args(argv)
    try:
        try:
            code: int = args.run(args)
        except BaseExceptionGroup as group:
            # A task group wraps what one of its tasks raised; show that error itself.
            raise _single(group) from None
    except UsageError as exc:
        fail(str(exc), 2)
    except (BusError, PluginLoadError) as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        fail("interrupted", 130)
    return code


if __name__ == "__main__":
    sys.exit(main())
