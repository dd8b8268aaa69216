"""Statistics that must not be fooled: a late wrap-up sweep, a QueueTime out of bounds, an unknown wait.

Each runs the scripted day (tests/test_callflow_day.py) through the real routes on a real Redis, changes one
thing an outage or a bad request would change, and asserts the numbers stay the undisturbed day's.
"""

from __future__ import annotations

import asyncio
from typing import Any

import msgpack
import pytest
from redis.asyncio import Redis

from callboard import keys
from callboard.services import cancel_and_wait
from callflow.lua import QUEUE_TIME_PROBE
from callflow.stats import (
    MAX_QUEUE_TIME_S,
    OVER_MAX,
    OVER_MEASURED,
    QUEUE_TIME_TOLERANCE_S,
    bounded_queue_time_ms,
)
from tests.test_callflow_day import (
    EXPECTED_LAST_30M,
    EXPECTED_TODAY,
    T0,
    Step,
    _only_fields,
    agent_leg,
    bridge,
    caller_end,
    incoming,
    make_harness,
    queue_result,
    scripted_day,
    sid,
)
from tests.test_callflow_outage import PrivateRedis, _wait_drained, private_redis  # noqa: F401 (fixture)


def _late_sweeps(steps: list[Step], delay_s: float) -> list[Step]:
    """Every sweep runs delay_s later, as when the sweeper (or Redis) was away; the checks after them too."""
    out = []
    for step in steps:
        if step.kind in ("sweep", "check") and any(s.kind == "sweep" and s.at_s == step.at_s for s in steps):
            step = Step(**{**step.__dict__, "at_s": step.at_s + delay_s})
        out.append(step)
    return sorted(out, key=lambda s: s.at_s)


async def test_a_late_wrap_up_sweep_does_not_inflate_aht(aiohttp_client: Any, redis: Redis) -> None:
    h = await make_harness(aiohttp_client, redis)
    await h.run(_late_sweeps(scripted_day(), 45), checks=False)
    stats = await h.stats()
    assert _only_fields(stats["support"]["today"]) == EXPECTED_TODAY
    assert _only_fields(stats["support"]["last_30m"]) == EXPECTED_LAST_30M
    # alice's last wrap-up (call 7) was due at 3016 s: she has been available since then, not since the sweep
    alice = (await h.store.read_agents())["alice"]
    assert (alice.state, alice.since_ms) == ("available", T0 + 3016 * 1000)


async def test_aht_is_exact_after_a_redis_outage_across_a_wrap_up(aiohttp_client: Any, redis: Redis,
                                                                  private_redis: PrivateRedis) -> None:  # noqa: F811
    client = Redis(port=private_redis.port, socket_connect_timeout=0.3, socket_timeout=2)
    try:
        h = await make_harness(aiohttp_client, client)
        spool_task = asyncio.create_task(h.flow.run_spool())
        steps = scripted_day()
        down = next(i for i, s in enumerate(steps) if s.kind == "post" and s.params.get("CallSid") == sid(7))
        sweep = next(i for i, s in enumerate(steps) if i > down and s.kind == "sweep")  # due at 3016 s
        await h.run(steps[:down])
        private_redis.stop()
        for step in steps[down:sweep]:
            await h.do(step, checks=False)
        private_redis.start()
        await _wait_drained(h)
        # Redis was away until 20 s after call 7's wrap-up was due: the first sweep runs then
        late = [Step(**{**s.__dict__, "at_s": 3036}) if s.kind == "sweep" and s.at_s == 3016 else s
                for s in steps[sweep:] if s.kind != "check"]
        await h.run(late, checks=False)
        stats = await h.stats()
        assert _only_fields(stats["support"]["today"]) == EXPECTED_TODAY
        assert _only_fields(stats["support"]["last_30m"]) == EXPECTED_LAST_30M
        assert not await cancel_and_wait([spool_task]) and spool_task.cancelled()  # see cancel_and_wait: one cancel may be lost on 3.11
    finally:
        await client.aclose()


