"""Redaction: no password or secret-looking value ever reaches the bus.

As docs/architecture.md ("Redaction: no secret on the bus") promises.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest

from rapid_objection.bus import (
    EVENT_TYPES,
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
    EventType,
    HealthCheck,
    OperationFailed,
    OperationResult,
    Payload,
    Publisher,
    mask_url,
    redact,
)
from rapid_objection.bus._contract import encode
from rapid_objection.bus._redis_memory import forget_memory_server
from rapid_objection.bus.testing import drained
from rapid_objection.plugin_workers import PluginInterface, RegistryView
from rapid_objection.plugin_workers.testing import call_hook, running_worker

pytestmark = pytest.mark.anyio

SECRET = "hunter2-S3CRET"  # noqa: S105 - the planted secret that must never reach Redis
DATABASE_URL = f"postgresql+psycopg://shop:{SECRET}@db.internal:5432/shop"
MASKED_URL = "postgresql+psycopg://shop:***@db.internal:5432/shop"


def app_config() -> dict[str, Any]:
    """An app's raw configuration, as a registry holds it: secrets in the clear."""
    return {
        "database": {"url": DATABASE_URL, "password": SECRET, "pool_size": 5},
        "api_key": SECRET,
        "credentials": {"user": "shop", "password": SECRET},
        "plugins": {"audit": {"token": SECRET, "private_key": SECRET}},
        "replicas": [{"url": DATABASE_URL.replace("db.internal", "replica.internal")}],
        "migrations": {"directory": "migrations"},
    }


def connection() -> ConnectionInfo:
    """A connection whose URL still carries the password (the registry forgot to mask it)."""
    return ConnectionInfo(
        dialect="postgresql",
        driver="psycopg",
        host="db.internal",
        port=5432,
        database="shop",
        user="shop",
        url=DATABASE_URL,
        pool_size=5,
    )


def results() -> tuple[OperationResult, ...]:
    return (
        OperationResult(
            operation="migrations",
            success=False,
            error=f"could not connect to {DATABASE_URL}",
            details={"url": DATABASE_URL, "password": SECRET},
        ),
    )


def leaky_payloads() -> dict[EventType, Payload]:
    """One payload per event type, each built from secrets exactly as a registry holds them."""
    options = {"rollback": True, "force": False, "token": SECRET}
    payloads: dict[EventType, Payload] = {
        "app_registration_started": AppRegistrationStarted(config=app_config()),
        "connection_created": ConnectionCreated(connection=connection()),
        "auto_operations_started": AutoOperationsStarted(
            connection=connection(), config=app_config()
        ),
        "auto_operations_completed": AutoOperationsCompleted(operations=results(), success=False),
        "app_registered": AppRegistered(connection=connection(), config=app_config()),
        "app_unregistration_started": AppUnregistrationStarted(options=options),
        "app_rollback_started": AppRollbackStarted(connection=connection(), options=options),
        "app_rollback_completed": AppRollbackCompleted(steps=results(), success=False),
        "connection_shutdown": ConnectionShutdown(connection=connection(), last_reference=True),
        "app_unregistered": AppUnregistered(options=options),
        "operation_failed": OperationFailed(
            operation="register_app",
            error_type="OperationalError",
            error_message=f"connection to {DATABASE_URL} failed",
            context={"url": DATABASE_URL, "secret": SECRET},
        ),
        "health_check": HealthCheck(
            health={"database": {"url": DATABASE_URL, "status": "ok"}, "password": SECRET}
        ),
        "custom": Custom(
            name="cache.flush", data={"dsn": DATABASE_URL, "api_key": SECRET}, source="cache"
        ),
    }
    assert set(payloads) == set(EVENT_TYPES)
    return payloads


