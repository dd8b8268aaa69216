"""Routing order as pure functions: which agents a waiting caller should be offered to, best first.

Rules (DESIGN "Routing (offer mode)"):
- steps in the configured order, by default owner -> owner's team -> queue: the customer's `owner` (when
  available; owners get their customers' calls whatever queues they serve), then available agents of the
  owner's team serving the caller's queue, then any available agent serving the queue;
- within a step, the agent available longest first (smallest `available_since_ms`; ties by id so the
  order is deterministic);
- callers are served in `entered_ms` order across every queue (FIFO, also across re-queues: a caller put
  back after a failed dial keeps its entered_ms).

`plan()` walks callers FIFO and gives each its ranked candidates, assuming the callers before it take their
first choice, so one tick proposes many matches at once. The proposals are only proposals: the Lua in
routing/lua.py re-checks every condition against Redis and claims atomically, so a stale view can cost
a tick, never an exclusivity rule.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

OWNER, TEAM, QUEUE = "owner", "team", "queue"
MAX_CANDIDATES = 16  # per caller per tick; if all of them were taken meanwhile, the next tick retries


@dataclass(frozen=True, slots=True)
class Caller:
    """A waiting caller without an open offer. owner/owner_team come from the directory lookup."""

    call_sid: str
    queue: str
    entered_ms: int
    owner: str | None = None
    owner_team: str | None = None


@dataclass(frozen=True, slots=True)
class AvailableAgent:
    """An agent that may be offered a call now (available, connected, no open offer)."""

    id: str
    team: str | None
    queues: frozenset[str]
    available_since_ms: int


def _longest_first(agents: Iterable[AvailableAgent]) -> list[AvailableAgent]:
    return sorted(agents, key=lambda a: (a.available_since_ms, a.id))


def ranked(caller: Caller, agents: Sequence[AvailableAgent], order: Sequence[str] = (OWNER, TEAM, QUEUE),
           limit: int = MAX_CANDIDATES, *, presorted: bool = False) -> list[str]:
    """The agents to offer `caller` to, best first (at most `limit`). `presorted`: agents are already
    longest-available first (plan() sorts once per tick instead of once per caller)."""
    pool = agents if presorted else _longest_first(agents)
    owner = next((a for a in pool if a.id == caller.owner), None) if caller.owner else None
    team = caller.owner_team or (owner.team if owner else None)
    out: list[str] = []
    seen: set[str] = set()
    for step in order:
        if step == OWNER:
            group: Iterable[AvailableAgent] = [owner] if owner is not None else []
        elif step == TEAM:
            group = (a for a in pool if team is not None and a.team == team and caller.queue in a.queues) \
                if caller.owner or caller.owner_team else []
        elif step == QUEUE:
            group = (a for a in pool if caller.queue in a.queues)
        else:
            group = []
        for agent in group:
            if agent.id not in seen:
                seen.add(agent.id)
                out.append(agent.id)
                if len(out) >= limit:
                    return out
    return out


def fifo(callers: Iterable[Caller]) -> list[Caller]:
    """Callers in the order they are served: entered_ms, then CallSid for equal times."""
    return sorted(callers, key=lambda c: (c.entered_ms, c.call_sid))


def plan(callers: Iterable[Caller], agents: Sequence[AvailableAgent], order: Sequence[str] = (OWNER, TEAM, QUEUE),
         limit: int = MAX_CANDIDATES) -> list[tuple[Caller, list[str]]]:
    """(caller, ranked candidates) for every caller that has any, FIFO; earlier callers take their first choice."""
    pool = _longest_first(agents)
    out: list[tuple[Caller, list[str]]] = []
    for caller in fifo(callers):
        if not pool:
            break
        candidates = ranked(caller, pool, order, limit, presorted=True)
        if not candidates:
            continue
        out.append((caller, candidates))
        first = candidates[0]
        pool = [a for a in pool if a.id != first]
    return out
