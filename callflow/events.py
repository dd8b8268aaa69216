"""Call events and the store that applies them to Redis, one atomic Lua call each (see callflow/lua.py).

A CallEvent carries its own time (the moment the webhook arrived), so an event spooled during a Redis
outage and applied later counts exactly as it would have on time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgpack
from redis.asyncio import Redis

from callboard.config import Config
from callflow import lua
from presence.store import PresenceStore

INCOMING, BRIDGE, QUEUE_RESULT, STATUS, AGENT_LEG = "incoming", "bridge", "queue_result", "status", "agent_leg"


@dataclass(frozen=True, slots=True)
class CallEvent:
    """One Twilio fact: `kind`, the event's time, and its fields (sid, queue, agent, leg, qt_s, ...)."""

    kind: str
    now_ms: int
    fields: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Applied:
    """What the script did: counted is True only the first time (metrics are observed only then)."""

    counted: bool
    mode: str | None = None
    queue: str | None = None
    outcome: str | None = None
    qt_ms: int | None = None  # None when counted with an unknown wait (see stats.ANSWERED_WAIT_UNKNOWN)
    handled: tuple[tuple[str, int], ...] = ()
    qt_refused: str | None = None  # why Twilio's QueueTime was not believed (stats.bounded_queue_time_ms)
    qt_given_s: int | None = None  # the refused QueueTime


class CallStore:
    """Applies call events; the presence store supplies the shared ARGV header."""

    def __init__(self, redis: Redis, presence: PresenceStore, config: Config) -> None:
        self.presence = presence
        self.redis = redis
        self._script = redis.register_script(lua.CALL_EVENT)
        center = config.center
        self._settings = msgpack.packb({
            "sl_ms": center.sl_threshold_s * 1000,
            "short_ms": center.short_abandon_s * 1000,
            "ttl_ms": max(center.call_retention_days, 1) * 86_400_000,
        })

    async def apply(self, event: CallEvent) -> Applied:
        payload = {"kind": event.kind, **{k: v for k, v in event.fields.items() if v is not None}}
        raw = await self._script(args=[*self.presence.header(event.now_ms), msgpack.packb(payload), self._settings])
        out = msgpack.unpackb(raw, raw=False)
        handled = out.get("handled") or []
        return Applied(
            counted=bool(out.get("counted")),
            mode=out.get("mode"),
            queue=out.get("queue"),
            outcome=out.get("outcome"),
            qt_ms=None if out.get("qt_ms") is None else int(out["qt_ms"]),
            handled=tuple((str(q), int(ms)) for q, ms in handled),
            qt_refused=out.get("qt_refused"),
            qt_given_s=None if out.get("qt_given_s") is None else int(out["qt_given_s"]),
        )
