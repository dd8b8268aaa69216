"""Statistics that must not be fooled: a late wrap-up sweep, a QueueTime out of bounds, an unknown wait.

Each runs the scripted day (tests/test_callflow_day.py) through the real routes on a real Redis, changes one
thing an outage or a bad request would change, and asserts the numbers stay the undisturbed day's.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from redis.asyncio import Redis

from tests.test_callflow_day import (
    EXPECTED_LAST_30M,
    EXPECTED_TODAY,
    T0,
    Step,
    _only_fields,
    make_harness,
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
        spool_task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await spool_task
    finally:
        await client.aclose()
