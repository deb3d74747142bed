"""A loopback server that speaks the part of Twilio's Calls API that DEE uses.

The real ``twilio`` client talks to it over HTTP, so tests run the client's own request
building, authentication, pagination and error parsing. It answers:

* ``POST /2010-04-01/Accounts/{AccountSid}/Calls.json``: create a call. Form-encoded, HTTP
  Basic auth with the account SID and auth token; answers ``201`` and a call resource in
  status ``queued``, or the failure queued with :meth:`TwilioApi.fail_next`.
* ``GET /2010-04-01/Accounts/{AccountSid}/Calls.json``: list calls, newest first, filtered
  by ``To``, ``From``, ``StartTime>`` and ``StartTime<``, paged with ``PageSize`` and
  ``Page`` the way Twilio pages (``first_page_uri``, ``next_page_uri``, ...).
* ``GET /2010-04-01/Accounts/{AccountSid}/Calls/{Sid}.json``: fetch one call, ``404``
  (20404) for an unknown one; :meth:`TwilioApi.set_status` moves a call along.
* ``POST /2010-04-01/Accounts/{AccountSid}/Calls/{Sid}.json``: update a live call with
  ``Twiml``, ``Url`` or ``Status`` (``completed``, ``canceled``); answers ``200`` and the
  call resource, ``404`` (20404) for an unknown call, and ``400`` (21220) when the call
  has ended, as Twilio does. :attr:`TwilioApi.updates` records every update request.

Bodies follow Twilio's published examples: RFC 2822 dates, ``null`` for unknown values,
errors as ``{"code", "message", "more_info", "status"}``.
"""

from __future__ import annotations

import base64
import datetime
import email.utils
import json
import secrets
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

__all__ = ["CallRequest", "CallUpdate", "TwilioApi", "new_sid", "twilio_api"]

API_VERSION = "2010-04-01"


def new_sid(prefix: str) -> str:
    """A SID the way Twilio shapes them: two letters and 32 hex digits."""
    return prefix + secrets.token_hex(16)


def _rfc2822(moment: datetime.datetime) -> str:
    return email.utils.format_datetime(moment.astimezone(datetime.UTC))


def _error(status: int, code: int, message: str) -> dict[str, Any]:
    return {
        "code": code,
        "message": message,
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
        "status": status,
    }


@dataclass(frozen=True, slots=True)
class CallRequest:
    """One create request as the server received it."""

    form: dict[str, list[str]]

    def __getitem__(self, name: str) -> str:
        (value,) = self.form[name]
        return value

    def get(self, name: str) -> str | None:
        values = self.form.get(name)
        return values[0] if values else None


@dataclass(frozen=True, slots=True)
class CallUpdate:
    """One update request for call ``sid`` as the server received it."""

    sid: str
    form: dict[str, list[str]]

    def get(self, name: str) -> str | None:
        values = self.form.get(name)
        return values[0] if values else None


#: Call statuses after which Twilio refuses to redirect or end a call.
_ENDED = frozenset({"completed", "busy", "failed", "no-answer", "canceled"})


@dataclass(slots=True)
class _Failure:
    status: int
    body: dict[str, Any]


@dataclass(slots=True)
class _State:
    account_sid: str
    auth_token: str
    calls: list[dict[str, Any]] = field(default_factory=list)
    creates: list[CallRequest] = field(default_factory=list)
    lists: list[dict[str, list[str]]] = field(default_factory=list)
    updates: list[CallUpdate] = field(default_factory=list)
    fetches: list[str] = field(default_factory=list)
    failures: list[_Failure] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


