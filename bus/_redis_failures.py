"""How the adapter reads redis-py's failures: by exception class, never by message text.

redis-py builds an exception class from a reply's error code (OOM, READONLY, NOPERM...)
and strips the code from the message it keeps, so only the class tells them apart; for
the codes it has no class for, the code stays the message's first word.
"""

from __future__ import annotations

from typing import Any, Final

from redis import exceptions as redis_errors

from ._errors import BusRefused, BusUnavailable, BusUrlError

FAILURES: Final = (redis_errors.RedisError, redis_errors.RedisClusterException, OSError)
"""Everything redis-py raises for a failed command (its cluster errors have a root of
their own)."""

OUTAGE_ERRORS: Final[tuple[type[Exception], ...]] = (
    redis_errors.ConnectionError,  # refused, reset, LOADING (BusyLoadingError) and the like
    redis_errors.TimeoutError,
    redis_errors.SlotNotCoveredError,  # a cluster slot without a master, for now
    OSError,
)
"""The server cannot be reached or is not ready."""

TRANSIENT_ERRORS: Final[tuple[type[Exception], ...]] = (
    redis_errors.OutOfMemoryError,  # OOM: maxmemory reached under noeviction
    redis_errors.ReadOnlyError,  # READONLY: a write reached a replica (failover under way)
    redis_errors.TryAgainError,  # TRYAGAIN: a slot moving during resharding
    redis_errors.ClusterError,  # CLUSTERDOWN, MASTERDOWN, and redirections that did not settle
)
"""Refusals the server lifts on its own: an outage to back off from, not a bug.

Classified by the exception class redis-py builds from the reply's error code; redis-py
strips that code from the message it keeps, so the message text cannot be tested."""

TRANSIENT_CODES: Final = frozenset({"MISCONF", "BUSY", "NOREPLICAS", "UNBLOCKED"})
"""Transient error codes that redis-py has no class for: it keeps them as the first word
of a plain ResponseError (failed persistence, a busy script, too few replicas for
``min-replicas-to-write``, a blocked read whose stream went away)."""


def _code(exc: redis_errors.ResponseError) -> str:
    """The error code of a reply redis-py kept whole (its first word)."""
    return str(exc).partition(" ")[0]


def _cause(exc: BaseException) -> str:
    """What went wrong, with the server's error code put back where redis-py removed it."""
    message = str(exc) or type(exc).__name__
    code = getattr(exc, "status_code", None)
    return f"{code} {message}" if code and not message.startswith(code) else message


class SetupRefused(redis_errors.RedisError):
    """A plain error reply to a new connection's setup (SELECT of a database the server
    does not have), raised by ``set_up`` in place of redis-py's ResponseError.

    Not a ResponseError: the adapter reads those as a refused command (``open`` takes a
    refused INFO cluster for a proxy's) and passes them on untranslated. Not a
    ConnectionError: neither redis-py nor a worker may retry it as an outage, since every
    new connection meets the same refusal."""

    def __init__(self, command: str, reason: str) -> None:
        super().__init__(reason)
        self.command = command
        self.reason = reason


async def set_up(connection: Any) -> None:
    """redis-py's own setup of a new connection (AUTH, SELECT), with a refusal that no
    exception class of redis-py tells apart raised as ``SetupRefused``.

    Given as ``redis_connect_func`` to the connections the adapter builds. With RESP2 and
    no client name, SELECT is the one setup step whose refusal is a plain ResponseError
    (AUTH's are AuthenticationError, an ACL's NoPermissionError, and redis-py ignores
    CLIENT SETINFO's): so it is named when the URL selects a database.
    """
    try:
        await connection.on_connect()
    except redis_errors.ResponseError as exc:
        if type(exc) is not redis_errors.ResponseError or _code(exc) in TRANSIENT_CODES:
            raise  # a refusal ``translate`` knows by its class or code
        raise SetupRefused("SELECT" if connection.db else "", _cause(exc)) from exc


def translate(exc: BaseException, url: str, command: str = "") -> BaseException:
    """The one mapping of redis-py failures, by exception class: an outage or a passing
    server refusal becomes BusUnavailable, a lasting refusal (credentials, ACL, a
    connection's SELECT) becomes BusRefused, each naming the cause with the URL masked;
    anything else is left as is."""
    if isinstance(exc, redis_errors.AuthenticationError | redis_errors.NoPermissionError):
        return BusRefused(url, command, _cause(exc))
    if isinstance(exc, SetupRefused):  # the command is the setup's, not the one asked
        return BusRefused(url, exc.command, exc.reason)
    if isinstance(exc, (*OUTAGE_ERRORS, *TRANSIENT_ERRORS)):
        return BusUnavailable(url, _cause(exc))
    if isinstance(exc, redis_errors.ResponseError) and _code(exc) in TRANSIENT_CODES:
        return BusUnavailable(url, str(exc))
    if isinstance(exc, redis_errors.AskError):  # MOVED or ASK reached a plain client
        return BusUrlError(
            url,
            f"the server is a Redis Cluster node ({_cause(exc)}): leave out cluster=false",
        )
    return exc
