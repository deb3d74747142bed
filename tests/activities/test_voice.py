"""``place_call`` with the real twilio client against a loopback Calls API, and a real
SQLite send ledger."""

from __future__ import annotations

import dataclasses
import datetime
import logging
import socket
from typing import Any

import pytest
from pydantic import JsonValue
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment
from twilio.base.exceptions import TwilioRestException

from activities.voice import VoiceActivities
from dee.plans.model import SendVoiceStep
from dee.runs.channels import PlaceCallInput, PlaceCallResult
from dee.runs.ledger import SendLedger, call_key
from dee.runs.model import Contact
from dee.runs.suppressions import Suppressions
from dee.runs.tracking import CALL_AMD, CALL_STATUS, key_id, verify_token
from dee.settings import Settings
from tests.helpers.twilio_api import TwilioApi

SECRET = "test-secret-key"
PUBLIC_URL = "https://dee.example.com"
PHONE = "+15550001111"
CALLER_ID = "+15559998888"


def settings_for(twilio: TwilioApi, **changes: Any) -> Settings:
    values: dict[str, Any] = {
        "public_url": PUBLIC_URL,
        "secret_key": SECRET,
        "twilio_account_sid": twilio.account_sid,
        "twilio_auth_token": twilio.auth_token,
        "twilio_api_url": twilio.url,
    }
    values.update(changes)
    return Settings(**values)


def call_input(
    *,
    step: dict[str, Any] | None = None,
    script: str = "Hello {{ contact.firstName }}, about {{ product }}.",
    voicemail_message: str | None = None,
    contact: dict[str, Any] | None = None,
    variables: dict[str, JsonValue] | None = None,
    visit: int = 1,
) -> PlaceCallInput:
    return PlaceCallInput(
        run_id="plan-1:ada",
        plan_id="plan-1",
        plan_version=3,
        step=SendVoiceStep.model_validate(
            {"id": "call", "scriptId": "follow-up", "callerId": CALLER_ID, **(step or {})}
        ),
        visit=visit,
        script=script,
        voicemail_message=voicemail_message,
        contact=Contact.model_validate(
            contact if contact is not None else {"id": "ada", "phone": PHONE, "firstName": "Ada"}
        ),
        variables=variables if variables is not None else {"product": "DEE"},
    )


def ledger_id(step_id: str = "call", visit: int = 1, *, run_id: str = "plan-1:ada") -> str:
    """The ledger id of a call placed through :class:`ActivityEnvironment`."""
    workflow_run_id = ActivityEnvironment.default_info().workflow_run_id
    return call_key(workflow_run_id, run_id, step_id, visit)


def claim_by_hand(ledger: SendLedger) -> str:
    """Claim the call as an attempt does, as if it then died before recording the SID."""
    key = ledger_id()
    assert ledger.claim(key, run_id="plan-1:ada", step_id="call", channel="voice") == "claimed"
    return key


async def place(
    twilio: TwilioApi,
    ledger: SendLedger,
    input: PlaceCallInput,
    *,
    workflow_run_id: str | None = None,
    **settings: Any,
) -> PlaceCallResult:
    activities = VoiceActivities(settings_for(twilio, **settings), ledger)
    environment = ActivityEnvironment()
    if workflow_run_id is not None:
        environment.info = dataclasses.replace(environment.info, workflow_run_id=workflow_run_id)
    return await environment.run(activities.place_call, input)


async def test_places_the_call_with_the_rendered_script(
    twilio: TwilioApi, ledger: SendLedger
) -> None:
    input = call_input(
        step={"maxDuration": {"minutes": 5}},
        contact={"id": "ada", "phone": PHONE, "firstName": "Ada <& Co>"},
    )
    result = await place(twilio, ledger, input)

    (request,) = twilio.creates
    assert result == PlaceCallResult(call_sid=twilio.calls[0]["sid"], status="placed")
    assert result.call_sid.startswith("CA") and len(result.call_sid) == 34
    assert request["To"] == PHONE
    assert request["From"] == CALLER_ID
    assert request["Twiml"] == (
        "<Response><Say>Hello Ada &lt;&amp; Co&gt;, about DEE.</Say></Response>"
    )
    assert request["TimeLimit"] == "300"
    assert request.form["StatusCallbackEvent"] == ["initiated", "ringing", "answered", "completed"]
    assert request["StatusCallbackMethod"] == "POST"
    prefix = f"{PUBLIC_URL}/webhooks/twilio/status?token="
    assert request["StatusCallback"].startswith(prefix)
    token = request["StatusCallback"].removeprefix(prefix)
    assert verify_token(token, secret=SECRET, kind=CALL_STATUS) == {
        "k": CALL_STATUS,
        "r": "plan-1:ada",
        "s": "call",
        "v": 1,
        "i": key_id(SECRET),
    }
    for absent in ("MachineDetection", "AsyncAmd", "AsyncAmdStatusCallback"):
        assert absent not in request.form
    record = ledger.get(ledger_id())
    assert record is not None
    assert (record.status, record.provider_id) == ("sent", result.call_sid)


