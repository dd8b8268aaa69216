"""A transfer to an agent is offered to them like a routed call (issue 13): routing's offer hash and
OFFER_AGENTS reservation, the `offer` message with Accept/Reject, `ringing`, expiry counted as missed, the
offer facts; Accept rings the target's client into the caller's conference with the offer id.

End to end through the conference emulator (simulator/conferences.py) on loopback, in pull mode (the router
there only keeps transfer offers) and in offer mode; nothing of callboard is mocked. Time is a FakeClock in
pull mode, so expiry and handle times are exact.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import msgpack
import pytest
from redis.asyncio import Redis

from callboard import keys
from callboard.services import SERVICES
from tests.conftest import WsClient, connect, token
from tests.routing_support import next_message
from tests.test_controls import (
    Phone,
    _phone,
    bridged,
    conference_config,
    given_lookup,
    online,
    state_of,
    until,
    wait_message,
)
from tests.test_controls_offer import OfferPhone, _caller, _on_call, _today, offer_phone  # noqa: F401 (fixture)

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

LOOKUP = {"withheld": False, "owner": "alice", "owner_team": "support",
          "customers": [{"name": "Hanako Yamada", "kana": "ヤマダ ハナコ", "company": "Yamada Shoji"}]}


@pytest.fixture
async def phone(make_instance: Any, aiohttp_server: Any, aiohttp_client: Any, redis: Redis) -> Phone:
    return await _phone(make_instance, aiohttp_server, aiohttp_client, redis, conference_config())


async def _is(phone: Phone | OfferPhone, agent: str, state: str) -> bool:
    return await state_of(phone, agent) == state  # type: ignore[arg-type]


async def _offers(redis: Redis) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in (await redis.hgetall(keys.OFFER_AGENTS)).items()}


async def _no_offer_left(phone: Phone, caller: str) -> None:
    assert await _offers(phone.redis) == {}
    assert await phone.redis.zcard(keys.OFFER_DUE) == 0
    assert "xfer" not in await phone.call(caller)


async def _offer_to(phone: Phone, caller: str, target: str, ws: WsClient, *, warm: bool = False,
                    by: str = "alice") -> dict[str, Any]:
    """The first agent transfers; the target's console receives the offer."""
    status, body = await phone.api(caller, "transfer", {"agent": target, "warm": warm}, tok=token(by))
    assert status == 200 and body["status"] == "offered", body
    offer = await wait_message(ws, "offer")
    assert offer["offer_id"] == body["offer_id"] and offer["expires_ms"] == body["expires_ms"]
    return offer


async def _ended(phone: Phone) -> list[tuple[str, str]]:
    return [(f["result"], f["reason"]) for f in await phone.facts("offer.ended")]


# -- accept -----------------------------------------------------------------------------------------------

