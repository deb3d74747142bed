"""A real SMTP server for tests: aiosmtpd on a free loopback port, recording what it gets.

::

    async with smtp_server() as server:
        server.handler.refuse("nobody@example.com", "550 5.1.1 no such user")
        server.handler.fail_next("451 4.3.0 try later")
        ...  # send to f"smtp://{server.host}:{server.port}"
        [received] = server.handler.messages
        received.message["Subject"]

The server runs in aiosmtpd's own thread and event loop, so the code under test talks to it
over a real socket exactly as it would to a mail server.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import socket
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP

__all__ = ["Received", "RecordingHandler", "SmtpServer", "free_port", "smtp_server"]

HOST = "127.0.0.1"


def free_port() -> int:
    """A TCP port nothing listens on right now. aiosmtpd's Controller cannot take port 0
    (it connects to the port it was given to check it is up), so bind, read, close."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
    return port


@dataclass(frozen=True)
class Received:
    """One message the server accepted: the envelope and the bytes after DATA."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    data: bytes
    mail_options: tuple[str, ...] = ()

    @property
    def message(self) -> EmailMessage:
        return email.message_from_bytes(self.data, policy=email.policy.default)


@dataclass
class RecordingHandler:
    """Records accepted messages; answers chosen codes to chosen recipients or messages."""

    messages: list[Received] = field(default_factory=list)
    #: Recipients refused at RCPT, lower-cased, with the reply to give.
    rcpt_replies: dict[str, str] = field(default_factory=dict)
    #: Replies to the end of DATA for the next messages, used up in order.
    data_replies: list[str] = field(default_factory=list)
    #: Every RCPT address the server was asked to take, refused or not.
    rcpt_attempts: list[str] = field(default_factory=list)
    #: Seconds to wait at the end of DATA before answering: a slow server.
    data_delay: float = 0.0
    #: Seconds to wait before answering RCPT.
    rcpt_delay: float = 0.0
    #: Called, in the server's thread, after a message was accepted and recorded.
    after_accept: Callable[[Received], None] | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def refuse(self, address: str, reply: str = "550 5.1.1 no such user") -> None:
        """Answer ``reply`` to every ``RCPT TO:<address>``."""
        with self._lock:
            self.rcpt_replies[address.lower()] = reply

    def fail_next(self, reply: str, count: int = 1) -> None:
        """Answer ``reply`` to the end of DATA for the next ``count`` messages."""
        with self._lock:
            self.data_replies.extend([reply] * count)

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]
    ) -> str:
        with self._lock:
            self.rcpt_attempts.append(address)
            reply = self.rcpt_replies.get(address.lower())
        if self.rcpt_delay:
            await asyncio.sleep(self.rcpt_delay)
        if reply is not None:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.data_delay:
            await asyncio.sleep(self.data_delay)
        with self._lock:
            if self.data_replies:
                return self.data_replies.pop(0)
            received = Received(
                mail_from=envelope.mail_from,
                rcpt_tos=tuple(envelope.rcpt_tos),
                data=bytes(envelope.original_content),
                mail_options=tuple(envelope.mail_options),
            )
            self.messages.append(received)
        if self.after_accept is not None:
            self.after_accept(received)
        return "250 2.0.0 Message accepted for delivery"


class _DrainingSMTP(SMTP):
    """aiosmtpd's server, except that a client going away does not discard what it sent.

    aiosmtpd cancels its session at EOF, dropping input it has not processed yet, such as
    the final dot of a message from a client that died right after sending it. Production
    MTAs (Postfix, Exim, the providers' SMTP endpoints) read what arrived first, so that
    message is accepted though its client never sees the 250 (the case RFC 1047 is about).
    The fault tests need the server to behave like those.
    """

    def eof_received(self) -> bool | None:
        # Feed EOF to the reader and let the session read up to it; it then ends itself.
        return bool(asyncio.StreamReaderProtocol.eof_received(self))

    def connection_lost(self, error: Exception | None) -> None:
        if self._timeout_handle is not None:
            self._timeout_handle.cancel()
        asyncio.StreamReaderProtocol.connection_lost(self, error)
        session = self._handler_coroutine
        if session is not None:
            # Time to finish what was received; answers to a closed connection just fail,
            # and that failure is expected: retrieve it so asyncio does not report it.
            session.add_done_callback(lambda task: None if task.cancelled() else task.exception())
            self.loop.call_later(2.0, session.cancel)


class _DrainingController(Controller):
    def factory(self) -> SMTP:
        return _DrainingSMTP(self.handler, **self.SMTP_kwargs)


@dataclass(frozen=True)
class SmtpServer:
    host: str
    port: int
    handler: RecordingHandler

    @property
    def url(self) -> str:
        return f"smtp://{self.host}:{self.port}"


@asynccontextmanager
async def smtp_server(
    handler: RecordingHandler | None = None, *, port: int | None = None, **smtp_options: Any
) -> AsyncIterator[SmtpServer]:
    """Run an aiosmtpd server on a free 127.0.0.1 port for the ``async with`` block.

    ``smtp_options`` go to aiosmtpd's ``SMTP`` (``require_starttls``, ``tls_context``, ...).
    """
    handler = handler or RecordingHandler()
    # A given port lets a test bring a server "back" where clients already point.
    port = port or free_port()
    controller = _DrainingController(
        handler, hostname=HOST, port=port, ready_timeout=10, **smtp_options
    )
    # start() and stop() block on aiosmtpd's thread; keep the test's loop free meanwhile.
    await asyncio.to_thread(controller.start)
    try:
        yield SmtpServer(HOST, port, handler)
    finally:
        await asyncio.to_thread(controller.stop)
