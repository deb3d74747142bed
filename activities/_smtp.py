"""SMTP plumbing for the email activity: the ``DEE_SMTP_URL`` form and one send.

``smtp://[user:pass@]host[:port][?starttls=true][&timeout=20]`` connects in plain text and,
with ``starttls``, upgrades with STARTTLS (refusing a server that does not offer it);
``smtps://`` connects with TLS from the first byte. Ports default to 25 (587 with
``starttls``) and 465 for ``smtps``. User and password are percent-decoded. ``timeout`` is
the seconds one SMTP command may take; a whole send may take three times as long.
"""

from __future__ import annotations

import asyncio
import email.message
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Literal
from urllib.parse import parse_qsl, unquote, urlsplit

import aiosmtplib
from aiosmtplib.errors import SMTPDataError, SMTPServerDisconnected, SMTPTimeoutError
from aiosmtplib.protocol import PERIOD_REGEX, normalize_message_line_endings
from aiosmtplib.response import SMTPResponse
from aiosmtplib.typing import Default, SMTPStatus

__all__ = ["DEFAULT_TIMEOUT", "SmtpConfig", "SmtpUrlError", "parse_smtp_url", "send_message"]

#: Seconds one SMTP command may take.
DEFAULT_TIMEOUT: Final = 20.0
_TRUE: Final = frozenset({"", "1", "true", "yes", "on"})
_FALSE: Final = frozenset({"0", "false", "no", "off"})


class SmtpUrlError(ValueError):
    """``DEE_SMTP_URL`` cannot be understood."""


@dataclass(frozen=True, slots=True)
class SmtpConfig:
    host: str
    port: int
    username: str | None = None
    password: str | None = None
    #: TLS from the first byte (``smtps://``).
    use_tls: bool = False
    #: Upgrade a plain connection with STARTTLS, and fail if the server cannot.
    start_tls: bool = False
    timeout: float = DEFAULT_TIMEOUT

    def __repr__(self) -> str:
        # Never show the password, in logs or tracebacks.
        user = f"{self.username}@" if self.username else ""
        scheme = "smtps" if self.use_tls else "smtp"
        tls = "?starttls=true" if self.start_tls else ""
        return f"SmtpConfig('{scheme}://{user}{self.host}:{self.port}{tls}')"


def _flag(name: str, value: str) -> bool:
    if value.lower() in _TRUE:
        return True
    if value.lower() in _FALSE:
        return False
    raise SmtpUrlError(f"DEE_SMTP_URL: {name}={value!r} is not true or false")


def parse_smtp_url(url: str) -> SmtpConfig:
    """The SMTP server ``url`` names; :class:`SmtpUrlError` says what is wrong with it."""
    parts = urlsplit(url)
    if parts.scheme not in {"smtp", "smtps"}:
        raise SmtpUrlError(
            f"DEE_SMTP_URL must start with smtp:// or smtps://, not {parts.scheme or url!r}"
        )
    try:
        port = parts.port
    except ValueError as exc:
        raise SmtpUrlError(f"DEE_SMTP_URL has a bad port: {exc}") from exc
    if not parts.hostname:
        raise SmtpUrlError("DEE_SMTP_URL names no host: expected smtp://host:port")
    start_tls = False
    timeout = DEFAULT_TIMEOUT
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name == "starttls":
            start_tls = _flag(name, value)
        elif name == "timeout":
            try:
                timeout = float(value)
            except ValueError:
                timeout = -1.0
            if not 0 < timeout <= 600:
                raise SmtpUrlError(f"DEE_SMTP_URL: timeout={value!r} is not 0 to 600 seconds")
        else:
            raise SmtpUrlError(
                f"DEE_SMTP_URL: unknown option {name!r}; expected starttls or timeout"
            )
    use_tls = parts.scheme == "smtps"
    if use_tls and start_tls:
        raise SmtpUrlError("DEE_SMTP_URL: smtps:// is TLS already; starttls is for smtp://")
    if port is None:
        port = 465 if use_tls else 587 if start_tls else 25
    return SmtpConfig(
        host=parts.hostname,
        port=port,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password is not None else None,
        use_tls=use_tls,
        start_tls=start_tls,
        timeout=timeout,
    )