async def test_no_time_limit_without_max_duration(twilio: TwilioApi, ledger: SendLedger) -> None:
    await place(twilio, ledger, call_input())
    assert "TimeLimit" not in twilio.creates[0].form


async def test_voicemail_message_rides_in_the_amd_callback(
    twilio: TwilioApi, ledger: SendLedger
) -> None:
    input = call_input(
        step={"voicemail": {"detect": True, "messageId": "vm"}},
        voicemail_message="Sorry we missed you, {{ contact.firstName }}.",
    )
    await place(twilio, ledger, input)

    (request,) = twilio.creates
    assert request["MachineDetection"] == "DetectMessageEnd"
    assert request["AsyncAmd"] == "true"
    assert request["AsyncAmdStatusCallbackMethod"] == "POST"
    prefix = f"{PUBLIC_URL}/webhooks/twilio/amd?token="
    assert request["AsyncAmdStatusCallback"].startswith(prefix)
    token = request["AsyncAmdStatusCallback"].removeprefix(prefix)
    assert verify_token(token, secret=SECRET, kind=CALL_AMD) == {
        "k": CALL_AMD,
        "r": "plan-1:ada",
        "s": "call",
        "v": 1,
        "m": "<Response><Say>Sorry we missed you, Ada.</Say><Hangup /></Response>",
        "i": key_id(SECRET),
    }
    # The script itself plays at once; the voicemail replaces it only for a machine.
    assert request["Twiml"] == "<Response><Say>Hello Ada, about DEE.</Say></Response>"


async def test_detection_without_a_message_only_reports(
    twilio: TwilioApi, ledger: SendLedger
) -> None:
    await place(twilio, ledger, call_input(step={"voicemail": {"detect": True}}))

    (request,) = twilio.creates
    assert request["MachineDetection"] == "Enable"
    token = request["AsyncAmdStatusCallback"].partition("?token=")[2]
    assert "m" not in verify_token(token, secret=SECRET, kind=CALL_AMD)


@pytest.mark.parametrize(
    "missing",
    [
        # No account SID.
        {"twilio_account_sid": None},
        # No auth token.
        {"twilio_auth_token": None},
        # Neither.
        {"twilio_account_sid": None, "twilio_auth_token": None},
    ],
)
async def test_missing_credentials_fail_at_once(
    twilio: TwilioApi, ledger: SendLedger, missing: dict[str, Any]
) -> None:
    with pytest.raises(ApplicationError) as caught:
        await place(twilio, ledger, call_input(), **missing)

    assert caught.value.type == "MissingCredentials"
    assert caught.value.non_retryable
    assert "TWILIO_ACCOUNT_SID" in caught.value.message
    assert "TWILIO_AUTH_TOKEN" in caught.value.message
    assert twilio.creates == []


async def test_missing_secret_key_fails_at_once(twilio: TwilioApi, ledger: SendLedger) -> None:
    with pytest.raises(ApplicationError) as caught:
        await place(twilio, ledger, call_input(), secret_key=None)

    assert caught.value.type == "MissingSecretKey"
    assert caught.value.non_retryable
    assert "DEE_SECRET_KEY" in caught.value.message
    assert twilio.creates == []


@pytest.mark.parametrize(
    ("input", "kind"),
    [
        # A contact without a phone number cannot be called.
        (call_input(contact={"id": "ada", "firstName": "Ada"}), "MissingPhone"),
        # The script reads a variable the run does not have.
        (call_input(variables={}), "TemplateError"),
        # Broken Jinja2.
        (call_input(script="Hello {{ contact.firstName"), "TemplateError"),
        # A voicemail message that reads a missing contact field.
        (
            call_input(
                step={"voicemail": {"detect": True, "messageId": "vm"}},
                voicemail_message="Hi {{ contact.lastName }}",
            ),
            "TemplateError",
        ),
        # The step leaves a voicemail but its source was not passed.
        (call_input(step={"voicemail": {"detect": True, "messageId": "vm"}}), "TemplateError"),
        # More TwiML than Twilio takes.
        (call_input(script="blah " * 1000), "ScriptTooLong"),
        # A voicemail message too long for its callback token.
        (
            call_input(
                step={"voicemail": {"detect": True, "messageId": "vm"}},
                voicemail_message="blah " * 500,
            ),
            "ScriptTooLong",
        ),
    ],
)
async def test_permanent_problems_fail_before_any_request(
    twilio: TwilioApi, ledger: SendLedger, input: PlaceCallInput, kind: str
) -> None:
    with pytest.raises(ApplicationError) as caught:
        await place(twilio, ledger, input)

    assert caught.value.type == kind
    assert caught.value.non_retryable
    assert twilio.creates == []
    assert ledger.get(ledger_id(input.step.id, input.visit, run_id=input.run_id)) is None


