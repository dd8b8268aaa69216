"""The scripted day of tests/test_callflow_day.py, through the real webhooks, seen as call records.

The facts the webhooks' Lua appends to cb:facts, merged per call, give exactly the expected records —
also when every request is duplicated and each call's requests are shuffled.
"""

from __future__ import annotations

import json
import random
from collections import defaultdict
from typing import Any

import pytest
from redis.asyncio import Redis

from callboard import keys
from records.merge import merge_call
from tests.test_callflow_day import SALES, SUPPORT, T0, make_harness, scripted_day, sid


def caller(n: int) -> str:
    return f"+1555123{n:04d}"


def at(s: float) -> int:
    return T0 + int(s * 1000)


def answered(n: int, agent: str, entered: float, bridged: float, ended: float, wait: float, talk: float,
             wrap: float) -> dict[str, Any]:
    return {"call_sid": sid(n), "from": caller(n), "to": SUPPORT, "queue": "support", "entered_ms": at(entered),
            "answered_ms": at(bridged), "ended_ms": at(ended), "wait_s": wait, "outcome": "answered", "agent": agent,
            "talk_s": talk, "wrap_up_s": wrap, "handle_s": talk + wrap}


def unanswered(n: int, outcome: str, entered: float, ended: float, wait: float, to: str = SUPPORT,
               queue: str = "support") -> dict[str, Any]:
    return {"call_sid": sid(n), "from": caller(n), "to": to, "queue": queue, "entered_ms": at(entered),
            "answered_ms": None, "ended_ms": at(ended), "wait_s": wait, "outcome": outcome, "agent": None,
            "talk_s": None, "wrap_up_s": None, "handle_s": None}


EXPECTED_RECORDS = {r["call_sid"]: r for r in [
    answered(1, "alice", 0, 12, 132, 12.0, 120.0, 10.0),
    answered(2, "bob", 300, 330, 390, 30.0, 60.0, 10.0),
    unanswered(3, "abandoned", 600, 640, 40.0),
    unanswered(4, "short_abandoned", 700, 703, 3.0),
    unanswered(5, "queue_full", 800, 801, 0.0),
    unanswered(6, "unstaffed", 900, 901, 0.0, to=SALES, queue="sales"),
    answered(7, "alice", 3000, 3005, 3006, 5.0, 1.0, 10.0),
    unanswered(8, "abandoned", 3100, 3125, 25.0),
    answered(9, "bob", 3200, 3215, 3275, 15.0, 60.0, 0.0),
]}
FIELDS = list(EXPECTED_RECORDS[sid(1)])


async def stream_facts(redis: Redis) -> list[dict[str, Any]]:
    return [json.loads(f[b"f"]) for _, f in await redis.xrange(keys.facts())]


def records_from(facts: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    by_call: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for f in facts:
        if "call_sid" in f:
            by_call[f["call_sid"]].append(f)
    return {s: merge_call(s, fs) for s, fs in by_call.items()}


def project(records: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {s: {k: r[k] for k in FIELDS} for s, r in records.items()}


async def test_the_scripted_day_appends_facts_that_merge_into_the_expected_records(aiohttp_client: Any,
                                                                                  redis: Redis) -> None:
    h = await make_harness(aiohttp_client, redis)
    await h.run(scripted_day())
    facts = await stream_facts(redis)
    records = records_from(facts)
    assert project(records) == EXPECTED_RECORDS
    assert all(r["final"] for r in records.values())
    # every fact has the contract's envelope
    for f in facts:
        assert isinstance(f["type"], str) and isinstance(f["at_ms"], int), f
    # the agent-state history of the day, in order
    alice = [(f["at_ms"] - T0, f["prev_state"], f["state"], f["reason"]) for f in facts
             if f["type"] == "agent.state" and f["agent"] == "alice"]
    assert alice == [(0, "offline", "available", None), (12_000, "available", "on-call", None),
                     (133_000, "on-call", "wrap-up", None), (143_000, "wrap-up", "available", None),
                     (3_005_000, "available", "on-call", None), (3_006_000, "on-call", "wrap-up", None),
                     (3_016_000, "wrap-up", "available", None)]
    bob = [(f["at_ms"] - T0, f["state"], f["reason"]) for f in facts if f["type"] == "agent.state" and f["agent"] == "bob"]
    assert bob[-2:] == [(3_215_000, "on-call", None), (3_276_000, "away", "disconnected")]


@pytest.mark.parametrize("seed", range(4))
async def test_duplicated_and_shuffled_webhooks_give_the_same_records(aiohttp_client: Any, redis: Redis,
                                                                      seed: int) -> None:
    h = await make_harness(aiohttp_client, redis)
    await h.run_shuffled(scripted_day(), random.Random(seed))
    assert project(records_from(await stream_facts(redis))) == EXPECTED_RECORDS
