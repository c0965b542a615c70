"""Per-app order across a whole group: an app's event waits while an older event of the
same app is pending with another consumer of the group.

Within one worker the lanes run an app's events in stream order. Across workers that is
not enough: a peer may still hold an older event of the app (queued, running, or left
by a worker that died and waiting to be reclaimed). Such a newer event is held back
here, its lease renewed like any other in hand, and let through once no older event of
its app is pending elsewhere (acked by its holder, or reclaimed by this consumer).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import anyio

from ._constants import EVENT_FIELD
from ._delivery import Delivery
from ._heads import decode_head
from ._ids import id_key
from ._redis import Redis

PENDING_SCAN = 10_000
"""Pending rows read per check (the group's pending list up to the newest candidate)."""

APP_MEMORY = 50_000
"""Entry id -> app pairs remembered, so that another consumer's entry is looked up once."""


class AppOrder:
    """Which deliveries of one consumer may run now, and which wait for an older one."""

    def __init__(
        self,
        redis: Redis,
        key: str,
        group: str,
        consumer: str,
        in_hand: Callable[[str], bool],
    ) -> None:
        self._redis = redis
        self._in_hand = in_hand
        self._key = key
        self._group = group
        self._consumer = consumer
        self._apps: OrderedDict[str, str | None] = OrderedDict()
        self.waiting: list[Delivery] = []
        self.lock = anyio.Lock()
        """Held across taking entries in hand and admitting them: the reader and the
        claimer both do, and neither may look at the group between the other's two steps
        (a claimed entry not yet admitted would be overtaken by newer ones)."""

    def __len__(self) -> int:
        return len(self.waiting)

    async def admit(self, new: list[Delivery]) -> list[Delivery]:
        """The deliveries (of ``new`` and of those waiting) that may run now, oldest
        first; the others wait for the next call. Call it holding ``lock``."""
        for delivery in new:
            self._remember(delivery.entry_id, delivery.envelope.app)
        candidates = sorted([*self.waiting, *new], key=lambda d: id_key(d.entry_id))
        if not candidates:
            return []
        rows = await self._redis.xpending(
            self._key, self._group, start="-", end=candidates[-1].entry_id, count=PENDING_SCAN
        )
        # Pending under this name but not in hand counts too: a claim that took it is
        # about to offer it, and the newer ones must not overtake it meanwhile.
        elsewhere = [
            row.entry_id
            for row in rows
            if row.consumer != self._consumer or not self._in_hand(row.entry_id)
        ]
        await self._learn_apps(elsewhere)
        oldest_elsewhere: dict[str, tuple[int, int]] = {}
        for entry_id in elsewhere:  # oldest first
            app = self._apps.get(entry_id)
            if app is not None and app not in oldest_elsewhere:
                oldest_elsewhere[app] = id_key(entry_id)
        if not oldest_elsewhere:
            self.waiting = []
            return candidates
        runnable: list[Delivery] = []
        waiting: list[Delivery] = []
        blocked: set[str] = set()
        for delivery in candidates:
            app = delivery.envelope.app
            older = oldest_elsewhere.get(app)
            if app in blocked or (older is not None and older < id_key(delivery.entry_id)):
                blocked.add(app)
                waiting.append(delivery)
            else:
                runnable.append(delivery)
        self.waiting = waiting
        return runnable

    def give_back(self) -> list[Delivery]:
        """Everything waiting (a stopping consumer leaves it pending for a live peer)."""
        waiting, self.waiting = self.waiting, []
        return waiting

    async def _learn_apps(self, entry_ids: list[str]) -> None:
        """Look up the apps of the entries not seen before, in one XRANGE over their span."""
        unknown = [entry_id for entry_id in entry_ids if entry_id not in self._apps]
        if not unknown:
            return
        wanted = set(unknown)
        entries = await self._redis.xrange(self._key, unknown[0], unknown[-1], PENDING_SCAN)
        for entry_id, fields in entries:
            if entry_id in wanted:
                head = decode_head(fields.get(EVENT_FIELD, b""))
                self._remember(entry_id, head.app if head is not None else None)
                wanted.discard(entry_id)
        for entry_id in wanted:
            self._remember(entry_id, None)  # trimmed away: it holds nobody back

    def _remember(self, entry_id: str, app: str | None) -> None:
        self._apps[entry_id] = app
        if len(self._apps) > APP_MEMORY:
            self._apps.popitem(last=False)