async def test_a_refused_number_is_permanent(twilio: TwilioApi, ledger: SendLedger) -> None:
    twilio.fail_next(400, code=21211, message="Invalid 'To' Phone Number")

    with pytest.raises(ApplicationError) as caught:
        await place(twilio, ledger, call_input())

    assert caught.value.type == "CallRejected"
    assert caught.value.non_retryable
    assert "21211" in caught.value.message
    assert "Invalid 'To' Phone Number" in caught.value.message


async def test_bad_credentials_are_permanent(twilio: TwilioApi, ledger: SendLedger) -> None:
    with pytest.raises(ApplicationError) as caught:
        await place(twilio, ledger, call_input(), twilio_auth_token="wrong")

    assert caught.value.type == "CallRejected"
    assert caught.value.non_retryable
    assert "HTTP 401" in caught.value.message and "20003" in caught.value.message
    assert twilio.creates == []


async def test_bad_credentials_while_looking_for_an_in_doubt_call_are_permanent(
    twilio: TwilioApi, ledger: SendLedger
) -> None:
    claim_by_hand(ledger)
    with pytest.raises(ApplicationError) as caught:
        await place(twilio, ledger, call_input(), twilio_auth_token="wrong")

    assert caught.value.type == "CallRejected"
    assert caught.value.non_retryable
    assert caught.value.message.startswith("Twilio refused to list calls: HTTP 401")
    assert twilio.creates == []


@pytest.mark.parametrize(
    "status",
    [
        # Twilio is down.
        503,
        # Too many requests: Twilio's rate limit.
        429,
    ],
)
async def test_twilio_trouble_is_retried_without_a_second_call(
    twilio: TwilioApi, ledger: SendLedger, status: int
) -> None:
    twilio.fail_next(status)
    input = call_input()

    with pytest.raises(TwilioRestException) as caught:
        await place(twilio, ledger, input)
    assert caught.value.status == status

    # The retry finds the claim without a SID, finds no call at Twilio, and dials.
    result = await place(twilio, ledger, input)
    assert result.status == "placed"
    assert len(twilio.creates) == 2
    assert len(twilio.calls) == 1
    assert len(twilio.lists) == 1


async def test_an_unreachable_api_is_retried(twilio: TwilioApi, ledger: SendLedger) -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]

    # requests' ConnectionError, an OSError: not an ApplicationError, so it is retried.
    with pytest.raises(OSError) as caught:
        await place(twilio, ledger, call_input(), twilio_api_url=f"http://127.0.0.1:{port}")

    assert not isinstance(caught.value, ApplicationError)


async def test_a_second_attempt_returns_the_first_call(
    twilio: TwilioApi, ledger: SendLedger
) -> None:
    first = await place(twilio, ledger, call_input())
    second = await place(twilio, ledger, call_input())

    assert second == PlaceCallResult(call_sid=first.call_sid, status="already-placed")
    assert len(twilio.creates) == 1
    # Another visit of the same step is another call.
    third = await place(twilio, ledger, call_input(visit=2))
    assert third.status == "placed" and third.call_sid != first.call_sid
    # So is the same visit in a later execution of the run (the plan runs again for the
    # contact under the same run id).
    fourth = await place(twilio, ledger, call_input(), workflow_run_id="a-later-execution")
    assert fourth.status == "placed" and fourth.call_sid not in {first.call_sid, third.call_sid}
    assert len(twilio.creates) == 3


async def test_an_in_doubt_call_is_adopted(twilio: TwilioApi, ledger: SendLedger) -> None:
    # An earlier attempt claimed the call and died before it could record the SID.
    key = claim_by_hand(ledger)
    # A call from an earlier visit is not this one; the one made after the claim is.
    twilio.add_call(
        to=PHONE,
        from_=CALLER_ID,
        created=datetime.datetime.now(datetime.UTC) - datetime.timedelta(hours=2),
        status="completed",
    )
    placed = twilio.add_call(to=PHONE, from_=CALLER_ID)
    # Same number, another caller id: somebody else's call.
    twilio.add_call(to=PHONE, from_="+15557776666")

    result = await place(twilio, ledger, call_input())

    assert result == PlaceCallResult(call_sid=placed, status="already-placed")
    assert twilio.creates == []
    (query,) = twilio.lists
    assert query["To"] == [PHONE] and query["From"] == [CALLER_ID]
    record = ledger.get(key)
    assert record is not None and record.provider_id == placed
    # And from now on it is simply already placed.
    again = await place(twilio, ledger, call_input())
    assert again == result
    assert len(twilio.lists) == 1


