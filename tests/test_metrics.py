"""The worker's metrics endpoint and JSON logs, from a real ``dee worker`` process.

The worker runs with ``DEE_WORKER_METRICS_ADDRESS`` and ``DEE_LOG_FORMAT=json``; two runs
go through it, one to a contact on the suppression list. The test scrapes the endpoint over
HTTP before and after: DEE's counters and histograms moved by exactly the sends made, the
Temporal SDK's metrics are served on the same port, and no label or value names a contact.
Every line the worker wrote is one JSON object, none with an address in it.
"""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from temporalio.testing import WorkflowEnvironment

from dee import metrics
from dee.runs.suppressions import Suppressions
from tests.helpers.smtp import free_port, smtp_server
from tests.helpers.twilio_api import twilio_api
from tests.workflows.test_faults import (
    results,
    settings_for,
    start_runs,
    two_emails,
    worker_process,
)

#: The labels DEE's metrics may carry (``le``: a histogram's buckets).
LABELS = {"channel", "status", "reason", "kind", "type", "outcome", "le"}


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Each sample of a scrape, by name and sorted labels."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def scrape(url: str) -> str:
    async with httpx.AsyncClient(timeout=30) as http:
        answer = await http.get(url)
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain")
    return answer.text


async def test_worker_serves_dee_and_sdk_metrics_and_logs_json_without_contacts(
    dev_env: WorkflowEnvironment, task_queue: str, tmp_path: Path
) -> None:
    database = f"sqlite:///{tmp_path / 'dee.db'}"
    version = two_emails(database, wait_seconds=1)
    with Suppressions(database) as suppressions:
        suppressions.suppress("c1@example.com", reason="unsubscribe")
    port = free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    log = tmp_path / "worker.log"
    extra_env = {
        "DEE_WORKER_METRICS_ADDRESS": f"127.0.0.1:{port}",
        "DEE_LOG_FORMAT": "json",
        "DEE_LOG_LEVEL": "DEBUG",
    }
    with twilio_api() as twilio:
        async with smtp_server() as smtp:
            settings = settings_for(smtp.url, database, task_queue, twilio)
            address = dev_env.client.service_client.config.target_host
            worker = worker_process(settings, address, log=log, cli=True, extra_env=extra_env)
            try:
                async with asyncio.timeout(60):
                    while "metrics served at" not in log.read_text(errors="replace"):
                        assert worker.poll() is None, log.read_text(errors="replace")
                        await asyncio.sleep(0.1)
                before = samples(await scrape(url))
                ids = await start_runs(dev_env.client, version, task_queue, 2)
                finished = await results(dev_env.client, ids, timeout=120)
                after_text = await scrape(url)
            finally:
                worker.send_signal(signal.SIGTERM)
                status = await asyncio.to_thread(worker.wait, 60)
    assert [result.outcome for result in finished] == ["finished", "finished"]
    assert len(smtp.handler.messages) == 2
    assert status == 0

    after = samples(after_text)
    sent = ("dee_sends_total", (("channel", "email"), ("status", "sent")))
    suppressed = ("dee_sends_total", (("channel", "email"), ("status", "suppressed")))
    rendered = ("dee_render_seconds_count", (("channel", "email"),))
    talked = ("dee_send_seconds_count", (("channel", "email"),))
    # The counters moved by what the worker did: c0's two emails sent, c1's two suppressed
    # (each rendered first), and only the sent ones talked to the server.
    assert [before.get(key, 0) for key in (sent, suppressed, rendered, talked)] == [0, 0, 0, 0]
    assert [after[key] for key in (sent, suppressed, rendered, talked)] == [2, 2, 4, 2]
    assert after[("dee_send_seconds_sum", (("channel", "email"),))] > 0
    # The SDK's metrics come through the same port (durations in seconds).
    sdk = {name for name, _labels in after if name.startswith("temporal_")}
    assert "temporal_activity_execution_latency_count" in sdk, sorted(sdk)
    assert "temporal_workflow_completed_total" in sdk
    # DEE's labels are words from short lists; nothing in the scrape names a contact.
    for name, labels in after:
        if name.startswith("dee_"):
            assert {key for key, _value in labels} <= LABELS, name
    for contact in ("c0@example.com", "c1@example.com", "example.com"):
        assert contact not in after_text

    lines = log.read_text().splitlines()
    entries = [json.loads(line) for line in lines]
    assert all({"time", "level", "logger", "message"} <= entry.keys() for entry in entries)
    [sent_line, *_] = [
        e for e in entries if e["message"].startswith("email ") and "sent to" in e["message"]
    ]
    # The SDK's details stay, but for the workflow id, which holds the contact id.
    assert sent_line["temporal_activity"]["activity_type"] == "send_email"
    assert "workflow_id" not in sent_line["temporal_activity"]
    assert any(entry["level"] == "DEBUG" for entry in entries)
    assert [line for line in lines if "c0@" in line or "c1@" in line] == []


async def test_a_busy_metrics_address_is_refused_with_the_setting_named() -> None:
    served = metrics.serve("127.0.0.1:0")
    try:
        # Positive control: it serves, on the port it was given.
        assert "dee_sends_total" in await scrape(f"http://127.0.0.1:{served.port}/metrics")
        with pytest.raises(OSError, match=r"DEE_WORKER_METRICS_ADDRESS is '127\.0\.0\.1:\d+'"):
            metrics.serve(f"127.0.0.1:{served.port}")
    finally:
        served.close()
