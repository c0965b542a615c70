"""One owner means one owner: a registry that lost its app's lease (paused past it)
touches neither the app's database nor its events, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import secrets
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
import sqlalchemy as sa
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream

from rapid_objection.bus import Bus, OperationFailed
from rapid_objection.bus._owners import AppLease
from rapid_objection.bus._redis_memory import forget_memory_server
from rapid_objection.bus.testing import purge
from rapid_objection.core import AppNotOwned, AppRegistry, _fence
from tests.core.test_lifecycle_data import tables
from tests.core.test_registry import SAMPLE
from tests.e2e import REPO_ROOT, subprocess_env

pytestmark = pytest.mark.anyio

TTL = 1.0
"""A short ownership lease, so that a pause of twice as long loses it."""


def app_config(url: str) -> dict[str, Any]:
    return {
        "database": {"url": url},
        "migrations": {"directory": str(SAMPLE / "migrations")},
        "seeds": {"directory": str(SAMPLE / "seeds")},
    }


def registry_config(registry: str, url: str, namespace: str) -> dict[str, Any]:
    return {
        "registry": {"id": registry, "ownership_ttl": TTL},
        "bus": {"url": url, "namespace": namespace, "ack_timeout": 5},
    }


class Child:
    """A registry in a process of its own (``registry_child``), one JSON line per command."""

    def __init__(self, process: Process) -> None:
        self.process = process
        assert process.stdout is not None
        self._out = BufferedByteReceiveStream(process.stdout)

    async def answer(self, timeout: float = 30.0) -> dict[str, Any]:
        with anyio.fail_after(timeout):
            line = await self._out.receive_until(b"\n", 1 << 20)
        answer: dict[str, Any] = json.loads(line)
        return answer

    async def ask(self, command: str) -> dict[str, Any]:
        assert self.process.stdin is not None
        await self.process.stdin.send(command.encode() + b"\n")
        return await self.answer()


@asynccontextmanager
async def child_registry(
    config: dict[str, Any], app: str, app_settings: dict[str, Any]
) -> AsyncIterator[Child]:
    """A registry process that has registered ``app``; stopped (and reaped) on exit."""
    command = [sys.executable, "-m", "tests.core.registry_child"]
    command += [json.dumps(config), app, json.dumps(app_settings)]
    process = await anyio.open_process(command, cwd=REPO_ROOT, env=subprocess_env(), stderr=None)
    try:
        child = Child(process)
        assert await child.answer() == {"registered": True}
        yield child
    finally:
        with anyio.CancelScope(shield=True):
            if process.returncode is None:
                process.send_signal(signal.SIGCONT)
                assert process.stdin is not None
                await process.stdin.send(b"quit\n")
                with anyio.move_on_after(10):
                    await process.wait()
                if process.returncode is None:
                    process.kill()
                    await process.wait()
            await process.aclose()


class TestPausedOwner:
    @pytest.mark.redis_server
    async def test_a_registry_paused_past_its_lease_cannot_unregister(
        self, sql_url: str, redis_url: str, namespace: str
    ) -> None:
        """Registry A (a process) registers an app and is paused (SIGSTOP) past its
        lease; registry B registers the same app on the same database; A, resumed, no
        longer has the app, its unregister_app raises AppNotOwned, and B's tables and
        tracking rows are intact; A reported operation_failed with ownership_lost."""
        try:
            config_a = registry_config("reg-a", redis_url, namespace)
            async with child_registry(config_a, "shop", app_config(sql_url)) as child:
                assert {"users", "ro_migrations", "ro_owners"} <= tables(sql_url)
                child.process.send_signal(signal.SIGSTOP)
                await anyio.sleep(TTL * 2)
                config_b = registry_config("reg-b", redis_url, namespace)
                async with AppRegistry(config_b) as registry_b:
                    await registry_b.register_app("shop", app_config(sql_url))
                    child.process.send_signal(signal.SIGCONT)

                    answer = await child.ask("unregister")
                    assert answer["ok"] is False
                    assert answer["error_type"] == "AppNotOwned"
                    assert "'reg-b' owns it now" in answer["error"]
                    assert await child.ask("has") == {"has_app": False}
                    assert {"users", "ro_migrations", "ro_seeds"} <= tables(sql_url)
                    with registry_b.get_app("shop").engine.connect() as connection:
                        users = connection.execute(sa.text("SELECT name FROM users")).all()
                    assert len(users) == 2  # B's seeded rows: A undid nothing
                    events = (await child.ask("events"))["events"]
                    assert any(e["app"] == "shop" and "reg-b" in e["error"] for e in events)
                    page = await registry_b.bus.history.page(app="shop", types=["operation_failed"])
                    lost = [
                        entry.envelope.payload
                        for entry in page.entries
                        if entry.envelope.registry == "reg-a"
                    ]
                    assert lost
                    assert all(isinstance(payload, OperationFailed) for payload in lost)
                    assert {
                        payload.context.get("reason")
                        for payload in lost
                        if isinstance(payload, OperationFailed)
                    } == {"ownership_lost"}
                    assert (await registry_b.unregister_app("shop")).success
        finally:
            async with Bus.connect(redis_url, namespace) as bus:
                await purge(bus)


@pytest.fixture
async def memory_registries() -> AsyncIterator[tuple[AppRegistry, AppRegistry]]:
    """Two registries on one embedded bus."""
    name = f"own-{secrets.token_hex(4)}"
    url = f"memory://{name}"
    async with (
        AppRegistry(registry_config("reg-a", url, "default")) as registry_a,
        AppRegistry(registry_config("reg-b", url, "default")) as registry_b,
    ):
        yield registry_a, registry_b
    forget_memory_server(name)


class TestLease:
    async def test_renewal_runs_while_the_registry_is_idle(
        self, memory_registries: tuple[AppRegistry, AppRegistry], tmp_path: Path
    ) -> None:
        """The registry's own task renews its leases: another registry cannot take the
        app several ttls later."""
        registry_a, registry_b = memory_registries
        url = f"sqlite:///{tmp_path / 'shop.db'}"
        await registry_a.register_app("shop", app_config(url))
        await anyio.sleep(TTL * 2.5)
        with pytest.raises(Exception, match="already registered by registry 'reg-a'"):
            await registry_b.register_app("shop", app_config(url))
        assert registry_a.has_app("shop")

    async def test_a_lease_taken_over_is_noticed_before_anything_changes(
        self, memory_registries: tuple[AppRegistry, AppRegistry], tmp_path: Path
    ) -> None:
        """Another registry holding the lease (as after a pause of the owner): the
        renewal task finds it, the app is no longer served, unregister_app raises
        AppNotOwned and the database keeps the app's tables."""
        registry_a, _ = memory_registries
        url = f"sqlite:///{tmp_path / 'shop.db'}"
        await registry_a.register_app("shop", app_config(url))
        bus = registry_a.bus
        await bus.redis.delete(bus.keys.app_lease("shop"))
        taken = await bus.directory.owners.claim("shop", "reg-b", 60_000)
        assert taken.token == 2
        await anyio.sleep(TTL)  # past one renewal
        assert not registry_a.has_app("shop")
        with pytest.raises(AppNotOwned) as lost:
            registry_a.get_app("shop")
        assert lost.value.owner == "reg-b"
        with pytest.raises(AppNotOwned):
            await registry_a.unregister_app("shop")
        assert "users" in tables(url)
        assert not registry_a.has_app("shop")
        assert (await bus.directory.owners.holder("shop")) == taken

    async def test_unregister_confirms_the_lease_before_it_acts(
        self, memory_registries: tuple[AppRegistry, AppRegistry], tmp_path: Path
    ) -> None:
        """Taken over just now (before any renewal could notice): unregister_app finds
        out itself, publishes nothing of the app's lifecycle, reports operation_failed
        with reason ownership_lost and raises AppNotOwned; the tables stay."""
        registry_a, _ = memory_registries
        url = f"sqlite:///{tmp_path / 'shop.db'}"
        await registry_a.register_app("shop", app_config(url))
        errors: list[dict[str, Any]] = []
        registry_a.on("error", errors.append)
        bus = registry_a.bus
        await bus.redis.delete(bus.keys.app_lease("shop"))
        await bus.directory.owners.claim("shop", "reg-b", 60_000)
        with pytest.raises(AppNotOwned, match="'reg-b' owns it now"):
            await registry_a.unregister_app("shop")
        assert "users" in tables(url)
        page = await bus.history.page(app="shop")
        types = [entry.envelope.type for entry in page.entries]
        assert "app_unregistration_started" not in types
        failed = [e.envelope.payload for e in page.entries if e.envelope.type == "operation_failed"]
        assert {p.context["reason"] for p in failed if isinstance(p, OperationFailed)} == {
            "ownership_lost"
        }
        assert errors
        assert all(error["app"] == "shop" for error in errors)

    async def test_a_lost_app_can_be_registered_again_once_free(
        self, memory_registries: tuple[AppRegistry, AppRegistry], tmp_path: Path
    ) -> None:
        """Once the other owner let go, the registry that lost the app registers it
        again, with a newer token."""
        registry_a, _ = memory_registries
        url = f"sqlite:///{tmp_path / 'shop.db'}"
        await registry_a.register_app("shop", app_config(url))
        owners = registry_a.bus.directory.owners
        await registry_a.bus.redis.delete(registry_a.bus.keys.app_lease("shop"))
        await owners.claim("shop", "reg-b", 60_000)
        await anyio.sleep(TTL)
        assert not registry_a.has_app("shop")
        await owners.release("shop", "reg-b")
        await registry_a.register_app("shop", app_config(url))
        assert registry_a.has_app("shop")
        assert await owners.holder("shop") == AppLease("shop", "reg-a", 3)


