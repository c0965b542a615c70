"""Opening the bus of a command that reads a namespace (``status``, ``dlq``, ``replay``)."""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from rapid_objection.bus import Bus
from rapid_objection.bus._constants import DEFAULT_NAMESPACE

from ._args import bus_url, keyring_of


class UnusedNamespace(Exception):  # noqa: N818 - reads as the condition
    """A namespace that holds nothing at all: printed as one line, exit 3."""

    code = 3


async def is_used(bus: Bus) -> bool:
    """Whether anything was ever written to ``bus``'s namespace (events, plugins,
    workers or registries)."""
    return bool(await bus.redis.exists(*bus.keys.all_fixed()))


@asynccontextmanager
async def namespace_bus(args: argparse.Namespace, *, used: bool = True) -> AsyncIterator[Bus]:
    """The bus of ``--bus-url`` and ``--namespace``; ``UnusedNamespace`` when nothing was
    ever written there (a mistyped namespace, most likely), instead of empty tables.
    ``used=False`` takes a namespace nothing was written to yet (to watch it start)."""
    url, namespace = bus_url(args), args.namespace or DEFAULT_NAMESPACE
    async with Bus.connect(url, namespace, keyring=keyring_of(args)) as bus:
        if used and not await is_used(bus):
            raise UnusedNamespace(
                f"namespace {bus.namespace!r} on {bus.url} has never been used "
                "(no events, plugins, workers or registries): check --namespace"
            )
        yield bus
