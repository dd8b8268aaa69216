"""`callboard demo --bridge conference`: the simulated center on the conference bridge, end to end on loopback.

Callboard is the code under test; Twilio's side is the project's emulator (simulator/twilio_api.py), the
agents are websocket clients clicking the controls API. Each run checks the demo's own count of offered,
answered and abandoned callers against the server's statistics (exact), and that holds, transfers and
dispositions reached Redis (facts, call hashes) and the call records behind /reports.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
from redis.asyncio import Redis

from callboard import keys
from simulator.conference_demo import ConferenceBehaviour, ConferenceDemo
from simulator.directory import DEMO_CUSTOMERS, caller_numbers, seed_for_demo
from tests.conftest import SECRET, make_config, token
from tests.routing_support import OFFER_ROUTING, OfferCenter, start_center

# Short, busy calls with every control likely, so a run of seconds shows all of them.
BUSY = ConferenceBehaviour(think_s=(0.2, 0.6), accept_p=0.9, talk_s=(1.5, 3.0), hold_p=0.85, hold_s=(0.5, 1.0),
                           transfer_agent_p=0.4, transfer_queue_p=0.4, wrap_s=(0.1, 0.3), patience_s=(15.0, 30.0),
                           back_after_missed_s=(0.5, 1.0))


def conference_config(**extra: Any) -> Any:
    return make_config(center={"bridge": "conference", "conference_region": "jp1", "wrap_up_s": 1}, **extra)


async def seeded_center(aiohttp_server: Any, redis_url: str, redis: Redis, config: Any, data_dir: Path) -> OfferCenter:
    """A center with the real caller lookup over the demo's directory, seeded as `callboard demo` seeds it."""
    center = await start_center(aiohttp_server, redis_url, redis, config, directory=True, data_dir=data_dir)
    services = center.services()
    assert await seed_for_demo(services.db, services.config, services.clock) == len(DEMO_CUSTOMERS)
    return center


async def run_demo(center: OfferCenter, seconds: float, seed: int, known: tuple[str, ...] = caller_numbers(),
                   known_share: float = 0.5) -> Any:
    stop = asyncio.Event()
    demo = ConferenceDemo(config=center.services().config, secret=SECRET, emu=center.emu, base=center.base(),
                          stop=stop, calls_per_minute=40, speed=1.0, seed=seed, behaviour=BUSY,
                          known_callers=known, known_share=known_share)
    task = asyncio.create_task(demo.run())
    await asyncio.sleep(seconds)
    stop.set()
    report = await asyncio.wait_for(task, 60)
    print(report.line())
    return report


async def server_counts(center: OfferCenter, queues: list[str]) -> dict[str, dict[str, int]]:
    s = center.services()
    now = s.clock.now_ms()
    return {q: {k: s.mirror.queue_entry(q, now)["today"][k] for k in ("offered", "answered", "abandoned")}
            for q in queues}


async def assert_exact_statistics(center: OfferCenter, report: Any) -> None:
    queues = [q.name for q in center.services().config.queues]
    expected = {q: report.queue_counts().get(q, {"offered": 0, "answered": 0, "abandoned": 0}) for q in queues}
    seen: dict[str, dict[str, int]] = {}
    for _ in range(100):  # the mirror follows the change stream: give it a moment
        seen = await server_counts(center, queues)
        if seen == expected:
            break
        await asyncio.sleep(0.1)
    assert seen == expected, (seen, expected)
    for q in queues:
        assert expected[q]["offered"] == expected[q]["answered"] + expected[q]["abandoned"]


async def assert_controls_recorded(center: OfferCenter, redis: Redis) -> dict[str, int]:
    facts = [json.loads(f[b"f"]) for _, f in await redis.xrange(keys.facts())]
    kinds: dict[str, int] = {}
    for f in facts:
        kinds[f["type"]] = kinds.get(f["type"], 0) + 1
    assert kinds.get("call.hold", 0) >= 2 and kinds.get("call.disposition", 0) >= 2, kinds
    # every conference was mixed in the configured region
    assert center.emu.conferences and {c.region for c in center.emu.conferences.values()} == {"jp1"}
    dispositions = [f for f in facts if f["type"] == "call.disposition"]
    assert {f["disposition"] for f in dispositions} <= set(center.services().config.center.dispositions)
    return kinds


