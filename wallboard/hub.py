"""The fan-out hub: topics, per-tick deltas serialized once per topic and encoding, bounded per-client outboxes.

Flow: the follower applies change-stream entries to the mirror and calls `notify`. The hub collects what
changed and, once per tick (an idle hub at once), computes one merge patch per changed agent and queue
against what it last published, restricts it to each topic, serializes each topic's delta once per
encoding, and appends the same bytes to every subscriber's outbox. Nothing here awaits a socket: each
connection's own writer task drains its outbox (see wallboard/ws.py), so one slow screen never delays
another.

Backpressure, like python-websockets' broadcast(), is not applied to the hub: a subscriber whose outbox
grows past SOFT_PENDING has its pending deltas composed into one (latest state wins, nothing is lost since
a delta carries absolute values), and one still backlogged SLOW_CLOSE_S later is closed with 4429 so it
reconnects and resnapshots.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import msgpack

from callboard.clock import Clock
from wallboard import patch
from wallboard.const import DEFAULT_TICK_MS, SLOW_CLOSE_S, SOFT_PENDING
from wallboard.mirror import Changes, Mirror
from wallboard.patch import without_nulls

log = logging.getLogger(__name__)

ENCODINGS = ("json", "msgpack")
QUEUE_TICK_S = 1.0  # windowed numbers (last_30m, day rollover) move with time even without events


def encode(obj: dict[str, Any], encoding: str) -> str | bytes:
    if encoding == "msgpack":
        return msgpack.packb(obj)
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


@dataclass
class Outgoing:
    obj: dict[str, Any]
    data: str | bytes


class Subscriber:
    """One connection's outbox. The hub appends; the connection's writer task drains with `next()`."""

    def __init__(self, topics: Iterable[str], encoding: str, on_slow: Callable[[], None]) -> None:
        self.topics = frozenset(topics)
        self.encoding = encoding
        self.on_slow = on_slow
        self.outbox: deque[Outgoing] = deque()
        self.ready = asyncio.Event()
        self.backlogged_since: float | None = None
        self.closed = False
        self.serializations = 0  # per-client re-serializations (only when a backlog is merged)

    def push(self, item: Outgoing) -> None:
        if self.closed:
            return
        self.outbox.append(item)
        self.ready.set()
        if len(self.outbox) > SOFT_PENDING:
            self._merge_backlog()
            now = time.monotonic()
            if self.backlogged_since is None:
                self.backlogged_since = now
            elif now - self.backlogged_since > SLOW_CLOSE_S:
                self.closed = True
                self.on_slow()

    def send_now(self, obj: dict[str, Any]) -> None:
        """A message for this subscriber only (welcome, snapshot, error), serialized for it."""
        self.push(Outgoing(obj, encode(obj, self.encoding)))

    async def next(self) -> Outgoing:
        while not self.outbox:
            self.backlogged_since = None
            self.ready.clear()
            await self.ready.wait()
        return self.outbox.popleft()

    def _merge_backlog(self) -> None:
        deltas = [m for m in self.outbox if m.obj.get("type") == "delta"]
        others = [m for m in self.outbox if m.obj.get("type") != "delta"]
        if len(deltas) < 2:
            return
        merged: dict[str, Any] = {}
        for m in deltas:
            merged = patch.compose(merged, m.obj)
        self.serializations += 1
        self.outbox = deque([*others, Outgoing(merged, encode(merged, self.encoding))])


class Hub:
    def __init__(self, mirror: Mirror, clock: Clock, *, tick_ms: int = DEFAULT_TICK_MS) -> None:
        self.mirror = mirror
        self.clock = clock
        self.tick_s = tick_ms / 1000
        self.subscribers: set[Subscriber] = set()
        self._by_topic: dict[str, set[Subscriber]] = {}
        self._published_agents: dict[str, dict[str, Any]] = {}
        self._published_queues: dict[str, dict[str, Any]] = {}
        self._dirty = Changes()
        # static from the config: a connect then costs O(team), not O(all agents)
        self._agent_order = {a.id: i for i, a in enumerate(mirror.config.agents)}
        self._team_agents: dict[str, list[str]] = {}
        for a in mirror.config.agents:
            self._team_agents.setdefault(a.team or "", []).append(a.id)
        self._last_flush = 0.0
        self._scheduled: asyncio.TimerHandle | None = None
        self.serializations = 0  # topic x encoding serializations: the "once per topic per tick" proof
        self.flushes = 0

    # -- subscriptions -------------------------------------------------------------------------------

    def subscribe(self, sub: Subscriber) -> dict[str, Any]:
        """Register and return the snapshot for the subscriber's topics (no await between the two)."""
        self.subscribers.add(sub)
        for topic in sub.topics:
            self._by_topic.setdefault(topic, set()).add(sub)
        return self.snapshot(sub.topics)

    def unsubscribe(self, sub: Subscriber) -> None:
        sub.closed = True
        self.subscribers.discard(sub)
        for topic in sub.topics:
            subs = self._by_topic.get(topic)
            if subs is not None:
                subs.discard(sub)
                if not subs:
                    del self._by_topic[topic]

    def snapshot(self, topics: Iterable[str]) -> dict[str, Any]:
        now_ms = self.clock.now_ms()
        agent_ids, queue_names = self.covered(topics)
        return {
            "type": "snapshot",
            "server_time_ms": now_ms,
            "center": without_nulls(self.mirror.center()),
            "agents": {a: without_nulls(self.mirror.agents[a]) for a in agent_ids},
            "queues": {q: without_nulls(self.mirror.queue_entry(q, now_ms)) for q in queue_names},
        }

    def covered(self, topics: Iterable[str]) -> tuple[list[str], list[str]]:
        """Agent ids and queue names a set of topics covers, in config order."""
        topics = set(topics)
        if "all" in topics:
            return list(self.mirror.agents), [q.name for q in self.mirror.config.queues]
        ids: set[str] = set()
        for topic in topics:
            kind, _, name = topic.partition(":")
            if kind == "agent":
                ids.add(name)
            elif kind == "team":
                ids.update(self._team_agents.get(name, ()))
        order = self._agent_order
        agents = sorted((a for a in ids if a in self.mirror.agents), key=lambda a: order.get(a, len(order)))
        queues = [q.name for q in self.mirror.config.queues if f"queue:{q.name}" in topics]
        return agents, queues

    # -- changes -------------------------------------------------------------------------------------

    def reset_published(self) -> None:
        """Take the mirror as published (start-up); later diffs are against it."""
        now_ms = self.clock.now_ms()
        self._published_agents = {a: dict(e) for a, e in self.mirror.agents.items()}
        self._published_queues = {q.name: self.mirror.queue_entry(q.name, now_ms) for q in self.mirror.config.queues}

    def notify(self, changes: Changes) -> None:
        """Called by the follower after applying entries; pops go out at once, deltas on the tick."""
        for agent_id, pop in changes.pops:
            self._send_topic(f"agent:{agent_id}", pop)
        if not (changes.agents or changes.queues):
            return
        self._dirty.agents |= changes.agents
        self._dirty.queues |= changes.queues
        if self._scheduled is not None:
            return
        loop = asyncio.get_running_loop()
        wait = self._last_flush + self.tick_s - loop.time()
        self._scheduled = loop.call_later(max(wait, 0.0), self.flush)

    def flush(self) -> None:
        """Compute this tick's deltas and hand them to every subscriber. Synchronous: never awaits a socket."""
        self._scheduled = None
        self._last_flush = asyncio.get_running_loop().time()
        dirty, self._dirty = self._dirty, Changes()
        now_ms = self.clock.now_ms()
        agent_patches: dict[str, dict[str, Any]] = {}
        for agent_id in dirty.agents:
            current = self.mirror.agents.get(agent_id)
            if current is None:
                continue
            d = patch.diff(self._published_agents.get(agent_id, {}), current)
            if d:
                agent_patches[agent_id] = d
                self._published_agents[agent_id] = dict(current)
        queue_patches: dict[str, dict[str, Any]] = {}
        for queue in dirty.queues:
            if self.mirror.config.queue(queue) is None:
                continue
            current_q = self.mirror.queue_entry(queue, now_ms)
            d = patch.diff(self._published_queues.get(queue, {}), current_q)
            if d:
                queue_patches[queue] = d
                self._published_queues[queue] = current_q
        if not (agent_patches or queue_patches):
            return
        self.flushes += 1
        by_team: dict[str, dict[str, Any]] = {}
        for agent_id, d in agent_patches.items():
            by_team.setdefault(self.mirror.agents[agent_id]["team"], {})[agent_id] = d
        for topic in list(self._by_topic):
            body = self._topic_patch(topic, agent_patches, queue_patches, by_team)
            if body:
                self._send_topic(topic, {"type": "delta", "server_time_ms": now_ms, **body})

    def tick_queues(self) -> None:
        """Let time-windowed numbers move (called every QUEUE_TICK_S)."""
        moved = self.mirror.queue_stats.tick(self.clock.now_ms())
        if moved:
            self.notify(Changes(queues=set(moved)))

    async def run_queue_ticker(self) -> None:
        while True:
            await asyncio.sleep(QUEUE_TICK_S)
            self.tick_queues()

    def _topic_patch(self, topic: str, agents: dict[str, Any], queues: dict[str, Any],
                     by_team: dict[str, dict[str, Any]]) -> dict[str, Any]:
        if topic == "all":
            body: dict[str, Any] = {}
            if agents:
                body["agents"] = agents
            if queues:
                body["queues"] = queues
            return body
        kind, _, name = topic.partition(":")
        if kind == "agent":
            return {"agents": {name: agents[name]}} if name in agents else {}
        if kind == "team":
            mine = by_team.get(name)
            return {"agents": mine} if mine else {}
        if kind == "queue":
            return {"queues": {name: queues[name]}} if name in queues else {}
        return {}

    def _send_topic(self, topic: str, obj: dict[str, Any]) -> None:
        subs = self._by_topic.get(topic)
        if not subs:
            return
        encoded: dict[str, str | bytes] = {}
        for sub in list(subs):
            data = encoded.get(sub.encoding)
            if data is None:
                data = encoded[sub.encoding] = encode(obj, sub.encoding)
                self.serializations += 1
            sub.push(Outgoing(obj, data))
