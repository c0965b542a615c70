"""The audit plugin: every event one row of ``ro_audit``, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest
import sqlalchemy as sa

from rapid_objection.bus import (
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
    ConnectionCreated,
    ConnectionInfo,
    ConnectionShutdown,
    Custom,
    Envelope,
    HealthCheck,
    OperationFailed,
    OperationResult,
    Payload,
    Publisher,
    new_event_id,
)
from rapid_objection.core import AppRegistry
from rapid_objection.plugin_workers import RegistryView
from rapid_objection.plugin_workers.plugins.audit import (
    DEFAULT_TABLE,
    DEFAULT_URL,
    AuditPlugin,
    AuditStore,
    audit_row,
    parse_config,
)
from rapid_objection.plugin_workers.testing import call_hook, envelope_for, running_worker

pytestmark = pytest.mark.anyio

Deliver = Callable[..., Awaitable[Ack]]
SAMPLE = Path(__file__).parents[2] / "core" / "sample_app"
CONNECTION = ConnectionInfo(dialect="sqlite", database="shop.db", url="sqlite:///shop.db")
SECRET = "hunter2"  # noqa: S105 - the password that must never reach the audit table
OK = OperationResult(operation="migrations", success=True, items=("001_create_users",))

PAYLOADS: dict[str, Payload] = {
    "app_registration_started": AppRegistrationStarted(config={"database": {"url": "x"}}),
    "connection_created": ConnectionCreated(connection=CONNECTION),
    "auto_operations_started": AutoOperationsStarted(connection=CONNECTION),
    "auto_operations_completed": AutoOperationsCompleted(operations=(OK,)),
    "app_registered": AppRegistered(connection=CONNECTION),
    "app_unregistration_started": AppUnregistrationStarted(options={"rollback": True}),
    "app_rollback_started": AppRollbackStarted(connection=CONNECTION),
    "app_rollback_completed": AppRollbackCompleted(steps=(OK,)),
    "connection_shutdown": ConnectionShutdown(connection=CONNECTION),
    "app_unregistered": AppUnregistered(),
    "operation_failed": OperationFailed(
        operation="migrations", error_type="MigrationFailed", error_message="boom"
    ),
    "health_check": HealthCheck(health={"status": "healthy"}),
}


@pytest.fixture
async def audit(sql_url: str, view: RegistryView) -> AsyncIterator[AuditPlugin]:
    """An initialized audit plugin writing to the lane's database."""
    plugin = AuditPlugin({"url": sql_url, "custom": ["cache-cleared"]})
    await plugin.initialize(view, {})
    yield plugin
    await plugin.shutdown()


@pytest.fixture
def store(sql_url: str) -> Iterator[AuditStore]:
    """The lane's audit table, seen from a program."""
    with AuditStore(sql_url) as opened:
        yield opened


def _envelope(
    payload: Payload, *, app: str = "shop", at: float | None = None, **fields: Any
) -> Envelope:
    envelope = envelope_for(payload, app=app)
    if at is not None:  # an event published then: its id says so too
        fields["time"] = at
        fields.setdefault("id", new_event_id(at))
    return msgspec.structs.replace(envelope, **fields)


