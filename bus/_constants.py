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

RECORD_FIELD: Final = b"r"
"""The one stream field of failure and dead-letter records."""

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

RETENTION_INTERVAL: Final = 60.0
"""Seconds between two retention trims of the event stream by a registry."""

ONCE_TTL_MS: Final = 7 * 24 * 3600 * 1000
"""How long "run once per event id" remembers an event: longer than any redelivery."""

HEARTBEAT_INTERVAL: Final = 1.0
"""Seconds between worker and registry heartbeats; cheap (one HSET) and keeps `status` fresh."""

ALIVE_AFTER_HEARTBEATS: Final = 5
"""A worker is alive while its last heartbeat is younger than this many intervals."""

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

FAILURES_MAXLEN: Final = 100_000
"""Approximate cap of the failure record stream; the counters are kept forever."""

DIRECTORY_REFRESH: Final = 2.0
"""Seconds a registry trusts its cached plugin directory before re-reading it."""
