"""Putting back what a namespace lost: Redis restarted empty, a failover reached a replica
that had nothing, or someone flushed the database.

Nobody else would put it back: a worker's manifest and consumer group, a registry's
record and the groups of the plugins its configuration lists exist only because their
owner wrote them once. So each owner checks its own part as it goes (a heartbeat that
finds its record gone, a read that meets NOGROUP) and restores all of it at once with a
``Restorer``: each step writes its part only when it is missing and says whether it was,
and the warning names what was missing, once per loss however many checks noticed it.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import anyio

log = logging.getLogger("rapid_objection.bus")

SAME_LOSS = 5.0
"""Seconds after a restore during which a loss noticed by a check that raced it (a
heartbeat that wrote its own record back just before) counts as the one put back."""

Step = Callable[[], Awaitable[bool]]
"""Writes one part back when it is missing; True when it was missing."""


class Restorer:
    """The parts of a namespace one participant (a worker, a registry) owns, put back
    on demand."""

    def __init__(self, owner: str, where: str) -> None:
        self.owner = owner
        """Who restores, for the warning: ``worker 'audit-1' of plugin 'audit'``."""
        self.where = where
        """The namespace and server, for the warning."""
        self._steps: list[tuple[str, Step]] = []
        self._lock = anyio.Lock()
        self.restored = 0
        """Losses found and put back so far."""
        self._restored_at = -SAME_LOSS

    def add(self, what: str, step: Step) -> None:
        """Restore ``what`` (named in the warning) with ``step``; steps run in the order
        they were added, so a part that others need (a consumer group) goes first."""
        self._steps.append((what, step))

    async def restore(self, *noticed: str) -> list[str]:
        """Run every step; warn once naming what was lost (``noticed`` by the caller
        already, or found missing by a step). Returns what was lost.

        Serialised: checks that notice one loss at once restore it once, and the later
        ones find everything back in place and say nothing (within ``SAME_LOSS``).
        """
        async with self._lock:
            found = [what for what, step in self._steps if await step()]
            if not found and anyio.current_time() - self._restored_at < SAME_LOSS:
                noticed = ()  # everything is in place: put back (and said) just now
            lost = list(dict.fromkeys([*noticed, *found]))
            if lost:
                self._restored_at = anyio.current_time()
                self.restored += 1
                log.warning(
                    "%s: %s had lost %s (did Redis restart empty?); put back",
                    self.owner,
                    self.where,
                    _listed(lost),
                )
            return lost


def _listed(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
