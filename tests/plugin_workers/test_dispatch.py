"""Hook dispatch: one delivered event becomes one call of the plugin's hook and one Ack."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

import anyio
import msgspec
import pytest

from rapid_objection.bus import (
    HOOK_METHODS,
    HOOK_TYPES,
    Ack,
    AppRegistered,
    AppRegistrationStarted,
    AppRollbackCompleted,
    AppRollbackStarted,
    AppUnregistered,
    AppUnregistrationStarted,
    AutoOperationsCompleted,
    AutoOperationsStarted,
    Bus,
    ConnectionCreated,
    ConnectionInfo,
    ConnectionShutdown,
    Custom,
    Delivery,
    HealthCheck,
    OperationFailed,
    OperationResult,
    Payload,
    Publisher,
)
from rapid_objection.bus._contract import payload_type
from rapid_objection.plugin_workers import Dispatcher, PluginInterface, RemoteError, hook_arguments
from rapid_objection.plugin_workers.testing import call_hook, envelope_for, running_worker

pytestmark = pytest.mark.anyio

CONNECTION = ConnectionInfo(
    dialect="postgresql",
    driver="psycopg",
    host="db",
    port=5432,
    database="shop",
    user="shop",
    url="postgresql+psycopg://shop:***@db:5432/shop",
    pool_size=5,
)
CONFIG = {"database": {"url": "sqlite:///shop.db"}, "migrations": {"enabled": True}}
OPTIONS = {"rollback": True, "force": False}
AUTO_RESULT = AutoOperationsCompleted(
    operations=(
        OperationResult(operation="migrations", success=True, items=("001_init.py",)),
        OperationResult(operation="seeds", success=True),
    )
)
ROLLBACK_RESULT = AppRollbackCompleted(
    steps=(OperationResult(operation="seeds", success=True),), success=True
)

# (payload, the arguments the hook receives after app_name), one per hook (docs/hooks.md).
HOOK_CASES: list[tuple[Payload, tuple[Any, ...]]] = [
    (AppRegistrationStarted(config=CONFIG), (CONFIG,)),
    (ConnectionCreated(connection=CONNECTION, reused=True), (CONNECTION,)),
    (AutoOperationsStarted(connection=CONNECTION, config=CONFIG), (CONNECTION, CONFIG)),
    (AUTO_RESULT, (AUTO_RESULT,)),
    (AppRegistered(connection=CONNECTION, config=CONFIG), (CONNECTION, CONFIG)),
    (AppUnregistrationStarted(options=OPTIONS), (OPTIONS,)),
    (AppRollbackStarted(connection=CONNECTION, options=OPTIONS), (CONNECTION, OPTIONS)),
    (ROLLBACK_RESULT, (ROLLBACK_RESULT,)),
    (
        ConnectionShutdown(connection=CONNECTION, shared=True, last_reference=False),
        (CONNECTION, {"shared": True, "last_reference": False, "registry_shutdown": False}),
    ),
    (AppUnregistered(options=OPTIONS), (OPTIONS,)),
    (
        OperationFailed(
            operation="migrate",
            error_type="OperationalError",
            error_message="no such table: users",
            context={"file": "002_users.py"},
        ),
        (
            "migrate",
            RemoteError("OperationalError", "no such table: users"),
            {"file": "002_users.py"},
        ),
    ),
    (
        HealthCheck(health={"status": "healthy", "response_time": 0.002}),
        ({"status": "healthy", "response_time": 0.002},),
    ),
]


def comparable(value: Any) -> Any:
    """RemoteError has no equality of its own; compare it by type and message."""
    if isinstance(value, RemoteError):
        return ("RemoteError", value.type, value.message)
    return value


class Recorder(PluginInterface):
    """Implements all twelve hooks; each records its arguments and returns the hook's name."""

    def __init__(self) -> None:
        super().__init__("recorder", "1.0.0")
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    def _record(self, method: str, *args: Any) -> str:
        self.calls.append((method, args))
        return method

    async def on_app_registration_started(self, app_name: str, config: dict[str, Any]) -> Any:
        return self._record("on_app_registration_started", app_name, config)

    async def on_connection_created(self, app_name: str, connection: ConnectionInfo) -> Any:
        return self._record("on_connection_created", app_name, connection)

    async def on_auto_operations_started(
        self, app_name: str, connection: ConnectionInfo, config: dict[str, Any]
    ) -> Any:
        return self._record("on_auto_operations_started", app_name, connection, config)

    async def on_auto_operations_completed(
        self, app_name: str, result: AutoOperationsCompleted
    ) -> Any:
        return self._record("on_auto_operations_completed", app_name, result)

    async def on_app_registered(
        self, app_name: str, connection: ConnectionInfo, config: dict[str, Any]
    ) -> Any:
        return self._record("on_app_registered", app_name, connection, config)

    async def on_app_unregistration_started(self, app_name: str, options: dict[str, Any]) -> Any:
        return self._record("on_app_unregistration_started", app_name, options)

    async def on_app_rollback_started(
        self, app_name: str, connection: ConnectionInfo, options: dict[str, Any]
    ) -> Any:
        return self._record("on_app_rollback_started", app_name, connection, options)

    async def on_app_rollback_completed(self, app_name: str, result: AppRollbackCompleted) -> Any:
        return self._record("on_app_rollback_completed", app_name, result)

    async def on_connection_shutdown(
        self, app_name: str, connection: ConnectionInfo, options: dict[str, Any]
    ) -> Any:
        return self._record("on_connection_shutdown", app_name, connection, options)

    async def on_app_unregistered(self, app_name: str, options: dict[str, Any]) -> Any:
        return self._record("on_app_unregistered", app_name, options)

    async def on_operation_failed(
        self, app_name: str, operation: str, error: RemoteError, context: dict[str, Any]
    ) -> Any:
        return self._record("on_operation_failed", app_name, operation, error, context)

    async def on_health_check(self, app_name: str, health_status: dict[str, Any]) -> Any:
        return self._record("on_health_check", app_name, health_status)


