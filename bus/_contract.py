"""The wire contract: the envelope, the event catalogue, acks and directory records.

Every message on the bus is one of these frozen msgspec Structs, MessagePack-encoded
into a single stream field. Schema evolution rules, so that old workers and new
registries (and the other way round) keep talking:

* a new field always has a default, so an older message still decodes;
* a field never changes its type and is never reused under another meaning;
* a payload change that an older worker cannot ignore bumps that event type's entry
  in ``SCHEMA_VERSIONS``; a worker rejects (dead-letters) an envelope whose version
  is newer than the one it knows, instead of misreading it.
"""

from __future__ import annotations

import base64
import os
import time
from collections.abc import Mapping
from typing import Any, Final, Literal, cast, get_args

import msgspec

EventType = Literal[
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
    "operation_failed",
    "health_check",
    "custom",
]

EVENT_TYPES: Final[tuple[EventType, ...]] = get_args(EventType)
HOOK_TYPES: Final[tuple[EventType, ...]] = tuple(t for t in EVENT_TYPES if t != "custom")
"""The twelve lifecycle hooks; ``custom`` is plugin-to-plugin traffic, not a hook."""

HOOK_METHODS: Final[dict[EventType, str]] = {t: f"on_{t}" for t in HOOK_TYPES}
"""Event type -> the plugin method that handles it (``app_registered`` -> ``on_app_registered``)."""

SCHEMA_VERSIONS: Final[dict[EventType, int]] = {
    **dict.fromkeys(EVENT_TYPES, 1),
    # 2: ``trigger`` and ``action`` (migrations and seeds run on request, not only by a
    # registration); an envelope that uses neither is still written as version 1.
    "auto_operations_started": 2,
    "auto_operations_completed": 2,
}
"""The payload schema version this code writes and the newest it can read, per type."""

Trigger = Literal["registration", "requested"]
"""Why auto-operations run: a registration, or a request (``app.migrate()``, the CLI)."""

AckStatus = Literal["ok", "error", "skipped"]
FailureKind = Literal[
    "error", "timeout", "no_consumer", "crashed", "dead_lettered", "forged", "unauthenticated"
]
"""``forged``: an ack that fails verification (counted against the plugin and consumer it
claims); ``unauthenticated``: an event that fails it, dead-lettered unread by any hook."""

RecordedStatus = Literal[
    "ok", "error", "timeout", "dead_lettered", "no_consumer", "crashed", "unauthenticated"
]
"""What one plugin's attempt at one event came to, as the outcome history keeps it:
``ok``, ``error`` and ``timeout`` (the hook overran its timeout) from the worker that ran
it; ``dead_lettered`` when it gave up; ``timeout``, ``no_consumer`` and ``crashed`` from
a registry that waited for it in vain. A ``skipped`` ack (a hook the plugin does not
implement) is no outcome: its manifest says so once for all events."""

RECORDED_STATUSES: Final[tuple[RecordedStatus, ...]] = get_args(RecordedStatus)


