"""Connecting to Temporal the way every Temporal client does, and DEE's search attributes.

Connection settings come from :mod:`temporalio.envconfig`: ``TEMPORAL_ADDRESS``,
``TEMPORAL_NAMESPACE``, ``TEMPORAL_API_KEY``, ``TEMPORAL_TLS*``, ``TEMPORAL_PROFILE`` and the
TOML profiles file. Every DEE client and worker uses :func:`data_converter_for` its
settings: :data:`data_converter`, temporalio's pydantic converter except that it decodes in
the :data:`dee.plans.decoding.DECODING` context (so a run whose payloads hold a field a later
release removed keeps running), with the payloads encrypted when ``DEE_PAYLOAD_KEYS`` is set
(:mod:`dee.runs.codec`).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
from collections.abc import Mapping
from typing import Any

from pydantic import TypeAdapter, ValidationError
from temporalio.api.common.v1 import Payload
from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import (
    AddSearchAttributesRequest,
    ListSearchAttributesRequest,
)
from temporalio.client import Client
from temporalio.common import SearchAttributeIndexedValueType
from temporalio.contrib.pydantic import PydanticJSONPlainPayloadConverter
from temporalio.converter import (
    CompositePayloadConverter,
    DataConverter,
    DefaultFailureConverterWithEncodedAttributes,
    DefaultPayloadConverter,
    JSONPlainPayloadConverter,
)
from temporalio.envconfig import ClientConfig
from temporalio.exceptions import ApplicationError
from temporalio.runtime import Runtime
from temporalio.service import RPCError, RPCStatusCode

from dee.errors import DeeError
from dee.plans.decoding import DECODING
from dee.runs.codec import EncryptionCodec, parse_payload_keys
from dee.runs.model import SEARCH_ATTRIBUTES, RunInput
from dee.settings import Settings

__all__ = [
    "TemporalSetupError",
    "connect",
    "data_converter",
    "data_converter_for",
    "ensure_search_attributes",
    "temporal_environment",
]

logger = logging.getLogger(__name__)


class TemporalSetupError(DeeError):
    """Temporal cannot be reached or is not set up for DEE."""


@functools.lru_cache(maxsize=1024)
def _adapter(type_hint: Any) -> TypeAdapter[Any]:
    return TypeAdapter(type_hint)


class _TolerantJSONConverter(PydanticJSONPlainPayloadConverter):
    """pydantic's JSON payloads, decoded in the ``DECODING`` context (see
    :mod:`dee.plans.decoding`).

    A run's input that does not decode (a plain Temporal client's contact nested past what
    the JSON decoder takes, a field of the wrong type) raises a non-retryable
    ``ApplicationError`` of type ``InvalidRunInput``: the SDK fails the run with it, where
    any other error would fail the workflow task again on every retry, for good."""

    def from_payload(self, payload: Payload, type_hint: type | None = None) -> Any:
        hint = type_hint if type_hint is not None else Any
        try:
            adapter = _adapter(hint)
        except TypeError:  # an unhashable hint: not cached
            adapter = TypeAdapter(hint)
        if not _is_run_input(hint):
            return adapter.validate_json(payload.data, context=DECODING)
        try:
            return adapter.validate_json(payload.data, context=DECODING)
        except (ValueError, RecursionError) as exc:
            raise ApplicationError(
                f"the run's input is not one DEE can run: {_first_line(exc)}; start runs with "
                "`dee runs start`, POST /v1/runs or dee.start_run, which check it first",
                type="InvalidRunInput",
                non_retryable=True,
            ) from None


def _is_run_input(hint: Any) -> bool:
    # By name: a workflow sandbox that does not pass ``dee`` through has its own class.
    return hint is RunInput or (
        getattr(hint, "__qualname__", None) == RunInput.__qualname__
        and getattr(hint, "__module__", None) == RunInput.__module__
    )


def _first_line(error: BaseException) -> str:
    """The start of an error's message: pydantic's can be long, and may quote the input."""
    if isinstance(error, ValidationError):
        where = [
            f"{'.'.join(str(part) for part in item['loc']) or 'input'}: {item['msg']}"
            for item in error.errors(include_input=False)[:3]
        ]
        return "; ".join(where)[:500]
    return str(error).splitlines()[0][:200] if str(error) else type(error).__name__


class PayloadConverter(CompositePayloadConverter):
    """Temporal's default payload converters, with :class:`_TolerantJSONConverter` for JSON."""

    def __init__(self) -> None:
        json = _TolerantJSONConverter()
        super().__init__(
            *(
                json if isinstance(converter, JSONPlainPayloadConverter) else converter
                for converter in DefaultPayloadConverter.default_encoding_payload_converters
            )
        )


