"""Least-privilege Redis users: which adapter methods each role calls, hence which commands
it sends (``_sends``), as ``ACL SETUSER`` lines limited to one namespace's keys.

A role lists adapter methods, not commands: the commands come from each method's
``@sends`` declaration, so a method that starts sending a new command brings it into
every role that calls it. The ACL lane (``tests/faults/test_acl.py``) runs registry,
workers and the operator's commands as these users and fails on any refusal.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final

from ._keys import Keys
from ._redis import Redis
from ._redis_batch import Batch
from ._sends import SENT, commands_of

ROLES: Final = ("registry", "worker", "operator")

_CONNECT: Final = (Redis.open, Redis.ping, Redis.server_version, Redis._replicated)
"""Every client: opening the bus, and WAIT after a write when the URL asks for replicas."""

_BATCH: Final = (
    Batch.execute,
    Batch.xadd,
    Batch.xack,
    Batch.pexpire,
    Batch.hset,
    Batch.hincrby,
    Batch.zadd,
)

_READ: Final = (
    Redis.exists,
    Redis.get,
    Redis.hget,
    Redis.hgetall,
    Redis.xlen,
    Redis.xrange,
    Redis.xrevrange,
    Redis.xread,
    Redis.xinfo_groups,
    Redis.xinfo_consumers,
    Redis.xpending,
    Redis.oldest_pending,
    Redis.zrange_by_score,
)
"""What ``status``, ``replay`` (without ``--execute``), ``dlq list`` and ``groups`` read;
ZRANGE: the outcome history."""

_FOOTPRINT: Final = (Redis.scan_keys, Redis.memory_usage)
"""``status``'s memory per family of keys: SCAN of the namespace's pattern (SCAN has no
key, so any user granted it may list key names, though not read them) and MEMORY USAGE."""

_REDRIVE: Final = (Redis.xadd, Redis.xadd_many, Redis.xdel)
"""``dlq redrive`` (publish the dead event again, delete the letter) and ``replay
--execute`` (publish copies)."""

_REQUEST: Final = (Redis.xadd,)
"""``migrate APP up`` and ``seed APP up`` through the bus: a request added to the owning
registry's request stream (the answer is read with XREAD, a read every operator has)."""

_WORKER: Final = (
    *_CONNECT,
    *_READ,
    *_BATCH,
    Redis.supports_readgroup_claim,
    Redis.ensure_group,
    Redis.xreadgroup,
    Redis.xreadgroup_and_pending,
    Redis.xack,
    Redis.xclaim_ids,
    Redis.xautoclaim,
    Redis.delete_consumer,
    Redis.xadd,
    Redis.xadd_many,
    Redis.hset,
    Redis.hsetnx,
    Redis.hdel,
    Redis.hincrby,
    Redis.set,
    Redis.pexpire,
    Redis.xpending_and_claim,
    Redis.zmscore,
    Redis.zremrangebyscore,
)
"""A plugin worker: reads its group, claims from dead consumers, acks, dead-letters,
announces itself (its manifest put back with HSETNX when the namespace lost it) and
beats, records run-once markers, and with a keyring claims each event id it delivers
(a sorted set: ZADD, ZMSCORE, ZREMRANGEBYSCORE) so that a re-added copy runs nothing.
Never XDEL, XTRIM, DEL or XGROUP DESTROY: what it may lose is its own consumer, and only
once it holds nothing."""

_WORKER_ON_DEAD_LETTERS: Final = (Batch.xtrim_minid,)
"""What a worker sends to the dead-letter stream alone: a letter's transaction caps the
stream by age (XTRIM MINID), so XTRIM is granted on that key only (an ACL selector)."""

_NOT_REGISTRY: Final = (Redis.xdel,)
"""XDEL serves a dead-letter re-drive only, an operator's act."""

_CONNECTION_COMMANDS: Final = frozenset({"AUTH", "HELLO"})
"""Allowed to every user by Redis itself; never listed."""


@dataclass(frozen=True, slots=True)
class Role:
    """One role's users: the adapter methods they call, hence the commands they may
    send, and the keys they may touch."""

    name: str
    methods: tuple[str, ...]
    """Qualified names of the adapter methods (``Redis.xadd``) the role's code calls."""
    read_keys: tuple[str, ...] = ()
    """Key patterns the role may only read (``%R~``)."""
    keys: tuple[str, ...] = ()
    """Key patterns the role may read and write (``~``)."""
    scoped: tuple[Scoped, ...] = ()
    """Methods the role calls on some keys only."""

    @property
    def commands(self) -> frozenset[str]:
        """What the role may send on all of its keys."""
        return _sent(self.methods)

    def only_on(self, scope: Scoped) -> frozenset[str]:
        """What the role may send on ``scope``'s keys alone."""
        return _sent(scope.methods) - self.commands

    def senders(self, command: str) -> list[str]:
        """The role's methods that send ``command`` (what the docs show beside it)."""
        methods = (*self.methods, *(m for scope in self.scoped for m in scope.methods))
        return [method for method in methods if command in SENT[method]]


