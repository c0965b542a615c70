"""Argument parsing shared by the commands: one clear line on a bad flag, exit 2."""

from __future__ import annotations

import argparse
import os
import sys
from typing import NoReturn

from rapid_objection.bus._constants import DEFAULT_NAMESPACE

ENV_BUS_URL = "RAPID_OBJECTION_BUS_URL"
ENV_NAMESPACE = "RAPID_OBJECTION_NAMESPACE"
DEFAULT_SERVER_URL = "redis://127.0.0.1:6379/0"


class UsageError(Exception):
    """A command line or file the CLI cannot act on; printed as one line, exit 2."""


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line on stderr, without the usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see --help)\n")


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


def fail(message: str, code: int = 1) -> NoReturn:
    print(f"rapid-objection: {message}", file=sys.stderr)
    raise SystemExit(code)
