"""Redis gone for a whole minute of a busy afternoon: every webhook still answers TwiML, and once Redis is
back every number equals that of the same afternoon without the outage.

The afternoon is 400 calls in a minute and a half (about 2,400 webhooks; a center at 16,000 calls/h), with
abandons and answers by 30 agents. Time is a FakeClock, so the minute is a minute of the calls' own time;
Redis is a real redis-server that is really stopped. Sweeps cannot run while Redis is away, so wrap-ups
end late in the outage run: the numbers must not notice (issue 9 item 4).
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from callboard.config import Config, parse_config
from callboard.services import cancel_and_wait
from tests.test_callflow_day import (
    SUPPORT,
    Harness,
    Step,
    agent_end,
    agent_leg,
    bridge,
    caller_end,
    incoming,
    make_harness,
    queue_result,
)
from tests.test_callflow_outage import PrivateRedis, _wait_drained

AGENTS = [f"agent{i:02d}" for i in range(30)]
CALLS = 400
OUTAGE_S = (5.0, 65.0)  # Redis is stopped for this minute of the afternoon


@pytest.fixture
def busy_redis() -> Iterator[PrivateRedis]:
    with tempfile.TemporaryDirectory(prefix="cb-busy-") as tmp:
        server = PrivateRedis(Path(tmp), appendfsync="everysec")  # fsync per write: minutes on a busy machine
        server.start()
        try:
            yield server
        finally:
            if server.proc is not None:
                server.proc.kill()
                server.proc.wait(5)


def busy_config() -> Config:
    return parse_config({
        "center": {"name": "Busy", "timezone": "Europe/Paris", "sl_threshold_s": 10, "short_abandon_s": 3,
                   "wrap_up_s": 4, "disconnect_grace_s": 10},
        "queues": [{"name": "support", "numbers": [SUPPORT]}],
        "agents": [{"id": a, "name": a, "queues": ["support"]} for a in AGENTS],
    }, "<busy>")


def afternoon() -> list[Step]:
    steps: list[Step] = [Step(0, "connect", agent=a) for a in AGENTS]
    for n in range(1, CALLS + 1):
        t0 = n * 0.225
        steps.append(incoming(t0, n))
        wait_s = 1 + n % 13
        if n % 4 == 0:  # abandons, some of them short
            steps += [queue_result(t0 + wait_s, n, "hangup", wait_s), caller_end(t0 + wait_s, n)]
            continue
        agent = AGENTS[n % len(AGENTS)]
        talk_s = 2 + n % 5
        steps += [agent_leg(t0 + wait_s - 0.5, n, agent), bridge(t0 + wait_s, n, agent, wait_s),
                  caller_end(t0 + wait_s + talk_s, n), queue_result(t0 + wait_s + talk_s, n, "bridged", wait_s),
                  agent_end(t0 + wait_s + talk_s + 0.25, n, agent)]
    end = max(s.at_s for s in steps)
    steps += [Step(float(t), "sweep") for t in range(1, int(end) + 30)]
    return sorted(steps, key=lambda s: s.at_s)  # stable: a call's own order is kept


async def _final(h: Harness) -> tuple[dict[str, Any], dict[str, tuple[str, str | None]]]:
    stats = await h.stats(at_s=max(s.at_s for s in afternoon()) + 1)
    return stats["support"], await h.agent_states()


async def test_a_minute_without_redis_under_load_loses_nothing(aiohttp_client: Any, redis: Redis,
                                                               busy_redis: PrivateRedis) -> None:
    steps = afternoon()
    assert sum(1 for s in steps if s.kind == "post" and OUTAGE_S[0] <= s.at_s < OUTAGE_S[1]) > 1_200

    calm = await make_harness(aiohttp_client, redis, busy_config())
    await calm.run(steps, checks=False)
    expected_queue, expected_agents = await _final(calm)
    assert expected_queue["today"]["offered"] == CALLS and expected_queue["today"]["handled"] > 200

    client = Redis(port=busy_redis.port, socket_connect_timeout=0.3, socket_timeout=2)
    try:
        h = await make_harness(aiohttp_client, client, busy_config())
        spool = asyncio.create_task(h.flow.run_spool())
        phase = "before"
        for step in steps:
            if phase == "before" and step.at_s >= OUTAGE_S[0]:
                busy_redis.stop()
                phase = "down"
            if phase == "down" and step.at_s >= OUTAGE_S[1]:
                busy_redis.start()
                await _wait_drained(h, timeout_s=60)
                phase = "after"
            if phase == "down" and step.kind == "sweep":
                continue  # no sweeper reaches a Redis that is gone
            await h.do(step, checks=False)  # a post asserts 200 and TwiML, outage or not
        queue, agents = await _final(h)
        assert h.metrics.registry.get_sample_value("callboard_spool_dropped_total") in (None, 0)
        assert not await cancel_and_wait([spool]) and spool.cancelled()  # see cancel_and_wait: one cancel may be lost on 3.11
    finally:
        await client.aclose()
    assert queue["today"] == expected_queue["today"]
    assert queue["last_30m"] == expected_queue["last_30m"]
    assert agents == expected_agents
