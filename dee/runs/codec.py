"""Payload encryption: an AES-256-GCM payload codec whose keys have ids, so keys can rotate.

With ``DEE_PAYLOAD_KEYS`` set, every payload a DEE client or worker hands Temporal is
encrypted before it leaves the process: run inputs (contact, variables, plan and content),
activity inputs and results, signals, queries, summaries and failure messages. Temporal's
history and visibility stores then hold ciphertext; whoever holds a key (the worker, the
CLI, ``dee serve``'s codec endpoint for the Temporal Web UI) reads them.

``DEE_PAYLOAD_KEYS`` is a comma-separated list of ``<id>:<key>``, the key 32 random bytes in
base64 (``openssl rand -base64 32``)::

    DEE_PAYLOAD_KEYS="2026b:<new key>,2026a:<old key>"

The first key encrypts; every key listed decrypts. An encrypted payload is::

    metadata  {"encoding": "binary/encrypted", "encryption-key-id": "<id>"}
    data      12-byte random nonce || AES-GCM(the whole original payload, serialized)

The key id is also bound into the ciphertext (as associated data), so a payload relabelled
with another key's id fails to decrypt rather than decrypting wrongly. Payloads that are not
encrypted (written before encryption was turned on) decode as they are, so runs already in
flight go on.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from temporalio.api.common.v1 import Payload
from temporalio.converter import PayloadCodec

from dee.errors import DeeError

__all__ = [
    "ENCODING",
    "KEY_ID_METADATA",
    "KEYS_VARIABLE",
    "EncryptionCodec",
    "PayloadDecryptError",
    "PayloadKey",
    "PayloadKeyError",
    "parse_payload_keys",
]

#: The environment variable that holds the keys.
KEYS_VARIABLE: Final = "DEE_PAYLOAD_KEYS"
#: The ``encoding`` of an encrypted payload, and the metadata naming its key.
ENCODING: Final = b"binary/encrypted"
KEY_ID_METADATA: Final = "encryption-key-id"

KEY_BYTES: Final = 32
NONCE_BYTES: Final = 12
_KEY_ID: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_ASSOCIATED_DATA: Final = b"dee-payload-v1:"
_HOW_TO_MAKE: Final = (
    f"generate a key with `openssl rand -base64 32` and set {KEYS_VARIABLE}=<id>:<key>, "
    f"for example {KEYS_VARIABLE}=2026a:<key> (several comma-separated while rotating: the "
    "first encrypts, all decrypt)"
)


class PayloadKeyError(DeeError):
    """``DEE_PAYLOAD_KEYS`` cannot be used as it is; ``position`` is the faulty entry's
    (1-based), when one is at fault."""

    def __init__(self, message: str, *, position: int | None = None) -> None:
        self.position = position
        super().__init__(message)


class PayloadDecryptError(DeeError):
    """An encrypted payload cannot be decrypted with the keys configured: its key is not
    listed (``key_id`` names it), or it was altered."""

    def __init__(self, message: str, *, key_id: str) -> None:
        self.key_id = key_id
        super().__init__(message)


@dataclass(frozen=True, slots=True)
class PayloadKey:
    """One key: its id (kept in each payload it encrypts) and its 32 secret bytes."""

    id: str
    secret: bytes = field(repr=False)


def parse_payload_keys(entries: Sequence[str]) -> tuple[PayloadKey, ...]:
    """The keys in ``DEE_PAYLOAD_KEYS`` entries (``<id>:<base64 key>``), first key first.

    Refuses, with :class:`PayloadKeyError` naming the variable and the entry (never the
    key), an entry without an id, an id other than letters, digits, ``.``, ``_`` and ``-``
    (at most 64), a key that is not base64 of exactly 32 bytes, and an id listed twice.
    """
    keys: list[PayloadKey] = []
    for position, entry in enumerate(entries, start=1):
        key_id, colon, encoded = entry.strip().partition(":")
        where = f"{KEYS_VARIABLE} entry {position}"
        if not colon or not key_id:
            raise PayloadKeyError(
                f"{where} has no key id: write it as <id>:<key>; {_HOW_TO_MAKE}",
                position=position,
            )
        if not _KEY_ID.fullmatch(key_id):
            raise PayloadKeyError(
                f"{where}: key id {key_id!r} must be 1 to 64 letters, digits, '.', '_' or "
                "'-', starting with a letter or digit",
                position=position,
            )
        secret = _decode_key(encoded.strip())
        if secret is None or len(secret) != KEY_BYTES:
            size = "not base64" if secret is None else f"{len(secret)} bytes"
            raise PayloadKeyError(
                f"{where} (key id {key_id!r}): the key must be {KEY_BYTES} random bytes in "
                f"base64, and it is {size}; {_HOW_TO_MAKE}",
                position=position,
            )
        if any(key.id == key_id for key in keys):
            raise PayloadKeyError(
                f"{where}: key id {key_id!r} is listed twice; each key needs an id of its own",
                position=position,
            )
        keys.append(PayloadKey(key_id, secret))
    return tuple(keys)


def _decode_key(encoded: str) -> bytes | None:
    """Standard or URL-safe base64, padded or not; ``None`` when it is neither."""
    normal = encoded.replace("-", "+").replace("_", "/")
    try:
        return base64.b64decode(normal + "=" * (-len(normal) % 4), validate=True)
    except (binascii.Error, ValueError):
        return None


class EncryptionCodec(PayloadCodec):
    """Encrypts every payload with the first key; decrypts with whichever key a payload
    names, and passes payloads that are not encrypted through as they are."""

    def __init__(self, keys: Sequence[PayloadKey]) -> None:
        if not keys:
            raise PayloadKeyError(f"{KEYS_VARIABLE} is empty; {_HOW_TO_MAKE}")
        self._keys = tuple(keys)
        self._ciphers = {key.id: AESGCM(key.secret) for key in keys}

    @property
    def key_id(self) -> str:
        """The id of the key that encrypts."""
        return self._keys[0].id

    @property
    def key_ids(self) -> tuple[str, ...]:
        """Every key's id, the encrypting one first."""
        return tuple(key.id for key in self._keys)

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self.encrypt(payload) for payload in payloads]

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self.decrypt(payload) for payload in payloads]

    def encrypt(self, payload: Payload) -> Payload:
        key_id = self.key_id
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._ciphers[key_id].encrypt(
            nonce, payload.SerializeToString(), _ASSOCIATED_DATA + key_id.encode()
        )
        return Payload(
            metadata={"encoding": ENCODING, KEY_ID_METADATA: key_id.encode()},
            data=nonce + sealed,
        )

    def decrypt(self, payload: Payload) -> Payload:
        if payload.metadata.get("encoding") != ENCODING:
            return payload
        key_id = payload.metadata.get(KEY_ID_METADATA, b"").decode("utf-8", "replace")
        cipher = self._ciphers.get(key_id)
        if cipher is None:
            raise PayloadDecryptError(
                f"the payload was encrypted with key id {key_id!r}, which is not in "
                f"{KEYS_VARIABLE} (it has {', '.join(map(repr, self.key_ids))}): add that "
                "key back, after the first one, to read it",
                key_id=key_id,
            )
        nonce, sealed = payload.data[:NONCE_BYTES], payload.data[NONCE_BYTES:]
        try:
            plain = cipher.decrypt(nonce, sealed, _ASSOCIATED_DATA + key_id.encode())
        except (InvalidTag, ValueError):
            raise PayloadDecryptError(
                f"the payload encrypted with key id {key_id!r} does not decrypt: the key "
                f"listed under that id in {KEYS_VARIABLE} is not the one that encrypted it, "
                "or the payload was altered",
                key_id=key_id,
            ) from None
        decrypted = Payload()
        decrypted.ParseFromString(plain)
        return decrypted

    def derive_key(self, purpose: bytes) -> bytes:
        """32 bytes for ``purpose`` derived (HKDF-SHA256) from the encrypting key, for what
        must hold only while that key is the first (the codec endpoint's sign-in cookies)."""
        return HKDF(algorithm=SHA256(), length=KEY_BYTES, salt=None, info=purpose).derive(
            self._keys[0].secret
        )
