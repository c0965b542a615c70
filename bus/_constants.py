"""Key names and tunables of the bus, each with its reason."""

from typing import Final

KEY_PREFIX: Final = "ro"
"""Every key starts with ``ro:{namespace}:``; the braces are a Redis Cluster hash tag."""

EVENT_FIELD: Final = b"e"
"""The one stream field that carries an encoded envelope (one field keeps XADD small)."""

ACK_FIELD: Final = b"a"
"""The one stream field of an ack stream entry holding a single Ack."""

ACKS_FIELD: Final = b"A"
"""The field of an ack stream entry holding a list of Acks (one worker's flush)."""

SIGNATURE_FIELD: Final = b"s"
"""With a keyring: the field of an event or ack entry holding its signatures (key id ->
tag), over the bytes of its ``e``, ``a`` or ``A`` field."""

RECORD_FIELD: Final = b"r"
"""The one stream field of failure and dead-letter records (and of requests and answers)."""

ANSWER_TTL_MS: Final = 600_000
"""An answer is kept ten minutes: long enough for its asker to read it, and gone after."""

REQUESTS_MAX_LEN: Final = 1_000
"""Requests kept per registry: they are read at once; the rest is history."""

DEFAULT_NAMESPACE: Final = "default"
DEFAULT_ACK_TIMEOUT: Final = 10.0
"""Seconds a registry waits for the required acks of one event unless told otherwise."""

DEFAULT_HOOK_TIMEOUT: Final = 5.0
"""Seconds a hook may run inside a worker before it is cancelled and acked as an error."""

DEFAULT_MAX_DELIVERIES: Final = 5
"""Attempts per plugin and event (local retries and re-deliveries) before dead-lettering."""

CLAIM_IDLE: Final = 5.0
"""Seconds an entry may sit unacked with one consumer before a live consumer of the same
group takes it over (XAUTOCLAIM); live workers renew their leases well before this."""

DEAD_CONSUMER_IDLE: Final = 3600.0
"""Seconds without reads after which a consumer with nothing pending is deleted."""

REGISTRY_GONE_AFTER: Final = 3600.0
"""Seconds after its last heartbeat when a registry's ack stream is cleaned up."""

RETENTION_INTERVAL: Final = 1.0
"""Seconds between two retention trims of the event stream: a trim costs a few commands
and removes whatever is over the limits at once, so the stream holds at most about one
second of publishing beyond ``retention_max_len``, at any rate."""

ONCE_TTL_MS: Final = 7 * 24 * 3600 * 1000
"""How long "run once per event id" remembers an event: longer than any redelivery."""

SEEN_TTL_MS: Final = ONCE_TTL_MS
"""With a keyring, how long a plugin's group remembers the event ids it took: a genuine
entry added again within this time runs nothing (and an older signed event is refused)."""

LOGGED_SOURCES: Final = 1_000
"""Sources of unauthenticated events and forged acks remembered for logging once each:
a forger that makes up a name per entry cannot grow the memory (or the log) unbounded."""

HEARTBEAT_INTERVAL: Final = 1.0
"""Seconds between worker and registry heartbeats; cheap (one HSET) and keeps `status` fresh."""

ALIVE_AFTER_HEARTBEATS: Final = 5
"""A worker is alive while its last heartbeat is younger than this many intervals."""

LIVENESS_FRESH: Final = 0.25
"""Seconds a registry trusts its last read of the workers' heartbeats when it decides
that a required plugin has a live consumer; older, it reads them again (one read shared
by the events published meanwhile), so a busy registry reads them a few times a second
instead of once per event."""

READ_BLOCK_MS: Final = 1_000
"""XREADGROUP/XREAD BLOCK time; the loop re-checks for shutdown at least this often."""

READ_BATCH: Final = 100
"""XREADGROUP COUNT; one read and one ack pipeline per batch (6x faster than per event)."""

ACK_STREAM_MAXLEN: Final = 100_000
"""Approximate cap of a registry's ack stream; acks are consumed within seconds."""

ACK_STREAM_TTL_MS: Final = 24 * 3600 * 1000
"""An ack stream of a registry that is gone expires a day after its last ack."""

ACK_STREAM_REFRESH: Final = 60.0
"""Seconds between two PEXPIREs of one ack stream by one worker (not one per flush)."""

ACK_STREAM_GONE_TTL_MS: Final = 3 * 60 * 1000
"""TTL a registry that leaves for good puts on its ack stream (instead of deleting it):
longer than ACK_STREAM_REFRESH, so a late ack that outlives it re-creates the stream
together with a PEXPIRE, never a stream without a TTL."""

TRACEBACK_LIMIT: Final = 8 * 1024
"""Bytes of a hook's traceback text that an outcome, a failure record and a dead letter
keep (the innermost frames, where it failed): a deep or recursive traceback runs to
hundreds of KiB, and every error of every event would carry it; 8 KiB holds the frames
an operator reads, and a poison event retried ``max_deliveries`` times stays small."""

FAILURES_MAXLEN: Final = 100_000
"""Approximate cap of the failure record stream; the counters are kept forever."""

DIRECTORY_REFRESH: Final = 2.0
"""Seconds a registry trusts its cached plugin directory before re-reading it."""

DLQ_MAX_LEN: Final = 10_000
"""Dead letters kept at most (``[bus] dlq_max_len``); the oldest go first."""

DLQ_MAX_AGE: Final = 30 * 24 * 3600.0
"""Seconds a dead letter is kept (``[bus] dlq_max_age``): long enough for an operator to
come back from holidays and re-drive it."""

DLQ_PAYLOAD_PREFIX: Final = 64 * 1024
"""Bytes of an undecodable entry a dead letter keeps (``[bus] dlq_payload_prefix``),
with its full size and SHA-256: garbage cannot be re-driven, only looked at."""

DLQ_TRIM_INTERVAL: Final = 60.0
"""Seconds between two trims of the dead-letter stream by a registry (writers trim it
too; this one applies the age limit while nothing new is dead-lettered)."""
