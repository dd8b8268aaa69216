"""The fan-out hub: topics, deltas serialized and framed once per topic and encoding, direct writes.

Flow: the follower applies change-stream entries to the mirror and calls `notify`. The hub collects what
changed and flushes at once when idle (at the end of the current loop turn), or, while busy, at most once
per tick: it computes one merge patch per changed agent and queue against what it last published, builds
the delta of each topic those touch (work proportional to what changed, never to the number of topics),
serializes and frames it once per encoding, and writes the same bytes to every subscriber's transport.

Nothing here awaits a socket and no connection has a writer task: a subscriber whose peer has taken
everything gets the frame written at once; one whose peer still owes more than WRITE_BUFFER_HIGH bytes
(asyncio's buffer plus the kernel's unsent bytes) has it queued in its outbox, where pending deltas are
composed into one (latest state wins, nothing is lost since a delta carries absolute values) — it coalesces
only while its previous frames are still going. The hub's drain timer writes outboxes as peers catch up and
closes with 4429 a peer that owes more than WRITE_BUFFER_HIGH and took less than that in SLOW_CLOSE_S (or
whose outbox stayed over SOFT_PENDING that long). Backpressure, like python-websockets' broadcast(), is
never applied to the hub itself: one slow screen never delays another.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import struct
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

import msgpack

from callboard.clock import Clock
from wallboard import patch
from wallboard.const import (
    DEFAULT_TICK_MS,
    SLOW_CLOSE_S,
    SOFT_PENDING,
    WRITE_BUFFER_HIGH,
    WRITE_BUFFER_POLL_S,
)
from wallboard.mirror import Changes, Mirror
from wallboard.patch import without_nulls

log = logging.getLogger(__name__)

ENCODINGS = ("json", "msgpack")
QUEUE_TICK_S = 1.0  # windowed numbers (last_30m, day rollover) move with time even without events
_SIOCOUTQNSD = 0x894B  # Linux: bytes in a socket's send queue not yet sent (the peer's window is closed)
_INT = b"\0\0\0\0"


def encode(obj: dict[str, Any], encoding: str) -> str | bytes:
    if encoding == "msgpack":
        return msgpack.packb(obj)
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


_SNAPSHOT_STUB: dict[str, Any] = {"type": "snapshot"}  # the object of a pre-encoded snapshot (never merged)


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def ws_frame(data: str | bytes) -> bytes:
    """One unmasked, uncompressed, final websocket frame (RFC 6455 5.2): text for str, binary for bytes."""
    if isinstance(data, str):
        payload, first = data.encode(), 0x81
    else:
        payload, first = data, 0x82
    n = len(payload)
    if n < 126:
        return bytes((first, n)) + payload
    if n < 65536:
        return struct.pack("!BBH", first, 126, n) + payload
    return struct.pack("!BBQ", first, 127, n) + payload


def owed_bytes(transport: Any) -> int:
    """Bytes handed to this connection that the peer has not taken: asyncio's buffer plus the kernel's unsent."""
    if transport is None:
        return 0
    owed = transport.get_write_buffer_size()
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            owed += struct.unpack("i", fcntl.ioctl(sock.fileno(), _SIOCOUTQNSD, _INT))[0]
        except (OSError, ValueError):  # not Linux, or already closed: asyncio's part is what we know
            pass
    return owed


class Outgoing:
    """One message: its object (for merging a backlog), its encoded form, and its frame (built once)."""

    __slots__ = ("obj", "data", "_frame")

    def __init__(self, obj: dict[str, Any], data: str | bytes) -> None:
        self.obj = obj
        self.data = data
        self._frame: bytes | None = None

    @property
    def frame(self) -> bytes:
        if self._frame is None:
            self._frame = ws_frame(self.data)
        return self._frame


class Subscriber:
    """One connection's view of the hub: its topics, and its outbox while its peer is behind.

    With a transport, messages are written to it directly (see the module docstring). Without one (unit
    tests, tools) every message is kept in `outbox` for the caller to read.
    """

    __slots__ = ("topics", "encoding", "on_slow", "transport", "outbox", "backlogged_since", "closed",
                 "serializations", "sent", "waiting", "owed_since", "owed_mark", "hub")

    def __init__(self, topics: Iterable[str], encoding: str, on_slow: Callable[[], None], transport: Any = None) -> None:
        self.topics = frozenset(topics)
        self.encoding = encoding
        self.on_slow = on_slow
        self.transport = transport
        # A deque only while there is something to hold (or without a transport): 760 bytes per connection saved.
        self.outbox: deque[Outgoing] | tuple[()] = deque() if transport is None else ()
        self.backlogged_since: float | None = None
        self.closed = False
        self.serializations = 0  # per-client re-serializations (only when a backlog is merged)
        self.sent = 0
        self.waiting = False  # the peer owes more than WRITE_BUFFER_HIGH: queue, do not write
        self.owed_since: float | None = None
        self.owed_mark = 0
        self.hub: Hub | None = None

    def push(self, item: Outgoing) -> None:
        if self.closed:
            return
        transport = self.transport
        if transport is not None and not self.waiting and not self.outbox:
            if transport.is_closing():
                return
            transport.write(item.frame)
            self.sent += 1
            # The kernel's unsent bytes cost a syscall to read: look every 8th frame, and at once when asyncio
            # already buffers (the kernel is full). A peer that stops reading is still seen within 8 frames.
            if (transport.get_write_buffer_size() or not self.sent & 7) and owed_bytes(transport) > WRITE_BUFFER_HIGH:
                self._start_waiting()
            return
        if not isinstance(self.outbox, deque):
            self.outbox = deque()
        self.outbox.append(item)
        if len(self.outbox) > SOFT_PENDING:
            self._merge_backlog()
            now = time.monotonic()
            if self.backlogged_since is None:
                self.backlogged_since = now
            elif now - self.backlogged_since > SLOW_CLOSE_S:
                self._judged_slow()

    def push_all(self, items: list[Outgoing]) -> None:
        """Several messages in a row (a new connection's welcome and snapshot): one write, one syscall."""
        transport = self.transport
        if transport is None or self.waiting or self.outbox or self.closed:
            for item in items:
                self.push(item)
            return
        if transport.is_closing():
            return
        frames = [item.frame for item in items]
        if sum(map(len, frames)) <= 65536:
            transport.write(b"".join(frames))
        else:  # a wallboard's snapshot is megabytes: a copy into one buffer would cost more than a syscall
            for frame in frames:
                transport.write(frame)
        before = self.sent
        self.sent += len(items)
        # push's rule: look at the kernel's unsent bytes whenever asyncio buffers, and every 8th frame
        if ((transport.get_write_buffer_size() or before >> 3 != self.sent >> 3)
                and owed_bytes(transport) > WRITE_BUFFER_HIGH):
            self._start_waiting()

    def send_now(self, obj: dict[str, Any]) -> None:
        """A message for this subscriber only (welcome, snapshot, error), serialized for it."""
        self.push(Outgoing(obj, encode(obj, self.encoding)))

    def flush_owed(self) -> None:
        """Write everything still queued, whatever the peer owes (before a close that explains itself)."""
        transport, outbox = self.transport, self.outbox
        while outbox and isinstance(outbox, deque) and transport is not None and not transport.is_closing():
            transport.write(outbox.popleft().frame)
            self.sent += 1

    def pump(self, now: float) -> bool:
        """Called by the hub's drain timer while waiting: write what the peer has room for, judge slowness.

        True when done with this subscriber (caught up, closed, or judged too slow).
        """
        transport = self.transport
        if self.closed or transport is None or transport.is_closing():
            return True
        owed = owed_bytes(transport)
        if owed <= WRITE_BUFFER_HIGH:
            outbox = self.outbox
            while outbox and isinstance(outbox, deque) and owed <= WRITE_BUFFER_HIGH:
                transport.write(outbox.popleft().frame)
                self.sent += 1
                owed = owed_bytes(transport)
            if owed <= WRITE_BUFFER_HIGH:
                self.waiting = False
                self.owed_since = self.backlogged_since = None
                self.outbox = ()
                return True
            self.owed_since, self.owed_mark = now, owed
            return False
        if self.owed_since is None or owed + WRITE_BUFFER_HIGH <= self.owed_mark:
            self.owed_since, self.owed_mark = now, owed  # first look, or it took a fair amount: reading
            return False
        if now - self.owed_since > SLOW_CLOSE_S:
            self._judged_slow()
            return True
        return False

    def _start_waiting(self) -> None:
        self.waiting = True
        if self.hub is not None:
            self.hub.watch(self)

    def _judged_slow(self) -> None:
        self.closed = True
        self.outbox = ()
        self.on_slow()

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
        self._scheduled: asyncio.TimerHandle | asyncio.Handle | None = None
        self._agent_json: dict[str, str] = {}  # agent id -> '"id":{...}' of its snapshot entry, until it changes
        # Whole JSON snapshots shared by subscribers that cover the same agents and queues (a team's agents
        # connecting together): kept until the next flush that publishes a change, and at most one tick
        # (server_time_ms, windows).
        self._snapshots: dict[frozenset[str], Outgoing] = {}
        self._snapshots_timer: asyncio.TimerHandle | None = None
        self._team_of = {a.id: a.team for a in mirror.config.agents}
        self.snapshots_shared = 0
        self._owing: set[Subscriber] = set()  # subscribers whose peer is behind, pumped by the drain timer
        self._drain_timer: asyncio.TimerHandle | None = None
        self.on_sent: Callable[[int], None] | None = None  # counts messages written (the metric)
        self.serializations = 0  # topic x encoding serializations: the "once per topic per flush" proof
        self.flushes = 0

    # -- subscriptions -------------------------------------------------------------------------------

    def subscribe(self, sub: Subscriber) -> dict[str, Any]:
        """Register and return the snapshot for the subscriber's topics (no await between the two)."""
        self.subscribers.add(sub)
        sub.hub = self
        for topic in sub.topics:
            self._by_topic.setdefault(topic, set()).add(sub)
        return self.snapshot(sub.topics)

    def unsubscribe(self, sub: Subscriber) -> None:
        sub.closed = True
        sub.hub = None
        self._owing.discard(sub)
        self.subscribers.discard(sub)
        for topic in sub.topics:
            subs = self._by_topic.get(topic)
            if subs is not None:
                subs.discard(sub)
                if not subs:
                    del self._by_topic[topic]

    def snapshot(self, topics: Iterable[str]) -> dict[str, Any]:
        """The published state of these topics: what the deltas of the next flush are computed against.

        Never the mirror's state of the moment: between the follower's notify and the flush (up to a tick)
        the mirror is ahead of what was published, and a change that comes and goes within that tick (an
        offer accepted a few ms after it rang: `ringing` true, then false) yields no delta at all. A snapshot
        taken from the mirror in between would keep the passing value for good; taken from the published
        state, the next flush's delta brings it to the mirror's, as for every other subscriber.
        """
        now_ms = self.clock.now_ms()
        agent_ids, queue_names = self.covered(topics)
        return {
            "type": "snapshot",
            "server_time_ms": now_ms,
            "center": without_nulls(self.mirror.center()),
            "agents": {a: without_nulls(self._published_agent(a)) for a in agent_ids},
            "queues": {q: without_nulls(self._published_queue(q, now_ms)) for q in queue_names},
        }

    def _published_agent(self, agent_id: str) -> dict[str, Any]:
        published = self._published_agents.get(agent_id)
        return published if published is not None else self.mirror.agents[agent_id]

    def _published_queue(self, queue: str, now_ms: int) -> dict[str, Any]:
        published = self._published_queues.get(queue)
        return published if published is not None else self.mirror.queue_entry(queue, now_ms)

    def snapshot_json(self, topics: Iterable[str]) -> str:
        """`snapshot(topics)` as JSON text, identical to encode(snapshot, "json"), built from per-agent JSON
        fragments kept until the agent changes: a 10,000-agent wallboard snapshot is then a join of cached
        strings, not a rebuild and a dumps of 1.4 MB, and it stays so under load (only changed agents are
        serialized again)."""
        now_ms = self.clock.now_ms()
        agent_ids, queue_names = self.covered(topics)
        fragments = self._agent_json
        parts = []
        for agent_id in agent_ids:
            fragment = fragments.get(agent_id)
            if fragment is None:
                fragment = fragments[agent_id] = (_dumps(agent_id) + ":"
                                                  + _dumps(without_nulls(self._published_agent(agent_id))))
            parts.append(fragment)
        queues = _dumps({q: without_nulls(self._published_queue(q, now_ms)) for q in queue_names})
        center = _dumps(without_nulls(self.mirror.center()))
        return (f'{{"type":"snapshot","server_time_ms":{now_ms},"center":{center},'
                f'"agents":{{{",".join(parts)}}},"queues":{queues}}}')

    def subscribe_message(self, sub: Subscriber) -> Outgoing:
        """Register and return the subscriber's snapshot, encoded for it (JSON from the fragment cache)."""
        self.subscribers.add(sub)
        sub.hub = self
        for topic in sub.topics:
            self._by_topic.setdefault(topic, set()).add(sub)
        if sub.encoding == "json":
            return self.shared_snapshot_message(sub.topics)
        snapshot = self.snapshot(sub.topics)
        return Outgoing(snapshot, encode(snapshot, sub.encoding))

    def shared_snapshot_json(self, topics: frozenset[str]) -> str:
        return self.shared_snapshot_message(topics).data  # type: ignore[return-value]

    def shared_snapshot_message(self, topics: frozenset[str]) -> Outgoing:
        """`snapshot_json(topics)` as a message, built and framed once for every subscriber covering the same
        agents and queues.

        In a connect storm a team's agents connect together, and each agent's topics differ only by its own
        `agent:` topic, which its team topic already covers; wallboards all cover everything, and their
        frame is megabytes (50 wallboards framing 1.7 MB each in one loop turn stalled it for 0.2 s). The
        message is shared until the published state moves (a flush with a delta drops them all; `notify` does
        not, the mirror being ahead of what was published until then) and for at most one tick (its
        server_time_ms and the queues' time windows).
        """
        key = self._snapshot_key(topics)
        item = self._snapshots.get(key)
        if item is not None:
            self.snapshots_shared += 1
            return item
        item = self._snapshots[key] = Outgoing(_SNAPSHOT_STUB, self.snapshot_json(topics))
        if self._snapshots_timer is None:
            self._snapshots_timer = asyncio.get_running_loop().call_later(self.tick_s, self._forget_snapshots)
        return item

    def _forget_snapshots(self) -> None:
        self._snapshots_timer = None
        self._snapshots.clear()

    def _snapshot_key(self, topics: frozenset[str]) -> frozenset[str]:
        if "all" in topics:
            return frozenset(("all",))
        team_of = self._team_of
        redundant = [t for t in topics if t.startswith("agent:") and team_of.get(t[6:]) and f"team:{team_of[t[6:]]}" in topics]
        return topics.difference(redundant) if redundant else topics

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
        self._agent_json.clear()  # snapshots are built from the published state: it was just replaced
        self._snapshots.clear()

    def notify(self, changes: Changes) -> None:
        """Called by the follower after applying entries; pops go out at once, deltas at the next flush."""
        for agent_id, pop in changes.pops:
            self._send_topic(f"agent:{agent_id}", pop)
        if not (changes.agents or changes.queues):
            return
        # Snapshots and their agent fragments are the published state, which only a flush moves: they stay
        # valid (and shared) until then. Dropped here, a connect storm, whose every registration is a change,
        # rebuilt each team's snapshot for nearly every agent instead of once per tick.
        self._dirty.agents |= changes.agents
        self._dirty.queues |= changes.queues
        if self._scheduled is not None:
            return
        loop = asyncio.get_running_loop()
        wait = self._last_flush + self.tick_s - loop.time()
        # Idle (no flush within the last tick): at the end of this loop turn, so that whatever the follower
        # applies in this turn goes as one delta. Busy: coalesce until a tick after the last flush.
        self._scheduled = loop.call_later(wait, self.flush) if wait > 0 else loop.call_soon(self.flush)

    def flush_pending(self) -> None:
        """Flush now what waits for the next tick, so the published state is the mirror's (GET /api/snapshot:
        a one-shot read that no delta follows, so it must not be a tick behind)."""
        if self._scheduled is not None:
            self._scheduled.cancel()
            self.flush()

    def flush(self) -> None:
        """Compute the pending deltas and write them to every subscriber. Synchronous: never awaits a socket."""
        self._scheduled = None
        self._last_flush = asyncio.get_running_loop().time()
        dirty, self._dirty = self._dirty, Changes()
        now_ms = self.clock.now_ms()
        agent_patches: dict[str, dict[str, Any]] = {}
        fragments = self._agent_json
        for agent_id in dirty.agents:
            current = self.mirror.agents.get(agent_id)
            if current is None:
                continue
            d = patch.diff(self._published_agents.get(agent_id, {}), current)
            if d:
                agent_patches[agent_id] = d
                self._published_agents[agent_id] = dict(current)
            # The snapshot fragment too, now, a flush's worth at a time. Left to the next snapshot, a connect
            # storm (every agent changes) made the first wallboard after it re-serialize all 10,000 agents
            # in one step: a 0.2-0.3 s stall of the loop. About 15 us per changed agent here instead.
            if fragments:
                fragments[agent_id] = _dumps(agent_id) + ":" + _dumps(without_nulls(current))
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
        self._snapshots.clear()  # built from the published state, which just moved
        self.flushes += 1
        # The topics these changes touch, each with its part of the delta: proportional to what changed.
        by_topic = self._by_topic
        bodies: dict[str, dict[str, Any]] = {}
        if "all" in by_topic:
            body: dict[str, Any] = {}
            if agent_patches:
                body["agents"] = agent_patches
            if queue_patches:
                body["queues"] = queue_patches
            bodies["all"] = body
        agents = self.mirror.agents
        for agent_id, d in agent_patches.items():
            team = agents[agent_id]["team"]
            if team:
                # An agent's own sessions are subscribed to its team's topic too (messages.topics_for), so the
                # team delta carries its record: sending the agent topic as well would send it twice.
                team_topic = f"team:{team}"
                if team_topic in by_topic:
                    bodies.setdefault(team_topic, {"agents": {}})["agents"][agent_id] = d
            elif f"agent:{agent_id}" in by_topic:
                bodies[f"agent:{agent_id}"] = {"agents": {agent_id: d}}
        for queue, d in queue_patches.items():
            topic = f"queue:{queue}"
            if topic in by_topic:
                bodies[topic] = {"queues": {queue: d}}
        # Each subscriber gets the flush's deltas in one write: an agent's team and queue deltas usually come
        # together (in a connect storm every registration moves both), and a send on a socket costs more
        # than everything else a frame costs here. Each subscriber still gets them in topic order.
        frames_for: dict[Subscriber, Outgoing | list[Outgoing]] = {}
        for topic, body in bodies.items():
            subs = by_topic.get(topic)
            if not subs:
                continue
            obj = {"type": "delta", "server_time_ms": now_ms, **body}
            encoded: dict[str, Outgoing] = {}
            for sub in subs:
                item = encoded.get(sub.encoding)
                if item is None:
                    item = encoded[sub.encoding] = Outgoing(obj, encode(obj, sub.encoding))
                    self.serializations += 1
                earlier = frames_for.get(sub)
                if earlier is None:
                    frames_for[sub] = item
                elif isinstance(earlier, list):
                    earlier.append(item)
                else:
                    frames_for[sub] = [earlier, item]
        written = 0
        for sub, items in frames_for.items():
            before = sub.sent
            if isinstance(items, list):
                sub.push_all(items)
            else:
                sub.push(items)
            written += sub.sent - before
        if written and self.on_sent is not None:
            self.on_sent(written)

    def tick_queues(self) -> None:
        """Let time-windowed numbers move (called every QUEUE_TICK_S)."""
        moved = self.mirror.queue_stats.tick(self.clock.now_ms())
        if moved:
            self.notify(Changes(queues=set(moved)))

    async def run_queue_ticker(self) -> None:
        while True:
            await asyncio.sleep(QUEUE_TICK_S)
            self.tick_queues()

    def send_topic(self, topic: str, obj: dict[str, Any]) -> None:
        """Send one message to every subscriber of a topic (serialized and framed once per encoding)."""
        self._send_topic(topic, obj)

    def _send_topic(self, topic: str, obj: dict[str, Any], *, count: bool = True) -> int:
        """Returns how many subscribers had it written at once (counted in the metric unless count=False)."""
        subs = self._by_topic.get(topic)
        if not subs:
            return 0
        encoded: dict[str, Outgoing] = {}
        written = 0
        for sub in list(subs):
            item = encoded.get(sub.encoding)
            if item is None:
                item = encoded[sub.encoding] = Outgoing(obj, encode(obj, sub.encoding))
                self.serializations += 1
            before = sub.sent
            sub.push(item)
            written += sub.sent - before
        if count and written and self.on_sent is not None:
            self.on_sent(written)
        return written

    # -- peers that are behind ------------------------------------------------------------------------

    def watch(self, sub: Subscriber) -> None:
        """Pump this subscriber from the drain timer until its peer has caught up (or is judged slow)."""
        self._owing.add(sub)
        if self._drain_timer is None:
            self._drain_timer = asyncio.get_running_loop().call_later(WRITE_BUFFER_POLL_S, self._drain)

    def _drain(self) -> None:
        self._drain_timer = None
        now = time.monotonic()
        for sub in list(self._owing):
            before = sub.sent
            if sub.pump(now):
                self._owing.discard(sub)
            if self.on_sent is not None and sub.sent != before:
                self.on_sent(sub.sent - before)
        if self._owing:
            self._drain_timer = asyncio.get_running_loop().call_later(WRITE_BUFFER_POLL_S, self._drain)