async def test_cold_transfer_is_an_offer_and_keeps_statistics_exact(phone: Phone) -> None:
    caller, leg, socks = await bridged(phone)
    await given_lookup(phone, caller, LOOKUP)  # the directory lookup's result, as input
    socks.update(await online(phone, "bob"))
    phone.clock.advance(30)
    offer = await _offer_to(phone, caller, "bob", socks["bob"])
    # offered like a routed call: kind transfer, who hands it on, the caller's customers, a deadline
    assert offer["kind"] == "transfer" and offer["from_agent"] == "alice" and offer["warm"] is False
    assert offer["call_sid"] == caller and offer["queue"] == "support" and offer["from"] == "+15551230001"
    assert offer["customers"][0]["name"] == "Hanako Yamada" and offer["withheld"] is False
    assert offer["expires_ms"] == phone.clock.now_ms() + 15_000
    assert await _offers(phone.redis) == {"bob": offer["offer_id"]}
    await socks["alice"].wait_for(lambda s: s["agents"]["bob"].get("ringing") is True)  # the wallboard's view
    [created] = await phone.facts("offer.created")
    assert (created["agent"], created["kind"], created["from"], created["call_sid"]) == ("bob", "transfer", "alice", caller)
    assert phone.rest("POST", "/Participants.json") == []  # nothing rings before Accept
    await socks["bob"].send({"type": "accept", "offer_id": offer["offer_id"]})
    ended = await wait_message(socks["bob"], "offer_ended")
    assert ended["reason"] == "accepted"
    await until(lambda: _is(phone, "bob", "on-call"))
    # Accept added bob's client with the offer id as a custom parameter (his console answers that call)
    [create] = phone.rest("POST", f"/Conferences/{(await phone.call(caller))['conf']}/Participants.json")
    assert create["To"] == f"client:bob?offer_id={offer['offer_id']}" and create["Region"] == "jp1"
    assert "kind=transfer" in create["StatusCallback"] and f"offer={offer['offer_id']}" in create["StatusCallback"]
    assert create["EndConferenceOnExit"] == "false"
    # cold: alice is removed as soon as bob answers (the request follows bob's take-over); she wraps up
    await until(lambda: _true(bool(phone.rest("DELETE", f"/Participants/{leg}.json"))))
    await until(lambda: _is(phone, "alice", "wrap-up"))
    pop = await wait_message(socks["bob"], "pop")
    assert pop["call_sid"] == caller
    call = await phone.call(caller)
    assert call["agent"] == "bob" and "xfer" not in call
    assert json.loads(call["transfers"]) == [{"from": "alice", "to": "bob", "at_ms": phone.clock.now_ms(), "warm": False}]
    await _no_offer_left(phone, caller)
    await socks["alice"].wait_for(lambda s: s["agents"]["bob"].get("ringing") is False)
    assert await _ended(phone) == [("accepted", "accepted")]
    [fact] = await phone.facts("call.transfer")
    assert (fact["from"], fact["to"], fact["warm"]) == ("alice", "bob", False)
    # statistics: one call, offered once, answered once; handle time = bridge to the caller's end (30 s with
    # alice, 10 s of her wrap-up, 40 s more) + the wrap-up of bob who held it last (10 s)
    phone.clock.advance(10)
    await until(lambda: _is(phone, "alice", "available"))
    phone.clock.advance(40)
    assert (await phone.api(caller, "hangup", tok=token("bob")))[0] == 200
    await until(lambda: _is(phone, "bob", "wrap-up"))
    phone.clock.advance(10)
    await until(lambda: _is(phone, "bob", "available"))
    await until(lambda: _handled(phone))
    stats = await phone.stats()
    assert (stats["offered"], stats["answered"], stats["abandoned"]) == (1, 1, 0)
    assert stats["aht_s"] == 90.0


async def _handled(phone: Phone) -> bool:
    return (await phone.stats())["aht_s"] is not None


async def test_warm_transfer_accepted_all_three_talk_until_the_first_agent_hangs_up(phone: Phone) -> None:
    caller, leg, socks = await bridged(phone)
    socks.update(await online(phone, "bob"))
    offer = await _offer_to(phone, caller, "bob", socks["bob"], warm=True)
    assert offer["warm"] is True and offer["from_agent"] == "alice"
    await socks["bob"].send({"type": "accept", "offer_id": offer["offer_id"]})
    await until(lambda: _is(phone, "bob", "on-call"))
    await phone.emu.settle()
    conf = phone.emu.conference_named(caller)
    assert conf is not None and leg in conf.participants and len(conf.participants) == 3
    assert not phone.rest("DELETE", f"/Participants/{leg}.json")
    assert await state_of(phone, "alice") == "on-call"
    await phone.emu.end_call(leg)  # alice hangs up her softphone: bob keeps the caller
    await phone.emu.settle()
    await until(lambda: _is(phone, "alice", "wrap-up"))
    assert phone.emu.calls[caller].status == "in-progress" and conf.status == "in-progress"
    [fact] = await phone.facts("call.transfer")
    assert fact["warm"] is True
    await _no_offer_left(phone, caller)
    assert (await phone.stats())["answered"] == 1


# -- not taken: reject, expiry, the target gone, the caller gone --------------------------------------------

async def test_rejected_transfer_tells_the_first_agent_and_the_caller_never_notices(phone: Phone) -> None:
    caller, leg, socks = await bridged(phone)
    socks.update(await online(phone, "bob"))
    offer = await _offer_to(phone, caller, "bob", socks["bob"])
    await socks["bob"].send({"type": "reject", "offer_id": offer["offer_id"]})
    failed = await wait_message(socks["alice"], "transfer_failed")
    assert (failed["to"], failed["reason"], failed["call_sid"]) == ("bob", "rejected", caller)
    assert (await wait_message(socks["bob"], "offer_ended"))["reason"] == "rejected"
    await _no_offer_left(phone, caller)
    assert phone.rest("POST", "/Participants.json") == []
    call = await phone.call(caller)
    assert call["agent"] == "alice" and "transfers" not in call
    assert phone.emu.calls[caller].status == "in-progress" and await state_of(phone, "alice") == "on-call"
    assert await state_of(phone, "bob") == "available"
    assert await _ended(phone) == [("rejected", "rejected")]
    # answering again is refused (the offer is over), and the same agent can be offered the call again
    await socks["bob"].send({"type": "accept", "offer_id": offer["offer_id"]})
    assert (await wait_message(socks["bob"], "error"))["code"] == "no_offer"
    await _offer_to(phone, caller, "bob", socks["bob"])


