"""Schemathesis against the live API: requests generated from its own OpenAPI document, sent
to the real app under uvicorn on the Temporal dev server, must never get a 500 (a 503 with
`Retry-After` is the documented answer while storage or Temporal is down) and must get what
the document promises (status codes, content types, bodies).

Hypothesis drives the test synchronously, so the server runs in a thread of its own with
its own event loop and Temporal client (the session's loop is idle during a sync test).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import httpx
import hypothesis
import pytest
import schemathesis
import uvicorn
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from schemathesis.specs.openapi import checks
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from dee.plans.registry import PlanRegistry
from dee.server.app import create_app
from dee.settings import Settings
from tests.helpers.smtp import free_port
from tests.helpers.temporal import new_task_queue

KEY = "schema-test-key"


@contextlib.contextmanager
def live_api(address: str, namespace: str, database: Path) -> Iterator[str]:
    """Serve the app in a thread on a free port; its URL until the block ends."""
    port = free_port()
    # Every webhook and the codec configured, so each answers for what it is sent, not "not
    # configured".
    public_key = ec.generate_private_key(ec.SECP256R1()).public_key()
    der = public_key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    settings = Settings(
        database_url=f"sqlite:///{database}",
        api_keys=(KEY,),
        task_queue=new_task_queue(),
        secret_key="schema-test-secret",
        twilio_account_sid="AC" + "0" * 32,
        twilio_auth_token="schema-test-token",
        sendgrid_webhook_public_key=base64.b64encode(der).decode(),
        inbound_secret="schema-test-inbound",
        payload_keys=("schema:" + base64.b64encode(b"s" * 32).decode(),),
        codec_origins=("http://127.0.0.1:8233",),
    )
    servers: list[uvicorn.Server] = []
    failures: list[BaseException] = []

    async def serve(registry: PlanRegistry) -> None:
        client = await Client.connect(
            address, namespace=namespace, data_converter=pydantic_data_converter
        )
        app = create_app(settings, client=client, registry=registry)
        server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
        )
        servers.append(server)
        await server.serve()

    def run(registry: PlanRegistry) -> None:
        try:
            asyncio.run(serve(registry))
        except BaseException as exc:  # reported by the test's thread
            failures.append(exc)

    with PlanRegistry(settings.database_url) as registry:
        thread = threading.Thread(target=run, args=(registry,), name="api-server")
        thread.start()
        try:
            deadline = time.monotonic() + 30
            while not (servers and servers[0].started):
                assert not failures, failures
                assert thread.is_alive() and time.monotonic() < deadline, "no server"
                time.sleep(0.02)
            yield f"http://127.0.0.1:{port}"
        finally:
            if servers:
                servers[0].should_exit = True
            thread.join(timeout=30)
            assert not thread.is_alive(), "the API server did not stop"
    assert not failures, failures


def _document() -> dict[str, Any]:
    """The OpenAPI document, for generating cases when the module is collected (before any
    server runs): describing itself needs neither Temporal nor the registry's contents."""
    with (
        tempfile.TemporaryDirectory() as folder,
        PlanRegistry(f"sqlite:///{folder}/d.db") as registry,
    ):
        app = create_app(Settings(), client=cast(Client, None), registry=registry)
        return app.openapi()


@schemathesis.serializer("application/x-ndjson")
def _json_lines(ctx: Any, value: Any) -> bytes:
    """The bulk start's JSON Lines body: generated rows, one a line (anything else as JSON)."""
    items = value if isinstance(value, list) else [value]
    return "\n".join(json.dumps(item) for item in items).encode()


DOCUMENT = _document()
schema = schemathesis.openapi.from_dict(DOCUMENT)


@pytest.fixture(scope="module")
def live_url(
    dev_env: WorkflowEnvironment, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    config = dev_env.client.service_client.config
    database = tmp_path_factory.mktemp("schema") / "dee.db"
    with live_api(config.target_host, dev_env.client.namespace, database) as url:
        # The cases come from the document the live server serves.
        assert httpx.get(f"{url}/openapi.json").json() == DOCUMENT
        yield url


SETTINGS = hypothesis.settings(
    max_examples=25, deadline=None, suppress_health_check=list(hypothesis.HealthCheck)
)
AUTHORIZED = {"Authorization": f"Bearer {KEY}"}


@schemathesis.check
def not_500(ctx: Any, response: Any, case: schemathesis.Case[Any]) -> bool | None:
    """No answer is a 500, an unhandled failure; a 503 must say when to come back."""
    status = response.status_code
    assert status != 500, f"{case.operation.label} answered 500: {response.text[:500]}"
    if status == 503:
        assert "retry-after" in {name.lower() for name in response.headers}, (
            "503 without Retry-After"
        )
    return None


@schema.parametrize()
@SETTINGS
def test_no_route_answers_500(case: schemathesis.Case[Any], live_url: str) -> None:
    """Every route, the webhooks too: whatever arrives, the server does not fail."""
    case.call_and_validate(base_url=live_url, headers=AUTHORIZED, checks=[not_500])


@schema.include(path_regex="^/v1/").parametrize()
@SETTINGS
def test_the_api_answers_as_documented(case: schemathesis.Case[Any], live_url: str) -> None:
    """The REST API: status codes, content types, headers and bodies as the document says,
    and no answer without a key (``ignored_auth``)."""
    case.call_and_validate(
        base_url=live_url,
        headers=AUTHORIZED,
        excluded_checks=[
            # Schema-valid plans can still have plan problems (422 invalid-plan), and most
            # generated ids name no plan or run (404): both are right answers.
            checks.positive_data_acceptance,
            # Unknown query parameters are ignored, as HTTP APIs do.
            checks.negative_data_rejection,
            # Starlette's 405 names the methods of one matching route in `Allow`, not of
            # every route on the path (GET and POST /v1/plans are two routes).
            checks.unsupported_method,
            checks.allow_header_conformance,
        ],
    )
