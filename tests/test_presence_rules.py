"""The presence rules: a readable table of the contract's rules, and a proof that the Lua agrees on every case."""

from __future__ import annotations

import itertools
from dataclasses import replace

import msgpack
import pytest

from callboard import keys
from presence.rules import (
    AVAILABLE,
    AWAY,
    CALL_END,
    CALL_START,
    CONNECT,
    DISCONNECT,
    GRACE_EXPIRED,
    OFFLINE,
    ON_CALL,
    SET,
    STATES,
    WRAP_DONE,
    WRAP_UP,
    AgentRecord,
    Intent,
    Settings,
    decide,
)
from presence.store import Addressed, PresenceStore, decode_record, encode_record

NOW = 1_763_700_000_000
SETTINGS = Settings(wrap_up_s=15, disconnect_grace_s=10)
CALL1 = {"call_sid": "CA1", "queue": "support", "from": "+15551230000"}
CALL2 = {"call_sid": "CA2", "queue": "support"}


def rec(state: str = AVAILABLE, **kw: object) -> AgentRecord:
    base: dict[str, object] = {"state": state, "since_ms": NOW - 60_000, "connections": 1, "seq": 5}
    if state == ON_CALL:
        base["call"] = CALL1
    if state == WRAP_UP:
        base["wrap"] = CALL1
    base.update(kw)
    return AgentRecord(**base)  # type: ignore[arg-type]


def agent_set(state: str, reason: str | None = None, **kw: object) -> Intent:
    return Intent(kind=SET, actor="agent", state=state, reason=reason, **kw)  # type: ignore[arg-type]


def sup_set(state: str, reason: str | None = None) -> Intent:
    return Intent(kind=SET, actor="supervisor", state=state, reason=reason)


# (given record, intent) -> (state, reason, error) after the intent; None for "unchanged".
RULES = [
    ("first connection brings an offline agent in", rec(OFFLINE, connections=0), Intent(kind=CONNECT), (AVAILABLE, None, None)),
    ("an agent may go away with a reason", rec(), agent_set(AWAY, "lunch"), (AWAY, "lunch", None)),
    ("an agent may come back", rec(AWAY, reason="lunch"), agent_set(AVAILABLE), (AVAILABLE, None, None)),
    ("an agent may end wrap-up early", rec(WRAP_UP), agent_set(AVAILABLE), (AVAILABLE, None, None)),
    ("an agent cannot set on-call", rec(), agent_set(ON_CALL), (AVAILABLE, None, "forbidden_state")),
    ("an agent cannot set offline", rec(), agent_set(OFFLINE), (AVAILABLE, None, "forbidden_state")),
    ("an agent on a call cannot go away", rec(ON_CALL), agent_set(AWAY, "break"), (ON_CALL, None, "on_call")),
    ("a disconnected agent cannot set state", rec(OFFLINE, connections=0), agent_set(AVAILABLE), (OFFLINE, None, "not_connected")),
    ("a supervisor may set anyone offline", rec(), sup_set(OFFLINE), (OFFLINE, None, None)),
    ("a supervisor may bring an offline agent in", rec(OFFLINE, connections=0), sup_set(AVAILABLE), (AVAILABLE, None, None)),
    ("a supervisor cannot interrupt a call", rec(ON_CALL), sup_set(AWAY, "x"), (ON_CALL, None, "on_call")),
    ("nobody sets on-call by hand", rec(), sup_set(ON_CALL), (AVAILABLE, None, "forbidden_state")),
    ("the same state twice changes nothing", rec(AWAY, reason="lunch"), agent_set(AWAY, "lunch"), None),
    ("a stale intent changes nothing", rec(seq=9), agent_set(AWAY, "lunch", seq=8), (AVAILABLE, None, "stale")),
    ("a current intent applies", rec(seq=9), agent_set(AWAY, "lunch", seq=9), (AWAY, "lunch", None)),
    ("a call sets on-call", rec(), Intent(kind=CALL_START, call=CALL1), (ON_CALL, None, None)),
    ("a duplicate call start changes nothing", rec(ON_CALL), Intent(kind=CALL_START, call=CALL1), None),
    ("a finished call starts wrap-up", rec(ON_CALL), Intent(kind=CALL_END, call=CALL1), (WRAP_UP, None, None)),
    ("the end of another call changes nothing", rec(ON_CALL), Intent(kind=CALL_END, call=CALL2), None),
    ("a late call end never resurrects", rec(AVAILABLE), Intent(kind=CALL_END, call=CALL1), None),
    ("a call ending with nobody connected goes away", rec(ON_CALL, connections=0, disc_ms=NOW - 1000),
     Intent(kind=CALL_END, call=CALL1), (AWAY, "disconnected", None)),
    ("wrap-up ends in available", rec(WRAP_UP), Intent(kind=WRAP_DONE, call=CALL1), (AVAILABLE, None, None)),
    ("an old wrap-up timer changes nothing", rec(WRAP_UP), Intent(kind=WRAP_DONE, call=CALL2), None),
    ("a disconnect alone keeps the state", rec(), Intent(kind=DISCONNECT), (AVAILABLE, None, None)),
    ("grace expiry turns a vanished agent away", rec(connections=0, disc_ms=NOW - 10_000), Intent(kind=GRACE_EXPIRED),
     (AWAY, "disconnected", None)),
    ("grace expiry waits for the full grace", rec(connections=0, disc_ms=NOW - 9_999), Intent(kind=GRACE_EXPIRED), None),
    ("grace expiry ignores a reconnected agent", rec(connections=1, disc_ms=None), Intent(kind=GRACE_EXPIRED), None),
    ("media outlives the socket: on-call stays", rec(ON_CALL, connections=0, disc_ms=NOW - 60_000),
     Intent(kind=GRACE_EXPIRED), None),
    ("coming back restores the chosen state", rec(AWAY, reason="disconnected", connections=0,
                                                   chosen={"state": AWAY, "reason": "lunch"}),
     Intent(kind=CONNECT), (AWAY, "lunch", None)),
    ("coming back after a wrap-up restores available", rec(AWAY, reason="disconnected", connections=0,
                                                          chosen={"state": AVAILABLE}),
     Intent(kind=CONNECT), (AVAILABLE, None, None)),
]


