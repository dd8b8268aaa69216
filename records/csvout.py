"""The CSV export: one row per call, UTF-8 with a BOM (Excel opens it right), times in the center's zone."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

COLUMNS = ("call_sid", "from", "to", "queue", "customers", "entered_local", "entered_ms", "answered_ms", "ended_ms",
           "wait_s", "outcome", "agent", "talk_s", "wrap_up_s", "handle_s", "hold_s", "transfers", "offers",
           "offers_missed", "disposition", "disposition_note")
BOM = "\ufeff"


def _cell(value: Any) -> str:
    if value is None:
        return ""
    text = str(value)
    # A cell starting with = + - @ is a formula to a spreadsheet: a caller could plant one in a note.
    if text[:1] in ("=", "+", "-", "@") and not _is_number(text):
        return "'" + text
    return text


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def row(record: dict[str, Any], timezone: str) -> list[str]:
    entered = record.get("entered_ms")
    local = (datetime.fromtimestamp(entered / 1000, ZoneInfo(timezone)).isoformat(timespec="seconds")
             if entered is not None else None)
    offers = record.get("offers") or []
    values = {
        **record, "customers": ";".join(record.get("customers") or []), "entered_local": local,
        "transfers": len(record.get("transfers") or []), "offers": len(offers),
        "offers_missed": sum(1 for o in offers if o.get("result") == "missed"),
    }
    return [_cell(values.get(c)) for c in COLUMNS]


def line(record: dict[str, Any], timezone: str) -> str:
    """One CSV line (csv module quoting, \r\n line end)."""
    buf = io.StringIO()
    csv.writer(buf).writerow(row(record, timezone))
    return buf.getvalue()


def lines(records: Iterable[dict[str, Any]], timezone: str) -> Iterable[str]:
    """The header then one CSV line per record (csv module quoting, \\r\\n line ends)."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(COLUMNS)
    yield BOM + buf.getvalue()
    for record in records:
        buf.seek(0)
        buf.truncate()
        writer.writerow(row(record, timezone))
        yield buf.getvalue()
