"""Argument parsing shared by the commands: one clear line on a bad flag, exit 2."""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING, NoReturn

from rapid_objection.bus._constants import DEFAULT_NAMESPACE
from rapid_objection.bus._errors import BusUrlError, NamespaceError
from rapid_objection.bus._keyring import ENV_KEYRING
from rapid_objection.bus._keys import check_namespace
from rapid_objection.bus._topology import parse

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


def namespace_arg(value: str) -> str:
    """``--namespace``, checked as the bus checks it: an empty or malformed name is a
    usage error before anything runs, never taken for the default."""
    try:
        return check_namespace(value)
    except NamespaceError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def bus_url_arg(value: str) -> str:
    """``--bus-url``, checked as the bus parses it (scheme, host, options), so that a
    wrong URL is a usage error before anything runs."""
    try:
        parse(value)
    except BusUrlError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return value


def from_environment(name: str) -> str | None:
    """The variable's value; an empty one counts as unset (``NAME= command`` in a shell),
    so the default applies rather than an empty name or URL."""
    return os.environ.get(name) or None


def add_namespace_option(parser: argparse.ArgumentParser) -> None:
    # argparse passes a string default through ``type`` too: a malformed variable is
    # refused like a malformed flag.
    parser.add_argument(
        "--namespace",
        type=namespace_arg,
        default=from_environment(ENV_NAMESPACE),
        help=f"the bus namespace (env {ENV_NAMESPACE}; default: {DEFAULT_NAMESPACE})",
    )


def add_bus_options(parser: argparse.ArgumentParser, default_url: str | None) -> None:
    parser.add_argument(
        "--bus-url",
        type=bus_url_arg,
        default=from_environment(ENV_BUS_URL) or default_url,
        help=f"redis://, rediss://, unix:// or memory:// (env {ENV_BUS_URL})",
    )
    add_namespace_option(parser)
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
    return with_options(str(args.bus_url), cluster=args.cluster, min_replicas=args.min_replicas)


def fail(message: str, code: int = 1) -> NoReturn:
    print(f"rapid-objection: {message}", file=sys.stderr)
    raise SystemExit(code)