class TwilioApi:
    """The server's state and controls; see :func:`twilio_api` to run one."""

    def __init__(self, state: _State) -> None:
        self._state = state
        #: Base URL, for ``DEE_TWILIO_API_URL``; set once the server listens.
        self.url = ""

    @property
    def account_sid(self) -> str:
        return self._state.account_sid

    @property
    def auth_token(self) -> str:
        return self._state.auth_token

    @property
    def creates(self) -> list[CallRequest]:
        """Every create request that passed authentication, failed or not, in order."""
        with self._state.lock:
            return list(self._state.creates)

    @property
    def lists(self) -> list[dict[str, list[str]]]:
        """The query of every list request that passed authentication, in order."""
        with self._state.lock:
            return list(self._state.lists)

    @property
    def updates(self) -> list[CallUpdate]:
        """Every call update request that passed authentication, in order."""
        with self._state.lock:
            return list(self._state.updates)

    def set_status(self, sid: str, status: str, *, answered_by: str | None = None) -> None:
        """Move call ``sid`` to ``status`` (``in-progress``, ``completed``, ...), as the
        call's progress would, answered by ``answered_by`` (``human``, ``machine_start``,
        ...) when given."""
        with self._state.lock:
            (call,) = (call for call in self._state.calls if call["sid"] == sid)
            call["status"] = status
            if answered_by is not None:
                call["answered_by"] = answered_by

    @property
    def fetches(self) -> list[str]:
        """The SID of every call fetched (``GET`` of one call), in order."""
        with self._state.lock:
            return list(self._state.fetches)

    @property
    def calls(self) -> list[dict[str, Any]]:
        """The call resources that exist, oldest first."""
        with self._state.lock:
            return [dict(call) for call in self._state.calls]

    def fail_next(
        self,
        status: int = 503,
        *,
        code: int | None = None,
        message: str | None = None,
        count: int = 1,
    ) -> None:
        """Answer the next ``count`` creates with ``status`` and a Twilio error body.

        ``fail_next(400, code=21211, message="Invalid 'To' Phone Number")`` is Twilio's
        answer to a bad number; ``fail_next(503)`` a service outage.
        """
        body = _error(
            status,
            code if code is not None else 20000 + status,
            message if message is not None else HTTPStatus(status).phrase,
        )
        with self._state.lock:
            self._state.failures.extend(_Failure(status, body) for _ in range(count))

    def add_call(
        self,
        *,
        to: str,
        from_: str,
        created: datetime.datetime | None = None,
        status: str = "queued",
    ) -> str:
        """Make a call exist as if it had been created through the API; returns its SID."""
        with self._state.lock:
            call = self._call_resource(to=to, from_=from_, created=created, status=status)
            self._state.calls.append(call)
        return str(call["sid"])

    def _call_resource(
        self,
        *,
        to: str,
        from_: str,
        created: datetime.datetime | None = None,
        status: str = "queued",
    ) -> dict[str, Any]:
        account_sid = self._state.account_sid
        sid = new_sid("CA")
        moment = created or datetime.datetime.now(datetime.UTC)
        started = None if status == "queued" else _rfc2822(moment)
        base = f"/{API_VERSION}/Accounts/{account_sid}/Calls/{sid}"
        return {
            "account_sid": account_sid,
            "annotation": None,
            "answered_by": None,
            "api_version": API_VERSION,
            "caller_name": None,
            "date_created": _rfc2822(moment),
            "date_updated": _rfc2822(moment),
            "direction": "outbound-api",
            "duration": None,
            "end_time": None,
            "forwarded_from": None,
            "from": from_,
            "from_formatted": from_,
            "group_sid": None,
            "parent_call_sid": None,
            "phone_number_sid": new_sid("PN"),
            "price": None,
            "price_unit": "USD",
            "queue_time": "0",
            "sid": sid,
            "start_time": started,
            "status": status,
            "subresource_uris": {
                name: f"{base}/{path}.json"
                for name, path in (
                    ("notifications", "Notifications"),
                    ("recordings", "Recordings"),
                    ("payments", "Payments"),
                    ("events", "Events"),
                    ("siprec", "Siprec"),
                    ("streams", "Streams"),
                    ("transcriptions", "Transcriptions"),
                    ("user_defined_message_subscriptions", "UserDefinedMessageSubscriptions"),
                    ("user_defined_messages", "UserDefinedMessages"),
                )
            },
            "to": to,
            "to_formatted": to,
            "trunk_sid": None,
            "uri": f"{base}.json",
        }

    # Called from the server's threads.

    def _authorized(self, header: str | None, account_sid: str) -> bool:
        if header is None or not header.startswith("Basic "):
            return False
        try:
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return False
        state = self._state
        return (
            secrets.compare_digest(user, state.account_sid)
            and secrets.compare_digest(password, state.auth_token)
            and account_sid == state.account_sid
        )

    def _create(self, form: dict[str, list[str]]) -> tuple[int, dict[str, Any]]:
        request = CallRequest(form)
        with self._state.lock:
            self._state.creates.append(request)
            if self._state.failures:
                failure = self._state.failures.pop(0)
                return failure.status, failure.body
            to, from_ = request.get("To"), request.get("From")
            if not to or not from_:
                missing = "To" if not to else "From"
                return 400, _error(400, 21201, f"No '{missing}' number is specified")
            if not any(request.get(name) for name in ("Url", "Twiml", "ApplicationSid")):
                return 400, _error(400, 21205, "Url parameter is required.")
            call = self._call_resource(to=to, from_=from_)
            self._state.calls.append(call)
            return 201, call

    def _update(self, sid: str, form: dict[str, list[str]]) -> tuple[int, dict[str, Any]]:
        update = CallUpdate(sid, form)
        with self._state.lock:
            self._state.updates.append(update)
            found = [call for call in self._state.calls if call["sid"] == sid]
            if not found:
                return 404, _error(
                    404, 20404, f"The requested resource /Calls/{sid}.json was not found"
                )
            (call,) = found
            if call["status"] in _ENDED:
                return 400, _error(400, 21220, "Call is not in-progress. Cannot redirect.")
            status = update.get("Status")
            if status is not None:
                if status not in ("completed", "canceled"):
                    return 400, _error(400, 20001, f"Invalid Status: {status}")
                call["status"] = status
            elif update.get("Twiml") is None and update.get("Url") is None:
                return 400, _error(400, 21205, "Url parameter is required.")
            call["date_updated"] = _rfc2822(datetime.datetime.now(datetime.UTC))
            return 200, dict(call)

    def _fetch(self, sid: str) -> tuple[int, dict[str, Any]]:
        with self._state.lock:
            self._state.fetches.append(sid)
            found = [dict(call) for call in self._state.calls if call["sid"] == sid]
        if not found:
            return 404, _error(
                404, 20404, f"The requested resource /Calls/{sid}.json was not found"
            )
        return 200, found[0]

    def _list(self, path: str, query: dict[str, list[str]]) -> tuple[int, dict[str, Any]]:
        def one(name: str) -> str | None:
            values = query.get(name)
            return values[0] if values else None

        with self._state.lock:
            self._state.lists.append(query)
            calls = [dict(call) for call in self._state.calls]
        try:
            after = _parse_date(one("StartTime>"))
            before = _parse_date(one("StartTime<"))
            page_size = int(one("PageSize") or 50)
            page = int(one("Page") or 0)
        except ValueError as exc:
            return 400, _error(400, 20001, f"Invalid parameter: {exc}")
        selected = []
        for call in calls:
            if one("To") is not None and call["to"] != one("To"):
                continue
            if one("From") is not None and call["from"] != one("From"):
                continue
            started = (
                email.utils.parsedate_to_datetime(call["start_time"])
                if call["start_time"]
                else None
            )
            # Twilio's StartTime filters only match calls that have started (been dialled).
            if after is not None and (started is None or started < after):
                continue
            if before is not None and (started is None or started >= before):
                continue
            selected.append(call)
        selected.reverse()
        start = page * page_size
        records = selected[start : start + page_size]

        def page_uri(number: int) -> str:
            kept = [(key, value) for key, values in query.items() for value in values]
            kept = [(key, value) for key, value in kept if key not in {"Page", "PageSize"}]
            kept += [("PageSize", str(page_size)), ("Page", str(number))]
            return f"{path}?{urlencode(kept)}"

        has_next = start + page_size < len(selected)
        return 200, {
            "calls": records,
            "end": start + len(records) - 1 if records else start,
            "first_page_uri": page_uri(0),
            "next_page_uri": page_uri(page + 1) if has_next else None,
            "page": page,
            "page_size": page_size,
            "previous_page_uri": page_uri(page - 1) if page > 0 else None,
            "start": start,
            "uri": page_uri(page),
        }