# --- QueueTime bounds (issue 9 item 5) -----------------------------------------------------------------

SEEN, ADOPTED = True, False
H4 = MAX_QUEUE_TIME_S * 1000
TOL = QUEUE_TIME_TOLERANCE_S * 1000
NOW_MS = 1_763_700_000_000

# (given ms, enq ms, seen entering) -> (queue time ms or None, refusal)
BOUNDS = [
    ("Twilio's QueueTime is used when plausible", 12_000, NOW_MS - 13_000, SEEN, (12_000, None)),
    ("within the stated tolerance it is believed", 70_000, NOW_MS - 10_000, SEEN, (70_000, None)),
    ("beyond the tolerance the measured time wins", 70_001, NOW_MS - 10_000, SEEN, (10_000, OVER_MEASURED)),
    ("a million seconds a second after entering", 1_000_000_000, NOW_MS - 1_000, SEEN, (1_000, OVER_MAX)),
    ("four hours is the ceiling even for an adopted call", H4 + 1, NOW_MS - 5_000, ADOPTED, (5_000, OVER_MAX)),
    ("exactly four hours is possible", H4, None, ADOPTED, (H4, None)),
    ("an adopted call's own QueueTime is its wait", 30_000, NOW_MS - 30_000, ADOPTED, (30_000, None)),
    ("no QueueTime: measured", None, NOW_MS - 8_000, SEEN, (8_000, None)),
    ("nothing to measure from and no QueueTime: unknown", None, None, ADOPTED, (None, None)),
    ("out of bounds with nothing to measure from: unknown, not zero", H4 + 1, None, ADOPTED, (None, OVER_MAX)),
    ("a clock ahead of ours never gives a negative wait", None, NOW_MS + 5_000, SEEN, (0, None)),
]


@pytest.mark.parametrize("name,given,enq,seen,expected", BOUNDS, ids=[b[0] for b in BOUNDS])
def test_queue_time_bounds(name: str, given: int | None, enq: int | None, seen: bool,
                           expected: tuple[int | None, str | None]) -> None:
    assert bounded_queue_time_ms(given, enq, seen, NOW_MS) == expected


async def test_the_lua_queue_time_bounds_equal_the_python(redis: Redis) -> None:
    probe = redis.register_script(QUEUE_TIME_PROBE)
    header = ["%d" % NOW_MS, "2025-11-21", "10000", "15000", "1000"]
    for name, given, enq, seen, expected in BOUNDS:
        raw = await probe(args=[*header, "" if given is None else given, "" if enq is None else enq,
                                "1" if seen else "0"])
        got = (None if raw[0] == -1 else raw[0], (raw[1].decode() or None))
        assert got == expected, name


async def _connected(h: Any, *agents: str) -> None:
    for agent in agents:
        await h.do(Step(0, "connect", agent=agent))


async def _window(h: Any, at_s: float) -> tuple[dict[str, Any], dict[str, Any]]:
    stats = await h.stats(at_s)
    return stats["support"]["today"], stats["support"]["last_30m"]


async def test_a_huge_queue_time_is_replaced_by_the_measured_time(aiohttp_client: Any, redis: Redis,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    h = await make_harness(aiohttp_client, redis)
    await _connected(h, "alice")
    await h.run([incoming(0, 1), agent_leg(0.5, 1, "alice"), bridge(1, 1, "alice", 1_000_000),
                 incoming(10, 2), queue_result(12, 2, "hangup", 500)])
    today, last = await _window(h, 60)
    assert today == last
    assert today["asa_s"] == 1.0 and today["answered_within_sl"] == 1  # measured: 1 s, not 1,000,000 s
    assert today["short_abandoned"] == 1  # measured 2 s, below short_abandon_s = 5
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "QueueTime" in r.getMessage()]
    assert len(warnings) == 2, warnings
    assert sid(1) in warnings[0] and "1000000" in warnings[0] and "4 hours" in warnings[0] and "1 s" in warnings[0]
    assert sid(2) in warnings[1] and "beyond the time since the call entered" in warnings[1]
    reg = h.metrics.registry
    assert reg.get_sample_value("callboard_queue_wait_seconds_sum", {"queue": "support", "outcome": "answered"}) == 1


