"""``run_once``: a hook's side effect runs once per event id, on both lanes."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from rapid_objection.bus import (
    Ack,
    AppRegistered,
    Bus,
    ConnectionInfo,
    Deferred,
    Delivery,
    Publisher,
)
from rapid_objection.bus.testing import drained
from rapid_objection.plugin_workers import PluginInterface, RegistryView, current_delivery, run_once
from rapid_objection.plugin_workers._once import RUNNING, running_ttl_ms
from rapid_objection.plugin_workers.testing import envelope_for, running_worker

pytestmark = pytest.mark.anyio

SQLITE = ConnectionInfo(dialect="sqlite")


class Mailer(PluginInterface):
    """Sends one "email" per app_registered event through ``run_once``.

    ``sync`` picks a plain function as the effect instead of a coroutine function;
    ``fail_sends`` makes that many sends raise; ``stall_sends`` makes that many (async)
    sends hang for a second before sending; ``crash_after_send`` makes the first attempt
    of every event raise after the effect ran.
    """

    def __init__(
        self,
        *,
        sync: bool = False,
        fail_sends: int = 0,
        stall_sends: int = 0,
        crash_after_send: bool = False,
    ) -> None:
        super().__init__("mailer", "1.0.0")
        self.sync = sync
        self.fail_sends = fail_sends
        self.stall_sends = stall_sends
        self.crash_after_send = crash_after_send
        self.sent: list[str] = []
        self.calls = 0

    def _send_now(self, app_name: str) -> str:
        if self.fail_sends > 0:
            self.fail_sends -= 1
            raise ConnectionError("the mail server hung up")
        self.sent.append(app_name)
        return f"sent to {app_name}"

    async def _send_later(self, app_name: str) -> str:
        if self.stall_sends > 0:
            self.stall_sends -= 1
            await anyio.sleep(1)
        await anyio.lowlevel.checkpoint()
        return self._send_now(app_name)

    async def on_app_registered(
        self, app_name: str, connection: ConnectionInfo, config: dict[str, Any]
    ) -> str | None:
        self.calls += 1
        assert self.registry is not None
        effect: Callable[[str], str | Awaitable[str]] = (
            self._send_now if self.sync else self._send_later
        )
        result = await run_once(self.registry, "email", effect, app_name)
        if self.crash_after_send and current_delivery().attempt == 1:
            raise RuntimeError("crashed after sending")
        return result


def _delivery(app: str = "shop") -> Delivery:
    return Delivery("1-1", envelope_for(AppRegistered(connection=SQLITE), app=app))


def _ok(answer: Ack | Deferred) -> Ack:
    assert isinstance(answer, Ack), answer
    assert answer.status == "ok", answer
    return answer


EFFECT_KINDS = [False, True]
EFFECT_IDS = ["async-effect", "sync-effect"]


class TestRunOnce:
    @pytest.mark.parametrize("sync", EFFECT_KINDS, ids=EFFECT_IDS)
    async def test_the_same_event_dispatched_twice_runs_the_effect_once(
        self, bus: Bus, sync: bool
    ) -> None:
        """Handing one delivery to the hook twice sends once; the second call returns None."""
        plugin = Mailer(sync=sync)
        delivery = _delivery()
        async with running_worker(plugin, bus) as worker:
            first = _ok(await worker.dispatcher(delivery))
            second = _ok(await worker.dispatcher(delivery))
        assert plugin.sent == ["shop"]
        assert plugin.calls == 2
        assert (first.result, second.result) == ("sent to shop", None)

    async def test_a_retry_after_a_crash_does_not_repeat_the_effect(self, bus: Bus) -> None:
        """A hook that raises after its effect is retried by the worker, and the retry
        skips the effect that completed: one send, an ok ack on the second attempt."""
        plugin = Mailer(crash_after_send=True)
        async with running_worker(plugin, bus), Publisher(bus, "reg-once") as publisher:
            envelope, _ = await publisher.publish(AppRegistered(connection=SQLITE), app="shop")
            await drained(bus, "mailer", timeout=1.5)
            with anyio.fail_after(1):
                while not publisher.unclaimed_acks:
                    await anyio.sleep(0.02)
        [ack] = publisher.unclaimed_acks
        assert (ack.event_id, ack.status, ack.attempt) == (envelope.id, "ok", 2)
        assert plugin.calls == 2
        assert plugin.sent == ["shop"]

    async def test_a_different_event_runs_the_effect_again(self, bus: Bus) -> None:
        """The key is the event id: a second event sends a second time."""
        plugin = Mailer()
        async with running_worker(plugin, bus) as worker:
            first = _ok(await worker.dispatcher(_delivery("shop")))
            second = _ok(await worker.dispatcher(_delivery("shop")))
        assert plugin.sent == ["shop", "shop"]
        assert first.result == second.result == "sent to shop"

    @pytest.mark.parametrize("sync", EFFECT_KINDS, ids=EFFECT_IDS)
    async def test_an_effect_that_raises_leaves_no_marker(self, bus: Bus, sync: bool) -> None:
        """A failed effect is not remembered: the hook's error is acked as such, and the
        next attempt runs the effect again."""
        plugin = Mailer(sync=sync, fail_sends=1)
        delivery = _delivery()
        async with running_worker(plugin, bus) as worker:
            failed = await worker.dispatcher(delivery)
            marker = await bus.redis.get(bus.keys.once("mailer", delivery.envelope.id, "email"))
            retried = _ok(await worker.dispatcher(delivery))
        assert isinstance(failed, Ack)
        assert (failed.status, failed.error_type) == ("error", "ConnectionError")
        assert marker is None
        assert retried.result == "sent to shop"
        assert plugin.sent == ["shop"]

    async def test_an_effect_cut_off_by_the_hook_timeout_leaves_no_marker(self, bus: Bus) -> None:
        """An effect cancelled by the hook timeout did not complete: no marker stays
        behind, and the next attempt runs it instead of deferring for minutes."""
        plugin = Mailer(stall_sends=1)
        delivery = _delivery()
        async with running_worker(plugin, bus, timeout=0.2) as worker:
            timed_out = await worker.dispatcher(delivery)
            marker = await bus.redis.get(bus.keys.once("mailer", delivery.envelope.id, "email"))
            retried = await worker.dispatcher(delivery)
        assert isinstance(timed_out, Ack)
        assert timed_out.error_type == "HookTimeout"
        assert marker is None
        assert _ok(retried).result == "sent to shop"
        assert plugin.sent == ["shop"]

    async def test_an_effect_running_elsewhere_defers_the_hook(self, bus: Bus) -> None:
        """While another worker holds the "running" marker, the hook is deferred
        (RetryLater) and the effect is not run here."""
        plugin = Mailer()
        delivery = _delivery()
        key = bus.keys.once("mailer", delivery.envelope.id, "email")
        await bus.redis.set(key, RUNNING, ttl_ms=10_000)
        async with running_worker(plugin, bus) as worker:
            answer = await worker.dispatcher(delivery)
        assert isinstance(answer, Deferred)
        assert delivery.envelope.id in answer.reason
        assert plugin.sent == []

    async def test_outside_a_hook_it_raises_lookup_error(self, bus: Bus) -> None:
        """Called where no hook is running, run_once raises LookupError and runs nothing."""
        sent: list[str] = []
        view = RegistryView(bus, plugin="mailer", consumer="c-1")
        with pytest.raises(LookupError, match="inside a hook"):
            await run_once(view, "email", sent.append, "shop")
        assert sent == []


class TestCrashedRunner:
    async def test_the_running_marker_lives_about_one_hook_timeout(self, bus: Bus) -> None:
        """While an effect runs, its "running" marker expires about one hook timeout
        later (not minutes), so a crash mid-effect blocks the event only that long."""
        plugin = Mailer(stall_sends=1)
        delivery = _delivery()
        key = bus.keys.once("mailer", delivery.envelope.id, "email")
        ttls: list[int] = []
        async with (
            running_worker(plugin, bus, timeout=2.0) as worker,
            anyio.create_task_group() as group,
        ):
            group.start_soon(worker.dispatcher, delivery)
            for _ in range(8):  # across the one-second stall: renewed, never lapsing
                await anyio.sleep(0.15)
                if await bus.redis.get(key) == RUNNING:
                    ttls.append(await _pttl(bus, key))
        assert ttls, "the marker was seen while the effect ran"
        assert all(0 < ttl <= running_ttl_ms(2.0) for ttl in ttls)
        assert running_ttl_ms(2.0) <= 5_000
        assert plugin.sent == ["shop"]

    async def test_an_event_whose_runner_crashed_runs_once_the_marker_lapses(
        self, bus: Bus
    ) -> None:
        """The marker a crashed worker left behind defers the redelivered event until it
        lapses; the deferrals do not spend max_deliveries, so the effect then runs once
        and the event is acked, not dead-lettered."""
        plugin = Mailer()
        async with Publisher(bus, "reg-once") as publisher:
            await bus.ensure_group("mailer")
            envelope, _ = await publisher.publish(AppRegistered(connection=SQLITE), app="shop")
            key = bus.keys.once("mailer", envelope.id, "email")
            # What a worker that died mid-effect leaves: a marker of one hook timeout.
            await bus.redis.set(key, RUNNING, ttl_ms=running_ttl_ms(1.0))
            async with running_worker(plugin, bus, timeout=1.0, max_deliveries=2):
                with anyio.fail_after(6):
                    while not publisher.unclaimed_acks:
                        await anyio.sleep(0.05)
        [ack] = publisher.unclaimed_acks
        assert (ack.event_id, ack.status) == (envelope.id, "ok")
        assert plugin.sent == ["shop"]
        assert plugin.calls >= 2
        assert await bus.redis.xlen(bus.keys.dlq) == 0


async def _pttl(bus: Bus, key: str) -> int:
    return int(await bus.redis._client.pttl(key))
