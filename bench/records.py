"""The recorder: call records written per second, and how fast a backlog of facts drains into SQL.

    python bench/records.py                         # SQLite; 5,000 calls (an hour at 5,000 calls/h)
    python bench/records.py --database-url postgresql://postgres@127.0.0.1:5432/cb_records
    python bench/records.py --smoke                 # 200 calls, SQLite, a few seconds

The recorder is measured in-process against the real stores: the facts a call produces through the
webhooks (call.entered, call.answered, call.ended, call.wrap_up, and the agent's three agent.state
transitions: 7 stream entries a call, in the shapes callflow/lua.py and presence/lua.py append) are put
in cb:facts as a backlog — what a database outage leaves behind — and then one Recorder drains it, batch by
batch, exactly as `callboard serve` runs it (read, one SQL transaction, XACK, trim). Prints one JSON line.

Redis: BENCH_REDIS_URL (database 6, flushed), default redis://127.0.0.1:6379/6.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from redis.asyncio import Redis  # noqa: E402
from sqlalchemy import func, select  # noqa: E402

from bench import common  # noqa: E402
from callboard import keys  # noqa: E402
from callboard.config import parse_config  # noqa: E402
from records import recorder as recorder_mod  # noqa: E402
from records import schema  # noqa: E402
from records.recorder import Recorder  # noqa: E402
from store.db import Database  # noqa: E402

FACTS_PER_CALL = 7


def config() -> Any:
    return parse_config({"center": {"name": "bench", "timezone": "Asia/Tokyo"},
                         "queues": [{"name": "support", "numbers": ["+81501234567"]}],
                         "agents": [{"id": f"a{i}", "name": f"A{i}", "queues": ["support"]} for i in range(50)]},
                        "<bench>")


def call_facts(n: int, t0: int, rng: random.Random) -> list[dict[str, Any]]:
    sid = f"CA{n:032x}"
    agent = f"a{n % 50}"
    wait = rng.randint(0, 60)
    talk = rng.randint(30, 600)
    wrap = rng.randint(0, 30)
    at = t0 + n * 720  # 5,000 calls an hour
    return [
        {"type": "call.entered", "call_sid": sid, "from": f"+8131234{n % 10000:04d}", "to": "+81501234567",
         "queue": "support", "at_ms": at},
        {"type": "agent.state", "agent": agent, "state": "on-call", "reason": None, "prev_state": "available",
         "at_ms": at + wait * 1000},
        {"type": "call.answered", "call_sid": sid, "agent": agent, "wait_s": wait, "at_ms": at + wait * 1000},
        {"type": "call.ended", "call_sid": sid, "talk_s": talk, "at_ms": at + (wait + talk) * 1000},
        {"type": "agent.state", "agent": agent, "state": "wrap-up", "reason": None, "prev_state": "on-call",
         "at_ms": at + (wait + talk) * 1000},
        {"type": "agent.state", "agent": agent, "state": "available", "reason": None, "prev_state": "wrap-up",
         "at_ms": at + (wait + talk + wrap) * 1000},
        {"type": "call.wrap_up", "call_sid": sid, "agent": agent, "wrap_up_s": wrap, "at_ms": at + (wait + talk + wrap) * 1000},
    ]


async def fill(redis: Redis, calls: int) -> int:
    rng = random.Random(1)
    t0 = int(time.time() * 1000) - calls * 720
    pipe = redis.pipeline(transaction=False)
    n = 0
    for i in range(calls):
        for fact in call_facts(i, t0, rng):
            pipe.xadd(keys.facts(), {"f": json.dumps(fact, separators=(",", ":"))})
            n += 1
        if i % 500 == 499:
            await pipe.execute()
    await pipe.execute()
    return n


async def drain(rec: Recorder) -> tuple[int, float]:
    started = time.perf_counter()
    total = 0
    while n := await rec.step():
        total += n
    return total, time.perf_counter() - started


async def run(args: argparse.Namespace) -> None:
    redis = Redis.from_url(args.redis_url)
    await redis.flushdb()
    tmp = tempfile.TemporaryDirectory(prefix="cb-bench-records-")
    url = args.database_url or f"sqlite+aiosqlite:///{tmp.name}/records.db"
    db = Database.from_url(url)
    backend = db.engine.dialect.name
    try:
        await db.upgrade()
        async with db.begin() as conn:
            for table in (schema.calls, schema.call_facts, schema.agent_states):
                await conn.execute(table.delete())
        recorder_mod.BATCH = args.batch
        cfg = config()
        load = {"calls": args.calls, "facts": args.calls * FACTS_PER_CALL, "database": backend, "batch": args.batch}

        facts = await fill(redis, args.calls)
        rec = Recorder(redis, db, cfg, consumer="bench")
        written, seconds = await drain(rec)
        async with db.connect() as conn:
            records = (await conn.execute(select(func.count()).select_from(schema.calls))).scalar()
        assert written == facts and records == args.calls, (written, facts, records)
        common.emit("records_drain", load, facts_per_s=round(written / seconds, 1),
                    records_per_s=round(records / seconds, 1), seconds=round(seconds, 2),
                    hour_of_5000_calls_drains_in_s=round(seconds * 5000 / args.calls, 1),
                    stream_left=await redis.xlen(keys.facts()))

    finally:
        await db.dispose()
        await redis.flushdb()
        await redis.aclose()
        tmp.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=5000, help="calls in the backlog (default 5,000: an hour at 5,000/h)")
    parser.add_argument("--batch", type=int, default=recorder_mod.BATCH, help="facts per transaction")
    parser.add_argument("--database-url", help="default: a SQLite file in a temporary directory")
    parser.add_argument("--redis-url", default=common.REDIS_URL)
    parser.add_argument("--smoke", action="store_true", help="200 calls")
    args = parser.parse_args()
    if args.smoke:
        args.calls = 200
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
