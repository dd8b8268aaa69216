"""Every call control end to end: callboard's REST requests go to the project's Twilio emulator on loopback
(simulator/conferences.py), which calls callboard's webhooks back, signed, as Twilio would. Nothing of the
code under test is mocked; time is a FakeClock so hold and handle times are exact.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from xml.etree import ElementTree as ET

import msgpack
import pytest
from redis.asyncio import Redis

from callboard import keys
from callboard.clock import FakeClock
from callboard.config import Config
from callboard.services import Settings
from callflow.live import QueueStatsMirror
from callflow.testing import FakeTwilio
from simulator.conferences import ConferenceEmulator
from tests.conftest import SECRET, TWILIO_TOKEN, WsClient, connect, make_config, token

ACCOUNT = "AC" + "1" * 32
SUPPORT = "+15550000001"


# Time is a FakeClock that tests move by minutes: instance leases must outlive those jumps (liveness runs on
# the same clock), or every jump would look like a dead instance and reap the agents' connections.
LONG_LEASES = {"lease_renew_s": 0.2, "lease_ttl_s": 86_400}


def conference_config(**center: Any) -> Config:
    return make_config(center={"bridge": "conference", "conference_region": "jp1", "wrap_up_s": 10, **center},
                       server=LONG_LEASES)


@dataclass
class Phone:
    """One callboard instance in conference mode wired to the emulator, and the helpers a test needs."""

    server: Any
    client: Any
    emu: ConferenceEmulator
    twilio: FakeTwilio
    redis: Redis
    clock: FakeClock
    config: Config
    n: int = 0

    def url(self, route: str) -> str:
        return f"http://{self.server.host}:{self.server.port}/twilio/voice/{route}"

    async def caller(self, number: str = "+15551230001", to: str = SUPPORT) -> str:
        self.n += 1
        sid = f"CA{self.n:032d}"
        status, body = await self.twilio.post("incoming", {"CallSid": sid, "From": number, "To": to})
        assert status == 200 and "<Enqueue" in body, body
        self.emu.add_call(sid, number, to, status_callback=self.url("status"), queue="support")
        return sid

    async def take_next(self, agent: str, queue: str = "support") -> tuple[str, str]:
        """The agent's softphone places its TwiML App call; the emulator runs the answer. -> (leg, TwiML)."""
        self.n += 1
        leg = f"CA{self.n:032d}"
        self.emu.add_call(leg, f"client:{agent}", "", status_callback=self.url("status"))
        status, body = await self.twilio.post("agent", {"CallSid": leg, "From": f"client:{agent}", "To": "",
                                                        "queue": queue})
        assert status == 200, body
        await self.emu.run_twiml(leg, body)
        await self.emu.settle()
        return leg, body

    async def api(self, call_sid: str, control: str, body: Any = None, *, tok: str) -> tuple[int, dict[str, Any]]:
        data = body if isinstance(body, str | bytes) else json.dumps(body or {})
        r = await self.client.post(f"/api/calls/{call_sid}/{control}", data=data,
                                   headers={"Authorization": f"Bearer {tok}", "Content-Type": "application/json"})
        answer = await r.json()
        await self.emu.settle()
        return r.status, answer

    async def call(self, sid: str) -> dict[str, str]:
        raw = await self.redis.hgetall(keys.call(sid))
        return {k.decode(): v.decode() for k, v in raw.items()}

    async def facts(self, kind: str | None = None) -> list[dict[str, Any]]:
        out = [json.loads(f[b"f"]) for _, f in await self.redis.xrange(keys.facts())]
        return [f for f in out if kind is None or f["type"] == kind]

    async def stats(self, queue: str = "support") -> dict[str, Any]:
        mirror = QueueStatsMirror(self.config, self.clock)
        await mirror.load(self.redis)
        return mirror.snapshot(queue, self.clock.now_ms())["today"]

    def rest(self, method: str, suffix: str) -> list[dict[str, str]]:
        return [form for m, path, form in self.emu.requests if m == method and path.endswith(suffix)]


