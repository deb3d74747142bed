"""The return date an out-of-office reply names, for ``pauseOnAutoReply``.

An automatic reply (:func:`dee.server.inbound_mail.auto_reply_reason`) often says when its
sender is back: "I am out of the office until December 14", "back on 14/12/2026", "wieder
da am 14.12.", "de retour le 14 décembre". :func:`return_date` finds the first date in the
subject and the start of the text body that comes after a word saying so (until, back,
returning, return, bis, zurück, retour, regreso, ...), and the auto-reply event carries it
as ``details.returnDate`` (``YYYY-MM-DD``). A run whose plan sets ``pauseOnAutoReply`` then
holds its next send until the day after, at most ``maxDays`` after the reply.

The forms read: ISO (``2026-12-14``); day and month with dots (``14.12.2026``, ``14.12.``,
European order); with slashes (``12/14/2026``: month first when that is a date, else day
first); and month names in English, German, French and Spanish before or after the day
(``December 14``, ``14 Dec``, ``14. Dezember``, ``14 décembre``), with or without a year.
A date without a year is the next such day on or after the reply. Only dates after the
reply and within a year of it count: anything else is no return date (the reply then
holds nothing). Only the first :data:`MAX_SCANNED_CHARS` characters are read, with
patterns that cannot backtrack far, so a hostile message costs little.
"""

from __future__ import annotations

import datetime
import email
import email.policy
import re
import unicodedata
from email.message import Message
from typing import Final

__all__ = ["MAX_SCANNED_CHARS", "body_text", "message_return_date", "return_date"]

#: How much of a reply's subject and text is read for a date.
MAX_SCANNED_CHARS: Final = 4_000
#: How far after the reply a return date may be.
MAX_AHEAD: Final = datetime.timedelta(days=366)

_MONTHS: Final = {
    name: number
    for number, names in enumerate(
        (
            "january jan januar janvier enero ene",
            "february feb februar février fevrier febrero",
            "march mar märz maerz mars marzo",
            "april apr avril abril",
            "may mai mayo",
            "june jun juni juin junio",
            "july jul juli juillet julio",
            "august aug août aout agosto ago",
            "september sep sept septembre septiembre set",
            "october oct oktober okt octobre octubre",
            "november nov novembre noviembre",
            "december dec dezember dez décembre decembre diciembre dic",
        ),
        start=1,
    )
    for name in names.split()
}
_MONTH: Final = "|".join(sorted(_MONTHS, key=len, reverse=True))
#: Words after which a date is the return date, in the languages above.
_CUE: Final = re.compile(
    r"\b(?:until|till|back|return(?:ing)?|returns|bis|zur[üu]ck|wieder|retour|"
    r"jusqu'?au|regreso|regresar[ée]|hasta|vuelta)\b",
    re.IGNORECASE,
)
#: A date, in the forms of the module's doc; at most 40 characters after a cue.
_DATE: Final = re.compile(
    # Not inside a longer number or word ("1111/2.2." holds no date).
    r"(?<![\w/.-])(?:"
    r"(?P<iso>(?P<iy>\d{4})-(?P<im>\d{1,2})-(?P<id>\d{1,2}))"
    r"|(?P<dot>(?P<dd>\d{1,2})\.\s?(?P<dm>\d{1,2})\.(?:\s?(?P<dy>\d{4}|\d{2})\b)?)"
    r"|(?P<slash>(?P<s1>\d{1,2})/(?P<s2>\d{1,2})(?:/(?P<sy>\d{4}|\d{2}))?\b)"
    rf"|(?P<named>(?P<nd>\d{{1,2}})(?:st|nd|rd|th|\.)?\s(?:de\s)?(?P<nm>{_MONTH})\b\.?"
    r"(?:\s(?:de\s)?(?P<ny>\d{4}))?)"
    rf"|(?P<named2>(?P<mm>{_MONTH})\b\.?\s(?P<md>\d{{1,2}})(?:st|nd|rd|th)?\b"
    r"(?:,?\s(?P<my>\d{4}))?))",
    re.IGNORECASE,
)
_CUE_REACH: Final = 40


def body_text(message: Message, *, limit: int = MAX_SCANNED_CHARS) -> str:
    """The start of ``message``'s first ``text/plain`` part (else its first ``text/*``),
    decoded by its charset with errors replaced; empty when it has none."""
    parts = list(message.walk()) if message.is_multipart() else [message]
    texts = [part for part in parts if part.get_content_maintype() == "text"]
    texts.sort(key=lambda part: part.get_content_subtype() != "plain")
    for part in texts:
        payload = part.get_payload(decode=True)
        if not isinstance(payload, bytes):
            continue
        charset = part.get_content_charset() or "utf-8"
        try:
            text = payload[: limit * 4].decode(charset, errors="replace")
        except LookupError:
            text = payload[: limit * 4].decode("utf-8", errors="replace")
        if part.get_content_subtype() == "html":
            text = re.sub(r"<[^>]{0,500}>", " ", text)
        return text[:limit]
    return ""


def message_return_date(
    raw: bytes, *, subject: str, received: datetime.date
) -> datetime.date | None:
    """The return date an automatic reply names in its subject or text, or ``None``."""
    message = email.message_from_bytes(raw, policy=email.policy.compat32)
    return return_date(f"{subject}\n{body_text(message)}", received=received)


def return_date(text: str, *, received: datetime.date) -> datetime.date | None:
    """The return date ``text`` names after a cue word, or ``None`` (see the module's doc)."""
    text = " ".join(unicodedata.normalize("NFC", text[:MAX_SCANNED_CHARS]).split())
    for cue in _CUE.finditer(text):
        window = text[cue.end() : cue.end() + _CUE_REACH]
        found = _DATE.search(window)
        if found is None:
            continue
        day = _as_date(found, received)
        if day is not None and received < day <= received + MAX_AHEAD:
            return day
    return None


def _as_date(found: re.Match[str], received: datetime.date) -> datetime.date | None:
    group = found.group
    candidates: list[tuple[int | None, int, int]] = []
    if group("iso"):
        candidates.append((int(group("iy")), int(group("im")), int(group("id"))))
    elif group("dot"):
        candidates.append((_year(group("dy")), int(group("dm")), int(group("dd"))))
    elif group("slash"):
        first, second, year = int(group("s1")), int(group("s2")), _year(group("sy"))
        candidates += [(year, first, second), (year, second, first)]
    elif group("named"):
        month = _MONTHS[group("nm").lower()]
        candidates.append((_year(group("ny")), month, int(group("nd"))))
    else:
        month = _MONTHS[group("mm").lower()]
        candidates.append((_year(group("my")), month, int(group("md"))))
    for year, month, day in candidates:
        found_date = _valid(year, month, day, received)
        if found_date is not None:
            return found_date
    return None


def _year(text: str | None) -> int | None:
    if not text:
        return None
    return int(text) + (2000 if len(text) == 2 else 0)


def _valid(year: int | None, month: int, day: int, received: datetime.date) -> datetime.date | None:
    """The date, or with no year the next such date on or after ``received``."""
    years = (year,) if year is not None else (received.year, received.year + 1)
    for candidate_year in years:
        try:
            candidate = datetime.date(candidate_year, month, day)
        except ValueError:
            continue
        if year is not None or candidate >= received:
            return candidate
    return None
