"""Opening the bus of a command that reads a namespace (``status``, ``dlq``, ``replay``)."""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from rapid_objection.bus import Bus
from rapid_objection.bus._constants import DEFAULT_NAMESPACE

from ._args import bus_url


class UnusedNamespace(Exception):  # noqa: N818 - reads as the condition
    """A namespace that holds nothing at all: printed as one line, exit 3."""

    code = 3


@asynccontextmanager
async def namespace_bus(args: argparse.Namespace) -> AsyncIterator[Bus]:
    """The bus of ``--bus-url`` and ``--namespace``; ``UnusedNamespace`` when nothing was
    ever written there (a mistyped namespace, most likely), instead of empty tables."""
    async with Bus.connect(bus_url(args), args.namespace or DEFAULT_NAMESPACE) as bus:
        if not await bus.redis.exists(*bus.keys.all_fixed()):
            raise UnusedNamespace(
                f"namespace {bus.namespace!r} on {bus.url} has never been used "
                "(no events, plugins, workers or registries): check --namespace"
            )
        yield bus
