"""Argument parsing shared by the commands: one clear line on a bad flag, exit 2."""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING, NoReturn

from rapid_objection.bus._constants import DEFAULT_NAMESPACE
from rapid_objection.bus._keyring import ENV_KEYRING

if TYPE_CHECKING:
    from rapid_objection.bus._keyring import Keyring

ENV_BUS_URL = "RAPID_OBJECTION_BUS_URL"
ENV_NAMESPACE = "RAPID_OBJECTION_NAMESPACE"
DEFAULT_SERVER_URL = "redis://127.0.0.1:6379/0"


class UsageError(Exception):
    """A command line or file the CLI cannot act on; printed as one line, exit 2."""


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line on stderr, without the usage block,
    and whose help is plain text (the descriptions come from reStructuredText
    docstrings: their ````literal```` marks are dropped)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see --help)\n")

    def format_help(self) -> str:
        return super().format_help().replace("``", "")


def add_bus_options(parser: argparse.ArgumentParser, default_url: str | None) -> None:
    parser.add_argument(
        "--bus-url",
        default=os.environ.get(ENV_BUS_URL, default_url),
        help=f"redis://, rediss://, unix:// or memory:// (env {ENV_BUS_URL})",
    )
    parser.add_argument(
        "--namespace",
        default=os.environ.get(ENV_NAMESPACE),
        help=f"the bus namespace (env {ENV_NAMESPACE}; default: {DEFAULT_NAMESPACE})",
    )
    parser.add_argument(
        "--cluster",
        action="store_const",
        const=True,
        help="the URL names a node of a Redis Cluster (default: ask the server)",
    )
    parser.add_argument(
        "--min-replicas",
        type=int,
        metavar="N",
        help="every protocol write waits until N replicas have it (default 0)",
    )


def add_keyring_option(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--keyring",
        default=os.environ.get(ENV_KEYRING) or None,
        metavar="FILE",
        help=f"{what} (env {ENV_KEYRING}; docs/security.md)",
    )


def keyring_of(args: argparse.Namespace) -> Keyring | None:
    """The keyring that ``--keyring`` (or its env) names; None without one."""
    from rapid_objection.bus._keyring import Keyring

    path = getattr(args, "keyring", None)
    return Keyring.load(path) if path else None


def bus_url(args: argparse.Namespace) -> str:
    """``--bus-url`` with ``--cluster`` and ``--min-replicas`` put in it."""
    from rapid_objection.bus._topology import with_options

    if args.min_replicas is not None and args.min_replicas < 0:
        raise UsageError(f"--min-replicas must be at least 0, not {args.min_replicas}")
    return with_options(
        str(args.bus_url), cluster=args.cluster, min_replicas=args.min_replicas
    )


def fail(message: str, code: int = 1) -> NoReturn:
    print(f"rapid-objection: {message}", file=sys.stderr)
    raise SystemExit(code)
