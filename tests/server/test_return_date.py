"""The return date of an out-of-office reply (dee.server.return_date), as a case table, and
what hostile text costs."""

from __future__ import annotations

import datetime
import time
from email.message import EmailMessage

import pytest

from dee.server.return_date import MAX_SCANNED_CHARS, message_return_date, return_date

RECEIVED = datetime.date(2026, 12, 3)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # English, month name after a cue, no year: the next December 14.
        ("I am out of the office until December 14.", datetime.date(2026, 12, 14)),
        # Day before month, ordinal, with year.
        ("Back on the 4th January 2027, limited access to email", datetime.date(2027, 1, 4)),
        # ISO.
        ("Returning 2027-01-05.", datetime.date(2027, 1, 5)),
        # US slashes: month first.
        ("I will return 12/14/2026", datetime.date(2026, 12, 14)),
        # Slashes that only read day first.
        ("back 14/12/2026", datetime.date(2026, 12, 14)),
        # German, dots, no year.
        ("Ich bin bis zum 14.12. nicht im Büro.", datetime.date(2026, 12, 14)),
        # German month name.
        (
            "Ich bin ab dem 8. Januar wieder da",
            None,
        ),  # "ab" is no cue; "wieder da" has no date after it
        ("Abwesend bis 8. Januar 2027", datetime.date(2027, 1, 8)),
        # French.
        ("Je serai de retour le 14 décembre", datetime.date(2026, 12, 14)),
        # Spanish.
        ("Estaré fuera hasta el 9 de enero de 2027", datetime.date(2027, 1, 9)),
        # A date without a year that has passed this year is next year's.
        ("Out of office until March 2", datetime.date(2027, 3, 2)),
        # A date in the past, with its year: no return date.
        ("Back on 2026-11-01", None),
        # Further than a year ahead: no return date.
        ("Back on 2031-01-01", None),
        # Not a date.
        ("Back on 31/31/2026", None),
        ("Back on February 30", None),
        # A date with no cue before it is not a return date.
        ("Sent on December 14 from my phone", None),
        # Nothing at all.
        ("Thank you for your message.", None),
    ],
)
def test_return_dates(text: str, expected: datetime.date | None) -> None:
    assert return_date(text, received=RECEIVED) == expected


def test_only_the_start_of_a_long_text_is_read_and_hostile_text_is_cheap() -> None:
    late = "x " * MAX_SCANNED_CHARS + "until December 14"
    assert return_date(late, received=RECEIVED) is None
    hostile = ("until " + "1" * 30 + "/" + "2." * 10 + " ") * 5_000
    started = time.perf_counter()
    assert return_date(hostile, received=RECEIVED) is None
    # A bound on work, not a benchmark: a backtracking pattern would take minutes.
    assert time.perf_counter() - started < 2


def test_a_message_body_and_subject_are_read() -> None:
    message = EmailMessage()
    message["Subject"] = "Automatic reply: Introducing DEE"
    message["From"] = "ana@example.com"
    message.set_content("Hello,\n\nI am out of the office until 2026-12-18 with no access.")
    message.add_alternative("<p>I am out until <b>2026-12-20</b></p>", subtype="html")
    # The text part is read first.
    assert message_return_date(
        message.as_bytes(), subject=str(message["Subject"]), received=RECEIVED
    ) == datetime.date(2026, 12, 18)
    html_only = EmailMessage()
    html_only["Subject"] = "Abwesenheitsnotiz"
    html_only.set_content("<p>Ich bin <i>bis</i> 21.12.2026 abwesend</p>", subtype="html")
    assert message_return_date(
        html_only.as_bytes(), subject="Abwesenheitsnotiz", received=RECEIVED
    ) == datetime.date(2026, 12, 21)
