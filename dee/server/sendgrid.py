"""SendGrid's event webhook: signature verification and what each event means to a run.

SendGrid signs every POST with ECDSA over P-256: the signature (base64 DER) is in
``X-Twilio-Email-Event-Webhook-Signature`` and covers the bytes of
``X-Twilio-Email-Event-Webhook-Timestamp`` followed by the raw body, hashed with SHA-256.
The verification key is shown in SendGrid's Mail Settings as base64 DER
(SubjectPublicKeyInfo); set it as ``DEE_SENDGRID_WEBHOOK_PUBLIC_KEY`` (PEM works too).
:func:`verify_signature` refuses a missing or wrong signature, and a timestamp more than
:data:`MAX_AGE` away from now, so a captured request cannot be replayed later; replays
within that window are caught by the events' ``sg_event_id``, recorded once processed.

Events reach a run through their ``smtp-id``: the ``Message-ID`` DEE sent, whose left part
is the send-ledger key (see :mod:`dee.server.inbound_match`). An event without one (SendGrid
leaves it off some types, opens and clicks among them) reaches no run; DEE's own tracking links
report those. Types map as :data:`EVENT_TYPES` says; others (``processed``, ``deferred``,
``group_resubscribe``) are acknowledged and ignored.
Bounces (except ``blocked`` ones, which are about the sender's reputation rather than the
address), spam reports, ``unsubscribe`` and ``group_unsubscribe`` also put the address on the
suppression list (source ``sendgrid``); spam reports and unsubscribes also end every running
run of the contact (:mod:`dee.runs.unsubscribe`).
"""

from __future__ import annotations

import base64
import binascii
import datetime
import functools
import hashlib
import json
from dataclasses import dataclass
from typing import Any, Final

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from pydantic import JsonValue

from dee.errors import DeeError
from dee.runs.ledger import key_of_message_id
from dee.runs.suppressions import SuppressionReason
from dee.server.inbound_mail import message_ids

__all__ = [
    "EVENT_TYPES",
    "MAX_AGE",
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "SendGridError",
    "SendGridEvent",
    "SignatureError",
    "load_public_key",
    "parse_events",
    "verify_signature",
]

SIGNATURE_HEADER: Final = "X-Twilio-Email-Event-Webhook-Signature"
TIMESTAMP_HEADER: Final = "X-Twilio-Email-Event-Webhook-Timestamp"
#: How far a signed timestamp may be from now, either way.
MAX_AGE: Final = datetime.timedelta(minutes=5)

#: SendGrid event -> DEE event type.
EVENT_TYPES: Final = {
    "delivered": "delivered",
    "open": "open",
    "click": "click",
    "bounce": "bounce",
    "dropped": "dropped",
    "spamreport": "spamreport",
    "unsubscribe": "unsubscribe",
    "group_unsubscribe": "unsubscribe",
}
#: Longest event id a run takes (:class:`dee.runs.model.RunEvent`).
_MAX_EVENT_ID: Final = 200
_UNSUBSCRIBES: Final = frozenset({"unsubscribe", "group_unsubscribe"})


class SendGridError(DeeError):
    """A SendGrid webhook body or verification key cannot be read."""


class SignatureError(SendGridError):
    """A request is not signed by SendGrid, or not lately; ``code`` says which."""

    def __init__(self, message: str, *, code: str) -> None:
        self.code = code
        super().__init__(message)


@functools.lru_cache(maxsize=4)
def load_public_key(text: str) -> ec.EllipticCurvePublicKey:
    """The verification key from its base64 DER (as SendGrid shows it) or PEM form."""
    try:
        if "-----BEGIN" in text:
            key = serialization.load_pem_public_key(text.encode())
        else:
            key = serialization.load_der_public_key(base64.b64decode("".join(text.split())))
    except (ValueError, binascii.Error, UnsupportedAlgorithm) as exc:
        raise SendGridError(
            "DEE_SENDGRID_WEBHOOK_PUBLIC_KEY is not a public key: paste the verification key "
            "from SendGrid's Mail Settings > Event Webhook (base64)"
        ) from exc
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise SendGridError("DEE_SENDGRID_WEBHOOK_PUBLIC_KEY is not an ECDSA P-256 key")
    return key


