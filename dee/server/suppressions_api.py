"""The REST API's suppression list, under ``/v1``, behind bearer API keys.

::

    GET    /v1/suppressions?channel=&limit=   the list, newest first
    GET    /v1/suppressions/{value}           one entry (404 when not suppressed)
    POST   /v1/suppressions                   add {"value", "reason"?}: 201, or 200 when
                                              it was there already; ends the contact's runs
    DELETE /v1/suppressions/{value}           lift it (204; 404 when not suppressed)

A value is an email address or a phone number, spelt any way :mod:`dee.runs.suppressions`
reads (``Ana@Example.com``, ``+1 (555) 123-4567``); answers show it normalised. One that is
neither is ``422 invalid-value``. Adding ends the running runs whose contact id is the value
(as given or normalised; contact ids default to the email), as every unsubscribe does
(:mod:`dee.runs.unsubscribe`); the activities refuse the others' sends.
"""

from __future__ import annotations

import asyncio
import datetime
from typing import Annotated, Literal

from fastapi import Path, Query, Response
from pydantic import Field
from temporalio.service import RPCError

from dee.runs.contacts import ContactIds
from dee.runs.suppressions import (
    Channel,
    InvalidContactValueError,
    Suppression,
    SuppressionReason,
    Suppressions,
    normalize,
)
from dee.runs.unsubscribe import unsubscribe
from dee.server._api import (
    NOT_JSON,
    ApiAnswer,
    ApiRequest,
    Responses,
    State,
    error_response,
    v1_router,
)
from dee.server._http import ApiError

__all__ = ["router"]

router = v1_router()

Value = Annotated[
    str,
    Path(
        min_length=1,
        max_length=320,
        description="An email address or an E.164 phone number (`+15551234567`)",
    ),
]
_INVALID: Responses = {
    422: error_response("Not an email address or E.164 phone number (`invalid-value`)")
}
_NOT_SUPPRESSED: Responses = {404: error_response("The value is not suppressed (`not-suppressed`)")}


class SuppressionBody(ApiAnswer):
    """One entry of the suppression list."""

    address: str
    channel: Channel
    reason: SuppressionReason
    source: str
    run_id: str | None
    at: datetime.datetime


class SuppressionAdded(SuppressionBody):
    #: Whether the value was new to the list (else it keeps its first reason and source).
    created: bool
    #: The running runs that got `unsubscribe` and end with outcome `unsubscribed`.
    runs_ended: list[str]


class SuppressRequest(ApiRequest):
    value: Annotated[str, Field(min_length=1, max_length=320)] = Field(
        description="An email address or a phone number with its country code"
    )
    reason: SuppressionReason = Field(default="manual", description="default: `manual`")


def _body(entry: Suppression) -> SuppressionBody:
    return SuppressionBody.model_validate(entry, from_attributes=True)


def _normalized(value: str) -> str:
    try:
        return normalize(value)[1]
    except InvalidContactValueError as exc:
        raise ApiError(422, "invalid-value", str(exc)) from exc


@router.get(
    "/suppressions",
    response_model=list[SuppressionBody],
    summary="List suppressed addresses and phone numbers",
)
async def list_suppressions(
    state: State,
    channel: Annotated[Literal["email", "phone"] | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1_000,
) -> list[SuppressionBody]:
    """The suppression list, newest first; only `email` or `phone` entries with `channel`."""
    store = await state.store(Suppressions)
    entries = await asyncio.to_thread(store.entries, channel=channel, limit=limit)
    return [_body(entry) for entry in entries]


@router.get(
    "/suppressions/{value}",
    response_model=SuppressionBody,
    summary="Show one suppression",
    responses={**_INVALID, **_NOT_SUPPRESSED},
)
async def show_suppression(value: Value, state: State) -> SuppressionBody:
    """Why and since when the address or number is suppressed."""
    address = _normalized(value)
    store = await state.store(Suppressions)
    found = await asyncio.to_thread(store.suppression, address)
    if found is None:
        raise ApiError(404, "not-suppressed", f"{address} is not suppressed")
    return _body(found)


@router.post(
    "/suppressions",
    status_code=201,
    response_model=SuppressionAdded,
    summary="Suppress an address or phone number",
    responses={
        **NOT_JSON,
        **_INVALID,
        200: {"model": SuppressionAdded, "description": "It was suppressed already"},
        503: error_response("Suppressed, but Temporal did not answer to end the contact's runs"),
    },
)
async def add_suppression(
    body: SuppressRequest, state: State, response: Response
) -> SuppressionAdded:
    """Put the address or number on the list: nothing more is sent to it or dialled, no run
    for it starts, and the contact's running runs end with outcome `unsubscribed`."""
    address = _normalized(body.value)
    store = await state.store(Suppressions)
    try:
        done = await unsubscribe(
            state.client,
            store,
            [address],
            reason=body.reason,
            source="api",
            contact_ids=[body.value.strip()],
            contacts=await state.store(ContactIds),
        )
    except RPCError as exc:
        raise ApiError(
            503,
            "temporal-unavailable",
            f"{address} is suppressed, but its runs could not be ended yet ({exc.message}): "
            "post it again shortly",
        ) from exc
    found = await asyncio.to_thread(store.suppression, address)
    assert found is not None, address
    if not done.suppressed:
        response.status_code = 200
    return SuppressionAdded(
        **_body(found).model_dump(),
        created=bool(done.suppressed),
        runs_ended=list(done.runs_ended),
    )


@router.delete(
    "/suppressions/{value}",
    status_code=204,
    summary="Lift a suppression",
    responses={**_INVALID, **_NOT_SUPPRESSED},
)
async def remove_suppression(value: Value, state: State) -> Response:
    """Take the address or number off the list: sends to it resume and runs may start.
    Runs that ended because of it stay ended."""
    address = _normalized(value)
    store = await state.store(Suppressions)
    if not await asyncio.to_thread(store.remove, address):
        raise ApiError(404, "not-suppressed", f"{address} is not suppressed")
    return Response(status_code=204)
