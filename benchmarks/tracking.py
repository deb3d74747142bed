"""Tracking hits turned into signals, against signalling with a plain Temporal client.

On one Temporal dev server, with DEE's worker and ``dee serve`` each in a process of their
own, runs of a plan that only waits get one ``open`` each:

- through the tracking server: a GET of each run's signed pixel URL over HTTP/1.1 (a small
  keep-alive client, :class:`Http11`), which keeps the hit in the database, takes the run's
  collapse key and signals after answering;
- through a plain Temporal client: ``dee.runs.client.send_event``, the same event, directly.

Both with the same number of requests in flight. Signals per second are counted from the
start to the Temporal server's own time stamp of the last signal event, read from the
runs' histories afterwards, so signals still in flight after the last HTTP answer count.
The CPU of the server (and of its event loop's thread) and of this process, the load
generator, are reported per signal.

Then a burst of 1,000 fetches of one pixel, against 1,000 plain signals of one event id
(the run drops all but the first, but each still lands in its history), reporting the
history events each adds to its run.

    .venv/bin/python benchmarks/tracking.py [--runs 500] [--rounds 2] [--concurrency 32]
        [--serve-option=--http=h11 ...] [--profile server.prof]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
from sqlalchemy import func, select  # noqa: E402
from temporalio.api.enums.v1 import EventType  # noqa: E402
from temporalio.client import Client  # noqa: E402

from dee.plans.model import ExecutionPlan  # noqa: E402
from dee.plans.registry import PlanRegistry  # noqa: E402
from dee.plans.versions import PlanVersion  # noqa: E402
from dee.runs.client import send_event, start_run  # noqa: E402
from dee.runs.tracking import open_pixel_url  # noqa: E402
from dee.server._tracking_tables import tracking_signals  # noqa: E402
from dee.server.hits import HitStore  # noqa: E402
from dee.storage.database import make_engine, resolve_url  # noqa: E402
from tests.helpers.smtp import free_port  # noqa: E402
from tests.helpers.temporal import start_dev_env  # noqa: E402

SECRET = "benchmark-secret"
STEP = "intro-email"
SIGNALED = EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED


@dataclass
class Measurement:
    variant: str
    signals: int
    seconds: float
    latencies: list[float]
    #: Seconds from the start to the last answer.
    answered: float
    #: CPU seconds the ``dee serve`` process used meanwhile.
    server_cpu: float
    #: Of which its main thread (the event loop: HTTP, tokens, signals).
    loop_cpu: float
    #: CPU seconds this process (the load generator) used meanwhile.
    client_cpu: float

    @property
    def per_second(self) -> float:
        return self.signals / self.seconds


def waiting_plan(plan_id: str) -> ExecutionPlan:
    return ExecutionPlan.model_validate(
        {
            "id": plan_id,
            "name": "Waiting",
            "metadata": {"createdBy": "benchmark"},
            "steps": [
                {"type": "wait", "id": "pause", "duration": {"hours": 2}},
                {"type": "end", "id": "done", "outcome": "waited"},
            ],
            "transitions": "linear",
        }
    )


async def bounded(
    calls: list[Callable[[], Awaitable[None]]], concurrency: int
) -> tuple[float, list[float]]:
    """Run ``calls`` with at most ``concurrency`` in flight; the wall-clock start, and each
    call's latency."""
    gate = asyncio.Semaphore(concurrency)
    latencies: list[float] = []

    async def one(call: Callable[[], Awaitable[None]]) -> None:
        async with gate:
            began = time.perf_counter()
            await call()
            latencies.append(time.perf_counter() - began)

    started = time.time()
    await asyncio.gather(*(one(call) for call in calls))
    return started, latencies


async def start_runs(
    client: Client, version: PlanVersion, count: int, task_queue: str, tag: str
) -> list[str]:
    gate = asyncio.Semaphore(32)

    async def one(index: int) -> str:
        async with gate:
            return await start_run(
                client,
                version,
                contact={"id": f"{tag}-{index}", "email": f"{tag}-{index}@example.com"},
                task_queue=task_queue,
            )

    return list(await asyncio.gather(*(one(index) for index in range(count))))


async def history(client: Client, run_id: str) -> list[tuple[EventType.ValueType, float]]:
    """The run's events as (type, server time stamp in seconds)."""
    return [
        (event.event_type, event.event_time.ToNanoseconds() / 1e9)
        async for event in client.get_workflow_handle(run_id).fetch_history_events()
    ]


