"""Starting runs in bulk over the REST API, behind bearer API keys (:mod:`dee.server._api`)::

    POST /v1/runs:bulk?planId=&version=&sender=&restartEnded=&concurrency=

The body is the rows, as a JSON array (``Content-Type: application/json``) or one row per
line (``application/x-ndjson``), each ``{"contact": {...}, "variables": {...}, "runId":
"..."}``: at most :data:`MAX_BULK_ROWS` rows and :data:`MAX_BULK_BODY_BYTES` bytes. The
answer (200) counts the rows by outcome and gives each row's, refused rows included, so one
bad row never fails the others (:mod:`dee.runs.bulk`). A body that is not JSON (or a line
that is not) is refused whole, with 422 naming the line, before anything starts.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any, Final

from fastapi import Query, Request
from pydantic import Field

from dee.plans.model import EMAIL_PATTERN, ID_PATTERN
from dee.runs.bulk import DEFAULT_CONCURRENCY, RowStatus, start_runs
from dee.runs.contact_files import ContactFileError, rows_from_json_array, rows_from_json_lines
from dee.runs.contacts import ContactIds
from dee.runs.model import RUN_ID_PATTERN
from dee.runs.suppressions import Suppressions
from dee.server._api import (
    MAX_VERSION,
    PLAN_NOT_FOUND,
    ApiAnswer,
    ApiRequest,
    State,
    error_response,
    registry_errors,
    v1_router,
)
from dee.server._http import ApiError

__all__ = ["MAX_BULK_BODY_BYTES", "MAX_BULK_ROWS", "PATH", "router"]

#: Rows one request may carry; send more in several requests (each safe to repeat).
MAX_BULK_ROWS: Final = 10_000
#: The body limit of this route (other routes: :data:`dee.server._http.MAX_BODY_BYTES`).
MAX_BULK_BODY_BYTES: Final = 16 * 1024 * 1024
#: The most starts in flight one request may ask for.
MAX_CONCURRENCY: Final = 64
PATH: Final = "/v1/runs:bulk"
_JSON: Final = frozenset({"application/json"})
_JSON_LINES: Final = frozenset({"application/x-ndjson", "application/jsonl"})

router = v1_router()


class BulkRowBody(ApiRequest):
    """One row: the contact to start, with its run variables and, optionally, run id."""

    contact: dict[str, Any] = Field(
        description="`email`, `phone`, `id` (default: a keyed hash of the address), "
        "`timezone` and any attributes the plan uses"
    )
    variables: dict[str, Any] = Field(default_factory=dict, description="Run variables")
    run_id: Annotated[str, Field(pattern=RUN_ID_PATTERN, max_length=255)] | None = Field(
        default=None, description="default: `<planId>:<contact id>`"
    )


class RowResultBody(ApiAnswer):
    """How one row ended. `row` is its position from 1 (a JSON Lines row: its line)."""

    row: int
    status: RowStatus
    run_id: str | None = Field(default=None, description="For rows whose run is started")
    code: str | None = Field(default=None, description="Why a row was refused, stable")
    reason: str | None = Field(default=None, description="Why, for people; no contact data")


class BulkSummaryBody(ApiAnswer):
    total: int
    started: int
    already_running: int
    already_ended: int
    duplicate: int
    suppressed: int
    invalid: int
    failed: int


class BulkStarted(ApiAnswer):
    summary: BulkSummaryBody
    rows: list[RowResultBody]


def _request_body() -> dict[str, Any]:
    rows = {"type": "array", "items": BulkRowBody.model_json_schema(by_alias=True)}
    return {
        "required": True,
        "content": {
            "application/json": {"schema": rows},
            "application/x-ndjson": {
                "schema": rows,
                "description": "One row per line (JSON Lines); blank lines are skipped",
            },
        },
    }


@router.post(
    "/runs:bulk",
    response_model=BulkStarted,
    summary="Start runs in bulk",
    openapi_extra={"requestBody": _request_body()},
    responses={
        400: error_response("The body is not UTF-8 text"),
        **PLAN_NOT_FOUND,
        413: error_response(f"The body is over {MAX_BULK_BODY_BYTES:,} bytes (`body-too-large`)"),
        415: error_response("The body is neither JSON nor JSON Lines (`unsupported-media-type`)"),
        422: error_response(
            "The body, or a line of it, is not JSON, or not an array (`invalid-body`, naming "
            f"the line), it has over {MAX_BULK_ROWS:,} rows (`too-many-rows`), or a query "
            "parameter is not valid"
        ),
        503: error_response("The database does not answer"),
    },
)
async def start_bulk(
    request: Request,
    state: State,
    plan_id: Annotated[str, Query(alias="planId", pattern=ID_PATTERN, max_length=100)],
    version: Annotated[
        int | None, Query(ge=1, le=MAX_VERSION, description="default: latest")
    ] = None,
    sender: Annotated[
        str | None,
        Query(pattern=EMAIL_PATTERN, max_length=254, description="default: DEE_FROM_ADDRESS"),
    ] = None,
    restart_ended: Annotated[
        bool,
        Query(
            alias="restartEnded",
            description="Start a contact again whose run with the same id has ended "
            "(default: report it `already-ended`)",
        ),
    ] = False,
    concurrency: Annotated[
        int, Query(ge=1, le=MAX_CONCURRENCY, description="Starts in flight at a time")
    ] = DEFAULT_CONCURRENCY,
) -> BulkStarted:
    """Start each row's contact on the plan (its latest version unless `version` is given).

    Each row is checked as `POST /v1/runs` checks one contact and refused on its own,
    answered in `rows` with a stable `code`: `invalid` (`invalid-row`, `invalid-contact`,
    `missing-variables`, `invalid-run-input`, `run-input-too-large`), `suppressed`
    (`contact-suppressed`), `failed` (Temporal refused or did not answer after retries).
    Safe to send again after an interruption or a timeout: a row whose run is active is
    `already-running` (its id is `<planId>:<contact id>` unless the row gives one), and
    nothing starts twice. Rows repeating an earlier row's run are `duplicate`.
    """
    media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media_type not in _JSON | _JSON_LINES:
        raise ApiError(
            415,
            "unsupported-media-type",
            "send the rows as application/json (an array) or application/x-ndjson (a line each)",
        )
    try:
        text = (await request.body()).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ApiError(
            400, "bad-request", f"the body is not UTF-8 text (byte {exc.start})"
        ) from exc
    read = rows_from_json_array if media_type in _JSON else rows_from_json_lines
    try:
        rows = await asyncio.to_thread(read, text)
    except ContactFileError as exc:
        raise ApiError(422, "invalid-body", str(exc)) from exc
    if len(rows) > MAX_BULK_ROWS:
        raise ApiError(
            422,
            "too-many-rows",
            f"{len(rows):,} rows; one request takes at most {MAX_BULK_ROWS:,}: split them "
            "(repeating rows is safe)",
        )
    with registry_errors():
        stored = await asyncio.to_thread(state.registry.get, plan_id, version=version)
    result = await start_runs(
        state.client,
        stored,
        rows,
        sender=sender,
        task_queue=state.settings.task_queue,
        contact_ids=await state.store(ContactIds),
        suppressions=await state.store(Suppressions),
        concurrency=concurrency,
        restart_ended=restart_ended,
    )
    return BulkStarted.model_validate(result.model_dump())
