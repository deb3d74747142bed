"""The real app under a real uvicorn on a free loopback port, for tests that speak HTTP."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import uvicorn
from fastapi import FastAPI
from temporalio.client import Client

from dee.plans.registry import PlanRegistry
from dee.runs.ledger import SendLedger
from dee.server.app import create_app
from dee.settings import Settings
from tests.helpers.smtp import SmtpServer, free_port, smtp_server
from tests.helpers.temporal import new_task_queue, running_worker

__all__ = ["RunningServer", "running_server", "server_with_worker"]


@dataclass
class RunningServer:
    app: FastAPI
    url: str
    http: httpx.AsyncClient


@contextlib.asynccontextmanager
async def running_server(
    settings: Settings,
    *,
    client: Client,
    registry: PlanRegistry | None = None,
    port: int | None = None,
) -> AsyncIterator[RunningServer]:
    """Serve ``create_app(settings, client=client)`` until the block ends.

    For links to work, ``settings.public_url`` should be the server's own URL: take a
    ``port`` from :func:`free_port` first and set ``public_url=f"http://127.0.0.1:{port}"``.
    """
    port = port or free_port()
    app = create_app(settings, client=client, registry=registry)
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(20):
            while not server.started:
                if task.done():
                    task.result()
                await asyncio.sleep(0.01)
        url = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            yield RunningServer(app, url, http)
    finally:
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, timeout=20)


@contextlib.asynccontextmanager
async def server_with_worker(
    client: Client, folder: Path, *, api_key: str
) -> AsyncIterator[tuple[RunningServer, SmtpServer]]:
    """The app and DEE's worker on a task queue of their own, with a SQLite database in
    ``folder``, the runs' emails going to a real SMTP server; requests carry ``api_key``."""
    database = f"sqlite:///{folder / 'dee.db'}"
    task_queue = new_task_queue()
    async with smtp_server() as smtp:
        settings = Settings(
            database_url=database,
            smtp_url=smtp.url,
            from_address="sales@example.com",
            secret_key="test-secret-key",
            task_queue=task_queue,
            api_keys=(api_key,),
        )
        with PlanRegistry(database) as registry, SendLedger(database) as ledger:
            async with (
                running_worker(client, task_queue=task_queue, settings=settings, ledger=ledger),
                running_server(settings, client=client, registry=registry) as up,
            ):
                up.http.headers.update({"Authorization": f"Bearer {api_key}"})
                yield up, smtp
