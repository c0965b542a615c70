"""Shared fixtures: the two bus lanes (embedded and real Redis) and per-test isolation.

Outside CI a lane whose server does not answer is skipped with one line saying so;
with ``CI=true`` it fails instead, so that CI never passes on a skipped lane.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator, Iterator
from urllib.parse import urlsplit, urlunsplit

import anyio
import pytest
import redis

from rapid_objection.bus import Bus
from rapid_objection.bus._redis_memory import forget_memory_server
from rapid_objection.bus.testing import purge

from .topologies import Cluster, TopologyError, start_cluster

REDIS_URL = os.environ.get("RAPID_OBJECTION_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
IN_CI = os.environ.get("CI") == "true"


def _answers(url: str) -> str | None:
    """None when the server answers PING, else the reason."""
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1)
        try:
            client.ping()
        finally:
            client.close()
    except (redis.RedisError, OSError) as exc:
        return str(exc)
    return None


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The real Redis of the redis lane; skipped (or, in CI, failed) when it is down."""
    reason = _answers(REDIS_URL)
    if reason is not None:
        message = f"real-Redis lane: {REDIS_URL} does not answer ({reason})"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return REDIS_URL


MISSING_DATABASE_PASSWORD = "db99-secret"  # noqa: S105 - a password that must not show
"""What ``missing_database_url`` gives the default user, when the lane's URL gives none."""


@pytest.fixture(scope="session")
def missing_database_url(redis_url: str) -> str:
    """The real Redis, selecting database 99, which a stock server (16) does not have.

    With the password above for the default user when the lane's URL has no user of its
    own: a user without a password accepts any, so the masking of a password shows."""
    parts = urlsplit(redis_url)
    netloc = (
        parts.netloc
        if "@" in parts.netloc
        else f"default:{MISSING_DATABASE_PASSWORD}@{parts.netloc}"
    )
    return urlunsplit(parts._replace(netloc=netloc, path="/99"))


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A Redis Cluster of the session's own (3 masters, 3 replicas), started on first use."""
    try:
        cluster = start_cluster(tmp_path_factory.mktemp("cluster"))
    except TopologyError as exc:
        message = f"cluster lane: {exc}"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    try:
        yield cluster
    finally:
        cluster.servers.close()


@pytest.fixture(params=["embedded", "redis", "cluster"])
def bus_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """Each bus test runs three times: on the embedded bus, on the real Redis and on a
    Redis Cluster (through the URL of one node: the namespace's slot may be elsewhere)."""
    yield from _lane_url(request)


@pytest.fixture(params=["embedded", "redis"])
def two_lane_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """The embedded bus and the real Redis, for tests that need no cluster lane of their
    own (a keyring, say, works the same on every topology)."""
    yield from _lane_url(request)


def _lane_url(request: pytest.FixtureRequest) -> Iterator[str]:
    if request.param == "embedded":
        name = f"t-{secrets.token_hex(6)}"
        yield f"memory://{name}"
        forget_memory_server(name)
    elif request.param == "cluster":
        yield request.getfixturevalue("redis_cluster").url
    else:
        yield request.getfixturevalue("redis_url")


@pytest.fixture
def namespace() -> str:
    """A namespace of its own per test: the isolation on the shared real Redis."""
    return f"t-{secrets.token_hex(6)}"


@pytest.fixture
async def redis_bus(redis_url: str, namespace: str) -> AsyncIterator[Bus]:
    """A bus on the real Redis in the test's own namespace, purged afterwards."""
    async with Bus.connect(redis_url, namespace) as opened:
        try:
            yield opened
        finally:
            with anyio.CancelScope(shield=True):
                await purge(opened)


@pytest.fixture
async def bus(bus_url: str, namespace: str) -> AsyncIterator[Bus]:
    async with Bus.connect(bus_url, namespace) as opened:
        try:
            yield opened
        finally:
            await purge(opened)
