"""Run a side effect once per event id, however often the event is delivered."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any, Final, TypeVar

import anyio

from rapid_objection.bus import Bus, RetryLater
from rapid_objection.bus._constants import ONCE_TTL_MS

from ._dispatch import current_delivery, current_hook_timeout
from ._view import RegistryView

T = TypeVar("T")

RUNNING: Final = b"running"
DONE: Final = b"done"
RUNNING_MARGIN: Final = 1.0
"""Seconds a "running" marker outlives the hook timeout between two renewals: a worker
that dies mid-effect blocks the effect elsewhere about one hook timeout, not minutes."""


def running_ttl_ms(hook_timeout: float) -> int:
    """The lifetime of a "running" marker of a hook with ``hook_timeout``."""
    return int((hook_timeout + RUNNING_MARGIN) * 1000)


async def run_once(
    registry: RegistryView,
    name: str,
    effect: Callable[..., Awaitable[T] | T],
    *args: Any,
) -> T | None:
    """Call ``effect(*args)`` unless it already ran for the current event; inside a hook.

    Keyed by plugin, the original event's id and ``name``: a re-delivered event (after a
    crash or a retry) and a copy of it (a replay, a dead-letter re-drive, which have ids
    of their own) skip an effect that completed, and defer (``RetryLater``) while another
    worker is still running it. Returns the effect's value, or None when it was skipped.
    """
    delivery = current_delivery()
    bus = registry.bus
    event_id = delivery.envelope.original_id
    key = bus.keys.once(registry.plugin, event_id, name)
    ttl_ms = running_ttl_ms(current_hook_timeout())
    if not await bus.redis.set(key, RUNNING, ttl_ms=ttl_ms, only_if_absent=True):
        if await bus.redis.get(key) == DONE:
            return None
        raise RetryLater(1.0, f"{name!r} for event {event_id} is running elsewhere")
    try:
        try:
            async with anyio.create_task_group() as group:
                # The marker lives while this worker does: renewed until the effect returns.
                group.start_soon(_renew, bus, key, ttl_ms)
                result = await _call(effect, args)
                group.cancel_scope.cancel()
        except BaseExceptionGroup as failed:
            # The effect's own error, as the hook would have raised it without the group.
            if len(failed.exceptions) == 1:
                raise failed.exceptions[0] from None
            raise
    except BaseException:
        # Shielded: a hook cancelled by its timeout must still clear its marker. PEXPIRE
        # 0 removes it at once: a worker's Redis user holds no DEL (docs/operations.md).
        with anyio.CancelScope(shield=True):
            await bus.redis.pexpire(key, 0)
        raise
    with anyio.CancelScope(shield=True):
        await bus.redis.set(key, DONE, ttl_ms=ONCE_TTL_MS)
    return result


async def _renew(bus: Bus, key: str, ttl_ms: int) -> None:
    while True:
        await anyio.sleep(ttl_ms / 3000)
        await bus.redis.pexpire(key, ttl_ms)


async def _call(effect: Callable[..., Awaitable[T] | T], args: tuple[Any, ...]) -> T:
    result = effect(*args)
    if inspect.isawaitable(result):
        return await result
    return result
