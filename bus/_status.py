"""A snapshot of one namespace: registries, plugins, their consumers, failures."""

from __future__ import annotations

import time

import msgspec

from ._bus import Bus
from ._contract import Failure, RegistryInfo
from ._directory import is_alive
from ._errors import GroupMissing
from ._failures import FailureCount
from ._footprint import MemoryReport, memory_report


class ConsumerStatus(msgspec.Struct, frozen=True, kw_only=True):
    """One consumer of a plugin's group, joined from XINFO CONSUMERS and its heartbeat."""

    name: str
    alive: bool
    pending: int
    idle_ms: int | None = None
    host: str | None = None
    pid: int | None = None
    handled: int = 0
    """Events whose hook this consumer ran (skipped ones not counted), by its heartbeat."""
    hook_errors: int = 0
    """Of those, the ones whose hook raised, by its heartbeat."""
    in_flight: int = 0
    last_duration: float | None = None
    """Seconds the last hook this consumer ran took, by its heartbeat."""
    failures: int = 0
    """Failure records (``ro:{ns}:failures``) against this consumer: errors, timeouts,
    crashes, dead letters, as the registries recorded them."""


class PluginStatus(msgspec.Struct, frozen=True, kw_only=True):
    """One plugin: its manifest, its group's lag and pending count, its consumers."""

    name: str
    version: str | None = None
    hooks: tuple[str, ...] = ()
    required: bool = False
    """Awaited on its hooks: its manifest says so, or a live registry's configuration."""
    required_by: tuple[str, ...] = ()
    """The live registries whose configuration marks it required."""
    group: bool = False
    """Whether its consumer group exists on the event stream."""
    pending: int = 0
    lag: int | None = None
    consumers: tuple[ConsumerStatus, ...] = ()
    orphaned_since: float | None = None
    """Since when retention has seen the group without a live consumer (past the grace
    period it no longer holds retention back); None while it has one."""


class RegistryStatus(msgspec.Struct, frozen=True, kw_only=True):
    info: RegistryInfo
    alive: bool


class StatusReport(msgspec.Struct, frozen=True, kw_only=True):
    url: str
    namespace: str
    time: float
    events: int
    dead_letters: int
    registries: tuple[RegistryStatus, ...]
    plugins: tuple[PluginStatus, ...]
    failure_counts: tuple[FailureCount, ...]
    recent_failures: tuple[Failure, ...]
    memory: MemoryReport | None = None
    """Keys and bytes per family of keys (MEMORY USAGE); None when not collected."""
    signed: bool = False
    """Whether every live registry signs its events (has a keyring); False: the bus is
    unauthenticated, and any client that can write to it is trusted."""

    def json(self) -> bytes:
        """The report as one JSON object: ``status --json`` and the dashboard's
        ``GET /api/status`` both print exactly this."""
        return msgspec.json.encode(self)

    @property
    def unauthenticated(self) -> int:
        """Events dead-lettered because they failed verification (all plugins)."""
        return sum(c.count for c in self.failure_counts if c.kind == "unauthenticated")

    @property
    def forged(self) -> int:
        """Acks ignored because they failed verification."""
        return sum(c.count for c in self.failure_counts if c.kind == "forged")

    def problems(self) -> list[str]:
        """What ``status --check`` fails on: a required plugin without a live consumer,
        a registry whose heartbeat stopped."""
        found = [
            f"required plugin {plugin.name!r} has no live consumer"
            for plugin in self.plugins
            if plugin.required and not any(consumer.alive for consumer in plugin.consumers)
        ]
        found += [
            f"registry {registry.info.id!r} ({registry.info.host}, pid {registry.info.pid})"
            " stopped heartbeating"
            for registry in self.registries
            if not registry.alive
        ]
        return found

    def alive_on(self, host: str, role: str | None = None) -> bool:
        """Whether a live registry or consumer (``role``: only that one) runs on ``host``."""
        registry = any(r.alive and r.info.host == host for r in self.registries)
        consumer = any(c.alive and c.host == host for p in self.plugins for c in p.consumers)
        return {"registry": registry, "consumer": consumer}.get(role or "", registry or consumer)


async def collect_status(bus: Bus, *, recent: int = 20) -> StatusReport:
    """Read everything ``rapid-objection status`` shows, in a handful of round trips."""
    redis, keys = bus.redis, bus.keys
    now = time.time()
    manifests = await bus.directory.manifests()
    workers = await bus.directory.workers()
    groups = {group.name: group for group in await redis.xinfo_groups(keys.events)}
    counts = await bus.failures.counts()
    orphans = {name: float(value) for name, value in (await redis.hgetall(keys.orphans)).items()}
    per_consumer: dict[tuple[str, str | None], int] = {}
    for count in counts:
        slot = (count.plugin, count.consumer)
        per_consumer[slot] = per_consumer.get(slot, 0) + count.count
    registries = tuple(
        RegistryStatus(info=info, alive=is_alive(info.seen, now))
        for info in await bus.directory.registries()
    )
    required_by: dict[str, list[str]] = {}
    for registry in registries:
        for plugin in registry.info.required if registry.alive else ():
            required_by.setdefault(plugin, []).append(registry.info.id)
    plugins: list[PluginStatus] = []
    names = set(manifests) | set(groups) | {w.plugin for w in workers} | set(required_by)
    for name in sorted(names):
        manifest, group = manifests.get(name), groups.get(name)
        beats = {w.consumer: w for w in workers if w.plugin == name}
        try:
            infos = await redis.xinfo_consumers(keys.events, name) if group else []
        except GroupMissing:
            infos = []
        consumers = []
        for consumer in sorted({info.name for info in infos} | set(beats)):
            info = next((i for i in infos if i.name == consumer), None)
            beat = beats.get(consumer)
            consumers.append(
                ConsumerStatus(
                    name=consumer,
                    alive=beat is not None and is_alive(beat.seen, now),
                    pending=info.pending if info else 0,
                    idle_ms=info.idle_ms if info else None,
                    host=beat.host if beat else None,
                    pid=beat.pid if beat else None,
                    handled=beat.handled if beat else 0,
                    hook_errors=beat.failed if beat else 0,
                    in_flight=beat.in_flight if beat else 0,
                    last_duration=beat.last_duration if beat else None,
                    failures=per_consumer.get((name, consumer), 0),
                )
            )
        plugins.append(
            PluginStatus(
                name=name,
                version=manifest.version if manifest else None,
                hooks=manifest.hooks if manifest else (),
                required=bool(manifest and manifest.required) or name in required_by,
                required_by=tuple(sorted(required_by.get(name, ()))),
                group=group is not None,
                pending=group.pending if group else 0,
                lag=group.lag if group else None,
                consumers=tuple(consumers),
                orphaned_since=orphans.get(name) if group is not None else None,
            )
        )
    return StatusReport(
        url=bus.url,
        namespace=bus.namespace,
        time=now,
        events=await redis.xlen(keys.events),
        dead_letters=await redis.xlen(keys.dlq),
        registries=registries,
        plugins=tuple(plugins),
        failure_counts=tuple(counts),
        recent_failures=tuple(await bus.failures.recent(recent)),
        memory=await memory_report(bus),
        signed=any(r.alive for r in registries) and all(
            r.info.signed for r in registries if r.alive
        ),
    )
