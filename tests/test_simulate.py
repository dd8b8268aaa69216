"""The simulator: a seeded, believable, well-formed plan; signed webhooks; and a short run against the real app."""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import math
import os
import re
import statistics
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from twilio.request_validator import RequestValidator
from twilio.twiml.voice_response import Dial, VoiceResponse

from callboard.config import Config, demo_config
from callboard.services import SERVICES
from simulator.directory import DEMO_CUSTOMERS, caller_numbers, seed_for_demo
from simulator.run import (
    Behaviour,
    SimulationOptions,
    Step,
    _twiml_find,
    add_arguments,
    format_report,
    run_simulation,
    schedule,
    select_agents,
    signed_headers,
)
from tests.conftest import SECRET, TWILIO_TOKEN, make_config, token

SID = {"CallSid": r"CA[0-9a-f]{32}", "AccountSid": r"AC[0-9a-f]{32}", "QueueSid": r"QU[0-9a-f]{32}",
       "DequeingCallSid": r"CA[0-9a-f]{32}", "ApplicationSid": r"AP[0-9a-f]{32}"}
E164 = re.compile(r"^\+[1-9]\d{7,14}$")


def options(config: Config | None = None, **kw: Any) -> SimulationOptions:
    values: dict[str, Any] = dict(url="http://127.0.0.1:8080", agents=None, calls_per_minute=2.0, seed=1,
                                  duration_s=8 * 3600.0, speed=1.0, secret=SECRET, twilio_auth_token=TWILIO_TOKEN,
                                  public_url=None, config=config or demo_config())
    values.update(kw)
    return SimulationOptions(**values)


def by_call(steps: list[Step]) -> dict[str, list[Step]]:
    calls: dict[str, list[Step]] = defaultdict(list)
    for step in steps:
        if step.actor.startswith("call:"):
            calls[step.actor].append(step)
    return calls


@pytest.fixture(scope="module")
def day() -> list[Step]:
    """An eight-hour day of the demo center: 12 agents, 2 calls a minute (about 65% occupancy)."""
    return list(schedule(options()))


# -- determinism ----------------------------------------------------------------------------------------


def test_the_schedule_is_a_pure_function_of_seed_and_options() -> None:
    first = list(itertools.islice(schedule(options(seed=7, duration_s=None)), 3000))
    again = list(itertools.islice(schedule(options(seed=7, duration_s=None)), 3000))
    assert first == again
    assert first != list(itertools.islice(schedule(options(seed=8, duration_s=None)), 3000))
    assert first != list(itertools.islice(schedule(options(seed=7, duration_s=None, calls_per_minute=4)), 3000))
    # what is not part of the plan does not change it
    assert first == list(itertools.islice(schedule(options(seed=7, duration_s=None, url="http://other:1",
                                                           secret="x", twilio_auth_token="y")), 3000))


ROOT = Path(__file__).resolve().parents[1]
PLAN_DIGEST = """
import hashlib, sys
from callboard.config import demo_config
from simulator.run import SimulationOptions, schedule
o = SimulationOptions(url="x", agents=7, calls_per_minute=2, seed=11, duration_s=3600.0, speed=3.0, secret="s",
                      twilio_auth_token="t", public_url=None, config=demo_config())
print(hashlib.sha256(repr(list(schedule(o))).encode()).hexdigest())
"""


def test_the_schedule_is_the_same_in_another_process_with_another_hash_seed() -> None:
    digests = {subprocess.run([sys.executable, "-c", PLAN_DIGEST], capture_output=True, text=True, check=True,
                              env=os.environ | {"PYTHONHASHSEED": seed}, cwd=ROOT).stdout for seed in ("1", "2")}
    assert len(digests) == 1 and len(digests.pop().strip()) == 64


def test_steps_come_in_time_order_and_stop_at_the_duration() -> None:
    steps = list(schedule(options(duration_s=600.0, speed=2.0)))
    times = [s.at_s for s in steps]
    assert times == sorted(times)
    assert times[-1] <= 1200.0  # 600 wall-clock seconds at 2x


# -- a believable day -------------------------------------------------------------------------------------


def test_arrivals_follow_calls_per_minute_and_spread_over_staffed_queues(day: list[Step]) -> None:
    arrivals = [s for s in day if s.kind == "incoming" and not s.duplicate]
    assert 0.9 * 2 < len(arrivals) / 480 < 1.1 * 2
    shares = Counter(s.call.queue for s in arrivals if s.call)
    assert set(shares) == {"support", "sales", "billing"}
    assert shares["support"] > shares["billing"] > shares["sales"]  # weighted by the agents serving each