#: The data converter of every DEE client and worker, when payloads are not encrypted.
data_converter = DataConverter(payload_converter_class=PayloadConverter)


def data_converter_for(settings: Settings) -> DataConverter:
    """:data:`data_converter`, encrypting with ``settings.payload_keys`` when there are any
    (:class:`~dee.runs.codec.PayloadKeyError` when they are not usable).

    Failure messages and stack traces then travel as an encrypted payload too (temporalio's
    encoded failure attributes): DEE's failure messages can name a contact.
    """
    if not settings.payload_keys:
        return data_converter
    return dataclasses.replace(
        data_converter,
        payload_codec=EncryptionCodec(parse_payload_keys(settings.payload_keys)),
        failure_converter_class=DefaultFailureConverterWithEncodedAttributes,
    )


def temporal_environment(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment :mod:`temporalio.envconfig` reads, without ``TEMPORAL_*`` variables
    set to the empty string.

    envconfig takes an empty ``TEMPORAL_TLS`` or ``TEMPORAL_API_KEY`` as "connect with TLS"
    and an empty certificate path as the working folder; DEE's settings, and compose files
    passing ``${TEMPORAL_TLS:-}`` through, mean "not set".
    """
    env = os.environ if environ is None else environ
    return {
        name: value
        for name, value in env.items()
        if value != "" or not name.startswith("TEMPORAL_")
    }


async def connect(
    *, profile: str | None = None, settings: Settings | None = None, runtime: Runtime | None = None
) -> Client:
    """A client configured from the environment (and profile file), with pydantic payloads,
    encrypted with the payload keys of ``settings`` (default: the environment's), on
    ``runtime`` (default: the SDK's; the worker gives one that exports metrics)."""
    converter = data_converter_for(settings if settings is not None else Settings.from_env())
    config = ClientConfig.load_client_connect_config(
        profile=profile, override_env_vars=temporal_environment()
    )
    config.setdefault("target_host", "localhost:7233")
    try:
        return await Client.connect(**config, data_converter=converter, runtime=runtime)
    except RuntimeError as exc:
        raise TemporalSetupError(
            f"cannot connect to Temporal at {config['target_host']}: {exc}; set "
            "TEMPORAL_ADDRESS (and TEMPORAL_NAMESPACE, TEMPORAL_API_KEY or TLS as needed), "
            "or run `dee dev` for a local server"
        ) from exc


async def ensure_search_attributes(client: Client) -> list[str]:
    """Register DEE's search attributes in the client's namespace where they are missing.

    Returns the names it added. Where the server does not allow it (Temporal Cloud, or
    no operator permission), raises :class:`TemporalSetupError` saying how to add them.
    """
    namespace = client.namespace
    wanted = {key.name: _indexed(key.indexed_value_type) for key in SEARCH_ATTRIBUTES}
    try:
        existing = await client.operator_service.list_search_attributes(
            ListSearchAttributesRequest(namespace=namespace)
        )
        known = {**existing.custom_attributes, **existing.system_attributes}
        missing = {name: kind for name, kind in wanted.items() if name not in known}
        if missing:
            await client.operator_service.add_search_attributes(
                AddSearchAttributesRequest(namespace=namespace, search_attributes=missing)
            )
            logger.info("registered search attributes %s", ", ".join(sorted(missing)))
        return sorted(missing)
    except RPCError as exc:
        if exc.status in {RPCStatusCode.PERMISSION_DENIED, RPCStatusCode.UNIMPLEMENTED}:
            commands = "; ".join(
                f"temporal operator search-attribute create --namespace {namespace} "
                f"--name {name} --type {_type_name(kind)}"
                for name, kind in sorted(wanted.items())
            )
            raise TemporalSetupError(
                f"cannot register DEE's search attributes in namespace {namespace!r} "
                f"({exc.message}); add them once with: {commands} (on Temporal Cloud: "
                "tcld namespace search-attributes add)"
            ) from exc
        raise


def _indexed(kind: SearchAttributeIndexedValueType) -> IndexedValueType.ValueType:
    return IndexedValueType.ValueType(int(kind))


def _type_name(kind: IndexedValueType.ValueType) -> str:
    return {
        IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD: "Keyword",
        IndexedValueType.INDEXED_VALUE_TYPE_INT: "Int",
        IndexedValueType.INDEXED_VALUE_TYPE_TEXT: "Text",
    }.get(kind, "Keyword")