class TestFence:
    def test_a_lower_token_is_refused(self, sql_engine: sa.Engine) -> None:
        """The database keeps the highest token: a lower one changes nothing."""
        assert _fence.record(sql_engine, "shop", 5, "reg-b") == 0
        assert _fence.record(sql_engine, "shop", 3, "reg-a") == 5
        assert _fence.record(sql_engine, "shop", 6, "reg-c") == 5
        assert _fence.record(sql_engine, "blog", 1, "reg-a") == 0

    async def test_a_stale_owner_is_refused_by_the_database(
        self, memory_registries: tuple[AppRegistry, AppRegistry], sql_url: str
    ) -> None:
        """A registry that still holds its lease but whose token the database saw
        surpassed cannot pass the fence unless Redis agrees: here Redis forgot (lost its
        data), so the holder moves its token past the database's and goes on."""
        registry_a, _ = memory_registries
        await registry_a.register_app("shop", app_config(sql_url))
        engine = sa.create_engine(sql_url)
        try:
            _fence.record(engine, "shop", 41, "reg-elsewhere")
            bus = registry_a.bus
            await bus.redis.delete(bus.keys.app_tokens)
            result = await registry_a.unregister_app("shop")
            assert result.success
            with engine.connect() as connection:
                recorded = connection.execute(
                    sa.text("SELECT token, registry FROM ro_owners WHERE app = 'shop'")
                ).one()
            assert tuple(recorded) == (42, "reg-a")
        finally:
            engine.dispose()