async def test_an_expired_transfer_is_missed_and_missed_offers_set_the_target_away(phone: Phone) -> None:
    caller, leg, socks = await bridged(phone)
    socks.update(await online(phone, "bob"))
    for n in (1, 2):
        await _offer_to(phone, caller, "bob", socks["bob"])
        phone.clock.advance(16)  # past offer_timeout_s (15): the router's tick (pull mode too) expires it
        failed = await wait_message(socks["alice"], "transfer_failed")
        assert (failed["to"], failed["reason"]) == ("bob", "missed")
        assert (await wait_message(socks["bob"], "offer_ended"))["reason"] == "expired"
        await _no_offer_left(phone, caller)
        await socks["alice"].wait_for(lambda s, n=n: s["agents"]["bob"].get("missed_offers") == n)  # wallboard
        if n == 1:
            assert await state_of(phone, "bob") == "available"
    # missed_to_away = 2: two missed in a row set bob away with reason "missed offers"
    await until(lambda: _is(phone, "bob", "away"))
    raw = await phone.redis.hget(keys.AGENTS, "bob")
    assert msgpack.unpackb(raw)["reason"] == "missed offers"
    assert await _ended(phone) == [("missed", "expired"), ("missed", "expired")]
    assert (await phone.call(caller))["agent"] == "alice" and phone.emu.calls[caller].status == "in-progress"
    # an away agent is refused at once
    status, body = await phone.api(caller, "transfer", {"agent": "bob"}, tok=token("alice"))
    assert status == 409 and body["code"] == "agent_busy" and "away" in body["error"]


async def test_the_target_disconnecting_cancels_the_transfer(phone: Phone) -> None:
    caller, leg, socks = await bridged(phone)
    socks.update(await online(phone, "bob"))
    await _offer_to(phone, caller, "bob", socks["bob"])
    await socks["bob"].close()
    failed = await wait_message(socks["alice"], "transfer_failed")
    assert (failed["to"], failed["reason"]) == ("bob", "agent_unavailable")
    await _no_offer_left(phone, caller)
    assert await _ended(phone) == [("cancelled", "agent_unavailable")]
    assert (await phone.call(caller))["agent"] == "alice" and phone.emu.calls[caller].status == "in-progress"


async def test_the_caller_hanging_up_while_it_rings_cancels_the_transfer(phone: Phone) -> None:
    caller, leg, socks = await bridged(phone)
    socks.update(await online(phone, "bob"))
    offer = await _offer_to(phone, caller, "bob", socks["bob"])
    await phone.emu.end_call(caller)  # the caller hangs up: its status callback ends the call
    await phone.emu.settle()
    failed = await wait_message(socks["alice"], "transfer_failed")
    assert (failed["to"], failed["reason"]) == ("bob", "caller_left")
    assert (await wait_message(socks["bob"], "offer_ended"))["reason"] == "caller_left"
    await _no_offer_left(phone, caller)
    await socks["bob"].send({"type": "accept", "offer_id": offer["offer_id"]})
    assert (await wait_message(socks["bob"], "error"))["code"] == "no_offer"
    assert phone.rest("POST", "/Participants.json") == []
    await until(lambda: _is(phone, "alice", "wrap-up"))
    assert await state_of(phone, "bob") == "available"
    assert (await phone.stats())["answered"] == 1