class TestMaskUrl:
    @pytest.mark.parametrize(
        ("url", "masked"),
        [
            pytest.param(
                "postgresql://shop:hunter2@db:5432/shop",
                "postgresql://shop:***@db:5432/shop",
                id="postgres",
            ),
            pytest.param(
                "postgresql+psycopg://shop:hun@ter2:S3CRET@db/shop",
                "postgresql+psycopg://shop:***@db/shop",
                id="postgres-at-and-colon-in-password",
            ),
            pytest.param(
                "mysql+pymysql://root:a@b:c@d@mysql.local:3306/x?charset=utf8mb4",
                "mysql+pymysql://root:***@mysql.local:3306/x?charset=utf8mb4",
                id="mysql-several-at-signs",
            ),
            pytest.param(
                "mysql://root:hunter2@mysql.local",
                "mysql://root:***@mysql.local",
                id="mysql-no-path",
            ),
            pytest.param(
                "redis://:hunter2@localhost:6379/0",
                "redis://:***@localhost:6379/0",
                id="redis-password-only",
            ),
            pytest.param(
                "rediss://default:pa:ss@w0rd@cache.example.com:6380/1",
                "rediss://default:***@cache.example.com:6380/1",
                id="rediss-user-and-password",
            ),
            pytest.param(
                "redis://localhost:6379/0?password=hunter2",
                "redis://localhost:6379/0?password=***",
                id="redis-query-password",
            ),
            pytest.param(
                "postgresql://shop@db/shop?sslmode=require&password=hunter2&application_name=x",
                "postgresql://shop@db/shop?sslmode=require&password=***&application_name=x",
                id="postgres-query-password-between-others",
            ),
            pytest.param(
                "https://api.example.com/v1?token=abc123&api_key=def456",
                "https://api.example.com/v1?token=***&api_key=***",
                id="query-token-and-api-key",
            ),
            pytest.param(
                "postgresql://db/shop?client_secret=hunter2",
                "postgresql://db/shop?client_secret=***",
                id="query-client-secret",
            ),
            pytest.param(
                "postgresql://db/shop?sslmode=verify-full&sslpassword=hunter2",
                "postgresql://db/shop?sslmode=verify-full&sslpassword=***",
                id="query-sslpassword",
            ),
        ],
    )
    def test_masks_the_password(self, url: str, masked: str) -> None:
        """The password, wherever it sits in the URL, is replaced by the mask."""
        assert mask_url(url) == masked

    @pytest.mark.parametrize(
        "url",
        [
            pytest.param("sqlite:///var/data/shop.db", id="sqlite-file"),
            pytest.param("sqlite://", id="sqlite-memory"),
            pytest.param("postgresql://shop@db:5432/shop", id="user-without-password"),
            pytest.param("redis://localhost:6379/0", id="redis-no-auth"),
            pytest.param("memory://test", id="embedded-bus"),
            pytest.param("postgresql://db/shop?sslmode=require", id="harmless-query"),
        ],
    )
    def test_leaves_urls_without_secrets_alone(self, url: str) -> None:
        """A URL that holds no secret comes back unchanged."""
        assert mask_url(url) == url

    @pytest.mark.parametrize(
        ("text", "masked"),
        [
            pytest.param(
                f"cannot connect to postgresql://nouser@db/shop?password={SECRET}: refused",
                "cannot connect to postgresql://nouser@db/shop?password=***: refused",
                id="query-password-then-colon",
            ),
            pytest.param(
                f"cannot connect to {DATABASE_URL}: refused",
                f"cannot connect to {MASKED_URL}: refused",
                id="userinfo-password-then-colon",
            ),
            pytest.param(
                f"postgresql://db/shop?password=pa:{SECRET}:: refused",
                "postgresql://db/shop?password=***: refused",
                id="colons-inside-the-password",
            ),
            pytest.param(
                f"tried https://api.example.com/v1?token={SECRET}, then gave up",
                "tried https://api.example.com/v1?token=***, then gave up",
                id="query-token-then-comma",
            ),
            pytest.param(
                f"no answer from postgresql://db/shop?password={SECRET}.",
                "no answer from postgresql://db/shop?password=***.",
                id="query-password-ends-the-sentence",
            ),
            pytest.param(
                f"postgresql://db/shop?password={SECRET}.&sslmode=require",
                "postgresql://db/shop?password=***&sslmode=require",
                id="dot-before-the-next-parameter",
            ),
            pytest.param(
                f"host=db password={SECRET}: authentication failed",
                "host=db password=***: authentication failed",
                id="keyword-password-then-colon",
            ),
        ],
    )
    def test_keeps_the_separator_after_a_masked_value(self, text: str, masked: str) -> None:
        """The ':' (',', '.') between a masked value and the rest of a message stays
        the message's, also when the masked message is masked again (an error naming a
        masked URL, logged through mask_url); the secret never shows."""
        assert mask_url(text) == masked
        assert mask_url(masked) == masked
        assert SECRET not in masked

    def test_masks_every_url_inside_a_message(self) -> None:
        """Each URL inside a longer text (an error message) has its password masked."""
        text = f"primary {DATABASE_URL} failed, then postgresql://ro:other-{SECRET}@replica/shop"
        masked = mask_url(text)
        assert SECRET not in masked
        assert masked.startswith(f"primary {MASKED_URL} failed")


