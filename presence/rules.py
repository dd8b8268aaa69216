"""Presence rules as pure functions: (record, intent, settings, now) -> decision. No I/O here.

The Lua in presence/lua.py applies exactly these rules atomically inside Redis; tests/test_presence_rules.py
runs every state x intent through both and asserts they agree, so this module stays the one statement of
the rules that a reader needs.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

AVAILABLE, ON_CALL, WRAP_UP, AWAY, OFFLINE = "available", "on-call", "wrap-up", "away", "offline"
STATES = (AVAILABLE, ON_CALL, WRAP_UP, AWAY, OFFLINE)
DISCONNECTED = "disconnected"  # the reason the sweeper gives when an agent vanished

# Intent kinds. `set` comes from an agent or a supervisor; the rest come from the service itself.
SET, CONNECT, DISCONNECT, GRACE_EXPIRED, CALL_START, CALL_END, WRAP_DONE = (
    "set", "connect", "disconnect", "grace_expired", "call_start", "call_end", "wrap_done",
)
KINDS = (SET, CONNECT, DISCONNECT, GRACE_EXPIRED, CALL_START, CALL_END, WRAP_DONE)
ACTORS = ("agent", "supervisor", "system")
AGENT_SETTABLE = (AVAILABLE, AWAY)
SUPERVISOR_SETTABLE = (AVAILABLE, AWAY, OFFLINE)
MAX_REASON_LEN = 100
# A seq precondition must survive msgpack and Lua's doubles exactly: integers 0..2^53-1. Anything else (a
# 10^30 from a hand-written request) once made the whole batch unencodable and stopped every state change.
MAX_SEQ = 2**53 - 1

# Error codes a rejected intent carries; the wire and HTTP layers turn them into English messages.
REJECT_MESSAGES = {
    "forbidden_state": "agents may only set themselves available or away",
    "bad_state": "state must be one of available, away, offline",
    "on_call": "the agent is on a call; the state changes when the call ends",
    "not_connected": "connect the agent console before changing state",
    "stale": "the agent's state changed since you last saw it (stale seq)",
    "bad_seq": f'"seq" must be an integer from 0 to {MAX_SEQ}',
    "not_stored": "the change could not be stored (a server error, logged); try again",
}


@dataclass(frozen=True, slots=True)
class AgentRecord:
    """What Redis stores per agent. `chosen` is the state to restore after a disconnect-away."""

    state: str = OFFLINE
    reason: str | None = None
    since_ms: int = 0
    connections: int = 0
    seq: int = 0
    call: dict[str, Any] | None = None
    wrap: dict[str, Any] | None = None
    chosen: dict[str, Any] | None = None
    disc_ms: int | None = None

    def public(self) -> dict[str, Any]:
        """The fields clients see (the snapshot's agent entry, minus the static name/team/queues)."""
        return {"state": self.state, "reason": self.reason, "since_ms": self.since_ms,
                "connections": self.connections, "seq": self.seq, "call": self.call}


class Intent(NamedTuple):
    """What someone wants to happen to one agent's record. A NamedTuple, not a frozen dataclass: every state
    change from a socket builds one, and a frozen dataclass's __init__ (object.__setattr__ per field) cost
    twice as much at 20,000 intents/s; immutable either way."""

    kind: str
    actor: str = "system"
    state: str | None = None
    reason: str | None = None
    call: dict[str, Any] | None = None  # call_start: {"call_sid", "queue", "from", ...}; call_end/wrap_done: {"call_sid"}
    seq: int | None = None  # optional precondition: the record seq the sender last saw


@dataclass(frozen=True, slots=True)
class Settings:
    wrap_up_s: int
    disconnect_grace_s: int


@dataclass(frozen=True, slots=True)
class Decision:
    record: AgentRecord
    changed: bool
    error: str | None = None
    # Wrap-up that ended with this decision: {"call_sid", "queue", "talk_ms"?, "wrap_ms"}; feeds handle time.
    wrap_ended: dict[str, Any] | None = field(default=None)


def validate_set(actor: str, state: object, reason: object) -> str | None:
    """Shape check of a set intent before it is queued; returns an error code or None."""
    if state not in STATES:
        return "bad_state"
    allowed = AGENT_SETTABLE if actor == "agent" else SUPERVISOR_SETTABLE
    if state not in allowed:
        return "forbidden_state"
    if reason is not None and (not isinstance(reason, str) or len(reason) > MAX_REASON_LEN):
        return "bad_state"
    return None


def validate_seq(seq: object) -> str | None:
    """Shape check of an optional seq precondition; returns "bad_seq" or None."""
    if seq is None:
        return None
    if not isinstance(seq, int) or isinstance(seq, bool) or not 0 <= seq <= MAX_SEQ:
        return "bad_seq"
    return None


def decide(rec: AgentRecord, intent: Intent, settings: Settings, now_ms: int) -> Decision:
    """Apply one intent to one record. Unchanged records come back with changed=False.

    Wrap-up spent is capped at wrap_up_s: past its scheduled end the agent was due to be available, and a
    sweep that fired late (busy, or Redis away) must not make handle time grow with its delay.
    """
    decision = _decide(rec, intent, settings, now_ms)
    ended = decision.wrap_ended
    if ended is not None and ended["wrap_ms"] > settings.wrap_up_s * 1000:
        decision = replace(decision, wrap_ended={**ended, "wrap_ms": max(settings.wrap_up_s * 1000, 0)})
    return decision


def _decide(rec: AgentRecord, intent: Intent, settings: Settings, now_ms: int) -> Decision:
    if intent.seq is not None and intent.seq < rec.seq:
        return Decision(rec, False, "stale")
    kind = intent.kind
    if kind == SET:
        return _set(rec, intent, now_ms)
    if kind == CONNECT:
        rec = replace(rec, connections=rec.connections + 1, disc_ms=None)
        if rec.state == OFFLINE:
            return _to(rec, AVAILABLE, None, now_ms)
        if rec.state == AWAY and rec.reason == DISCONNECTED:
            chosen = rec.chosen or {"state": AVAILABLE}
            return _to(replace(rec, chosen=None), chosen["state"], chosen.get("reason"), now_ms)
        return Decision(_bump(rec), True)
    if kind == DISCONNECT:
        left = max(rec.connections - 1, 0)
        return Decision(_bump(replace(rec, connections=left, disc_ms=now_ms if left == 0 else rec.disc_ms)), True)
    if kind == GRACE_EXPIRED:
        gone_long_enough = rec.disc_ms is not None and now_ms - rec.disc_ms >= settings.disconnect_grace_s * 1000
        if rec.connections > 0 or not gone_long_enough or rec.state not in (AVAILABLE, WRAP_UP):
            return Decision(rec, False)
        return _to_disconnected_away(rec, now_ms)
    if kind == CALL_START:
        call = intent.call or {}
        if rec.state == ON_CALL and rec.call and rec.call.get("call_sid") == call.get("call_sid"):
            return Decision(rec, False)
        return _to(replace(rec, call=call), ON_CALL, None, now_ms)
    if kind == CALL_END:
        if rec.state != ON_CALL or not _same_call(rec.call, intent.call):
            return Decision(rec, False)
        wrap = {**(rec.call or {}), **(intent.call or {})}
        rec = replace(rec, call=None)
        if rec.connections == 0:
            return _ended_wrap(_to_disconnected_away(rec, now_ms), wrap, 0)
        if settings.wrap_up_s <= 0:
            return _ended_wrap(_to(rec, AVAILABLE, None, now_ms), wrap, 0)
        return _to(replace(rec, wrap=wrap), WRAP_UP, None, now_ms)
    if kind == WRAP_DONE:
        if rec.state != WRAP_UP or not _same_call(rec.wrap, intent.call):
            return Decision(rec, False)
        # The agent has been available since the timer was due, however late the sweeper fired it.
        return _to(rec, AVAILABLE, None, max(min(now_ms, rec.since_ms + settings.wrap_up_s * 1000), rec.since_ms))
    raise ValueError(f"unknown intent kind {kind!r}")


def _set(rec: AgentRecord, intent: Intent, now_ms: int) -> Decision:
    error = validate_set(intent.actor, intent.state, intent.reason)
    if error:
        return Decision(rec, False, error)
    if rec.state == ON_CALL:
        return Decision(rec, False, "on_call")
    if intent.actor == "agent" and rec.state == OFFLINE:
        return Decision(rec, False, "not_connected")
    reason = intent.reason if intent.state == AWAY else None
    if rec.state == intent.state and rec.reason == reason:
        return Decision(rec, False)
    return _to(replace(rec, chosen=None), intent.state or AVAILABLE, reason, now_ms)


def _to(rec: AgentRecord, state: str, reason: str | None, now_ms: int) -> Decision:
    """Enter `state`; leaving wrap-up reports how long it lasted so handle time can include it."""
    wrap_ended = None
    if rec.state == WRAP_UP and state != WRAP_UP and rec.wrap is not None:
        wrap_ended = {**rec.wrap, "wrap_ms": max(now_ms - rec.since_ms, 0)}
        rec = replace(rec, wrap=None)
    new = replace(rec, state=state, reason=reason, since_ms=now_ms, seq=rec.seq + 1)
    return Decision(new, True, None, wrap_ended)


def _to_disconnected_away(rec: AgentRecord, now_ms: int) -> Decision:
    chosen = rec.chosen
    if chosen is None:
        keep = rec.state in (AVAILABLE, AWAY) and rec.reason != DISCONNECTED
        chosen = {"state": rec.state} if keep else {"state": AVAILABLE}
        if keep and rec.reason is not None:
            chosen["reason"] = rec.reason
    return _to(replace(rec, chosen=chosen), AWAY, DISCONNECTED, now_ms)


def _ended_wrap(decision: Decision, wrap: dict[str, Any], wrap_ms: int) -> Decision:
    if decision.wrap_ended is not None:
        return decision
    return replace(decision, wrap_ended={**wrap, "wrap_ms": wrap_ms})


def _bump(rec: AgentRecord) -> AgentRecord:
    return replace(rec, seq=rec.seq + 1)


def _same_call(held: dict[str, Any] | None, given: dict[str, Any] | None) -> bool:
    return bool(held and given and held.get("call_sid") == given.get("call_sid"))