class _Frozen(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Base of every wire Struct: immutable, keyword-only, defaults left off the wire.

    Subclasses repeat ``frozen=True`` because type checkers do not inherit it.
    """


# --- payloads ---------------------------------------------------------------------------


class ConnectionInfo(_Frozen, frozen=True):
    """What a plugin may know of an app's connection; never a password."""

    dialect: str
    driver: str = ""
    host: str | None = None
    port: int | None = None
    database: str | None = None
    user: str | None = None
    url: str = ""
    """The URL with its password masked."""
    pool_size: int | None = None
    pool_checked_out: int | None = None
    shared: bool = False
    reference_count: int = 1
    apps: tuple[str, ...] = ()


class OperationResult(_Frozen, frozen=True):
    """The outcome of one auto-operation or rollback step (migrations, seeds, models)."""

    operation: str
    success: bool
    items: tuple[str, ...] = ()
    duration: float = 0.0
    error: str | None = None
    details: dict[str, Any] = {}


class _Payload(_Frozen, frozen=True, tag_field="type"):
    """Base of the event payloads: a tagged union keyed by the event type."""


class AppRegistrationStarted(_Payload, tag="app_registration_started", frozen=True):
    config: dict[str, Any] = {}


class ConnectionCreated(_Payload, tag="connection_created", frozen=True):
    connection: ConnectionInfo
    reused: bool = False


class AutoOperationsStarted(_Payload, tag="auto_operations_started", frozen=True):
    connection: ConnectionInfo
    config: dict[str, Any] = {}
    trigger: Trigger = "registration"
    """Version 2: ``requested`` when someone asked for it on a registered app."""
    action: str = ""
    """Version 2, with ``requested``: ``migrate``, ``rollback_migrations``, ``seed`` or
    ``rollback_seeds``."""
    options: dict[str, Any] = {}
    """Version 2: the request's options (``steps`` of a rollback, ``requested_by``)."""


class AutoOperationsCompleted(_Payload, tag="auto_operations_completed", frozen=True):
    operations: tuple[OperationResult, ...] = ()
    success: bool = True
    trigger: Trigger = "registration"
    """Version 2, as in ``AutoOperationsStarted``."""
    action: str = ""
    """Version 2, as in ``AutoOperationsStarted``."""


class AppRegistered(_Payload, tag="app_registered", frozen=True):
    connection: ConnectionInfo
    config: dict[str, Any] = {}


class AppUnregistrationStarted(_Payload, tag="app_unregistration_started", frozen=True):
    options: dict[str, Any] = {}


class AppRollbackStarted(_Payload, tag="app_rollback_started", frozen=True):
    connection: ConnectionInfo
    options: dict[str, Any] = {}


class AppRollbackCompleted(_Payload, tag="app_rollback_completed", frozen=True):
    steps: tuple[OperationResult, ...] = ()
    success: bool = True


class ConnectionShutdown(_Payload, tag="connection_shutdown", frozen=True):
    connection: ConnectionInfo
    shared: bool = False
    last_reference: bool = True
    registry_shutdown: bool = False


class AppUnregistered(_Payload, tag="app_unregistered", frozen=True):
    options: dict[str, Any] = {}


class OperationFailed(_Payload, tag="operation_failed", frozen=True):
    operation: str
    error_type: str
    error_message: str
    context: dict[str, Any] = {}


class HealthCheck(_Payload, tag="health_check", frozen=True):
    health: dict[str, Any] = {}


class Custom(_Payload, tag="custom", frozen=True):
    """A plugin-to-plugin event: ``registry.emit(name, data)``."""

    name: str
    data: Any = None
    source: str = ""
    """The plugin that emitted it."""


Payload = (
    AppRegistrationStarted
    | ConnectionCreated
    | AutoOperationsStarted
    | AutoOperationsCompleted
    | AppRegistered
    | AppUnregistrationStarted
    | AppRollbackStarted
    | AppRollbackCompleted
    | ConnectionShutdown
    | AppUnregistered
    | OperationFailed
    | HealthCheck
    | Custom
)


def payload_type(payload: Payload) -> EventType:
    """The event type a payload is tagged with."""
    return cast(EventType, type(payload).__struct_config__.tag)


def written_version(payload: Payload) -> int:
    """The schema version an envelope of ``payload`` is written with: the oldest that
    says all it carries. Defaults stay off the wire, so an auto-operation of a
    registration is the same bytes as version 1, which older workers still read."""
    event_type = payload_type(payload)
    if isinstance(payload, AutoOperationsStarted | AutoOperationsCompleted) and (
        payload.trigger == "registration" and not payload.action
    ):
        return 1
    return SCHEMA_VERSIONS[event_type]


# --- envelope ---------------------------------------------------------------------------


class Link(_Frozen, frozen=True):
    """One event's place in its publisher's hash chain (one chain per run of a registry,
    its events numbered by the envelope's ``seq``)."""

    chain: str
    prev: bytes | None = None
    """The digest (``_signatures.digest``) of the chain's previous event as published;
    None for its first."""


class Envelope(_Frozen, frozen=True, kw_only=True):
    """One event on the bus."""

    id: str
    """Unique and sortable by time (a ULID); the handlers' idempotency key."""
    type: EventType
    version: int
    registry: str
    """The publishing registry; its ack stream receives the acks."""
    app: str = ""
    time: float
    seq: int
    """Per-registry sequence number, for gaps and ordering in audit."""
    required: tuple[str, ...] = ()
    deadline: float = 0.0
    """Unix time by which the registry stops waiting for the required acks."""
    payload: Payload
    replay: bool = False
    replaces: str | None = None
    """For a copy (a replay, a re-driven dead letter), the id of the original event it
    stands for: the first of the chain, however many copies of copies lie between."""
    target: str | None = None
    """When set, only this plugin handles the event (a re-drive or a replay to one plugin);
    the other plugins' workers acknowledge it without calling anything."""
    trace: str | None = None
    """W3C traceparent."""
    link: Link | None = None
    """With a keyring: the event's place in its publisher's chain, so that a missing or
    altered event of that publisher shows in an audit (``replay --verify``)."""

    @property
    def original_id(self) -> str:
        """The id of the event this one stands for: its own, or for a copy (a replay, a
        re-drive) the original's. The idempotency key: the same on every delivery, and
        for every copy of the event."""
        return self.replaces or self.id


_CROCKFORD: Final = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_TO_CROCKFORD: Final = bytes.maketrans(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", _CROCKFORD.encode())
_MILLIS_MASK: Final = (1 << 48) - 1


def new_event_id(now: float | None = None) -> str:
    """A ULID: 48 bits of milliseconds and 80 random bits, 26 Crockford base32 characters."""
    millis = int((time.time() if now is None else now) * 1000)
    # 160 bits in base32 are 32 characters; the first 6 are the 30 zero bits above the
    # ULID's 130. The stdlib encoder (C) then a translation table: 1 us, not 7.
    data = (millis & _MILLIS_MASK).to_bytes(10, "big") + os.urandom(10)
    return base64.b32encode(data)[6:].translate(_TO_CROCKFORD).decode()


def event_id_time(event_id: str) -> float | None:
    """The Unix time ``new_event_id`` made ``event_id`` at, to the millisecond; None if it
    is not such an id."""
    if len(event_id) != 26:
        return None
    millis = 0
    for char in event_id[:10]:  # the first 10 characters are the 48 bits of milliseconds
        digit = _CROCKFORD.find(char.upper())
        if digit < 0:
            return None
        millis = millis * 32 + digit
    return millis / 1000


# --- acks, failures and the directory --------------------------------------------------


class Ack(_Frozen, frozen=True):
    """A plugin worker's answer to one event, written to the publishing registry's ack stream."""

    event_id: str
    plugin: str
    consumer: str
    status: AckStatus
    result: Any = None
    error: str | None = None
    error_type: str | None = None
    duration: float = 0.0
    attempt: int = 1
    replay: bool = False
    permanent: bool = False
    """The plugin said "do not retry" (``PermanentError``); set on error acks only."""
    traceback: str | None = None
    """Of an error ack: the hook's traceback text (at most ``TRACEBACK_LIMIT`` bytes).
    Kept in the outcome history and the failure record; left out of the registry's
    ack stream, which needs only the error."""


class Failure(_Frozen, frozen=True, kw_only=True):
    """One failure, recorded against the consumer that held the event (or none)."""

    event_id: str
    type: str
    app: str
    plugin: str
    consumer: str | None
    kind: FailureKind
    error: str
    attempt: int = 1
    time: float
    registry: str = ""
    traceback: str | None = None
    """The hook's traceback text, when a hook raised (at most ``TRACEBACK_LIMIT`` bytes)."""
    entry_id: str = ""
    """The event's stream entry, when the recorder knew it."""


class OutcomeRecord(_Frozen, frozen=True, kw_only=True):
    """One plugin's attempt at one event, kept in ``ro:{ns}:outcomes`` for as long as
    the event is in the history."""

    entry_id: str
    """The event's stream entry id (what the history is keyed by)."""
    event_id: str
    type: str
    app: str = ""
    plugin: str
    consumer: str | None
    """The consumer that ran it, or (on a registry's timeout) held it; None: nobody."""
    status: RecordedStatus
    attempt: int = 1
    duration: float | None = None
    """Seconds the hook ran (worker outcomes only)."""
    time: float
    """When the outcome was recorded."""
    error: str | None = None
    error_type: str | None = None
    traceback: str | None = None
    replay: bool = False


class Manifest(_Frozen, frozen=True):
    """What a plugin's workers announce about it when they start."""

    plugin: str
    version: str = "0.0.0"
    hooks: tuple[str, ...] = ()
    required: bool = False
    timeout: float = 5.0
    max_deliveries: int = 5
    updated: float = 0.0


class LoadError(_Frozen, frozen=True):
    """Why a plugin's worker could not start (bad configuration, failing initialize)."""

    plugin: str
    consumer: str
    error: str
    time: float
    phase: str = "initialize"
    """``validate`` (validate_configuration refused), ``build`` or ``initialize``."""


class WorkerInfo(_Frozen, frozen=True):
    """One worker process (a consumer of its plugin's group), refreshed by its heartbeat."""

    plugin: str
    consumer: str
    host: str
    pid: int
    started: float
    seen: float
    concurrency: int = 1
    in_flight: int = 0
    handled: int = 0
    failed: int = 0
    last_duration: float | None = None
    """Seconds the last hook this worker ran took (skipped events not counted); None
    before its first."""


class AppSchema(_Frozen, frozen=True):
    """Where an app's migrations stand, as its registry last saw them."""

    batch: int | None = None
    """The newest migration batch (numbered files); None when none is applied."""
    revision: str | None = None
    """Alembic mode: the current revision (``base`` when none)."""
    pending: int = 0
    """Migrations not applied yet."""
    pending_seeds: int = 0


class RegistryInfo(_Frozen, frozen=True):
    """One live registry on the bus, refreshed by its heartbeat."""

    id: str
    host: str
    pid: int
    started: float
    seen: float
    apps: tuple[str, ...] = ()
    required: tuple[str, ...] = ()
    """The plugins this registry's configuration marks required (awaited whatever
    their workers' manifests say)."""
    signed: bool = False
    """Whether this registry signs its events and verifies acks (it has a keyring)."""
    schemas: dict[str, AppSchema] = {}
    """Per app of ``apps``: where its migrations stand (``rapid-objection status``)."""


class Request(_Frozen, frozen=True):
    """An operator's request to the registry that owns an app (``rapid-objection
    migrate APP up``), in ``ro:{ns}:requests:<registry>``; the answer goes to
    ``ro:{ns}:answer:<id>``."""

    id: str
    registry: str
    """The registry it is addressed to (the app's owner when it was sent)."""
    app: str
    action: str
    """``migrate``, ``rollback_migrations``, ``seed`` or ``rollback_seeds``."""
    steps: int = 1
    sender: str = ""
    """Who asks (host and pid of the command), shown in the events as ``requested_by``."""
    time: float = 0.0
    deadline: float = 0.0
    """Seconds since the epoch after which the registry no longer starts it."""


class Answer(_Frozen, frozen=True):
    """The owning registry's answer to a ``Request``."""

    request: str
    registry: str
    ok: bool
    result: dict[str, Any] = {}
    """``ChangeResult.as_dict()`` of a success."""
    error: str = ""
    error_type: str = ""


# Built once: msgspec encoders and decoders are reusable and thread-safe.
_encoder: Final = msgspec.msgpack.Encoder()
_envelope_decoder: Final = msgspec.msgpack.Decoder(Envelope)
_ack_decoder: Final = msgspec.msgpack.Decoder(Ack)
_acks_decoder: Final = msgspec.msgpack.Decoder(list[Ack])
_failure_decoder: Final = msgspec.msgpack.Decoder(Failure)
_outcome_decoder: Final = msgspec.msgpack.Decoder(OutcomeRecord)
_outcomes_decoder: Final = msgspec.msgpack.Decoder(list[OutcomeRecord])
_manifest_decoder: Final = msgspec.msgpack.Decoder(Manifest)
_worker_decoder: Final = msgspec.msgpack.Decoder(WorkerInfo)
_load_error_decoder: Final = msgspec.msgpack.Decoder(LoadError)
_registry_decoder: Final = msgspec.msgpack.Decoder(RegistryInfo)
_request_decoder: Final = msgspec.msgpack.Decoder(Request)
_answer_decoder: Final = msgspec.msgpack.Decoder(Answer)

encode = _encoder.encode
decode_ack = _ack_decoder.decode
decode_acks = _acks_decoder.decode
decode_failure = _failure_decoder.decode
decode_outcome = _outcome_decoder.decode
decode_outcomes = _outcomes_decoder.decode
decode_manifest = _manifest_decoder.decode
decode_worker = _worker_decoder.decode
decode_load_error = _load_error_decoder.decode
decode_registry = _registry_decoder.decode
decode_request = _request_decoder.decode
decode_answer = _answer_decoder.decode


def decode_envelope(data: bytes) -> Envelope:
    """Decode and check an envelope; raises ``msgspec.DecodeError`` or ``ValueError``."""
    envelope = _envelope_decoder.decode(data)
    tag = payload_type(envelope.payload)
    if envelope.type != tag:
        raise ValueError(f"envelope type {envelope.type!r} carries a {tag!r} payload")
    known = SCHEMA_VERSIONS[envelope.type]
    if envelope.version > known:
        raise ValueError(
            f"schema version {envelope.version} of {envelope.type!r} is newer than "
            f"the {known} this worker knows"
        )
    return envelope


class DeadLetter(_Frozen, frozen=True, kw_only=True):
    """An entry a plugin gave up on, with its provenance, in ``ro:{ns}:dlq``."""

    entry_id: str
    """The id of the original entry in the event stream."""
    event_id: str | None
    """None when the entry could not even be decoded."""
    type: str | None = None
    app: str = ""
    registry: str = ""
    plugin: str
    consumer: str
    attempts: int
    first_error: str
    last_error: str
    first_time: float
    last_time: float
    data: bytes = b""
    """The original entry's encoded envelope, so that it can be re-driven or inspected;
    of an entry that was no envelope at all, only its first ``dlq_payload_prefix``
    bytes."""
    data_size: int | None = None
    """Of an entry that was no envelope at all: its whole size in bytes."""
    data_sha256: str | None = None
    """Of an entry that was no envelope at all: the SHA-256 of all of it (hex)."""
    """The original entry's encoded envelope, so that it can be re-driven or inspected."""
    signature: bytes = b""
    """The original entry's signatures (with a keyring), checked again before a re-drive."""
    reason: str | None = None
    """``unauthenticated`` for an event that failed verification; None otherwise."""
    traceback: str | None = None
    """The last attempt's traceback text, when its hook raised (at most
    ``TRACEBACK_LIMIT`` bytes)."""


_dead_letter_decoder: Final = msgspec.msgpack.Decoder(DeadLetter)
decode_dead_letter = _dead_letter_decoder.decode


def decode_ack_entry(fields: Mapping[bytes, bytes]) -> list[Ack]:
    """The acks of one ack stream entry: a single Ack (field ``a``) or a worker's whole
    flush for this registry (field ``A``, a list)."""
    if b"A" in fields:
        return decode_acks(fields[b"A"])
    return [decode_ack(fields[b"a"])]