class TestRedact:
    @pytest.mark.parametrize(
        "key",
        [
            "password",
            "PASSWORD",
            "db_password",
            "passwd",
            "secret",
            "client_secret",
            "token",
            "auth_token",
            "api_key",
            "apiKey",
            "access_key",
            "credentials",
            "private_key",
        ],
    )
    def test_masks_values_under_secret_keys_at_any_depth(self, key: str) -> None:
        """A value under a secret-looking key is masked, in nested dicts and lists alike."""
        value = {"apps": [{"shop": {"plugins": ({key: SECRET, "name": "audit"},)}}]}
        cleaned = redact(value)
        assert cleaned == {"apps": [{"shop": {"plugins": [{key: "***", "name": "audit"}]}}]}

    def test_masks_a_whole_structure_under_a_secret_key(self) -> None:
        """A dict or list under a secret-looking key is masked as a whole, not walked."""
        cleaned = redact({"credentials": {"user": "shop", "password": SECRET}, "tokens": [SECRET]})
        assert cleaned == {"credentials": "***", "tokens": "***"}

    @pytest.mark.parametrize(
        ("key", "value"),
        [
            ("host", "db.internal"),
            ("port", 5432),
            ("database", "shop"),
            ("user", "shop"),
            ("username", "shop"),
            ("pool_size", 5),
            ("echo", False),
            ("keys", ["a", "b"]),
            ("key_prefix", "shop:"),
            ("migrations", {"directory": "migrations", "table": "schema_migrations"}),
            ("timeout", 2.5),
            ("name", None),
        ],
    )
    def test_leaves_harmless_keys_alone(self, key: str, value: Any) -> None:
        """Values under ordinary keys pass through unchanged."""
        assert redact({"outer": [{key: value}]}) == {"outer": [{key: value}]}

    def test_masks_url_passwords_under_harmless_keys(self) -> None:
        """A URL under an ordinary key keeps its place, with its password masked."""
        cleaned = redact({"database": {"url": DATABASE_URL}, "replicas": [DATABASE_URL]})
        assert cleaned == {"database": {"url": MASKED_URL}, "replicas": [MASKED_URL]}

    def test_masks_keyword_connection_strings(self) -> None:
        """A libpq keyword DSN under an ordinary key does not leak its password."""
        cleaned = redact({"dsn": f"host=db.internal dbname=shop user=shop password={SECRET}"})
        assert SECRET not in repr(cleaned)

    def test_does_not_change_its_argument(self) -> None:
        """Redaction returns a copy; the registry's own configuration keeps its secrets."""
        config = app_config()
        redact(config)
        assert config == app_config()

    def test_whole_app_config_has_no_secret_left(self) -> None:
        """A full app configuration loses every copy of its secret and keeps the rest."""
        cleaned = redact(app_config())
        assert SECRET not in repr(cleaned)
        assert cleaned["database"]["pool_size"] == 5
        assert cleaned["migrations"] == {"directory": "migrations"}


@pytest.fixture
def offline_publisher() -> Iterator[Publisher]:
    """A publisher on an embedded bus that is never opened: builds envelopes, sends nothing."""
    name = f"offline-{secrets.token_hex(4)}"
    yield Publisher(Bus.connect(f"memory://{name}", "redaction"), "reg-a")
    forget_memory_server(name)


class TestPublisherEnvelope:
    @pytest.mark.parametrize("event_type", EVENT_TYPES)
    def test_encoded_envelope_holds_no_secret(
        self, offline_publisher: Publisher, event_type: EventType
    ) -> None:
        """The bytes a publisher would XADD for each event type hold no copy of the secret."""
        envelope = offline_publisher.envelope(leaky_payloads()[event_type], app="shop")
        assert SECRET.encode() not in encode(envelope)

    def test_connection_keeps_everything_but_the_password(
        self, offline_publisher: Publisher
    ) -> None:
        """Redaction masks the URL's password and leaves the connection's other facts intact."""
        envelope = offline_publisher.envelope(ConnectionCreated(connection=connection()))
        assert isinstance(envelope.payload, ConnectionCreated)
        sent = envelope.payload.connection
        assert sent.url == MASKED_URL
        assert (sent.host, sent.port, sent.database, sent.user) == (
            "db.internal",
            5432,
            "shop",
            "shop",
        )


class Opaque:
    """Something MessagePack cannot carry."""


class TestAckRedaction:
    async def test_unencodable_result_does_not_leak_its_secrets(self) -> None:
        """A hook result holding an object MessagePack cannot carry is still redacted by key."""

        class Prober(PluginInterface):
            async def on_health_check(self, app_name: str, health_status: dict[str, Any]) -> Any:
                return {"password": SECRET, "probe": Opaque()}

        ack = await call_hook(Prober("prober"), HealthCheck(health={"status": "ok"}))
        assert isinstance(ack, Ack)
        assert ack.status == "ok"
        assert SECRET.encode() not in encode(ack)

    async def test_error_message_with_a_url_is_masked(self) -> None:
        """A hook that fails with the database URL in its message acks with it masked."""

        class Failing(PluginInterface):
            async def on_app_registered(
                self, app_name: str, connection: ConnectionInfo, config: dict[str, Any]
            ) -> Any:
                raise ConnectionError(f"cannot reach {DATABASE_URL}")

        ack = await call_hook(Failing("failing"), AppRegistered(connection=connection()))
        assert isinstance(ack, Ack)
        assert ack.status == "error"
        assert ack.error == f"cannot reach {MASKED_URL}"


