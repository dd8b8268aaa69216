"""One call record from its facts: a pure function, so the recorder, the tests and a replay agree.

The facts of one caller call (docs/DESIGN.md "Facts stream") arrive at least once and in any order: the
recorder may see a fact twice (a redelivery after a crash) or a late fact after the record was written.
`merge_call` therefore depends only on the *set* of facts: duplicates are dropped by content and the rest
are folded in a canonical order (time, then type, then content). Unknown values stay None — a record never
guesses (no answer fact: no agent; no end fact: no talk time).

Times are kept in integer milliseconds inside the record's `*_ms` fields so that report sums are exact and
equal the live statistics (callflow/stats.py keeps millisecond sums too); the `*_s` fields are those
milliseconds / 1000.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

# The record outcomes of the contract; a fact naming anything else is kept as "other".
OUTCOMES = ("waiting", "answered", "abandoned", "short_abandoned", "unstaffed", "queue_full", "leave",
            "redirected", "error", "other")
OFFER_RESULTS = ("accepted", "rejected", "missed", "cancelled")
# Facts about a caller call (they carry call_sid); agent.state facts go to the agent-state history.
CALL_FACT_TYPES = frozenset({
    "call.entered", "call.answered", "call.left_queue", "call.ended", "call.wrap_up", "offer.created",
    "offer.ended", "call.requeued", "call.hold", "call.transfer", "call.disposition", "call.monitor",
})

Fact = Mapping[str, Any]


def ms(seconds: Any) -> int | None:
    """Seconds (int or float, as the facts carry them) -> whole milliseconds; None for unknown or nonsense."""
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        return None
    if not 0 <= seconds < 10**9:  # also rejects nan and inf
        return None
    return round(seconds * 1000)


def _s(value_ms: int | None) -> float | None:
    return None if value_ms is None else value_ms / 1000


MAX_MS = 32_503_680_000_000  # year 3000: a time beyond it is garbage, not a date to format


def _int(value: Any) -> int | None:
    """An epoch-ms time, or None for anything that is not a plausible one (bools, NaN, negative, absurd)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        return None
    if not 0 <= value < MAX_MS:
        return None
    return int(value)


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def canonical(facts: Iterable[Fact]) -> list[dict[str, Any]]:
    """Distinct facts in a canonical order: (at_ms, type, JSON text). Duplicates (same content) collapse."""
    seen: dict[str, dict[str, Any]] = {}
    for f in facts:
        text = json.dumps(f, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        seen.setdefault(text, dict(f))
    return [seen[t] for t in sorted(seen, key=lambda t: (_int(seen[t].get("at_ms")) or 0, str(seen[t].get("type")), t))]


def empty_record(call_sid: str) -> dict[str, Any]:
    return {
        "call_sid": call_sid, "from": None, "to": None, "queue": None, "customers": [],
        "entered_ms": None, "answered_ms": None, "ended_ms": None,
        "wait_s": None, "outcome": None, "agent": None, "talk_s": None, "wrap_up_s": None, "handle_s": None,
        "offers": [], "notes": [], "hold_s": None, "transfers": [], "disposition": None, "disposition_note": None,
        "final": False,
    }


def merge_call(call_sid: str, facts: Iterable[Fact]) -> dict[str, Any]:
    """The contract's call record from every fact of one call (any order, duplicates allowed)."""
    rec = empty_record(call_sid)
    wait_ms: int | None = None
    talk_ms: int | None = None
    wrap_ms: int | None = None
    left: str | None = None
    answered = False
    offers: dict[str, dict[str, Any]] = {}
    hold_since: int | None = None
    hold_ms: int | None = None
    for f in canonical(facts):
        kind, at = f.get("type"), _int(f.get("at_ms"))
        if kind == "call.entered":
            if rec["entered_ms"] is None or (at is not None and at < rec["entered_ms"]):
                rec["entered_ms"] = at
            for field in ("from", "to", "queue"):
                rec[field] = rec[field] or _str(f.get(field))
        elif kind == "call.answered" and not answered:
            answered = True
            rec["answered_ms"] = at
            rec["agent"] = _str(f.get("agent"))
            wait_ms = ms(f.get("wait_s"))
        elif kind == "call.left_queue" and left is None:
            outcome = f.get("outcome")
            left = outcome if outcome in OUTCOMES else "other"
            if not answered:
                wait_ms = ms(f.get("wait_s"))
        elif kind == "call.ended" and rec["ended_ms"] is None:
            rec["ended_ms"] = at
            talk_ms = ms(f.get("talk_s"))
        elif kind == "call.wrap_up" and wrap_ms is None:
            wrap_ms = ms(f.get("wrap_up_s"))
            rec["agent"] = rec["agent"] or _str(f.get("agent"))
        elif kind == "call.requeued":
            rec["queue"] = rec["queue"] or _str(f.get("queue"))
        elif kind == "offer.created" and _str(f.get("offer_id")):
            offer = offers.setdefault(f["offer_id"], {"agent": None, "result": None, "at_ms": None})
            offer["agent"] = offer["agent"] or _str(f.get("agent"))
            offer["at_ms"] = offer["at_ms"] if offer["at_ms"] is not None else at
        elif kind == "offer.ended" and _str(f.get("offer_id")):
            offer = offers.setdefault(f["offer_id"], {"agent": None, "result": None, "at_ms": None})
            offer["agent"] = offer["agent"] or _str(f.get("agent"))
            if offer["result"] is None and f.get("result") in OFFER_RESULTS:
                offer["result"] = f["result"]
        elif kind == "call.hold" and at is not None:
            if f.get("on") is True and hold_since is None:
                hold_since = at
            elif f.get("on") is False and hold_since is not None:
                hold_ms = (hold_ms or 0) + max(at - hold_since, 0)
                hold_since = None
        elif kind == "call.transfer":
            rec["transfers"].append({"from": _str(f.get("from")), "to": _str(f.get("to")), "at_ms": at,
                                     "warm": bool(f.get("warm"))})
        elif kind == "call.disposition":
            rec["disposition"] = _str(f.get("disposition"))  # the latest wins (facts are in time order)
            rec["disposition_note"] = _str(f.get("note"))
    if answered:
        rec["outcome"] = "answered"
    elif left is not None:
        rec["outcome"] = left
    elif rec["entered_ms"] is not None and rec["ended_ms"] is None:
        rec["outcome"] = "waiting"
    # A late bridge after the caller's end: the end fact could not know the talk time; both ends know it.
    if talk_ms is None and rec["answered_ms"] is not None and rec["ended_ms"] is not None:
        talk_ms = max(rec["ended_ms"] - rec["answered_ms"], 0)
    if hold_since is not None and rec["ended_ms"] is not None:
        hold_ms = (hold_ms or 0) + max(rec["ended_ms"] - hold_since, 0)
    rec["wait_s"], rec["talk_s"], rec["wrap_up_s"], rec["hold_s"] = _s(wait_ms), _s(talk_ms), _s(wrap_ms), _s(hold_ms)
    if answered and talk_ms is not None and wrap_ms is not None:
        rec["handle_s"] = _s(talk_ms + wrap_ms)
    rec["offers"] = sorted(offers.values(), key=lambda o: (o["at_ms"] is None, o["at_ms"] or 0, o["agent"] or ""))
    rec["final"] = is_final(rec, answered, wrap_ms)
    return rec


def is_final(rec: Mapping[str, Any], answered: bool, wrap_ms: int | None) -> bool:
    """Nothing more will change it: the caller's call ended, and an answered call's wrap-up is known."""
    if rec["ended_ms"] is None or rec["entered_ms"] is None:
        return False
    return not answered or wrap_ms is not None


def wait_ms_of(rec: Mapping[str, Any]) -> int | None:
    return ms(rec.get("wait_s"))
