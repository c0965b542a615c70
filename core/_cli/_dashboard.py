"""``rapid-objection dashboard``: a live web page of one namespace (docs/dashboard.md).

Read-only unless ``--allow-actions``: then re-driving dead letters and replaying events
to one plugin are on, for requests that carry the token printed at start (or read from
``--token-file``). Binds to 127.0.0.1 unless ``--host`` says otherwise.
"""

from __future__ import annotations

import argparse
import secrets
import sys
from pathlib import Path
from typing import Any

import anyio

from rapid_objection._extras import missing_extra

from ._args import (
    DEFAULT_SERVER_URL,
    Parser,
    UsageError,
    add_bus_options,
    add_keyring_option,
    bus_url,
    fail,
)
from ._logs import add_log_options, configure
from ._namespace import is_used, namespace_bus

DEFAULT_PORT = 8150
LOOPBACK_NAMES = ("127.0.0.1", "localhost")
MIN_TOKEN = 16
"""Characters a token from ``--token-file`` must have at least."""


def add_parser(commands: Any) -> None:
    parser: Parser = commands.add_parser(
        "dashboard", help="serve a live web page of a namespace", description=__doc__
    )
    add_bus_options(parser, DEFAULT_SERVER_URL)
    parser.add_argument(
        "--host", default="127.0.0.1", help="the address to listen on (default 127.0.0.1)"
    )
    parser.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"default {DEFAULT_PORT}; 0: any free"
    )
    parser.add_argument(
        "--allow-actions",
        action="store_true",
        help="allow re-driving dead letters and replaying events to one plugin, with the token",
    )
    parser.add_argument(
        "--token-file",
        metavar="FILE",
        help="with --allow-actions: the token is this file's first line (default: a new one,"
        " printed at start)",
    )
    parser.add_argument(
        "--interval", type=float, default=1.0, help="seconds between status updates (1.0)"
    )
    parser.add_argument("--failures", type=int, default=20, help="recent failures to show")
    add_keyring_option(parser, "the whole keyring: re-driven and replayed copies are signed")
    add_log_options(parser, "info")
    parser.set_defaults(run=run)


def read_token(path: str) -> str:
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as exc:
        raise UsageError(f"--token-file {path}: {exc.strerror or exc}") from None
    token = lines[0].strip() if lines else ""
    if len(token) < MIN_TOKEN:
        raise UsageError(f"--token-file {path}: the token must have {MIN_TOKEN} characters or more")
    return token


def run(args: argparse.Namespace) -> int:
    if args.token_file and not args.allow_actions:
        raise UsageError("--token-file is the token of --allow-actions: give both")
    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port must be from 0 to 65535, not {args.port}")
    if args.interval <= 0:
        raise UsageError(f"--interval must be above 0, not {args.interval}")
    token = None
    if args.allow_actions:
        token = read_token(args.token_file) if args.token_file else secrets.token_urlsafe(24)
    try:
        from rapid_objection.core._dashboard import Dashboard, serve
    except ImportError as exc:
        extra = missing_extra(exc, "rapid-objection dashboard")
        if extra is None:
            raise
        raise extra from exc
    configure(args)
    bus_url(args)  # a bad --min-replicas is refused before anything starts
    shown_host = f"[{args.host}]" if ":" in args.host else args.host

    async def main() -> None:
        # An unused namespace is only a warning here: the page shows it filling up.
        async with namespace_bus(args, used=False) as bus:
            if not await is_used(bus):
                print(
                    f"rapid-objection dashboard: namespace {bus.namespace!r} on {bus.url} has "
                    "never been used (yet): check --namespace",
                    file=sys.stderr,
                )
            dashboard = Dashboard(
                bus,
                token=token,
                interval=args.interval,
                recent_failures=args.failures,
                allowed_hosts=[*LOOPBACK_NAMES, args.host]
                if args.host in LOOPBACK_NAMES
                else None,
            )
            mode = "actions on" if token is not None else "read-only"

            def listening(port: int) -> None:
                if token is not None:
                    told = f"in {args.token_file}" if args.token_file else token
                    print(f"actions are on; token: {told}", flush=True)
                print(
                    f"dashboard of namespace {bus.namespace} on {bus.url} ({mode}): "
                    f"http://{shown_host}:{port}/",
                    flush=True,
                )

            try:
                await serve(
                    dashboard.app,
                    args.host,
                    args.port,
                    listening=listening,
                    stopping=dashboard.close,
                )
            except OSError as exc:
                fail(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}")

    anyio.run(main)
    return 0