class Tattler(PluginInterface):
    """Handles every hook and custom event; each answer carries its own copy of the secret."""

    def __init__(self) -> None:
        super().__init__("tattler", "1.0.0")
        self.seen: list[str] = []

    async def initialize(self, registry: RegistryView, config: dict[str, Any]) -> None:
        await super().initialize(registry, config)
        registry.on("cache.flush", self.on_flush)

    def on_flush(self, data: Any) -> dict[str, Any]:
        self.seen.append("custom")
        return {"echo": data, "token": SECRET, "dsn": DATABASE_URL}


def _tattle(method: str) -> Callable[..., Awaitable[Any]]:
    async def hook(self: Tattler, app_name: str, *arguments: Any) -> Any:
        self.seen.append(method)
        if method == HOOK_METHODS["operation_failed"]:
            raise ConnectionError(f"giving up on {DATABASE_URL}")
        # What a worker resolved on its own side must not come back through the ack either.
        return {"arguments": arguments, "database_url": DATABASE_URL, "password": SECRET}

    hook.__name__ = method
    return hook


for _method in HOOK_METHODS.values():
    setattr(Tattler, _method, _tattle(_method))


async def namespace_contents(bus: Bus) -> AsyncIterator[tuple[str, bytes]]:
    """Every key of the bus's namespace with its raw bytes, read with the raw client."""
    client = bus.redis._client  # the raw bytes as stored, past every decoder of ours
    for key in sorted(await bus.redis.scan_keys(bus.keys.prefix.replace("{", "\\{") + "*")):
        kind = (await client.type(key)).decode()
        if kind == "stream":
            entries = await client.xrange(key, "-", "+")
            values = [b"%s=%s" % item for _, fields in entries for item in fields.items()]
        elif kind == "hash":
            values = [b"%s=%s" % item for item in (await client.hgetall(key)).items()]
        elif kind == "set":
            values = sorted(await client.smembers(key))
        elif kind == "zset":
            values = await client.zrange(key, 0, -1)
        elif kind == "list":
            values = await client.lrange(key, 0, -1)
        elif kind == "string":
            values = [await client.get(key)]
        else:
            pytest.fail(f"key {key} has type {kind}, which this check cannot read")
        yield key, b"\n".join(values)


class TestNothingSecretReachesTheBus:
    async def test_every_event_type_end_to_end(self, bus: Bus) -> None:
        """Events of every type built from a raw config leave no secret in any key of the bus."""
        payloads = leaky_payloads()
        plugin = Tattler()
        async with (
            running_worker(plugin, bus, required=True),
            Publisher(bus, "reg-a") as publisher,
        ):
            await publisher.refresh_directory()
            await bus.directory.claim_app("shop", publisher.registry_id)
            for event_type in HOOK_TYPES:
                result = await publisher.emit(payloads[event_type], app="shop", timeout=5)
                expected = "failed" if event_type == "operation_failed" else "acked"
                assert result.outcomes["tattler"].status == expected, event_type
            await publisher.publish(payloads["custom"], app="shop")
            # A required plugin nobody runs: the registry records a no_consumer failure.
            await publisher.emit(
                payloads["app_registered"], app="shop", required=("ghost",), timeout=0.2
            )
            await drained(bus, "tattler")
            contents = {key: data async for key, data in namespace_contents(bus)}

        # Every hook and the custom handler ran (a failed hook may have been retried).
        assert set(plugin.seen) == {*HOOK_METHODS.values(), "custom"}
        keys = bus.keys
        for key in (keys.events, keys.acks("reg-a"), keys.failures, keys.failure_counts):
            assert contents.get(key), f"{key} is empty: the check would prove nothing"
        for key in (keys.plugins, keys.workers, keys.registries, keys.apps):
            assert contents.get(key), f"{key} is empty: the check would prove nothing"
        assert b"db.internal" in contents[keys.events]
        assert b"***" in contents[keys.acks("reg-a")]
        leaks = sorted(
            key for key, data in contents.items() if SECRET.encode() in data or SECRET in key
        )
        assert leaks == [], f"the secret reached Redis in {leaks}"
