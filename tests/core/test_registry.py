"""AppRegistry on the embedded bus with inline plugins: lifecycles, sharing, failures."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import anyio
import pytest
import sqlalchemy as sa

from rapid_objection.bus import HOOK_METHODS, ConnectionInfo
from rapid_objection.bus._redis_memory import forget_memory_server
from rapid_objection.core import (
    AppAlreadyRegistered,
    AppNotRegistered,
    AppRegistry,
    ConfigError,
    ConnectionFailed,
    MigrationFailed,
    PluginVeto,
    RegistryError,
)
from rapid_objection.plugin_workers import PluginInterface, current_delivery

pytestmark = pytest.mark.anyio

SAMPLE = Path(__file__).parent / "sample_app"

REGISTER_ORDER = [
    "app_registration_started",
    "connection_created",
    "auto_operations_started",
    "auto_operations_completed",
    "app_registered",
]
UNREGISTER_ORDER = [
    "app_unregistration_started",
    "app_rollback_started",
    "app_rollback_completed",
    "connection_shutdown",
    "app_unregistered",
]


class Recorder(PluginInterface):
    """Records every hook it receives, in order, as (event type, app)."""

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        super().__init__("recorder", "1.0.0")
        self.seen: list[tuple[str, str]] = []

    def _record(self) -> None:
        envelope = current_delivery().envelope
        self.seen.append((envelope.type, envelope.app))

    async def on_app_registration_started(self, app_name: str, config: dict[str, Any]) -> None:
        self._record()

    async def on_connection_created(self, app_name: str, connection: ConnectionInfo) -> None:
        self._record()

    async def on_auto_operations_started(self, app_name: str, connection: Any, config: Any) -> None:
        self._record()

    async def on_auto_operations_completed(self, app_name: str, result: Any) -> None:
        self._record()

    async def on_app_registered(self, app_name: str, connection: Any, config: Any) -> None:
        self._record()

    async def on_app_unregistration_started(self, app_name: str, options: Any) -> None:
        self._record()

    async def on_app_rollback_started(self, app_name: str, connection: Any, options: Any) -> None:
        self._record()

    async def on_app_rollback_completed(self, app_name: str, result: Any) -> None:
        self._record()

    async def on_connection_shutdown(self, app_name: str, connection: Any, options: Any) -> None:
        self._record()

    async def on_app_unregistered(self, app_name: str, options: Any) -> None:
        self._record()

    async def on_operation_failed(
        self, app_name: str, operation: str, error: Any, context: Any
    ) -> None:
        self._record()

    async def on_health_check(self, app_name: str, health_status: dict[str, Any]) -> dict[str, Any]:
        self._record()
        return {"checked_by": "recorder", "saw_status": health_status.get("status")}


class Gatekeeper(PluginInterface):
    """Refuses registrations of apps whose name starts with ``forbidden``."""

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        super().__init__("gatekeeper", "1.0.0")

    async def on_app_registration_started(self, app_name: str, config: dict[str, Any]) -> None:
        if app_name.startswith("forbidden"):
            raise PermissionError(f"{app_name} is not allowed here")


def sample_config(tmp_path: Path, name: str = "shop", **database: Any) -> dict[str, Any]:
    return {
        "database": {"url": f"sqlite:///{tmp_path / (name + '.db')}", **database},
        "migrations": {"directory": str(SAMPLE / "migrations")},
        "seeds": {"directory": str(SAMPLE / "seeds")},
        "models": {"module": "tests.core.sample_app.models"},
    }


@pytest.fixture
async def registry() -> Any:
    """A registry on an embedded bus of its own."""
    name = f"registry-{secrets.token_hex(4)}"
    async with AppRegistry({"bus": {"url": f"memory://{name}", "ack_timeout": 5}}) as reg:
        yield reg
    forget_memory_server(name)


@pytest.fixture
async def recorder(registry: AppRegistry) -> Recorder:
    plugin: Recorder = await registry.load_plugin(Recorder, required=True)
    await registry.refresh_plugins()
    return plugin


class TestLifecycle:
    async def test_hooks_arrive_in_the_documented_order(
        self, registry: AppRegistry, recorder: Recorder, tmp_path: Path
    ) -> None:
        """Registering then unregistering publishes the twelve-hook lifecycle in order."""
        await registry.register_app("shop", sample_config(tmp_path))
        await registry.unregister_app("shop")
        assert [event for event, _ in recorder.seen] == REGISTER_ORDER + UNREGISTER_ORDER
        assert {app for _, app in recorder.seen} == {"shop"}

    async def test_registration_migrates_seeds_and_loads_models(
        self, registry: AppRegistry, tmp_path: Path
    ) -> None:
        """The app is usable at once: its tables, its seed rows, its models."""
        app = await registry.register_app("shop", sample_config(tmp_path))
        user = app.models["User"]
        with app.session() as session:
            names = sorted(session.scalars(sa.select(user.name)))
        assert names == ["admin", "guest"]

    async def test_unregistration_rolls_back_everything(
        self, registry: AppRegistry, tmp_path: Path
    ) -> None:
        """Seeds, then migrations are undone: the database is left without the table."""
        config = sample_config(tmp_path)
        await registry.register_app("shop", config)
        result = await registry.unregister_app("shop")
        assert result.success
        assert [step.operation for step in result.steps] == ["seeds", "migrations", "models"]
        engine = sa.create_engine(config["database"]["url"])
        try:
            assert "users" not in sa.inspect(engine).get_table_names()
        finally:
            engine.dispose()

    async def test_unregister_without_rollback_keeps_the_data(
        self, registry: AppRegistry, recorder: Recorder, tmp_path: Path
    ) -> None:
        """rollback=False skips the rollback events and leaves the tables."""
        config = sample_config(tmp_path)
        await registry.register_app("shop", config)
        recorder.seen.clear()
        await registry.unregister_app("shop", rollback=False)
        assert [event for event, _ in recorder.seen] == [
            "app_unregistration_started",
            "connection_shutdown",
            "app_unregistered",
        ]
        engine = sa.create_engine(config["database"]["url"])
        try:
            assert "users" in sa.inspect(engine).get_table_names()
        finally:
            engine.dispose()


class TestNames:
    async def test_a_duplicate_name_is_refused(self, registry: AppRegistry, tmp_path: Path) -> None:
        """A second registration of a name raises AppAlreadyRegistered naming it."""
        await registry.register_app("shop", sample_config(tmp_path))
        with pytest.raises(AppAlreadyRegistered) as caught:
            await registry.register_app("shop", sample_config(tmp_path))
        assert caught.value.app == "shop"

    @pytest.mark.parametrize("name", ["", " ", "a b", "x" * 65, "../etc", "-lead"], ids=repr)
    async def test_an_invalid_name_is_refused(self, registry: AppRegistry, name: str) -> None:
        """Names outside 1-64 safe characters raise ConfigError."""
        with pytest.raises(ConfigError):
            await registry.register_app(name, {"database": {"url": "sqlite://"}})

    async def test_unregistering_an_unknown_app_raises(self, registry: AppRegistry) -> None:
        """AppNotRegistered names the app."""
        with pytest.raises(AppNotRegistered) as caught:
            await registry.unregister_app("ghost")
        assert caught.value.app == "ghost"

    async def test_concurrent_registrations_of_one_name_one_wins(
        self, registry: AppRegistry, tmp_path: Path
    ) -> None:
        """Two concurrent register_app calls: one app, one AppAlreadyRegistered, one engine."""
        outcomes: list[str] = []

        async def attempt() -> None:
            try:
                await registry.register_app("shop", sample_config(tmp_path))
                outcomes.append("won")
            except AppAlreadyRegistered:
                outcomes.append("refused")

        async with anyio.create_task_group() as group:
            group.start_soon(attempt)
            group.start_soon(attempt)
        assert sorted(outcomes) == ["refused", "won"]
        assert registry.engines.count() == 1


class TestSharedConnections:
    async def test_a_shared_connection_closes_with_its_last_app(
        self, registry: AppRegistry, recorder: Recorder, tmp_path: Path
    ) -> None:
        """use_connection reuses the engine; connection_shutdown comes with the last app."""
        url = f"sqlite:///{tmp_path / 'shared.db'}"
        first = await registry.register_app("billing", {"database": {"url": url, "shared": True}})
        second = await registry.register_app("reports", {"use_connection": "billing"})
        assert second.engine is first.engine
        assert registry.engines.info("reports").reference_count == 2
        recorder.seen.clear()
        await registry.unregister_app("billing")
        assert "connection_shutdown" not in [event for event, _ in recorder.seen]
        await registry.unregister_app("reports")
        assert ("connection_shutdown", "reports") in recorder.seen
        assert registry.engines.count() == 0

    async def test_same_real_url_shares_when_marked_shared(
        self, registry: AppRegistry, tmp_path: Path
    ) -> None:
        """Two shared apps with the same real URL use one engine."""
        url = f"sqlite:///{tmp_path / 'same.db'}"
        first = await registry.register_app("a", {"database": {"url": url, "shared": True}})
        second = await registry.register_app("b", {"database": {"url": url, "shared": True}})
        assert first.engine is second.engine


class TestFailures:
    async def test_a_bad_app_leaves_the_good_ones_working(
        self, registry: AppRegistry, recorder: Recorder, tmp_path: Path
    ) -> None:
        """An unreachable database fails with ConnectionFailed (no password shown), publishes
        operation_failed, and the other apps keep working."""
        good = await registry.register_app("good", sample_config(tmp_path, "good"))
        url = "postgresql+psycopg://shop:hunter2@127.0.0.1:1/shop"
        with pytest.raises(ConnectionFailed) as caught:
            await registry.register_app("bad", {"database": {"url": url}})
        assert "hunter2" not in str(caught.value)
        assert caught.value.app == "bad"
        assert ("operation_failed", "bad") in recorder.seen
        assert not registry.has_app("bad")
        with good.connect() as connection:
            assert connection.execute(sa.text("SELECT count(*) FROM users")).scalar() == 2

    async def test_a_failing_migration_cleans_up_the_connection(
        self, registry: AppRegistry, recorder: Recorder, tmp_path: Path
    ) -> None:
        """MigrationFailed is raised; connection_shutdown follows operation_failed."""
        migrations = tmp_path / "broken"
        migrations.mkdir()
        (migrations / "001_broken.py").write_text(
            "def upgrade(op):\n    raise RuntimeError('no way')\n\ndef downgrade(op):\n    pass\n"
        )
        config = {
            "database": {"url": f"sqlite:///{tmp_path / 'b.db'}"},
            "migrations": {"directory": str(migrations)},
        }
        with pytest.raises(MigrationFailed):
            await registry.register_app("broken", config)
        events = [event for event, app in recorder.seen if app == "broken"]
        assert events[-2:] == ["operation_failed", "connection_shutdown"]
        assert registry.engines.count() == 0

    async def test_an_aborting_plugin_vetoes_a_registration(
        self, registry: AppRegistry, tmp_path: Path
    ) -> None:
        """A required plugin with on_failure=abort that fails raises PluginVeto naming it
        and its consumer; nothing stays open."""
        await registry.load_plugin(Gatekeeper, required=True, on_failure="abort", max_deliveries=1)
        await registry.refresh_plugins()
        with pytest.raises(PluginVeto) as caught:
            await registry.register_app("forbidden-app", {"database": {"url": "sqlite://"}})
        assert caught.value.plugin == "gatekeeper"
        assert caught.value.consumer is not None
        assert not registry.has_app("forbidden-app")
        assert registry.engines.count() == 0
        await registry.register_app("allowed-app", {"database": {"url": "sqlite://"}})


class TestStatusAndHealth:
    async def test_status_shape(self, registry: AppRegistry, tmp_path: Path) -> None:
        """get_status lists the registry, bus, apps with their connection and plugins."""
        await registry.register_app("shop", sample_config(tmp_path))
        status = await registry.get_status()
        assert status["registry"] == registry.id
        assert status["app_count"] == 1
        assert status["apps"]["shop"]["dialect"] == "sqlite"
        assert set(status["plugins"]) >= {"total", "loaded", "failed", "plugins"}

    async def test_health_merges_the_plugins_answers(
        self, registry: AppRegistry, recorder: Recorder, tmp_path: Path
    ) -> None:
        """check_health runs SELECT 1 and merges each plugin's returned dict."""
        await registry.register_app("shop", sample_config(tmp_path))
        health = await registry.check_health("shop")
        assert health["status"] == "healthy"
        assert health["plugins"]["recorder"] == {"checked_by": "recorder", "saw_status": "healthy"}
        status = await registry.get_status()
        assert status["apps"]["shop"]["health"]["plugins"]["recorder"]["checked_by"] == "recorder"


