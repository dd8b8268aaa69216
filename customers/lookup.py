"""The caller lookup: at `incoming` (and again at `bridge` if it is missing) look the caller's number up in
the directory, in the background, and leave the answer in Redis for the pop and the routing.

The webhook never awaits this: it queues the lookup and answers Twilio. The answer goes to Redis in one Lua
call (CALLER_SET) that also re-sends the screen pop when the caller was bridged before the lookup finished,
so the agent gets a first pop at once and a second one (same call_sid) with the customers. A database that
is down or slow gives `customers: []` with `directory_unavailable: true` rather than no answer at all.

Lookups are batched: what the webhooks queued within GATHER_S (50 ms) is looked up in one query on one connection
(repo.by_phones) and stored in one Redis pipeline, by at most CONCURRENT_BATCHES tasks. A lookup per task,
as before, cost a pool checkout, a query and a rollback for every call, each a thread hop on SQLite, in the
process that answers the webhooks (docs/benchmarks.md, "Signed webhooks: the cause").
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import deque
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from callboard import keys
from callboard.clock import Clock
from callboard.config import Config
from customers import phones as ph
from customers import repo
from presence.lua import build_script
from presence.store import PresenceStore
from store.db import Database

log = logging.getLogger(__name__)

CALLER_TTL_MS = 12 * 3600 * 1000  # longer than any call; routing and the pop read it while the call lasts
LOOKUP_TIMEOUT_S = 5.0  # then the pop says directory_unavailable instead of waiting on a stuck database
MAX_PENDING = 500  # lookups in flight per instance; beyond this the database is not keeping up
GATHER_S = 0.05  # a batch waits this long for other calls' lookups (a pop comes seconds later, at the bridge)
BATCH = 100  # lookups per query
CONCURRENT_BATCHES = 4  # batches in flight: a slow query does not hold every other lookup behind it

# CALLER_SET — store a lookup's answer; re-send the pop of that call if one is out without it.
#   ARGV: the presence header (now, day, grace, wrap, stream maxlen), ARGV[6] CallSid, ARGV[7] the JSON
#   answer, ARGV[8] TTL ms, ARGV[9] "1" = only if no answer is stored yet (the bridge's fallback lookup).
#   Returns 1 if a pop was re-sent, 0 if not, -1 if an answer was already there (ARGV[9] = "1").
CALLER_SET = build_script("""
local sid = ARGV[6]
local ck = PREFIX .. 'caller:' .. sid
if ARGV[9] == '1' and redis.call('EXISTS', ck) == 1 then return -1 end
redis.call('SET', ck, ARGV[7], 'PX', tonumber(ARGV[8]))
local agent = redis.call('HGET', PREFIX .. 'call:' .. sid, 'agent')
if not agent then return 0 end
local pk = PREFIX .. 'pop:' .. agent
local raw = redis.call('GET', pk)
if not raw then return 0 end
local pop = cmsgpack.unpack(raw)
if pop.call_sid ~= sid then return 0 end
local info = cjson.decode(ARGV[7])
pop.customers = info.customers
pop.withheld = info.withheld
pop.directory_unavailable = info.directory_unavailable
pop.lookup_pending = nil
local ttl = redis.call('PTTL', pk)
if ttl > 0 then
  redis.call('SET', pk, cmsgpack.pack(pop), 'PX', ttl)
else
  redis.call('SET', pk, cmsgpack.pack(pop))
