"""The recorder: facts from the Redis stream cb:facts into SQL call records and agent-state history.

Delivery model (arq's and Celery's Redis transports, made exactly-once by idempotency):
- One consumer group (`recorder`) on cb:facts; each instance is a consumer named after its instance id, so
  Redis hands each fact to exactly one instance.
- A batch is written in one SQL transaction and XACKed only after the commit. A crash between the two
  leaves the facts pending; XAUTOCLAIM lets any instance take them over after CLAIM_IDLE_MS, and writing
  them again changes nothing: facts are keyed by their stream id, and each touched call's record is
  re-merged from all its stored facts (records/merge.py).
- On PostgreSQL two instances may touch the same call at once; a transaction-scoped advisory lock per call
  (taken in sorted order, after the facts are inserted) makes the last writer see every committed fact.
  SQLite has one writer at a time anyway.
- The database being away stops only this loop: facts wait in Redis (nothing trims what is not written),
  the backlog gauge grows, and the loop retries with backoff. Webhooks, presence and the wallboard never
  wait on it. At 5,000 calls/h (about 12 facts a call with the agents' states) an hour of outage is about
  60,000 stream entries, roughly 15 MB of Redis memory.
- After each write the stream is trimmed below the oldest entry any consumer group still needs.
- Finished records and agent states become outgoing webhooks (call.completed, agent.state_changed) after
  the commit; their webhook-ids come from what they are about, so a redelivery never sends a second event.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge
from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError
from sqlalchemy import bindparam, delete, select, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection

from callboard import keys
from callboard.config import Config
from callflow.windows import day_key
from records import schema
from records.merge import CALL_FACT_TYPES, MAX_MS, merge_call, ms
from records.numbers import normalize_number
from store.db import Database

log = logging.getLogger("callboard.records")

GROUP = "recorder"
BATCH = 500  # facts per SQL transaction: large enough to drain a backlog fast, small enough to commit quickly
BLOCK_MS = 1000  # how long an idle XREADGROUP waits for new facts
# After a batch smaller than BATCH the loop waits this long before reading again, so facts arriving at a
# steady rate are written a few hundred at a time: the cost of a batch (the reads, claim, trim, gauges, the
# transaction and its thread hops on SQLite) is nearly constant, and it shares the webhooks' process.
GATHER_S = 0.25
YIELD_EVERY = 20  # calls merged between two yields to the event loop (about a millisecond of work)
SQL_CHUNK = 400  # call ids per IN (...) list (SQLite allows 32,766 bound parameters; kept well below)
CLAIM_IDLE_MS = 30_000  # a fact pending this long with another consumer (a dead instance) is taken over
RETRY_S = (0.5, 30.0)  # backoff while the database (or Redis) is away
PRUNE_EVERY_S = 3600.0
PRUNE_BATCH = 5000


def caller_key(call_sid: str) -> str:
    """cb:caller:{CallSid}, the caller lookup the customers room stores (keys.caller in the contract)."""
    return f"{keys.PREFIX}caller:{call_sid}"


@dataclass(frozen=True, slots=True)
class Entry:
    """One stream entry: its id and the decoded fact (None when it is not a fact we can read)."""

    id: str
    fact: dict[str, Any] | None


def at_ms_of(fact: dict[str, Any]) -> int:
    """The fact's time for the index columns; 0 when it has none a database could store."""
    value = fact.get("at_ms")
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < MAX_MS:
        return 0
    return value


def _col(value: Any, size: int) -> str | None:
    """A string for a bounded column: cut to size, NUL removed (PostgreSQL text refuses it); else None."""
    if not isinstance(value, str) or not value:
        return None
    return value.replace("\x00", "")[:size] or None


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def decode_entry(entry_id: Any, fields: dict[Any, Any]) -> Entry:
    raw = fields.get(b"f", fields.get("f"))
    try:
        fact = json.loads(raw) if raw is not None else None
    except (ValueError, TypeError):
        fact = None
    if not isinstance(fact, dict) or not isinstance(fact.get("type"), str):
        fact = None
    return Entry(_text(entry_id), fact)