@dataclass(frozen=True, slots=True)
class Scoped:
    """Adapter methods a role calls on some keys only: what they send beyond the role's
    other commands is granted on those keys alone (an ACL selector)."""

    methods: tuple[str, ...]
    keys: tuple[str, ...]


def _sent(methods: Iterable[str]) -> frozenset[str]:
    return frozenset().union(*(SENT[method] for method in methods))


def _names(methods: Iterable[Callable[..., Any]]) -> tuple[str, ...]:
    for method in methods:
        commands_of(method)  # KeyError naming a method without @sends
    return tuple(sorted({method.__qualname__ for method in methods}))


def _registry_methods() -> tuple[str, ...]:
    """Every declared adapter method, but those no registry calls."""
    excluded = set(_names(_NOT_REGISTRY))
    return tuple(sorted(name for name in SENT if name not in excluded))


def pattern(key: str) -> str:
    """``key`` as an ACL key pattern matching itself only: glob characters escaped (the
    braces of the hash tag are no glob characters and stay as they are)."""
    return "".join("\\" + char if char in "*?[]\\" else char for char in key)


def role(
    name: str, namespace: str, *, allow_redrive: bool = False, allow_migrate: bool = False
) -> Role:
    """The role ``name`` (registry, worker or operator) on ``namespace``; an operator
    may also re-drive (``allow_redrive``) and ask registries to migrate and seed
    (``allow_migrate``: XADD on the request streams alone)."""
    keys = Keys(namespace)
    everything = pattern(keys.prefix) + "*"
    if name == "registry":
        return Role(name, _registry_methods(), keys=(everything,))
    if name == "worker":
        dead_letters = Scoped(_names(_WORKER_ON_DEAD_LETTERS), (pattern(keys.dlq),))
        return Role(name, _names(_WORKER), keys=(everything,), scoped=(dead_letters,))
    if name != "operator":
        raise ValueError(f"role {name!r}: choose one of {', '.join(ROLES)}")
    requests = Scoped(_names(_REQUEST), (pattern(keys.prefix) + "requests:*",))
    scoped = (requests,) if allow_migrate else ()
    if not allow_redrive:
        return Role(
            name,
            _names((*_CONNECT, *_READ, *_FOOTPRINT)),
            read_keys=(everything,),
            scoped=scoped,
        )
    return Role(
        name,
        _names((*_CONNECT, *_READ, *_FOOTPRINT, *_REDRIVE)),
        read_keys=(everything,),
        keys=(pattern(keys.events), pattern(keys.dlq)),
        scoped=scoped,
    )


def user_name(namespace: str, role_name: str, plugin: str | None = None) -> str:
    """The default user of a role: ``ro-shop-worker-audit``, ``ro-shop-registry``."""
    return "-".join(part for part in ("ro", namespace, role_name, plugin) if part)


def setuser(user: str, granted: Role) -> str:
    """One ``ACL SETUSER`` line, fit for ``redis-cli`` and safe to apply again: it resets
    commands, keys, channels and selectors and leaves the user's passwords alone (a new
    user has none, so it cannot log in until one is set with ``>password``)."""
    words = ["ACL", "SETUSER", user, "on", "resetkeys", "resetchannels", "clearselectors"]
    words.append("-@all")
    commands = granted.commands - _CONNECTION_COMMANDS
    # A command granted whole covers its subcommands: list only the whole one.
    words += sorted(
        "+" + command.lower()
        for command in commands
        if "|" not in command or command.partition("|")[0] not in commands
    )
    words += ["%R~" + key for key in granted.read_keys]
    words += ["~" + key for key in granted.keys]
    for scope in granted.scoped:
        grants = sorted("+" + command.lower() for command in granted.only_on(scope))
        words.append("(" + " ".join([*grants, *("~" + key for key in scope.keys)]) + ")")
    return " ".join(_quoted(word) for word in words)


def _quoted(word: str) -> str:
    """``word`` as one argument for ``redis-cli``: double-quoted when it holds a space,
    a quote or a backslash."""
    if not any(char in word for char in " \"'\\") and word.isprintable():
        return word
    escaped = word.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'