async def test_accepted_but_the_softphone_never_answers(phone: Phone) -> None:
    caller, leg, socks = await bridged(phone)
    socks.update(await online(phone, "bob"))
    phone.emu.softphones["bob"] = "no-answer"
    offer = await _offer_to(phone, caller, "bob", socks["bob"])
    await socks["bob"].send({"type": "accept", "offer_id": offer["offer_id"]})
    failed = await wait_message(socks["alice"], "transfer_failed")
    assert (failed["to"], failed["reason"]) == ("bob", "not_connected")
    await _no_offer_left(phone, caller)
    assert (await phone.call(caller))["agent"] == "alice" and await state_of(phone, "bob") == "available"
    # the target's console hears the end too (its panel closes), after the accepted
    reasons = [(await wait_message(socks["bob"], "offer_ended"))["reason"] for _ in range(2)]
    assert reasons == ["accepted", "not_connected"]


# -- exclusivity --------------------------------------------------------------------------------------------

async def test_two_transfers_to_the_same_agent_at_once_one_is_offered(phone: Phone) -> None:
    first, _, socks = await bridged(phone, "alice")
    second, _, more = await bridged(phone, "dave")
    socks.update(more)
    socks.update(await online(phone, "bob"))
    results = await asyncio.gather(phone.api(first, "transfer", {"agent": "bob"}, tok=token("alice")),
                                   phone.api(second, "transfer", {"agent": "bob"}, tok=token("dave")))
    statuses = sorted(status for status, _ in results)
    assert statuses == [200, 409], results
    [(_, refused)] = [r for r in results if r[0] == 409]
    assert refused["code"] == "agent_ringing" and "bob" in refused["error"]
    assert len(await _offers(phone.redis)) == 1 and len(await phone.facts("offer.created")) == 1
    # a second transfer of the same call while one is offered is refused too
    [(_, ok)] = [r for r in results if r[0] == 200]
    mine = first if ok["call_sid"] == first else second
    await online(phone, "carol")
    status, body = await phone.api(mine, "transfer", {"agent": "carol"}, tok=token("alice" if mine == first else "dave"))
    assert status == 409 and body["code"] == "transfer_pending"


async def test_transfer_refusals(phone: Phone) -> None:
    caller, leg, socks = await bridged(phone)
    alice = token("alice")
    status, body = await phone.api(caller, "transfer", {"agent": "bob"}, tok=alice)  # bob is offline
    assert status == 409 and body["code"] == "agent_busy" and "offline" in body["error"]
    status, body = await phone.api(caller, "transfer", {"agent": "alice"}, tok=alice)
    assert status == 400 and body["code"] == "same_agent"
    status, body = await phone.api(caller, "transfer", {"agent": "nobody"}, tok=alice)
    assert status == 400 and body["field"] == "agent"
    status, body = await phone.api(caller, "transfer", {"agent": "bob", "queue": "support"}, tok=alice)
    assert status == 400 and "exactly one" in body["error"]
    status, body = await phone.api(caller, "transfer", {"agent": "bob"}, tok=token("bob"))
    assert status == 403
    # bob online, but his console says its softphone is not ready: he cannot be offered a call
    bob = await connect(phone.server, token("bob"))
    await bob.send({"type": "can_take_calls", "value": False})
    await bob.wait_for(lambda s: s["agents"]["bob"]["state"] == "available")
    await until(lambda: _nocalls(phone, "bob"))
    status, body = await phone.api(caller, "transfer", {"agent": "bob"}, tok=alice)
    assert status == 409 and body["code"] == "no_softphone" and "softphone" in body["error"]
    await bob.send({"type": "can_take_calls", "value": True})
    await until(lambda: _not(_nocalls(phone, "bob")))
    assert (await phone.api(caller, "transfer", {"agent": "bob"}, tok=alice))[0] == 200  # ready again: offered
    assert len(await phone.facts("offer.created")) == 1  # the refusals made nothing


# -- offer mode: the router never offers the target a queued caller while a transfer is offered -----------