class Recorder:
    """Consumes cb:facts into SQL. run() is the background task; step() is one batch (tests drive it)."""

    def __init__(self, redis: Redis, db: Database, config: Config, *, consumer: str, outbox: Any = None,
                 registry: CollectorRegistry | None = None) -> None:
        self.redis = redis
        self.db = db
        self.config = config
        self.consumer = consumer
        self.outbox = outbox
        self._group_ready = False
        self.written = Counter("callboard_recorder_facts_written", "Facts written to SQL by this instance",
                               registry=registry)
        self.unreadable = Counter("callboard_recorder_facts_unreadable",
                                  "Stream entries that were not a readable fact (logged, acknowledged)", registry=registry)
        self.backlog = Gauge("callboard_recorder_backlog", "Facts waiting in Redis to be written to SQL "
                             "(shared state: take max across instances)", registry=registry)
        self.oldest_age = Gauge("callboard_recorder_oldest_fact_age_seconds",
                                "Age of the oldest fact not yet written (0 when none)", registry=registry)
        self.db_ok = True

    # -- the loop -----------------------------------------------------------------------------------------------

    async def run(self) -> None:
        pause = RETRY_S[0]
        last_prune = 0.0
        while True:
            if not self.db.migrated:
                await asyncio.sleep(1.0)  # the store migrates in the background (store/runtime.py)
                continue
            try:
                n = await self.step(block_ms=BLOCK_MS)
                pause = RETRY_S[0]
                if not self.db_ok:
                    log.info("recorder: database back; writing the facts that waited")
                self.db_ok = True
            except (SQLAlchemyError, OSError, TimeoutError) as exc:
                if self.db_ok:
                    log.warning("recorder: database unavailable (%s); facts wait in Redis", type(exc).__name__)
                self.db_ok = False
                await self._safe_gauges()
                await asyncio.sleep(pause)
                pause = min(pause * 2, RETRY_S[1])
                continue
            except RedisError as exc:
                log.warning("recorder: Redis unavailable (%s); retrying", exc)
                await asyncio.sleep(pause)
                pause = min(pause * 2, RETRY_S[1])
                continue
            except Exception:  # a boundary: a driver error we did not foresee must not end the recorder
                log.exception("recorder: batch failed; the facts stay pending and are retried")
                self.db_ok = False
                await asyncio.sleep(pause)
                pause = min(pause * 2, RETRY_S[1])
                continue
            if time.monotonic() - last_prune > PRUNE_EVERY_S:
                last_prune = time.monotonic()
                try:
                    await self.prune()
                except (SQLAlchemyError, OSError, TimeoutError) as exc:
                    log.warning("recorder: retention prune failed (%s); next hour", exc)
            if n == 0:
                await asyncio.sleep(0)  # XREADGROUP already blocked; just yield
            elif n < BATCH:
                await asyncio.sleep(GATHER_S)  # let the next batch gather (a full one means a backlog: no wait)

    async def ensure_group(self) -> None:
        if self._group_ready:
            return
        try:
            # id 0: a new group starts at the first fact still in the stream (nothing written yet is skipped)
            await self.redis.xgroup_create(keys.facts(), GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._group_ready = True

    async def read(self, count: int = BATCH, block_ms: int | None = None) -> list[Entry]:
        """Our own pending facts first (a write that failed), then facts of dead consumers, then new ones."""
        await self.ensure_group()
        own = await self.redis.xreadgroup(GROUP, self.consumer, {keys.facts(): "0"}, count=count)
        entries = [decode_entry(i, f) for _, batch in own for i, f in batch if f]
        if entries:
            return entries
        claimed = await self.redis.xautoclaim(keys.facts(), GROUP, self.consumer, CLAIM_IDLE_MS, "0-0", count=count)
        entries = [decode_entry(i, f) for i, f in claimed[1] if f]
        if entries:
            return entries
        new = await self.redis.xreadgroup(GROUP, self.consumer, {keys.facts(): ">"}, count=count, block=block_ms)
        return [decode_entry(i, f) for _, batch in new for i, f in batch if f]

    async def step(self, block_ms: int | None = None) -> int:
        """Read one batch, write it in one transaction, then acknowledge and trim. Returns facts handled."""
        entries = await self.read(block_ms=block_ms)
        if not entries:
            await self._safe_gauges()
            return 0
        finals, states = await self.write(entries)
        await self.notify(finals, states)
        await self.ack(entries)
        await self._safe_gauges()
        return len(entries)

    async def ack(self, entries: list[Entry]) -> None:
        await self.redis.xack(keys.facts(), GROUP, *[e.id for e in entries])
        await self.trim()

    # -- writing ------------------------------------------------------------------------------------------------

    async def write(self, entries: list[Entry]) -> tuple[list[dict[str, Any]], list[tuple[str, dict[str, Any]]]]:
        """One transaction: the facts, the agent states, and every touched call re-merged. Idempotent."""
        call_rows: list[dict[str, Any]] = []
        state_rows: list[dict[str, Any]] = []
        for e in entries:
            f = e.fact
            if f is None:
                self.unreadable.inc()
                log.error("recorder: stream entry %s is not a readable fact; acknowledged without a record", e.id)
                continue
            at_ms = at_ms_of(f)
            if f["type"] in CALL_FACT_TYPES and isinstance(f.get("call_sid"), str) and 0 < len(f["call_sid"]) <= 64 \
                    and "\x00" not in f["call_sid"]:
                call_rows.append({"fact_id": e.id, "call_sid": f["call_sid"], "at_ms": at_ms,
                                  "body": json.dumps(f, ensure_ascii=False, separators=(",", ":"))})
            elif f["type"] == "agent.state" and isinstance(f.get("agent"), str) and isinstance(f.get("state"), str):
                state_rows.append({"fact_id": e.id, "agent": _col(f["agent"], 121) or "?", "at_ms": at_ms,
                                   "state": _col(f["state"], 16) or "?", "reason": _col(f.get("reason"), 200),
                                   "prev_state": _col(f.get("prev_state"), 16)})
            else:
                self.unreadable.inc()
                log.warning("recorder: fact %s of type %r has nothing to record; acknowledged", e.id, f["type"])
        sids = sorted({r["call_sid"] for r in call_rows})
        customers = await self._customers(sids)
        finals: list[dict[str, Any]] = []
        async with self.db.begin() as conn:
            await _insert_ignore(conn, self.db, schema.call_facts, call_rows)
            await _insert_ignore(conn, self.db, schema.agent_states, state_rows)
            if self.db.is_postgres:
                for sid in sids:  # in sorted order, after the facts are inserted (see the module docstring)
                    await conn.execute(text("SELECT pg_advisory_xact_lock(hashtext(:sid))"), {"sid": sid})
            # every touched call's facts and stored record in a few statements, not several per call
            bodies: dict[str, list[str]] = defaultdict(list)
            stored: dict[str, str] = {}
            for chunk in _chunks(sids, SQL_CHUNK):
                f = schema.call_facts.c
                for sid, body in await conn.execute(select(f.call_sid, f.body).where(f.call_sid.in_(chunk))):
                    bodies[sid].append(body)
                c = schema.calls.c
                stored.update((sid, rec) for sid, rec in await conn.execute(
                    select(c.call_sid, c.record).where(c.call_sid.in_(chunk))))
            updates: list[dict[str, Any]] = []
            inserts: list[dict[str, Any]] = []
            for i, sid in enumerate(sids):
                if i and i % YIELD_EVERY == 0:
                    await asyncio.sleep(0)  # the merges of a large batch are CPU: let the webhooks in between
                facts = [json.loads(b) for b in bodies[sid]]
                record = merge_call(sid, facts)
                if customers.get(sid) is not None:
                    record["customers"] = customers[sid]
                row = self._call_row(record, facts, stored.get(sid))
                (updates if sid in stored else inserts).append(row)
                if record["final"]:
                    finals.append(record)
            if updates:  # one executemany; bind names differ from the column names, as SQLAlchemy requires
                c = schema.calls.c
                await conn.execute(schema.calls.update().where(c.call_sid == bindparam("b_call_sid"))
                                   .values({k: bindparam("b_" + k) for k in updates[0] if k != "call_sid"}),
                                   [{"b_" + k: v for k, v in r.items()} for r in updates])
            if inserts:
                await conn.execute(schema.calls.insert(), inserts)
        self.written.inc(len(entries))
        states = [(r["fact_id"], {"agent": r["agent"], "state": r["state"], "reason": r["reason"],
                                  "prev_state": r["prev_state"], "at_ms": r["at_ms"]}) for r in state_rows]
        return finals, states

    async def _customers(self, sids: list[str]) -> dict[str, list[str] | None]:
        """Customer ids from the caller lookup (cb:caller:{sid}); None where it is not (or no longer) there."""
        if not sids:
            return {}
        values = await self.redis.mget([caller_key(s) for s in sids])
        out: dict[str, list[str] | None] = {}
        for sid, raw in zip(sids, values, strict=True):
            try:
                lookup = json.loads(raw) if raw else None
            except ValueError:
                lookup = None
            found = lookup.get("customers") if isinstance(lookup, dict) else None
            out[sid] = [c["id"] for c in found if isinstance(c, dict) and isinstance(c.get("id"), str)] \
                if isinstance(found, list) else None
        return out

    def _call_row(self, record: dict[str, Any], facts: list[dict[str, Any]], stored: str | None) -> dict[str, Any]:
        """The calls row of a merged record."""
        center = self.config.center
        started = record["entered_ms"]
        if started is None:  # the first fact's time (the merge saw every stored fact of this call)
            started = min((at_ms_of(f) for f in facts), default=0)
        if record["customers"] == [] and stored:
            # keep customers found earlier (the lookup key expires after 12 h; a late fact must not erase them)
            record["customers"] = json.loads(stored).get("customers") or []
        return {
            "call_sid": record["call_sid"],
            "started_ms": started,
            "day": day_key(record["entered_ms"], center.timezone, center.reset_time) if record["entered_ms"] else None,
            "from_number": _col(record["from"], 64),
            "from_e164": _col(normalize_number(_col(record["from"], 64), getattr(center, "default_region", None)), 32),
            "to_number": _col(record["to"], 64),
            "queue": _col(record["queue"], 64), "agent": _col(record["agent"], 121),
            "outcome": record["outcome"], "entered_ms": record["entered_ms"], "answered_ms": record["answered_ms"],
            "ended_ms": record["ended_ms"], "wait_ms": ms(record["wait_s"]), "talk_ms": ms(record["talk_s"]),
            "wrap_ms": ms(record["wrap_up_s"]), "handle_ms": ms(record["handle_s"]), "final": record["final"],
            "record": json.dumps(record, ensure_ascii=False, separators=(",", ":")), "updated_ms": int(time.time() * 1000),
        }

    async def notify(self, finals: list[dict[str, Any]], states: list[tuple[str, dict[str, Any]]]) -> None:
        """Outgoing webhooks for what was just written (idempotent: ids come from what each event is about)."""
        if self.outbox is None:
            return
        for record in finals:
            public = {k: v for k, v in record.items() if k != "final"}
            await self.outbox.enqueue("call.completed", record["call_sid"], record["ended_ms"] or 0, public)
        for fact_id, data in states:
            await self.outbox.enqueue("agent.state_changed", fact_id, data["at_ms"], data)

    # -- housekeeping -------------------------------------------------------------------------------------------

    async def trim(self) -> None:
        """Drop stream entries every consumer group has acknowledged (below the oldest one still needed)."""
        groups = await self.redis.xinfo_groups(keys.facts())
        floor: str | None = None
        for g in groups:
            name = _text(g["name"])
            candidate = _text(g["last-delivered-id"])
            if int(g["pending"]):
                summary = await self.redis.xpending(keys.facts(), name)
                candidate = min(candidate, _text(summary["min"]), key=_id_key)
            else:
                candidate = _next_id(candidate)  # everything up to last-delivered is acknowledged
            floor = candidate if floor is None else min(floor, candidate, key=_id_key)
        if floor is not None:
            await self.redis.execute_command("XTRIM", keys.facts(), "MINID", floor)

    async def gauges(self) -> None:
        length = await self.redis.xlen(keys.facts())
        self.backlog.set(length)
        first = await self.redis.xrange(keys.facts(), count=1) if length else []
        age = max(time.time() - int(_text(first[0][0]).split("-")[0]) / 1000, 0) if first else 0
        self.oldest_age.set(age)

    async def _safe_gauges(self) -> None:
        try:
            await self.gauges()
        except (RedisError, OSError) as exc:
            log.debug("recorder gauges: %s", exc)

    async def prune(self, now_ms: int | None = None) -> int:
        """Delete records, facts and agent states older than records_retention_days; returns rows deleted."""
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        cutoff = now_ms - self.config.center.records_retention_days * 86_400_000
        total = 0
        for table, column in ((schema.calls, schema.calls.c.started_ms), (schema.call_facts, schema.call_facts.c.at_ms),
                              (schema.agent_states, schema.agent_states.c.at_ms)):
            key = next(iter(table.primary_key.columns))
            while True:  # in batches, so a first prune of a big table never holds one huge transaction
                async with self.db.begin() as conn:
                    doomed = select(key).where(column < cutoff).limit(PRUNE_BATCH).scalar_subquery()
                    n = (await conn.execute(delete(table).where(key.in_(doomed)))).rowcount or 0
                total += n
                if n < PRUNE_BATCH:
                    break
        if total:
            log.info("recorder: pruned %d rows older than %d days", total, self.config.center.records_retention_days)
        return total


def _id_key(entry_id: str) -> tuple[int, int]:
    ms_part, _, seq = entry_id.partition("-")
    return int(ms_part), int(seq or 0)


def _next_id(entry_id: str) -> str:
    ms_part, seq = _id_key(entry_id)
    return f"{ms_part}-{seq + 1}"


async def _insert_ignore(conn: AsyncConnection, db: Database, table: Any, rows: Iterable[dict[str, Any]]) -> None:
    """INSERT ... ON CONFLICT DO NOTHING on the primary key (a redelivered fact is a no-op)."""
    rows = list(rows)
    if not rows:
        return
    if db.is_postgres:
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    await conn.execute(insert(table).on_conflict_do_nothing(), rows)


def _chunks(items: list[str], size: int) -> Iterable[list[str]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def facts_by_call(facts: Iterable[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for f in facts:
        if f.get("type") in CALL_FACT_TYPES and isinstance(f.get("call_sid"), str):
            out[f["call_sid"]].append(f)
    return out
