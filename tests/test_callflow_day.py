"""A scripted day of calls through the HTTP routes, on a real Redis, with every statistic asserted exactly.

The same day is replayed with every Twilio request duplicated and the requests of each call shuffled (the
first `incoming` stays first): the numbers must not change. Agent connects, disconnects and sweeps are not
Twilio requests; they stay where they are and bound the shuffling.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import msgpack
import pytest
from aiohttp import web
from redis.asyncio import Redis

from callboard import keys
from callboard.clock import FakeClock
from callboard.config import Config, parse_config
from callflow.flow import CallFlow
from callflow.live import QueueStatsMirror
from callflow.lua import CALL_HANDLED_HOOK
from callflow.testing import FakeTwilio
from callflow.windows import day_key
from presence.rules import Intent, Settings
from presence.store import Addressed, PresenceStore
from wallboard.metrics import Metrics

TOKEN = "day-test-auth-token"
PUBLIC_URL = "https://cb.example.com/callboard"  # behind a proxy that strips /callboard
SUPPORT, SALES = "+15550000001", "+15550000002"


def day_config(**center: Any) -> Config:
    raw = {
        "center": {"name": "Day test", "timezone": "Europe/Paris", "reset_time": "00:00", "sl_threshold_s": 20,
                   "short_abandon_s": 5, "wrap_up_s": 10, "disconnect_grace_s": 10, "position_every_s": 30,
                   "language": "en-US", "voice": "Polly.Joanna", "caller_id": "+15550009999", **center},
        "queues": [{"name": "support", "numbers": [SUPPORT], "greeting": "Welcome to support."},
                   {"name": "sales", "numbers": [SALES], "language": "ja-JP", "voice": "Polly.Mizuki"}],
        "agents": [{"id": "alice", "name": "Alice", "queues": ["support"]},
                   {"id": "bob", "name": "Bob", "queues": ["support"]},
                   {"id": "carol", "name": "Carol", "queues": ["sales"]}],
    }
    return parse_config(raw, "<day test>")


T0 = int(datetime(2025, 11, 21, 9, 0, tzinfo=ZoneInfo("Europe/Paris")).timestamp() * 1000)


@dataclass
class Step:
    at_s: float
    kind: str  # post | connect | disconnect | sweep | check
    route: str = ""
    params: dict[str, str] = field(default_factory=dict)
    query: dict[str, str] | None = None
    agent: str = ""
    check: Callable[[Harness], Awaitable[None]] | None = None
    group: str = ""


def sid(n: int) -> str:
    return f"CA{n:032x}"


def post(at_s: float, group: str, route: str, query: dict[str, str] | None = None, **params: str) -> Step:
    return Step(at_s, "post", route, params, query, group=group)


def incoming(at_s: float, n: int, to: str = SUPPORT) -> Step:
    return post(at_s, sid(n), "incoming", CallSid=sid(n), From=f"+1555123{n:04d}", To=to, CallStatus="ringing",
                Direction="inbound")


def wait(at_s: float, n: int, position: int, queue_time: int) -> Step:
    return post(at_s, sid(n), "wait", {"queue": "support"}, CallSid=sid(n), QueuePosition=str(position),
                QueueTime=str(queue_time), CurrentQueueSize=str(position), QueueSid="QU1")


def agent_leg(at_s: float, n: int, agent: str) -> Step:
    return post(at_s, sid(n), "agent", CallSid=sid(n + 500), From=f"client:{agent}", To="", queue="support")


def bridge(at_s: float, n: int, agent: str, queue_time: int | str) -> Step:
    return post(at_s, sid(n), "bridge", {"queue": "support", "agent": agent}, CallSid=sid(n),
                DequeingCallSid=sid(n + 500), QueueTime=str(queue_time), QueueSid="QU1",
                From=f"+1555123{n:04d}", To=SUPPORT)


def queue_result(at_s: float, n: int, result: str, queue_time: int | str) -> Step:
    return post(at_s, sid(n), "queue-result", {"queue": "support"}, CallSid=sid(n), QueueResult=result,
                QueueTime=str(queue_time), QueueSid="QU1")


def caller_end(at_s: float, n: int) -> Step:
    return post(at_s, sid(n), "status", CallSid=sid(n), CallStatus="completed", From=f"+1555123{n:04d}", To=SUPPORT)


def agent_end(at_s: float, n: int, agent: str) -> Step:
    return post(at_s, sid(n), "status", CallSid=sid(n + 500), CallStatus="completed", From=f"client:{agent}")


def check(at_s: float, fn: Callable[[Harness], Awaitable[None]]) -> Step:
    return Step(at_s, "check", check=fn)


def agent_is(agent: str, state: str, reason: str | None = None, call: int | None = None) -> Callable[[Harness], Awaitable[None]]:
    async def fn(h: Harness) -> None:
        rec = await h.store.read_agent(agent)
        assert (rec.state, rec.reason) == (state, reason), (agent, rec)
        if call is not None:
            assert rec.call and rec.call["call_sid"] == sid(call) and rec.call["queue"] == "support"
    return fn


def waiting_is(count: int, oldest_s: float | None) -> Callable[[Harness], Awaitable[None]]:
    async def fn(h: Harness) -> None:
        mirror = QueueStatsMirror(h.config, h.clock)
        await mirror.load(h.redis)
        snap = mirror.snapshot("support", h.clock.now_ms())
        assert snap["waiting"] == count
        assert snap["oldest_enqueued_ms"] == (None if oldest_s is None else T0 + int(oldest_s * 1000))
    return fn


def pop_is(agent: str, n: int | None) -> Callable[[Harness], Awaitable[None]]:
    async def fn(h: Harness) -> None:
        raw = await h.redis.get(keys.agent_pop(agent))
        if n is None:
            assert raw is None
        else:
            pop = msgpack.unpackb(raw)
            assert pop["call_sid"] == sid(n) and pop["type"] == "pop" and pop["queue"] == "support"
            assert pop["customers"] == [] and pop["to"] == SUPPORT
    return fn


def scripted_day() -> list[Step]:
    """Known outcomes; times are seconds after 09:00 Paris. SL 20 s, short abandon 5 s, wrap-up 10 s."""
    return [
        Step(0, "connect", agent="alice"), Step(0, "connect", agent="bob"),
        # 1: answered within SL by alice (queue 12 s, talk 120 s, wrap 10 s -> handle 130 s)
        incoming(0, 1), check(0, waiting_is(1, 0)), wait(1, 1, 1, 1), wait(31, 1, 1, 11),
        agent_leg(10, 1, "alice"), bridge(12, 1, "alice", 12),
        check(12, agent_is("alice", "on-call", call=1)), check(12, waiting_is(0, None)), check(12, pop_is("alice", 1)),
        caller_end(132, 1), queue_result(132, 1, "bridged", 12), agent_end(133, 1, "alice"),
        check(133, agent_is("alice", "wrap-up")), check(133, pop_is("alice", None)),
        Step(143, "sweep"), check(143, agent_is("alice", "available")),
        # 2: answered beyond SL by bob (queue 30 s, talk 60 s, wrap 10 s -> 70 s)
        incoming(300, 2), wait(301, 2, 1, 1), agent_leg(329, 2, "bob"), bridge(330, 2, "bob", 30),
        check(330, agent_is("bob", "on-call", call=2)),
        caller_end(390, 2), agent_end(390, 2, "bob"), queue_result(390, 2, "bridged", 30),
        Step(400, "sweep"), check(400, agent_is("bob", "available")),
        # 3: abandoned after 40 s
        incoming(600, 3), wait(601, 3, 1, 1), queue_result(640, 3, "hangup", 40), caller_end(640, 3),
        # 4: short abandon after 3 s
        incoming(700, 4), queue_result(703, 4, "hangup", 3), caller_end(703, 4),
        # 5: queue full
        incoming(800, 5), queue_result(800, 5, "queue-full", 0), caller_end(801, 5),
        # 6: sales, nobody signed in: unstaffed, not offered
        incoming(900, 6, to=SALES), caller_end(901, 6),
        # 7: answered within SL (5 s) by alice, the caller hangs up during the bridge (talk 1 s, wrap 10 s)
        incoming(3000, 7), agent_leg(3004, 7, "alice"), bridge(3005, 7, "alice", 5),
        caller_end(3006, 7), queue_result(3006, 7, "bridged", 5), agent_end(3006, 7, "alice"),
        check(3006, agent_is("alice", "wrap-up")),
        Step(3016, "sweep"), check(3016, agent_is("alice", "available")),
        # 8: abandoned after 25 s
        incoming(3100, 8), wait(3101, 8, 1, 1), queue_result(3125, 8, "hangup", 25), caller_end(3125, 8),
        # 9: answered within SL (15 s) by bob, who loses his connection mid-call: on-call until the call
        # ends, then straight to away (no wrap-up: talk 60 s -> handle 60 s)
        incoming(3200, 9), agent_leg(3214, 9, "bob"), bridge(3215, 9, "bob", 15),
        Step(3250, "disconnect", agent="bob"), Step(3262, "sweep"), check(3262, agent_is("bob", "on-call", call=9)),
        caller_end(3275, 9), agent_end(3276, 9, "bob"), queue_result(3276, 9, "bridged", 15),
        check(3276, agent_is("bob", "away", "disconnected")),
        Step(3300, "sweep"),
    ]


SNAPSHOT_AT_S = 3500

EXPECTED_TODAY = {
    "offered": 8, "answered": 4, "answered_within_sl": 3, "abandoned": 3, "short_abandoned": 1,
    "service_level": 0.5, "abandon_rate": 0.3333, "asa_s": 15.5, "aht_s": 67.75,  # (130+70+11+60)/4
    "handled": 4, "unstaffed": 0, "queue_full": 1, "leave": 0, "redirected": 0, "error": 0,
    "system_error": 0, "other": 0,
}
EXPECTED_LAST_30M = {
    "offered": 3, "answered": 2, "answered_within_sl": 2, "abandoned": 1, "short_abandoned": 0,
    "service_level": 0.6667, "abandon_rate": 0.3333, "asa_s": 10.0, "aht_s": 35.5,  # (11+60)/2
    "handled": 2, "unstaffed": 0, "queue_full": 0, "leave": 0, "redirected": 0, "error": 0,
    "system_error": 0, "other": 0,
}


class Harness:
    """The app made of CallFlow.routes(), a real PresenceStore with the handled hook, and a FakeClock."""

    def __init__(self, client: Any, redis: Redis, config: Config, clock: FakeClock, flow: CallFlow,
                 store: PresenceStore, metrics: Metrics, signed_in: set[str]) -> None:
        self.client, self.redis, self.config, self.clock = client, redis, config, clock
        self.flow, self.store, self.metrics, self.signed_in = flow, store, metrics, signed_in
        self.twilio = FakeTwilio(client, TOKEN, PUBLIC_URL)
        self.responses: list[tuple[Step, int, str]] = []

    async def do(self, step: Step, *, checks: bool = True) -> None:
        self.clock.set(T0 + int(step.at_s * 1000))
        now = self.clock.now_ms()
        if step.kind == "post":
            status, body = await self.twilio.post(step.route, step.params, step.query)
            assert status == 200, (step, status, body)
            assert body.startswith("<?xml") and "<Response" in body, body
            self.responses.append((step, status, body))
        elif step.kind == "connect":
            self.signed_in.add(step.agent)
            await self.store.apply([Addressed(step.agent, Intent("connect"), conn=f"c-{step.agent}", instance="i1")], now)
        elif step.kind == "disconnect":
            await self.store.apply([Addressed(step.agent, Intent("disconnect"), conn=f"c-{step.agent}", instance="i1")], now)
        elif step.kind == "sweep":
            await self.store.sweep(now)
        elif step.kind == "check" and checks and step.check is not None:
            await step.check(self)

    async def run(self, steps: list[Step], *, checks: bool = True) -> None:
        for step in steps:
            await self.do(step, checks=checks)

    async def run_shuffled(self, steps: list[Step], rng: random.Random) -> None:
        """Each run of consecutive posts of one call: duplicated and shuffled, the first incoming kept first."""
        i = 0
        while i < len(steps):
            if steps[i].kind != "post":
                await self.do(steps[i], checks=False)
                i += 1
                continue
            j = i
            while j < len(steps) and steps[j].kind == "post" and steps[j].group == steps[i].group:
                j += 1
            segment = steps[i:j] * 2
            first = [s for s in segment if s.route == "incoming"][:1]
            rest = [s for s in segment if s is not (first[0] if first else None)] if first else segment
            if first:
                rest = list(segment)
                rest.remove(first[0])
            rng.shuffle(rest)
            for step in first + rest:
                await self.do(step)
            i = j

    async def stats(self, at_s: float = SNAPSHOT_AT_S) -> dict[str, Any]:
        """Snapshots of both queues from a freshly loaded mirror, after checking the stream agrees with it."""
        self.clock.set(T0 + int(at_s * 1000))
        now = self.clock.now_ms()
        loaded = QueueStatsMirror(self.config, self.clock)
        await loaded.load(self.redis)
        streamed = QueueStatsMirror(self.config, self.clock)
        entries = [(f[b"id"].decode(), msgpack.unpackb(f[b"d"], raw=False))
                   for _, f in await self.redis.xrange(keys.CHANGES) if f[b"k"] == b"queue"]
        # the second half again, as a follower does after a resync: absolute values converge
        for queue, payload in entries + entries[len(entries) // 2:]:
            streamed.apply(queue, payload)
        out = {q.name: loaded.snapshot(q.name, now) for q in self.config.queues}
        assert out == {q.name: streamed.snapshot(q.name, now) for q in self.config.queues}
        return out

    async def agent_states(self) -> dict[str, tuple[str, str | None]]:
        return {a: (r.state, r.reason) for a, r in (await self.store.read_agents()).items()}


async def make_harness(aiohttp_client: Any, redis: Redis, config: Config | None = None) -> Harness:
    config = config or day_config()
    clock = FakeClock(T0)
    center = config.center
    store = PresenceStore(redis, Settings(wrap_up_s=center.wrap_up_s, disconnect_grace_s=center.disconnect_grace_s),
                          day_key=lambda ms: day_key(ms, center.timezone, center.reset_time),
                          handled_hook=CALL_HANDLED_HOOK)
    metrics = Metrics(queues=[q.name for q in config.queues], sl_thresholds_s=[center.sl_threshold_s])
    signed_in: set[str] = set()
    flow = CallFlow(config=config, redis=redis, presence=store, clock=clock, auth_token=TOKEN, public_url=PUBLIC_URL,
                    insecure=False, metrics=metrics,
                    staffed=lambda q: any(a.id in signed_in for a in config.agents_of_queue(q)))
    app = web.Application()
    app.add_routes(flow.routes())
    client = await aiohttp_client(app)
    return Harness(client, redis, config, clock, flow, store, metrics, signed_in)


def _only_fields(window: dict[str, Any]) -> dict[str, Any]:
    return {k: window[k] for k in EXPECTED_TODAY}


async def test_a_scripted_day_gives_exact_statistics_and_agent_states(aiohttp_client: Any, redis: Redis) -> None:
    h = await make_harness(aiohttp_client, redis)
    await h.run(scripted_day())
    stats = await h.stats()
    support = stats["support"]
    assert _only_fields(support["today"]) == EXPECTED_TODAY
    assert _only_fields(support["last_30m"]) == EXPECTED_LAST_30M
    assert (support["waiting"], support["oldest_enqueued_ms"]) == (0, None)
    sales = stats["sales"]
    assert sales["today"]["unstaffed"] == 1 and sales["today"]["offered"] == 0
    assert sales["today"]["service_level"] is None
    assert await h.agent_states() == {"alice": ("available", None), "bob": ("away", "disconnected")}

    # the TwiML along the way
    bodies = {(s.route, s.params.get("CallSid")): b for s, _, b in h.responses}
    enqueue = bodies[("incoming", sid(1))]
    assert "<Enqueue " in enqueue and 'action="https://cb.example.com/callboard/twilio/voice/queue-result?queue=support"' in enqueue
    assert 'waitUrl="https://cb.example.com/callboard/twilio/voice/wait?queue=support"' in enqueue
    assert "Welcome to support." in enqueue
    unstaffed = bodies[("incoming", sid(6))]
    assert "<Hangup" in unstaffed and "<Enqueue" not in unstaffed
    dial = bodies[("agent", sid(501))]
    assert 'url="https://cb.example.com/callboard/twilio/voice/bridge?queue=support&amp;agent=alice"' in dial
    assert "<Queue " in dial and ">support</Queue>" in dial

    # metrics, counted once each (handle times finalized in sweeps are observed by drain_handled)
    assert await h.flow.drain_handled() == 3
    assert await h.flow.drain_handled() == 0
    reg = h.metrics.registry
    assert reg.get_sample_value("callboard_calls_entered_total", {"queue": "support"}) == 8
    assert reg.get_sample_value("callboard_calls_answered_total", {"queue": "support"}) == 4
    assert reg.get_sample_value("callboard_calls_abandoned_total", {"queue": "support"}) == 3
    assert reg.get_sample_value("callboard_call_handle_seconds_count", {"queue": "support"}) == 4
    assert reg.get_sample_value("callboard_call_handle_seconds_sum", {"queue": "support"}) == 271
    assert reg.get_sample_value("callboard_queue_wait_seconds_count", {"queue": "support", "outcome": "answered"}) == 4
    assert reg.get_sample_value("callboard_webhook_duration_seconds_count", {"route": "incoming"}) == 9

    # time passing alone: the last 30 minutes empty out; today stays
    mirror = QueueStatsMirror(h.config, h.clock)
    await mirror.load(redis)
    now = T0 + SNAPSHOT_AT_S * 1000
    assert mirror.tick(now) == set()
    assert mirror.tick(now + 31 * 60_000) == {"support"}
    later = mirror.snapshot("support", now + 31 * 60_000)
    assert later["last_30m"]["offered"] == 0 and later["last_30m"]["service_level"] is None
    assert _only_fields(later["today"]) == EXPECTED_TODAY


@pytest.mark.parametrize("seed", range(12))
async def test_the_same_day_duplicated_and_shuffled_gives_identical_numbers(aiohttp_client: Any, redis: Redis,
                                                                             seed: int) -> None:
    h = await make_harness(aiohttp_client, redis)
    await h.run_shuffled(scripted_day(), random.Random(seed))
    stats = await h.stats()
    assert _only_fields(stats["support"]["today"]) == EXPECTED_TODAY
    assert _only_fields(stats["support"]["last_30m"]) == EXPECTED_LAST_30M
    assert stats["support"]["waiting"] == 0
    assert stats["sales"]["today"]["unstaffed"] == 1
    assert await h.agent_states() == {"alice": ("available", None), "bob": ("away", "disconnected")}
    assert await redis.get(keys.agent_pop("alice")) is None and await redis.get(keys.agent_pop("bob")) is None
    reg = h.metrics.registry
    assert reg.get_sample_value("callboard_calls_entered_total", {"queue": "support"}) == 8
    assert reg.get_sample_value("callboard_calls_answered_total", {"queue": "support"}) == 4
    assert reg.get_sample_value("callboard_calls_abandoned_total", {"queue": "support"}) == 3