async def test_an_in_doubt_call_never_made_is_placed(twilio: TwilioApi, ledger: SendLedger) -> None:
    claim_by_hand(ledger)
    old = twilio.add_call(
        to=PHONE,
        from_=CALLER_ID,
        created=datetime.datetime.now(datetime.UTC) - datetime.timedelta(hours=2),
        status="completed",
    )

    result = await place(twilio, ledger, call_input())

    assert result.status == "placed" and result.call_sid != old
    assert len(twilio.creates) == 1


async def test_no_phone_numbers_at_info(
    twilio: TwilioApi, ledger: SendLedger, caplog: pytest.LogCaptureFixture
) -> None:
    # The in-doubt path lists calls with the number in the query string.
    claim_by_hand(ledger)
    with caplog.at_level(logging.INFO):
        await place(twilio, ledger, call_input())

    shown = [record for record in caplog.records if record.levelno >= logging.INFO]
    assert shown, "the activity logs what it did"
    for record in shown:
        assert PHONE not in record.getMessage() and CALLER_ID not in record.getMessage()


async def test_a_call_recorded_for_another_send_is_never_adopted(
    twilio: TwilioApi, ledger: SendLedger
) -> None:
    key = claim_by_hand(ledger)
    # Another send (the next visit of the step) to the same number placed and recorded a
    # call just now: it is that send's call, however well it fits the time window.
    theirs = twilio.add_call(to=PHONE, from_=CALLER_ID)
    other = ledger_id(visit=2)
    ledger.claim(other, run_id="plan-1:ada", step_id="call", channel="voice")
    ledger.mark_sent(other, provider_id=theirs)

    result = await place(twilio, ledger, call_input())

    # Positive control: the list was looked at, and the call found was passed over.
    assert len(twilio.lists) == 1
    assert result.status == "placed" and result.call_sid != theirs
    assert len(twilio.creates) == 1
    record = ledger.get(key)
    assert record is not None and record.provider_id == result.call_sid


async def test_an_attempt_taken_over_does_not_dial(twilio: TwilioApi, ledger: SendLedger) -> None:
    activities = VoiceActivities(settings_for(twilio), ledger)
    original_claim = ledger.claim

    def claim_then_lose_it(message_id: str, **fields: Any) -> str:
        outcome = original_claim(message_id, **fields)
        # A retry takes the call over while this attempt stalls before dialling.
        original_claim(message_id, **{**fields, "attempt": "a-retry"})
        return outcome

    ledger.claim = claim_then_lose_it  # type: ignore[method-assign,assignment]
    with pytest.raises(ApplicationError) as raised:
        await ActivityEnvironment().run(activities.place_call, call_input())
    assert raised.value.type == "Superseded"
    assert twilio.creates == []
    # Control: without the takeover the same attempt dials.
    ledger.claim = original_claim  # type: ignore[method-assign]
    ledger.release(ledger_id())
    result = await ActivityEnvironment().run(activities.place_call, call_input())
    assert result.status == "placed" and len(twilio.creates) == 1


# -- the do-not-call list ---------------------------------------------------------------------


async def test_a_suppressed_number_is_never_dialled(twilio: TwilioApi, ledger: SendLedger) -> None:
    suppressions = Suppressions.sharing(ledger)
    # The list is written in another spelling than the contact's: it still matches.
    assert suppressions.suppress("+1 (555) 000-1111", reason="manual", source="cli")
    other = "+15550002222"
    # Positive control, in the same setup: an unsuppressed number is dialled.
    placed = await place(
        twilio,
        ledger,
        call_input(contact={"id": "bo", "phone": other, "firstName": "Bo"}),
        workflow_run_id="another-execution",
    )
    assert placed.status == "placed"
    assert [request["To"] for request in twilio.creates] == [other]

    result = await place(twilio, ledger, call_input())
    assert result == PlaceCallResult(call_sid="-", status="suppressed")
    # Nothing more reached Twilio, and the call was not claimed.
    assert [request["To"] for request in twilio.creates] == [other]
    assert ledger.get(ledger_id()) is None


async def test_a_call_placed_before_the_suppression_stays_placed(
    twilio: TwilioApi, ledger: SendLedger
) -> None:
    first = await place(twilio, ledger, call_input())
    assert first.status == "placed"
    Suppressions.sharing(ledger).suppress(PHONE, reason="unsubscribe", source="api")
    again = await place(twilio, ledger, call_input())
    assert again == PlaceCallResult(call_sid=first.call_sid, status="already-placed")
    assert len(twilio.creates) == 1