class _CommittingSMTP(aiosmtplib.SMTP):
    """An SMTP client that calls ``commit`` just before it ends ``DATA``.

    A message exists on the server only once the server reads the final ``.`` of DATA: a
    client that dies before sending it leaves nothing behind, and one that dies after it
    has handed the whole message to the kernel, which still delivers it. So the ledger
    records the send between the body and the final dot. When ``commit`` raises (the
    ledger says another attempt took the send over), the connection is closed without the
    dot, and the server discards the message.

    ``commit`` is called once the body is with the kernel, on the event loop's thread,
    with no ``await`` between its return and the write of the dot, which then goes
    straight to the kernel: the window in which a crash loses the message is those few
    microseconds. It blocks the loop for one small database write, which the ledger bounds
    (``mark_sent(bounded=True)``: at most 2 seconds of waiting, then it fails and the
    attempt is retried), so heartbeats keep within their timeout. Handing it to a thread
    would keep heartbeats going during the write, but the dot would then wait for the loop
    to come back to this task (behind every other ready callback and task of the worker),
    and a worker killed meanwhile loses the message; the fault tests caught exactly that.
    """

    def __init__(self, *, commit: Callable[[], None], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._commit = commit
        self.committed = False

    async def __aexit__(self, kind: Any, error: BaseException | None, traceback: Any) -> None:
        # A cancelled send (a worker stopping, a timed-out attempt) hangs up at once:
        # aiosmtplib would say QUIT and wait up to a command's timeout for the answer,
        # behind whatever the server was still doing.
        if isinstance(error, asyncio.CancelledError):
            self.close()
            return
        await super().__aexit__(kind, error, traceback)

    async def data(
        self,
        message: str | bytes,
        /,
        *,
        timeout: float | Literal[Default.token] | None = Default.token,
    ) -> SMTPResponse:
        if isinstance(message, str):
            message = message.encode("ascii")
        if timeout is Default.token:
            timeout = self.timeout
        body = PERIOD_REGEX.sub(b"..", normalize_message_line_endings(message))
        start = await self.execute_command(b"DATA", timeout=timeout)
        if start.code != SMTPStatus.start_input:
            raise SMTPDataError(start.code, start.message)
        protocol = self.protocol
        if protocol is None:
            raise SMTPServerDisconnected("Connection lost")
        try:
            # The whole body goes to the kernel before the commit: a pause of the transport
            # at any buffered byte, and a drain until none is. After the commit only the
            # dot is left, which the kernel then takes at once.
            transport = protocol.transport
            if isinstance(transport, asyncio.WriteTransport):
                transport.set_write_buffer_limits(high=0)
            protocol.write(body)
            await protocol._drain_helper()
            try:
                self._commit()
            except BaseException:
                # No dot: the server drops the message when the connection goes.
                self.close()
                raise
            self.committed = True
            protocol.write(b".\r\n")
            response = await protocol.read_response(timeout=timeout)
        except (SMTPServerDisconnected, SMTPTimeoutError):
            self.close()
            raise
        if response.code != SMTPStatus.completed:
            raise SMTPDataError(response.code, response.message)
        return response


async def send_message(
    config: SmtpConfig,
    message: email.message.EmailMessage,
    *,
    sender: str,
    recipient: str,
    commit: Callable[[], None] | None = None,
) -> None:
    """Send ``message`` to ``recipient`` with envelope sender ``sender``.

    ``commit``, when given, is called once the whole body is with the server and before
    the final dot of DATA (see :class:`_CommittingSMTP`). aiosmtplib's exceptions pass
    through for the caller to sort.
    """
    client = _CommittingSMTP(
        commit=commit or _nothing,
        hostname=config.host,
        port=config.port,
        username=config.username,
        password=config.password,
        use_tls=config.use_tls,
        # False, not aiosmtplib's default None (upgrade when offered): a URL without
        # starttls means plain text, and a server's self-signed certificate must not
        # break sends that never asked for TLS.
        start_tls=config.start_tls,
        timeout=config.timeout,
    )
    # aiosmtplib's timeout is per command; the whole conversation gets a bound too, so an
    # attempt ends well before the activity's start-to-close timeout and its retry never
    # overlaps a send that is still going.
    async with asyncio.timeout(config.timeout * 3), client:
        await client.send_message(message, sender=sender, recipients=[recipient])


def _nothing() -> None:
    return None