class Bare(PluginInterface):
    """Implements no hook."""

    def __init__(self) -> None:
        super().__init__("bare")


class SyncPlugin:
    """A duck-typed plugin (no base class) whose hooks are plain functions."""

    name = "sync"

    def __init__(self) -> None:
        self.calls: list[str] = []

    def on_app_registered(
        self, app_name: str, connection: ConnectionInfo, config: dict[str, Any]
    ) -> dict[str, str]:
        self.calls.append(app_name)
        return {"app": app_name, "host": connection.host or ""}

    def on_app_unregistered(self, app_name: str, options: dict[str, Any]) -> None:
        raise LookupError(f"{app_name} was never registered here")

    def on_health_check(self, app_name: str, health_status: dict[str, Any]) -> None:
        time.sleep(0.4)  # a blocking call inside a plain hook


class Returns(PluginInterface):
    """Returns whatever it was built with, or raises it when it is an exception."""

    def __init__(self, value: Any, delay: float = 0.0) -> None:
        super().__init__("returns")
        self.value = value
        self.delay = delay

    async def on_health_check(self, app_name: str, health_status: dict[str, Any]) -> Any:
        if self.delay:
            await anyio.sleep(self.delay)
        if isinstance(self.value, BaseException):
            raise self.value
        return self.value


class Opaque:
    """A value MessagePack cannot carry."""

    def __repr__(self) -> str:
        return "<Opaque postgresql://shop:hunter2@db/shop>"


async def dispatch(plugin: object, payload: Payload, *, timeout: float = 5.0) -> Ack:
    ack = await call_hook(plugin, payload, app="shop", timeout=timeout)
    assert isinstance(ack, Ack)
    return ack


