"""Reading contacts to start in bulk (:mod:`dee.runs.bulk`) from the formats people have:
JSON Lines, a JSON array, CSV.

JSON rows, one per line or one per array item, are
``{"contact": {...}, "variables": {...}, "runId": "..."}`` (only ``contact`` required); a
line's row number is its line number, an item's its position from 1. A CSV file's first
line names the columns: ``var.NAME`` columns are run variable ``NAME``, a ``runId`` column
is the row's run id, and every other column is a contact field (``email``, ``phone``,
``id``, ``timezone``, ``firstName``, ...); an empty cell gives nothing. A CSV row's number
is its record's number as a spreadsheet shows it (the header is 1, the first contact 2).

Text that is not what its format says stops the whole read with
:class:`ContactFileError` naming the line, before anything starts; a row that reads but
is not a row (an array item that is not an object, a CSV row with extra cells) is a row with
a problem, refused on its own when the runs start.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any, Final

from dee.errors import DeeError
from dee.runs.bulk import ContactRow

__all__ = [
    "VARIABLE_PREFIX",
    "ContactFileError",
    "read_contacts",
    "rows_from_csv",
    "rows_from_json_array",
    "rows_from_json_lines",
]

_TOO_DEEP: Final = "nests too deep to read"
#: What a CSV column naming a run variable starts with.
VARIABLE_PREFIX: Final = "var."


class ContactFileError(DeeError):
    """Contacts that cannot be read; ``line`` names where, when known."""

    def __init__(self, message: str, *, line: int | None = None) -> None:
        self.line = line
        super().__init__(message)


def _not_json(error: json.JSONDecodeError, *, line: int) -> ContactFileError:
    # The decoder's message names the rule and the column, never the text.
    return ContactFileError(
        f"line {line} is not JSON: {error.msg} (column {error.colno})", line=line
    )


def rows_from_json_lines(text: str) -> list[ContactRow]:
    """One row per non-blank line; a line that is not JSON is :class:`ContactFileError`."""
    rows = []
    # Not splitlines(): JSON strings may hold U+2028 and friends, which it splits on.
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            document = json.loads(line)
        except json.JSONDecodeError as exc:
            raise _not_json(exc, line=number) from exc
        except RecursionError:
            rows.append(ContactRow(number, {}, problem=_TOO_DEEP))
            continue
        rows.append(ContactRow.from_document(document, row=number))
    return rows


def rows_from_json_array(text: str) -> list[ContactRow]:
    """One row per item of a JSON array."""
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _not_json(exc, line=exc.lineno) from exc
    except RecursionError as exc:
        raise ContactFileError(f"the JSON {_TOO_DEEP}") from exc
    if not isinstance(document, list):
        raise ContactFileError("expected a JSON array of rows", line=1)
    return [ContactRow.from_document(item, row=index) for index, item in enumerate(document, 1)]


def rows_from_csv(text: str) -> list[ContactRow]:
    """One row per line after the header (see the module's docstring for the columns)."""
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader, None)
        if header is None or not any(name.strip() for name in header):
            raise ContactFileError("the CSV has no header line naming its columns", line=1)
        names = [name.strip() for name in header]
        doubled = sorted({name for name in names if names.count(name) > 1})
        if doubled:
            raise ContactFileError(f"the header repeats column {doubled[0]!r}", line=1)
        if any(name in (VARIABLE_PREFIX, VARIABLE_PREFIX + "contact") for name in names):
            raise ContactFileError(
                "the header has a column `var.` without a name, or `var.contact` (reserved)",
                line=1,
            )
        rows = []
        # Records, not lines: a quoted cell may span lines, and is still one spreadsheet row.
        for number, cells in enumerate(reader, start=2):
            if not any(cell.strip() for cell in cells):
                continue
            rows.append(_csv_row(number, names, cells))
    except csv.Error as exc:
        raise ContactFileError(
            f"line {reader.line_num} is not CSV: {exc}", line=reader.line_num
        ) from exc
    return rows


def _csv_row(number: int, names: list[str], cells: list[str]) -> ContactRow:
    if len(cells) > len(names):
        return ContactRow(number, {}, problem=f"{len(cells)} cells, the header names {len(names)}")
    contact: dict[str, Any] = {}
    variables: dict[str, Any] = {}
    run_id = None
    for name, cell in zip(names, cells, strict=False):
        if not cell or not name:
            continue
        if name == "runId":
            run_id = cell
        elif name.startswith(VARIABLE_PREFIX):
            variables[name.removeprefix(VARIABLE_PREFIX)] = cell
        else:
            contact[name] = cell
    return ContactRow(number, contact, variables, run_id)


def read_contacts(path: Path) -> list[ContactRow]:
    """The rows of a ``.csv``, ``.jsonl`` (or ``.ndjson``) or ``.json`` file (UTF-8, a
    byte order mark allowed); :class:`ContactFileError` when it cannot be read."""
    suffix = path.suffix.lower()
    readers = {
        ".csv": rows_from_csv,
        ".jsonl": rows_from_json_lines,
        ".ndjson": rows_from_json_lines,
        ".json": rows_from_json_array,
    }
    reader = readers.get(suffix)
    if reader is None:
        raise ContactFileError(
            f"cannot tell the format of {path.name}: name it .csv, .jsonl or .json"
        )
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise ContactFileError(f"cannot read {path}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise ContactFileError(f"{path} is not UTF-8 text (byte {exc.start})") from exc
    return reader(text)
