"""The directory of the bus: plugin manifests, worker and registry heartbeats, app owners."""

from __future__ import annotations

import time

from ._constants import ALIVE_AFTER_HEARTBEATS, HEARTBEAT_INTERVAL
from ._contract import (
    LoadError,
    Manifest,
    RegistryInfo,
    WorkerInfo,
    decode_load_error,
    decode_manifest,
    decode_registry,
    decode_worker,
    encode,
)
from ._keys import Keys
from ._owners import AppLease, AppOwners
from ._redis import Redis


def is_alive(seen: float, now: float | None = None) -> bool:
    """Whether a heartbeat at ``seen`` is recent enough to call its sender alive."""
    age = (time.time() if now is None else now) - seen
    return age < HEARTBEAT_INTERVAL * ALIVE_AFTER_HEARTBEATS


LEASE_MS = int(HEARTBEAT_INTERVAL * ALIVE_AFTER_HEARTBEATS * 1000)
"""How long a registry's hold on its id outlives its last heartbeat (as ``is_alive``)."""


def worker_field(plugin: str, consumer: str) -> str:
    return f"{plugin}|{consumer}"


class Directory:
    """Who is on the bus: read and written by registries and workers alike."""

    def __init__(self, redis: Redis, keys: Keys) -> None:
        self._redis = redis
        self._keys = keys
        self.owners = AppOwners(redis, keys)
        """The app leases (claim, renew, release): see ``_owners``."""

    async def announce(self, manifest: Manifest) -> None:
        """Publish (or replace) a plugin's manifest; a started worker clears load errors."""
        await self._redis.hset(self._keys.plugins, manifest.plugin, encode(manifest))
        await self._redis.hdel(self._keys.load_errors, manifest.plugin)

    async def restore_manifest(self, manifest: Manifest) -> bool:
        """Write ``manifest`` back unless its plugin has one (HSETNX); True when it had
        none: the namespace lost it, or it was never announced."""
        return await self._redis.hsetnx(self._keys.plugins, manifest.plugin, encode(manifest))

    async def report_load_error(self, error: LoadError) -> None:
        """Say why a worker of a plugin could not start, for the registry waiting on it."""
        await self._redis.hset(self._keys.load_errors, error.plugin, encode(error))

    async def load_error(self, plugin: str) -> LoadError | None:
        raw = await self._redis.hget(self._keys.load_errors, plugin)
        return None if raw is None else decode_load_error(raw)

    async def manifests(self) -> dict[str, Manifest]:
        raw = await self._redis.hgetall(self._keys.plugins)
        return {name: decode_manifest(value) for name, value in raw.items()}

    async def beat_worker(self, info: WorkerInfo) -> bool:
        """Write a worker's heartbeat; True when its record was not there."""
        return await self._redis.hset(
            self._keys.workers, worker_field(info.plugin, info.consumer), encode(info)
        )

    async def workers(self, plugin: str | None = None) -> list[WorkerInfo]:
        raw = await self._redis.hgetall(self._keys.workers)
        infos = [decode_worker(value) for value in raw.values()]
        return sorted(
            (info for info in infos if plugin is None or info.plugin == plugin),
            key=lambda info: (info.plugin, info.consumer),
        )

    async def forget_worker(self, plugin: str, consumer: str) -> None:
        await self._redis.hdel(self._keys.workers, worker_field(plugin, consumer))

    async def beat_registry(self, info: RegistryInfo) -> bool:
        """Write a registry's heartbeat; True when its record was not there."""
        return await self._redis.hset(self._keys.registries, info.id, encode(info))

    async def registries(self) -> list[RegistryInfo]:
        raw = await self._redis.hgetall(self._keys.registries)
        return sorted((decode_registry(value) for value in raw.values()), key=lambda r: r.id)

    async def claim_registry(self, registry: str, holder: str) -> str | None:
        """Hold (or keep holding) id ``registry`` for ``holder`` (``host|pid``) for one
        liveness window; returns the other live holder when there is one."""
        key = self._keys.registry_lease(registry)
        for _ in range(3):
            if await self._redis.set(key, holder.encode(), ttl_ms=LEASE_MS, only_if_absent=True):
                return None
            current = await self._redis.get(key)
            if current is None:
                continue  # expired in between: try again
            if current.decode() != holder:
                return current.decode()
            await self._redis.set(key, holder.encode(), ttl_ms=LEASE_MS)
            return None
        return None

    async def release_registry(self, registry: str, holder: str) -> None:
        """Let go of id ``registry`` unless another holder has it by now."""
        key = self._keys.registry_lease(registry)
        current = await self._redis.get(key)
        if current is not None and current.decode() == holder:
            await self._redis.delete(key)

    async def forget_registry(self, registry: str) -> None:
        await self._redis.hdel(self._keys.registries, registry)

    async def claim_app(self, app: str, registry: str, ttl_ms: int = LEASE_MS) -> AppLease:
        """Take the lease of ``app`` for ``registry`` unless another registry holds it;
        returns the lease that holds now (see ``_owners``)."""
        return await self.owners.claim(app, registry, ttl_ms)

    async def release_app(self, app: str, registry: str) -> None:
        """Drop ``registry``'s lease on ``app`` (another registry's lease stays)."""
        await self.owners.release(app, registry)

    async def apps(self) -> dict[str, str]:
        """App name -> the registry that owns it."""
        owners = await self._redis.hgetall(self._keys.apps)
        return {app: owner.decode() for app, owner in owners.items()}
