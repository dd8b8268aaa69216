"""Presence in Redis: every write is one Lua call (see presence/lua.py); reads are one round trip."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import msgpack
from redis.asyncio import Redis

from callboard import keys
from presence import lua
from presence.rules import AgentRecord, Intent, Settings

_RECORD_FIELDS = set(AgentRecord.__dataclass_fields__)


class Addressed(NamedTuple):
    """An intent for one agent; connect/disconnect also name the connection and its instance (a NamedTuple:
    one is built per flushed intent, see presence.rules.Intent)."""

    agent_id: str
    intent: Intent
    conn: str | None = None
    instance: str | None = None


def decode_record(raw: bytes | None) -> AgentRecord:
    """Stored msgpack -> AgentRecord; a missing record is an offline agent."""
    if raw is None:
        return AgentRecord()
    data = msgpack.unpackb(raw, raw=False)
    return AgentRecord(**{k: v for k, v in data.items() if k in _RECORD_FIELDS})


def encode_record(rec: AgentRecord) -> bytes:
    data = {k: getattr(rec, k) for k in _RECORD_FIELDS if getattr(rec, k) is not None}
    return msgpack.packb(data)


class PresenceStore:
    """The presence side of Redis. `day_key` maps now_ms to the `today` window key used by statistics."""

    def __init__(
        self,
        redis: Redis,
        settings: Settings,
        *,
        day_key: Callable[[int], str],
        stream_max_len: int = 100_000,
        handled_hook: str = lua.NO_HANDLED_HOOK,
    ) -> None:
        self.redis = redis
        self.settings = settings
        self.day_key = day_key
        self.stream_max_len = stream_max_len
        self._apply = redis.register_script(lua.build_script(lua.APPLY_INTENTS_BODY, handled_hook))
        self._sweep = redis.register_script(lua.build_script(lua.SWEEP_BODY, handled_hook))
        self._heartbeat = redis.register_script(lua.HEARTBEAT)
        self._release = redis.register_script(lua.build_script(lua.RELEASE_BODY, handled_hook))
        self.lua_calls = 0  # every script call, for the batching ratio

    def header(self, now_ms: int) -> list[Any]:
        """The ARGV header every presence script starts with (see presence/lua.py)."""
        return [now_ms, self.day_key(now_ms), self.settings.disconnect_grace_s * 1000,
                self.settings.wrap_up_s * 1000, self.stream_max_len]

    async def apply(self, items: Iterable[Addressed], now_ms: int) -> list[str | None]:
        """Apply intents in order in one atomic call; returns one error code (or None) per intent."""
        payload = [_wire(item) for item in items]
        if not payload:
            return []
        self.lua_calls += 1
        raw = await self._apply(args=[*self.header(now_ms), msgpack.packb(payload)])
        return [r or None for r in msgpack.unpackb(raw, raw=False)]

    async def sweep(self, now_ms: int, max_timers: int = 1000) -> tuple[int, int, int]:
        """Reap expired instances and fire due timers; returns (instances, connections, timers)."""
        self.lua_calls += 1
        reaped, conns, fired = await self._sweep(args=[*self.header(now_ms), max_timers])
        return int(reaped), int(conns), int(fired)

    async def heartbeat(self, instance: str, expires_ms: int) -> bool:
        """Renew the lease; True when it had to be created (connections must be registered again)."""
        self.lua_calls += 1
        return bool(await self._heartbeat(args=[instance, expires_ms]))

    async def release(self, instance: str, now_ms: int) -> int:
        """Give up the lease; connections still registered are disconnected (returns how many)."""
        self.lua_calls += 1
        return int(await self._release(args=[*self.header(now_ms), instance]))

    async def read_agents(self) -> dict[str, AgentRecord]:
        """All agent records in one round trip."""
        raw = await self.redis.hgetall(keys.AGENTS)
        return {_text(k): decode_record(v) for k, v in raw.items()}

    async def read_agent(self, agent_id: str) -> AgentRecord:
        return decode_record(await self.redis.hget(keys.AGENTS, agent_id))


def _wire(item: Addressed) -> dict[str, Any]:
    it = item.intent
    data: dict[str, Any] = {"a": item.agent_id, "kind": it.kind, "actor": it.actor}
    if it.state is not None:
        data["state"] = it.state
    if it.reason is not None:
        data["reason"] = it.reason
    if it.call is not None:
        data["call"] = it.call
    if it.seq is not None:
        data["seq"] = it.seq
    if item.conn is not None:
        data["conn"] = item.conn
    if item.instance is not None:
        data["inst"] = item.instance
    return data


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
