"""Offer routing with the conference bridge: an accepted offer's caller joins its conference and the agent is
added with the Participants resource; the agent answering is the bridge. Through the conference emulator
(simulator/twilio_api.py, which also dequeues queue members) on loopback; nothing mocked.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

import pytest
from redis.asyncio import Redis

from callboard import keys
from callboard.app import build_app
from callboard.clock import Clock
from callboard.services import Settings
from callflow.live import QueueStatsMirror
from callflow.testing import FakeTwilio
from simulator.twilio_api import TwilioEmulator
from tests.conftest import SECRET, TWILIO_TOKEN, connect, make_config, token
from tests.routing_support import OFFER_ROUTING, free_port, next_message
from tests.test_controls import ACCOUNT, SUPPORT, state_of, until

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@dataclass
class OfferPhone:
    server: Any
    client: Any
    emu: TwilioEmulator
    twilio: FakeTwilio
    redis: Redis
    config: Any
    base: str


@pytest.fixture
async def offer_phone(aiohttp_server: Any, aiohttp_client: Any, redis_url: str, redis: Redis,
                      tmp_path: Path) -> AsyncIterator[OfferPhone]:
    emu = TwilioEmulator(ACCOUNT, TWILIO_TOKEN)
    emu_server = await aiohttp_server(emu.app(), host="127.0.0.1")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    settings = Settings(secret=SECRET, twilio_auth_token=TWILIO_TOKEN, public_url=base, twilio_account_sid=ACCOUNT,
                        twilio_api_url=f"http://127.0.0.1:{emu_server.port}",
                        data_dir=tmp_path / "data")  # its own SQLite file, never the checkout's .callboard/
    config = make_config(center={"bridge": "conference", "conference_region": "jp1", "wrap_up_s": 10},
                         routing=OFFER_ROUTING)
    app = build_app(config, settings, Redis.from_url(redis_url, socket_timeout=10), instance_id="inst0",
                    close_redis=True)
    server = await aiohttp_server(app, host="127.0.0.1", port=port)
    client = await aiohttp_client(server)
    yield OfferPhone(server, client, emu, FakeTwilio(client, TWILIO_TOKEN, base), redis, config, base)


async def _caller(p: OfferPhone, sid: str) -> None:
    status, body = await p.twilio.post("incoming", {"CallSid": sid, "From": "+15553330001", "To": SUPPORT})
    assert status == 200 and "<Enqueue" in body
    p.emu.add_call(sid, "+15553330001", SUPPORT, status_callback=f"{p.base}/twilio/voice/status", queue="support")


async def _today(p: OfferPhone) -> dict[str, Any]:
    clock = Clock()
    mirror = QueueStatsMirror(p.config, clock)
    await mirror.load(p.redis)
    return mirror.snapshot("support", clock.now_ms())["today"]


async def test_accepted_offer_rings_the_agent_into_the_callers_conference(offer_phone: OfferPhone) -> None:
    p = offer_phone
    alice = await connect(p.server, token("alice"))
    await alice.wait_for(lambda s: s["agents"]["alice"]["state"] == "available")
    caller = "CA" + "5" * 32
    await _caller(p, caller)
    offer = await next_message(alice, "offer")
    assert offer["call_sid"] == caller
    await alice.send({"type": "accept", "offer_id": offer["offer_id"]})
    await until(lambda: _on_call(p, "alice"))
    await p.emu.settle()
    # the caller was dequeued to connect, which answered its conference in jp1 (not <Dial><Client>)
    connect_twiml = p.emu.calls[caller].twiml[-1]
    conf_el = ET.fromstring(connect_twiml).find("Dial/Conference")
    assert conf_el is not None and conf_el.text == caller and conf_el.get("region") == "jp1"
    assert "<Client" not in connect_twiml
    # the agent was added with the Participants resource, and answering it was the bridge
    [create] = [f for m, path, f in p.emu.requests if m == "POST" and path.endswith("/Participants.json")]
    assert create["To"] == f"client:alice?offer_id={offer['offer_id']}" and "kind=offer" in create["StatusCallback"]
    assert create["Region"] == "jp1" and "/twilio/voice/conference-events" in create["ConferenceStatusCallback"]
    conf = p.emu.conference_named(caller)
    assert conf is not None and caller in conf.participants and len(conf.participants) == 2
    pop = await next_message(alice, "pop")
    assert pop["call_sid"] == caller
    today = await _today(p)
    assert (today["offered"], today["answered"]) == (1, 1)
    assert await p.redis.zscore(keys.queue_waiting("support"), caller) is None
    # the controls work on an offered caller too
    status = (await p.client.post(f"/api/calls/{caller}/hold", json={"on": True},
                                  headers={"Authorization": f"Bearer {token('alice')}"})).status
    assert status == 200
    await alice.close()


async def test_an_offered_agent_who_does_not_answer_puts_the_caller_back_in_place(offer_phone: OfferPhone) -> None:
    p = offer_phone
    p.emu.softphones["alice"] = "no-answer"
    alice = await connect(p.server, token("alice"))
    await alice.wait_for(lambda s: s["agents"]["alice"]["state"] == "available")
    caller = "CA" + "4" * 32
    await _caller(p, caller)
    entered = await p.redis.zscore(keys.queue_waiting("support"), caller)
    offer = await next_message(alice, "offer")
    await alice.send({"type": "accept", "offer_id": offer["offer_id"]})
    await until(lambda: _requeued(p, caller))
    await p.emu.settle()
    assert ET.fromstring(p.emu.calls[caller].twiml[-1]).findtext("Enqueue") == "support"
    assert await p.redis.zscore(keys.queue_waiting("support"), caller) == entered
    today = await _today(p)
    assert (today["offered"], today["answered"]) == (1, 0)
    assert await state_of(p, "alice") != "on-call"  # type: ignore[arg-type]
    await alice.close()


async def _on_call(p: OfferPhone, agent: str) -> bool:
    return await state_of(p, agent) == "on-call"  # type: ignore[arg-type]


async def _requeued(p: OfferPhone, caller: str) -> bool:
    return p.emu.calls[caller].queue == "support" and bool(p.emu.calls[caller].twiml)


async def test_a_caller_who_hangs_up_while_the_offered_agent_rings_is_abandoned_once(offer_phone: OfferPhone) -> None:
    """Routing's dequeue is not a leaving and no queue-result follows it: the hang-up in the conference, before
    the agent answered, is the caller's abandon (found by `callboard demo --bridge conference --routing offer`)."""
    p = offer_phone
    p.emu.softphones["alice"] = "wait"  # alice's phone rings until the caller gives up
    alice = await connect(p.server, token("alice"))
    await alice.wait_for(lambda s: s["agents"]["alice"]["state"] == "available")
    caller = "CA" + "3" * 32
    await _caller(p, caller)
    offer = await next_message(alice, "offer")
    await alice.send({"type": "accept", "offer_id": offer["offer_id"]})
    await until(lambda: _true(bool(p.emu.ringing)))
    await p.emu.hangup(caller)
    await p.emu.settle()

    async def abandoned() -> bool:
        return (await _today(p))["abandoned"] == 1

    await until(abandoned)
    today = await _today(p)
    assert (today["offered"], today["answered"], today["abandoned"]) == (1, 0, 1)
    assert await p.redis.zscore(keys.queue_waiting("support"), caller) is None
    assert await state_of(p, "alice") != "on-call"  # type: ignore[arg-type]
    await alice.close()


async def _true(value: bool) -> bool:
    return value