async def last_signal_time(client: Client, run_ids: list[str], expected: int) -> float:
    """When the last of ``expected`` signals to ``run_ids`` landed, by the server's clock;
    waits (bounded) for signals still on their way."""
    deadline = time.monotonic() + 60
    gate = asyncio.Semaphore(32)

    async def signals(run_id: str) -> list[float]:
        async with gate:
            return [at for kind, at in await history(client, run_id) if kind == SIGNALED]

    # A run's history is fetched again only until its signal is in: reading 300 histories
    # five times a second would take the CPU the server still needs for its last signals.
    landed: dict[str, list[float]] = {}
    while True:
        missing = [run_id for run_id in run_ids if run_id not in landed]
        for run_id, ats in zip(missing, await asyncio.gather(*map(signals, missing)), strict=True):
            if ats:
                landed[run_id] = ats
        found = [at for ats in landed.values() for at in ats]
        if len(found) >= expected or time.monotonic() > deadline:
            assert len(found) == expected, f"expected {expected} signals, found {len(found)}"
            return max(found)
        await asyncio.sleep(0.2)


class Http11:
    """GETs over keep-alive HTTP/1.1 connections to one server, one request at a time on
    each: the load generator. httpx took more CPU a request than the server it measured
    (3 to 5 ms against 1 to 4), on the same two cores; this reads the status line and a
    Content-Length body and nothing else, which is all a pixel or a redirect needs."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        assert parts.hostname is not None and parts.port is not None
        self.host, self.port = parts.hostname, parts.port
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def get(self, url: str) -> tuple[int, bytes]:
        """The status and body of a GET of ``url``'s path (and query)."""
        parts = urlsplit(url)
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        if self._idle:
            reader, writer = self._idle.pop()
        else:
            reader, writer = await asyncio.open_connection(self.host, self.port)
        writer.write(
            f"GET {target} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            "User-Agent: dee-benchmark\r\n\r\n".encode()
        )
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        body = await reader.readexactly(length)
        self._idle.append((reader, writer))
        return status, body

    async def close(self) -> None:
        for _reader, writer in self._idle:
            writer.close()
        self._idle.clear()


async def settled(database: str, run_ids: list[str]) -> None:
    """Until the server has settled the keys of ``run_ids`` (their signals are in), read
    from its database with one query every 0.1 s: polling the runs' histories meanwhile
    would load Temporal while the server still signals through it, which the plain
    client's signals never compete with."""
    engine = make_engine(resolve_url(database))
    signals = tracking_signals.c
    done = (
        select(func.count())
        .select_from(tracking_signals)
        .where(signals.run_id.in_(run_ids), signals.done_at.is_not(None))
    )

    def count() -> int:
        with engine.connect() as connection:
            return int(connection.execute(done).scalar_one())

    try:
        deadline = time.monotonic() + 60
        while await asyncio.to_thread(count) < len(run_ids) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
    finally:
        engine.dispose()


def cpu_seconds(pid: int, *, thread: int | None = None) -> float:
    """User and system CPU time of process ``pid`` so far, or of one of its threads (Linux)."""
    where = f"/proc/{pid}/task/{thread}/stat" if thread is not None else f"/proc/{pid}/stat"
    fields = Path(where).read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def reach_the_wait(client: Client, run_ids: list[str]) -> None:
    """Until every run has started its timer, so nothing else lands in its history."""
    for run_id in run_ids:
        while not any(
            kind == EventType.EVENT_TYPE_TIMER_STARTED
            for kind, _at in await history(client, run_id)
        ):
            await asyncio.sleep(0.1)