@pytest.fixture
async def phone(make_instance: Any, aiohttp_server: Any, aiohttp_client: Any, redis: Redis) -> AsyncIterator[Phone]:
    return await _phone(make_instance, aiohttp_server, aiohttp_client, redis, conference_config())


async def _phone(make_instance: Any, aiohttp_server: Any, aiohttp_client: Any, redis: Redis, config: Config, *,
                 settings: Settings | None = None, emu: ConferenceEmulator | None = None,
                 url: str | None = None) -> Phone:
    if emu is None or settings is None:
        emu = ConferenceEmulator(ACCOUNT, TWILIO_TOKEN)
        emu_server = await aiohttp_server(emu.app())
        settings = Settings(secret=SECRET, twilio_auth_token=TWILIO_TOKEN, twilio_account_sid=ACCOUNT,
                            twilio_api_url=f"http://{emu_server.host}:{emu_server.port}")
    clock = FakeClock()
    server = await make_instance(config, app_settings=settings, clock=clock, url=url)
    client = await aiohttp_client(server)
    return Phone(server, client, emu, FakeTwilio(client, TWILIO_TOKEN), redis, clock, config)


async def online(phone: Phone, *agents: str) -> dict[str, WsClient]:
    socks = {a: await connect(phone.server, token(a)) for a in agents}
    for a, ws in socks.items():
        await ws.wait_for(lambda s, a=a: s["agents"][a]["state"] == "available")
    return socks


async def until(predicate: Any, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.02)


async def given_lookup(phone: Phone, caller: str, info: dict[str, Any]) -> None:
    """Stand in for the directory lookup's answer: after the real lookup of this call has stored its own (it
    runs for every incoming call and would otherwise overwrite ours when it lands late, as under load)."""
    async def stored() -> bool:
        return bool(await phone.redis.exists(keys.caller(caller)))

    await until(stored)
    await phone.redis.set(keys.caller(caller), json.dumps(info))


async def state_of(phone: Phone, agent: str) -> str:
    raw = await phone.redis.hget(keys.AGENTS, agent)
    return msgpack.unpackb(raw)["state"] if raw else "offline"


async def wait_message(ws: WsClient, kind: str, timeout: float = 5.0) -> dict[str, Any]:
    for m in ws.messages:
        if m["type"] == kind:
            ws.messages.remove(m)
            return m
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        m = await ws.recv(max(deadline - asyncio.get_running_loop().time(), 0.01))
        if m["type"] == kind:
            ws.messages.remove(m)
            return m


async def bridged(phone: Phone, agent: str = "alice") -> tuple[str, str, dict[str, WsClient]]:
    socks = await online(phone, agent)
    caller = await phone.caller()
    phone.clock.advance(12)
    leg, _ = await phone.take_next(agent)
    await until(lambda: _is(phone, agent, "on-call"))
    return caller, leg, socks


async def _is(phone: Phone, agent: str, state: str) -> bool:
    return await state_of(phone, agent) == state


# -- the bridge -------------------------------------------------------------------------------------------

