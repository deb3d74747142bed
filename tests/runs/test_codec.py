"""The payload codec: what it writes, what it refuses, and how keys rotate."""

from __future__ import annotations

import base64
import os

import pytest
from temporalio.api.common.v1 import Payload
from temporalio.converter import DefaultFailureConverterWithEncodedAttributes

from dee.runs.codec import (
    ENCODING,
    KEY_ID_METADATA,
    EncryptionCodec,
    PayloadDecryptError,
    PayloadKey,
    PayloadKeyError,
    parse_payload_keys,
)
from dee.runs.temporal import data_converter, data_converter_for
from dee.settings import Settings

OLD = base64.b64encode(bytes(range(32))).decode()
NEW = base64.b64encode(bytes(range(100, 132))).decode()
PLAIN = Payload(
    metadata={"encoding": b"json/plain"},
    data=b'{"contact":{"email":"ana@example.com","firstName":"Ana"}}',
)


def codec(*entries: str) -> EncryptionCodec:
    return EncryptionCodec(parse_payload_keys(entries))


async def test_a_payload_is_encrypted_under_the_first_key_and_decrypts_back() -> None:
    rotated = codec(f"2026b:{NEW}", f"2026a:{OLD}")
    [sealed] = await rotated.encode([PLAIN])
    assert dict(sealed.metadata) == {"encoding": ENCODING, KEY_ID_METADATA: b"2026b"}
    assert b"ana@example.com" not in sealed.SerializeToString()
    assert b"Ana" not in sealed.data
    # A fresh nonce each time: the same payload never encrypts to the same bytes.
    [again] = await rotated.encode([PLAIN])
    assert again.data != sealed.data
    assert await rotated.decode([sealed, again]) == [PLAIN, PLAIN]


async def test_payloads_written_under_an_old_key_or_none_still_decode() -> None:
    [written_before] = await codec(f"2026a:{OLD}").encode([PLAIN])
    rotated = codec(f"2026b:{NEW}", f"2026a:{OLD}")
    assert await rotated.decode([written_before]) == [PLAIN]
    # Written before encryption was turned on: passed through as it is.
    assert await rotated.decode([PLAIN]) == [PLAIN]


async def test_a_payload_under_a_key_no_longer_listed_names_that_key() -> None:
    [written_before] = await codec(f"2026a:{OLD}").encode([PLAIN])
    with pytest.raises(PayloadDecryptError) as raised:
        await codec(f"2026b:{NEW}").decode([written_before])
    assert raised.value.key_id == "2026a"
    assert str(raised.value) == (
        "the payload was encrypted with key id '2026a', which is not in DEE_PAYLOAD_KEYS "
        "(it has '2026b'): add that key back, after the first one, to read it"
    )


@pytest.mark.parametrize(
    "tamper",
    [
        # Another key listed under the id that encrypted it.
        "wrong-key",
        # A byte of the ciphertext changed.
        "altered",
        # Relabelled with the id of another listed key: the id is bound to the ciphertext.
        "relabelled",
        # Cut short, nonce included.
        "truncated",
    ],
)
async def test_a_payload_that_does_not_decrypt_is_refused(tamper: str) -> None:
    both = codec(f"2026b:{NEW}", f"2026a:{OLD}")
    [sealed] = await both.encode([PLAIN])
    reader = both
    if tamper == "wrong-key":
        reader = codec(f"2026b:{OLD}")
    elif tamper == "altered":
        sealed.data = sealed.data[:-1] + bytes([sealed.data[-1] ^ 1])
    elif tamper == "relabelled":
        sealed.metadata[KEY_ID_METADATA] = b"2026a"
    else:
        sealed.data = sealed.data[:5]
    with pytest.raises(PayloadDecryptError, match="does not decrypt") as raised:
        await reader.decode([sealed])
    assert raised.value.key_id == sealed.metadata[KEY_ID_METADATA].decode()


