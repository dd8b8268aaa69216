"""Follows the change stream into the mirror and tells the hub what changed.

Start-up and recovery read the whole state once (a resync): the stream's newest id first, then agents and
queues, then follow from that id. Entries carry absolute values, so an entry applied twice (it happened
between the id read and the state read) is harmless. After a Redis error the follower resumes from its last
id when the stream still holds it; when that id was trimmed away, or the stream went back in time (a Redis
that lost its data), it resyncs.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import msgpack
from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from callboard import keys
from callboard.clock import Clock
from presence.store import PresenceStore
from routing.messages import load_offer_state
from wallboard.hub import Hub
from wallboard.mirror import Changes, Mirror

log = logging.getLogger(__name__)

BLOCK_MS = 5000  # one XREAD blocks at most this long, so cancellation and lag metrics stay responsive
READ_COUNT = 5000  # entries per XREAD: a burst of thousands is applied and published in one tick
RETRY_S = 0.5


def _id_tuple(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


class Follower:
    def __init__(self, redis: Redis, presence: PresenceStore, mirror: Mirror, hub: Hub, clock: Clock,
                 on_redis_error: Callable[[BaseException], None] | None = None) -> None:
        self.redis = redis
        self.presence = presence
        self.mirror = mirror
        self.hub = hub
        self.clock = clock
        self.on_redis_error = on_redis_error
        self.last_id = "0-0"
        self.caught_up = asyncio.Event()  # set after the first resync and whenever reads return promptly
        self.last_entry_ms = 0
        self.applied_lag_s = 0.0  # write-to-mirror delay of the newest applied entry
        self.resyncs = 0

    async def resync(self) -> None:
        """Read the whole state and take it as the mirror; the hub publishes whatever differs."""
        newest = await self.redis.xrevrange(keys.CHANGES, count=1)
        last_id = newest[0][0].decode() if newest else "0-0"
        records = await self.presence.read_agents()
        await self.mirror.queue_stats.load(self.redis)
        self.mirror.reset_agents(records)
        pops = await self._read_pops()
        self.mirror.pops = pops
        # routing: open offers (ringing) and today's missed offers
        await load_offer_state(self.redis, self.mirror, self.presence.day_key(self.clock.now_ms()))
        self.last_id = last_id
        self.resyncs += 1
        changes = Changes(agents=set(self.mirror.agents), queues={q.name for q in self.mirror.config.queues})
        self.hub.notify(changes)

    async def _read_pops(self) -> dict[str, dict[str, Any]]:
        agent_ids = list(self.mirror.agents)
        if not agent_ids:
            return {}
        raw = await self.redis.mget([keys.agent_pop(a) for a in agent_ids])
        return {a: msgpack.unpackb(v, raw=False) for a, v in zip(agent_ids, raw, strict=True) if v is not None}

    async def _id_still_valid(self) -> bool:
        """After an error: is our last id still inside the stream (not trimmed, not from a lost past)?"""
        try:
            info = await self.redis.xinfo_stream(keys.CHANGES)
        except ResponseError:  # no such key: Redis lost its data or nothing was written yet
            return self.last_id == "0-0"
        first = info.get("first-entry")
        last_generated = info.get("last-generated-id")
        if isinstance(last_generated, bytes):
            last_generated = last_generated.decode()
        mine = _id_tuple(self.last_id)
        if last_generated and _id_tuple(last_generated) < mine:
            return False
        if first:
            first_id = first[0].decode() if isinstance(first[0], bytes) else first[0]
            # the stream no longer reaches back to our id: entries we never saw may have been trimmed
            if _id_tuple(first_id) > mine and self.last_id != "0-0":
                return False
        return True

    async def run(self) -> None:
        need_resync = True
        while True:
            try:
                if need_resync:
                    await self.resync()
                    need_resync = False
                    self.caught_up.set()
                reply = await self.redis.xread({keys.CHANGES: self.last_id}, count=READ_COUNT, block=BLOCK_MS)
                self.caught_up.set()
                if reply:
                    self._apply(reply[0][1])
            except (RedisError, OSError) as exc:
                self.caught_up.clear()
                if self.on_redis_error:
                    self.on_redis_error(exc)
                log.warning("change stream read failed: %s; retrying", exc)
                await asyncio.sleep(RETRY_S)
                try:
                    need_resync = need_resync or not await self._id_still_valid()
                except (RedisError, OSError):
                    need_resync = True

    def _apply(self, entries: list[tuple[bytes, dict[bytes, bytes]]]) -> None:
        changes = Changes()
        apply_entry, unpackb = self.mirror.apply_entry, msgpack.unpackb
        for entry_id, fields in entries:
            kind = fields[b"k"].decode()
            ident = fields[b"id"].decode()
            try:
                data = unpackb(fields[b"d"], raw=False)
            except (ValueError, msgpack.ExtraData) as exc:
                log.error("undecodable change %s (%s %s): %s", entry_id.decode(), kind, ident, exc)
                continue
            if not isinstance(data, dict):
                data = {}
            apply_entry(kind, ident, data, changes)
        if entries:  # synchronous from here to there: only the last id is ever read
            self.last_id = entries[-1][0].decode()
        self.last_entry_ms = _id_tuple(self.last_id)[0]
        self.applied_lag_s = max(self.clock.now_ms() - self.last_entry_ms, 0) / 1000
        if changes:
            self.hub.notify(changes)

    def lag_s(self) -> float:
        """Write-to-mirror delay of the newest applied entry; +Inf while the stream cannot be read."""
        return self.applied_lag_s if self.caught_up.is_set() else float("inf")