class TestHookArguments:
    @pytest.mark.parametrize(
        ("payload", "arguments"),
        HOOK_CASES,
        ids=[payload_type(payload) for payload, _ in HOOK_CASES],
    )
    async def test_each_hook_receives_its_documented_arguments(
        self, payload: Payload, arguments: tuple[Any, ...]
    ) -> None:
        """The hook of each event type is called once with app_name and its documented arguments."""
        plugin = Recorder()
        ack = await dispatch(plugin, payload)
        method = HOOK_METHODS[payload_type(payload)]
        [(called, received)] = plugin.calls
        assert called == method
        assert [comparable(value) for value in received] == [
            comparable(value) for value in ("shop", *arguments)
        ]
        assert (ack.status, ack.result, ack.plugin, ack.consumer) == (
            "ok",
            method,
            "recorder",
            "test-consumer",
        )

    def test_the_cases_cover_all_twelve_hooks(self) -> None:
        """The argument table above names every lifecycle hook exactly once."""
        assert sorted(payload_type(payload) for payload, _ in HOOK_CASES) == sorted(HOOK_TYPES)

    def test_custom_events_pass_only_their_data(self) -> None:
        """A custom event's handlers receive its data and nothing else."""
        envelope = envelope_for(Custom(name="cache-cleared", data={"keys": 3}, source="cache"))
        assert hook_arguments(envelope) == ({"keys": 3},)


class TestSkipped:
    @pytest.mark.parametrize(
        "payload",
        [payload for payload, _ in HOOK_CASES],
        ids=[payload_type(p) for p, _ in HOOK_CASES],
    )
    async def test_unimplemented_hook_is_skipped(self, payload: Payload) -> None:
        """A hook the plugin does not implement is acked as skipped."""
        ack = await dispatch(Bare(), payload)
        assert (ack.status, ack.result, ack.error, ack.duration) == ("skipped", None, None, 0.0)

    async def test_skipped_hook_is_not_called(self) -> None:
        """Dispatch looks at the plugin's class: a hook attached to the instance is never called."""
        plugin = Bare()
        called: list[str] = []

        async def on_health_check(app_name: str, health_status: dict[str, Any]) -> None:
            called.append(app_name)

        vars(plugin)["on_health_check"] = on_health_check  # shadows the class attribute
        ack = await dispatch(plugin, HealthCheck())
        assert ack.status == "skipped"
        assert called == []

    async def test_custom_event_without_handlers_is_skipped(self) -> None:
        """A custom event nobody registered a handler for is skipped."""
        ack = await dispatch(Recorder(), Custom(name="cache-cleared"))
        assert ack.status == "skipped"


class TestSyncHooks:
    async def test_plain_function_hooks_work(self) -> None:
        """A plugin without base class and with plain (non-async) hooks is dispatched normally."""
        plugin = SyncPlugin()
        ack = await dispatch(plugin, AppRegistered(connection=CONNECTION))
        assert (ack.status, ack.result) == ("ok", {"app": "shop", "host": "db"})
        assert plugin.calls == ["shop"]

    async def test_plain_function_hook_errors_are_acked(self) -> None:
        """A plain hook that raises is acked as an error naming the exception type."""
        ack = await dispatch(SyncPlugin(), AppUnregistered())
        assert (ack.status, ack.error_type, ack.error) == (
            "error",
            "LookupError",
            "shop was never registered here",
        )

    async def test_blocking_plain_hook_is_held_to_its_timeout(self) -> None:
        """A plain hook that blocks past the hook timeout is acked as HookTimeout once its
        thread returned (a thread cannot be stopped), saying that it returned late."""
        started = time.monotonic()
        ack = await dispatch(SyncPlugin(), HealthCheck(), timeout=0.1)
        assert (ack.status, ack.error_type) == ("error", "HookTimeout")
        assert "timed out after 0.1s" in (ack.error or "")
        assert "returned only after" in (ack.error or "")
        assert time.monotonic() - started >= 0.4


