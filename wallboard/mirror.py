"""The in-memory mirror of shared state: agents, queues and pending screen pops, fed by the follower.

Snapshots, deltas and scrape-time gauges are all read from here, so none of them costs a Redis round trip.
The mirror only ever changes by applying change-stream entries (or a full resync read); it never learns a
fact by a side path, which is what keeps every instance showing the same thing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from callboard.config import Config
from callflow.live import QueueStatsMirror
from presence.rules import OFFLINE, STATES, AgentRecord
from routing.messages import apply_offer_entry

PUBLIC_AGENT_FIELDS = ("state", "reason", "since_ms", "connections", "seq", "call")
# From the config, never from a change entry. Every other field of an agent entry passes through as it
# comes, so rooms that add to the public record (routing's `ringing`, `missed_offers`) need no change here.
STATIC_AGENT_FIELDS = frozenset(("name", "team", "queues"))


@dataclass
class Changes:
    """What one batch of stream entries touched."""

    agents: set[str] = field(default_factory=set)
    queues: set[str] = field(default_factory=set)
    pops: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.agents or self.queues or self.pops)

    def merge(self, other: Changes) -> None:
        self.agents |= other.agents
        self.queues |= other.queues
        self.pops.extend(other.pops)


class Mirror:
    def __init__(self, config: Config, queue_stats: QueueStatsMirror) -> None:
        self.config = config
        self.queue_stats = queue_stats
        self.agents: dict[str, dict[str, Any]] = {}
        self.pops: dict[str, dict[str, Any]] = {}
        self.offers: dict[str, dict[str, Any]] = {}  # routing: each agent's open offer (resent on reconnect)
        # Agents per queue and state, kept as entries arrive: a tick or a webhook never scans every agent.
        self._counts: dict[str, dict[str, int]] = {}
        self.reset_agents({})

    def reset_agents(self, records: dict[str, AgentRecord]) -> None:
        """Replace every agent's live fields (a resync); agents not in the config are ignored."""
        self.agents = {}
        for agent in self.config.agents:
            entry: dict[str, Any] = {"name": agent.name, "team": agent.team, "queues": list(agent.queues)}
            rec = records.get(agent.id)
            entry.update(rec.public() if rec else _never_seen())
            entry.update(ringing=agent.id in self.offers, missed_offers=0)  # routing (offer mode)
            self.agents[agent.id] = entry
        self._counts = {q.name: dict.fromkeys(STATES, 0) for q in self.config.queues}
        for entry in self.agents.values():
            self._count(entry, +1)

    def _count(self, entry: dict[str, Any], delta: int) -> None:
        self._count_state(entry["queues"], entry["state"], delta)

    def _count_state(self, queues: list[str], state: str, delta: int) -> None:
        for queue in queues:
            counts = self._counts.get(queue)
            if counts is not None:
                counts[state] += delta

    def apply_entry(self, kind: str, ident: str, data: dict[str, Any], changes: Changes) -> None:
        """Apply one change-stream entry. Entries carry absolute values, so re-applying one is harmless."""
        if kind == "agent":
            entry = self.agents.get(ident)
            if entry is None:
                return
            was = entry["state"]
            # cmsgpack drops nil fields: a presence field absent from the entry is null. Fields other rooms
            # keep in the entry (routing's `ringing`, `missed_offers`) are not presence's to clear.
            for name in PUBLIC_AGENT_FIELDS:
                if name not in data:
                    entry[name] = None
            for name, value in data.items():
                if name not in STATIC_AGENT_FIELDS:
                    entry[name] = value
            if entry["state"] not in STATES:
                entry["state"] = OFFLINE
            if entry["state"] != was:  # the per-queue counts move only when the state does (most entries: not)
                self._count_state(entry["queues"], was, -1)
                self._count_state(entry["queues"], entry["state"], +1)
            changes.agents.add(ident)
            changes.queues.update(entry["queues"])
        elif kind == "queue":
            if self.config.queue(ident) is not None:
                self.queue_stats.apply(ident, data)
                changes.queues.add(ident)
        elif kind == "pop":
            if ident in self.agents:
                self.pops[ident] = data
                changes.pops.append((ident, data))
        elif kind in ("offer", "offer_ended"):  # routing: to the agent at once, like a pop
            apply_offer_entry(self, kind, ident, data, changes)
        elif kind == "unpop":
            held = self.pops.get(ident)
            if held is not None and held.get("call_sid") == data.get("call_sid"):
                del self.pops[ident]
        elif kind == "notice":
            # a one-off message for one agent's softphone (softphone/: monitor, transfer_failed); not kept
            if ident in self.agents and isinstance(data.get("type"), str):
                changes.pops.append((ident, data))

    def agent_counts(self, queue: str) -> dict[str, int]:
        return dict(self._counts.get(queue) or dict.fromkeys(STATES, 0))

    def staffed(self, queue: str) -> bool:
        """Is any agent of this queue signed in (not offline)? Used by the incoming webhook."""
        counts = self._counts.get(queue)
        return bool(counts) and sum(counts.values()) > counts[OFFLINE]

    def queue_entry(self, queue: str, now_ms: int) -> dict[str, Any]:
        q = self.config.queue(queue)
        assert q is not None
        entry = self.queue_stats.snapshot(queue, now_ms)
        entry["agents"] = self.agent_counts(queue)
        t = q.thresholds
        entry["thresholds"] = {
            "sl_target": t.sl_target, "sl_warning": t.sl_warning,
            "waiting_warning": t.waiting_warning, "waiting_critical": t.waiting_critical,
            "wait_warning_s": t.wait_warning_s, "wait_critical_s": t.wait_critical_s,
            "abandon_warning": t.abandon_warning, "abandon_critical": t.abandon_critical,
        }
        return entry

    def center(self) -> dict[str, Any]:
        c = self.config.center
        return {"name": c.name, "timezone": c.timezone, "sl_threshold_s": c.sl_threshold_s,
                "short_abandon_s": c.short_abandon_s, "away_reasons": list(c.away_reasons)}


def _never_seen() -> dict[str, Any]:
    return {"state": OFFLINE, "reason": None, "since_ms": None, "connections": 0, "seq": 0, "call": None}