@pytest.mark.parametrize("name,given,intent,expected", RULES, ids=[r[0] for r in RULES])
def test_rule(name: str, given: AgentRecord, intent: Intent, expected: tuple[str, str | None, str | None] | None) -> None:
    decision = decide(given, intent, SETTINGS, NOW)
    if expected is None:
        assert not decision.changed and decision.error is None and decision.record == given
        return
    state, reason, error = expected
    assert (decision.record.state, decision.record.reason, decision.error) == (state, reason, error)
    if error:
        assert decision.record == given and not decision.changed
    else:
        assert decision.changed and decision.record.seq == given.seq + 1


def test_wrap_up_time_is_reported_when_it_ends() -> None:
    wrapping = rec(WRAP_UP, since_ms=NOW - 7_000)
    decision = decide(wrapping, Intent(kind=WRAP_DONE, call=CALL1), SETTINGS, NOW)
    assert decision.wrap_ended == {**CALL1, "wrap_ms": 7_000}
    assert decision.record.wrap is None


def test_a_late_wrap_up_timer_ends_wrap_up_when_it_was_due() -> None:
    # wrap_up_s=15; the sweep (or Redis) was away for 45 s more: wrap-up spent is 15 s, not 60 s
    wrapping = rec(WRAP_UP, since_ms=NOW - 60_000)
    decision = decide(wrapping, Intent(kind=WRAP_DONE, call=CALL1), SETTINGS, NOW)
    assert decision.wrap_ended == {**CALL1, "wrap_ms": 15_000}
    assert (decision.record.state, decision.record.since_ms) == (AVAILABLE, NOW - 45_000)


def test_leaving_wrap_up_after_it_was_due_counts_only_the_wrap_up_time() -> None:
    wrapping = rec(WRAP_UP, since_ms=NOW - 60_000)
    for intent in (agent_set(AWAY, "lunch"), sup_set(OFFLINE), Intent(kind=CALL_START, call=CALL2)):
        decision = decide(wrapping, intent, SETTINGS, NOW)
        assert decision.wrap_ended == {**CALL1, "wrap_ms": 15_000}, intent
        assert decision.record.since_ms == NOW, intent  # the new state starts now: it is a change made now


def test_no_wrap_up_reports_zero_when_the_call_ends() -> None:
    decision = decide(rec(ON_CALL), Intent(kind=CALL_END, call=CALL1), replace(SETTINGS, wrap_up_s=0), NOW)
    assert decision.record.state == AVAILABLE
    assert decision.wrap_ended == {**CALL1, "wrap_ms": 0}


# --- the parity proof: every state x intent, through Python and through Lua in a real Redis -------------

def _records() -> list[AgentRecord]:
    out = []
    for state in STATES:
        for connections, disc in ((0, NOW - 20_000), (0, NOW - 1_000), (1, None), (2, None)):
            for reason, chosen in ((None, None), ("lunch", None), ("disconnected", {"state": AWAY, "reason": "lunch"})):
                if state != AWAY and reason is not None:
                    continue
                out.append(rec(state, connections=connections, disc_ms=disc, reason=reason, chosen=chosen))
    return out


def _intents() -> list[Intent]:
    out = [Intent(kind=k) for k in (CONNECT, DISCONNECT, GRACE_EXPIRED)]
    for kind, call in itertools.product((CALL_START, CALL_END, WRAP_DONE), (CALL1, CALL2)):
        out.append(Intent(kind=kind, call=call))
    for actor, state, reason, seq in itertools.product(("agent", "supervisor"), STATES, (None, "lunch"), (None, 4, 5)):
        out.append(Intent(kind=SET, actor=actor, state=state, reason=reason, seq=seq))
    return out


HOOK = "call_handled = function(agent_id, wrap) redis.call('SET', 'cb:test:wrap', cmsgpack.pack(wrap)) end\n"


async def test_lua_applies_exactly_the_python_rules(redis) -> None:  # type: ignore[no-untyped-def]
    store = PresenceStore(redis, SETTINGS, day_key=lambda _: "2025-11-21", handled_hook=HOOK)
    cases = list(itertools.product(_records(), _intents()))
    assert len(cases) > 1000
    mismatches = []
    for i, (given, intent) in enumerate(cases):
        agent = f"a{i}"
        await redis.hset(keys.AGENTS, agent, encode_record(given))
        await redis.delete("cb:test:wrap")
        conn = f"c{i}"
        if intent.kind == DISCONNECT:
            await redis.hset(keys.instance_connections("i1"), conn, agent)
        [error] = await store.apply([Addressed(agent, intent, conn=conn, instance="i1")], NOW)
        stored = decode_record(await redis.hget(keys.AGENTS, agent))
        expected = decide(given, intent, SETTINGS, NOW)
        wrap_raw = await redis.get("cb:test:wrap")
        wrap = msgpack.unpackb(wrap_raw, raw=False) if wrap_raw else None
        if (stored, error, wrap) != (expected.record, expected.error, expected.wrap_ended):
            mismatches.append((given, intent, (stored, error, wrap), (expected.record, expected.error, expected.wrap_ended)))
    assert not mismatches, f"{len(mismatches)} mismatches:\n" + "\n".join(map(str, mismatches[:5]))
