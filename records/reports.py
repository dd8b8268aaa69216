"""Reports from call records: intraday buckets per queue and the agents' day.

Same definitions as the live statistics: each record is turned into the very counters the Lua keeps
(callflow/stats.py names) and the contract's fields come from `stats_from_counters`, so a day's intraday
totals equal that day's live `today` window. A call belongs to the `today` window it entered in (the live
day hash is keyed the same way) and to the bucket of its entered time.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import select

from callboard.config import Config
from callflow import stats
from callflow.windows import day_key, window_start_ms
from records import schema
from records.queries import BadQuery
from store.db import Database

STATES = ("available", "on-call", "wrap-up", "away", "offline")
STEPS_MIN = (5, 10, 15, 30, 60)


def counters_of(row: Mapping[str, Any], sl_ms: int) -> dict[str, int]:
    """One call record's contribution to the live counters (pure)."""
    outcome = row["outcome"]
    if outcome == "unstaffed":
        return {stats.UNSTAFFED: 1}
    c: dict[str, int] = {stats.OFFERED: 1}
    if outcome == "answered":
        c[stats.ANSWERED] = 1
        wait = row["wait_ms"]
        if wait is None:  # an unknown wait is never zero: out of ASA and the SL denominators, as live
            c[stats.ANSWERED_WAIT_UNKNOWN] = 1
        else:
            c[stats.ANSWER_WAIT_MS] = wait
            c[stats.ANSWERED_WITHIN_SL] = 1 if wait <= sl_ms else 0
        if row["handle_ms"] is not None:
            c[stats.HANDLED] = 1
            c[stats.HANDLE_MS] = row["handle_ms"]
    elif outcome in ("abandoned", "short_abandoned"):
        c[stats.ABANDONED] = 1
        c[stats.SHORT_ABANDONED] = 1 if outcome == "short_abandoned" else 0
        if outcome == "abandoned" and row["wait_ms"] is None:
            c[stats.ABANDONED_WAIT_UNKNOWN] = 1
    elif outcome == "error":
        c["error"] = 1
    elif outcome in stats.LEAVE_OUTCOMES:
        c[outcome] = 1
    return c


def parse_date(value: str | None, config: Config, now_ms: int) -> date:
    if not value:
        return date.fromisoformat(day_key(now_ms, config.center.timezone, config.center.reset_time))
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise BadQuery("date", "date must be a day like 2025-11-21") from None


def day_bounds(day: date, config: Config) -> tuple[int, int]:
    c = config.center
    return window_start_ms(day, c.timezone, c.reset_time), window_start_ms(day + timedelta(days=1), c.timezone, c.reset_time)


