"""The wire contract: envelopes round-trip, bad bytes are rejected, ids sort, Structs freeze."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from rapid_objection.bus import (
    EVENT_TYPES,
    SCHEMA_VERSIONS,
    Ack,
    AppRegistered,
    AppRegistrationStarted,
    AppRollbackCompleted,
    AppRollbackStarted,
    AppSchema,
    AppUnregistered,
    AppUnregistrationStarted,
    AutoOperationsCompleted,
    AutoOperationsStarted,
    ConnectionCreated,
    ConnectionInfo,
    ConnectionShutdown,
    Custom,
    DeadLetter,
    Envelope,
    EventType,
    Failure,
    HealthCheck,
    LoadError,
    Manifest,
    OperationFailed,
    OperationResult,
    Payload,
    RegistryInfo,
    WorkerInfo,
    new_event_id,
)
from rapid_objection.bus import _contract as contract
from rapid_objection.bus._contract import decode_envelope, encode, payload_type

CROCKFORD = set("0123456789ABCDEFGHJKMNPQRSTVWXYZ")
NOW = 1_700_000_000.25


def connection() -> ConnectionInfo:
    return ConnectionInfo(
        dialect="postgresql",
        driver="psycopg",
        host="db.internal",
        port=5432,
        database="shop",
        user="shop",
        url="postgresql+psycopg://shop:***@db.internal:5432/shop",
        pool_size=5,
        pool_checked_out=1,
        shared=True,
        reference_count=2,
        apps=("shop", "billing"),
    )


def results() -> tuple[OperationResult, ...]:
    return (
        OperationResult(operation="migrations", success=True, items=("001_init",), duration=0.5),
        OperationResult(operation="seeds", success=False, error="boom", details={"row": 3}),
    )


def sample_payloads() -> dict[EventType, Payload]:
    """One payload per event type, every optional field set to a non-default value."""
    config = {"database": {"pool_size": 5}, "migrations": ["001_init"]}
    options = {"rollback": True, "force": False}
    samples: dict[EventType, Payload] = {
        "app_registration_started": AppRegistrationStarted(config=config),
        "connection_created": ConnectionCreated(connection=connection(), reused=True),
        "auto_operations_started": AutoOperationsStarted(connection=connection(), config=config),
        "auto_operations_completed": AutoOperationsCompleted(operations=results(), success=False),
        "app_registered": AppRegistered(connection=connection(), config=config),
        "app_unregistration_started": AppUnregistrationStarted(options=options),
        "app_rollback_started": AppRollbackStarted(connection=connection(), options=options),
        "app_rollback_completed": AppRollbackCompleted(steps=results(), success=False),
        "connection_shutdown": ConnectionShutdown(
            connection=connection(), shared=True, last_reference=False, registry_shutdown=True
        ),
        "app_unregistered": AppUnregistered(options=options),
        "operation_failed": OperationFailed(
            operation="register_app",
            error_type="OperationalError",
            error_message="connection refused",
            context={"attempt": 2},
        ),
        "health_check": HealthCheck(health={"status": "ok", "latency_ms": 1.5}),
        "custom": Custom(name="cache.flush", data={"keys": ["a", "b"]}, source="cache"),
    }
    assert set(samples) == set(EVENT_TYPES)
    return samples


PAYLOADS = sample_payloads()


def envelope(payload: Payload, **changes: Any) -> Envelope:
    """A fully populated envelope around ``payload``."""
    event_type = payload_type(payload)
    fields: dict[str, Any] = {
        "id": new_event_id(NOW),
        "type": event_type,
        "version": SCHEMA_VERSIONS[event_type],
        "registry": "reg-a",
        "app": "shop",
        "time": NOW,
        "seq": 7,
        "required": ("audit", "cache"),
        "deadline": NOW + 5,
        "payload": payload,
        "replay": True,
        "replaces": new_event_id(NOW - 60),
        "trace": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    }
    fields.update(changes)
    return Envelope(**fields)


def wire(payload: Payload | None = None, **changes: Any) -> dict[str, Any]:
    """An envelope as the plain map that goes on the wire, for tampering with."""
    raw: dict[str, Any] = msgspec.to_builtins(envelope(payload or PAYLOADS["app_registered"]))
    raw.update(changes)
    return raw


def without(raw: dict[str, Any], path: str) -> dict[str, Any]:
    """``raw`` with the field at dotted ``path`` removed."""
    *parents, leaf = path.split(".")
    node = raw
    for name in parents:
        node = node[name]
    del node[leaf]
    return raw


def struct_samples() -> dict[str, msgspec.Struct]:
    """One instance of every wire Struct, keyed by class name."""
    samples: dict[str, msgspec.Struct] = {
        type(payload).__name__: payload for payload in PAYLOADS.values()
    }
    samples.update(
        ConnectionInfo=connection(),
        OperationResult=results()[0],
        Envelope=envelope(PAYLOADS["health_check"]),
        Ack=Ack(
            event_id=new_event_id(NOW),
            plugin="audit",
            consumer="host-1-ab12",
            status="error",
            result={"merged": True},
            error="boom",
            error_type="RuntimeError",
            duration=0.01,
            attempt=2,
            replay=True,
        ),
        Failure=Failure(
            event_id=new_event_id(NOW),
            type="app_registered",
            app="shop",
            plugin="audit",
            consumer=None,
            kind="no_consumer",
            error="no live consumer",
            attempt=0,
            time=NOW,
            registry="reg-a",
            traceback="Traceback (most recent call last):\n  ...\nValueError: boom\n",
            entry_id="1-0",
        ),
        OutcomeRecord=contract.OutcomeRecord(
            entry_id="1700000000000-3",
            event_id=new_event_id(NOW),
            type="app_registered",
            app="shop",
            plugin="audit",
            consumer="host-1-ab12",
            status="error",
            attempt=2,
            duration=0.25,
            time=NOW + 1,
            error="boom",
            error_type="ValueError",
            traceback="Traceback (most recent call last):\n  ...\nValueError: boom\n",
            replay=True,
        ),
        Link=contract.Link(chain=new_event_id(NOW), prev=b"\x01" * 16),
        Manifest=Manifest(
            plugin="audit",
            version="1.2.3",
            hooks=("app_registered",),
            required=True,
            timeout=2.5,
            max_deliveries=3,
            updated=NOW,
        ),
        LoadError=LoadError(
            plugin="audit",
            consumer="host-1-ab12",
            error="Plugin 'audit' configuration is invalid: KeyError: 'url'",
            time=NOW,
            phase="validate",
        ),
        WorkerInfo=WorkerInfo(
            plugin="audit",
            consumer="host-1-ab12",
            host="host",
            pid=123,
            started=NOW,
            seen=NOW + 1,
            concurrency=4,
            in_flight=2,
            handled=10,
            failed=1,
        ),
        RegistryInfo=RegistryInfo(
            id="reg-a",
            host="host",
            pid=7,
            started=NOW,
            seen=NOW + 1,
            apps=("shop",),
            schemas={"shop": AppSchema(batch=2, pending=1)},
        ),
        Request=contract.Request(
            id="01HZZZ",
            registry="reg-a",
            app="shop",
            action="rollback_migrations",
            steps=2,
            sender="host:42",
            time=NOW,
            deadline=NOW + 300,
        ),
        Answer=contract.Answer(
            request="01HZZZ", registry="reg-a", ok=True, result={"ran": ["002_notes.py"]}
        ),
        AppSchema=AppSchema(revision="ae1027a6acf", pending=0, pending_seeds=2),
        DeadLetter=DeadLetter(
            entry_id="1-0",
            event_id=new_event_id(NOW),
            type="app_registered",
            app="shop",
            registry="reg-a",
            plugin="audit",
            consumer="host-1-ab12",
            attempts=5,
            first_error="boom",
            last_error="boom again",
            first_time=NOW,
            last_time=NOW + 3,
            data=b"\x81\xa2id\xa11",
        ),
    )
    return samples


STRUCTS = struct_samples()

WIRE_STRUCTS: list[type[msgspec.Struct]] = sorted(
    (
        value
        for value in vars(contract).values()
        if isinstance(value, type)
        and issubclass(value, msgspec.Struct)
        and value.__module__ == contract.__name__
    ),
    key=lambda cls: cls.__name__,
)


class TestRoundTrip:
    @pytest.mark.parametrize("event_type", EVENT_TYPES)
    def test_every_payload_type_survives_encode_and_decode(self, event_type: EventType) -> None:
        """An envelope of each event type decodes to an equal envelope with the same payload."""
        sent = envelope(PAYLOADS[event_type])
        received = decode_envelope(encode(sent))
        assert received == sent
        assert type(received.payload) is type(sent.payload)
        assert payload_type(received.payload) == event_type

    def test_minimal_envelope_decodes_with_defaults(self) -> None:
        """An envelope carrying only its required fields decodes with every default filled in."""
        sent = Envelope(
            id=new_event_id(NOW),
            type="app_unregistered",
            version=1,
            registry="reg-a",
            time=NOW,
            seq=1,
            payload=AppUnregistered(),
        )
        received = decode_envelope(encode(sent))
        assert received == sent
        assert (received.app, received.required, received.replay, received.trace) == (
            "",
            (),
            False,
            None,
        )

    def test_fields_unknown_to_this_version_are_ignored(self) -> None:
        """A field added by a newer registry does not stop an older worker from decoding."""
        raw = wire(future_field={"nested": [1, 2]})
        raw["payload"]["future_payload_field"] = "x"
        received = decode_envelope(msgspec.msgpack.encode(raw))
        assert received.payload == PAYLOADS["app_registered"]

    @pytest.mark.parametrize(
        ("decode", "name"),
        [
            pytest.param(contract.decode_ack, "Ack", id="ack"),
            pytest.param(contract.decode_failure, "Failure", id="failure"),
            pytest.param(contract.decode_manifest, "Manifest", id="manifest"),
            pytest.param(contract.decode_worker, "WorkerInfo", id="worker"),
            pytest.param(contract.decode_registry, "RegistryInfo", id="registry"),
            pytest.param(contract.decode_dead_letter, "DeadLetter", id="dead-letter"),
            pytest.param(contract.decode_outcome, "OutcomeRecord", id="outcome"),
            pytest.param(contract.decode_request, "Request", id="request"),
            pytest.param(contract.decode_answer, "Answer", id="answer"),
        ],
    )
    def test_records_survive_encode_and_decode(self, decode: Any, name: str) -> None:
        """Acks, failures and directory records decode to what was encoded."""
        assert decode(encode(STRUCTS[name])) == STRUCTS[name]


class TestDecodeRejects:
    @pytest.mark.parametrize(
        "data",
        [
            pytest.param(b"", id="empty"),
            pytest.param(b"\xc1\xc1\xc1", id="never-used-byte"),
            pytest.param(b"not msgpack at all", id="text"),
            pytest.param(encode(envelope(PAYLOADS["app_registered"]))[:-5], id="truncated"),
            pytest.param(msgspec.msgpack.encode([1, 2, 3]), id="array-not-map"),
        ],
    )
    def test_garbage_bytes(self, data: bytes) -> None:
        """Bytes that are not an encoded envelope raise msgspec's DecodeError."""
        with pytest.raises(msgspec.DecodeError):
            decode_envelope(data)

    @pytest.mark.parametrize(
        "path",
        ["id", "type", "version", "registry", "time", "seq", "payload", "payload.connection"],
    )
    def test_missing_required_field(self, path: str) -> None:
        """An envelope without a required field fails validation naming that field."""
        raw = without(wire(), path)
        with pytest.raises(msgspec.ValidationError, match=path.rsplit(".", 1)[-1]):
            decode_envelope(msgspec.msgpack.encode(raw))

    @pytest.mark.parametrize(
        "where",
        ["envelope", "payload", "both"],
    )
    def test_unknown_event_type(self, where: str) -> None:
        """An event type missing from the catalogue fails validation."""
        raw = wire()
        if where in ("envelope", "both"):
            raw["type"] = "app_exploded"
        if where in ("payload", "both"):
            raw["payload"]["type"] = "app_exploded"
        with pytest.raises(msgspec.ValidationError):
            decode_envelope(msgspec.msgpack.encode(raw))

    @pytest.mark.parametrize(
        ("declared", "carried"),
        [
            pytest.param("app_registered", "health_check", id="registered-carries-health"),
            pytest.param("custom", "app_unregistered", id="custom-carries-unregistered"),
            pytest.param("health_check", "custom", id="health-carries-custom"),
        ],
    )
    def test_payload_tag_differs_from_envelope_type(
        self, declared: EventType, carried: EventType
    ) -> None:
        """An envelope whose payload is tagged with another event type is refused."""
        raw = wire(PAYLOADS[carried], type=declared)
        with pytest.raises(ValueError, match="carries") as caught:
            decode_envelope(msgspec.msgpack.encode(raw))
        assert caught.type is ValueError

    @pytest.mark.parametrize("event_type", EVENT_TYPES)
    def test_version_newer_than_known(self, event_type: EventType) -> None:
        """A payload schema version newer than SCHEMA_VERSIONS is refused, not misread."""
        raw = wire(PAYLOADS[event_type], version=SCHEMA_VERSIONS[event_type] + 1)
        with pytest.raises(ValueError, match="newer") as caught:
            decode_envelope(msgspec.msgpack.encode(raw))
        assert caught.type is ValueError

    @pytest.mark.parametrize("event_type", EVENT_TYPES)
    def test_known_version_is_accepted(self, event_type: EventType) -> None:
        """The version this code writes is exactly the newest it reads."""
        raw = wire(PAYLOADS[event_type], version=SCHEMA_VERSIONS[event_type])
        assert decode_envelope(msgspec.msgpack.encode(raw)).version == SCHEMA_VERSIONS[event_type]


