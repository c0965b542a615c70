"""The ACL lane: registry, workers and operators as the Redis users ``rapid-objection acl``
prints, on a redis-server of the test's own. Everything works (the server's ACL LOG
stays empty), and every command outside a role is refused by the server."""

from __future__ import annotations

import json
import secrets
import shlex
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import anyio
import pytest
import redis.asyncio as aioredis
from redis import exceptions as redis_errors

from rapid_objection.bus import Bus, Publisher
from rapid_objection.bus._keyfile import KeyFile
from rapid_objection.bus._keyring import Keyring
from rapid_objection.bus._retention import Retention, drop_group, trim_events
from rapid_objection.bus.testing import drained
from rapid_objection.core import AppRegistry
from rapid_objection.plugin_workers import PluginInterface, current_delivery
from rapid_objection.plugin_workers.testing import running_worker
from tests.core.fixtures_migrations import (
    Scripts,
    add_column,
    create_table,
    drop_column,
    drop_table,
)
from tests.core.test_registry import sample_config
from tests.e2e import one_line_error, run_cli

from .plugins import Raiser, Recorder
from .server import RedisServer
from .tally import counts, tally
from .test_faults import emit_all, holding, publish, until_handled
from .workers import process_workers

pytestmark = [pytest.mark.anyio, pytest.mark.slow, pytest.mark.redis_server]

REGISTRY = "acl-registry"
PASSWORD = "s3cret-" + secrets.token_hex(4)
ROLES: dict[str, tuple[str, ...]] = {
    "registry": ("--role", "registry"),
    "recorder": ("--role", "worker", "--plugin", Recorder.NAME),
    "raiser": ("--role", "worker", "--plugin", Raiser.NAME),
    "operator": ("--role", "operator"),
    "redrive": ("--role", "operator", "--allow-redrive", "--user", "redriver"),
    "migrator": ("--role", "operator", "--allow-migrate", "--user", "migrator"),
}
"""Our name of each user -> its ``rapid-objection acl`` options."""


@dataclass
class Users:
    """The users of one namespace on the test's server, and their bus URLs."""

    server: RedisServer
    namespace: str
    urls: dict[str, str]

    async def acl_log(self) -> list[Any]:
        async with self.server.admin() as admin:
            log: list[Any] = await send(admin, "ACL", "LOG")
            return log

    def client(self, user: str) -> aioredis.Redis:
        return aioredis.Redis.from_url(self.urls[user])


async def send(client: Any, *args: str) -> Any:
    """One raw command (``execute_command`` has no annotations in redis-py)."""
    return await client.execute_command(*args)


async def create_users(server: RedisServer, namespace: str) -> dict[str, str]:
    """Apply what ``rapid-objection acl`` prints, set each user's password; their URLs."""
    printed: dict[str, str] = {}

    async def print_user(user: str, options: tuple[str, ...]) -> None:
        code, out, err = await run_cli("acl", "--namespace", namespace, *options)
        assert code == 0, err
        printed[user] = out

    async with anyio.create_task_group() as group:
        for user, options in ROLES.items():
            group.start_soon(print_user, user, options)
    urls: dict[str, str] = {}
    async with server.admin() as admin:
        for user, out in printed.items():
            (line,) = out.splitlines()
            words = shlex.split(line)
            assert words[:2] == ["ACL", "SETUSER"]
            await send(admin, *words)
            await send(admin, "ACL", "SETUSER", words[2], ">" + PASSWORD)
            urls[user] = f"redis://{quote(words[2])}:{PASSWORD}@127.0.0.1:{server.port}/0"
        await send(admin, "ACL", "LOG", "RESET")
    return urls


@pytest.fixture
async def users(server: RedisServer, namespace: str) -> Users:
    return Users(server, namespace, await create_users(server, namespace))


@pytest.fixture
async def registry_bus(users: Users) -> AsyncIterator[Bus]:
    async with Bus.connect(users.urls["registry"], users.namespace) as bus:
        yield bus


async def operator(users: Users, user: str, *args: str) -> tuple[int, str, str]:
    """Run an operator's command (``status``, ``dlq list``...) as ``user``."""
    return await run_cli(
        *args, "--bus-url", users.urls[user], "--namespace", users.namespace, timeout=20
    )