class TestListeners:
    async def test_sync_and_async_listeners_fire_and_failures_are_contained(
        self, registry: AppRegistry, tmp_path: Path
    ) -> None:
        """Both kinds of listener receive app-registered; a raising one breaks nothing."""
        seen: list[str] = []

        def sync_listener(payload: dict[str, Any]) -> None:
            seen.append("sync:" + payload["app"])

        async def async_listener(payload: dict[str, Any]) -> None:
            seen.append("async:" + payload["app"])

        def broken(payload: dict[str, Any]) -> None:
            raise RuntimeError("listener bug")

        registry.on("app-registered", broken)
        registry.on("app-registered", sync_listener)
        registry.on("app-registered", async_listener)
        await registry.register_app("shop", sample_config(tmp_path))
        registry.off("app-registered", sync_listener)
        await registry.register_app("blog", sample_config(tmp_path, "blog"))
        assert seen == ["sync:shop", "async:shop", "async:blog"]


def test_every_hook_is_recorded_by_the_test_plugin() -> None:
    """The recorder implements every hook, so the order test sees all of them."""
    from rapid_objection.plugin_workers import implemented_hooks

    assert set(implemented_hooks(Recorder())) == set(HOOK_METHODS)


class TestReviewedEdges:
    async def test_concurrent_unregistrations_roll_back_one_batch(
        self, registry: AppRegistry, tmp_path: Path
    ) -> None:
        """Two unregister_app calls at once: one rolls back, the other is refused, so a
        second (older) batch is never undone."""
        await registry.register_app("shop", sample_config(tmp_path))
        outcomes: list[str] = []

        async def attempt() -> None:
            try:
                result = await registry.unregister_app("shop")
                outcomes.append("done" if result.success else "failed")
            except AppNotRegistered:
                outcomes.append("refused")

        async with anyio.create_task_group() as group:
            group.start_soon(attempt)
            group.start_soon(attempt)
        assert sorted(outcomes) == ["done", "refused"]
        assert registry.engines.count() == 0

    async def test_a_second_live_registry_with_the_same_id_is_refused(
        self, registry: AppRegistry
    ) -> None:
        """Two registries under one id would share an ack stream: the second one fails."""
        bus = registry.config.bus
        twin = AppRegistry({"registry": {"id": registry.id}, "bus": {"url": bus.url}})
        with pytest.raises(RegistryError) as caught:
            await twin.initialize()
        assert registry.id in str(caught.value)

    async def test_the_connection_manager_says_it_reuses_a_shared_connection(
        self, registry: AppRegistry, tmp_path: Path
    ) -> None:
        """An app on another app's shared connection reports reused in its status."""
        url = f"sqlite:///{tmp_path / 'shared.db'}"
        await registry.register_app("billing", {"database": {"url": url, "shared": True}})
        reports = await registry.register_app("reports", {"use_connection": "billing"})
        assert reports.status()["reused"] is True

    async def test_a_plugin_that_fails_to_load_is_not_awaited(
        self, registry: AppRegistry, tmp_path: Path
    ) -> None:
        """A required plugin whose load failed leaves no policy behind: steps do not wait
        for it."""

        class Broken(PluginInterface):
            def __init__(self, config: dict[str, Any] | None = None) -> None:
                super().__init__("broken", "1.0.0")

            async def validate_configuration(self, config: dict[str, Any]) -> None:
                raise ValueError("no")

        with pytest.raises(Exception, match="configuration is invalid"):
            await registry.load_plugin(Broken, required=True)
        awaited: list[tuple[str, ...]] = []
        registry.on("step", lambda event: awaited.append(event["result"].required))
        await registry.register_app("shop", {"database": {"url": f"sqlite:///{tmp_path}/s.db"}})
        assert len(awaited) == 5
        assert all("broken" not in required for required in awaited)
