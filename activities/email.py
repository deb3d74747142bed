"""The email channel: render a send-email step and send it over SMTP, exactly once.

:meth:`EmailActivities.send_email` renders the step's subject and template for the contact,
adds tracking (an open pixel, signed click links) and unsubscribe headers (RFC 2369 and the
RFC 8058 one-click form; the ``mailto:`` goes to the sender with the signed unsubscribe
token in its subject), and sends over ``DEE_SMTP_URL``. Failures are sorted for the
retry policy: a recipient the server refuses with 5xx, any other 5xx, a template that does
not render, a missing address or setting raise a non-retryable ``ApplicationError`` of type
``InvalidRecipient``, ``Rejected``, ``AuthenticationFailed``, ``TemplateError``,
``MissingEmail``, ``InvalidSender``, ``MissingConfiguration`` or ``InvalidConfiguration``;
4xx replies, lost connections and timeouts are raised as they are, to be retried.

An address on the suppression list (:mod:`dee.runs.suppressions`: it unsubscribed, bounced or
reported spam) gets nothing: the send returns status ``suppressed`` without claiming it in the
ledger or talking to the server, and the run shows ``suppressed <message-id>``.

Every attempt of one send derives the same ``Message-ID`` and ledger key (see
:mod:`dee.runs.ledger`), so a retry after the server accepted the message returns
``already-sent`` instead of sending it again. The key covers the workflow *execution*
(Temporal's run id) as well as DEE's run id, step and visit: DEE's run id is the workflow
id, which a later run for the same plan and contact reuses, and that run must send anew.
"""

from __future__ import annotations

import asyncio
import datetime
import email.utils
import re
import uuid
from collections.abc import Callable
from email.headerregistry import Address
from email.message import EmailMessage
from html.parser import HTMLParser
from typing import Final

import aiosmtplib
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities._attempt import counted, heartbeating, permanent
from activities._headers import POLICY, set_header
from activities._smtp import SmtpConfig, SmtpUrlError, parse_smtp_url, send_message
from dee.errors import ContentError
from dee.metrics import timed
from dee.plans.content import PlanContent, RenderedEmail, render_email
from dee.plans.model import EMAIL_PATTERN
from dee.runs.channels import SendEmailInput, SendEmailResult
from dee.runs.ledger import LedgerError, SendLedger, SupersededError, email_key
from dee.runs.suppressions import Suppressions
from dee.runs.tracking import (
    TokenError,
    add_open_pixel,
    click_url,
    open_pixel_url,
    rewrite_links,
    unsubscribe_mailto,
    unsubscribe_url,
)
from dee.settings import Settings

__all__ = ["EmailActivities", "html_to_text"]

_EMAIL: Final = re.compile(EMAIL_PATTERN)
#: Longest part of a server's reply kept in an error message.
_MAX_REPLY: Final = 200