async def measure(
    variant: str,
    client: Client,
    http: Http11,
    server: subprocess.Popen[bytes],
    server_url: str,
    run_ids: list[str],
    concurrency: int,
    database: str,
) -> Measurement:
    calls: list[Callable[[], Awaitable[None]]] = []
    for run_id in run_ids:
        if variant == "tracking":
            url = open_pixel_url(server_url, secret=SECRET, run_id=run_id, step_id=STEP, visit=1)

            async def fetch(url: str = url) -> None:
                status, body = await http.get(url)
                assert status == 200, body

            calls.append(fetch)
        else:

            async def signal(run_id: str = run_id) -> None:
                await send_event(
                    client, run_id, type="open", step_id=STEP, event_id=f"open:{run_id}:{STEP}:1"
                )

            calls.append(signal)
    before = [
        cpu_seconds(server.pid),
        cpu_seconds(server.pid, thread=server.pid),
        cpu_seconds(os.getpid()),
    ]
    started, latencies = await bounded(calls, concurrency)
    answered = time.time() - started
    # Idle past uvicorn's keep-alive, connections would be closed under the next round.
    await http.close()
    if variant == "tracking":
        await settled(database, run_ids)
    last = await last_signal_time(client, run_ids, len(run_ids))
    after = [
        cpu_seconds(server.pid),
        cpu_seconds(server.pid, thread=server.pid),
        cpu_seconds(os.getpid()),
    ]
    server_cpu, loop_cpu, client_cpu = (b - a for a, b in zip(before, after, strict=True))
    return Measurement(
        variant,
        len(run_ids),
        last - started,
        latencies,
        answered,
        server_cpu,
        loop_cpu,
        client_cpu,
    )


async def burst(
    variant: str,
    client: Client,
    http: Http11,
    server_url: str,
    run_id: str,
    hits: int,
    concurrency: int,
) -> dict[str, int]:
    """History events that ``hits`` opens of one email add to run ``run_id``, by type."""
    before = len(await history(client, run_id))
    calls: list[Callable[[], Awaitable[None]]] = []
    url = open_pixel_url(server_url, secret=SECRET, run_id=run_id, step_id=STEP, visit=1)
    for _ in range(hits):
        if variant == "tracking":

            async def fetch() -> None:
                status, body = await http.get(url)
                assert status == 200, body

            calls.append(fetch)
        else:

            async def signal() -> None:
                await send_event(
                    client, run_id, type="open", step_id=STEP, event_id=f"open:{run_id}:{STEP}:1"
                )

            calls.append(signal)
    await bounded(calls, concurrency)
    await http.close()
    # Let the last signal and the workflow tasks it causes settle.
    await asyncio.sleep(3)
    added = (await history(client, run_id))[before:]
    return dict(collections.Counter(EventType.Name(kind) for kind, _at in added))


