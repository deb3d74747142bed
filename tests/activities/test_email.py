"""The email activity, run by Temporal's ActivityEnvironment against a real SMTP server."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
from collections.abc import Iterator
from email.message import EmailMessage
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import aiosmtplib
import pytest
from sqlalchemy import text
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities._smtp import SmtpConfig, SmtpUrlError, parse_smtp_url
from activities.email import EmailActivities, html_to_text
from dee.plans.content import EmailTemplate
from dee.plans.model import SendEmailStep, Tracking
from dee.runs.channels import SendEmailInput, SendEmailResult
from dee.runs.ledger import LedgerError, SendLedger, email_key
from dee.runs.model import Contact
from dee.runs.tracking import (
    CLICK,
    OPEN,
    UNSUBSCRIBE,
    key_id,
    unsubscribe_address,
    verify_token,
)
from dee.settings import Settings
from dee.storage.database import make_engine, resolve_url
from tests.helpers.smtp import Received, SmtpServer, free_port, smtp_server

SECRET = "activity-test-secret"
PUBLIC_URL = "https://dee.example"
HTML = (
    "<html><head><title>Hi</title><style>p {color: red}</style></head><body>\n"
    "<p>Hi {{ contact.firstName }}, meet {{ product }}.</p>\n"
    '<p><a href="https://example.com/pricing?plan=pro&amp;x=1">See pricing</a> or '
    '<a href="mailto:sales@example.com">write to us</a> or '
    '<a href="#details">read on</a>.</p>\n'
    "</body></html>\n"
)
TEXT = "Hi {{ contact.firstName }}, meet {{ product }}.\n"


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[SendLedger]:
    with SendLedger(f"sqlite:///{tmp_path / 'dee.db'}") as opened:
        yield opened


def settings_for(url: str, **changes: Any) -> Settings:
    settings = Settings(
        smtp_url=url,
        from_address="dee@sender.example",
        public_url=PUBLIC_URL,
        secret_key=SECRET,
    )
    return dataclasses.replace(settings, **changes)


def make_input(**changes: Any) -> SendEmailInput:
    fields: dict[str, Any] = {
        "run_id": "welcome:ana",
        "plan_id": "welcome",
        "plan_version": 1,
        "step": SendEmailStep(
            id="intro-email",
            template_id="tmpl_intro",
            subject="Introducing {{ product }} to {{ contact.firstName }}",
            reply_to="sales@sender.example",
            tracking=Tracking(opens=True, clicks=True),
        ),
        "visit": 1,
        "template": EmailTemplate(html=HTML, text=TEXT),
        "contact": Contact(id="ana", email="ana@recipient.example", firstName="Ana"),
        "variables": {"product": "DEE"},
        "sender": None,
    }
    fields.update(changes)
    return SendEmailInput(**fields)


async def send(
    settings: Settings,
    ledger: SendLedger,
    input: SendEmailInput,
    *,
    environment: ActivityEnvironment | None = None,
) -> SendEmailResult:
    environment = environment or ActivityEnvironment()
    activities = EmailActivities(settings, ledger)
    return await environment.run(activities.send_email, input)


def the_message(server: SmtpServer) -> EmailMessage:
    [received] = server.handler.messages
    return received.message


class Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []
        self.images: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "a" and values.get("href"):
            self.hrefs.append(values["href"] or "")
        if tag == "img" and values.get("src"):
            self.images.append(values["src"] or "")


def links(html: str) -> Links:
    parser = Links()
    parser.feed(html)
    parser.close()
    return parser


def parts(message: EmailMessage) -> tuple[str, str]:
    text = message.get_body(preferencelist=("plain",))
    html = message.get_body(preferencelist=("html",))
    assert isinstance(text, EmailMessage) and isinstance(html, EmailMessage)
    # The parts keep the wire's CRLF line endings.
    return text.get_content().replace("\r\n", "\n"), html.get_content().replace("\r\n", "\n")


def raw_header(data: bytes, name: str) -> str:
    """A header as it went over the wire, unfolded but not decoded."""
    head = data.split(b"\r\n\r\n", 1)[0].decode("ascii")
    for line in re.sub(r"\r\n(?=[ \t])", "", head).split("\r\n"):
        field, _, value = line.partition(":")
        if field.lower() == name.lower():
            return value.strip()
    raise AssertionError(f"no {name} header")


def permanent(caught: pytest.ExceptionInfo[BaseException], kind: str) -> ApplicationError:
    error = caught.value
    assert isinstance(error, ApplicationError), repr(error)
    assert error.type == kind
    assert error.non_retryable
    return error


def retryable(error: BaseException) -> None:
    # What Temporal retries: anything but a non-retryable ApplicationError.
    assert not (isinstance(error, ApplicationError) and error.non_retryable), repr(error)


# -- what is sent ---------------------------------------------------------------------------


async def test_sends_a_multipart_message(smtp: SmtpServer, ledger: SendLedger) -> None:
    result = await send(settings_for(smtp.url), ledger, make_input())

    [received] = smtp.handler.messages
    assert received.mail_from == "dee@sender.example"
    assert received.rcpt_tos == ("ana@recipient.example",)
    message = received.message
    assert message.get_content_type() == "multipart/alternative"
    assert [part.get_content_type() for part in message.iter_parts()] == [
        "text/plain",
        "text/html",
    ]
    text, html = parts(message)
    assert text == "Hi Ana, meet DEE.\n"
    assert "<p>Hi Ana, meet DEE.</p>" in html

    assert message["From"] == "dee@sender.example"
    assert message["To"] == "ana@recipient.example"
    assert message["Subject"] == "Introducing DEE to Ana"
    assert message["Reply-To"] == "sales@sender.example"
    assert message["Date"] is not None and message["Date"].datetime is not None
    assert message["X-DEE-Run"] == "welcome:ana"
    assert message["X-DEE-Step"] == "intro-email"
    assert re.fullmatch(r"<[0-9a-f]{32}\.intro-email@sender\.example>", message["Message-ID"])
    assert "Bcc" not in message

    assert result == SendEmailResult(
        message_id=message["Message-ID"], status="sent", recipient_domain="recipient.example"
    )
    record = ledger.get(result.message_id.strip("<>").split("@")[0])
    assert record is not None and record.status == "sent" and record.channel == "email"
    assert (record.run_id, record.step_id) == ("welcome:ana", "intro-email")


async def test_the_run_sender_overrides_the_default(smtp: SmtpServer, ledger: SendLedger) -> None:
    result = await send(settings_for(smtp.url), ledger, make_input(sender="ops@other.example"))
    message = the_message(smtp)
    assert message["From"] == "ops@other.example"
    assert smtp.handler.messages[0].mail_from == "ops@other.example"
    assert result.message_id.endswith("@other.example>")


async def test_text_part_from_html_when_no_text_template(
    smtp: SmtpServer, ledger: SendLedger
) -> None:
    await send(settings_for(smtp.url), ledger, make_input(template=EmailTemplate(html=HTML)))
    text, _html = parts(the_message(smtp))
    # The real URL, not the tracked one; no title or style; entities decoded.
    assert text == (
        "Hi Ana, meet DEE.\n\n"
        "See pricing (https://example.com/pricing?plan=pro&x=1) or write to us or read on.\n"
    )


def test_html_to_text() -> None:
    html = (
        "<h1>Title</h1><p>One<br>two &amp; three</p>"
        "<ul><li>a</li><li><a href='https://x.example/'>https://x.example/</a></li></ul>"
        "<script>ignored()</script><div>end</div>"
    )
    assert html_to_text(html) == "Title\n\nOne\ntwo & three\n\n- a\n- https://x.example/\n\nend\n"


async def test_tracking_pixel_and_links(smtp: SmtpServer, ledger: SendLedger) -> None:
    await send(settings_for(smtp.url), ledger, make_input(visit=3))
    _text, html = parts(the_message(smtp))
    found = links(html)

    [pixel] = found.images
    assert pixel.startswith(f"{PUBLIC_URL}/t/o/")
    assert verify_token(pixel.removeprefix(f"{PUBLIC_URL}/t/o/"), secret=SECRET, kind=OPEN) == {
        "k": "o",
        "r": "welcome:ana",
        "s": "intro-email",
        "v": 3,
        "i": key_id(SECRET),
    }
    assert html.index("<img") < html.index("</body>")

    tracked, mailto, anchor = found.hrefs
    assert tracked.startswith(f"{PUBLIC_URL}/t/c/")
    payload = verify_token(tracked.removeprefix(f"{PUBLIC_URL}/t/c/"), secret=SECRET, kind=CLICK)
    assert payload.pop("i") == key_id(SECRET)
    assert payload == {
        "k": "c",
        "r": "welcome:ana",
        "s": "intro-email",
        "v": 3,
        "u": "https://example.com/pricing?plan=pro&x=1",
    }
    assert (mailto, anchor) == ("mailto:sales@example.com", "#details")


async def test_no_tracking_unless_asked(smtp: SmtpServer, ledger: SendLedger) -> None:
    step = make_input().step.model_copy(update={"tracking": Tracking()})
    await send(settings_for(smtp.url), ledger, make_input(step=step))
    _text, html = parts(the_message(smtp))
    found = links(html)
    assert found.images == []
    assert found.hrefs[0] == "https://example.com/pricing?plan=pro&x=1"


async def test_unsubscribe_headers(smtp: SmtpServer, ledger: SendLedger) -> None:
    await send(settings_for(smtp.url), ledger, make_input())
    [received] = smtp.handler.messages
    message = received.message
    https_link, mailto = (
        part.strip().strip("<>") for part in str(message["List-Unsubscribe"]).split(",")
    )
    assert https_link.startswith(f"{PUBLIC_URL}/u/")
    token = https_link.removeprefix(f"{PUBLIC_URL}/u/")
    payload = verify_token(token, secret=SECRET, kind=UNSUBSCRIBE)
    assert (payload["k"], payload["r"]) == ("u", "welcome:ana")
    # The address is sealed in the link, not readable in it.
    assert unsubscribe_address(payload, secret=SECRET) == "ana@recipient.example"
    assert "recipient" not in str(message["List-Unsubscribe"])
    # The mail form carries the same signed token, in the subject the client sends.
    assert mailto == f"mailto:dee@sender.example?subject=unsubscribe%20{token}"
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    # On the wire the URL is whole, not RFC 2047-encoded: unsubscribe handlers read it raw.
    assert raw_header(received.data, "List-Unsubscribe") == f"<{https_link}>, <{mailto}>"


async def test_long_run_ids_stay_readable(smtp: SmtpServer, ledger: SendLedger) -> None:
    run_id = "a-plan-with-a-long-name:" + "c" * 150
    await send(settings_for(smtp.url), ledger, make_input(run_id=run_id))
    [received] = smtp.handler.messages
    assert raw_header(received.data, "X-DEE-Run") == run_id
    assert received.message["X-DEE-Run"] == run_id


# -- exactly once ---------------------------------------------------------------------------


async def test_message_id_is_stable_per_visit(smtp: SmtpServer, ledger: SendLedger) -> None:
    first = await send(settings_for(smtp.url), ledger, make_input())
    again = await send(settings_for(smtp.url), ledger, make_input())
    second_visit = await send(settings_for(smtp.url), ledger, make_input(visit=2))

    assert again.message_id == first.message_id
    assert second_visit.message_id != first.message_id
    assert (first.status, again.status, second_visit.status) == ("sent", "already-sent", "sent")
    # The retry sent nothing; the second visit is a new message.
    assert [r.message["Message-ID"] for r in smtp.handler.messages] == [
        first.message_id,
        second_visit.message_id,
    ]


async def test_a_new_execution_of_the_same_run_sends_again(
    smtp: SmtpServer, ledger: SendLedger
) -> None:
    # A later run for the same plan and contact reuses the workflow id, not the execution.
    later = ActivityEnvironment()
    later.info = dataclasses.replace(later.info, workflow_run_id="another-execution")
    first = await send(settings_for(smtp.url), ledger, make_input())
    second = await send(settings_for(smtp.url), ledger, make_input(), environment=later)
    assert (first.status, second.status) == ("sent", "sent")
    assert first.message_id != second.message_id
    assert len(smtp.handler.messages) == 2


def test_email_key() -> None:
    key = email_key("exec", "welcome:ana", "intro-email", 1)
    assert re.fullmatch(r"[0-9a-f]{32}\.intro-email", key)
    assert key == email_key("exec", "welcome:ana", "intro-email", 1)
    assert key != email_key("exec", "welcome:ana", "intro-email", 2)
    assert key != email_key("exec2", "welcome:ana", "intro-email", 1)
    # Dots that a Message-ID cannot hold become dashes.
    assert email_key("e", "r", "a..b.", 1).endswith(".a-b")


async def test_after_a_temporary_failure_the_retry_sends_once(
    smtp: SmtpServer, ledger: SendLedger
) -> None:
    smtp.handler.fail_next("451 4.3.0 try again later")
    with pytest.raises(aiosmtplib.SMTPDataError) as caught:
        await send(settings_for(smtp.url), ledger, make_input())
    retryable(caught.value)
    assert caught.value.code == 451
    assert smtp.handler.messages == []

    # The ledger holds an unconfirmed claim: the retry sends, exactly once.
    result = await send(settings_for(smtp.url), ledger, make_input())
    assert result.status == "sent"
    assert len(smtp.handler.messages) == 1
    assert (await send(settings_for(smtp.url), ledger, make_input())).status == "already-sent"
    assert len(smtp.handler.messages) == 1


async def test_already_sent_needs_no_server(smtp: SmtpServer, ledger: SendLedger) -> None:
    await send(settings_for(smtp.url), ledger, make_input())
    # The server is gone for the retry; the ledger answers.
    nothing = settings_for(f"smtp://127.0.0.1:{free_port()}")
    assert (await send(nothing, ledger, make_input())).status == "already-sent"


# -- failures -------------------------------------------------------------------------------


async def test_refused_recipient_is_permanent(smtp: SmtpServer, ledger: SendLedger) -> None:
    smtp.handler.refuse("ana@recipient.example", "550 5.1.1 <ana@recipient.example>: no such user")
    with pytest.raises(ApplicationError) as caught:
        await send(settings_for(smtp.url), ledger, make_input())
    error = permanent(caught, "InvalidRecipient")
    assert "550" in str(error) and "no such user" in str(error)
    # The address the server quoted is not repeated into the workflow's history.
    assert "ana@recipient.example" not in str(error)
    assert smtp.handler.messages == []


async def test_recipient_deferred_is_retried(smtp: SmtpServer, ledger: SendLedger) -> None:
    smtp.handler.refuse("ana@recipient.example", "450 4.2.1 mailbox busy")
    with pytest.raises(aiosmtplib.SMTPRecipientsRefused) as caught:
        await send(settings_for(smtp.url), ledger, make_input())
    retryable(caught.value)


async def test_rejected_message_is_permanent(smtp: SmtpServer, ledger: SendLedger) -> None:
    smtp.handler.fail_next("554 5.7.1 message refused as spam")
    with pytest.raises(ApplicationError) as caught:
        await send(settings_for(smtp.url), ledger, make_input())
    assert "554" in str(permanent(caught, "Rejected"))


async def test_server_down_is_retried(ledger: SendLedger) -> None:
    nothing = settings_for(f"smtp://127.0.0.1:{free_port()}")
    with pytest.raises(aiosmtplib.SMTPConnectError) as caught:
        await send(nothing, ledger, make_input())
    retryable(caught.value)


async def test_required_starttls_is_not_skipped(smtp: SmtpServer, ledger: SendLedger) -> None:
    # The test server offers no STARTTLS: a URL that asks for it must not send in clear.
    settings = settings_for(f"{smtp.url}?starttls=true")
    with pytest.raises(aiosmtplib.SMTPException, match="STARTTLS") as caught:
        await send(settings, ledger, make_input())
    retryable(caught.value)
    assert smtp.handler.messages == []


@pytest.mark.parametrize(
    ("changes", "settings_changes", "kind", "message"),
    [
        # No DEE_SECRET_KEY: links cannot be signed.
        ({}, {"secret_key": None}, "MissingConfiguration", "DEE_SECRET_KEY"),
        # A DEE_SMTP_URL that is not one.
        ({}, {"smtp_url": "http://mail.example"}, "InvalidConfiguration", "smtp://"),
        # A contact with a phone number only.
        ({"contact": Contact(id="bob", phone="+15551234567")}, {}, "MissingEmail", "'bob'"),
        # A default From that is not an address.
        ({}, {"from_address": "DEE <dee@x.example>"}, "InvalidSender", "DEE_FROM_ADDRESS"),
        # A template that reads a variable the run lacks.
        ({"variables": {}}, {}, "TemplateError", "product"),
    ],
)
async def test_permanent_failures(
    smtp: SmtpServer,
    ledger: SendLedger,
    changes: dict[str, Any],
    settings_changes: dict[str, Any],
    kind: str,
    message: str,
) -> None:
    with pytest.raises(ApplicationError) as caught:
        await send(settings_for(smtp.url, **settings_changes), ledger, make_input(**changes))
    assert message in str(permanent(caught, kind))
    assert smtp.handler.messages == []
    assert smtp.handler.rcpt_attempts == []


# -- header injection -----------------------------------------------------------------------


async def test_contact_data_cannot_add_headers(smtp: SmtpServer, ledger: SendLedger) -> None:
    contact = Contact(
        id="ana", email="ana@recipient.example", firstName="Ana\r\nBcc: thief@evil.example"
    )
    await send(settings_for(smtp.url), ledger, make_input(contact=contact))
    [received] = smtp.handler.messages
    message = received.message
    assert received.rcpt_tos == ("ana@recipient.example",)
    assert "Bcc" not in message
    assert message["Subject"] == "Introducing DEE to Ana Bcc: thief@evil.example"
    headers = received.data.split(b"\r\n\r\n")[0]
    assert not re.search(rb"^Bcc:", headers, re.MULTILINE | re.IGNORECASE)


@pytest.mark.parametrize(
    "address",
    [
        # A second header after the address.
        "ana@recipient.example\r\nBcc: thief@evil.example",
        # A second address.
        "ana@recipient.example, thief@evil.example",
        # A display name that hides another address.
        "Ana <thief@evil.example>",
        # A comment.
        "ana@recipient.example (Ana)",
    ],
)
async def test_malicious_addresses_are_refused(
    smtp: SmtpServer, ledger: SendLedger, address: str
) -> None:
    # model_construct: as if the model's own pattern had been bypassed on the way in.
    contact = Contact.model_construct(id="ana", email=address)
    with pytest.raises(ApplicationError) as caught:
        await send(settings_for(smtp.url), ledger, make_input(contact=contact))
    permanent(caught, "InvalidRecipient")
    assert smtp.handler.rcpt_attempts == []


def test_the_contact_model_refuses_them_first() -> None:
    with pytest.raises(ValueError):
        Contact(id="ana", email="ana@recipient.example\r\nBcc: thief@evil.example")


# -- DEE_SMTP_URL ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        # The development default.
        ("smtp://127.0.0.1:1025", SmtpConfig("127.0.0.1", 1025)),
        # Standard ports by scheme and option.
        ("smtp://mail.example", SmtpConfig("mail.example", 25)),
        (
            "smtp://mail.example?starttls=true",
            SmtpConfig("mail.example", 587, start_tls=True),
        ),
        ("smtps://mail.example", SmtpConfig("mail.example", 465, use_tls=True)),
        # STARTTLS as a bare flag, credentials percent-decoded, a timeout.
        (
            "smtp://user%40x:p%3Ass@mail.example:2525?starttls&timeout=5",
            SmtpConfig(
                "mail.example", 2525, username="user@x", password="p:ss", start_tls=True, timeout=5
            ),
        ),
        # Explicitly off.
        ("smtp://mail.example:25?starttls=false", SmtpConfig("mail.example", 25)),
    ],
)
def test_smtp_urls(url: str, expected: SmtpConfig) -> None:
    assert parse_smtp_url(url) == expected


@pytest.mark.parametrize(
    ("url", "message"),
    [
        # Another scheme.
        ("http://mail.example", "smtp:// or smtps://"),
        # No host.
        ("smtp://:25", "no host"),
        # A port that is not a number.
        ("smtp://mail.example:abc", "bad port"),
        # A flag that is not a boolean.
        ("smtp://mail.example?starttls=maybe", "not true or false"),
        # Options DEE does not know.
        ("smtp://mail.example?tls=1", "unknown option 'tls'"),
        # TLS twice.
        ("smtps://mail.example?starttls=true", "TLS already"),
        # A timeout out of range.
        ("smtp://mail.example?timeout=0", "timeout='0'"),
        ("smtp://mail.example?timeout=soon", "timeout='soon'"),
    ],
)
def test_bad_smtp_urls(url: str, message: str) -> None:
    with pytest.raises(SmtpUrlError, match=re.escape(message)):
        parse_smtp_url(url)


def test_smtp_config_hides_the_password() -> None:
    config = parse_smtp_url("smtp://user:secret@mail.example:25")
    assert "secret" not in repr(config)
    assert "user@mail.example:25" in repr(config)


async def test_a_silent_server_times_out_and_is_retried(ledger: SendLedger) -> None:
    # Accepts the connection, never greets.
    held: list[asyncio.StreamWriter] = []

    async def hold(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        settings = settings_for(f"smtp://127.0.0.1:{port}?timeout=0.3")
        with pytest.raises(TimeoutError) as caught:
            await send(settings, ledger, make_input())
        retryable(caught.value)
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_a_ledger_failure_at_the_commit_sends_nothing_and_the_retry_sends_once(
    smtp: SmtpServer, ledger: SendLedger, tmp_path: Path
) -> None:
    # The database fails at the record before the final dot (its table is gone after the
    # server took the recipient): the attempt must end DATA without the dot and fail to be
    # retried; the retry, with the database back, sends exactly one message.
    engine = make_engine(resolve_url(f"sqlite:///{tmp_path / 'dee.db'}"))

    def rename(old: str, new: str) -> None:
        with engine.begin() as connection:
            connection.execute(text(f"ALTER TABLE {old} RENAME TO {new}"))

    original_rcpt = smtp.handler.handle_RCPT

    async def rcpt_then_break_the_ledger(*args: Any) -> str:
        reply = await original_rcpt(*args)
        if not smtp.handler.rcpt_attempts[1:]:
            rename("sends", "sends_away")
        return reply

    smtp.handler.handle_RCPT = rcpt_then_break_the_ledger  # type: ignore[method-assign,assignment]
    try:
        with pytest.raises(LedgerError):
            await send(settings_for(smtp.url), ledger, make_input())
        await asyncio.sleep(0.5)
        # Positive control: the attempt got as far as the recipient; no message came of it.
        assert smtp.handler.rcpt_attempts == ["ana@recipient.example"]
        assert smtp.handler.messages == []
        rename("sends_away", "sends")
        result = await send(settings_for(smtp.url), ledger, make_input())
    finally:
        engine.dispose()
    assert result.status == "sent"
    assert len(smtp.handler.messages) == 1


async def test_internationalised_recipient(smtp: SmtpServer, ledger: SendLedger) -> None:
    contact = Contact(id="jorg", email="jörg@empfänger.example", firstName="Jörg")
    result = await send(settings_for(smtp.url), ledger, make_input(contact=contact))
    [received] = smtp.handler.messages
    assert result.recipient_domain == "empfänger.example"
    assert received.rcpt_tos == ("jörg@empfänger.example",)
    assert "SMTPUTF8" in received.mail_options
    assert received.message["To"] == "jörg@empfänger.example"
    assert received.message["Subject"] == "Introducing DEE to Jörg"


async def test_internationalised_recipient_without_smtputf8_is_permanent(
    ledger: SendLedger,
) -> None:
    contact = Contact(id="jorg", email="jörg@empfänger.example", firstName="Jörg")
    async with smtp_server(enable_SMTPUTF8=False) as server:
        with pytest.raises(ApplicationError) as caught:
            await send(settings_for(server.url), ledger, make_input(contact=contact))
        assert server.handler.messages == []
    assert "SMTPUTF8" in str(permanent(caught, "Rejected"))


async def test_no_addresses_or_content_at_info(
    smtp: SmtpServer, ledger: SendLedger, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG):
        await send(settings_for(smtp.url), ledger, make_input())
        await send(settings_for(smtp.url), ledger, make_input())
    shown = [
        record.getMessage()
        for record in caplog.records
        if record.levelno >= logging.INFO and record.name.startswith("temporalio.activity")
    ]
    assert len(shown) == 2
    assert "recipient.example" in shown[0] and "earlier attempt" in shown[1]
    for line in shown:
        assert "ana@" not in line and "Ana" not in line and "sender.example" not in line


async def test_the_send_is_recorded_before_the_message_is_complete(
    smtp: SmtpServer, ledger: SendLedger
) -> None:
    # When the server holds the complete message, the ledger must already say so: a worker
    # killed from then on leaves a retry that finds "already-sent" instead of a duplicate.
    seen: list[str] = []
    engine = make_engine(ledger.url)

    def check(received: Received) -> None:
        with engine.connect() as connection:
            seen.extend(connection.execute(text("SELECT status FROM sends")).scalars())

    smtp.handler.after_accept = check
    try:
        await send(settings_for(smtp.url), ledger, make_input())
    finally:
        engine.dispose()
    assert seen == ["sent"]


async def test_a_retry_after_a_death_before_the_end_of_data_sends_once(
    smtp: SmtpServer, ledger: SendLedger
) -> None:
    # An attempt that claimed the send and died mid-DATA left nothing on the server.
    run = ActivityEnvironment().info.workflow_run_id
    key = email_key(run, "welcome:ana", "intro-email", 1)
    assert ledger.claim(key, run_id="welcome:ana", step_id="intro-email", channel="email") == (
        "claimed"
    )
    result = await send(settings_for(smtp.url), ledger, make_input())
    assert result.status == "sent" and len(smtp.handler.messages) == 1
