"""docker-compose.tls.yml: Temporal's frontend on mutual TLS, with certificates from
deploy/tls/generate-certs.sh.

The overlay is read as Compose merges it over docker-compose.yml. Its certificates are made
for real (openssl), and DEE's own client is driven with the worker's merged settings through
a mutual-TLS endpoint in front of the Temporal dev server, the way the ``temporal`` service
of the TLS stack checks clients: with the client certificate it gets in; without, it is
turned away.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path, PurePosixPath

import pytest
from temporalio.api.workflowservice.v1 import ListNamespacesRequest
from temporalio.testing import WorkflowEnvironment

from dee.runs.temporal import TemporalSetupError, connect
from tests.helpers.compose import COMPOSE_FILE, DEV_ENV_FILE, TLS_COMPOSE_FILE, Compose
from tests.helpers.compose import read_env_file as _read_env_file
from tests.helpers.spec import ROOT

SCRIPT = ROOT / "deploy" / "tls" / "generate-certs.sh"
MOUNTED_AT = PurePosixPath("/etc/temporal/tls")
#: What the script writes, and what the overlay's services read.
CERT_FILES = {"ca.pem", "server.pem", "server.key", "client.pem", "client.key"}

TLS = Compose(COMPOSE_FILE, TLS_COMPOSE_FILE, env=_read_env_file(DEV_ENV_FILE))

needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")


def _paths(service: str) -> set[PurePosixPath]:
    return {
        PurePosixPath(value)
        for value in TLS.environment(service).values()
        if value.startswith(f"{MOUNTED_AT}/")
    }


@pytest.mark.parametrize(
    "service", ["temporal", "temporal-setup", "temporal-ui", "dee-worker", "dee-api"]
)
def test_every_party_reads_the_certificates_the_script_makes(service: str) -> None:
    assert ("./deploy/tls/certs", str(MOUNTED_AT)) in TLS.volumes(service)
    paths = _paths(service)
    assert paths and {path.parent for path in paths} == {MOUNTED_AT}
    assert {path.name for path in paths} <= CERT_FILES
    assert "ca.pem" in {path.name for path in paths}


def test_the_server_requires_client_certificates_of_the_ca() -> None:
    server = TLS.environment("temporal")
    assert server["TEMPORAL_TLS_REQUIRE_CLIENT_AUTH"] == "true"
    assert server["TEMPORAL_TLS_CLIENT1_CA_CERT"] == f"{MOUNTED_AT}/ca.pem"
    assert server["TEMPORAL_TLS_FRONTEND_CERT"] == f"{MOUNTED_AT}/server.pem"
    assert server["TEMPORAL_TLS_FRONTEND_SERVER_NAME"] == "temporal"
    ui = TLS.environment("temporal-ui")
    assert (ui["TEMPORAL_TLS_CERT"], ui["TEMPORAL_TLS_ENABLE_HOST_VERIFICATION"]) == (
        f"{MOUNTED_AT}/client.pem",
        "true",
    )


@pytest.mark.parametrize("service", ["temporal-setup", "dee-worker", "dee-api"])
def test_clients_present_their_certificate_and_check_the_servers_name(service: str) -> None:
    env = TLS.environment(service)
    assert env["TEMPORAL_TLS"] == "true"
    assert env["TEMPORAL_TLS_CLIENT_CERT_PATH"] == f"{MOUNTED_AT}/client.pem"
    assert env["TEMPORAL_TLS_CLIENT_KEY_PATH"] == f"{MOUNTED_AT}/client.key"
    assert env["TEMPORAL_TLS_SERVER_CA_CERT_PATH"] == f"{MOUNTED_AT}/ca.pem"
    assert env["TEMPORAL_TLS_SERVER_NAME"] == "temporal"
    assert env["TEMPORAL_ADDRESS"] == "temporal:7233"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tls") / "certs"
    result = subprocess.run(
        ["sh", str(SCRIPT), str(folder)], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    return folder


@needs_openssl
def test_the_script_makes_a_ca_a_server_and_a_client_certificate(certs: Path) -> None:
    assert {path.name for path in certs.iterdir() if path.is_file()} == CERT_FILES
    # The CA's key stays where no container user can read it.
    assert (certs / "ca" / "ca.key").stat().st_mode & 0o077 == 0
    for purpose, leaf in [
        ("sslserver", "server"),
        ("sslclient", "server"),
        ("sslclient", "client"),
    ]:
        verified = subprocess.run(
            ["openssl", "verify", "-CAfile", str(certs / "ca.pem"), "-purpose", purpose]
            + [str(certs / f"{leaf}.pem")],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert verified.returncode == 0, (purpose, leaf, verified.stdout, verified.stderr)
    again = subprocess.run(
        ["sh", str(SCRIPT), str(certs)], capture_output=True, text=True, timeout=30, check=False
    )
    assert again.returncode == 1
    assert "already holds certificates" in again.stderr


@contextlib.asynccontextmanager
async def mutual_tls_frontend(certs: Path, upstream: str) -> AsyncIterator[int]:
    """A port that speaks TLS with the server certificate, requires a client certificate of
    the CA, and passes the decrypted stream on to ``upstream`` (the dev server)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=certs / "ca.pem")
    context.load_cert_chain(certs / "server.pem", certs / "server.key")
    context.verify_mode = ssl.CERT_REQUIRED
    context.set_alpn_protocols(["h2"])
    host, _, port = upstream.rpartition(":")
    tasks: set[asyncio.Task[None]] = set()

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        if writer.can_write_eof():
            with contextlib.suppress(OSError, RuntimeError):
                writer.write_eof()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(host, int(port))
        both = [
            asyncio.create_task(pipe(reader, up_writer)),
            asyncio.create_task(pipe(up_reader, writer)),
        ]
        tasks.update(both)
        try:
            await asyncio.gather(*both, return_exceptions=True)
        finally:
            for each in (writer, up_writer):
                each.close()
                with contextlib.suppress(OSError, ssl.SSLError, asyncio.CancelledError):
                    await asyncio.wait_for(each.wait_closed(), timeout=5)

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=context)
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        server.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()