def summary(result: Measurement) -> str:
    p50 = percentile(result.latencies, 0.5) * 1000
    cpu = result.server_cpu / result.signals * 1000
    loop = result.loop_cpu / result.signals * 1000
    client = result.client_cpu / result.signals * 1000
    return (
        f"{result.per_second:7.1f} signals/s  last answer {result.answered:5.2f} s, last signal "
        f"{result.seconds:5.2f} s  p50 {p50:6.1f} ms  server CPU {cpu:5.2f} ms each "
        f"(loop {loop:5.2f})  load generator {client:5.2f} ms each"
    )


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def wait_for_server(url: str, server: subprocess.Popen[bytes]) -> None:
    async with httpx.AsyncClient() as probe:
        for _ in range(300):
            if server.poll() is not None:
                raise RuntimeError("dee serve exited")
            try:
                await probe.get(f"{url}/t/o/probe")
                return
            except httpx.TransportError:
                await asyncio.sleep(0.1)
    raise RuntimeError("dee serve did not start")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=500, help="runs per measurement")
    parser.add_argument("--rounds", type=int, default=2, help="measurements per variant")
    parser.add_argument("--concurrency", type=int, default=32, help="requests in flight")
    parser.add_argument("--burst", type=int, default=1000, help="hits in the burst")
    parser.add_argument("--database-url", help="default: a new SQLite file")
    parser.add_argument(
        "--serve-option",
        action="append",
        default=[],
        metavar="OPTION",
        help="passed on to `dee serve` (e.g. --serve-option=--http=h11); repeatable",
    )
    parser.add_argument(
        "--profile",
        metavar="FILE",
        help="run `dee serve` under cProfile and write its stats to FILE when it stops",
    )
    args = parser.parse_args()
    env = await start_dev_env()
    client = env.client
    processes: list[subprocess.Popen[bytes]] = []
    try:
        with tempfile.TemporaryDirectory() as scratch:
            database = args.database_url or f"sqlite:///{Path(scratch) / 'dee.db'}"
            task_queue = f"bench-tracking-{uuid.uuid4().hex[:8]}"
            port = free_port()
            server_url = f"http://127.0.0.1:{port}"
            process_env = {
                **os.environ,
                "TEMPORAL_ADDRESS": client.service_client.config.target_host,
                "DEE_DATABASE_URL": database,
                "DEE_SECRET_KEY": SECRET,
                "DEE_TASK_QUEUE": task_queue,
                "DEE_PUBLIC_URL": server_url,
            }
            with PlanRegistry(database) as registry:
                version = registry.create(waiting_plan(f"bench-{uuid.uuid4().hex[:6]}"))
            worker = subprocess.Popen(
                [
                    sys.executable,
                    str(ROOT / "benchmarks" / "_worker.py"),
                    "--variant",
                    "dee",
                    "--address",
                    process_env["TEMPORAL_ADDRESS"],
                    "--task-queue",
                    task_queue,
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                env=process_env,
            )
            processes.append(worker)
            dee = (
                [str(ROOT / "benchmarks" / "_profiled.py"), args.profile]
                if args.profile
                else ["-m", "dee.cli.main"]
            )
            server = subprocess.Popen(
                [
                    sys.executable,
                    *dee,
                    "serve",
                    "--port",
                    str(port),
                    *args.serve_option,
                ],
                env=process_env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            processes.append(server)
            assert worker.stdout is not None
            assert worker.stdout.readline().strip() == b"ready", "worker did not start"
            await wait_for_server(server_url, server)

            http = Http11(server_url)
            try:
                results: dict[str, list[Measurement]] = {"tracking": [], "plain": []}
                for round_number in range(args.rounds):
                    order = (
                        ["tracking", "plain"] if round_number % 2 == 0 else ["plain", "tracking"]
                    )
                    for variant in order:
                        tag = f"r{round_number}-{variant}-{uuid.uuid4().hex[:4]}"
                        run_ids = await start_runs(client, version, args.runs, task_queue, tag)
                        await reach_the_wait(client, run_ids)
                        result = await measure(
                            variant,
                            client,
                            http,
                            server,
                            server_url,
                            run_ids,
                            args.concurrency,
                            database,
                        )
                        results[variant].append(result)
                        print(f"round {round_number + 1} {variant:8} {summary(result)}", flush=True)

                bursts: dict[str, dict[str, int]] = {}
                for variant in ("tracking", "plain"):
                    [run_id] = await start_runs(
                        client, version, 1, task_queue, f"burst-{variant}-{uuid.uuid4().hex[:4]}"
                    )
                    await reach_the_wait(client, [run_id])
                    bursts[variant] = await burst(
                        variant, client, http, server_url, run_id, args.burst, args.concurrency
                    )
                    print(f"burst {variant:8} {bursts[variant]}", flush=True)
                    if variant == "tracking":
                        with HitStore(database) as store:
                            kept = len(store.hits(run_id, limit=args.burst * 2))
                        assert kept == args.burst, f"expected {args.burst} hits kept, got {kept}"
            finally:
                await http.close()
    finally:
        for process in reversed(processes):
            if process.stdin is not None:
                process.stdin.close()
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        await env.shutdown()

    print()
    print(
        "| signalled through | signals/s | answer p50 ms | answer p99 ms "
        "| server CPU ms each | of which its loop | load generator CPU ms each |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for variant, name in (("tracking", "tracking server (pixel GET)"), ("plain", "plain client")):
        measured = results[variant]
        latencies = [latency for m in measured for latency in m.latencies]
        signals = sum(m.signals for m in measured)
        cpu, loop, client = (
            sum(getattr(m, field) for m in measured) / signals * 1000
            for field in ("server_cpu", "loop_cpu", "client_cpu")
        )
        print(
            f"| {name} | {statistics.median(m.per_second for m in measured):.0f} | "
            f"{percentile(latencies, 0.5) * 1000:.1f} | {percentile(latencies, 0.99) * 1000:.1f} "
            f"| {cpu:.2f} | {loop:.2f} | {client:.2f} |"
        )
    ratio = statistics.median(m.per_second for m in results["tracking"]) / statistics.median(
        m.per_second for m in results["plain"]
    )
    print()
    print(f"tracking server: {ratio:.2f}x the plain client's signals per second")
    print()
    print(
        f"| {args.burst:,} opens of one email through | history events added | of which signals |"
    )
    print("| --- | ---: | ---: |")
    for variant, name in (("tracking", "tracking server"), ("plain", "plain client, one id")):
        added = bursts[variant]
        signals = added.get(EventType.Name(SIGNALED), 0)
        print(f"| {name} | {sum(added.values())} | {signals} |")


if __name__ == "__main__":
    asyncio.run(main())