class TestErrors:
    async def test_raising_hook_is_acked_as_an_error(self) -> None:
        """An exception becomes an error ack with its type and message, and the duration so far."""
        ack = await dispatch(Returns(KeyError("users"), delay=0.05), HealthCheck())
        assert (ack.status, ack.error_type, ack.error) == ("error", "KeyError", "'users'")
        assert ack.result is None
        assert ack.duration >= 0.05

    async def test_error_messages_have_passwords_masked(self) -> None:
        """A URL password inside an exception message never reaches the ack."""
        error = ConnectionError("cannot reach postgresql://shop:hunter2@db:5432/shop")
        ack = await dispatch(Returns(error), HealthCheck())
        assert ack.error == "cannot reach postgresql://shop:***@db:5432/shop"

    async def test_hook_timeout_is_acked_as_hook_timeout(self) -> None:
        """A hook running past the timeout is cancelled and acked as HookTimeout, with
        the traceback of where it was waiting."""
        started = time.monotonic()
        ack = await dispatch(Returns({"late": True}, delay=2), HealthCheck(), timeout=0.1)
        assert (ack.status, ack.error_type) == ("error", "HookTimeout")
        assert ack.error == "hook on_health_check timed out after 0.1s"
        assert 0.1 <= ack.duration < 0.5
        # The traceback says where the hook was waiting when its time ran out.
        assert ack.traceback is not None
        assert "in on_health_check" in ack.traceback
        assert ack.traceback.rstrip().endswith("CancelledError")
        assert time.monotonic() - started < 0.5

    async def test_hooks_own_timeout_error_is_not_a_hook_timeout(self) -> None:
        """A TimeoutError the hook raises itself, within its time, keeps its own type and text."""
        ack = await dispatch(Returns(TimeoutError("lock wait timed out")), HealthCheck(), timeout=5)
        assert (ack.status, ack.error_type, ack.error) == (
            "error",
            "TimeoutError",
            "lock wait timed out",
        )


class TestResults:
    async def test_secret_keys_in_a_result_are_redacted(self) -> None:
        """Secret-looking keys and URL passwords in a returned value are masked."""
        value = {
            "password": "hunter2",
            "api_token": "abc123",
            "dsn": "postgresql://shop:hunter2@db/shop",
            "nested": [{"client_secret": "s3"}, {"rows": 3}],
            "rows": 3,
        }
        ack = await dispatch(Returns(value), HealthCheck())
        assert ack.result == {
            "password": "***",
            "api_token": "***",
            "dsn": "postgresql://shop:***@db/shop",
            "nested": [{"client_secret": "***"}, {"rows": 3}],
            "rows": 3,
        }

    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            pytest.param(Opaque(), "<Opaque postgresql://shop:***@db/shop>", id="object"),
            pytest.param(
                {"handle": Opaque(), "rows": 3},
                {"handle": "<Opaque postgresql://shop:***@db/shop>", "rows": 3},
                id="dict-holding-object",
            ),
            pytest.param(
                {"password": Opaque()}, {"password": "***"}, id="secret-key-holding-object"
            ),
        ],
    )
    async def test_unencodable_values_become_their_repr(self, value: Any, expected: Any) -> None:
        """A value MessagePack cannot carry is acked as its repr string, secrets masked."""
        ack = await dispatch(Returns(value), HealthCheck())
        assert (ack.status, ack.result) == ("ok", expected)

    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            pytest.param(None, None, id="none"),
            pytest.param((1, "two"), [1, "two"], id="tuple"),
            pytest.param({3}, [3], id="set"),
            pytest.param({1: "one"}, {"1": "one"}, id="int-keys"),
            pytest.param(
                dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.UTC), "2024-05-01T12:00:00Z", id="datetime"
            ),
            pytest.param(
                ConnectionInfo(dialect="sqlite", database="shop.db"),
                {"dialect": "sqlite", "database": "shop.db"},
                id="struct",
            ),
        ],
    )
    async def test_encodable_values_become_builtins(self, value: Any, expected: Any) -> None:
        """Returned values are converted to what MessagePack carries (lists, str keys, strings)."""
        ack = await dispatch(Returns(value), HealthCheck())
        assert (ack.status, ack.result) == ("ok", expected)