async def test_a_queue_time_within_the_tolerance_is_believed(aiohttp_client: Any, redis: Redis) -> None:
    h = await make_harness(aiohttp_client, redis)
    await _connected(h, "alice")
    # Twilio says 65 s, we saw the call enter 10 s ago: a delayed incoming or clock skew, within 60 s
    await h.run([incoming(0, 1), agent_leg(9, 1, "alice"), bridge(10, 1, "alice", 65)])
    today, _ = await _window(h, 60)
    assert today["asa_s"] == 65.0 and today["answered_within_sl"] == 0


# --- events for calls this server never saw enter (issue 9 item 6) ----------------------------------------

async def test_an_unknown_call_with_an_unknown_wait_is_not_a_short_abandon(aiohttp_client: Any, redis: Redis) -> None:
    h = await make_harness(aiohttp_client, redis)
    await _connected(h, "alice")
    await h.run([queue_result(5, 1, "hangup", "abc")])  # never saw its incoming; QueueTime not a number
    today, last = await _window(h, 60)
    assert today == last  # both windows count it the same way
    assert (today["offered"], today["abandoned"], today["short_abandoned"], today["wait_unknown"]) == (1, 1, 0, 1)
    assert today["service_level"] is None and today["abandon_rate"] is None  # nothing known to rate
    assert await h.redis.hget(f"cb:call:{sid(1)}", "qt_ms") is None
    assert h.metrics.registry.get_sample_value("callboard_calls_abandoned_total", {"queue": "support"}) == 1
    assert h.metrics.registry.get_sample_value("callboard_queue_wait_seconds_count",
                                               {"queue": "support", "outcome": "abandoned"}) in (None, 0)


async def test_an_unknown_answered_wait_stays_out_of_asa_and_service_level(aiohttp_client: Any, redis: Redis) -> None:
    h = await make_harness(aiohttp_client, redis)
    await _connected(h, "alice", "bob")
    await h.run([
        incoming(0, 1), agent_leg(9, 1, "alice"), bridge(10, 1, "alice", 10),       # known: 10 s
        agent_leg(19, 2, "bob"), bridge(20, 2, "bob", ""),                          # unknown call, no QueueTime
        queue_result(30, 3, "hangup", 40),                                          # unknown call, wait given: 40 s
    ])
    today, last = await _window(h, 60)
    assert today == last
    assert (today["offered"], today["answered"], today["abandoned"]) == (3, 2, 1)
    assert today["wait_unknown"] == 1
    assert today["asa_s"] == 10.0  # the unknown wait is not averaged in as 0
    assert today["answered_within_sl"] == 1
    assert today["service_level"] == 0.5 and today["abandon_rate"] == 0.5  # over the 2 calls whose wait is known
    # the pop of the unknown call says nothing about its wait rather than "0 s"
    pop = msgpack.unpackb(await h.redis.get(keys.agent_pop("bob")), raw=False)
    assert pop["call_sid"] == sid(2) and "waited_s" not in pop


async def test_an_adopted_call_is_counted_once_whatever_comes_later(aiohttp_client: Any, redis: Redis) -> None:
    h = await make_harness(aiohttp_client, redis)
    await _connected(h, "alice")
    steps = [queue_result(5, 1, "hangup", 30), queue_result(6, 1, "hangup", 30), incoming(7, 1), caller_end(8, 1)]
    await h.run(steps)
    today, last = await _window(h, 60)
    assert today == last
    assert (today["offered"], today["abandoned"], today["short_abandoned"], today["wait_unknown"]) == (1, 1, 0, 0)
    assert today["abandon_rate"] == 1.0
    assert today["offered"] == 1 and (await _window(h, 60))[0]["offered"] == 1
    assert await h.redis.zcard(keys.queue_waiting("support")) == 0  # a late incoming does not re-queue it