async def test_conference_bridge_takes_the_caller_into_a_conference_in_its_region(phone: Phone) -> None:
    socks = await online(phone, "alice")
    caller = await phone.caller()
    phone.clock.advance(12)
    leg, agent_twiml = await phone.take_next("alice")
    # the agent's own leg joins the conference named after the caller, in jp1, and does not end it on exit
    conf_el = ET.fromstring(agent_twiml).find("Dial/Conference")
    assert conf_el is not None and conf_el.text == caller
    assert conf_el.get("region") == "jp1" and conf_el.get("endConferenceOnExit") == "false"
    # callboard asked Twilio (the emulator) to move the caller out of the queue into /conference
    [redirect] = phone.rest("POST", f"/Calls/{caller}.json")
    assert redirect["Url"].endswith(f"/twilio/voice/conference?call={caller}") and redirect["Method"] == "POST"
    caller_twiml = phone.emu.calls[caller].twiml[-1]
    c = ET.fromstring(caller_twiml).find("Dial/Conference")
    assert c is not None and c.text == caller and c.get("region") == "jp1" and c.get("endConferenceOnExit") == "true"
    conf = phone.emu.conference_named(caller)
    assert conf is not None and conf.region == "jp1" and set(conf.participants) == {caller, leg}
    # the agent answering is the bridge: answered once, on-call, pop, conference sid recorded
    pop = await wait_message(socks["alice"], "pop")
    assert pop["call_sid"] == caller and pop["queue"] == "support" and pop["waited_s"] == 12
    assert await state_of(phone, "alice") == "on-call"
    stats = await phone.stats()
    assert (stats["offered"], stats["answered"], stats["answered_within_sl"]) == (1, 1, 1)
    call = await phone.call(caller)
    assert call["agent"] == "alice" and call["leg"] == leg and call["conf"] == conf.sid
    # nobody else waiting: a second agent's take-next is told so and changes nothing
    await online(phone, "bob")
    _, twiml = await phone.take_next("bob")
    assert "No caller is waiting in support" in twiml
    assert (await phone.stats())["answered"] == 1


async def test_two_agents_never_take_the_same_caller(phone: Phone) -> None:
    await online(phone, "alice", "bob")
    first, second = await phone.caller(), await phone.caller("+15551230002")
    results = await asyncio.gather(phone.take_next("alice"), phone.take_next("bob"))
    confs = {ET.fromstring(twiml).findtext("Dial/Conference") for _, twiml in results}
    assert confs == {first, second}
    assert (await phone.stats())["answered"] == 2


# -- hold, hang-up ----------------------------------------------------------------------------------------

async def test_hold_and_resume_update_the_participant_and_keep_hold_time(phone: Phone) -> None:
    caller, _, _ = await bridged(phone)
    alice = token("alice")
    status, body = await phone.api(caller, "hold", {"on": True}, tok=alice)
    assert status == 200, body
    conf = phone.emu.conference_named(caller)
    assert conf is not None
    part = conf.participants[caller]
    assert part.hold and part.hold_url and part.hold_url.endswith("/twilio/voice/hold-music")
    assert part.hold_twiml is not None and "<Pause" in part.hold_twiml  # the HoldUrl answers valid TwiML
    [update] = phone.rest("POST", f"/Participants/{caller}.json")
    assert update["Hold"] == "true"
    # holding twice does not restart the hold clock
    phone.clock.advance(20)
    assert (await phone.api(caller, "hold", {"on": True}, tok=alice))[0] == 200
    phone.clock.advance(10)
    status, body = await phone.api(caller, "hold", {"on": False}, tok=alice)
    assert status == 200 and body["hold_s"] == 30 and not part.hold
    phone.clock.advance(5)
    await phone.api(caller, "hold", {"on": True}, tok=alice)
    phone.clock.advance(4)
    status, body = await phone.api(caller, "hold", {"on": False}, tok=alice)
    assert body["hold_s"] == 34
    assert (await phone.call(caller))["hold_ms"] == "34000"
    facts = await phone.facts("call.hold")
    assert [f["on"] for f in facts] == [True, False, True, False]
    assert all(f["call_sid"] == caller and isinstance(f["at_ms"], int) for f in facts)
    assert facts[1]["at_ms"] - facts[0]["at_ms"] == 30_000
    # someone else's call: refused, nothing sent to Twilio
    before = len(phone.emu.requests)
    status, body = await phone.api(caller, "hold", {"on": True}, tok=token("bob"))
    assert status == 403 and body["code"] == "not_your_call" and len(phone.emu.requests) == before
    # a supervisor may
    assert (await phone.api(caller, "hold", {"on": True}, tok=token("boss", "supervisor")))[0] == 200


