"""What the wallboard reads besides the first wave's fields: each queue's `waiting_enqueued_ms` (the enqueue
times of the oldest 50 waiting callers, for "at risk"), the abandon thresholds, and `[center] ui_language`.

Real instances on the real test Redis, Twilio's side through the signed webhooks (FakeTwilio): the list is
checked after each change, on an instance that follows the change stream and on one that loads it fresh.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import aiohttp
import pytest

from callboard.config import ConfigError, demo_config, parse_config
from callflow.live import WAITING_LIST_MAX
from callflow.testing import FakeTwilio
from tests import test_browser
from tests.conftest import TWILIO_TOKEN, token
from tests.test_browser import Agents, Caller, SteppingClock, base_url, http, until

agents = test_browser.agents  # the fixture: agents signed in over websockets


async def snapshot(base: str) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {token('wall-1', 'wallboard')}"}
    async with aiohttp.ClientSession() as session, session.get(f"{base}/api/snapshot", headers=headers) as resp:
        assert resp.status == 200
        return await resp.json()


async def test_waiting_enqueued_ms_lists_the_oldest_waiting_callers_live_and_after_a_load(
        make_instance: Any, agents: Agents) -> None:
    config = dataclasses.replace(demo_config(), server=dataclasses.replace(demo_config().server, lease_ttl_s=86_400.0))
    clock = SteppingClock(-100)
    server = await make_instance(config, clock=clock)
    await agents.sign_in(server, "grace")
    base = base_url(server)
    async with http(base) as client:
        twilio = FakeTwilio(client, TWILIO_TOKEN)
        callers = []
        for n, seconds_ago in enumerate((100, 50, 0), start=1):
            clock.at(seconds_ago)
            call = Caller(twilio, n, "sales")
            await call.dial()
            callers.append(call)
        mirror_now = clock.now_ms()
        snap = await snapshot(base)
        sales = snap["queues"]["sales"]
        assert sales["waiting"] == 3
        listed = sales["waiting_enqueued_ms"]
        assert listed == sorted(listed) and len(listed) == 3
        assert listed[0] == sales["oldest_enqueued_ms"]
        assert [round((mirror_now - ms) / 1000) for ms in listed] == [100, 50, 0]
        assert snap["queues"]["support"]["waiting_enqueued_ms"] == []
        assert sales["thresholds"]["abandon_warning"] == 0.05 and sales["thresholds"]["abandon_critical"] == 0.1

        await callers[0].answer("grace", 100)  # the oldest leaves the queue: the list follows
        await until(lambda: len(server.app[test_browser.SERVICES].mirror.queue_entry("sales", clock.now_ms())
                                ["waiting_enqueued_ms"]) == 2, "the answer reached the mirror")
        after = (await snapshot(base))["queues"]["sales"]
        assert after["waiting"] == 2 and after["waiting_enqueued_ms"] == listed[1:]

        # more callers than the list holds: the oldest 50, and waiting says how many there really are
        for n in range(10, 10 + WAITING_LIST_MAX + 3):
            await Caller(twilio, n, "sales").dial()
        crowded = (await snapshot(base))["queues"]["sales"]
        assert crowded["waiting"] == 2 + WAITING_LIST_MAX + 3
        assert len(crowded["waiting_enqueued_ms"]) == WAITING_LIST_MAX
        assert crowded["waiting_enqueued_ms"][:2] == listed[1:]

    # a second instance loads the same list from Redis (start-up path, not the change stream)
    fresh = await make_instance(config, clock=clock)
    loaded = (await snapshot(base_url(fresh)))["queues"]["sales"]
    assert loaded["waiting_enqueued_ms"] == crowded["waiting_enqueued_ms"]


@pytest.mark.parametrize("value, ok", [("ja", True), ("en-GB", True), ("ja-JP", True), ("", False),
                                       ("日本語", False), ("ja JP", False), ('ja"><script>', False)])
def test_ui_language_must_be_a_language_tag(value: str, ok: bool) -> None:
    raw = {"center": {"ui_language": value}, "queues": [{"name": "support"}]}
    if ok:
        assert parse_config(raw, "<t>").center.ui_language == value
    else:
        with pytest.raises(ConfigError, match="center.ui_language"):
            parse_config(raw, "<t>")


def test_abandon_thresholds_are_numbers() -> None:
    raw = {"queues": [{"name": "support", "thresholds": {"abandon_warning": 0.02, "abandon_critical": 0.08}}]}
    t = parse_config(raw, "<t>").queues[0].thresholds
    assert (t.abandon_warning, t.abandon_critical) == (0.02, 0.08)
    with pytest.raises(ConfigError, match="abandon_critical"):
        parse_config({"queues": [{"name": "s", "thresholds": {"abandon_critical": "high"}}]}, "<t>")