end
emit('pop', agent, pop)
return 1
""")


def caller_info(caller: str, customers: list[dict[str, Any]], config: Config, *, withheld: bool = False,
                unavailable: bool = False) -> dict[str, Any]:
    """The cb:caller JSON (pure). owner: the first listed customer's (most recently updated first) that has one;
    owner_team: that owner's team, else the first listed customer's team."""
    owner = next((c["owner"] for c in customers if c.get("owner")), None)
    agent = config.agent(owner) if owner else None
    owner_team = agent.team if agent else next((c["team"] for c in customers if c.get("team")), None)
    info: dict[str, Any] = {"withheld": withheld, "customers": customers, "owner": owner, "owner_team": owner_team}
    if unavailable:
        info["directory_unavailable"] = True
    return info


@dataclass(slots=True)
class _Job:
    call_sid: str
    caller: str
    only_if_missing: bool
    overloaded: bool


class CallerLookup:
    """Queues lookups (never awaited by a webhook), answers them in batches, bounded per instance."""

    def __init__(self, db: Database | None, redis: Redis, presence: PresenceStore, config: Config,
                 clock: Clock) -> None:
        self.db = db
        self.redis = redis
        self.presence = presence
        self.config = config
        self.clock = clock
        self._script = redis.register_script(CALLER_SET)
        self._pending: dict[str, _Job] = {}  # queued or being looked up, by CallSid
        self._queue: deque[_Job] = deque()
        self._tasks: set[asyncio.Task[None]] = set()
        self._draining = 0  # _drain tasks not yet past their last look at the queue
        self._gathering = 0  # of those, the ones still waiting GATHER_S: a new lookup joins their batch
        self.done = 0  # finished lookups, for tests and logs

    def start(self, call_sid: str, caller: str, *, only_if_missing: bool = False) -> None:
        """Look `caller` up for `call_sid` in the background (idempotent while one is in flight)."""
        if call_sid in self._pending:
            return
        overloaded = len(self._pending) >= MAX_PENDING
        if overloaded:
            log.warning("caller lookup: %d lookups in flight; %s gets directory_unavailable", MAX_PENDING, call_sid)
        job = _Job(call_sid, caller, only_if_missing, overloaded)
        self._pending[call_sid] = job
        self._queue.append(job)
        if self._gathering == 0 and self._draining < CONCURRENT_BATCHES:  # else a gathering batch takes it
            self._draining += 1
            self._gathering += 1
            task = asyncio.create_task(self._drain(), name="caller-lookups")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def stop(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def wait_idle(self) -> None:
        """Tests: wait for the lookups in flight."""
        while self._pending:
            if not self._tasks:  # cannot happen (start() makes a task); never spin if it did
                raise RuntimeError(f"{len(self._pending)} caller lookups pending and no task to do them")
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def _drain(self) -> None:
        try:
            try:
                await asyncio.sleep(GATHER_S)  # the webhooks of the next few ms join this batch
            finally:
                self._gathering -= 1
            while self._queue:
                batch = [self._queue.popleft() for _ in range(min(len(self._queue), BATCH))]
                try:
                    await self._run(batch)
                finally:
                    for job in batch:
                        self._pending.pop(job.call_sid, None)
                    self.done += len(batch)
        finally:
            self._draining -= 1  # in the same step as the empty-queue check: start() then makes a new task

    async def lookup(self, caller: str, *, overloaded: bool = False) -> dict[str, Any]:
        return (await self.lookup_many([caller], overloaded=overloaded))[0]

    async def lookup_many(self, callers: list[str], *, overloaded: bool = False) -> list[dict[str, Any]]:
        """The cb:caller answer for each caller, with one directory query for all of them."""
        answers: list[dict[str, Any] | None] = []
        numbers: dict[int, str] = {}
        for i, caller in enumerate(callers):
            if ph.is_withheld(caller):
                answers.append(caller_info(caller, [], self.config, withheld=True))
                continue
            number = ph.try_normalize(caller, self.config.center.default_region)
            if number is None:  # client:alice, a SIP URI, garbage: nobody in the directory has it
                answers.append(caller_info(caller, [], self.config))
            else:
                answers.append(None)
                numbers[i] = number
        if numbers:
            found: dict[str, list[dict[str, Any]]] | None = None
            if not (overloaded or self.db is None or not self.db.migrated):
                found = await self._query(sorted(set(numbers.values())))
            for i, number in numbers.items():
                answers[i] = caller_info(callers[i], [], self.config, unavailable=True) if found is None \
                    else caller_info(callers[i], found[number], self.config)
        return [a for a in answers if a is not None]

    async def _query(self, numbers: list[str]) -> dict[str, list[dict[str, Any]]] | None:
        """{number: customers}, or None when the directory did not answer (down, slow, broken)."""
        assert self.db is not None
        try:
            async with asyncio.timeout(LOOKUP_TIMEOUT_S):
                async with self.db.connect() as conn:
                    return await repo.by_phones(conn, numbers)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - a boundary: any database failure means "unavailable"
            log.warning("caller lookup of %d number(s): directory unavailable (%r)", len(numbers), exc)
            return None

    async def _run(self, batch: list[_Job]) -> None:
        try:
            fallback = [j for j in batch if j.only_if_missing]
            if fallback:  # the bridge's lookup: only where no answer is stored yet
                async with self.redis.pipeline(transaction=False) as pipe:
                    for j in fallback:
                        pipe.exists(keys.caller(j.call_sid))
                    stored = {j.call_sid for j, n in zip(fallback, await pipe.execute(), strict=True) if n}
                batch = [j for j in batch if j.call_sid not in stored]
            answers: list[tuple[_Job, dict[str, Any]]] = []
            for overloaded in (False, True):  # an overloaded lookup never touches the database
                jobs = [j for j in batch if j.overloaded is overloaded]
                if jobs:
                    infos = await self.lookup_many([j.caller for j in jobs], overloaded=overloaded)
                    answers += zip(jobs, infos, strict=True)
            if not answers:
                return
            header = self.presence.header(self.clock.now_ms())
            async with self.redis.pipeline(transaction=False) as pipe:
                for job, info in answers:
                    payload = json.dumps(info, ensure_ascii=False, separators=(",", ":"))
                    await self._script(args=[*header, job.call_sid, payload, CALLER_TTL_MS,
                                             "1" if job.only_if_missing else "0"], client=pipe)
                await pipe.execute()
        except asyncio.CancelledError:
            raise
        except (RedisError, OSError) as exc:
            log.warning("caller lookup for %d call(s) not stored: Redis unavailable (%s); their pops have no customers",
                        len(batch), exc)
        except Exception:
            log.exception("caller lookup for %d call(s) failed", len(batch))