async def test_hangup_completes_the_caller_and_the_agent_wraps_up(phone: Phone) -> None:
    caller, leg, socks = await bridged(phone)
    phone.clock.advance(60)
    status, body = await phone.api(caller, "hangup", tok=token("alice"))
    assert status == 200 and body["status"] == "completed"
    assert phone.rest("POST", f"/Calls/{caller}.json")[-1] == {"Status": "completed"}
    # the caller's end ended the conference, which ended the agent's leg: both status callbacks arrived
    await until(lambda: _is(phone, "alice", "wrap-up"))
    call = await phone.call(caller)
    assert call["talk_ms"] == "60000"
    status, body = await phone.api(caller, "hangup", tok=token("alice"))
    assert status == 409 and body["code"] == "call_ended"


# -- transfers --------------------------------------------------------------------------------------------

# Transfers to an agent (offered like a routed call) are in tests/test_controls_transfer.py.


async def test_transfer_to_a_queue_keeps_entered_ms_and_counts_once(phone: Phone) -> None:
    caller, leg, socks = await bridged(phone)
    entered = int((await phone.call(caller))["enq_ms"])
    later = await phone.caller("+15551230002")  # a caller who came after: must stay behind
    phone.clock.advance(20)
    status, body = await phone.api(caller, "transfer", {"queue": "support"}, tok=token("alice"))
    assert status == 200 and body["status"] == "queued"
    redirect = phone.rest("POST", f"/Calls/{caller}.json")[-1]
    assert "/twilio/voice/requeue?" in redirect["Url"]
    assert phone.emu.calls[caller].queue == "support"  # the emulator ran the <Enqueue>
    assert ET.fromstring(phone.emu.calls[caller].twiml[-1]).findtext("Enqueue") == "support"
    waiting = await phone.redis.zrange(keys.queue_waiting("support"), 0, -1, withscores=True)
    assert waiting[0] == (caller.encode(), float(entered)) and waiting[1][0] == later.encode()
    # alice's leg ended with the conference (the caller left it): she wraps up
    await until(lambda: _is(phone, "alice", "wrap-up"))
    await online(phone, "bob")
    _, twiml = await phone.take_next("bob")
    assert ET.fromstring(twiml).findtext("Dial/Conference") == caller  # FIFO by entered_ms: the first caller
    await until(lambda: _is(phone, "bob", "on-call"))
    stats = await phone.stats()
    assert (stats["offered"], stats["answered"]) == (2, 1)  # the transferred caller counted once
    assert (await phone.call(caller))["agent"] == "bob"
    assert [f["to"] for f in await phone.facts("call.transfer")] == ["queue:support"]


# -- monitor ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode, muted, coaching", [("listen", "true", None), ("whisper", None, "true"),
                                                   ("barge", None, None)])
async def test_monitor_joins_muted_coaching_or_plain_and_the_agent_sees_it(phone: Phone, mode: str,
                                                                           muted: str | None, coaching: str | None) -> None:
    caller, leg, socks = await bridged(phone)
    boss = token("boss", "supervisor")
    status, body = await phone.api(caller, "monitor", {"mode": mode}, tok=boss)
    assert status == 200, body
    conf_sid = (await phone.call(caller))["conf"]
    [create] = phone.rest("POST", f"/Conferences/{conf_sid}/Participants.json")
    assert create["To"] == "client:supervisor:boss"
    assert create.get("Muted") == muted and create.get("Coaching") == coaching
    if mode == "whisper":
        assert create["CallSidToCoach"] == leg
    conf = phone.emu.conference_named(caller)
    assert conf is not None
    sup = conf.participants[body["participant"]]
    assert sup.muted is (mode == "listen") and sup.coaching is (mode == "whisper")
    seen = await wait_message(socks["alice"], "monitor")
    assert seen == {"type": "monitor", "call_sid": caller, "supervisor": "boss", "mode": mode, "active": True}
    [fact] = await phone.facts("call.monitor")
    assert (fact["supervisor"], fact["mode"]) == ("boss", mode)
    # the supervisor hangs up: the agent is told it ended
    await phone.emu.end_call(body["participant"])
    await phone.emu.settle()
    ended = await wait_message(socks["alice"], "monitor")
    assert ended["active"] is False
    assert await state_of(phone, "alice") == "on-call" and phone.emu.calls[caller].status == "in-progress"


