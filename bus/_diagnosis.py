"""Why a required plugin gave no answer: who holds its copy of the event (XPENDING),
whose heartbeat is live, and one failure recorded per plugin."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from ._bus import Bus
from ._contract import Envelope, Failure, FailureKind, WorkerInfo
from ._directory import is_alive
from ._errors import GroupMissing
from ._redis_records import PendingEntry
from ._waits import Outcome, Wait


def no_live_consumer(plugin: str) -> str:
    return f"no live consumer of plugin {plugin!r}"


def failure_of(
    envelope: Envelope,
    registry: str,
    plugin: str,
    consumer: str | None,
    kind: FailureKind,
    *,
    error: str,
    attempt: int = 0,
    entry_id: str = "",
) -> Failure:
    """The failure record of ``plugin`` on ``envelope`` (at stream entry ``entry_id``),
    held by ``consumer`` (or none)."""
    return Failure(
        event_id=envelope.id,
        type=envelope.type,
        app=envelope.app,
        plugin=plugin,
        consumer=consumer,
        kind=kind,
        error=error,
        attempt=attempt,
        time=time.time(),
        registry=registry,
        entry_id=entry_id,
    )


@dataclass(frozen=True, slots=True)
class Diagnosis:
    """One event of one registry whose wait has gone on without some plugin's answer."""

    bus: Bus
    registry: str
    envelope: Envelope
    entry_id: str
    catch_up: Callable[[], Awaitable[None]]
    """Waits until the registry's ack reader has routed every ack written so far."""

    async def run(self, missing: list[str], wait: Wait, *, early: bool = False) -> None:
        """Decide each plugin of ``missing`` still without an outcome; records one
        failure each. ``early``: before the deadline, so only plugins without any live
        consumer are decided (a live one may still answer in time).

        An ack written between the deadline and the XPENDING below is not lost: the
        worker writes it with its XACK in one transaction, so once XPENDING has been
        asked, reading the ack stream up to its end finds every such ack.
        """
        workers = await self.bus.directory.workers()
        held = {plugin: await self._held(plugin) for plugin in missing}
        await self.catch_up()
        failures: list[Failure] = []
        for plugin in missing:
            if plugin in wait.outcomes:
                continue  # answered after all: its ack is the outcome
            alive = any(w.plugin == plugin and is_alive(w.seen) for w in workers)
            if early and alive:
                continue
            pending = held[plugin]
            holder = pending[0].consumer if pending else None
            kind, error = _verdict(plugin, holder, alive, workers, early=early)
            wait.outcomes[plugin] = Outcome(
                plugin=plugin, status="timed_out", consumer=holder, error=error
            )
            attempt = pending[0].deliveries if pending else 0
            failures.append(
                failure_of(
                    self.envelope,
                    self.registry,
                    plugin,
                    holder,
                    kind,
                    error=error,
                    attempt=attempt,
                    entry_id=self.entry_id,
                )
            )
        await self.bus.failures.record(failures)

    async def _held(self, plugin: str) -> list[PendingEntry]:
        try:
            return await self.bus.redis.xpending(
                self.bus.keys.events, plugin, start=self.entry_id, end=self.entry_id, count=1
            )
        except GroupMissing:
            return []


def _verdict(
    plugin: str, holder: str | None, alive: bool, workers: list[WorkerInfo], *, early: bool
) -> tuple[FailureKind, str]:
    """The failure kind and its message, from the holder and the heartbeats."""
    if holder is None:
        if alive:
            return "timeout", "no consumer of the group had taken the event before the deadline"
        return "no_consumer", no_live_consumer(plugin)
    holder_alive = any(
        w.plugin == plugin and w.consumer == holder and is_alive(w.seen) for w in workers
    )
    if holder_alive:
        return "timeout", f"no ack from consumer {holder!r} before the deadline"
    # A holder whose heartbeat stopped died with the event in hand.
    if early:
        reason = f"consumer {holder!r} stopped heartbeating while holding the event"
        return "crashed", f"{no_live_consumer(plugin)}: {reason}"
    return "crashed", f"no ack from consumer {holder!r} before the deadline"