class TestRecording:
    def test_the_payloads_cover_every_hook(self) -> None:
        """The examples below exercise all twelve hooks."""
        assert sorted(PAYLOADS) == sorted(HOOK_TYPES)

    @pytest.mark.parametrize("event_type", sorted(PAYLOADS))
    async def test_every_hook_writes_one_row(
        self, audit: AuditPlugin, store: AuditStore, deliver: Deliver, event_type: str
    ) -> None:
        """Each hook records its event: ids, app, registry, time, payload JSON, replay."""
        envelope = _envelope(PAYLOADS[event_type], seq=7)
        ack = await deliver(audit, envelope)
        assert ack.status == "ok"
        [row] = store.query()
        assert (row.type, row.app, row.registry, row.event_id, row.seq) == (
            event_type,
            "shop",
            envelope.registry,
            envelope.id,
            7,
        )
        assert row.time == pytest.approx(envelope.time)
        assert row.payload == msgspec.json.decode(msgspec.json.encode(envelope.payload))
        assert row.payload["type"] == event_type
        assert row.replay is False

    async def test_a_redelivered_event_adds_no_row(
        self, audit: AuditPlugin, store: AuditStore, deliver: Deliver
    ) -> None:
        """Delivering the same event again (after a crash) leaves one row, and says so."""
        envelope = _envelope(PAYLOADS["app_registered"])
        first = await deliver(audit, envelope)
        again = await deliver(audit, envelope, attempt=2)
        assert store.count() == 1
        assert first.result == {"event_id": envelope.id, "recorded": True}
        assert again.result == {"event_id": envelope.id, "recorded": False}
        status = audit.get_status()
        assert (status["recorded"], status["duplicates"]) == (1, 1)

    async def test_acks_column_holds_own_handling(
        self, audit: AuditPlugin, store: AuditStore, deliver: Deliver
    ) -> None:
        """The acks column names the plugin as its worker runs it, and the delivery attempt."""
        await deliver(audit, _envelope(PAYLOADS["app_registered"]), attempt=3)
        [row] = store.query()
        [own] = row.acks
        assert (own["plugin"], own["attempt"]) == ("under-test", 3)
        assert row.recorded >= own["time"] >= row.time

    async def test_the_worker_consumer_is_named(
        self, sql_url: str, view: RegistryView, store: AuditStore
    ) -> None:
        """Run as a worker, the row and its ack record name the worker's consumer."""
        async with (
            running_worker(AuditPlugin({"url": sql_url}), view.bus, consumer="audit-1"),
            Publisher(view.bus, "reg-a") as publisher,
        ):
            result = await publisher.emit(
                AppRegistered(connection=CONNECTION), app="shop", required=["audit"], timeout=5
            )
        assert result.ok
        [row] = store.query()
        assert (row.consumer, row.acks[0]["consumer"], row.registry) == (
            "audit-1",
            "audit-1",
            "reg-a",
        )

    async def test_record_acks_off_leaves_acks_empty(
        self, sql_url: str, view: RegistryView, store: AuditStore, deliver: Deliver
    ) -> None:
        """``record_acks = false`` writes an empty acks list."""
        plugin = AuditPlugin({"url": sql_url, "record_acks": False})
        await plugin.initialize(view, {})
        try:
            await deliver(plugin, _envelope(PAYLOADS["app_registered"]))
        finally:
            await plugin.shutdown()
        assert [row.acks for row in store.query()] == [[]]

    async def test_replayed_events_are_flagged(
        self, audit: AuditPlugin, store: AuditStore, deliver: Deliver
    ) -> None:
        """An event re-delivered by a replay is recorded with its replay flag."""
        await deliver(audit, _envelope(PAYLOADS["app_registered"], replay=True))
        assert [row.replay for row in store.query()] == [True]

    async def test_a_copy_is_recorded_as_the_event_it_replaces(
        self, audit: AuditPlugin, store: AuditStore, deliver: Deliver
    ) -> None:
        """A replay's copy fills a gap under the original id and time, and never doubles it."""
        original = _envelope(PAYLOADS["app_registered"], at=1_700_000_000.123)
        recorded = _envelope(PAYLOADS["connection_created"], at=1_700_000_000.5)
        await deliver(audit, recorded)
        for event in (original, recorded):
            copy = _envelope(event.payload, replay=True, replaces=event.id)
            await deliver(audit, copy)
        rows = store.query()
        assert [(row.event_id, row.replay) for row in rows] == [
            (original.id, True),
            (recorded.id, False),
        ]
        assert rows[0].time == pytest.approx(1_700_000_000.123)

    async def test_configured_custom_events_are_recorded(
        self, audit: AuditPlugin, store: AuditStore, view: RegistryView, deliver: Deliver
    ) -> None:
        """Custom events named in ``custom`` are recorded too, with their data."""
        custom = Custom(name="cache-cleared", data={"keys": 3}, source="cache")
        ack = await deliver(audit, _envelope(custom, app=""), view=view)
        assert ack.status == "ok"
        [row] = store.query()
        assert (row.type, row.payload["name"], row.payload["data"]) == (
            "custom",
            "cache-cleared",
            {"keys": 3},
        )

    async def test_an_uninitialized_plugin_refuses_to_record(self) -> None:
        """A hook before initialize() is an error ack, not a silent loss."""
        ack = await call_hook(AuditPlugin(), PAYLOADS["app_registered"])
        assert isinstance(ack, Ack)
        assert (ack.status, ack.error) == ("error", "the audit plugin is not initialized")

    async def test_health_checks_answer_nothing(
        self, audit: AuditPlugin, store: AuditStore, deliver: Deliver
    ) -> None:
        """A health check is recorded, but its answer (merged into the health) is empty."""
        ack = await deliver(audit, _envelope(PAYLOADS["health_check"]))
        assert (ack.status, ack.result, store.count()) == ("ok", None, 1)


