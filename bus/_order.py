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
from typing import Protocol

import anyio

from ._constants import EVENT_FIELD
from ._delivery import Delivery
from ._heads import decode_head
from ._ids import id_key
from ._redis import Redis
from ._redis_records import PendingEntry

PENDING_SCAN = 10_000
"""Pending rows read per check (the group's pending list up to the newest candidate)."""

APP_MEMORY = 50_000
"""Entry id -> app pairs remembered, so that another consumer's entry is looked up once."""


class Screen(Protocol):
    """Which deliveries repeat an event the group took before (with a keyring:
    ``EventCheck``), asked in the same round trip as the group's pending list."""

    key: str
    """The sorted set of the event ids the group took, scored by the entry that took it."""

    def claims(self, deliveries: list[Delivery]) -> dict[str, float]: ...

    def split(
        self, deliveries: list[Delivery], members: dict[str, float], held: list[float | None]
    ) -> tuple[list[Delivery], list[Delivery]]: ...

    def cutoff(self) -> float | None:
        """The score under which claims are forgotten, when it is time to; else None."""


class AppOrder:
    """Which deliveries of one consumer may run now, and which wait for an older one."""

    def __init__(
        self,
        redis: Redis,
        key: str,
        group: str,
        consumer: str,
        in_hand: Callable[[str], bool],
        *,
        screen: Screen | None = None,
    ) -> None:
        self._redis = redis
        self._screen = screen
        self.taken_before: list[Delivery] = []
        """Deliveries ``screen`` found to be copies of events taken before: to XACK."""
        self._in_hand = in_hand
        self._key = key
        self._group = group
        self._consumer = consumer
        self._apps: OrderedDict[str, str | None] = OrderedDict()
        self.waiting: list[Delivery] = []
        self._alone = True
        """The last check found no older entry held elsewhere (see ``prefetch``)."""
        self.lock = anyio.Lock()
        """Held across taking entries in hand and admitting them: the reader and the
        claimer both do, and neither may look at the group between the other's two steps
        (a claimed entry not yet admitted would be overtaken by newer ones)."""

    def __len__(self) -> int:
        return len(self.waiting)

    @property
    def prefetch(self) -> bool:
        """Whether the reader should read the group's pending list with its XREADGROUP
        (``admit(new, rows)``): without a screen (whose claims depend on what was read),
        and while the last check found nothing held elsewhere. With peers holding
        entries, that list holds theirs newer than what this one reads too, and costs
        more to parse than the round trip it saves; then it is read when needed."""
        return self._screen is None and self._alone

    async def admit(
        self, new: list[Delivery], rows: list[PendingEntry] | None = None
    ) -> list[Delivery]:
        """The deliveries (of ``new`` and of those waiting) that may run now, oldest
        first; the others wait for the next call. Call it holding ``lock``.

        ``rows``: the group's pending list (oldest first) read in the same round trip
        as ``new``, after it: as good as reading it now, since an entry older than ``new``
        can only become pending elsewhere by a claim from a pending list it was on
        already; without them (or with a screen) the pending list is read here."""
        for delivery in new:
            self._remember(delivery.entry_id, delivery.envelope.app)
        candidates = sorted([*self.waiting, *new], key=lambda d: id_key(d.entry_id))
        if not candidates:
            return []
        if rows is not None and self._screen is None:
            newest = id_key(candidates[-1].entry_id)
            rows = [row for row in rows if id_key(row.entry_id) <= newest]
        else:
            rows, candidates = await self._pending(candidates)
        if not candidates:
            return []
        elsewhere = [row.entry_id for row in self.elsewhere(rows)]
        self._alone = not elsewhere
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

    async def _pending(
        self, candidates: list[Delivery]
    ) -> tuple[list[PendingEntry], list[Delivery]]:
        """The group's pending entries up to the newest candidate; with a screen, in the
        same round trip, the candidates' claims (the copies go to ``taken_before``)."""
        end = candidates[-1].entry_id
        if self._screen is None:
            rows = await self._redis.xpending(
                self._key, self._group, start="-", end=end, count=PENDING_SCAN
            )
            return rows, candidates
        # Claimed again while waiting too: a claim by the same entry is idempotent.
        members = self._screen.claims(candidates)
        rows, added = await self._redis.xpending_and_claim(
            self._key,
            self._group,
            end=end,
            count=PENDING_SCAN,
            claims=self._screen.key,
            members=members,
        )
        # Every claim new (the common case): each event is its first entry's. Else ask
        # who holds the others (a re-read, a reclaim, or a copy).
        held: list[float | None] = list(members.values())
        if added < len(members):
            held = await self._redis.zmscore(self._screen.key, list(members))
        if (cutoff := self._screen.cutoff()) is not None:
            await self._redis.zremrangebyscore(self._screen.key, float("-inf"), cutoff)
        candidates, copies = self._screen.split(candidates, members, held)
        self.taken_before.extend(copies)
        copied = {delivery.entry_id for delivery in copies}
        self.waiting = [d for d in self.waiting if d.entry_id not in copied]
        return rows, candidates

    def elsewhere(self, rows: list[PendingEntry]) -> list[PendingEntry]:
        """The rows of a pending list not in this consumer's hand. Pending under this
        name but not in hand counts too: a claim that took it is about to offer it, and
        the newer ones must not overtake it meanwhile."""
        return [
            row for row in rows if row.consumer != self._consumer or not self._in_hand(row.entry_id)
        ]

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