async def test_only_supervisors_monitor(phone: Phone) -> None:
    caller, _, _ = await bridged(phone)
    status, body = await phone.api(caller, "monitor", {"mode": "listen"}, tok=token("alice"))
    assert status == 403
    status, body = await phone.api(caller, "monitor", {"mode": "spy"}, tok=token("boss", "supervisor"))
    assert status == 400 and body["field"] == "mode"


# -- wrap-up ----------------------------------------------------------------------------------------------

async def test_wrap_up_stores_the_disposition_and_emits_the_fact(phone: Phone) -> None:
    caller, _, _ = await bridged(phone)
    await phone.api(caller, "hangup", tok=token("alice"))
    status, body = await phone.api(caller, "wrap-up", {"disposition": "resolved", "note": "払い戻し済み"},
                                   tok=token("alice"))
    assert status == 200 and body["disposition"] == "resolved"
    call = await phone.call(caller)
    assert (call["disposition"], call["note"], call["disp_by"]) == ("resolved", "払い戻し済み", "alice")
    [fact] = await phone.facts("call.disposition")
    assert fact == {"type": "call.disposition", "call_sid": caller, "agent": "alice", "disposition": "resolved",
                    "note": "払い戻し済み", "at_ms": fact["at_ms"]}
    status, body = await phone.api(caller, "wrap-up", {"disposition": "resolved"}, tok=token("bob"))
    assert status == 403 and body["code"] == "not_your_call"
    status, body = await phone.api(caller, "wrap-up", {"disposition": "made up"}, tok=token("alice"))
    assert status == 400 and body["field"] == "disposition" and "resolved" in body["error"]
    status, body = await phone.api(caller, "wrap-up", {"disposition": "resolved", "note": "x" * 2001}, tok=token("alice"))
    assert status == 400 and body["field"] == "note"
    status, body = await phone.api("CA" + "9" * 32, "wrap-up", {"disposition": "resolved"}, tok=token("alice"))
    assert status == 404
    assert len(await phone.facts("call.disposition")) == 1  # refusals wrote nothing


# -- bad input, modes, Twilio trouble ---------------------------------------------------------------------

async def test_garbage_is_refused_in_english_and_changes_nothing(phone: Phone) -> None:
    caller, _, _ = await bridged(phone)
    alice = token("alice")
    before = len(phone.emu.requests)
    for body in ("{", "[1,2]", '"on"', "null", json.dumps({"on": "yes"}), "[" * 100_000):
        status, answer = await phone.api(caller, "hold", body, tok=alice)
        assert status in (400, 413) and answer["error"], (body[:20], answer)
    status, answer = await phone.api(caller, "hold", "x" * 70_000, tok=alice)
    assert status == 413
    status, answer = await phone.api("not a sid!", "hold", {"on": True}, tok=alice)
    assert status == 400 and answer["field"] == "call_sid"
    status, answer = await phone.api("CA" + "8" * 32, "hold", {"on": True}, tok=alice)
    assert status == 404 and answer["code"] == "unknown_call"
    status, answer = await phone.api(caller, "hold", {"on": True}, tok=token("wall", "wallboard"))
    assert status == 403
    status, answer = await phone.api(caller, "hold", {"on": True}, tok="forged")
    assert status == 401
    assert len(phone.emu.requests) == before
    assert await phone.facts("call.hold") == []


