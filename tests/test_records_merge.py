"""The record merge is a pure function of the *set* of a call's facts: any order, any duplicates, same record."""

from __future__ import annotations

import itertools
import random

from records.merge import canonical, merge_call

SID = "CA" + "1" * 32
T = 1_763_700_000_000


def answered_call() -> list[dict]:
    return [
        {"type": "call.entered", "call_sid": SID, "from": "+81312345678", "to": "+81501234567", "queue": "support", "at_ms": T},
        {"type": "offer.created", "call_sid": SID, "offer_id": "o1", "agent": "bob", "queue": "support", "at_ms": T + 1000},
        {"type": "offer.ended", "call_sid": SID, "offer_id": "o1", "agent": "bob", "result": "missed", "reason": "expired", "at_ms": T + 16000},
        {"type": "offer.created", "call_sid": SID, "offer_id": "o2", "agent": "alice", "queue": "support", "at_ms": T + 16500},
        {"type": "offer.ended", "call_sid": SID, "offer_id": "o2", "agent": "alice", "result": "accepted", "reason": "accepted", "at_ms": T + 18000},
        {"type": "call.answered", "call_sid": SID, "agent": "alice", "wait_s": 19.5, "at_ms": T + 19500},
        {"type": "call.hold", "call_sid": SID, "on": True, "at_ms": T + 30000},
        {"type": "call.hold", "call_sid": SID, "on": False, "at_ms": T + 45000},
        {"type": "call.transfer", "call_sid": SID, "from": "alice", "to": "bob", "warm": True, "at_ms": T + 60000},
        {"type": "call.ended", "call_sid": SID, "talk_s": 100.5, "at_ms": T + 120000},
        {"type": "call.wrap_up", "call_sid": SID, "agent": "alice", "wrap_up_s": 12.25, "at_ms": T + 132250},
        {"type": "call.disposition", "call_sid": SID, "agent": "alice", "disposition": "resolved", "note": "ok", "at_ms": T + 133000},
    ]


def test_an_answered_call_merges_into_the_contract_record() -> None:
    rec = merge_call(SID, answered_call())
    assert rec == {
        "call_sid": SID, "from": "+81312345678", "to": "+81501234567", "queue": "support", "customers": [],
        "entered_ms": T, "answered_ms": T + 19500, "ended_ms": T + 120000, "wait_s": 19.5, "outcome": "answered",
        "agent": "alice", "talk_s": 100.5, "wrap_up_s": 12.25, "handle_s": 112.75,
        "offers": [{"agent": "bob", "result": "missed", "at_ms": T + 1000},
                   {"agent": "alice", "result": "accepted", "at_ms": T + 16500}],
        "notes": [], "hold_s": 15.0, "transfers": [{"from": "alice", "to": "bob", "at_ms": T + 60000, "warm": True}],
        "disposition": "resolved", "disposition_note": "ok", "final": True,
    }


def test_any_order_and_duplicates_give_the_same_record() -> None:
    facts = answered_call()
    expected = merge_call(SID, facts)
    rng = random.Random(7)
    for _ in range(200):
        shuffled = facts + rng.sample(facts, rng.randint(0, len(facts)))
        rng.shuffle(shuffled)
        assert merge_call(SID, shuffled) == expected


def test_unknown_values_are_null_never_guessed() -> None:
    entered = {"type": "call.entered", "call_sid": SID, "from": "", "to": "+1555", "queue": "support", "at_ms": T}
    rec = merge_call(SID, [entered])
    assert rec["outcome"] == "waiting" and rec["from"] is None and rec["final"] is False
    assert (rec["agent"], rec["wait_s"], rec["talk_s"], rec["handle_s"], rec["ended_ms"]) == (None,) * 5
    # ended without any leaving fact (Twilio's queue-result was lost): the outcome is unknown, not "abandoned"
    ended = {"type": "call.ended", "call_sid": SID, "talk_s": None, "at_ms": T + 5000}
    rec = merge_call(SID, [entered, ended])
    assert rec["outcome"] is None and rec["final"] is True and rec["talk_s"] is None
    # answered but the wrap-up is not known yet: not final, no handle time
    answered = {"type": "call.answered", "call_sid": SID, "agent": "alice", "wait_s": 3, "at_ms": T + 3000}
    rec = merge_call(SID, [entered, answered, ended])
    assert rec["talk_s"] == 2.0 and rec["handle_s"] is None and rec["final"] is False


def test_garbage_values_do_not_break_the_merge() -> None:
    junk = [
        {"type": "call.entered", "call_sid": SID, "from": 5, "queue": ["x"], "at_ms": "soon"},
        {"type": "call.answered", "call_sid": SID, "agent": None, "wait_s": float("nan"), "at_ms": T},
        {"type": "call.left_queue", "call_sid": SID, "outcome": "exploded", "wait_s": -3, "at_ms": T},
        {"type": "offer.ended", "call_sid": SID, "offer_id": "o", "result": "maybe", "at_ms": T},
        {"type": "no.such.fact", "at_ms": T},
        {"type": "call.wrap_up", "call_sid": SID, "wrap_up_s": 1e300, "at_ms": T},
    ]
    rec = merge_call(SID, junk)
    assert rec["outcome"] == "answered" and rec["wait_s"] is None and rec["from"] is None and rec["queue"] is None
    assert rec["offers"] == [{"agent": None, "result": None, "at_ms": None}] and rec["wrap_up_s"] is None


def test_outcomes_other_than_answered() -> None:
    base = {"type": "call.entered", "call_sid": SID, "from": "+1", "to": "+2", "queue": "q", "at_ms": T}
    for outcome in ("abandoned", "short_abandoned", "unstaffed", "queue_full", "leave", "redirected", "error", "other"):
        left = {"type": "call.left_queue", "call_sid": SID, "outcome": outcome, "wait_s": 4, "at_ms": T + 4000}
        ended = {"type": "call.ended", "call_sid": SID, "talk_s": None, "at_ms": T + 4000}
        for order in itertools.permutations([base, left, ended]):
            rec = merge_call(SID, order)
            assert (rec["outcome"], rec["wait_s"], rec["final"], rec["agent"]) == (outcome, 4.0, True, None)


def test_canonical_drops_exact_duplicates_only() -> None:
    a = {"type": "call.hold", "call_sid": SID, "on": True, "at_ms": T}
    b = {"type": "call.hold", "call_sid": SID, "on": True, "at_ms": T + 1}
    assert canonical([a, dict(a), b, a]) == [a, b]