class TestRolesSuffice:
    """Each role's user does its whole job: nothing is refused."""

    async def test_reclaim_after_a_killed_worker(
        self, users: Users, registry_bus: Bus, server: RedisServer
    ) -> None:
        """Two recorder workers as the worker user, one SIGKILLed mid-flight: the other
        claims what it held, every event is handled, and the server refused nothing."""
        bus, plugin, events = registry_bus, Recorder.NAME, 400
        async with process_workers(bus, users.urls["recorder"], server.directory) as workers:
            victim, survivor = await workers.start(Recorder, 2, concurrency=4, claim_idle=0.5)
            async with Publisher(bus, REGISTRY) as publisher, anyio.create_task_group() as group:
                group.start_soon(lambda: publish(publisher, events, sleep=0.005))
                await until_handled(bus, plugin, events // 5)
                await holding(bus, plugin, victim)
                await workers.kill(victim)
            await drained(bus, plugin, timeout=30)
            assert workers.running(survivor), workers.logs()
        result = await tally(bus, plugin)
        assert (result.events, result.lost, result.pending) == (events, 0, 0)
        # The registry's retention and `groups drop` with the registry user.
        assert await trim_events(bus, Retention(max_len=events // 2)) > 0
        assert await drop_group(bus, plugin)
        assert await users.acl_log() == []

    async def test_dead_letters_listed_and_redriven_by_an_operator(
        self, users: Users, registry_bus: Bus, server: RedisServer
    ) -> None:
        """A hook that always fails is dead-lettered by the worker user; the operator user
        lists the letters and cannot re-drive them; the re-drive user can."""
        bus, plugin = registry_bus, Raiser.NAME
        async with process_workers(bus, users.urls["raiser"], server.directory) as workers:
            await workers.start(Raiser, 2, max_deliveries=2)
            async with Publisher(bus, REGISTRY) as publisher:
                results = await emit_all(publisher, 3, plugin, timeout=10)
            await drained(bus, plugin, timeout=30)
            assert {r.outcomes[plugin].status for r in results} == {"failed"}

            code, out, err = await operator(users, "operator", "dlq", "list", "--json")
            assert code == 0, err
            letters = [json.loads(line) for line in out.splitlines()]
            assert len(letters) == 3
            assert all("Traceback" in letter["traceback"] for letter in letters)
            for command in (("status", "--json"), ("replay", "--outcomes", "--format", "jsonl")):
                code, out, err = await operator(users, "operator", *command)
                assert code == 0, err
            outcomes = [o for line in out.splitlines() for o in json.loads(line)["outcomes"]]
            assert [o["status"] for o in outcomes if o["plugin"] == plugin].count(
                "dead_lettered"
            ) == 3
            assert await users.acl_log() == []

            code, out, err = await operator(users, "operator", "dlq", "redrive", letters[0]["id"])
            line = one_line_error(code, out, err)
            assert "XADD refused" in line, line
            assert PASSWORD not in line
            code, out, err = await operator(users, "redrive", "dlq", "redrive", letters[0]["id"])
            assert code == 0, err
            await drained(bus, plugin, timeout=30)
        assert len((await tally(bus, plugin)).letters) == 3  # dead again, as a new letter

    async def test_a_registry_with_an_external_worker(
        self, users: Users, registry_bus: Bus, server: RedisServer, tmp_path: Path
    ) -> None:
        """A registry as the registry user registers and unregisters an app whose
        required plugin runs in a worker process as the worker user."""
        config = {
            "bus": {"url": users.urls["registry"], "namespace": users.namespace},
            "plugins": {
                Recorder.NAME: {
                    "module": "tests.faults.plugins:Recorder",
                    "mode": "external",
                    "required": True,
                }
            },
        }
        bus = registry_bus
        async with process_workers(bus, users.urls["recorder"], server.directory) as workers:
            await workers.start(Recorder)
            async with AppRegistry(config) as registry:
                await registry.register_app("shop", sample_config(tmp_path))
                await registry.unregister_app("shop")
        assert len(await counts(bus, "handled", Recorder.NAME)) == 1
        assert await users.acl_log() == []

    async def test_migrate_asked_by_an_operator(self, users: Users, tmp_path: Path) -> None:
        """``migrate`` as the operator user granted ``--allow-migrate``: the registry user
        that owns the app applies the new migration and answers. The plain operator user
        is refused by the server, in one line, and nothing else is refused."""
        migrations = Scripts.at(tmp_path / "migrations")
        migrations.migration("001_items.py", create_table("items"), drop_table("items"))
        database = f"sqlite:///{tmp_path / 'shop.db'}"
        registry_file = tmp_path / "registry.toml"
        registry_file.write_text(
            f'[bus]\nnamespace = "{users.namespace}"\n\n[apps.shop]\n'
            f'database.url = "{database}"\nmigrations.directory = "{migrations.directory}"\n'
        )
        app = {
            "database": {"url": database},
            "migrations": {"directory": str(migrations.directory)},
        }
        config = {"bus": {"url": users.urls["registry"], "namespace": users.namespace}}
        ask = ("migrate", "shop", "--config", str(registry_file), "--json")
        async with AppRegistry(config) as registry:
            registered = await registry.register_app("shop", app)
            migrations.migration(
                "002_notes.py", add_column("items", "notes"), drop_column("items", "notes")
            )
            code, out, err = await operator(users, "migrator", *ask)
            assert code == 0, err
            refused = await operator(users, "operator", *ask)
            status = registered.migration_status()
        assert json.loads(out)["ran"] == ["002_notes.py"]
        assert (status.batch, status.pending) == (2, ())
        line = one_line_error(*refused)
        assert "XADD refused: NOPERM" in line
        assert PASSWORD not in line
        # The server refused the plain operator's request, and nothing of anyone else's.
        [refusal] = await users.acl_log()
        assert (refusal[b"username"], refusal[b"object"]) == (
            f"ro-{users.namespace}-operator".encode(),
            b"xadd",
        )

    async def test_a_signed_worker(self, users: Users) -> None:
        """With a keyring, a worker as the worker user checks, claims (ZADD NX with its
        pending-list read) and acks signed events; the registry user signs them."""
        ring = KeyFile.generate([Recorder.NAME])
        seen: list[str] = []

        class Counting(PluginInterface):
            def __init__(self) -> None:
                super().__init__(Recorder.NAME)

            async def on_app_registered(self, app_name: str, *_: Any) -> None:
                seen.append(current_delivery().envelope.id)

        namespace, export = users.namespace, Keyring(ring.export(Recorder.NAME))
        async with (
            Bus.connect(users.urls["registry"], namespace, keyring=Keyring(ring)) as bus,
            Bus.connect(users.urls["recorder"], namespace, keyring=export) as worker_bus,
            running_worker(Counting(), worker_bus, concurrency=4),
            Publisher(bus, REGISTRY) as publisher,
        ):
            published = await publish(publisher, 40)
            with anyio.fail_after(10):
                while len(seen) < len(published):
                    await anyio.sleep(0.01)
        assert sorted(seen) == sorted(published)
        assert await users.acl_log() == []


FORBIDDEN: dict[str, list[tuple[str, ...]]] = {
    "recorder": [
        ("XDEL", "@events", "1-0"),
        ("XTRIM", "@events", "MAXLEN", "0"),
        ("DEL", "@events"),
        ("UNLINK", "@events"),
        ("XGROUP", "DESTROY", "@events", "g"),
        ("FLUSHALL",),
        ("FLUSHDB",),
        ("XADD", "ro:{elsewhere}:events", "*", "e", "x"),
        ("KEYS", "*"),
        ("CONFIG", "SET", "maxmemory", "1"),
    ],
    "registry": [
        ("FLUSHALL",),
        ("XDEL", "@dlq", "1-0"),
        ("HSET", "ro:{elsewhere}:plugins", "a", "b"),
        ("KEYS", "*"),
    ],
    "operator": [
        ("XADD", "@events", "*", "e", "x"),
        ("HSET", "@workers", "a", "b"),
        ("XDEL", "@dlq", "1-0"),
        ("DEL", "@events"),
        ("XRANGE", "ro:{elsewhere}:events", "-", "+"),
    ],
    "redrive": [
        ("HSET", "@plugins", "a", "b"),
        ("XTRIM", "@events", "MAXLEN", "0"),
        ("XADD", "@failures", "*", "r", "x"),
        ("DEL", "@dlq"),
    ],
}
"""User -> commands the server must refuse it (``@events``: that key of the namespace)."""


async def test_each_command_outside_a_role_is_refused_by_the_server(users: Users) -> None:
    """NOPERM for every forbidden command of every user; nothing was changed."""
    prefix = f"ro:{{{users.namespace}}}:"
    admitted = []
    for user, commands in FORBIDDEN.items():
        client = users.client(user)
        try:
            await client.ping()
            for command in commands:
                args = [prefix + arg[1:] if arg.startswith("@") else arg for arg in command]
                try:
                    await send(client, *args)
                except redis_errors.NoPermissionError:
                    continue
                admitted.append((user, command))
        finally:
            await client.aclose()
    assert admitted == []


async def test_a_namespace_with_glob_characters_matches_itself_only(
    server: RedisServer,
) -> None:
    """The namespace ``a*b`` is escaped in the key pattern: ``ro:{aXb}:`` keys are refused."""
    urls = await create_users(server, "a*b")
    client = aioredis.Redis.from_url(urls["recorder"])
    try:
        await client.hset("ro:{a*b}:workers", "w", "1")
        with pytest.raises(redis_errors.NoPermissionError):
            await client.hset("ro:{aXb}:workers", "w", "1")
    finally:
        await client.aclose()
