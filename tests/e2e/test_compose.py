"""docker/compose.yaml: docker-compose accepts it, and its topology runs.

No Docker engine is needed. ``docker-compose config`` validates the file (the Debian
package ``docker-compose``; outside CI its absence skips those tests, with ``CI=true``
it fails them). Then the services' commands, as written in the file, run as local
processes: hostnames ``redis`` and ``postgres`` become the local servers, the mounted
files a temporary directory, and the registry file a copy on a fresh namespace and a
fresh PostgreSQL database. The app must register with every plugin acknowledging.

The file is read with PyYAML; a test checks that docker-compose reads exactly the same.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import sys
import tomllib
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit, urlunsplit

import anyio
import pytest
import sqlalchemy as sa
import yaml
from anyio.abc import Process

from rapid_objection.bus import Ack, Bus, HistoryEntry
from rapid_objection.bus._contract import decode_ack_entry
from rapid_objection.core import RegistryConfig
from rapid_objection.core._config import load_registry_config
from rapid_objection.plugin_workers.plugins import BUNDLED
from tests.core.conftest import postgres_admin_url

from . import CLI, REPO_ROOT, subprocess_env

__all__ = ["postgres_admin_url"]  # the PostgreSQL lane of tests/core, reused

COMPOSE = REPO_ROOT / "docker" / "compose.yaml"
IN_CI = os.environ.get("CI") == "true"
SERVERS = {"redis": "127.0.0.1", "postgres": "127.0.0.1"}
"""The compose services that are servers, and where the local ones answer."""
REGISTER_ORDER = [
    "app_registration_started",
    "connection_created",
    "auto_operations_started",
    "auto_operations_completed",
    "app_registered",
]
READY_LINES = {"run": "running:", "dashboard": "dashboard of namespace"}
"""What a service that is not a worker prints once it is ready, by its command."""
READY_TIMEOUT = 30.0
"""Seconds for the workers to announce themselves, and then for the registry to be up."""
STOP_TIMEOUT = 45.0
"""Seconds a process gets after SIGTERM (the registry's compose stop_grace_period)."""


def load_compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


# --- docker-compose -----------------------------------------------------------------------


@pytest.fixture(scope="session")
def docker_compose() -> str:
    """The ``docker-compose`` program; skipped (in CI: failed) when it is not installed."""
    found = shutil.which("docker-compose")
    if found is None:
        message = (
            "docker-compose is not installed "
            "(Debian: apt-get install -y --no-install-recommends docker-compose)"
        )
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return found


async def compose_config(program: str, *args: str) -> str:
    """``docker-compose <args> config``: the file as docker-compose understood it."""
    env = {**subprocess_env(), "COMPOSE_PROJECT_NAME": "rapid-objection"}
    with anyio.fail_after(60):
        done = await anyio.run_process(
            [program, *args, "config"], check=False, cwd=REPO_ROOT, env=env
        )
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout.decode()


class TestComposeFile:
    @pytest.mark.anyio
    async def test_docker_compose_accepts_it(self, docker_compose: str) -> None:
        """``docker-compose config`` validates the file without a complaint."""
        assert "services:" in await compose_config(docker_compose, "-f", str(COMPOSE))

    @pytest.mark.anyio
    async def test_pyyaml_reads_what_docker_compose_reads(
        self, docker_compose: str, tmp_path: Path
    ) -> None:
        """What PyYAML reads, given to docker-compose as JSON, is the same configuration
        as the YAML file itself."""
        as_json = tmp_path / "compose.json"
        as_json.write_text(json.dumps(load_compose()))
        project = ("--project-directory", str(COMPOSE.parent))
        from_yaml = await compose_config(docker_compose, "-f", str(COMPOSE), *project)
        from_json = await compose_config(docker_compose, "-f", str(as_json), *project)
        assert from_json == from_yaml

    def test_servers_registry_and_one_worker_service_per_bundled_plugin(self) -> None:
        """Redis and PostgreSQL with healthchecks; one registry running the mounted
        registry file after the servers and workers are healthy; one scalable worker
        service per bundled plugin, whose plugin the registry file declares external; a
        read-only dashboard published on the host's loopback only."""
        services = load_compose()["services"]
        assert set(services) == {"redis", "postgres", "registry", "dashboard", *BUNDLED}
        assert all("healthcheck" in service for service in services.values())
        registry = services["registry"]
        assert registry["command"] == ["run", "/etc/rapid-objection/registry.toml"]
        assert registry["depends_on"] == {
            name: {"condition": "service_healthy"}
            for name in services
            if name not in ("registry", "dashboard")
        }
        dashboard = services["dashboard"]
        assert dashboard["command"][0] == "dashboard"
        assert "--allow-actions" not in dashboard["command"]
        assert [port.split(":")[0] for port in dashboard["ports"]] == ["127.0.0.1"]
        config = registry_file()
        for plugin, target in BUNDLED.items():
            worker = services[plugin]
            assert worker["command"][:2] == ["worker", target]
            assert "redis://redis:6379/0" in worker["command"]
            assert worker["deploy"]["replicas"] >= 1
            assert worker["depends_on"]["redis"] == {"condition": "service_healthy"}
            table = config.plugins[plugin]
            assert (table.module, table.mode) == (target, "external")
        assert services["audit"]["deploy"]["replicas"] >= 2
        assert [str(app.database.url).split("+")[0] for app in config.apps.values()] == [
            "postgresql"
        ]


def registry_file() -> RegistryConfig:
    """docker/registry.toml, as the registry reads it."""
    return load_registry_config(COMPOSE.parent / "registry.toml")


# --- the topology, as local processes ----------------------------------------------------


@dataclass
class Local:
    """Where the containers' paths and hosts are, for processes on this machine."""

    root: Path
    """Stands for the containers' ``/``: mounted files and volumes live under it."""
    namespace: str
    database_url: str
    mounts: list[str] = field(default_factory=list)
    """Container paths that are mounted (bind mounts and named volumes)."""
    ports: dict[str, str] = field(default_factory=dict)
    """A container port a service listens on -> the port it listens on here (learnt
    from what it prints once listening on a port of the system's choice)."""

    def path(self, container_path: str) -> str:
        """The local path of a container path under a mount; others are kept."""
        if any(container_path == m or container_path.startswith(m + "/") for m in self.mounts):
            return str(self.root / container_path.lstrip("/"))
        return container_path

    def url(self, url: str) -> str:
        """A URL with the compose servers' hostnames replaced by the local servers."""
        if url.startswith("postgresql"):
            return self.database_url
        parts = urlsplit(url)
        host = parts.hostname
        if host in SERVERS:
            netloc = parts.netloc.replace(host, SERVERS[host])
            return urlunsplit(parts._replace(netloc=netloc))
        return url

    def value(self, value: Any) -> Any:
        """A value of a service or of the registry file, made local."""
        if isinstance(value, dict):
            return {key: self.value(item) for key, item in value.items()}
        if isinstance(value, list):
            return [self.value(item) for item in value]
        if not isinstance(value, str):
            return value
        if "://" in value:
            return self.url(value)
        return self.path(value) if value.startswith("/") else value

    def shell(self, command: str) -> str:
        """A healthcheck's shell command, made local (and ``$$``, compose's escape of a
        ``$`` that the shell is to see, unescaped as compose does)."""
        command = command.replace("$$", "$")
        command = re.sub(r"--namespace \S+", f"--namespace {self.namespace}", command)
        for port, here in self.ports.items():
            command = command.replace(f"127.0.0.1:{port}/", f"127.0.0.1:{here}/")
        return re.sub(r"\b\w+(\+\w+)?://\S+", lambda match: self.url(match[0]), command)

    def arguments(self, arguments: list[str]) -> list[str]:
        """A command line made local: the test's namespace, loopback for all interfaces,
        and a port of the system's choice for ``--port``."""
        local = {"--namespace": self.namespace, "--port": "0"}
        made: list[str] = []
        for before, argument in zip(["", *arguments], arguments, strict=False):
            if before == "--host":
                made.append("127.0.0.1")  # never every interface of the test's machine
            else:
                made.append(local.get(before, argument))
        return made


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    raise TypeError(f"no TOML for {value!r}")


def to_toml(data: dict[str, Any], prefix: str = "") -> str:
    """A TOML document of nested tables of scalars (what a registry file holds)."""
    lines = [f"[{prefix}]"] if prefix else []
    tables: list[str] = []
    for key, value in data.items():
        if isinstance(value, dict):
            tables.append(
                to_toml(value, f"{prefix}.{_toml_key(key)}" if prefix else _toml_key(key))
            )
        else:
            lines.append(f"{_toml_key(key)} = {_toml_value(value)}")
    return "\n".join([*lines, "", *tables])


def local_registry_file(source: Path, local: Local) -> str:
    """The registry file on the local servers, the test's namespace and database, and a
    port of the system's choice for each plugin that serves one."""
    data = local.value(tomllib.loads(source.read_text()))
    data.setdefault("bus", {})["namespace"] = local.namespace
    for plugin in data.get("plugins", {}).values():
        if "port" in plugin.get("config", {}):
            plugin["config"]["port"] = 0
    return to_toml(data)


@dataclass
class Running:
    """One replica of a compose service, as a local process."""

    service: str
    process: Process
    log_path: Path
    _log: IO[bytes] = field(repr=False)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    @property
    def running(self) -> bool:
        return self.process.returncode is None


class Topology:
    """The compose services, started as local processes in dependency order."""

    def __init__(self, compose: dict[str, Any], local: Local, bus: Bus) -> None:
        self.services = {
            name: service for name, service in compose["services"].items() if name not in SERVERS
        }
        self.local = local
        self.bus = bus
        self.running: list[Running] = []
        self.prepare(compose)

    def prepare(self, compose: dict[str, Any]) -> None:
        """Lay out the mounts under the local root: bind-mounted registry files as local
        copies, other bind mounts as links, named volumes as empty directories."""
        named = set(compose.get("volumes") or {})
        for service in self.services.values():
            for mount in service.get("volumes", []):
                source, target = mount.split(":")[:2]
                self.local.mounts.append(target)
        for service in self.services.values():
            for mount in service.get("volumes", []):
                source, target = mount.split(":")[:2]
                where = self.local.root / target.lstrip("/")
                if where.exists() or where.is_symlink():
                    continue
                where.parent.mkdir(parents=True, exist_ok=True)
                if source in named:
                    where.mkdir()
                elif source.endswith(".toml"):
                    where.write_text(local_registry_file(COMPOSE.parent / source, self.local))
                else:
                    where.symlink_to((COMPOSE.parent / source).resolve())

    def order(self) -> list[str]:
        """Services after the ones they depend on."""
        ordered: list[str] = []

        def visit(name: str) -> None:
            if name in ordered or name not in self.services:
                return
            for dependency in self.services[name].get("depends_on", {}):
                visit(dependency)
            ordered.append(name)

        for name in self.services:
            visit(name)
        return ordered

    async def start(self, name: str) -> list[Running]:
        """Start every replica of service ``name`` with the command the file gives it."""
        service = self.services[name]
        arguments = [str(self.local.value(arg)) for arg in service["command"]]
        command = [CLI, *self.local.arguments(arguments)]
        env = {**subprocess_env(), **self.local.value(service.get("environment") or {})}
        replicas = int(service.get("deploy", {}).get("replicas", 1))
        started = []
        for replica in range(1, replicas + 1):
            log_path = self.local.root / f"{name}-{replica}.log"
            log = log_path.open("wb")
            process = await anyio.open_process(
                command, stdin=None, stdout=log, stderr=log, cwd=self.local.root, env=env
            )
            started.append(Running(name, process, log_path, log))
        self.running.extend(started)
        return started

    async def up(self) -> None:
        """Start the services in order; each is ready before its dependents start."""
        for name in self.order():
            started = await self.start(name)
            command = self.services[name]["command"]
            if command[0] == "worker":
                await self.workers_announced(started)
                continue
            await self.output(started[0], READY_LINES[command[0]])
            if "--port" in command:
                [port] = re.findall(r"http://127\.0\.0\.1:(\d+)/", started[0].log())
                self.local.ports[str(command[command.index("--port") + 1])] = port

    async def workers_announced(self, started: list[Running]) -> None:
        pids = {replica.process.pid for replica in started}
        with anyio.move_on_after(READY_TIMEOUT):
            while all(replica.running for replica in started):
                announced = {info.pid for info in await self.bus.directory.workers()}
                if pids <= announced:
                    return
                await anyio.sleep(0.1)
        pytest.fail(f"workers of {started[0].service} not ready:\n{self.logs()}")

    async def output(self, replica: Running, text: str) -> None:
        """Wait until ``replica`` has printed ``text``."""
        with anyio.move_on_after(READY_TIMEOUT):
            while replica.running:
                if text in replica.log():
                    return
                await anyio.sleep(0.1)
        pytest.fail(f"{replica.service} never printed {text!r}:\n{self.logs()}")

    async def stop(self, replica: Running) -> int:
        """SIGTERM, then the exit status (SIGKILL after ``STOP_TIMEOUT``)."""
        if replica.running:
            replica.process.send_signal(signal.SIGTERM)
        with anyio.move_on_after(STOP_TIMEOUT, shield=True):
            await replica.process.wait()
        if replica.running:
            replica.process.kill()
        with anyio.CancelScope(shield=True):
            code = await replica.process.wait()
            await replica.process.aclose()
        replica._log.close()
        return code

    async def down(self) -> None:
        """Stop every process still running, dependents first."""
        for replica in reversed(self.running):
            if replica.running or not replica._log.closed:
                await self.stop(replica)

    def logs(self) -> str:
        return "\n".join(f"--- {r.service} ---\n{r.log()}" for r in self.running)

    def replicas(self, name: str) -> list[Running]:
        return [replica for replica in self.running if replica.service == name]


@pytest.fixture
def database_url(postgres_admin_url: str) -> Iterator[str]:
    """A fresh PostgreSQL database, dropped afterwards."""
    name = f"ro_compose_{secrets.token_hex(6)}"
    admin = sa.create_engine(
        postgres_admin_url, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool
    )
    try:
        with admin.connect() as connection:
            connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
        yield (
            sa.make_url(postgres_admin_url).set(database=name).render_as_string(hide_password=False)
        )
        with admin.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


@pytest.fixture
async def topology(redis_bus: Bus, database_url: str, tmp_path: Path) -> AsyncIterator[Topology]:
    local = Local(tmp_path, redis_bus.namespace, database_url)
    running = Topology(load_compose(), local, redis_bus)
    try:
        yield running
    finally:
        await running.down()


async def registry_acks(bus: Bus, registry: str) -> list[Ack]:
    entries = await bus.redis.xrange(bus.keys.acks(registry), "-", "+", count=100_000)
    return [ack for _, fields in entries for ack in decode_ack_entry(fields)]


async def history(bus: Bus, app: str) -> list[HistoryEntry]:
    return [entry async for entry in bus.history.iterate(app=app)]


def read_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - loopback
        return json.load(response)


async def healthcheck(local: Local, service: dict[str, Any]) -> int:
    """Run a service's CMD-SHELL healthcheck here; its exit status."""
    kind, command = service["healthcheck"]["test"]
    assert kind == "CMD-SHELL"
    env = subprocess_env()
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    with anyio.fail_after(30):
        done = await anyio.run_process(
            ["sh", "-c", local.shell(command)], check=False, cwd=local.root, env=env
        )
    return done.returncode


@pytest.mark.anyio
@pytest.mark.slow
@pytest.mark.redis_server
class TestTopology:
    async def test_the_app_registers_with_every_plugin_acking(
        self, topology: Topology, redis_bus: Bus, database_url: str
    ) -> None:
        """Workers of the three plugins, then the registry, as the file starts them: the
        registry registers "shop" on PostgreSQL, every plugin acknowledges each
        registration event whose hook it implements (audit writes its rows, backup makes
        a dump), the healthchecks pass, and SIGTERM stops everything cleanly."""
        await topology.up()
        [registry] = topology.replicas("registry")
        config = load_registry_config(topology.local.root / "etc/rapid-objection/registry.toml")
        registry_id = config.registry.id
        assert registry_id is not None
        assert "app shop: registered" in registry.log(), topology.logs()

        events = await history(redis_bus, "shop")
        assert [entry.envelope.type for entry in events][:5] == REGISTER_ORDER
        registration = {entry.envelope.id: entry.envelope.type for entry in events[:5]}
        manifests = await redis_bus.directory.manifests()
        assert set(manifests) == set(BUNDLED)
        acks = await registry_acks(redis_bus, registry_id)
        for event_id, event_type in registration.items():
            for plugin, manifest in manifests.items():
                statuses = [a.status for a in acks if (a.event_id, a.plugin) == (event_id, plugin)]
                # A plugin acks what it handles; a hook it lacks is acked (as skipped)
                # only to a registry that awaits it, which it does not for a known hook.
                expected = ["ok"] if event_type in manifest.hooks else []
                assert statuses == expected, (plugin, event_type, topology.logs())
        registered = next(i for i, t in registration.items() if t == "app_registered")
        by_plugin = {a.plugin: a for a in acks if a.event_id == registered}
        assert {plugin: ack.status for plugin, ack in by_plugin.items()} == dict.fromkeys(
            BUNDLED, "ok"
        )

        # What the plugins did: audit rows in the app's database, a dump of it.
        engine = sa.create_engine(database_url, poolclass=sa.NullPool)
        try:
            with engine.connect() as connection:
                rows = connection.execute(
                    sa.text("SELECT event_id FROM ro_audit WHERE app = 'shop'")
                ).scalars()
                assert set(registration) <= set(rows)
        finally:
            engine.dispose()
        copy = by_plugin["backup"].result
        assert copy["format"] == "dump"
        assert await anyio.Path(copy["path"]).is_dir()
        assert Path(copy["path"]).is_relative_to(topology.local.root)

        # Scaled: each audit replica is a consumer of the audit group.
        consumers = await redis_bus.redis.xinfo_consumers(redis_bus.keys.events, "audit")
        assert len(consumers) == len(topology.replicas("audit")) >= 2
        assert await redis_bus.directory.apps() == {"shop": registry_id}

        # The healthchecks, run here, pass while the services run.
        for name, service in topology.services.items():
            assert await healthcheck(topology.local, service) == 0, name
        # The dashboard shows the namespace: GET /api/status is ``status --json``.
        shown = await anyio.to_thread.run_sync(
            read_json, f"http://127.0.0.1:{topology.local.ports['8150']}/api/status"
        )
        assert shown["namespace"] == redis_bus.namespace
        assert [entry["info"]["id"] for entry in shown["registries"]] == [registry_id]
        assert {plugin["name"] for plugin in shown["plugins"]} == set(BUNDLED)

        assert await topology.stop(registry) == 0, registry.log()
        assert "shutdown in" in registry.log()
        assert "connections of apps closed: shop" in registry.log()
        shutdown = [
            e for e in await history(redis_bus, "shop") if e.envelope.id not in registration
        ]
        assert "connection_shutdown" in [entry.envelope.type for entry in shutdown]
        assert await healthcheck(topology.local, topology.services["registry"]) != 0
        for worker in topology.running:
            if worker.running:
                assert await topology.stop(worker) == 0, worker.log()
        assert await healthcheck(topology.local, topology.services["audit"]) != 0