class TestStore:
    @staticmethod
    def _fill(store: AuditStore) -> None:
        store.create()
        for number, (app, event_type) in enumerate(
            [
                ("shop", "app_registration_started"),
                ("billing", "app_registration_started"),
                ("shop", "app_registered"),
                ("shop", "health_check"),
                ("billing", "app_registered"),
            ]
        ):
            envelope = _envelope(PAYLOADS[event_type], app=app, at=1000.0 + number)
            store.record(audit_row(envelope, consumer="c", attempt=1, plugin="audit", acks=True))

    def test_table_and_indexes(self, store: AuditStore) -> None:
        """The table has a unique event_id and indexes by time, app and type."""
        store.create()
        inspector = sa.inspect(store.engine)
        indexes = {tuple(index["column_names"]) for index in inspector.get_indexes(DEFAULT_TABLE)}
        assert {("time",), ("app", "time"), ("type", "time")} <= indexes
        unique = {tuple(c["column_names"]) for c in inspector.get_unique_constraints(DEFAULT_TABLE)}
        assert ("event_id",) in unique

    async def test_workers_starting_together_create_it_once(self, sql_url: str) -> None:
        """Several workers creating the table at the same moment all succeed."""
        stores = [AuditStore(sql_url) for _ in range(4)]
        try:
            async with anyio.create_task_group() as group:
                for store in stores:
                    group.start_soon(anyio.to_thread.run_sync, store.create)
            assert stores[0].query() == []
        finally:
            for store in stores:
                store.close()

    def test_query_is_oldest_first(self, store: AuditStore) -> None:
        """Rows come back in event time order."""
        self._fill(store)
        assert [row.time for row in store.query()] == [1000.0, 1001.0, 1002.0, 1003.0, 1004.0]

    @pytest.mark.parametrize(
        ("filters", "expected"),
        [
            pytest.param({"app": "shop"}, [1000.0, 1002.0, 1003.0], id="app"),
            pytest.param(
                {"types": ["app_registered", "health_check"]}, [1002.0, 1003.0, 1004.0], id="types"
            ),
            pytest.param({"since": 1001.0, "until": 1003.0}, [1001.0, 1002.0, 1003.0], id="range"),
            pytest.param(
                {"since": datetime.fromtimestamp(1003.0, UTC)}, [1003.0, 1004.0], id="datetime"
            ),
            pytest.param({"limit": 2}, [1000.0, 1001.0], id="limit"),
            pytest.param({"app": "shop", "types": ["app_registered"]}, [1002.0], id="combined"),
        ],
    )
    def test_query_filters(
        self, store: AuditStore, filters: dict[str, Any], expected: list[float]
    ) -> None:
        """app, types, since/until (seconds or datetime) and limit narrow the trail."""
        self._fill(store)
        assert [row.time for row in store.query(**filters)] == expected

    def test_query_before_any_row_is_empty(self, store: AuditStore) -> None:
        """A store whose table was never created answers with nothing."""
        assert (store.query(), store.count()) == ([], 0)

    def test_a_memory_store_is_one_database(self) -> None:
        """``sqlite://`` is one database for every thread of the store."""
        with AuditStore("sqlite://") as store:
            store.create()
            store.record(
                audit_row(
                    _envelope(PAYLOADS["app_registered"]),
                    consumer="c",
                    attempt=1,
                    plugin="audit",
                    acks=False,
                )
            )
            assert store.count() == 1

    def test_an_unsafe_table_name_is_refused(self) -> None:
        """A table name is a plain identifier, never SQL."""
        with pytest.raises(ValueError, match="plain identifier"):
            AuditStore("sqlite://", "audit; DROP TABLE users")


