"""Run a side effect once per event id, however often the event is delivered."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any, Final, TypeVar

import anyio

from rapid_objection.bus import ONCE_TTL_MS, RetryLater

from ._dispatch import current_delivery
from ._view import RegistryView

T = TypeVar("T")

RUNNING: Final = b"running"
DONE: Final = b"done"
RUNNING_TTL_MS: Final = 10 * 60 * 1000
"""A "running" marker of a worker that died mid-effect expires, so the effect can run."""


async def run_once(
    registry: RegistryView,
    name: str,
    effect: Callable[..., Awaitable[T] | T],
    *args: Any,
) -> T | None:
    """Call ``effect(*args)`` unless it already ran for the current event; inside a hook.

    Keyed by plugin, event id and ``name``: a re-delivered event (after a crash or a
    retry) skips an effect that completed, and defers (``RetryLater``) while another
    worker is still running it. Returns the effect's value, or None when it was skipped.
    """
    delivery = current_delivery()
    bus = registry.bus
    key = bus.keys.once(registry.plugin, delivery.envelope.id, name)
    if not await bus.redis.set(key, RUNNING, ttl_ms=RUNNING_TTL_MS, only_if_absent=True):
        if await bus.redis.get(key) == DONE:
            return None
        raise RetryLater(1.0, f"{name!r} for event {delivery.envelope.id} is running elsewhere")
    try:
        result = effect(*args)
        if inspect.isawaitable(result):
            result = await result
    except BaseException:
        # Shielded: a hook cancelled by its timeout must still clear its marker.
        with anyio.CancelScope(shield=True):
            await bus.redis.delete(key)
        raise
    with anyio.CancelScope(shield=True):
        await bus.redis.set(key, DONE, ttl_ms=ONCE_TTL_MS)
    return result