def intraday_from_rows(rows: Iterable[Mapping[str, Any]], queues: list[str], start_ms: int, end_ms: int,
                       step_min: int, sl_ms: int, timezone: str) -> dict[str, Any]:
    """{queue: {"buckets": [...], "totals": {...}}} from call rows (pure)."""
    step_ms = step_min * 60_000
    n = max((end_ms - start_ms + step_ms - 1) // step_ms, 1)
    per: dict[str, list[dict[str, int]]] = {q: [{} for _ in range(n)] for q in queues}
    for row in rows:
        q = row["queue"]
        if q not in per or row["entered_ms"] is None:
            continue
        i = min(max((row["entered_ms"] - start_ms) // step_ms, 0), n - 1)
        bucket = per[q][i]
        for name, value in counters_of(row, sl_ms).items():
            bucket[name] = bucket.get(name, 0) + value
    zone = ZoneInfo(timezone)
    out: dict[str, Any] = {}
    for q, buckets in per.items():
        out[q] = {
            "buckets": [{"start_ms": start_ms + i * step_ms,
                         "start": datetime.fromtimestamp((start_ms + i * step_ms) / 1000, zone).strftime("%H:%M"),
                         **stats.stats_from_counters(b)} for i, b in enumerate(buckets)],
            "totals": stats.stats_from_counters(stats.add_counters(buckets)),
        }
    return out


_ROW_COLUMNS = (schema.calls.c.queue, schema.calls.c.agent, schema.calls.c.outcome, schema.calls.c.entered_ms,
                schema.calls.c.wait_ms, schema.calls.c.handle_ms, schema.calls.c.record)


async def day_rows(db: Database, day: date, queue: str | None = None) -> list[Mapping[str, Any]]:
    stmt = select(*_ROW_COLUMNS).where(schema.calls.c.day == day.isoformat())
    if queue:
        stmt = stmt.where(schema.calls.c.queue == queue)
    async with db.connect() as conn:
        return [r._mapping for r in (await conn.execute(stmt)).all()]


async def intraday(db: Database, config: Config, day: date, queue: str | None, step_min: int) -> dict[str, Any]:
    if step_min not in STEPS_MIN:
        raise BadQuery("step_min", f"step_min must be one of {', '.join(map(str, STEPS_MIN))}")
    if queue is not None and config.queue(queue) is None:
        raise BadQuery("queue", f"no queue {queue!r} in this center")
    start, end = day_bounds(day, config)
    queues = [queue] if queue else [q.name for q in config.queues]
    rows = await day_rows(db, day, queue)
    return {"date": day.isoformat(), "timezone": config.center.timezone, "step_min": step_min,
            "start_ms": start, "end_ms": end, "sl_threshold_s": config.center.sl_threshold_s,
            "queues": intraday_from_rows(rows, queues, start, end, step_min, config.center.sl_threshold_s * 1000,
                                         config.center.timezone)}


def time_in_states(transitions: list[tuple[int, str]], before: str | None, start_ms: int, end_ms: int) -> dict[str, float]:
    """Seconds in each state within [start, end) from time-ordered (at_ms, state) and the state before start."""
    out = {s: 0.0 for s in STATES}
    state, since = before or "offline", start_ms
    for at_ms, new in transitions:
        at = min(max(at_ms, start_ms), end_ms)
        if state in out:
            out[state] += (at - since) / 1000
        state, since = new, at
    if state in out:
        out[state] += max(end_ms - since, 0) / 1000
    return {s: round(v, 3) for s, v in out.items()}


async def agents_day(db: Database, config: Config, day: date, now_ms: int) -> dict[str, Any]:
    start, end = day_bounds(day, config)
    until = min(end, max(now_ms, start))
    a = schema.agent_states.c
    async with db.connect() as conn:
        rows = (await conn.execute(select(a.agent, a.at_ms, a.state).where(a.at_ms >= start, a.at_ms < until)
                                   .order_by(a.agent, a.at_ms, a.fact_id))).all()
        agent_ids = list(dict.fromkeys([x.id for x in config.agents] + [r.agent for r in rows]))
        before: dict[str, str | None] = {}
        for agent in agent_ids:
            before[agent] = (await conn.execute(select(a.state).where(a.agent == agent, a.at_ms < start)
                                                .order_by(a.at_ms.desc(), a.fact_id.desc()).limit(1))).scalar()
    transitions: dict[str, list[tuple[int, str]]] = {x: [] for x in agent_ids}
    for r in rows:
        transitions[r.agent].append((r.at_ms, r.state))
    calls = await day_rows(db, day)
    taken: dict[str, list[int | None]] = {x: [] for x in agent_ids}
    missed: dict[str, int] = dict.fromkeys(agent_ids, 0)
    for row in calls:
        if row["outcome"] == "answered" and row["agent"] in taken:
            taken[row["agent"]].append(row["handle_ms"])
        for offer in json.loads(row["record"]).get("offers") or []:
            if offer.get("result") == "missed" and offer.get("agent") in missed:
                missed[offer["agent"]] += 1
    agents = []
    for agent in agent_ids:
        handled = [h for h in taken[agent] if h is not None]
        cfg = config.agent(agent)
        agents.append({"agent": agent, "name": cfg.name if cfg else agent, "team": cfg.team if cfg else None,
                       "seconds": time_in_states(transitions[agent], before[agent], start, until),
                       "calls_taken": len(taken[agent]),
                       "aht_s": round(sum(handled) / len(handled) / 1000, 3) if handled else None,
                       "offers_missed": missed[agent]})
    return {"date": day.isoformat(), "start_ms": start, "end_ms": end, "until_ms": until, "agents": agents}