class TestNewEventId:
    def test_is_26_crockford_characters(self) -> None:
        """An event id is a ULID: 26 characters of Crockford's base32 alphabet."""
        event_id = new_event_id()
        assert len(event_id) == 26
        assert set(event_id) <= CROCKFORD

    def test_unique_over_ten_thousand_calls(self) -> None:
        """Ten thousand ids made back to back, mostly in the same millisecond, never collide."""
        ids = [new_event_id() for _ in range(10_000)]
        assert len(set(ids)) == len(ids)
        assert all(len(event_id) == 26 for event_id in ids)

    def test_sorts_by_time(self) -> None:
        """Ids made at increasing milliseconds sort in that order as plain strings."""
        ids = [new_event_id(NOW + step / 1000) for step in range(0, 5_000, 7)]
        assert sorted(ids) == ids
        assert new_event_id(NOW) < new_event_id(NOW + 0.001) < new_event_id(NOW + 86_400)

    @pytest.mark.parametrize(
        "now",
        [
            pytest.param(0.0, id="epoch"),
            pytest.param(NOW, id="2023"),
            pytest.param(4_102_444_800.0, id="2100"),
        ],
    )
    def test_prefix_encodes_the_milliseconds(self, now: float) -> None:
        """The first ten characters carry the creation time in milliseconds."""
        prefix = new_event_id(now)[:10]
        millis = 0
        for char in prefix:
            millis = millis * 32 + "0123456789ABCDEFGHJKMNPQRSTVWXYZ".index(char)
        assert millis == int(now * 1000)