async def test_offer_mode_transfer_blocks_the_target_from_queued_callers(offer_phone: OfferPhone) -> None:  # noqa: F811
    p = offer_phone
    alice = await _agent(p, "alice")
    first = "CA" + "6" * 32
    await _caller(p, first)
    offer = await next_message(alice, "offer")
    await alice.send({"type": "accept", "offer_id": offer["offer_id"]})
    await until(lambda: _on_call(p, "alice"))
    await p.emu.settle()
    bob = await _agent(p, "bob")
    r = await p.client.post(f"/api/calls/{first}/transfer", json={"agent": "bob"},
                            headers={"Authorization": f"Bearer {token('alice')}"})
    body = await r.json()
    assert r.status == 200, body
    transfer = await next_message(bob, "offer")
    assert transfer["kind"] == "transfer" and transfer["from_agent"] == "alice"
    # a second caller waits; bob is the only available agent, but his transfer offer reserves him
    second = "CA" + "7" * 32
    await _caller(p, second)
    await asyncio.sleep(0.6)  # a dozen router ticks (tick_ms = 50)
    assert not [m for m in bob.messages if m["type"] == "offer"]
    assert await p.redis.hget(keys.OFFER_CALLS, second) is None
    # he rejects the transfer: now the queued caller is offered to him
    await bob.send({"type": "reject", "offer_id": transfer["offer_id"]})
    routed = await next_message(bob, "offer", where=lambda m: m.get("call_sid") == second)
    assert routed["kind"] == "call"
    # and a transfer accepted in offer mode connects like in pull mode
    await bob.send({"type": "reject", "offer_id": routed["offer_id"]})
    carol = await _agent(p, "carol")
    r = await p.client.post(f"/api/calls/{first}/transfer", json={"agent": "carol"},
                            headers={"Authorization": f"Bearer {token('alice')}"})
    assert r.status == 200, await r.json()
    t2 = await next_message(carol, "offer", where=lambda m: m.get("kind") == "transfer")
    await carol.send({"type": "accept", "offer_id": t2["offer_id"]})
    await until(lambda: _on_call(p, "carol"))
    await p.emu.settle()
    assert (await p.redis.hgetall(keys.call(first)))[b"agent"] == b"carol"
    # alice (cold) was removed: her offered participant leg ended, which ends her call, not the caller's:
    # the caller stays in its conference with carol, not put back in the queue
    await until(lambda: _in_state(p, "alice", "wrap-up"))
    await p.emu.settle()
    assert not [f for m, path, f in p.emu.requests if m == "POST" and path.endswith(f"/Calls/{first}.json")]
    conf = p.emu.conference_named(first)
    assert conf is not None and first in conf.participants and len(conf.participants) == 2
    assert p.emu.calls[first].queue is None and await p.redis.zscore(keys.queue_waiting("support"), first) is None
    today = await _today(p)
    assert today["answered"] == 1  # the transferred call still counted once (the second never answered)
    for ws in (alice, bob, carol):
        await ws.close()


async def _in_state(p: OfferPhone, agent: str, state: str) -> bool:
    return await state_of(p, agent) == state  # type: ignore[arg-type]


async def _agent(p: OfferPhone, agent: str) -> WsClient:
    ws = await connect(p.server, token(agent))
    await ws.wait_for(lambda s: s["agents"][agent]["state"] == "available")
    return ws


# -- the first agent gone, a late answer --------------------------------------------------------------------

async def test_first_agent_gone_the_caller_waits_for_the_transfer_and_is_hung_up_if_it_fails(phone: Phone) -> None:
    caller, leg, socks = await bridged(phone)
    socks.update(await online(phone, "bob"))
    offer = await _offer_to(phone, caller, "bob", socks["bob"])
    await phone.emu.end_call(leg)  # alice hangs up her softphone right after offering the transfer
    await phone.emu.settle()
    await until(lambda: _is(phone, "alice", "wrap-up"))
    # the transfer is pending: the caller waits in the conference for bob
    assert phone.emu.calls[caller].status == "in-progress"
    assert (await phone.call(caller))["orphan"] == leg
    await socks["bob"].send({"type": "reject", "offer_id": offer["offer_id"]})
    # nobody will take it now: callboard hangs the caller up rather than leave it alone on hold music
    await until(lambda: _true(phone.emu.calls[caller].status == "completed"))
    assert phone.rest("POST", f"/Calls/{caller}.json")[-1] == {"Status": "completed"}
    assert (await wait_message(socks["alice"], "transfer_failed"))["reason"] == "rejected"
    assert (await phone.stats())["answered"] == 1


async def test_first_agent_gone_the_transfer_still_hands_the_caller_on(phone: Phone) -> None:
    caller, leg, socks = await bridged(phone)
    socks.update(await online(phone, "bob"))
    offer = await _offer_to(phone, caller, "bob", socks["bob"])
    await phone.emu.end_call(leg)
    await phone.emu.settle()
    await socks["bob"].send({"type": "accept", "offer_id": offer["offer_id"]})
    await until(lambda: _is(phone, "bob", "on-call"))
    call = await phone.call(caller)
    assert call["agent"] == "bob" and "orphan" not in call and phone.emu.calls[caller].status == "in-progress"
    assert not [f for f in phone.rest("POST", f"/Calls/{caller}.json") if f.get("Status") == "completed"]