class EmailActivities:
    """The email activity, with the settings and ledger it needs."""

    def __init__(self, settings: Settings, ledger: SendLedger) -> None:
        self._settings = settings
        self._ledger = ledger
        # The suppression list lives in the ledger's database: read it on its connections.
        self._suppressions = Suppressions.sharing(ledger)

    @activity.defn(name="send_email")
    async def send_email(self, input: SendEmailInput) -> SendEmailResult:
        """Send ``input.step``'s email to ``input.contact`` unless an attempt already did."""
        async with heartbeating():
            return await counted("email", self._send_email(input))

    async def _send_email(self, input: SendEmailInput) -> SendEmailResult:
        settings = self._settings
        step = input.step
        if not settings.secret_key:
            raise permanent(
                "DEE_SECRET_KEY is not set: it signs tracking and unsubscribe links; set it "
                "in the worker's environment",
                "MissingConfiguration",
            )
        try:
            smtp = parse_smtp_url(settings.smtp_url)
        except SmtpUrlError as exc:
            raise permanent(str(exc), "InvalidConfiguration") from None
        if input.contact.email is None:
            raise permanent(f"contact {input.contact.id!r} has no email address", "MissingEmail")
        recipient = _address(input.contact.email)
        if recipient is None:
            raise permanent(
                f"contact {input.contact.id!r} has an email address that is not one plain address",
                "InvalidRecipient",
            )
        sender = _address(input.sender or settings.from_address)
        if sender is None:
            source = "the run's sender" if input.sender else "DEE_FROM_ADDRESS"
            raise permanent(f"{source} is not one plain address", "InvalidSender")
        reply_to = _address(step.reply_to) if step.reply_to else None
        if step.reply_to and reply_to is None:
            raise permanent(f"step {step.id!r}: replyTo is not one plain address", "InvalidSender")
        try:
            # Off the event loop: a slow template (bounded by dee.plans.sandbox) delays no
            # other send, and heartbeats go on.
            with timed("render", "email"):
                rendered = await asyncio.to_thread(
                    render_email,
                    step,
                    PlanContent(templates={step.template_id: input.template}),
                    contact=input.contact.attributes(),
                    variables=input.variables,
                )
        except ContentError as exc:
            raise permanent(f"step {step.id!r}: {exc}", "TemplateError") from None

        key = email_key(activity.info().workflow_run_id, input.run_id, step.id, input.visit)
        message_id = f"<{key}@{_id_domain(sender.domain)}>"
        domain = recipient.domain.lower()
        if await asyncio.to_thread(self._suppressions.is_suppressed, recipient.addr_spec):
            # Unless an earlier attempt sent it before the address was suppressed.
            earlier = await asyncio.to_thread(self._ledger.get, key)
            if earlier is None or earlier.status != "sent":
                activity.logger.info(
                    "email %s not sent: the recipient is on the suppression list", key
                )
                return SendEmailResult(
                    message_id=message_id, status="suppressed", recipient_domain=domain
                )
        message = _build_message(
            input,
            rendered,
            settings=settings,
            secret=settings.secret_key,
            sender=sender,
            recipient=recipient,
            reply_to=reply_to,
            message_id=message_id,
        )

        attempt = uuid.uuid4().hex
        claim = await asyncio.to_thread(
            self._ledger.claim,
            key,
            run_id=input.run_id,
            step_id=step.id,
            channel="email",
            attempt=attempt,
            execution=input.execution,
        )
        if claim == "already-sent":
            activity.logger.info("email %s was sent by an earlier attempt; not sending again", key)
            return SendEmailResult(
                message_id=message_id, status="already-sent", recipient_domain=domain
            )
        if claim == "in-doubt":
            # An earlier attempt never recorded the send: it died before the end of DATA
            # (the server discarded what it had), or it stalled. This attempt now holds the
            # send; a stalled one that wakes cannot commit it and ends DATA without the dot.
            activity.logger.warning(
                "email %s: an earlier attempt did not finish; this attempt takes it over", key
            )
        committed = False

        def commit() -> None:
            # On the loop's thread, on purpose: see activities._smtp._CommittingSMTP.
            nonlocal committed
            self._ledger.mark_sent(key, attempt=attempt, bounded=True)
            committed = True

        try:
            with timed("send", "email"):
                await _send(
                    smtp,
                    message,
                    sender=sender.addr_spec,
                    recipient=recipient.addr_spec,
                    commit=commit,
                )
        except SupersededError:
            activity.logger.warning(
                "email %s: another attempt took this send over; this one ended DATA without "
                "the final dot",
                key,
            )
            raise permanent(
                "another attempt took this send over (this one stalled)", "Superseded"
            ) from None
        except LedgerError:
            # The record could not be made in time (a locked or unreachable database): no
            # dot went out, so the retry sends the message.
            activity.logger.warning(
                "email %s: the ledger did not record the send; this attempt ended DATA "
                "without the final dot and a retry sends it",
                key,
            )
            raise
        except (aiosmtplib.SMTPResponseException, ApplicationError):
            if committed:
                # The server had the whole message and said no: it does not exist, so a
                # retry (for a 4xx) must send it again.
                await asyncio.to_thread(self._ledger.release, key)
            raise
        activity.logger.info(
            "email %s sent to a recipient at %s (step %s, visit %d)",
            key,
            domain,
            step.id,
            input.visit,
        )
        return SendEmailResult(message_id=message_id, status="sent", recipient_domain=domain)