def test_abandon_share_queue_times_and_talk_times_are_believable(day: list[Step]) -> None:
    results = [s for s in day if s.kind == "queue-result" and not s.duplicate]
    outcomes = Counter(s.params["QueueResult"] for s in results)
    abandon_share = outcomes["hangup"] / len(results)
    assert 0.02 < abandon_share < 0.12, outcomes
    short = [s for s in results if s.params["QueueResult"] == "hangup" and int(s.params["QueueTime"]) < 5]
    assert short, "some callers hang up within seconds (the short abandons SL excludes)"
    waits = [int(s.params["QueueTime"]) for s in results if s.params["QueueResult"] == "bridged"]
    assert statistics.median(waits) < 20
    assert sum(w <= 20 for w in waits) / len(results) > 0.7  # a service level a real center would recognise
    talks = [int(s.params["CallDuration"]) for s in day if s.leg == "agent-status" and not s.duplicate]
    assert 120 < statistics.mean(talks) < 260 and min(talks) >= 20


def test_an_overloaded_center_abandons_more() -> None:
    calm = list(schedule(options(duration_s=3 * 3600.0)))
    busy = list(schedule(options(duration_s=3 * 3600.0, calls_per_minute=6)))

    def share(steps: list[Step]) -> float:
        results = [s.params["QueueResult"] for s in steps if s.kind == "queue-result" and not s.duplicate]
        return results.count("hangup") / len(results)

    assert share(busy) > 3 * share(calm)


def test_agents_take_breaks_reload_their_tab_and_drop_off(day: list[Step]) -> None:
    config = demo_config()
    grace_s = config.center.disconnect_grace_s
    away = [s for s in day if s.kind == "set_state" and s.params["state"] == "away"]
    assert away and {s.params["reason"] for s in away} <= set(config.center.away_reasons)
    assert Counter(s.params["reason"] for s in away).most_common(1)[0][0] == "break"
    for agent_id in {a.id for a in config.agents}:
        mine = [s for s in day if s.actor == f"agent:{agent_id}"]
        assert mine[0].kind == "login" and mine[0].at_s == 0
        for out, back in zip(mine, mine[1:], strict=False):
            if out.kind == "logout" and out.leg == "reload":
                assert back.kind == "login" and back.at_s - out.at_s < grace_s  # within the grace: no flicker
            if out.kind == "logout" and out.leg == "drop":
                assert back.kind == "login" and back.at_s - out.at_s > grace_s  # long enough to be marked away
    legs = Counter(s.leg for s in day if s.kind == "logout")
    assert legs["reload"] > 50 and legs["drop"] > 0


def test_an_agent_takes_one_caller_at_a_time_and_never_while_away(day: list[Step]) -> None:
    wrap_up_s = demo_config().center.wrap_up_s
    taken: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for steps in by_call(day).values():
        agent_step = next((s for s in steps if s.kind == "agent"), None)
        if agent_step is not None:
            end_s = next((s.at_s for s in steps if s.leg == "agent-status"), math.inf)  # inf: talking at the end
            taken[agent_step.params["From"]].append((agent_step.at_s, end_s))
    for client, spans in taken.items():
        agent_id = client.removeprefix("client:")
        spans.sort()
        for (_, end), (start, _) in zip(spans, spans[1:], strict=False):
            assert start - end >= wrap_up_s, f"{agent_id} took a caller during wrap-up"
        away_from = None
        for s in (s for s in day if s.actor == f"agent:{agent_id}" and s.kind == "set_state"):
            if s.params["state"] == "away":
                away_from = s.at_s
            elif away_from is not None:
                assert not any(away_from <= start <= s.at_s for start, _ in spans), f"{agent_id} took a call on a break"
                away_from = None


def test_select_agents_covers_every_queue_first() -> None:
    config = demo_config()
    chosen = select_agents(config, 5)
    assert len(chosen) == 5
    assert {q.name for q in config.queues} <= {q for a in chosen for q in a.queues}
    assert select_agents(config, None) == list(config.agents)


# -- Twilio's parameters ----------------------------------------------------------------------------------