class TestFrozen:
    @pytest.mark.parametrize("cls", WIRE_STRUCTS, ids=lambda cls: cls.__name__)
    def test_every_contract_struct_is_frozen(self, cls: type[msgspec.Struct]) -> None:
        """Every Struct of the contract module is frozen, so a message cannot change in flight."""
        assert cls.__struct_config__.frozen

    @pytest.mark.parametrize("name", sorted(STRUCTS))
    def test_assignment_raises(self, name: str) -> None:
        """Assigning to a field of a wire message raises AttributeError."""
        struct = STRUCTS[name]
        field = struct.__struct_fields__[0]
        with pytest.raises(AttributeError):
            setattr(struct, field, getattr(struct, field))

    def test_every_public_struct_has_a_sample(self) -> None:
        """The samples above cover every public Struct, so the frozen checks miss none."""
        public = {cls.__name__ for cls in WIRE_STRUCTS if not cls.__name__.startswith("_")}
        assert public == set(STRUCTS)


class TestOmitDefaults:
    def minimal(self) -> Envelope:
        return Envelope(
            id=new_event_id(NOW),
            type="app_unregistered",
            version=1,
            registry="reg-a",
            time=NOW,
            seq=1,
            payload=AppUnregistered(),
        )

    def test_minimal_envelope_is_small(self) -> None:
        """A minimal event encodes in under 140 bytes: no default value goes on the wire."""
        assert len(encode(self.minimal())) < 140

    def test_only_required_fields_are_encoded(self) -> None:
        """The encoded minimal envelope is exactly its required fields, nothing else."""
        minimal = self.minimal()
        required = {
            field.name: getattr(minimal, field.name)
            for field in msgspec.structs.fields(Envelope)
            if field.required
        }
        data = encode(minimal)
        assert msgspec.msgpack.decode(data).keys() == required.keys()
        assert len(data) == len(encode(required))

    @pytest.mark.parametrize(
        "name", [b"app", b"required", b"deadline", b"replay", b"replaces", b"trace", b"options"]
    )
    def test_default_field_names_are_absent(self, name: bytes) -> None:
        """Fields left at their defaults are not written, not even their names."""
        key = bytes([0xA0 | len(name)]) + name  # a MessagePack fixstr, as map keys are
        assert key not in encode(self.minimal())