async def records(center: OfferCenter) -> list[dict[str, Any]]:
    headers = {"Authorization": f"Bearer {token('boss', 'supervisor')}"}
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{center.base()}/api/calls?limit=500", headers=headers) as resp:
            assert resp.status == 200, await resp.text()
            body = await resp.json()
    return list(body["calls"])


async def until_records(center: OfferCenter, predicate: Any, timeout: float = 20.0) -> list[dict[str, Any]]:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        rows = await records(center)
        if predicate(rows) or asyncio.get_running_loop().time() > deadline:
            return rows
        await asyncio.sleep(0.3)


async def test_conference_demo_pull_takes_holds_transfers_and_wraps_up(aiohttp_server: Any, redis_url: str,
                                                                        redis: Redis, tmp_path: Path) -> None:
    center = await seeded_center(aiohttp_server, redis_url, redis, conference_config(), tmp_path)
    try:
        report = await run_demo(center, 14.0, seed=4)
        c = report.counts
        assert c["errors"] == 0, report.line()
        assert c["answered"] >= 4 and c["takes"] >= 4 and c["holds"] >= 2 and c["resumes"] >= 1, report.line()
        assert c["transfers_queue"] + c["transfers_agent"] >= 1 and c["dispositions"] >= 3, report.line()
        assert c["known_pops"] >= 1, report.line()  # the directory's callers popped with their customer
        await assert_exact_statistics(center, report)
        assert report.statistics == "match"  # the demo's own check, printed when it stops
        kinds = await assert_controls_recorded(center, redis)
        assert kinds.get("call.requeued", 0) + kinds.get("call.transfer", 0) >= 1, kinds
        # the records behind /reports: hold time and dispositions of the calls the demo wrapped up
        rows = await until_records(center, lambda rs: any(r.get("disposition") for r in rs)
                                   and any((r.get("hold_s") or 0) > 0 for r in rs))
        assert any(r.get("disposition") for r in rows) and any((r.get("hold_s") or 0) > 0 for r in rows), rows[:3]
    finally:
        await center.emu.close()


async def test_conference_demo_offer_routing_rings_agents_in_as_participants(aiohttp_server: Any, redis_url: str,
                                                                             redis: Redis, tmp_path: Path) -> None:
    config = conference_config(routing={**OFFER_ROUTING, "offer_timeout_s": 3})
    center = await seeded_center(aiohttp_server, redis_url, redis, config, tmp_path)
    try:
        # every caller a customer with an owner: the offers to owners show
        report = await run_demo(center, 14.0, seed=6, known=caller_numbers(owned=True), known_share=1.0)
        c = report.counts
        assert c["errors"] == 0, report.line()
        assert c["offers"] >= 3 and c["accepted"] >= 2 and c["answered"] >= 2 and c["takes"] == 0, report.line()
        assert c["holds"] >= 1 and c["dispositions"] >= 2, report.line()
        assert c["transfers_queue"] + c["transfers_agent"] >= 1, report.line()
        assert c["known_pops"] >= 1 and c["offers_to_owner"] >= 1, report.line()  # the owner is offered first
        await assert_exact_statistics(center, report)
        assert report.statistics == "match"
        await assert_controls_recorded(center, redis)
        # answered through the Participants resource: the agent was rung in with the offer id
        creates = [r.form for r in center.emu.requests if r.method == "POST" and r.path.endswith("/Participants.json")]
        assert any("offer_id=" in f["To"] for f in creates)
    finally:
        await center.emu.close()


def test_demo_help_documents_the_bridge_flag() -> None:
    out = subprocess.run([sys.executable, "-m", "callboard", "demo", "--help"], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    assert "--bridge {queue,conference}" in out and "hold, transfer and record dispositions" in " ".join(out.split())