async def _bob_accepted_and_ringing(phone: Phone) -> tuple[str, dict[str, WsClient], str]:
    """alice holds a caller, bob accepts her transfer, and his phone rings without answering: (caller, sockets,
    bob's participant call)."""
    caller, leg, socks = await bridged(phone)
    socks.update(await online(phone, "bob"))
    phone.emu.softphones["bob"] = "wait"
    offer = await _offer_to(phone, caller, "bob", socks["bob"])
    await socks["bob"].send({"type": "accept", "offer_id": offer["offer_id"]})
    assert (await wait_message(socks["bob"], "offer_ended"))["reason"] == "accepted"
    [bobs] = [c.sid for c in phone.emu.calls.values() if c.to.startswith("client:bob")]
    return caller, socks, bobs


async def test_an_accepted_transfer_not_connected_in_time_ends_its_ringing_leg(phone: Phone) -> None:
    caller, socks, bobs = await _bob_accepted_and_ringing(phone)
    phone.clock.advance(61)  # past connect_timeout_s (60)
    failed = await wait_message(socks["alice"], "transfer_failed")
    assert (failed["to"], failed["reason"]) == ("bob", "connect_timeout")
    await _no_offer_left(phone, caller)
    # the tick that ended the transfer has its participant call ended: it cannot ring on into a call
    await until(lambda: _true(bool(phone.rest("POST", f"/Calls/{bobs}.json"))))
    assert phone.rest("POST", f"/Calls/{bobs}.json") == [{"Status": "completed"}]
    await phone.emu.settle()
    assert phone.emu.calls[bobs].status == "completed" and phone.emu.calls[caller].status == "in-progress"
    assert (await phone.call(caller))["agent"] == "alice" and await state_of(phone, "bob") == "available"


async def test_an_accepted_transfer_not_connected_in_time_ends_and_a_late_answer_is_removed(phone: Phone) -> None:
    caller, socks, bobs = await _bob_accepted_and_ringing(phone)
    phone.emu.fail_next = [(404, 20404)]  # Twilio refuses the hang-up at the deadline: his phone rings on
    phone.clock.advance(61)  # past connect_timeout_s (60)
    failed = await wait_message(socks["alice"], "transfer_failed")
    assert (failed["to"], failed["reason"]) == ("bob", "connect_timeout")
    await _no_offer_left(phone, caller)
    [create] = phone.rest("POST", "/Participants.json")
    await until(lambda: _true(not phone.emu.fail_next))
    await phone.emu.answer("bob")  # bob's softphone answers after all: he must not stay in the call
    await phone.emu.settle()
    await until(lambda: _true(len(phone.rest("POST", f"/Calls/{bobs}.json")) == 2))
    assert phone.rest("POST", f"/Calls/{bobs}.json") == [{"Status": "completed"}] * 2  # refused, then his leg is ended
    # (the emulator sends the answered callback before the participant joins and then joins it anyway, so
    # its model shows bob's leg in-progress; Twilio ends a completed call. Only the request is asserted.)
    await phone.emu.settle()
    assert phone.emu.calls[caller].status == "in-progress"
    call = await phone.call(caller)
    assert call["agent"] == "alice" and "transfers" not in call
    assert await state_of(phone, "bob") == "available" and await state_of(phone, "alice") == "on-call"
    assert create["To"].startswith("client:bob?offer_id=")


async def _true(value: bool) -> bool:
    return value


async def _nocalls(phone: Phone, agent: str) -> bool:
    return bool(await phone.redis.hlen(keys.PREFIX + f"nocalls:{agent}"))


async def _not(awaitable: Any) -> bool:
    return not await awaitable


async def test_twilio_refusing_the_accepted_participant_fails_the_transfer_cleanly(phone: Phone) -> None:
    caller, leg, socks = await bridged(phone)
    socks.update(await online(phone, "bob"))
    offer = await _offer_to(phone, caller, "bob", socks["bob"])
    phone.emu.fail_next = [(400, 21210)]  # the Participants create is refused (not retried: a 4xx)
    await socks["bob"].send({"type": "accept", "offer_id": offer["offer_id"]})
    failed = await wait_message(socks["alice"], "transfer_failed")
    assert (failed["to"], failed["reason"]) == ("bob", "not_connected")
    assert (await wait_message(socks["bob"], "offer_ended"))["reason"] == "not_connected"
    await _no_offer_left(phone, caller)
    assert await _ended(phone) == [("cancelled", "not_connected")]
    assert (await phone.call(caller))["agent"] == "alice" and await state_of(phone, "bob") == "available"


