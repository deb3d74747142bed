"""No data can add a header or replace the body: RFC 2047 encoded words that decode to line
breaks, in a contact field, a run variable, a contact id or a run id, are refused as a
permanent ``InvalidHeader`` naming the step; the real activity sends nothing to the real
SMTP server. The message builder is property-tested over hostile strings: whatever it
builds parses back to exactly DEE's headers, one ``To``, and DEE's MIME structure."""

from __future__ import annotations

import base64
import email
import email.policy
from collections.abc import Iterator
from email.headerregistry import Address
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from temporalio.exceptions import ApplicationError

from activities.email import _build_message
from dee.plans.content import EmailTemplate, PlanContent, render_email
from dee.runs.channels import SendEmailInput
from dee.runs.ledger import SendLedger
from dee.runs.model import Contact
from tests.activities.test_email import make_input, send, settings_for
from tests.helpers.smtp import SmtpServer

_ATTACK = "\r\nReply-To: attacker@evil.example.net"


def _q(text: str) -> str:
    encoded = "".join(f"={byte:02X}" for byte in text.encode())
    return f"=?utf-8?q?{encoded}?="


def _b(text: str) -> str:
    return f"=?utf-8?b?{base64.b64encode(text.encode()).decode()}?="


HOSTILE = {
    "q-variable": {"variables": {"product": "DEE" + _q(_ATTACK)}},
    "b-variable": {"variables": {"product": _b("DEE" + _ATTACK)}},
    "q-first-name-body": {
        "contact": Contact(
            id="ana",
            email="ana@recipient.example",
            firstName=_q("Ana\r\nContent-Type: text/html\r\n\r\n<h1>owned</h1>"),
        )
    },
    # Contact ids hold no whitespace or colon; an encoded word needs neither.
    "q-run-id": {"run_id": "welcome:" + _q("ana" + _ATTACK).replace(" ", "_")},
}


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[SendLedger]:
    with SendLedger(f"sqlite:///{tmp_path / 'dee.db'}") as opened:
        yield opened


@pytest.mark.parametrize("changes", HOSTILE.values(), ids=HOSTILE.keys())
async def test_encoded_line_breaks_are_refused_and_nothing_is_sent(
    smtp: SmtpServer, ledger: SendLedger, changes: dict[str, object]
) -> None:
    # Positive control: the same activity and server send the plain message.
    await send(settings_for(smtp.url), ledger, make_input(run_id="welcome:control"))
    assert len(smtp.handler.messages) == 1
    with pytest.raises(ApplicationError) as caught:
        await send(settings_for(smtp.url), ledger, make_input(**changes))
    error = caught.value
    assert (error.type, error.non_retryable) == ("InvalidHeader", True)
    assert "step 'intro-email'" in str(error) and "encoded words" in str(error)
    assert len(smtp.handler.messages) == 1


async def test_harmless_encoded_words_are_sent_as_their_text(
    smtp: SmtpServer, ledger: SendLedger
) -> None:
    await send(settings_for(smtp.url), ledger, make_input(variables={"product": _q("Café")}))
    [received] = smtp.handler.messages
    assert received.message["Subject"] == "Introducing Café to Ana"


# -- the builder, property-tested --------------------------------------------------------

_PIECES = st.sampled_from(
    [
        "=?utf-8?q?",
        "=?UTF-8?B?",
        "?=",
        "=0D=0A",
        "=0A",
        "=0D",
        "_",
        "\r\n",
        "\n",
        "\r",
        "\x00",
        "Bcc:",
        "Reply-To: x@evil.example",
        "Content-Type: text/html",
        "=?utf-8?b?DQpCY2M6IHhAZXZpbC5leGFtcGxl?=",
        _q(_ATTACK),
        ":",
        " ",
    ]
)
_HOSTILE_TEXT = st.lists(st.one_of(_PIECES, st.text(max_size=8)), max_size=12).map("".join)
_DEE_HEADERS = {
    "from",
    "to",
    "subject",
    "reply-to",
    "date",
    "message-id",
    "list-unsubscribe",
    "list-unsubscribe-post",
    "x-dee-run",
    "x-dee-step",
    "mime-version",
    "content-type",
}


def _build(input: SendEmailInput) -> bytes:
    step = input.step
    rendered = render_email(
        step,
        PlanContent(templates={step.template_id: input.template}),
        contact=input.contact.attributes(),
        variables=input.variables,
    )
    message = _build_message(
        input,
        rendered,
        settings=settings_for("smtp://127.0.0.1:1"),
        secret="property-secret",
        sender=Address(username="sales", domain="sender.example"),
        recipient=Address(username="ana", domain="recipient.example"),
        reply_to=Address(username="sales", domain="sender.example"),
        message_id="<key@sender.example>",
    )
    return message.as_bytes(policy=message.policy)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(first_name=_HOSTILE_TEXT, product=_HOSTILE_TEXT)
def test_whatever_is_built_has_exactly_dees_headers_and_structure(
    first_name: str, product: str
) -> None:
    input = make_input(
        contact=Contact(id="ana", email="ana@recipient.example", firstName=first_name),
        variables={"product": product},
        template=EmailTemplate(html="<p>Hi {{ contact.firstName }}, {{ product }}</p>"),
    )
    try:
        data = _build(input)
    except ApplicationError as refused:
        assert refused.type in {"InvalidHeader", "TemplateError"}, refused
        return
    parsed = email.message_from_bytes(data, policy=email.policy.default)
    names = [name.lower() for name in parsed]
    assert set(names) == _DEE_HEADERS, names
    assert len(names) == len(set(names)), names
    assert parsed.get_all("To") == ["ana@recipient.example"]
    assert parsed.get_content_type() == "multipart/alternative"
    assert [part.get_content_type() for part in parsed.iter_parts()] == [
        "text/plain",
        "text/html",
    ]