async def test_twilio_429_then_success_is_retried_and_a_5xx_storm_is_a_clear_502(phone: Phone) -> None:
    caller, _, _ = await bridged(phone)
    phone.emu.fail_next = [(429, 20429)]
    status, body = await phone.api(caller, "hold", {"on": True}, tok=token("alice"))
    assert status == 200, body
    phone.emu.fail_next = [(503, 20503)] * 10
    status, body = await phone.api(caller, "hold", {"on": False}, tok=token("alice"))
    assert status == 502 and "Twilio" in body["error"]
    # Twilio did not take the resume: the record still says on hold
    assert "hold_since" in await phone.call(caller)


async def test_queue_mode_answers_409_for_conference_controls(make_instance: Any, aiohttp_server: Any,
                                                              aiohttp_client: Any, redis: Redis) -> None:
    phone = await _phone(make_instance, aiohttp_server, aiohttp_client, redis, make_config(server=LONG_LEASES))
    await online(phone, "alice")
    caller = await phone.caller()
    # queue mode: the agent leg answers <Dial><Queue> as before
    leg = "CA" + "7" * 32
    status, twiml = await phone.twilio.post("agent", {"CallSid": leg, "From": "client:alice", "queue": "support"})
    assert "<Queue" in twiml
    await phone.twilio.post("bridge", {"CallSid": caller, "DequeingCallSid": leg, "QueueTime": "3"},
                            {"queue": "support", "agent": "alice"})
    r = await phone.client.get("/api/softphone", headers={"Authorization": f"Bearer {token('alice')}"})
    assert (await r.json())["bridge"] == "queue"
    for control, body in (("hold", {"on": True}), ("transfer", {"agent": "bob"}), ("monitor", {"mode": "listen"})):
        tok = token("boss", "supervisor") if control == "monitor" else token("alice")
        status, answer = await phone.api(caller, control, body, tok=tok)
        assert status == 409 and answer["code"] == "needs_conference" and "queue" in answer["error"], answer
    assert phone.emu.requests == []
    # hang-up needs no conference
    status, answer = await phone.api(caller, "hangup", tok=token("alice"))
    assert status == 200 and phone.rest("POST", f"/Calls/{caller}.json") == [{"Status": "completed"}]


async def test_conference_webhooks_are_signed_and_shrug_off_unknown_calls(phone: Phone) -> None:
    unknown = "CA" + "3" * 32
    for route, params, query in (
        ("participant", {"CallSid": "CA" + "2" * 32, "CallStatus": "in-progress"},
         {"call": unknown, "agent": "bob", "kind": "transfer"}),
        ("participant", {"CallSid": "CA" + "2" * 32, "CallStatus": "completed"},
         {"call": unknown, "agent": "bob", "kind": "offer", "offer": "o1", "queue": "support"}),
        ("participant", {"CallSid": "CA" + "2" * 32, "CallStatus": "completed"},
         {"call": unknown, "agent": "boss", "kind": "monitor"}),
        ("conference-events", {"ConferenceSid": "CF1", "FriendlyName": unknown, "CallSid": "CA" + "2" * 32,
                               "StatusCallbackEvent": "participant-leave"}, {"call": unknown}),
        ("requeue-result", {"CallSid": unknown, "QueueResult": "hangup"}, {"queue": "support"}),
        ("hold-music", {"CallSid": unknown}, None),
        ("conference", {"CallSid": unknown}, {"call": unknown}),
    ):
        status, body = await phone.twilio.post(route, params, query)
        assert status == 200 and body.startswith("<?xml"), (route, status, body)
        status, body = await phone.twilio.post(route, params, query, signature=None)
        assert status == 403 and body == "Missing X-Twilio-Signature header."
    status, body = await phone.twilio.post("participant", {"CallStatus": "completed"}, {"call": unknown})
    assert status == 400 and "CallSid" in body
    assert await phone.redis.exists(keys.call(unknown)) == 0  # nothing invented for a call we never saw
    assert phone.emu.requests == []