async def test_a_transfer_offer_expires_on_another_instance_after_its_maker_is_gone(
        phone: Phone, make_instance: Any) -> None:
    """Expiry lives in the router tick every instance runs (pull mode too): the instance that made the
    offer stopping changes nothing."""
    other = await make_instance(phone.config, app_settings=phone.server.app[SERVICES].settings, clock=phone.clock,
                                instance_id="b")
    caller, leg, socks = await bridged(phone)  # alice and the call on instance a (phone.server)
    bob = await connect(other, token("bob"))  # bob's console is on instance b
    await bob.wait_for(lambda s: s["agents"]["bob"]["state"] == "available")
    status, body = await phone.api(caller, "transfer", {"agent": "bob"}, tok=token("alice"))  # made on a
    assert status == 200, body
    offer = await wait_message(bob, "offer")
    await socks["alice"].close()
    await phone.server.close()  # instance a is gone (its router with it)
    phone.clock.advance(16)
    ended = await wait_message(bob, "offer_ended")
    assert (ended["offer_id"], ended["reason"]) == (offer["offer_id"], "expired")
    assert await _offers(phone.redis) == {} and "xfer" not in await phone.call(caller)
    [fact] = [f for f in await phone.facts("offer.ended") if f["offer_id"] == offer["offer_id"]]
    assert (fact["result"], fact["kind"]) == ("missed", "transfer")
    await bob.close()


async def test_a_transferred_call_is_transferred_again_and_each_agent_wraps_up(phone: Phone) -> None:
    caller, leg, socks = await bridged(phone)
    socks.update(await online(phone, "bob", "dave"))
    offer = await _offer_to(phone, caller, "bob", socks["bob"])
    await socks["bob"].send({"type": "accept", "offer_id": offer["offer_id"]})
    await until(lambda: _is(phone, "bob", "on-call"))
    await until(lambda: _is(phone, "alice", "wrap-up"))
    # bob hands it on to dave: bob's own participant leg is removed, so he wraps up too
    offer = await _offer_to(phone, caller, "dave", socks["dave"], by="bob")
    assert offer["from_agent"] == "bob"
    await socks["dave"].send({"type": "accept", "offer_id": offer["offer_id"]})
    await until(lambda: _is(phone, "dave", "on-call"))
    await until(lambda: _is(phone, "bob", "wrap-up"))
    call = await phone.call(caller)
    assert call["agent"] == "dave"
    assert [(t["from"], t["to"]) for t in json.loads(call["transfers"])] == [("alice", "bob"), ("bob", "dave")]
    conf = phone.emu.conference_named(caller)
    assert conf is not None and len(conf.participants) == 2 and caller in conf.participants
    stats = await phone.stats()
    assert (stats["offered"], stats["answered"]) == (1, 1)


async def test_a_repeated_answered_callback_changes_nothing(phone: Phone) -> None:
    caller, leg, socks = await bridged(phone)
    socks.update(await online(phone, "bob"))
    offer = await _offer_to(phone, caller, "bob", socks["bob"])
    await socks["bob"].send({"type": "accept", "offer_id": offer["offer_id"]})
    await until(lambda: _is(phone, "bob", "on-call"))
    await phone.emu.settle()
    [(url, params, _)] = [(u, p, s) for u, p, s in phone.emu.callbacks
                          if "kind=transfer" in u and p.get("CallStatus") == "in-progress"]
    before = len(phone.emu.requests)
    query = dict(part.split("=", 1) for part in url.split("?", 1)[1].split("&"))
    status, _ = await phone.twilio.post("participant", params, query)  # Twilio sends the answer again
    assert status == 200
    await phone.emu.settle()
    assert len(phone.emu.requests) == before  # bob's leg is not ended, nothing asked of Twilio
    assert (await phone.call(caller))["agent"] == "bob" and await state_of(phone, "bob") == "on-call"
    assert len(json.loads((await phone.call(caller))["transfers"])) == 1