def test_every_call_is_a_well_formed_twilio_sequence(day: list[Step]) -> None:
    config = demo_config()
    calls = by_call(day)
    in_flight = [c for c in calls.values() if c[-1].kind != "end"]
    assert len(in_flight) < 20 and all(c[0].at_s > 7 * 3600 for c in in_flight)  # only the day's last calls
    for steps in calls.values():
        originals = [s for s in steps if not s.duplicate]
        assert originals[0].kind == "incoming"
        if originals[-1].kind != "end":
            continue
        call = originals[0].call
        assert call is not None
        queue = config.queue(call.queue)
        assert queue is not None and call.to_number in queue.numbers and E164.match(call.from_number)
        for s in steps:
            for name, pattern in SID.items():
                if name in s.params:
                    assert re.fullmatch(pattern, s.params[name]), (name, s.params[name])
            if s.kind != "end":
                assert s.params["ApiVersion"] == "2010-04-01" and s.params["Direction"] == "inbound"
            for name in ("QueueTime", "QueuePosition", "CurrentQueueSize", "AvgQueueTime", "CallDuration"):
                if name in s.params:
                    assert s.params[name].isdigit(), (name, s.params[name])
        ends = Counter(s.leg for s in originals if s.leg in ("queue-result", "caller-status"))
        assert ends == {"queue-result": 1, "caller-status": 1}
        for wait in (s for s in steps if s.kind == "wait"):
            assert 1 <= int(wait.params["QueuePosition"]) <= int(wait.params["CurrentQueueSize"])
        agent_leg = next((s for s in steps if s.kind == "agent"), None)
        result = next(s for s in originals if s.kind == "queue-result")
        if agent_leg is None:
            assert result.params["QueueResult"] == "hangup"
            continue
        agent_id = agent_leg.params["From"].removeprefix("client:")
        assert agent_leg.params["Caller"] == f"client:{agent_id}" and agent_leg.params["To"] == ""
        assert agent_leg.params["queue"] in config.agents_by_id[agent_id].queues
        bridge = next(s for s in steps if s.kind == "bridge")
        assert bridge.params["CallSid"] == call.sid and bridge.params["DequeingCallSid"] == agent_leg.params["CallSid"]
        assert result.params["QueueResult"] == "bridged" and result.at_s > bridge.at_s
        agent_status = next(s for s in steps if s.leg == "agent-status")
        assert agent_status.params["CallSid"] == agent_leg.params["CallSid"]
        assert agent_status.params["CallStatus"] == "completed"


def test_some_requests_are_retried_and_some_status_callbacks_overtake_the_queue_result(day: list[Step]) -> None:
    duplicates = [s for s in day if s.duplicate]
    assert duplicates and {s.kind for s in duplicates} <= {"incoming", "bridge", "queue-result", "status"}
    for dup in duplicates:  # a retry is the same request: same parameters, same idempotency token
        original = next(s for s in day if s.token == dup.token and not s.duplicate)
        assert original.params == dup.params and original.kind == dup.kind
    overtaken = 0
    for steps in by_call(day).values():
        legs = [s.leg for s in steps if s.leg in ("queue-result", "caller-status") and not s.duplicate]
        overtaken += legs == ["caller-status", "queue-result"]
    assert 0 < overtaken < 0.2 * len(by_call(day))


def test_signed_headers_validate_with_twilios_request_validator() -> None:
    url = "http://127.0.0.1:8080/twilio/voice/queue-result?queue=support"
    params = {"CallSid": "CA" + "0" * 32, "QueueResult": "hangup", "QueueTime": "12", "To": ""}
    headers = signed_headers(RequestValidator(TWILIO_TOKEN), url, params, "tok")
    validator = RequestValidator(TWILIO_TOKEN)
    assert validator.validate(url, params, headers["X-Twilio-Signature"])
    assert not validator.validate(url, params | {"QueueTime": "13"}, headers["X-Twilio-Signature"])
    assert not validator.validate(url.replace("support", "sales"), params, headers["X-Twilio-Signature"])
    assert headers["I-Twilio-Idempotency-Token"] == "tok"


def test_the_simulator_follows_the_urls_in_the_servers_twiml() -> None:
    response = VoiceResponse()
    response.enqueue("support", action="http://h/twilio/voice/queue-result?queue=support", wait_url="http://h/w")
    enqueue = _twiml_find(str(response), "Enqueue")
    assert enqueue.get("action").endswith("?queue=support") and enqueue.get("waitUrl") == "http://h/w"
    dial_response = VoiceResponse()
    dial = Dial()
    dial.queue("support", url="http://h/twilio/voice/bridge?queue=support&agent=alice")
    dial_response.append(dial)
    assert _twiml_find(str(dial_response), "Queue").get("url").endswith("agent=alice")
    assert _twiml_find("not xml", "Enqueue") is None