class TestDispatcher:
    async def test_ack_carries_attempt_and_replay(self) -> None:
        """The ack repeats the delivery's attempt and the envelope's replay flag."""
        envelope = envelope_for(HealthCheck(), app="shop")
        replayed = msgspec.structs.replace(envelope, replay=True)
        dispatcher = Dispatcher(Recorder(), "recorder", "c-9", timeout=1)
        ack = await dispatcher(Delivery("5-0", replayed, attempt=3))
        assert isinstance(ack, Ack)
        assert (ack.event_id, ack.consumer, ack.attempt, ack.replay) == (
            envelope.id,
            "c-9",
            3,
            True,
        )

    async def test_custom_event_calls_every_handler_with_its_data(self) -> None:
        """Each handler registered for a custom event is called with its data; sync or async."""
        received: list[tuple[str, Any]] = []

        def sync_handler(data: Any) -> str:
            received.append(("sync", data))
            return "sync"

        async def async_handler(data: Any) -> str:
            received.append(("async", data))
            return "async"

        handlers = {"cache-cleared": [sync_handler, async_handler]}
        dispatcher = Dispatcher(
            Bare(),
            "bare",
            "c-1",
            timeout=1,
            custom_handlers=lambda name: handlers.get(name, []),
        )
        envelope = envelope_for(Custom(name="cache-cleared", data={"app": "shop"}))
        ack = await dispatcher(Delivery("1-0", envelope))
        assert isinstance(ack, Ack)
        assert received == [("sync", {"app": "shop"}), ("async", {"app": "shop"})]
        assert (ack.status, ack.result) == ("ok", ["sync", "async"])
        other = await dispatcher(Delivery("2-0", envelope_for(Custom(name="other"))))
        assert isinstance(other, Ack)
        assert other.status == "skipped"

    def test_hooks_are_the_implemented_ones(self) -> None:
        """A dispatcher knows which event types its plugin implements."""
        assert Dispatcher(Recorder(), "r", "c", timeout=1).hooks == frozenset(HOOK_TYPES)
        assert Dispatcher(Bare(), "b", "c", timeout=1).hooks == frozenset()
        assert Dispatcher(SyncPlugin(), "s", "c", timeout=1).hooks == frozenset(
            {"app_registered", "app_unregistered", "health_check"}
        )


class BlockingHealth:
    """A plain ``def`` health hook that blocks its thread for ``seconds``; records when
    each call started and returned, and how many ran at once."""

    name = "blocking"

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.spans: list[tuple[str, float, float]] = []
        self.running = 0
        self.most = 0

    def on_health_check(self, app_name: str, health_status: dict[str, Any]) -> None:
        self.running += 1
        self.most = max(self.most, self.running)
        started = time.monotonic()
        time.sleep(self.seconds)
        self.running -= 1
        self.spans.append((app_name, started, time.monotonic()))


class TestBlockingHooksPastTheirTimeout:
    async def test_the_apps_next_event_waits_until_the_thread_returned(self, bus: Bus) -> None:
        """A plain def hook past its timeout keeps its app's lane until its thread really
        returns: the next event of that app starts after it, and the overrun is acked as
        a HookTimeout that says the hook returned late."""
        plugin = BlockingHealth(0.5)
        async with (
            running_worker(plugin, bus, timeout=0.15, consumer="w-1"),
            Publisher(bus, "reg") as publisher,
        ):
            await publisher.refresh_directory()
            results = []
            for _ in range(2):
                results.append(
                    await publisher.emit(
                        HealthCheck(health={}), app="shop", required=["blocking"], timeout=3
                    )
                )
            with anyio.fail_after(3):
                while len(plugin.spans) < 2:
                    await anyio.sleep(0.02)
        (_, _, first_end), (_, second_start, _) = sorted(plugin.spans, key=lambda s: s[1])
        assert second_start >= first_end
        outcome = results[0].outcomes["blocking"]
        assert outcome.status == "failed"
        assert "HookTimeout" in (outcome.error or "")
        assert "returned only after" in (outcome.error or "")

    async def test_threads_per_worker_are_capped_by_its_concurrency(self, bus: Bus) -> None:
        """Overrunning def hooks of four apps on a worker of concurrency 2: never more
        than two threads run them at once (none is abandoned to pile up)."""
        plugin = BlockingHealth(0.3)
        async with (
            running_worker(plugin, bus, timeout=0.05, concurrency=2),
            Publisher(bus, "reg") as publisher,
        ):
            for app in ("a", "b", "c", "d"):
                await publisher.publish(HealthCheck(health={}), app=app)
            with anyio.fail_after(5):
                while len(plugin.spans) < 4:
                    await anyio.sleep(0.02)
        assert plugin.most <= 2
