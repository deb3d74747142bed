"""Each call attempt is counted in ``dee_sends_total`` by how it ended, and timed.

The worker's end-to-end test (tests/test_metrics.py) covers email through a real worker
process; this drives the call activity against the loopback Twilio API, attempt by attempt,
reading DEE's registry before and after each.
"""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families
from temporalio.exceptions import ApplicationError
from twilio.base.exceptions import TwilioRestException

from dee import metrics
from dee.runs.ledger import SendLedger
from tests.activities.test_voice import call_input, place
from tests.helpers.twilio_api import TwilioApi

# The fixtures `ledger` and `twilio` come from tests/activities/conftest.py.


def _voice() -> dict[str, float]:
    """DEE's voice samples now: sends by status, and the two histograms' counts."""
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(metrics.exposition().decode()):
        for sample in family.samples:
            if sample.labels.get("channel") != "voice":
                continue
            if sample.name == "dee_sends_total":
                found[sample.labels["status"]] = sample.value
            elif sample.name in {"dee_render_seconds_count", "dee_send_seconds_count"}:
                found[sample.name] = sample.value
    return found


def _moved(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {key: after[key] - before.get(key, 0) for key in after if after[key] != before.get(key)}


async def test_calls_are_counted_by_how_they_end(twilio: TwilioApi, ledger: SendLedger) -> None:
    input = call_input()
    start = _voice()
    # Twilio in trouble: retried, counted as an error, after one request.
    twilio.fail_next(503)
    with pytest.raises(TwilioRestException):
        await place(twilio, ledger, input)
    failed_once = _voice()
    assert _moved(start, failed_once) == {
        "error": 1,
        "dee_render_seconds_count": 1,
        "dee_send_seconds_count": 1,
    }
    # The retry dials; a third attempt finds it placed and does not ask Twilio again.
    assert (await place(twilio, ledger, input)).status == "placed"
    assert (await place(twilio, ledger, input)).status == "already-placed"
    assert _moved(failed_once, _voice()) == {
        "placed": 1,
        "already-placed": 1,
        "dee_render_seconds_count": 2,
        "dee_send_seconds_count": 1,
    }


async def test_a_permanent_failure_is_counted_as_failed(
    twilio: TwilioApi, ledger: SendLedger
) -> None:
    before = _voice()
    twilio.fail_next(400, code=21211, message="Invalid 'To' Phone Number")
    with pytest.raises(ApplicationError):
        await place(twilio, ledger, call_input())
    assert _moved(before, _voice()) == {
        "failed": 1,
        "dee_render_seconds_count": 1,
        "dee_send_seconds_count": 1,
    }
