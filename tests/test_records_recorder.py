"""The recorder under failure: an instance crash (before or after its SQL commit) and a database outage.

Nothing is lost and nothing is doubled: the records equal those of an undisturbed run, fact rows are not
duplicated, and the stream empties once everything is written.
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
from redis.asyncio import Redis
from sqlalchemy import func, select

from callboard import keys
from callboard.services import cancel_and_wait
from records import queries, schema
from records import recorder as recorder_mod
from records.recorder import GROUP, Recorder
from store.db import Database
from tests.test_callflow_day import T0, make_harness, scripted_day, sid
from tests.test_records_day import EXPECTED_RECORDS, FIELDS, stream_facts


async def rows(db: Any, table: Any) -> int:
    async with db.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(table))).scalar() or 0)


async def assert_exact(db: Any) -> None:
    for call_sid, expected in EXPECTED_RECORDS.items():
        rec = await queries.get_call(db, call_sid)
        assert rec is not None and {k: rec[k] for k in FIELDS} == expected, call_sid
    assert await rows(db, schema.calls) == len(EXPECTED_RECORDS)


async def drain(rec: Recorder) -> None:
    while await rec.step():
        pass


@pytest.mark.parametrize("commit_first", [False, True], ids=["crash-before-commit", "crash-after-commit"])
async def test_a_crashed_instances_facts_are_taken_over_without_loss_or_doubles(
        aiohttp_client: Any, redis: Redis, db: Any, monkeypatch: pytest.MonkeyPatch, commit_first: bool) -> None:
    monkeypatch.setattr(recorder_mod, "CLAIM_IDLE_MS", 3_600_000)  # nobody looks idle yet
    h = await make_harness(aiohttp_client, redis)
    await h.run(scripted_day())
    facts = await stream_facts(redis)
    call_facts = sum(1 for f in facts if "call_sid" in f)
    state_facts = sum(1 for f in facts if f["type"] == "agent.state")

    doomed = Recorder(redis, db, h.config, consumer="doomed")
    taken = await doomed.read(count=40)  # delivered to "doomed", which dies before acknowledging
    assert len(taken) == 40
    if commit_first:
        await doomed.write(taken)  # the SQL commit landed; the XACK never did
    survivor = Recorder(redis, db, h.config, consumer="survivor")
    await drain(survivor)  # everything but the dead consumer's pending facts
    assert (await redis.xpending(keys.facts(), GROUP))["pending"] == 40
    monkeypatch.setattr(recorder_mod, "CLAIM_IDLE_MS", 0)  # time passes: the dead consumer's facts are idle
    await drain(survivor)
    assert (await redis.xpending(keys.facts(), GROUP))["pending"] == 0
    await assert_exact(db)
    assert await rows(db, schema.call_facts) == call_facts
    assert await rows(db, schema.agent_states) == state_facts
    assert await redis.xlen(keys.facts()) == 0


def _admin_and_scratch(url: str, name: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return (urlunsplit(parts._replace(path="/postgres")).replace("postgresql://", "postgresql://", 1),
            urlunsplit(parts._replace(path=f"/{name}")))


async def test_a_database_outage_loses_nothing(aiohttp_client: Any, redis: Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    """PostgreSQL goes away (its database renamed under the recorder) mid-day and comes back."""
    import asyncpg

    from tests.conftest import postgres_test_url

    url = postgres_test_url()
    monkeypatch.setattr(recorder_mod, "RETRY_S", (0.1, 0.5))
    monkeypatch.setattr(recorder_mod, "BLOCK_MS", 100)
    name = f"cb_outage_{os.getpid()}"
    admin_url, scratch_url = _admin_and_scratch(url, name)
    admin = await asyncpg.connect(admin_url)
    await admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
    await admin.execute(f'DROP DATABASE IF EXISTS "{name}_away"')
    await admin.execute(f'CREATE DATABASE "{name}"')
    db = Database.from_url(scratch_url)
    runner: asyncio.Task[None] | None = None
    try:
        await db.upgrade()
        h = await make_harness(aiohttp_client, redis)
        rec = Recorder(redis, db, h.config, consumer="only")
        runner = asyncio.create_task(rec.run())
        steps = scripted_day()
        morning = [s for s in steps if s.at_s < 3000]
        await h.run(morning)
        await _until(lambda: redis.xlen(keys.facts()), 0)

        # the database goes away: connections cut, the database renamed
        await admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", name)
        await admin.execute(f'ALTER DATABASE "{name}" RENAME TO "{name}_away"')
        await h.run([s for s in steps if s.at_s >= 3000])  # the webhooks keep answering meanwhile
        waiting = await redis.xlen(keys.facts())
        assert waiting > 0
        await asyncio.sleep(1.0)
        await rec.gauges()
        assert not rec.db_ok and rec.backlog._value.get() == waiting  # facts wait in Redis, and the gauge says so
        assert await redis.xlen(keys.facts()) == waiting

        await admin.execute(f'ALTER DATABASE "{name}_away" RENAME TO "{name}"')
        await _until(lambda: redis.xlen(keys.facts()), 0, timeout=30)
        assert rec.db_ok
        await assert_exact(db)
    finally:
        if runner is not None:
            assert not await cancel_and_wait([runner])  # see cancel_and_wait: one cancel may be lost on 3.11
        await db.dispose()
        await admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname LIKE $1", f"{name}%")
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}_away"')
        await admin.close()


async def _until(read: Any, value: Any, timeout: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while (got := await read()) != value:
        assert asyncio.get_running_loop().time() < deadline, f"still {got}, waiting for {value}"
        await asyncio.sleep(0.05)


async def test_records_carry_the_callers_customers_and_old_rows_are_pruned(aiohttp_client: Any, redis: Redis,
                                                                           db: Any) -> None:
    h = await make_harness(aiohttp_client, redis)
    await h.run(scripted_day())
    lookup = {"withheld": False, "owner": None, "owner_team": None,
              "customers": [{"id": "c-1", "name": "Sato"}, {"id": "c-2", "name": "Sato Ltd"}]}
    await redis.set(keys.caller(sid(1)), json.dumps(lookup))
    await redis.set(keys.caller(sid(2)), "not json")  # garbage from elsewhere: no customers, no crash
    rec = Recorder(redis, db, h.config, consumer="r")
    await drain(rec)
    assert (await queries.get_call(db, sid(1)))["customers"] == ["c-1", "c-2"]
    assert (await queries.get_call(db, sid(2)))["customers"] == []
    # the lookup expires (12 h); a late fact re-merges the record and keeps what was found
    await redis.delete(keys.caller(sid(1)))
    await redis.xadd(keys.facts(), {"f": json.dumps({"type": "call.disposition", "call_sid": sid(1), "agent": "alice",
                                                     "disposition": "resolved", "note": None, "at_ms": T0 + 200_000})})
    await drain(rec)
    late = await queries.get_call(db, sid(1))
    assert late["customers"] == ["c-1", "c-2"] and late["disposition"] == "resolved"

    # retention: 400 days by default; everything of the day is older than that 401 days later
    assert await rec.prune(now_ms=T0 + 399 * 86_400_000) == 0
    deleted = await rec.prune(now_ms=T0 + 401 * 86_400_000)
    assert deleted > 9 and await rows(db, schema.calls) == 0 and await rows(db, schema.agent_states) == 0


async def test_finished_calls_and_agent_states_reach_a_webhook_receiver_once(
        aiohttp_client: Any, aiohttp_server: Any, redis: Redis, db: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.test_webhooks_out import SECRET, Receiver, outbox_for, serve, until
    from webhooks import outbox as outbox_mod

    monkeypatch.setattr(outbox_mod, "POLL_S", 0.1)
    monkeypatch.setattr(recorder_mod, "CLAIM_IDLE_MS", 3_600_000)
    h = await make_harness(aiohttp_client, redis)
    await h.run(scripted_day())
    facts = await stream_facts(redis)
    receiver = Receiver(SECRET)
    box = outbox_for(redis, ("crm", await serve(aiohttp_server, receiver), SECRET))
    doomed = Recorder(redis, db, h.config, consumer="doomed", outbox=box)
    entries = await doomed.read(count=10_000)
    finals, states = await doomed.write(entries)
    await doomed.notify(finals, states)  # ... and dies before its XACK
    monkeypatch.setattr(recorder_mod, "CLAIM_IDLE_MS", 0)
    await drain(Recorder(redis, db, h.config, consumer="survivor", outbox=box))  # everything again
    runner = asyncio.create_task(box.run())
    n_states = sum(1 for f in facts if f["type"] == "agent.state")
    try:
        await until(lambda: len(receiver.delivered) >= 9 + n_states)
        await asyncio.sleep(0.5)
    finally:
        assert not await cancel_and_wait([runner])  # see cancel_and_wait: one cancel may be lost on 3.11
    by_type: dict[str, list[dict[str, Any]]] = {}
    for _, payload in receiver.delivered:
        by_type.setdefault(payload["type"], []).append(payload["data"])
    assert len(receiver.delivered) == len({m for m, _ in receiver.delivered}) == 9 + n_states
    completed = {d["call_sid"]: d for d in by_type["call.completed"]}
    assert set(completed) == set(EXPECTED_RECORDS)
    for call_sid, expected in EXPECTED_RECORDS.items():
        assert {k: completed[call_sid][k] for k in FIELDS} == expected
    assert len(by_type["agent.state_changed"]) == n_states
    assert {"agent": "alice", "state": "on-call", "reason": None, "prev_state": "available",
            "at_ms": T0 + 12_000} in by_type["agent.state_changed"]


async def test_a_locked_sqlite_database_loses_nothing(aiohttp_client: Any, redis: Redis, tmp_path: Any,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """SQLite's outage: another process holds the write lock (root may write any file, so no chmod)."""
    import sqlite3

    monkeypatch.setattr(recorder_mod, "RETRY_S", (0.1, 0.5))
    monkeypatch.setattr(recorder_mod, "BLOCK_MS", 100)
    path = tmp_path / "records.db"
    db = Database.from_url(f"sqlite+aiosqlite:///{path}")
    runner: asyncio.Task[None] | None = None
    other = None
    try:
        await db.upgrade()
        h = await make_harness(aiohttp_client, redis)
        rec = Recorder(redis, db, h.config, consumer="only")
        runner = asyncio.create_task(rec.run())
        steps = scripted_day()
        await h.run([s for s in steps if s.at_s < 3000])
        await _until(lambda: redis.xlen(keys.facts()), 0)
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN EXCLUSIVE")  # held until we say so: every write waits 5 s, then fails
        await h.run([s for s in steps if s.at_s >= 3000])
        waiting = await redis.xlen(keys.facts())
        await _until(lambda: _true(not rec.db_ok), True, timeout=30)
        assert await redis.xlen(keys.facts()) == waiting > 0
        other.execute("COMMIT")
        await _until(lambda: redis.xlen(keys.facts()), 0, timeout=30)
        await assert_exact(db)
    finally:
        if other is not None:
            other.close()
        if runner is not None:
            assert not await cancel_and_wait([runner])  # see cancel_and_wait: one cancel may be lost on 3.11
        await db.dispose()


