"""The scripted day of tests/test_callflow_day.py, through the real webhooks, seen as call records.

The facts the webhooks' Lua appends to cb:facts, merged per call, give exactly the expected records —
also when every request is duplicated and each call's requests are shuffled.
"""

from __future__ import annotations

import csv
import io
import json
import random
from collections import defaultdict
from datetime import date
from typing import Any

import pytest
from redis.asyncio import Redis

from callboard import keys
from callboard.clock import FakeClock
from records import queries, reports
from records.merge import merge_call
from records.recorder import Recorder
from tests.conftest import token
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


# -- the same day through the recorder into SQL, and back out through the API ------------------------------------

CONTRACT_FIELDS = ("offered", "answered", "answered_within_sl", "abandoned", "short_abandoned", "service_level",
                   "abandon_rate", "asa_s", "aht_s")


async def record_all(redis: Redis, db: Any, config: Any, consumer: str = "r1") -> int:
    recorder = Recorder(redis, db, config, consumer=consumer)
    total = 0
    while n := await recorder.step():
        total += n
    return total


async def test_the_recorded_day_gives_exact_records_reports_and_csv(aiohttp_client: Any, redis: Redis, db: Any,
                                                                   make_instance: Any) -> None:
    h = await make_harness(aiohttp_client, redis)
    await h.run(scripted_day())
    live = await h.stats()
    n_facts = len(await stream_facts(redis))
    assert await record_all(redis, db, h.config) == n_facts
    assert await redis.xlen(keys.facts()) == 0  # every fact written, acknowledged, then trimmed away

    for call_sid, expected in EXPECTED_RECORDS.items():
        rec = await queries.get_call(db, call_sid)
        assert rec is not None and {k: rec[k] for k in FIELDS} == expected

    # intraday totals are the live `today`, field by field (same definitions)
    day = date(2025, 11, 21)
    report = await reports.intraday(db, h.config, day, None, 15)
    for queue in ("support", "sales"):
        totals = report["queues"][queue]["totals"]
        assert {k: totals[k] for k in CONTRACT_FIELDS} == {k: live[queue]["today"][k] for k in CONTRACT_FIELDS}
    assert report["queues"]["sales"]["totals"]["unstaffed"] == 1
    buckets = {b["start"]: b for b in report["queues"]["support"]["buckets"] if b["offered"]}
    assert {k: (b["offered"], b["answered"], b["abandoned"]) for k, b in buckets.items()} == {
        "09:00": (5, 2, 2), "09:45": (3, 2, 1)}
    assert len(report["queues"]["support"]["buckets"]) == 96

    agents = await reports.agents_day(db, h.config, day, T0 + 3_500_000)
    alice = next(a for a in agents["agents"] if a["agent"] == "alice")
    assert alice["seconds"] == {"available": 3358.0, "on-call": 122.0, "wrap-up": 20.0, "away": 0.0, "offline": 32400.0}
    assert (alice["calls_taken"], alice["aht_s"], alice["offers_missed"]) == (2, 70.5, 0)
    bob = next(a for a in agents["agents"] if a["agent"] == "bob")
    assert (bob["calls_taken"], bob["aht_s"]) == (2, 65.0) and bob["seconds"]["away"] == 224.0

    # the API of a full instance on the same database
    server = await make_instance(h.config, clock=FakeClock(T0 + 3_500_000), db=db)
    client = await aiohttp_client(server)
    sup = {"Authorization": f"Bearer {token('boss', 'supervisor')}"}
    seen: list[str] = []
    cursor = ""
    while True:
        resp = await client.get(f"/api/calls?limit=4&cursor={cursor}", headers=sup)
        assert resp.status == 200, await resp.text()
        page = await resp.json()
        seen += [c["call_sid"] for c in page["calls"]]
        if not page["next_cursor"]:
            break
        cursor = page["next_cursor"]
    assert seen == [sid(n) for n in range(9, 0, -1)]  # newest first, each once
    async def sids(query: str) -> list[str]:
        resp = await client.get(f"/api/calls?{query}", headers=sup)
        assert resp.status == 200, await resp.text()
        return [c["call_sid"] for c in (await resp.json())["calls"]]
    assert await sids("outcome=abandoned") == [sid(8), sid(3)]
    assert await sids("agent=alice") == [sid(7), sid(1)]
    assert await sids("queue=sales") == [sid(6)]
    assert await sids("number=%2B1%20(555)%20123-0003") == [sid(3)]
    assert await sids(f"since={T0 + 3_000_000}&until=2025-11-21T09:55:00%2B01:00") == [sid(9), sid(8), sid(7)]
    assert await sids("since=2025-11-21T09:52:00") == [sid(9)]  # no offset: the center's local time
    for bad, field in (("since=yesterday", "since"), ("outcome=lost", "outcome"), ("limit=0", "limit"),
                       ("cursor=garbage", "cursor"), ("number=abc", "number")):
        resp = await client.get(f"/api/calls?{bad}", headers=sup)
        assert resp.status == 400 and field in (await resp.json())["error"], bad
    assert (await client.get("/api/calls", headers={"Authorization": f"Bearer {token('alice')}"})).status == 403

    # one record: the supervisor, or the agent who took it
    assert (await client.get(f"/api/calls/{sid(1)}", headers={"Authorization": f"Bearer {token('alice')}"})).status == 200
    assert (await client.get(f"/api/calls/{sid(2)}", headers={"Authorization": f"Bearer {token('alice')}"})).status == 403
    assert (await client.get("/api/calls/CAnope", headers=sup)).status == 404

    # the CSV round-trips through Python's csv module
    resp = await client.get("/api/calls.csv", headers=sup)
    assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/csv")
    raw = await resp.read()
    assert raw.startswith(b"\xef\xbb\xbf")
    rows = list(csv.DictReader(io.StringIO(raw.decode("utf-8-sig"), newline="")))
    assert [r["call_sid"] for r in rows] == seen
    by_sid = {r["call_sid"]: r for r in rows}
    for call_sid, expected in EXPECTED_RECORDS.items():
        row = by_sid[call_sid]
        for k in ("from", "to", "queue", "outcome", "agent"):
            assert row[k] == (expected[k] or ""), (call_sid, k)
        for k in ("wait_s", "talk_s", "wrap_up_s", "handle_s"):
            assert (float(row[k]) if row[k] else None) == expected[k], (call_sid, k)
        assert int(row["entered_ms"]) == expected["entered_ms"]
    assert by_sid[sid(1)]["entered_local"] == "2025-11-21T09:00:00+01:00"

    # the reports API says what reports.intraday says
    resp = await client.get("/api/reports/intraday?date=2025-11-21&queue=support&step_min=15", headers=sup)
    assert resp.status == 200
    assert (await resp.json())["queues"]["support"]["totals"] == report["queues"]["support"]["totals"]
    assert (await client.get("/api/reports/intraday?date=21/11/2025", headers=sup)).status == 400
    assert (await client.get("/api/reports/intraday?step_min=7", headers=sup)).status == 400
    assert (await client.get("/api/reports/intraday?queue=nope", headers=sup)).status == 400
    resp = await client.get("/api/reports/agents?date=2025-11-21", headers=sup)
    assert resp.status == 200 and {a["agent"] for a in (await resp.json())["agents"]} == {"alice", "bob", "carol"}