def _address(value: str) -> Address | None:
    """``value`` as an address if it is exactly one plain ``local@domain``: no display
    name, no comments, no second address, nothing that could start another header."""
    if len(value) > 254 or not _EMAIL.match(value):
        return None
    # The parser flags any non-ASCII local part (SMTPUTF8 addresses) as a defect, so it
    # checks the structure of an ASCII stand-in; the pattern has already ruled out
    # everything but letters, digits and punctuation that is no delimiter.
    probe = re.sub(r"[^\x00-\x7f]", "x", value)
    try:
        parsed = Address(addr_spec=probe)
    except (ValueError, IndexError):
        return None
    if parsed.addr_spec != probe or email.utils.parseaddr(value) != ("", value):
        return None
    local, _, domain = value.rpartition("@")
    return Address(username=local, domain=domain)


def _id_domain(domain: str) -> str:
    # A Message-ID must be ASCII; an internationalised sender domain goes in as IDNA.
    try:
        return domain.encode("idna").decode("ascii").lower()
    except UnicodeError:
        return "dee.invalid"


def _build_message(
    input: SendEmailInput,
    rendered: RenderedEmail,
    *,
    settings: Settings,
    secret: str,
    sender: Address,
    recipient: Address,
    reply_to: Address | None,
    message_id: str,
) -> EmailMessage:
    step = input.step
    public_url = settings.public_url.rstrip("/")
    html = rendered.html
    # The text part comes from the untracked HTML: readers of plain text see real URLs.
    text = rendered.text if rendered.text is not None else html_to_text(html)
    if step.tracking.clicks:

        def track(url: str) -> str:
            try:
                return click_url(
                    public_url,
                    secret=secret,
                    run_id=input.run_id,
                    step_id=step.id,
                    visit=input.visit,
                    url=url,
                    execution=input.execution,
                )
            except TokenError:
                # Too long to fit in a token: a working untracked link beats a broken one.
                return url

        # DEE's own links (unsubscribe, already tracked) stay as they are.
        html = rewrite_links(html, track, keep=lambda url: url.startswith(f"{public_url}/"))
    if step.tracking.opens:
        pixel = open_pixel_url(
            public_url,
            secret=secret,
            run_id=input.run_id,
            step_id=step.id,
            visit=input.visit,
            execution=input.execution,
        )
        html = add_open_pixel(html, pixel)
    unsubscribe = unsubscribe_url(
        public_url, secret=secret, run_id=input.run_id, email=recipient.addr_spec
    )
    mailto = unsubscribe_mailto(
        sender.addr_spec, secret=secret, run_id=input.run_id, email=recipient.addr_spec
    )

    message = EmailMessage(policy=POLICY)
    headers = [
        ("From", sender.addr_spec),
        ("To", recipient.addr_spec),
        ("Subject", rendered.subject),
        *([("Reply-To", reply_to.addr_spec)] if reply_to is not None else []),
        ("Date", email.utils.format_datetime(datetime.datetime.now(datetime.UTC))),
        ("Message-ID", message_id),
        ("List-Unsubscribe", f"<{unsubscribe}>, <{mailto}>"),
        ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"),
        ("X-DEE-Run", input.run_id),
        ("X-DEE-Step", step.id),
    ]
    for name, value in headers:
        set_header(message, name, value, step_id=step.id)
    message.set_content(text)
    message.add_alternative(html, subtype="html")
    return message


def _redact(reply: str, address: str) -> str:
    # Servers often quote the address they refuse; failures go to histories and logs.
    reply = re.sub(re.escape(address), "<recipient>", reply, flags=re.IGNORECASE)
    reply = " ".join(reply.split())
    return reply if len(reply) <= _MAX_REPLY else reply[: _MAX_REPLY - 3] + "..."