async def _true(value: bool) -> bool:
    return value


async def test_garbage_in_the_stream_is_counted_and_never_blocks_the_recorder(redis: Redis, db: Any) -> None:
    """Unreadable entries are acknowledged and counted; absurd values are cut or nulled, never a stuck batch."""
    from tests.test_callflow_day import day_config

    sid_ok = "CA" + "7" * 32
    junk: list[dict[str, Any]] = [
        {"f": "not json"}, {"f": "[1, 2]"}, {"f": json.dumps({"no": "type"})}, {"x": "no f field"},
        {"f": json.dumps({"type": "call.exploded", "call_sid": sid_ok, "at_ms": 1})},
        {"f": json.dumps({"type": "call.entered", "call_sid": "CA\x00nul", "at_ms": 1})},
        {"f": json.dumps({"type": "call.entered", "call_sid": "x" * 65, "at_ms": 1})},
        {"f": json.dumps({"type": "call.entered", "call_sid": sid_ok, "from": "+81\x00" + "9" * 500,
                          "to": "t" * 300, "queue": "q" * 500, "at_ms": 10**30})},
        {"f": json.dumps({"type": "call.answered", "call_sid": sid_ok, "agent": "a\x00" * 300, "wait_s": 1e308,
                          "at_ms": True})},
        {"f": json.dumps({"type": "agent.state", "agent": "z" * 500, "state": "s" * 50, "reason": "\x00" * 900,
                          "prev_state": 5, "at_ms": -5})},
    ]
    for fields in junk:
        await redis.xadd(keys.facts(), fields)
    rec = Recorder(redis, db, day_config(), consumer="r")
    await drain(rec)
    assert await redis.xlen(keys.facts()) == 0
    assert rec.unreadable._value.get() == 7
    record = await queries.get_call(db, sid_ok)
    assert record is not None and record["entered_ms"] is None and record["outcome"] == "answered"
    assert await rows(db, schema.agent_states) == 1