@pytest.mark.parametrize("seed", range(2))
async def test_a_shuffled_day_records_the_same_in_sql(aiohttp_client: Any, redis: Redis, db: Any, seed: int) -> None:
    h = await make_harness(aiohttp_client, redis)
    await h.run_shuffled(scripted_day(), random.Random(seed))
    live = await h.stats()
    await record_all(redis, db, h.config)
    for call_sid, expected in EXPECTED_RECORDS.items():
        rec = await queries.get_call(db, call_sid)
        assert rec is not None and {k: rec[k] for k in FIELDS} == expected
    report = await reports.intraday(db, h.config, date(2025, 11, 21), "support", 15)
    totals = report["queues"]["support"]["totals"]
    assert {k: totals[k] for k in CONTRACT_FIELDS} == {k: live["support"]["today"][k] for k in CONTRACT_FIELDS}


async def test_unknown_waits_are_recorded_as_unknown_and_reports_still_equal_today(aiohttp_client: Any,
                                                                                   redis: Redis, db: Any) -> None:
    """Calls never seen entering, with no believable QueueTime (docs/statistics.md): their records say
    `wait_s: null` (never 0, never a short abandon) and the intraday totals still equal the live `today`."""
    from tests.test_callflow_bounds import _connected
    from tests.test_callflow_day import agent_leg, bridge, incoming, queue_result

    h = await make_harness(aiohttp_client, redis)
    await _connected(h, "alice", "bob")
    await h.run([
        incoming(0, 1), agent_leg(9, 1, "alice"), bridge(10, 1, "alice", 10),  # known wait: 10 s
        agent_leg(19, 2, "bob"), bridge(20, 2, "bob", ""),                     # never seen entering, no QueueTime
        queue_result(30, 3, "hangup", "soon"),                                 # never seen, a wait that is no number
    ])
    live = await h.stats()
    await record_all(redis, db, h.config)
    unknown_answered, unknown_abandoned = await queries.get_call(db, sid(2)), await queries.get_call(db, sid(3))
    assert unknown_answered is not None and unknown_answered["outcome"] == "answered"
    assert unknown_answered["wait_s"] is None
    assert unknown_abandoned is not None and unknown_abandoned["outcome"] == "abandoned"  # not short_abandoned
    assert unknown_abandoned["wait_s"] is None
    report = await reports.intraday(db, h.config, date(2025, 11, 21), "support", 15)
    totals = report["queues"]["support"]["totals"]
    assert {k: totals[k] for k in CONTRACT_FIELDS} == {k: live["support"]["today"][k] for k in CONTRACT_FIELDS}
    assert live["support"]["today"]["asa_s"] == 10.0 and live["support"]["today"]["abandoned"] == 1