def _parse_date(value: str | None) -> datetime.datetime | None:
    """Twilio's date filters take ``YYYY-MM-DD`` or ``YYYY-MM-DDTHH:MM:SSZ`` (UTC)."""
    if value is None:
        return None
    for layout in ("%Y-%m-%dT%H:%M:%SZ", "%Y-%m-%d"):
        try:
            parsed = datetime.datetime.strptime(value, layout)
        except ValueError:
            continue
        return parsed.replace(tzinfo=datetime.UTC)
    raise ValueError(f"{value!r} is not a date")


def _handler(api: TwilioApi) -> type[BaseHTTPRequestHandler]:
    calls_path = f"/{API_VERSION}/Accounts/"

    class Handler(BaseHTTPRequestHandler):
        # Keep-alive like the real API, so the client's connection pool is exercised.
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            # Quiet: failures show up as assertion errors in the tests, not as stderr noise.
            pass

        def _route(self) -> tuple[str, str] | None:
            """The account SID and the path without query, for the Calls list resource."""
            path = urlsplit(self.path).path
            if not path.startswith(calls_path) or not path.endswith("/Calls.json"):
                return None
            account_sid = path[len(calls_path) : -len("/Calls.json")]
            return (account_sid, path) if account_sid and "/" not in account_sid else None

        def _answer(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Twilio-Request-Id", new_sid("RQ"))
            self.end_headers()
            self.wfile.write(data)

        def _call_route(self) -> tuple[str, str] | None:
            """The account SID and call SID, for one call's resource."""
            path = urlsplit(self.path).path
            if not path.startswith(calls_path) or not path.endswith(".json"):
                return None
            account_sid, calls, sid = path[len(calls_path) : -len(".json")].partition("/Calls/")
            if not account_sid or not calls or not sid or "/" in account_sid + sid:
                return None
            return account_sid, sid

        def _checked(self) -> tuple[str, str] | None:
            route = self._route() or self._call_route()
            if route is None:
                self._answer(
                    404, _error(404, 20404, f"The requested resource {self.path} was not found")
                )
                return None
            if not api._authorized(self.headers.get("Authorization"), route[0]):
                body = _error(401, 20003, "Authenticate")
                body["detail"] = "Your AccountSid or AuthToken was incorrect."
                self._answer(401, body)
                return None
            return route

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length).decode()
            if self._checked() is None:
                return
            form = parse_qs(raw, keep_blank_values=True)
            call = self._call_route()
            if call is not None:
                self._answer(*api._update(call[1], form))
                return
            self._answer(*api._create(form))

        def do_GET(self) -> None:
            route = self._checked()
            if route is None:
                return
            call = self._call_route()
            if call is not None:
                self._answer(*api._fetch(call[1]))
                return
            query = parse_qs(urlsplit(self.path).query, keep_blank_values=True)
            self._answer(*api._list(route[1], query))

    return Handler


@contextmanager
def twilio_api(
    *, account_sid: str | None = None, auth_token: str | None = None
) -> Iterator[TwilioApi]:
    """Run a loopback Calls API on a free port for the duration of the ``with`` block."""
    state = _State(
        account_sid=account_sid or new_sid("AC"),
        auth_token=auth_token or secrets.token_hex(16),
    )
    api = TwilioApi(state)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(api))
    host, port = server.server_address[:2]
    api.url = f"http://{host!s}:{port}"
    # A short poll interval: shutdown() waits for the serving loop's next poll.
    thread = threading.Thread(
        target=server.serve_forever, args=(0.02,), name="twilio-api", daemon=True
    )
    thread.start()
    try:
        yield api
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