@needs_openssl
async def test_dee_connects_over_mutual_tls_with_the_workers_settings(
    certs: Path,
    dev_env: WorkflowEnvironment,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    upstream = dev_env.client.service_client.config.target_host
    async with mutual_tls_frontend(certs, upstream) as port:
        worker = TLS.environment("dee-worker")
        for name, value in worker.items():
            if name.startswith("TEMPORAL_"):
                monkeypatch.setenv(name, value.replace(str(MOUNTED_AT), str(certs)))
        # The stack's address, here: the server name checked stays `temporal`.
        monkeypatch.setenv("TEMPORAL_ADDRESS", f"127.0.0.1:{port}")
        monkeypatch.setenv("TEMPORAL_NAMESPACE", dev_env.client.namespace)
        monkeypatch.setenv("TEMPORAL_CONFIG_FILE", str(tmp_path / "no-temporal-profiles.toml"))
        client = await asyncio.wait_for(connect(), timeout=60)
        listed = await client.workflow_service.list_namespaces(ListNamespacesRequest())
        assert dev_env.client.namespace in {
            namespace.namespace_info.name for namespace in listed.namespaces
        }

        # Without the client certificate, the frontend turns DEE away.
        monkeypatch.delenv("TEMPORAL_TLS_CLIENT_CERT_PATH")
        monkeypatch.delenv("TEMPORAL_TLS_CLIENT_KEY_PATH")
        with pytest.raises(
            TemporalSetupError, match=f"cannot connect to Temporal at 127.0.0.1:{port}"
        ):
            await asyncio.wait_for(connect(), timeout=60)
