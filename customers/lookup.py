"""The caller lookup: at `incoming` (and again at `bridge` if it is missing) look the caller's number up in
the directory, in the background, and leave the answer in Redis for the pop and the routing.

The webhook never awaits this: it schedules a task and answers Twilio. The answer goes to Redis in one Lua
call (CALLER_SET) that also re-sends the screen pop when the caller was bridged before the lookup finished,
so the agent gets a first pop at once and a second one (same call_sid) with the customers. A database that
is down or slow gives `customers: []` with `directory_unavailable: true` rather than no answer at all.
"""

from __future__ import annotations

import asyncio
import json
import logging
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


class CallerLookup:
    """Schedules lookups (never awaited by a webhook), bounded per instance, cancelled at shutdown."""

    def __init__(self, db: Database | None, redis: Redis, presence: PresenceStore, config: Config,
                 clock: Clock) -> None:
        self.db = db
        self.redis = redis
        self.presence = presence
        self.config = config
        self.clock = clock
        self._script = redis.register_script(CALLER_SET)
        self._pending: dict[str, asyncio.Task[None]] = {}
        self.done = 0  # finished lookups, for tests and logs

    def start(self, call_sid: str, caller: str, *, only_if_missing: bool = False) -> None:
        """Look `caller` up for `call_sid` in the background (idempotent while one is in flight)."""
        if call_sid in self._pending:
            return
        overloaded = len(self._pending) >= MAX_PENDING
        if overloaded:
            log.warning("caller lookup: %d lookups in flight; %s gets directory_unavailable", MAX_PENDING, call_sid)
        task = asyncio.create_task(self._run(call_sid, caller, only_if_missing, overloaded),
                                   name=f"caller-lookup-{call_sid}")
        self._pending[call_sid] = task
        task.add_done_callback(lambda _t: self._pending.pop(call_sid, None))

    async def stop(self) -> None:
        tasks = list(self._pending.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def wait_idle(self) -> None:
        """Tests: wait for the lookups in flight."""
        while self._pending:
            await asyncio.gather(*list(self._pending.values()), return_exceptions=True)

    async def lookup(self, caller: str, *, overloaded: bool = False) -> dict[str, Any]:
        if ph.is_withheld(caller):
            return caller_info(caller, [], self.config, withheld=True)
        number = ph.try_normalize(caller, self.config.center.default_region)
        if number is None:  # client:alice, a SIP URI, garbage: nobody in the directory has it
            return caller_info(caller, [], self.config)
        if overloaded or self.db is None or not self.db.migrated:
            return caller_info(caller, [], self.config, unavailable=True)
        try:
            async with asyncio.timeout(LOOKUP_TIMEOUT_S):
                async with self.db.connect() as conn:
                    found = await repo.by_phone(conn, number)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - a boundary: any database failure means "unavailable"
            log.warning("caller lookup of %s: directory unavailable (%r)", number, exc)
            return caller_info(caller, [], self.config, unavailable=True)
        return caller_info(caller, found, self.config)

    async def _run(self, call_sid: str, caller: str, only_if_missing: bool, overloaded: bool) -> None:
        try:
            if only_if_missing and await self.redis.exists(keys.caller(call_sid)):
                return
            info = await self.lookup(caller, overloaded=overloaded)
            payload = json.dumps(info, ensure_ascii=False, separators=(",", ":"))
            await self._script(args=[*self.presence.header(self.clock.now_ms()), call_sid, payload,
                                     CALLER_TTL_MS, "1" if only_if_missing else "0"])
        except asyncio.CancelledError:
            raise
        except (RedisError, OSError) as exc:
            log.warning("caller lookup for %s not stored: Redis unavailable (%s); its pop has no customers", call_sid, exc)
        except Exception:
            log.exception("caller lookup for %s failed", call_sid)
        finally:
            self.done += 1
