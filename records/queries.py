"""Reading call records: filters from a query string (pure), keyset paging newest first, streaming pages."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import and_, or_, select

from callboard.config import Config
from customers.schema import customer_notes
from records import schema
from records.merge import OUTCOMES
from records.numbers import normalize_number
from store.db import Database

MAX_LIMIT = 500
DEFAULT_LIMIT = 50
_EPOCH_MS = re.compile(r"^\d{1,15}$")


class BadQuery(ValueError):
    """A query parameter we cannot use: `field` and an English message (the API answers 400)."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(message)


@dataclass(frozen=True, slots=True)
class CallFilter:
    since_ms: int | None = None
    until_ms: int | None = None
    queue: str | None = None
    agent: str | None = None
    outcome: str | None = None
    number: str | None = None


def parse_time_ms(value: str, field: str, timezone: str) -> int:
    """Epoch ms digits, or ISO-8601 (a time without an offset is the center's local time)."""
    value = value.strip()
    if _EPOCH_MS.match(value):
        return int(value)
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise BadQuery(field, f"{field} must be ISO-8601 (2025-11-21T09:00:00+09:00) or epoch milliseconds") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=ZoneInfo(timezone))
    return int(parsed.timestamp() * 1000)


def parse_filter(query: Mapping[str, str], config: Config) -> CallFilter:
    tz = config.center.timezone
    since = parse_time_ms(query["since"], "since", tz) if query.get("since") else None
    until = parse_time_ms(query["until"], "until", tz) if query.get("until") else None
    outcome = query.get("outcome") or None
    if outcome is not None and outcome not in OUTCOMES:
        raise BadQuery("outcome", f"outcome must be one of {', '.join(OUTCOMES)}")
    for name in ("queue", "agent", "number"):
        if len(query.get(name, "")) > 128:
            raise BadQuery(name, f"{name} is too long")
    number = None
    if query.get("number"):
        number = normalize_number(query["number"], getattr(config.center, "default_region", None))
        if number is None:
            raise BadQuery("number", "number must be a phone number in any spelling, e.g. +81312345678 or 03-1234-5678")
    return CallFilter(since_ms=since, until_ms=until, queue=query.get("queue") or None, agent=query.get("agent") or None,
                      outcome=outcome, number=number)


def parse_limit(value: str | None, default: int = DEFAULT_LIMIT) -> int:
    if value is None or value == "":
        return default
    if not value.isdigit() or not 1 <= int(value) <= MAX_LIMIT:
        raise BadQuery("limit", f"limit must be a whole number from 1 to {MAX_LIMIT}")
    return int(value)


def encode_cursor(started_ms: int, call_sid: str) -> str:
    return base64.urlsafe_b64encode(json.dumps([started_ms, call_sid]).encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[int, str]:
    try:
        started_ms, call_sid = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        if not isinstance(started_ms, int) or not isinstance(call_sid, str):
            raise ValueError
        return started_ms, call_sid
    except (ValueError, TypeError):
        raise BadQuery("cursor", "cursor is not one this server gave out (use next_cursor as it came)") from None


def _where(flt: CallFilter) -> list[Any]:
    c = schema.calls.c
    conds: list[Any] = []
    if flt.since_ms is not None:
        conds.append(c.started_ms >= flt.since_ms)
    if flt.until_ms is not None:
        conds.append(c.started_ms < flt.until_ms)
    if flt.queue:
        conds.append(c.queue == flt.queue)
    if flt.agent:
        conds.append(c.agent == flt.agent)
    if flt.outcome:
        conds.append(c.outcome == flt.outcome)
    if flt.number:
        conds.append(c.from_e164 == flt.number)
    return conds


async def list_calls(db: Database, flt: CallFilter, limit: int, cursor: str | None = None
                     ) -> tuple[list[dict[str, Any]], str | None]:
    """Records newest first; next_cursor is None on the last page."""
    c = schema.calls.c
    conds = _where(flt)
    if cursor:
        started, sid = decode_cursor(cursor)
        conds.append(or_(c.started_ms < started, and_(c.started_ms == started, c.call_sid < sid)))
    stmt = (select(c.record, c.started_ms, c.call_sid).where(*conds)
            .order_by(c.started_ms.desc(), c.call_sid.desc()).limit(limit + 1))
    async with db.connect() as conn:
        rows = (await conn.execute(stmt)).all()
    records = [public(json.loads(r.record)) for r in rows[:limit]]
    next_cursor = encode_cursor(rows[limit - 1].started_ms, rows[limit - 1].call_sid) if len(rows) > limit else None
    return records, next_cursor


async def iter_calls(db: Database, flt: CallFilter, page: int = 1000) -> AsyncIterator[dict[str, Any]]:
    """Every matching record, newest first, one page in memory at a time (the CSV export streams this)."""
    cursor: str | None = None
    while True:
        records, cursor = await list_calls(db, flt, page, cursor)
        for record in records:
            yield record
        if cursor is None:
            return


async def get_call(db: Database, call_sid: str) -> dict[str, Any] | None:
    """One record with the notes written about this call (the customers room's notes with its call_sid)."""
    n = customer_notes.c
    async with db.connect() as conn:
        raw = (await conn.execute(select(schema.calls.c.record).where(schema.calls.c.call_sid == call_sid))).scalar()
        if not raw:
            return None
        notes = (await conn.execute(select(n.id, n.customer_id, n.agent, n.text, n.at_ms)
                                    .where(n.call_sid == call_sid).order_by(n.at_ms, n.id))).all()
    record = public(json.loads(raw))
    record["notes"] = [dict(r._mapping) for r in notes]
    return record


def public(record: dict[str, Any]) -> dict[str, Any]:
    """The contract's record (the recorder's bookkeeping flag `final` stays inside)."""
    return {k: v for k, v in record.items() if k != "final"}