class TestConfiguration:
    def test_defaults(self) -> None:
        """Every key has a default: a SQLite file in the working directory, table ro_audit."""
        settings = parse_config({})
        assert (settings.url, settings.table, settings.record_acks, settings.custom) == (
            DEFAULT_URL,
            "ro_audit",
            True,
            (),
        )

    @pytest.mark.parametrize(
        ("config", "message"),
        [
            pytest.param({"table": "bad-name"}, "plain identifier", id="table"),
            pytest.param({"url": "not a url"}, "not a database URL", id="url"),
            pytest.param({"record_acks": "often"}, "record_acks", id="record_acks"),
            pytest.param({"custom": "cache-cleared"}, "custom", id="custom"),
        ],
    )
    async def test_invalid_configuration_is_refused(
        self, config: dict[str, Any], message: str
    ) -> None:
        """validate_configuration names what is wrong."""
        with pytest.raises(ValueError, match=message):
            await AuditPlugin().validate_configuration(config)

    async def test_a_custom_table_is_used(
        self, sql_url: str, view: RegistryView, deliver: Deliver
    ) -> None:
        """``table`` names the audit table."""
        plugin = AuditPlugin({"url": sql_url, "table": "trail"})
        await plugin.initialize(view, {})
        try:
            await deliver(plugin, _envelope(PAYLOADS["app_registered"]))
        finally:
            await plugin.shutdown()
        with AuditStore(sql_url, "trail") as store:
            assert store.count() == 1


class TestInRegistry:
    async def test_an_apps_audit_trail(
        self, registry: AppRegistry, sql_url: str, tmp_path: Path
    ) -> None:
        """Registered and unregistered inline: the app's ten events, in order, redacted."""
        audit_url = f"sqlite:///{tmp_path / 'audit.db'}"
        await registry.load_plugin(AuditPlugin, {"url": audit_url}, required=True)
        await registry.refresh_plugins()
        app_url = sql_url
        if app_url.startswith("postgresql"):  # trust authentication ignores the password
            app_url = sa.make_url(app_url).set(password=SECRET).render_as_string(False)
        await registry.register_app(
            "shop",
            {
                "database": {"url": app_url},
                "migrations": {"directory": str(SAMPLE / "migrations")},
                "seeds": {"directory": str(SAMPLE / "seeds")},
            },
        )
        await registry.unregister_app("shop")
        with AuditStore(audit_url) as store:
            trail = store.query(app="shop")
        assert [row.type for row in trail] == [
            "app_registration_started",
            "connection_created",
            "auto_operations_started",
            "auto_operations_completed",
            "app_registered",
            "app_unregistration_started",
            "app_rollback_started",
            "app_rollback_completed",
            "connection_shutdown",
            "app_unregistered",
        ]
        assert {row.registry for row in trail} == {registry.id}
        assert [row.seq for row in trail] == sorted(row.seq for row in trail)
        assert all(SECRET not in msgspec.json.encode(row.payload).decode() for row in trail)
        assert trail[4].payload["connection"]["dialect"] == sa.make_url(sql_url).get_backend_name()