def verify_signature(
    key: ec.EllipticCurvePublicKey,
    *,
    signature: str | None,
    timestamp: str | None,
    body: bytes,
    now: datetime.datetime | None = None,
) -> None:
    """Return if SendGrid signed ``timestamp + body`` recently; else :class:`SignatureError`
    with ``code`` ``missing-signature``, ``bad-signature`` or ``stale-timestamp``."""
    if not signature or not timestamp:
        raise SignatureError(
            f"the request lacks {SIGNATURE_HEADER} or {TIMESTAMP_HEADER}",
            code="missing-signature",
        )
    try:
        der = base64.b64decode(signature, validate=True)
        key.verify(der, timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))
    except (binascii.Error, ValueError, InvalidSignature):
        raise SignatureError(
            "the signature does not match the body: it was not signed with the configured "
            "key, or the body was altered",
            code="bad-signature",
        ) from None
    # Checked after the signature, so only a genuine old request is called stale.
    now = now or datetime.datetime.now(datetime.UTC)
    try:
        signed_at = datetime.datetime.fromtimestamp(int(timestamp), datetime.UTC)
    except (ValueError, OverflowError, OSError):
        raise SignatureError("the timestamp is not a Unix time", code="bad-signature") from None
    if abs(now - signed_at) > MAX_AGE:
        raise SignatureError(
            f"the request was signed at {signed_at:%Y-%m-%d %H:%M:%S} UTC, more than "
            f"{int(MAX_AGE.total_seconds() // 60)} minutes from now: a replay, or a clock off",
            code="stale-timestamp",
        )


@dataclass(frozen=True, slots=True)
class SendGridEvent:
    """One event of a webhook POST, as DEE uses it."""

    sg_event_id: str
    #: SendGrid's name for it (``bounce``, ``processed``, ...).
    event: str
    email: str | None
    #: Ledger keys its ``smtp-id`` may name.
    keys: tuple[str, ...]
    at: datetime.datetime | None
    raw: dict[str, Any]

    @property
    def type(self) -> str | None:
        """The DEE event type, or ``None`` for events runs do not hear about."""
        return EVENT_TYPES.get(self.event)

    @property
    def event_id(self) -> str:
        candidate = f"sendgrid:{self.sg_event_id}"
        if len(candidate) <= _MAX_EVENT_ID:
            return candidate
        return "sendgrid:sha256:" + hashlib.sha256(self.sg_event_id.encode()).hexdigest()

    @property
    def suppression(self) -> SuppressionReason | None:
        """The suppression-list reason this event gives its address, or ``None``."""
        if self.event in _UNSUBSCRIBES:
            return "unsubscribe"
        if self.event == "spamreport":
            return "spamreport"
        if self.event == "bounce" and self.raw.get("type") != "blocked":
            return "bounce"
        return None

    @property
    def ends_runs(self) -> bool:
        """Whether the contact asked to hear no more (an unsubscribe, a spam report), so all
        its running runs end; a bounce only suppresses the address, and reaches the run
        that sent the email as a ``bounce`` event for its branches."""
        return self.event in _UNSUBSCRIBES or self.event == "spamreport"

    def details(self) -> dict[str, JsonValue]:
        """What goes into the run's history: no addresses, no free-text reasons (they often
        quote the address)."""
        details: dict[str, JsonValue] = {"source": "sendgrid", "sendgridEvent": self.event}
        for name, key in (("type", "bounceType"), ("status", "status")):
            value = self.raw.get(name)
            if isinstance(value, str) and len(value) <= 50:
                details[key] = value
        return details


def parse_events(body: bytes) -> list[SendGridEvent]:
    """The events of a webhook body: a JSON array of objects, each with string ``event``
    and ``sg_event_id``. :class:`SendGridError` otherwise."""
    try:
        document = json.loads(body)
    except ValueError as exc:
        raise SendGridError(f"the body is not JSON: {exc}") from None
    except RecursionError:
        # Signed, yet nested past what the decoder follows: no event SendGrid sends.
        raise SendGridError("the body nests too deeply to be events") from None
    if not isinstance(document, list):
        raise SendGridError("the body is not a JSON array of events")
    events = []
    for index, item in enumerate(document):
        if not isinstance(item, dict):
            raise SendGridError(f"event {index} is not an object")
        kind, event_id = item.get("event"), item.get("sg_event_id")
        if not isinstance(kind, str) or not isinstance(event_id, str) or not event_id:
            raise SendGridError(f"event {index} lacks a string 'event' or 'sg_event_id'")
        smtp_id = item.get("smtp-id")
        found = message_ids(smtp_id) if isinstance(smtp_id, str) else []
        keys = tuple(key for key in map(key_of_message_id, found) if key is not None)
        address = item.get("email")
        timestamp = item.get("timestamp")
        at = None
        if isinstance(timestamp, int | float) and not isinstance(timestamp, bool):
            try:
                at = datetime.datetime.fromtimestamp(timestamp, datetime.UTC)
            except (ValueError, OverflowError, OSError):
                at = None
        events.append(
            SendGridEvent(
                sg_event_id=event_id,
                event=kind,
                email=address if isinstance(address, str) and "@" in address else None,
                keys=keys,
                at=at,
                raw=item,
            )
        )
    return events
