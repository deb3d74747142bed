"""Connecting to Temporal the way every Temporal client does, and DEE's search attributes.

Connection settings come from :mod:`temporalio.envconfig`: ``TEMPORAL_ADDRESS``,
``TEMPORAL_NAMESPACE``, ``TEMPORAL_API_KEY``, ``TEMPORAL_TLS*``, ``TEMPORAL_PROFILE`` and the
TOML profiles file. Every DEE client and worker uses temporalio's pydantic data converter.
"""

from __future__ import annotations

import logging

from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import (
    AddSearchAttributesRequest,
    ListSearchAttributesRequest,
)
from temporalio.client import Client
from temporalio.common import SearchAttributeIndexedValueType
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.envconfig import ClientConfig
from temporalio.service import RPCError, RPCStatusCode

from dee.errors import DeeError
from dee.runs.model import SEARCH_ATTRIBUTES

__all__ = ["TemporalSetupError", "connect", "ensure_search_attributes"]

logger = logging.getLogger(__name__)


class TemporalSetupError(DeeError):
    """Temporal cannot be reached or is not set up for DEE."""


async def connect(*, profile: str | None = None) -> Client:
    """A client configured from the environment (and profile file), with pydantic payloads."""
    config = ClientConfig.load_client_connect_config(profile=profile)
    config.setdefault("target_host", "localhost:7233")
    try:
        return await Client.connect(**config, data_converter=pydantic_data_converter)
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
