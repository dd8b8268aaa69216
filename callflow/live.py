"""The in-memory view of queue statistics that every instance keeps from Redis and the change stream.

`load` reads everything a snapshot needs in one pipeline; `apply` takes one stream entry of kind "queue",
whose payload carries absolute values (the full counters of the touched day hash and minute bucket, and the
full waiting info), so applying an entry twice, or after a resync, changes nothing. `tick` reports the
queues whose numbers changed only because time passed.

Stream payload (see callflow/lua.py emit_queue):
    {"waiting": int, "oldest_ms": int (0 = nobody waiting), "waiting_ms"?: [enqueue ms of the oldest 50],
     "day"?: "yyyy-mm-dd", "today"?: {counter: int}, "minute"?: epoch minute, "bucket"?: {counter: int}}
"""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis

from callboard import keys
from callboard.clock import Clock
from callboard.config import Config
from callflow.stats import add_counters, stats_from_counters
from callflow.windows import LAST_WINDOW_MINUTES, day_key, epoch_minute

# How many waiting callers' enqueue times a queue's snapshot carries (the same 50 as emit_queue's Lua).
WAITING_LIST_MAX = 50


class _QueueState:
    __slots__ = ("waiting", "oldest_ms", "days", "minutes", "waiting_ms")

    def __init__(self) -> None:
        self.waiting = 0
        self.oldest_ms: int | None = None
        self.waiting_ms: list[int] = []  # enqueue times of the oldest WAITING_LIST_MAX callers, oldest first
        self.days: dict[str, dict[str, int]] = {}
        self.minutes: dict[int, dict[str, int]] = {}


def _counters(raw: Any) -> dict[str, int]:
    """A Redis hash or a msgpack map of counters -> {name: int}; cmsgpack sends an empty map as []."""
    if not raw:
        return {}
    out: dict[str, int] = {}
    for name, value in raw.items():
        key = name.decode() if isinstance(name, bytes) else str(name)
        out[key] = int(float(value))
    return out


class QueueStatsMirror:
    """Per-queue waiting info, today's counters and the last_30m minute buckets, kept in memory."""

    def __init__(self, config: Config, clock: Clock) -> None:
        self.config = config
        self.clock = clock
        self._queues: dict[str, _QueueState] = {q.name: _QueueState() for q in config.queues}
        self._ticked: tuple[str, int] | None = None  # (day key, first minute of the window) at the last tick

    def _window(self, now_ms: int) -> tuple[str, int]:
        center = self.config.center
        return day_key(now_ms, center.timezone, center.reset_time), epoch_minute(now_ms) - LAST_WINDOW_MINUTES + 1

    async def load(self, redis: Redis) -> None:
        """Full read, in one pipeline, of what snapshot() needs now (start-up and resync)."""
        now_ms = self.clock.now_ms()
        day, first_minute = self._window(now_ms)
        minutes = list(range(first_minute, first_minute + LAST_WINDOW_MINUTES))
        names = list(self._queues)
        pipe = redis.pipeline(transaction=False)
        for name in names:
            pipe.zcard(keys.queue_waiting(name))
            pipe.zrange(keys.queue_waiting(name), 0, WAITING_LIST_MAX - 1, withscores=True)
            pipe.hgetall(keys.queue_day(name, day))
            for minute in minutes:
                pipe.hgetall(keys.queue_minute(name, minute))
        results = await pipe.execute()
        per_queue = 3 + len(minutes)
        for i, name in enumerate(names):
            chunk = results[i * per_queue:(i + 1) * per_queue]
            state = _QueueState()
            state.waiting = int(chunk[0])
            state.oldest_ms = int(chunk[1][0][1]) if chunk[1] else None
            state.waiting_ms = [int(score) for _, score in chunk[1]]
            state.days[day] = _counters(chunk[2])
            for minute, raw in zip(minutes, chunk[3:], strict=True):
                if raw:
                    state.minutes[minute] = _counters(raw)
            self._queues[name] = state
        self._ticked = (day, first_minute)

    def apply(self, queue: str, payload: dict[str, Any]) -> None:
        """One change-stream entry of kind "queue" (absolute values: idempotent)."""
        state = self._queues.get(queue)
        if state is None:
            return  # a queue no longer in the config
        state.waiting = int(payload.get("waiting", 0))
        state.oldest_ms = int(payload.get("oldest_ms") or 0) or None
        if "waiting_ms" in payload:  # cmsgpack sends an empty Lua table as {}: no callers
            state.waiting_ms = [int(ms) for ms in (payload["waiting_ms"] or ())][:WAITING_LIST_MAX]
        elif not state.waiting:
            state.waiting_ms = []
        if payload.get("day") is not None:
            state.days[str(payload["day"])] = _counters(payload.get("today"))
            for old in sorted(state.days)[:-2]:  # keep the current window and the one before
                del state.days[old]
        if payload.get("minute") is not None:
            state.minutes[int(payload["minute"])] = _counters(payload.get("bucket"))

    def snapshot(self, queue: str, now_ms: int) -> dict[str, Any]:
        """{"waiting", "oldest_enqueued_ms", "waiting_enqueued_ms", "today", "last_30m"} with every field of the contract's table."""
        state = self._queues.get(queue) or _QueueState()
        day, first_minute = self._window(now_ms)
        last = add_counters(c for m, c in state.minutes.items() if m >= first_minute)
        return {
            "waiting": state.waiting,
            "oldest_enqueued_ms": state.oldest_ms,
            "waiting_enqueued_ms": list(state.waiting_ms),
            "today": stats_from_counters(state.days.get(day, {})),
            "last_30m": stats_from_counters(last),
        }

    def tick(self, now_ms: int) -> set[str]:
        """Queues whose snapshot changed only because time passed (day rollover, buckets sliding out)."""
        day, first_minute = self._window(now_ms)
        previous = self._ticked
        self._ticked = (day, first_minute)
        if previous is None or previous == (day, first_minute):
            return set()
        changed: set[str] = set()
        for name, state in self._queues.items():
            if previous[0] != day and (state.days.get(previous[0]) or state.days.get(day)):
                changed.add(name)
            gone = [m for m in state.minutes if m < first_minute]
            if any(m >= previous[1] and any(state.minutes[m].values()) for m in gone):
                changed.add(name)
            for m in gone:
                del state.minutes[m]
        return changed
