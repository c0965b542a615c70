"""The TLS lane: a redis-server that speaks TLS only (``--port 0 --tls-port``), with
certificates made at test time by the openssl command; registry and worker processes
use ``rediss://`` with the CA verified. A wrong CA is a ``BusUnavailable`` naming the
address (password masked), never a plain-text connection."""

from __future__ import annotations

import secrets
import shutil
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest

from rapid_objection.bus import Bus, BusUnavailable, Publisher
from rapid_objection.bus.testing import drained
from tests.e2e import one_line_error, run_cli
from tests.topologies import free_ports

from .conftest import IN_CI
from .plugins import Recorder
from .tally import tally
from .test_faults import publish
from .workers import process_workers

pytestmark = [pytest.mark.anyio, pytest.mark.slow, pytest.mark.redis_server]

PASSWORD = "tls-" + secrets.token_hex(6)
READY_TIMEOUT = 10.0


OPENSSL = shutil.which("openssl")


def openssl(*args: str | Path, cwd: Path) -> None:
    assert OPENSSL is not None
    subprocess.run([OPENSSL, *map(str, args)], cwd=cwd, check=True, capture_output=True)


def make_ca(directory: Path, name: str) -> Path:
    """A self-signed CA, ``<name>.crt`` and ``<name>.key``; returns the certificate."""
    openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        "-keyout", f"{name}.key", "-out", f"{name}.crt", "-subj", f"/CN={name}",
        cwd=directory,
    )  # fmt: skip
    return directory / f"{name}.crt"


def make_server_certificate(directory: Path, ca: str) -> tuple[Path, Path]:
    """A server certificate for 127.0.0.1 and localhost signed by the CA ``ca``."""
    openssl(
        "req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key",
        "-out", "server.csr", "-subj", "/CN=localhost",
        cwd=directory,
    )  # fmt: skip
    (directory / "san.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    openssl(
        "x509", "-req", "-in", "server.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key",
        "-CAcreateserial", "-out", "server.crt", "-days", "1", "-extfile", "san.cnf",
        cwd=directory,
    )  # fmt: skip
    return directory / "server.crt", directory / "server.key"


@dataclass(frozen=True)
class TlsServer:
    port: int
    ca: Path
    wrong_ca: Path

    def url(self, ca: Path | None = None) -> str:
        return (
            f"rediss://:{PASSWORD}@127.0.0.1:{self.port}/0?ssl_ca_certs={ca or self.ca}"
            "&ssl_min_version=771"  # TLS 1.2 or later, as docs/operations.md shows
        )


@pytest.fixture
async def tls_server(redis_server_path: str, tmp_path: Path) -> AsyncIterator[TlsServer]:
    """A redis-server on a TLS port only, with a password; stopped after the test."""
    if OPENSSL is None:
        message = "TLS lane: the openssl command is not on PATH"
        pytest.fail(message) if IN_CI else pytest.skip(message)
    certificates = tmp_path / "tls"
    certificates.mkdir()
    ca, wrong_ca = make_ca(certificates, "ca"), make_ca(certificates, "wrong-ca")
    cert, key = make_server_certificate(certificates, "ca")
    (port,) = free_ports(1)
    command = [
        redis_server_path, "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
        "--tls-cert-file", cert, "--tls-key-file", key, "--tls-ca-cert-file", ca,
        "--tls-auth-clients", "no", "--requirepass", PASSWORD,
        "--save", "", "--appendonly", "no", "--dir", tmp_path,
    ]  # fmt: skip
    log = (tmp_path / "redis-tls.log").open("wb")
    process = await anyio.open_process(list(map(str, command)), stdout=log, stderr=log)
    server = TlsServer(port, ca, wrong_ca)
    try:
        with anyio.fail_after(READY_TIMEOUT):
            while True:
                assert process.returncode is None, (tmp_path / "redis-tls.log").read_text()
                try:
                    async with Bus.connect(server.url()):
                        break
                except BusUnavailable:
                    await anyio.sleep(0.05)
        yield server
    finally:
        process.terminate()
        with anyio.move_on_after(10, shield=True):
            await process.wait()
        if process.returncode is None:
            process.kill()
        await process.aclose()
        log.close()


async def test_registry_and_workers_over_tls(
    tls_server: TlsServer, namespace: str, tmp_path: Path
) -> None:
    """Two worker processes and a registry, all on ``rediss://`` with the CA verified:
    every event is handled and acked; ``status`` reads the namespace over TLS too."""
    url, events = tls_server.url(), 200
    async with Bus.connect(url, namespace) as bus:
        async with process_workers(bus, url, tmp_path) as workers:
            await workers.start(Recorder, 2, concurrency=4)
            async with Publisher(bus, "tls-registry") as publisher:
                await publish(publisher, events)
            await drained(bus, Recorder.NAME, timeout=30)
        result = await tally(bus, Recorder.NAME)
        assert (result.events, result.delivered, result.lost) == (events, events, 0)
    code, out, err = await run_cli("status", "--json", "--bus-url", url, "--namespace", namespace)
    assert code == 0, err
    assert Recorder.NAME in out


async def test_a_wrong_ca_is_unavailable_not_plain_text(tls_server: TlsServer) -> None:
    """A server certificate that the given CA did not sign: ``BusUnavailable`` naming the
    address with the password masked and the verification failure; the CLI says it in
    one line. No plain-text connection is tried (the server has no plain port)."""
    wrong = tls_server.url(tls_server.wrong_ca)
    with pytest.raises(BusUnavailable) as caught:
        async with Bus.connect(wrong):
            pass
    message = str(caught.value)
    assert f"rediss://:***@127.0.0.1:{tls_server.port}/0" in message
    assert "certificate verify failed" in message
    assert PASSWORD not in message
    code, out, err = await run_cli("status", "--bus-url", wrong, "--namespace", "x")
    line = one_line_error(code, out, err)
    assert "certificate verify failed" in line
    assert PASSWORD not in line