def test_cli_defaults() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args([])
    assert (args.url, args.agents, args.calls_per_minute, args.seed, args.duration, args.speed) == (
        "http://127.0.0.1:8080", None, 6.0, 1, None, 1.0)


# -- against the real server -------------------------------------------------------------------------------


async def server_snapshot(server: Any) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {token('wall', 'wallboard')}"}
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://{server.host}:{server.port}/api/snapshot", headers=headers) as resp:
            assert resp.status == 200
            return await resp.json()


async def server_counts(server: Any) -> dict[str, dict[str, int]]:
    snap = await server_snapshot(server)
    return {q: {k: e["today"][k] for k in ("offered", "answered", "abandoned")} | {"waiting": e["waiting"]}
            for q, e in snap["queues"].items()}


def sim_counts(report: dict[str, Any], queues: list[str]) -> dict[str, dict[str, int]]:
    per = report["by_queue"]
    return {q: {k: per.get(q, {}).get(k, 0) for k in ("offered", "answered", "abandoned")} | {"waiting": 0}
            for q in queues}


async def test_a_short_simulation_against_the_real_server_matches_its_counts(make_instance: Any) -> None:
    config = make_config(center={"wrap_up_s": 0})  # server timers do not scale with speed: keep agents cycling
    server = await make_instance(config)
    url = f"http://{server.host}:{server.port}"
    # the demo's directory in the instance's own SQL store, and half the callers dialling from its numbers
    services = server.app[SERVICES]
    assert await seed_for_demo(services.db, config, services.clock) == len(DEMO_CUSTOMERS)
    # busy on purpose: short talks so agents cycle, frequent breaks, reloads and drop-offs so all are exercised
    behaviour = Behaviour(talk_median_s=20.0, break_every_s=400.0, reload_every_s=80.0, drop_every_s=400.0,
                          duplicate_rate=0.1, out_of_order_rate=0.2)
    opts = options(config, url=url, agents=None, calls_per_minute=60.0, seed=5, duration_s=12.0, speed=20.0,
                   behaviour=behaviour, known_callers=caller_numbers())
    report = await run_simulation(opts)
    print(format_report(report))
    # screen pops found the callers the directory knows (a random number finds nobody)
    assert 0 < report["agents"]["pops_with_customer"] < report["calls"]["answered"], report["agents"]

    assert report["webhooks"]["errors"] == 0, report["webhooks"]["error_samples"]
    assert report["websocket"]["errors"] == 0, report["websocket"]["error_samples"]
    assert report["websocket"]["unexpected_closes"] == 0, report["websocket"]["close_samples"]
    agents = report["agents"]
    assert agents["simulated"] == len(config.agents) and agents["connected"] == agents["expected_connected"]
    assert agents["reloads"] > 0 and agents["pops"] > 0 and report["calls"]["answered"] > 0
    calls = report["calls"]
    assert calls["offered"] > 100 and calls["unstaffed"] == 0
    assert calls["offered"] == calls["answered"] + calls["abandoned"] == calls["completed"]
    assert report["webhooks"]["duplicates_sent"] > 0

    queues = [q.name for q in config.queues]
    expected = sim_counts(report, queues)
    for _ in range(50):  # the server's counters follow its change stream: give them a moment
        seen = await server_counts(server)
        if seen == expected:
            break
        await asyncio.sleep(0.1)
    assert seen == expected


async def test_a_stopped_simulation_hangs_up_its_callers_and_closes_its_sockets(make_instance: Any) -> None:
    config = make_config(center={"wrap_up_s": 1})
    server = await make_instance(config)
    stop = asyncio.Event()
    opts = options(config, url=f"http://{server.host}:{server.port}", calls_per_minute=120.0, seed=9,
                   duration_s=None, speed=20.0)
    task = asyncio.create_task(run_simulation(opts, stop))
    await asyncio.sleep(3.0)
    stop.set()
    report = await asyncio.wait_for(task, 30)
    assert report["webhooks"]["errors"] == 0, report["webhooks"]["error_samples"]
    assert report["calls"]["finished_at_stop"] > 0
    assert report["calls"]["offered"] == report["calls"]["completed"] > 0
    for _ in range(50):
        snap = await server_snapshot(server)
        if all(e["waiting"] == 0 for e in snap["queues"].values()) and all(
                e["connections"] == 0 for e in snap["agents"].values()):
            break
        await asyncio.sleep(0.1)
    assert all(e["waiting"] == 0 for e in snap["queues"].values())
    assert all(e["connections"] == 0 for e in snap["agents"].values())
    assert await server_counts(server) == sim_counts(report, [q.name for q in config.queues])


