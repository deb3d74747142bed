"""The real app under a real uvicorn on a free loopback port, for tests that speak HTTP."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import uvicorn
from fastapi import FastAPI
from temporalio.client import Client

from dee.plans.registry import PlanRegistry
from dee.server.app import create_app
from dee.settings import Settings
from tests.helpers.smtp import free_port

__all__ = ["RunningServer", "running_server"]


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
