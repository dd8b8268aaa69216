"""CSV import and export of the directory (pure parts): decoding, header mapping, rows <-> fields.

Import accepts UTF-8, UTF-8 with BOM, and cp932 (what Japanese Excel saves as "CSV"). Export is UTF-8 with
a BOM so that Excel opens it with the right characters. Cells that Excel would run as a formula (starting
with = + - @, tab or CR — a phone number starts with +) are written with a leading apostrophe, which
Excel shows as text; import removes that apostrophe again, so an export re-imports unchanged.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

MAX_IMPORT_BYTES = 32 * 1024 * 1024  # ~200,000 customers; bigger files go in several parts
MAX_IMPORT_ROWS = 200_000
MAX_REPORTED_ERRORS = 1000  # beyond this one summary entry says how many more lines were bad
COLUMNS = ("id", "external_id", "name", "kana", "company", "phones", "email", "owner", "team", "memo")
BOM = "\ufeff"
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


class CsvError(ValueError):
    """The file as a whole cannot be imported (encoding, header); the message says why in English."""


def decode(data: bytes) -> tuple[str, str]:
    """(text, encoding name) for UTF-8 (with or without BOM) or cp932."""
    try:
        return data.decode("utf-8-sig"), "utf-8"
    except UnicodeDecodeError:
        pass
    try:
        return data.decode("cp932"), "cp932"
    except UnicodeDecodeError as exc:
        raise CsvError(f"the file is neither UTF-8 nor cp932 (Shift_JIS): undecodable byte at offset {exc.start}") from None


@dataclass(frozen=True, slots=True)
class Row:
    line: int  # the file line the record starts on (1 = the header)
    values: dict[str, str]


def read_rows(text: str) -> Iterator[Row]:
    """Rows keyed by column name; raises CsvError for a missing/unknown header or too many rows."""
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        raise CsvError("the file is empty (expected a header line: " + ",".join(COLUMNS) + ")") from None
    except csv.Error as exc:
        raise CsvError(f"line 1: {exc}") from None
    names = [h.strip().lower() for h in header]
    unknown = [h for h in names if h and h not in COLUMNS]
    if unknown:
        raise CsvError(f"line 1: unknown column {unknown[0]!r} (columns: {', '.join(COLUMNS)})")
    if "name" not in names:
        raise CsvError("line 1: the header has no 'name' column (columns: " + ", ".join(COLUMNS) + ")")
    if len(set(n for n in names if n)) != len([n for n in names if n]):
        raise CsvError("line 1: a column appears twice in the header")
    count = 0
    while True:
        start = reader.line_num + 1
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise CsvError(f"line {start}: {exc}") from None
        if not any(c.strip() for c in cells):
            continue  # blank lines (Excel adds them at the end) are not customers
        count += 1
        if count > MAX_IMPORT_ROWS:
            raise CsvError(f"more than {MAX_IMPORT_ROWS} rows: split the file")
        if len(cells) > len(names):
            yield Row(start, {"__error__": f"{len(cells)} cells but the header has {len(names)} columns"})
            continue
        values = {names[i]: _unescape(c) for i, c in enumerate(cells) if names[i]}
        yield Row(start, values)


def fields_body(values: dict[str, str]) -> dict[str, Any]:
    """A CSV row as the API's customer body (empty cells are empty fields)."""
    body: dict[str, Any] = {k: v for k, v in values.items() if k not in ("id", "phones")}
    body["phones"] = values.get("phones", "")
    return body


def header_line() -> str:
    return BOM + _line(list(COLUMNS))


def customer_line(c: dict[str, Any]) -> str:
    return _line([c["id"], c["external_id"] or "", c["name"], c["kana"], c["company"], "; ".join(c["phones"]),
                  c["email"], c["owner"] or "", c["team"] or "", c["memo"]])


def _line(cells: list[str]) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\r\n").writerow([_escape(c) for c in cells])
    return out.getvalue()


def _escape(cell: str) -> str:
    return "'" + cell if cell.startswith(_FORMULA_START) else cell


def _unescape(cell: str) -> str:
    return cell[1:] if cell.startswith("'") and cell[1:].startswith(_FORMULA_START) else cell