async def test_refused_webhooks_and_refused_tokens_are_counted_and_sampled(make_instance: Any) -> None:
    config = make_config()
    server = await make_instance(config)
    opts = options(config, url=f"http://{server.host}:{server.port}", calls_per_minute=120.0, seed=2,
                   duration_s=1.5, speed=20.0, twilio_auth_token="not-the-token", secret="not-the-secret-" * 3)
    report = await asyncio.wait_for(run_simulation(opts), 20)
    webhooks = report["webhooks"]
    assert webhooks["errors"] > 0 and webhooks["errors"] == sum(webhooks["requests"].values())
    assert all(e["status"] == 403 and "signature" in e["body"] for e in webhooks["error_samples"])
    assert report["calls"]["arrived"] > 0 and report["calls"]["offered"] == 0
    closes = report["websocket"]["close_samples"]
    assert len(closes) == len(config.agents) and {c["code"] for c in closes} == {4401}
    assert report["agents"]["reconnects"] == 0  # a refused token is not retried in a loop


async def test_a_plan_the_server_disagrees_with_is_reported_as_divergences(make_instance: Any) -> None:
    server = await make_instance(make_config(center={"wrap_up_s": 5}))
    # the simulator believes there is no wrap-up, so its agents pick up while the server has them in wrap-up
    opts = options(make_config(center={"wrap_up_s": 0}), url=f"http://{server.host}:{server.port}",
                   calls_per_minute=60.0, seed=3, duration_s=3.0, speed=20.0,
                   behaviour=Behaviour(talk_median_s=10.0, break_every_s=1e9, reload_every_s=1e9, drop_every_s=1e9))
    report = await asyncio.wait_for(run_simulation(opts), 30)
    assert report["divergences"] > 0
    assert any(d.get("server_state") == "wrap-up" for d in report["divergence_samples"])


async def test_offer_demo_runs_offer_mode_through_the_emulator(aiohttp_server: Any, redis_url: str, redis: Any,
                                                               tmp_path: Path) -> None:
    """`callboard demo --routing offer`'s simulation: agents accept, reject and miss offers; callers get through."""
    from callboard import keys as cb_keys
    from simulator.offer_demo import OfferBehaviour, OfferDemo
    from tests.routing_support import offer_config, start_center

    # the real caller lookup over the demo's directory (seeded as `callboard demo` does)
    center = await start_center(aiohttp_server, redis_url, redis, offer_config(offer_timeout_s=2), directory=True,
                                data_dir=tmp_path)
    services = center.services()
    assert await seed_for_demo(services.db, services.config, services.clock) == len(DEMO_CUSTOMERS)
    stop = asyncio.Event()
    behaviour = OfferBehaviour(accept_p=0.6, reject_p=0.2, think_s=(0.2, 1.0), talk_s=(1.0, 3.0),
                               patience_s=(30.0, 60.0), back_after_missed_s=(1.0, 2.0))
    demo = OfferDemo(config=center.services().config, secret=SECRET, emu=center.emu, base=center.base(), stop=stop,
                     calls_per_minute=90, speed=1.0, seed=7, behaviour=behaviour, known_callers=caller_numbers(owned=True),
                     known_share=1.0)  # every caller a customer with an owner: offers to owners show
    task = asyncio.create_task(demo.run())
    await asyncio.sleep(12)
    stop.set()
    report = await asyncio.wait_for(task, 30)
    c = report.counts
    assert c["callers"] >= 5 and c["offers"] >= 3 and c["accepted"] >= 1 and c["bridged"] >= 1, report.line()
    assert c["errors"] == 0, report.line()
    # known callers popped with their customer, and the router offered some to the customer's owner first
    assert c["known_pops"] >= 1 and c["offers_to_owner"] >= 1, report.line()
    facts = [json.loads(f[b"f"]) for _, f in await redis.xrange(cb_keys.facts())]
    results = {f["result"] for f in facts if f["type"] == "offer.ended"}
    assert "accepted" in results
    answered = center.services().mirror.queue_entry("support", center.services().clock.now_ms())["today"]["answered"]
    answered += center.services().mirror.queue_entry("sales", center.services().clock.now_ms())["today"]["answered"]
    assert answered >= 1
    await center.emu.close()
