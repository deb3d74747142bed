"""The ``call_outcome`` activity: it asks the loopback Calls API, through the real twilio
client, how a call went, and maps what it finds; hostile SIDs never reach a request."""

from __future__ import annotations

import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.voice import VoiceActivities
from dee.runs.channels import CallOutcomeInput, CallOutcomeResult
from dee.runs.ledger import SendLedger
from dee.settings import Settings
from tests.helpers.twilio_api import TwilioApi, new_sid

PHONE = "+15557654321"
CALLER_ID = "+15551234567"


async def outcome(
    twilio: TwilioApi, ledger: SendLedger, sid: str, **settings: str | None
) -> CallOutcomeResult:
    values = {
        "twilio_account_sid": twilio.account_sid,
        "twilio_auth_token": twilio.auth_token,
        "twilio_api_url": twilio.url,
        **settings,
    }
    activities = VoiceActivities(Settings(**values), ledger)  # type: ignore[arg-type]
    ask = CallOutcomeInput(run_id="plan-1:ada", step_id="call", call_sid=sid)
    result: CallOutcomeResult = await ActivityEnvironment().run(activities.call_outcome, ask)
    return result


@pytest.mark.parametrize(
    ("status", "answered_by", "expected"),
    [
        # Final statuses map as the status callback's do.
        ("completed", None, "answered"),
        ("completed", "human", "answered"),
        ("completed", "machine_end_silence", "voicemail"),
        ("completed", "fax", "voicemail"),
        ("no-answer", None, "no-answer"),
        ("busy", None, "busy"),
        ("failed", None, "failed"),
        ("canceled", None, "canceled"),
        # Not over: judged by where the call is.
        ("in-progress", None, "answered"),
        ("in-progress", "machine_start", "voicemail"),
        ("queued", None, "no-answer"),
        ("initiated", None, "no-answer"),
        ("ringing", None, "no-answer"),
        # A status Twilio may add one day.
        ("paused", None, "failed"),
    ],
)
async def test_the_status_twilio_has_maps_to_an_outcome(
    twilio: TwilioApi, ledger: SendLedger, status: str, answered_by: str | None, expected: str
) -> None:
    sid = twilio.add_call(to=PHONE, from_=CALLER_ID)
    twilio.set_status(sid, status, answered_by=answered_by)
    result = await outcome(twilio, ledger, sid)
    assert result == CallOutcomeResult(status=status, answered_by=answered_by, outcome=expected)
    assert twilio.fetches == [sid]
    # Only read: the call is left as it was.
    assert twilio.updates == []
    assert [call["status"] for call in twilio.calls] == [status]


@pytest.mark.parametrize(
    ("sid", "settings", "kind"),
    [
        # A SID that is not one: never put in a request path.
        ("CA../../Accounts", {}, "InvalidCallSid"),
        ("-", {}, "InvalidCallSid"),
        # Twilio does not know the call: refused for good, not retried.
        (new_sid("CA"), {}, "CallRejected"),
        # The worker cannot ask.
        (new_sid("CA"), {"twilio_auth_token": None}, "MissingCredentials"),
    ],
)
async def test_what_cannot_be_asked_fails_for_good(
    twilio: TwilioApi, ledger: SendLedger, sid: str, settings: dict[str, None], kind: str
) -> None:
    with pytest.raises(ApplicationError) as raised:
        await outcome(twilio, ledger, sid, **settings)
    assert raised.value.type == kind
    assert raised.value.non_retryable
    if kind != "MissingCredentials":
        assert "call" in str(raised.value)
    expected_fetches = [sid] if kind == "CallRejected" else []
    assert twilio.fetches == expected_fetches
