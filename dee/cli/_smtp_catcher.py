"""A local SMTP server for ``dee dev`` that keeps every message as an ``.eml`` file.

Nothing is delivered anywhere: each message accepted on 127.0.0.1 is written to the outbox
folder as ``<UTC time>-<id>.eml``, with ``X-Envelope-From`` and ``X-Envelope-To`` headers
added in front (the envelope can differ from the ``From``/``To`` headers), so any mail
client or a text editor can open it.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from dee.errors import DeeError

__all__ = ["OutboxHandler", "SmtpCatcherError", "smtp_catcher"]

logger = logging.getLogger(__name__)


class SmtpCatcherError(DeeError):
    """The SMTP catcher cannot start."""


class OutboxHandler:
    """aiosmtpd handler that writes each message into ``outbox``."""

    def __init__(self, outbox: Path) -> None:
        self.outbox = outbox

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        content: bytes = envelope.original_content or b""
        header = (
            f"X-Envelope-From: {envelope.mail_from}\r\n"
            f"X-Envelope-To: {', '.join(envelope.rcpt_tos)}\r\n"
        ).encode()
        path = self.save(header + content)
        # The file name only: addresses and bodies stay out of the log.
        logger.info("message saved to %s", path)
        return "250 Message accepted for delivery"

    def save(self, message: bytes) -> Path:
        """Write ``message`` atomically (so a watcher never sees half a file)."""
        self.outbox.mkdir(parents=True, exist_ok=True)
        moment = datetime.datetime.now(datetime.UTC)
        name = f"{moment:%Y%m%dT%H%M%S%fZ}-{uuid.uuid4().hex[:8]}.eml"
        partial = self.outbox / f".{name}.part"
        partial.write_bytes(message)
        final = self.outbox / name
        os.replace(partial, final)
        return final


@contextlib.asynccontextmanager
async def smtp_catcher(
    outbox: Path, *, host: str = "127.0.0.1", port: int = 1025
) -> AsyncIterator[int]:
    """Serve SMTP on ``host:port`` (``0`` picks a free port) and yield the port it got."""
    try:
        from aiosmtpd.smtp import SMTP
    except ImportError as exc:
        raise SmtpCatcherError(
            "the local SMTP server needs aiosmtpd, from the local extra: pip install 'dee[local]'"
        ) from exc
    # aiosmtpd logs every envelope address at INFO; DEE keeps addresses out of INFO.
    logging.getLogger("mail.log").setLevel(logging.WARNING)
    handler = OutboxHandler(outbox)
    outbox.mkdir(parents=True, exist_ok=True)
    loop = asyncio.get_running_loop()
    try:
        # A fixed hostname: aiosmtpd would otherwise look up the machine's FQDN, which
        # can take seconds without a network.
        server = await loop.create_server(
            lambda: SMTP(handler, hostname="dee-dev", loop=loop), host=host, port=port
        )
    except OSError as exc:
        raise SmtpCatcherError(
            f"cannot listen for SMTP on {host}:{port} ({exc.strerror}): is another `dee dev` "
            "running? Choose another port with --smtp-port"
        ) from exc
    bound = int(server.sockets[0].getsockname()[1])
    try:
        yield bound
    finally:
        server.close()
        # Newer Pythons wait here for open connections; a client that hangs on to one
        # must not hold up shutdown.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(server.wait_closed(), timeout=5)