@pytest.mark.parametrize(
    ("entries", "position", "message"),
    [
        # A key without its id.
        ([OLD], 1, "DEE_PAYLOAD_KEYS entry 1 has no key id: write it as <id>:<key>"),
        # An id with a character that is not allowed.
        ([f"2026 a:{OLD}"], 1, "key id '2026 a' must be 1 to 64 letters, digits"),
        # Not base64.
        (
            [f"2026a:{OLD}", "2026b:not*base64"],
            2,
            "the key must be 32 random bytes in base64, and it is not base64",
        ),
        # 16 bytes: AES-128 is not what DEE uses.
        (["k:" + base64.b64encode(bytes(16)).decode()], 1, "and it is 16 bytes"),
        # One id for two keys.
        ([f"a:{OLD}", f"a:{NEW}"], 2, "key id 'a' is listed twice"),
    ],
)
def test_unusable_keys_are_refused_naming_the_variable_and_the_entry(
    entries: list[str], position: int, message: str
) -> None:
    with pytest.raises(PayloadKeyError) as raised:
        parse_payload_keys(entries)
    assert raised.value.position == position
    assert message in str(raised.value)
    assert "DEE_PAYLOAD_KEYS" in str(raised.value)
    # The keys themselves never appear in the message.
    for entry in entries:
        assert entry.rpartition(":")[2] not in str(raised.value)


def test_a_bad_key_says_how_to_make_one() -> None:
    with pytest.raises(PayloadKeyError, match=r"openssl rand -base64 32"):
        parse_payload_keys(["2026a:c2hvcnQ="])


def test_keys_read_in_standard_or_url_safe_base64_with_or_without_padding() -> None:
    secret = os.urandom(32)
    forms = [
        base64.b64encode(secret).decode(),
        base64.urlsafe_b64encode(secret).decode(),
        base64.urlsafe_b64encode(secret).decode().rstrip("="),
    ]
    keys = parse_payload_keys([f"k{number}:{form}" for number, form in enumerate(forms)])
    assert [key.secret for key in keys] == [secret] * 3
    # The secret never shows in a repr (settings and keys end up in logs and tracebacks).
    assert base64.b64encode(secret).decode() not in repr(keys)
    assert forms[0] not in repr(Settings(payload_keys=(f"k:{forms[0]}",)))


def test_without_keys_the_converter_is_the_plain_one() -> None:
    assert data_converter_for(Settings()) is data_converter
    converter = data_converter_for(Settings(payload_keys=(f"2026a:{OLD}",)))
    assert isinstance(converter.payload_codec, EncryptionCodec)
    assert converter.payload_codec.key_ids == ("2026a",)
    # Failure messages (which can name a contact) travel as an encrypted payload too.
    assert converter.failure_converter_class is DefaultFailureConverterWithEncodedAttributes
    assert converter.payload_converter_class is data_converter.payload_converter_class


def test_settings_read_the_keys_and_origins_from_the_environment() -> None:
    settings = Settings.from_env(
        {
            "DEE_PAYLOAD_KEYS": f" 2026b:{NEW} , 2026a:{OLD} ",
            "DEE_CODEC_ORIGINS": "http://127.0.0.1:8233/, https://ui.example.com",
        }
    )
    assert settings.payload_keys == (f"2026b:{NEW}", f"2026a:{OLD}")
    assert settings.codec_origins == ("http://127.0.0.1:8233", "https://ui.example.com")
    assert [key.id for key in parse_payload_keys(settings.payload_keys)] == ["2026b", "2026a"]


def test_a_codec_needs_a_key() -> None:
    with pytest.raises(PayloadKeyError, match="DEE_PAYLOAD_KEYS is empty"):
        EncryptionCodec([])


def test_derived_keys_depend_on_purpose_and_on_the_first_key() -> None:
    first = EncryptionCodec([PayloadKey("a", bytes(32))])
    other = EncryptionCodec([PayloadKey("b", bytes(range(32)))])
    assert first.derive_key(b"x") != first.derive_key(b"y")
    assert first.derive_key(b"x") != other.derive_key(b"x")
    assert len(first.derive_key(b"x")) == 32
