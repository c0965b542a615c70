"""What a bus URL asks for: which server shape (embedded, single, cluster, Sentinel) and
how durable a write must be before it counts.

Bus URLs travel unchanged from the registry's configuration to the worker command line
and every CLI command, so the topology options ride in the URL's query and need no
setting of their own anywhere else:

    redis://host:6379/0                      a single server (cluster mode detected)
    redis://host:7000/0?cluster=true         a Redis Cluster, any node (no detection)
    redis://host:6379/0?min_replicas=1       each protocol write waits for 1 replica
    redis+sentinel://[user:pw@]h1:26379,h2:26379/SERVICE[/DB]   through Sentinel

``cluster`` (``true``/``false``; absent: detect), ``min_replicas`` (an integer, 0 by
default) and ``replica_timeout`` (seconds a write waits for its replicas, 2 by default)
are removed before redis-py sees the URL.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

from ._errors import BusUrlError

SCHEMES: Final = ("memory", "redis", "rediss", "unix", "redis+sentinel")
SENTINEL_SCHEME: Final = "redis+sentinel"
SENTINEL_PORT: Final = 26379
DEFAULT_REPLICA_TIMEOUT: Final = 2.0
"""Seconds a durable write waits (WAIT) for its replicas before it is an outage."""

OUR_OPTIONS: Final = frozenset({"cluster", "min_replicas", "replica_timeout"})


@dataclass(frozen=True, slots=True)
class Topology:
    """A parsed bus URL."""

    scheme: str
    client_url: str
    """The URL for redis-py (without our options); for ``memory://`` the server's name."""
    cluster: bool | None = None
    """True or False when the URL says so; None: ask the server (``INFO cluster``)."""
    min_replicas: int = 0
    replica_timeout: float = DEFAULT_REPLICA_TIMEOUT
    sentinels: tuple[tuple[str, int], ...] = ()
    service: str = ""
    db: int = 0
    username: str | None = None
    password: str | None = None

    @property
    def embedded(self) -> bool:
        return self.scheme == "memory"

    @property
    def sentinel(self) -> bool:
        return self.scheme == SENTINEL_SCHEME


def with_options(url: str, *, cluster: bool | None = None, min_replicas: int | None = None) -> str:
    """``url`` with the topology options given as settings or flags (``[bus] cluster``,
    ``--min-replicas``) put in its query, over what the URL said; None leaves one out."""
    given = {
        name: value
        for name, value in (
            ("cluster", None if cluster is None else str(cluster).lower()),
            ("min_replicas", None if min_replicas is None else str(min_replicas)),
        )
        if value is not None
    }
    if not given or url.startswith("memory:"):
        return url
    base, _, query = url.partition("?")
    kept = [(name, value) for name, value in parse_qsl(query, keep_blank_values=True)]
    kept = [(name, value) for name, value in kept if name not in given]
    return f"{base}?{urlencode([*kept, *given.items()])}"


def parse(url: str) -> Topology:
    """Parse a bus URL or raise ``BusUrlError`` saying what is wrong with it."""
    parts = urlsplit(url)
    scheme = parts.scheme
    if scheme not in SCHEMES:
        raise BusUrlError(url, f"scheme must be one of {', '.join(s + '://' for s in SCHEMES)}")
    if scheme == "memory":
        return Topology(scheme, parts.netloc + parts.path, cluster=False)
    query = parse_qsl(parts.query, keep_blank_values=True)
    ours = {name: value for name, value in query if name in OUR_OPTIONS}
    rest = [(name, value) for name, value in query if name not in OUR_OPTIONS]
    options = _options(url, ours)
    if scheme == SENTINEL_SCHEME:
        return _sentinel(url, parts.netloc, parts.path, options)
    if scheme in ("redis", "rediss") and not parts.hostname:
        raise BusUrlError(url, "no host")
    if scheme == "unix" and not parts.path:
        raise BusUrlError(url, "no socket path")
    if scheme == "unix" and options.cluster:
        raise BusUrlError(url, "a Redis Cluster is reached over TCP, not a Unix socket")
    # Rebuilt by hand: urlunsplit would turn unix:///path into unix:/path.
    base = url.partition("?")[0]
    client_url = f"{base}?{urlencode(rest)}" if rest else base
    return Topology(
        scheme,
        client_url,
        cluster=False if scheme == "unix" else options.cluster,
        min_replicas=options.min_replicas,
        replica_timeout=options.replica_timeout,
    )


@dataclass(frozen=True, slots=True)
class _Options:
    cluster: bool | None
    min_replicas: int
    replica_timeout: float


def _options(url: str, given: dict[str, str]) -> _Options:
    cluster: bool | None = None
    if "cluster" in given:
        flag = given["cluster"].lower()
        if flag not in ("true", "false", "1", "0", "yes", "no"):
            raise BusUrlError(url, f"cluster={given['cluster']!r}: use true or false")
        cluster = flag in ("true", "1", "yes")
    try:
        min_replicas = int(given.get("min_replicas", "0"))
        timeout = float(given.get("replica_timeout", DEFAULT_REPLICA_TIMEOUT))
    except ValueError as exc:
        raise BusUrlError(url, f"min_replicas and replica_timeout are numbers: {exc}") from None
    if min_replicas < 0 or not 0 < timeout <= 60:
        raise BusUrlError(url, "min_replicas must be >= 0 and replica_timeout in (0, 60]")
    return _Options(cluster, min_replicas, timeout)


def _sentinel(url: str, netloc: str, path: str, options: _Options) -> Topology:
    credentials, _, hosts = netloc.rpartition("@")
    username, _, password = credentials.partition(":")
    sentinels = tuple(_host_port(url, host) for host in hosts.split(",") if host)
    segments = [segment for segment in path.split("/") if segment]
    if not sentinels:
        raise BusUrlError(url, "no Sentinel host")
    if not segments or len(segments) > 2:
        raise BusUrlError(url, "the path is /SERVICE or /SERVICE/DB")
    if options.cluster:
        raise BusUrlError(url, "Sentinel watches a primary and replicas, not a Redis Cluster")
    try:
        db = int(segments[1]) if len(segments) == 2 else 0
    except ValueError:
        raise BusUrlError(url, f"database {segments[1]!r} is not a number") from None
    return Topology(
        SENTINEL_SCHEME,
        url,
        cluster=False,
        min_replicas=options.min_replicas,
        replica_timeout=options.replica_timeout,
        sentinels=sentinels,
        service=unquote(segments[0]),
        db=db,
        username=unquote(username) or None,
        password=unquote(password) or None,
    )


def _host_port(url: str, host: str) -> tuple[str, int]:
    name, _, port = host.rpartition(":") if host.count(":") == 1 else (host, "", "")
    try:
        return (name or host, int(port) if port else SENTINEL_PORT)
    except ValueError:
        raise BusUrlError(url, f"Sentinel port {port!r} is not a number") from None
