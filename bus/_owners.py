"""App ownership on the bus: a lease per app, with a fencing token.

An app has at most one owner among the registries of a namespace. The owner holds the
key ``app-lease:<app>`` (value ``<token>|<registry>``), which expires ``ttl`` after
its last renewal: a registry that stops (crashed, or paused by SIGSTOP, a long GC, a
frozen VM) loses the app when that time has passed, and another registry may take
it. Each new owner gets a token one higher than any before it for that app (the hash
``app-tokens``), so a registry that wakes up holding an old token can be told apart
from the owner of now, by Redis and by the app's database (which keeps the highest
token it has seen: see ``core._fence``). The hash ``apps`` (app -> owner) is what
``status`` shows.

Every change is a compare-and-set under WATCH (``Redis.transaction``): all three keys
share the namespace's hash tag, so this holds on a cluster as on a single server, and
the embedded bus runs it too (it runs no Lua).
"""

from __future__ import annotations

from dataclasses import dataclass

from ._keys import Keys
from ._redis import Redis
from ._redis_batch import Batch, Watched


@dataclass(frozen=True, slots=True)
class AppLease:
    """Who holds app ``app``, under which token (the holder's view at the time read)."""

    app: str
    owner: str
    token: int


def _encode(owner: str, token: int) -> bytes:
    return f"{token}|{owner}".encode()


def _decode(app: str, raw: bytes) -> AppLease:
    token, _, owner = raw.decode().partition("|")  # the token has no "|": owner ids may
    return AppLease(app, owner, int(token))


class AppOwners:
    """Claims, renewals and releases of app leases in one namespace."""

    def __init__(self, redis: Redis, keys: Keys) -> None:
        self._redis = redis
        self._keys = keys

    def _watched(self, app: str) -> tuple[str, str, str]:
        keys = self._keys
        return keys.app_lease(app), keys.app_tokens, keys.apps

    async def _last_token(self, watched: Watched, app: str) -> int:
        raw = await watched.hget(self._keys.app_tokens, app)
        return int(raw) if raw else 0

    def _take(
        self, app: str, owner: str, token: int, ttl_ms: int, *, counter: int | None = None
    ) -> Batch:
        """The writes that make ``owner`` hold ``app`` with ``token`` (the counter of
        tokens set to ``counter``, by default the token itself)."""
        keys = self._keys
        counted = token if counter is None else counter
        return (
            self._redis.batch()
            .set(keys.app_lease(app), _encode(owner, token), ttl_ms=ttl_ms)
            .hset(keys.app_tokens, app, str(counted).encode())
            .hset(keys.apps, app, owner.encode())
        )

    async def holder(self, app: str) -> AppLease | None:
        """The lease of ``app`` now, or None when nobody holds it."""
        raw = await self._redis.get(self._keys.app_lease(app))
        return None if raw is None else _decode(app, raw)

    async def claim(self, app: str, registry: str, ttl_ms: int) -> AppLease:
        """Take ``app`` for ``registry`` unless another registry holds its lease; returns
        the lease that holds now (``owner`` says whose). A registry claiming an app it
        holds keeps its token; a new owner gets the next token."""
        taken: AppLease | None = None

        async def plan(watched: Watched) -> Batch | None:
            nonlocal taken
            raw = await watched.get(self._keys.app_lease(app))
            current = None if raw is None else _decode(app, raw)
            if current is not None and current.owner != registry:
                taken = current
                return None
            token = current.token if current else await self._last_token(watched, app) + 1
            taken = AppLease(app, registry, token)
            return self._take(app, registry, token, ttl_ms)

        await self._redis.transaction(self._watched(app), plan)
        assert taken is not None
        return taken

    async def renew(self, lease: AppLease, ttl_ms: int, *, floor: int = 0) -> AppLease | None:
        """Keep ``lease`` for another ``ttl_ms``; None when it is lost (another registry
        holds the app now, or has held it since: the token moved past ours).

        A lease that ran out with nobody taking the app, or that an empty Redis forgot
        (a restart without persistence), is taken again with its token: no other owner
        came in between, or the token would have moved. With ``floor`` the token moves
        past it (the app's database saw a higher token: one of a Redis that lost its
        data since), so that the database accepts this owner again.
        """
        renewed: AppLease | None = None

        async def plan(watched: Watched) -> Batch | None:
            nonlocal renewed
            raw = await watched.get(self._keys.app_lease(lease.app))
            last = await self._last_token(watched, lease.app)
            current = None if raw is None else _decode(lease.app, raw)
            if current != lease and (current is not None or last > lease.token):
                return None  # another owner holds the app, or came and went since
            token = lease.token if floor < lease.token else max(floor, last) + 1
            renewed = AppLease(lease.app, lease.owner, token)
            return self._take(lease.app, lease.owner, token, ttl_ms, counter=max(token, last))

        await self._redis.transaction(self._watched(lease.app), plan)
        return renewed

    async def release(self, app: str, registry: str) -> None:
        """Drop ``registry``'s lease on ``app`` (another registry's lease stays). The
        token counter stays: the next owner's token is higher still."""
        keys = self._keys

        async def plan(watched: Watched) -> Batch | None:
            raw = await watched.get(keys.app_lease(app))
            owner = await watched.hget(keys.apps, app)
            batch = self._redis.batch()
            if raw is not None and _decode(app, raw).owner == registry:
                batch.delete(keys.app_lease(app))
            if owner is not None and owner.decode() == registry:
                batch.hdel(keys.apps, app)
            return batch if len(batch) else None

        await self._redis.transaction(self._watched(app), plan)