async def test_redis_gone_controls_answer_503_and_twilio_is_not_touched(make_instance: Any, aiohttp_server: Any,
                                                                        aiohttp_client: Any, redis: Redis,
                                                                        redis_server_factory: Any) -> None:
    proc, url, _ = redis_server_factory()
    private = Redis.from_url(url)
    phone = await _phone(make_instance, aiohttp_server, aiohttp_client, private, conference_config(), url=url)
    caller, _, _ = await bridged(phone)
    before = len(phone.emu.requests)
    proc.kill()
    proc.wait(5)
    for control, body in (("hold", {"on": True}), ("hangup", None), ("wrap-up", {"disposition": "resolved"})):
        status, answer = await phone.api(caller, control, body, tok=token("alice"))
        assert status == 503 and answer["code"] == "unavailable" and "Redis" in answer["error"], (control, answer)
    assert len(phone.emu.requests) == before
    # an agent asking for the next caller hears why not (valid TwiML, never a 500)
    status, twiml = await phone.twilio.post("agent", {"CallSid": "CA" + "4" * 32, "From": "client:alice",
                                                      "queue": "support"})
    assert status == 200 and "Calls cannot be taken right now" in twiml
    await private.aclose()


async def test_the_agent_hanging_up_their_softphone_ends_the_callers_call(phone: Phone) -> None:
    caller, leg, _ = await bridged(phone)
    phone.clock.advance(25)
    await phone.emu.end_call(leg)  # the agent's own leg ends (their browser hung up)
    await phone.emu.settle()
    # nobody else holds the caller and no transfer rings: callboard hangs the caller up, not leaves it alone
    assert phone.rest("POST", f"/Calls/{caller}.json")[-1] == {"Status": "completed"}
    assert phone.emu.calls[caller].status == "completed"
    await until(lambda: _is(phone, "alice", "wrap-up"))
    assert (await phone.call(caller))["talk_ms"] == "25000"


async def test_scoped_supervisor_tokens_control_only_their_queues_and_teams(phone: Phone) -> None:
    caller, _, _ = await bridged(phone)  # alice, team support, queue support
    for tok in (token("boss", "supervisor", queues=["sales"]), token("boss", "supervisor", teams=["sales"])):
        for control, body in (("hold", {"on": True}), ("monitor", {"mode": "listen"}), ("hangup", None)):
            status, answer = await phone.api(caller, control, body, tok=tok)
            assert status == 403 and "does not cover" in answer["error"], (control, answer)
    assert phone.rest("POST", "/Participants.json") == []
    ok = token("boss", "supervisor", queues=["support"], teams=["support"])
    assert (await phone.api(caller, "monitor", {"mode": "listen"}, tok=ok))[0] == 200


async def test_without_twilio_rest_credentials_controls_say_so(make_instance: Any, aiohttp_client: Any,
                                                               redis: Redis) -> None:
    server = await make_instance(make_config(server=LONG_LEASES))  # the default test settings: no account SID
    client = await aiohttp_client(server)
    twilio = FakeTwilio(client, TWILIO_TOKEN)
    ws = await connect(server, token("alice"))
    await ws.wait_for(lambda s: s["agents"]["alice"]["state"] == "available")
    caller, leg = "CA" + "1" * 32, "CA" + "2" * 32
    await twilio.post("incoming", {"CallSid": caller, "From": "+15551230001", "To": SUPPORT})
    await twilio.post("agent", {"CallSid": leg, "From": "client:alice", "queue": "support"})
    await twilio.post("bridge", {"CallSid": caller, "DequeingCallSid": leg, "QueueTime": "2"},
                      {"queue": "support", "agent": "alice"})
    r = await client.post(f"/api/calls/{caller}/hangup", headers={"Authorization": f"Bearer {token('alice')}"})
    body = await r.json()
    assert r.status == 503 and "TWILIO_ACCOUNT_SID" in body["error"]
