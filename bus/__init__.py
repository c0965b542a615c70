"""The bus: the wire contract and the Redis Streams transport of rapid-objection.

The names below are what plugins, the registry's users and operators use: the event
envelope and payloads, the bus and its records, errors and signals. The machinery
(consumer, retry policy, keys, codecs, constants) stays in the private modules.
"""

from ._bus import Bus
from ._consumer import Delivery
from ._contract import (
    EVENT_TYPES,
    HOOK_METHODS,
    HOOK_TYPES,
    SCHEMA_VERSIONS,
    Ack,
    AckStatus,
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
    DeadLetter,
    Envelope,
    EventType,
    Failure,
    FailureKind,
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
from ._dlq import DeadLetterEntry, DeadLetters, Redriven
from ._errors import (
    BusError,
    BusRefused,
    BusUnavailable,
    BusUrlError,
    GroupMissing,
    NamespaceError,
    RedriveError,
    RegistryIdTaken,
)
from ._failures import FailureCount, FailureLog
from ._history import History, HistoryEntry, Page
from ._publisher import Publisher
from ._redact import mask_url, redact
from ._retention import Retention
from ._retry import Deferred
from ._signals import PermanentError, RetryLater
from ._status import ConsumerStatus, PluginStatus, StatusReport, collect_status
from ._waits import Outcome, WaitResult

__all__ = [
    "EVENT_TYPES",
    "HOOK_METHODS",
    "HOOK_TYPES",
    "SCHEMA_VERSIONS",
    "Ack",
    "AckStatus",
    "AppRegistered",
    "AppRegistrationStarted",
    "AppRollbackCompleted",
    "AppRollbackStarted",
    "AppUnregistered",
    "AppUnregistrationStarted",
    "AutoOperationsCompleted",
    "AutoOperationsStarted",
    "Bus",
    "BusError",
    "BusRefused",
    "BusUnavailable",
    "BusUrlError",
    "ConnectionCreated",
    "ConnectionInfo",
    "ConnectionShutdown",
    "ConsumerStatus",
    "Custom",
    "DeadLetter",
    "DeadLetterEntry",
    "DeadLetters",
    "Deferred",
    "Delivery",
    "Envelope",
    "EventType",
    "Failure",
    "FailureCount",
    "FailureKind",
    "FailureLog",
    "GroupMissing",
    "HealthCheck",
    "History",
    "HistoryEntry",
    "LoadError",
    "Manifest",
    "NamespaceError",
    "OperationFailed",
    "OperationResult",
    "Outcome",
    "Page",
    "Payload",
    "PermanentError",
    "PluginStatus",
    "Publisher",
    "RedriveError",
    "Redriven",
    "RegistryIdTaken",
    "RegistryInfo",
    "Retention",
    "RetryLater",
    "StatusReport",
    "WaitResult",
    "WorkerInfo",
    "collect_status",
    "mask_url",
    "new_event_id",
    "redact",
]