async def _send(
    config: SmtpConfig,
    message: EmailMessage,
    *,
    sender: str,
    recipient: str,
    commit: Callable[[], None],
) -> None:
    """Send, turning permanent SMTP failures into non-retryable errors; transient ones
    (4xx, lost connections, timeouts) propagate for the retry policy."""
    try:
        await send_message(config, message, sender=sender, recipient=recipient, commit=commit)
    except aiosmtplib.SMTPRecipientsRefused as exc:
        refusals = exc.recipients
        if refusals and all(refusal.code >= 500 for refusal in refusals):
            first = refusals[0]
            raise permanent(
                f"the server refused the recipient: {first.code} "
                f"{_redact(first.message, recipient)}",
                "InvalidRecipient",
            ) from None
        raise
    except aiosmtplib.SMTPRecipientRefused as exc:
        if exc.code >= 500:
            raise permanent(
                f"the server refused the recipient: {exc.code} {_redact(exc.message, recipient)}",
                "InvalidRecipient",
            ) from None
        raise
    except aiosmtplib.SMTPAuthenticationError as exc:
        if exc.code >= 500:
            raise permanent(
                f"the SMTP server refused DEE_SMTP_URL's credentials: {exc.code} "
                f"{_redact(exc.message, recipient)}",
                "AuthenticationFailed",
            ) from None
        raise
    except aiosmtplib.SMTPResponseException as exc:
        if exc.code >= 500:
            raise permanent(
                f"the server rejected the message: {exc.code} {_redact(exc.message, recipient)}",
                "Rejected",
            ) from None
        raise
    except aiosmtplib.SMTPNotSupported as exc:
        # An internationalised address to a server without SMTPUTF8: retrying cannot help.
        raise permanent(f"the server cannot take this message: {exc}", "Rejected") from None


class _TextMaker(HTMLParser):
    """Plain text from HTML: paragraphs and line breaks kept, links shown as ``text (url)``."""

    _SKIP: Final = frozenset({"script", "style", "title", "template"})
    _PARAGRAPH: Final = frozenset(
        {"p", "h1", "h2", "h3", "h4", "h5", "h6", "table", "ul", "ol", "blockquote", "hr"}
    )
    _LINE: Final = frozenset({"div", "tr", "li", "section", "article", "header", "footer"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skipping = 0
        # Line breaks owed before the next text: blocks ask for at least one or two,
        # <br> adds one, so nested blocks do not pile up blank lines.
        self._breaks = 0
        self._at_line_start = True
        self._links: list[tuple[str | None, int]] = []

    def _block(self, breaks: int) -> None:
        self._breaks = max(self._breaks, breaks)

    def _flush(self) -> None:
        if self._breaks:
            self.parts.append("\n" * self._breaks)
            self._breaks = 0
            self._at_line_start = True

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self._SKIP:
            self._skipping += 1
        elif tag == "br":
            self._breaks += 1
        elif tag in self._PARAGRAPH:
            self._block(2)
        elif tag in self._LINE:
            self._block(1)
        elif tag in {"td", "th"}:
            self.parts.append(" ")
        if tag == "li":
            self._flush()
            self.parts.append("- ")
            self._at_line_start = True
        elif tag == "a":
            self._links.append((dict(attrs).get("href"), len(self.parts)))

    def handle_endtag(self, tag: str) -> None:
        if tag in self._SKIP:
            self._skipping = max(0, self._skipping - 1)
        elif tag in self._PARAGRAPH:
            self._block(2)
        elif tag in self._LINE:
            self._block(1)
        elif tag == "a" and self._links:
            href, start = self._links.pop()
            label = "".join(self.parts[start:]).strip()
            if href and href.startswith(("http://", "https://")) and href != label:
                self.parts.append(f" ({href})")

    def handle_data(self, data: str) -> None:
        if self._skipping:
            return
        text = re.sub(r"\s+", " ", data)
        if not text.strip():
            if not self._breaks:
                self.parts.append(" ")
            return
        self._flush()
        if self._at_line_start:
            text = text.lstrip()
            self._at_line_start = False
        self.parts.append(text)


def html_to_text(html: str) -> str:
    """A readable plain-text version of an HTML email, for its text/plain part."""
    maker = _TextMaker()
    maker.feed(html)
    maker.close()
    lines = (line.strip() for line in "".join(maker.parts).splitlines())
    text = re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()
    return text + "\n"
