"""Routing in offer mode, end to end: callers through the Twilio emulator, agents on real websockets.

Each test's center is real callboard on loopback with the test Redis; Twilio is the emulator
(simulator/twilio_api.py), never a mock of callboard. The directory lookup's key `cb:caller:{CallSid}` is
written by the test where it matters: it is input standing for the directory, not the code under test (one
test, test_owner_from_the_real_directory_gets_the_offer, runs the real directory lookup instead).
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest
import websockets

from callboard import keys
from callboard.clock import FakeClock
from callboard.services import SERVICES
from tests.conftest import WsClient, token, ws_url
from tests.routing_support import OfferCenter, next_message, offer_config, start_center

# The directory's answer for a caller it does not know (the stand-in for cb:caller:{CallSid}).
NO_CUSTOMER: dict[str, Any] = {"withheld": False, "customers": [], "owner": None, "owner_team": None}


@pytest.fixture
async def center_factory(aiohttp_server: Any, redis_url: str, redis: Any) -> Any:
    centers: list[OfferCenter] = []

    async def make(instances: int = 1, clock: Any = None, server: dict[str, Any] | None = None,
                   directory: bool = False, **routing: Any) -> OfferCenter:
        config = offer_config(server=server, **routing) if server else offer_config(**routing)
        center = await start_center(aiohttp_server, redis_url, redis, config, instances=instances, clock=clock,
                                    directory=directory)
        centers.append(center)
        return center

    yield make
    for center in centers:
        for client in center.clients:
            await client.close()
        await center.emu.close()


def answering(log: list[dict[str, str]], result: str = "answer") -> Any:
    async def phone(params: dict[str, str], call: Any) -> str:
        log.append(params)
        return result

    return phone


async def wait_until(predicate: Any, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def test_whole_path_offer_accept_bridge_hangup(center_factory: Any) -> None:
    center = await center_factory()
    alice = await center.agent("alice")
    await asyncio.sleep(0.01)
    bob = await center.agent("bob")
    rang: list[dict[str, str]] = []
    center.emu.softphones["alice"] = answering(rang)
    info = {"withheld": False, "owner": None, "owner_team": None,
            "customers": [{"id": "c1", "name": "Hanako Yamada", "kana": "ヤマダ ハナコ", "company": "ACME",
                           "owner": None, "memo": None, "notes": []}]}
    caller = await center.caller(info=info)

    offer = await next_message(alice, "offer")  # alice has been available longer than bob
    assert offer["call_sid"] == caller.sid and offer["queue"] == "support" and offer["from"] == "+15557770001"
    assert offer["customers"][0]["name"] == "Hanako Yamada" and offer["expires_ms"] > 0
    wall = await center.wall()
    await wall.wait_for(lambda s: s["agents"]["alice"]["ringing"] is True, timeout=15)
    assert not [m for m in bob.messages if m["type"] == "offer"]

    await alice.send({"type": "accept", "offer_id": offer["offer_id"]})
    ended = await next_message(alice, "offer_ended")
    assert ended == {"type": "offer_ended", "offer_id": offer["offer_id"], "call_sid": caller.sid, "reason": "accepted"}
    await alice.wait_for(lambda s: s["agents"]["alice"]["state"] == "on-call", timeout=15)
    assert rang == [{"offer_id": offer["offer_id"]}], "the Dial carries the offer id as a custom parameter"
    pop = await next_message(alice, "pop")
    assert pop["call_sid"] == caller.sid
    today = await center.support_today()
    assert today["offered"] == 1 and today["answered"] == 1
    await wall.wait_for(lambda s: s["agents"]["alice"]["ringing"] is False, timeout=15)

    child = next(c for c in center.emu.calls.values() if c.parent_sid == caller.sid)
    await center.emu.hangup(child.sid)  # alice hangs up: dial-result, wrap-up, the caller's call ends
    await center.emu.settle()
    # wrap-up (2 s in the test center), or already past it when this machine is slow
    await alice.wait_for(lambda s: s["agents"]["alice"]["state"] in ("wrap-up", "available")
                         and s["agents"]["alice"].get("call") is None, timeout=15)
    assert center.emu.calls[caller.sid].status == "completed"
    assert await center.redis.hlen(keys.OFFER_CALLS) == 0 and await center.redis.hlen(keys.OFFER_AGENTS) == 0
    kinds = [(f["type"], f.get("result")) for f in await center.facts() if f["type"].startswith("offer.")]
    assert kinds == [("offer.created", None), ("offer.ended", "accepted")]
    metrics = center.services().metrics.render().decode()
    assert 'callboard_offers_total{queue="support",result="accepted"} 1.0' in metrics
    assert "callboard_offer_latency_seconds_count{queue=\"support\"} 1.0" in metrics


async def test_owner_first_then_team_then_queue(center_factory: Any) -> None:
    center = await center_factory()
    dave = await center.agent("dave")  # sales team, serves support too; available longest
    await asyncio.sleep(0.01)
    bob = await center.agent("bob")  # support team
    await asyncio.sleep(0.01)
    alice = await center.agent("alice")  # support team, the owner
    owned = await center.caller(info={"withheld": False, "customers": [], "owner": "alice", "owner_team": "support"})
    offer = await next_message(alice, "offer")
    assert offer["call_sid"] == owned.sid
    team = await center.caller(info={"withheld": False, "customers": [], "owner": "carol", "owner_team": "support"})
    offer = await next_message(bob, "offer")  # the owner (carol) serves sales only and is offline: her team
    assert offer["call_sid"] == team.sid
    nobody = await center.caller(info={"withheld": True, "customers": [], "owner": None, "owner_team": None})
    offer = await next_message(dave, "offer")
    assert offer["call_sid"] == nobody.sid and offer["withheld"] is True


async def test_owner_from_the_real_directory_gets_the_offer(center_factory: Any) -> None:
    """No stand-in: the customer is created through the directory API (SQLite), the instance's own lookup at
    `incoming` finds the owner, and the owner is offered the caller although alice waited longer."""
    center = await center_factory(directory=True)
    await center.agent("alice")
    await asyncio.sleep(0.01)
    bob = await center.agent("bob")
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token('alice')}"}) as http:
        resp = await http.post(f"{center.base()}/api/customers",
                               json={"name": "Taro Suzuki", "phones": ["+1 (650) 253-0000"], "owner": "bob"})
        assert resp.status == 201, await resp.text()
    caller = await center.caller("+16502530000")
    offer = await next_message(bob, "offer")
    assert offer["call_sid"] == caller.sid
    assert [c["name"] for c in offer["customers"]] == ["Taro Suzuki"]


async def test_caller_without_lookup_is_routed_after_the_wait(center_factory: Any) -> None:
    center = await center_factory()
    bob = await center.agent("bob")
    caller = await center.caller()  # no cb:caller key ever: the queue step after about a second
    offer = await next_message(bob, "offer")
    assert offer["call_sid"] == caller.sid and offer["customers"] == [] and offer["waited_s"] >= 0.9


async def test_expiry_then_missed_to_away(center_factory: Any) -> None:
    clock = FakeClock()
    # leases far longer than the jumps of the fake clock, so only the offers expire
    center = await center_factory(clock=clock, server={"lease_renew_s": 0.2, "lease_ttl_s": 600})
    alice = await center.agent("alice")
    caller = await center.caller(info=NO_CUSTOMER)
    first = await next_message(alice, "offer")
    clock.advance(15.5)
    ended = await next_message(alice, "offer_ended")
    assert ended["offer_id"] == first["offer_id"] and ended["reason"] == "expired"
    second = await next_message(alice, "offer")  # still the only one available: offered again
    assert second["call_sid"] == caller.sid and second["offer_id"] != first["offer_id"]
    clock.advance(15.5)
    assert (await next_message(alice, "offer_ended"))["reason"] == "expired"
    snap = await alice.wait_for(lambda s: s["agents"]["alice"]["state"] == "away", timeout=15)
    assert snap["agents"]["alice"]["reason"] == "missed offers" and snap["agents"]["alice"]["missed_offers"] == 2
    results = [f["result"] for f in await center.facts() if f["type"] == "offer.ended"]
    assert results == ["missed", "missed"]
    await asyncio.sleep(0.3)
    assert not [m for m in alice.messages if m["type"] == "offer"], "an away agent is not offered calls"


async def test_caller_hangup_cancels_the_offer(center_factory: Any) -> None:
    center = await center_factory()
    alice = await center.agent("alice")
    caller = await center.caller(info=NO_CUSTOMER)
    offer = await next_message(alice, "offer")
    await center.emu.hangup(caller.sid)
    ended = await next_message(alice, "offer_ended", timeout=2.0)
    assert ended["offer_id"] == offer["offer_id"] and ended["reason"] == "caller_left"
    facts = [f for f in await center.facts() if f["type"] == "offer.ended"]
    assert facts[0]["result"] == "cancelled" and facts[0]["reason"] == "caller_left"
    assert (await center.support_today())["abandoned"] == 1


async def test_agent_disconnect_during_offer_goes_to_the_next_agent(center_factory: Any) -> None:
    center = await center_factory()
    alice = await center.agent("alice")
    await asyncio.sleep(0.01)
    bob = await center.agent("bob")
    caller = await center.caller(info=NO_CUSTOMER)
    offer = await next_message(alice, "offer")
    await alice.close()
    center.clients.remove(alice)
    moved = await next_message(bob, "offer")
    assert moved["call_sid"] == caller.sid and moved["offer_id"] != offer["offer_id"]
    ended = [f for f in await center.facts() if f["type"] == "offer.ended"]
    assert ended[0]["offer_id"] == offer["offer_id"] and ended[0]["reason"] == "agent_unavailable"


async def test_console_that_cannot_take_calls_is_not_offered(center_factory: Any) -> None:
    center = await center_factory()
    alice = await center.agent("alice", can_take_calls=False)
    await asyncio.sleep(0.01)
    bob = await center.agent("bob")
    caller = await center.caller(info={"withheld": False, "customers": [], "owner": "alice", "owner_team": "support"})
    offer = await next_message(bob, "offer")  # alice owns the customer but her console has no softphone
    assert offer["call_sid"] == caller.sid
    assert not [m for m in alice.messages if m["type"] == "offer"]
    alice2 = await center.agent("alice")  # a second console of alice that can take calls
    second = await center.caller(info={"withheld": False, "customers": [], "owner": "alice", "owner_team": "support"})
    got = await next_message(alice2, "offer")
    assert got["call_sid"] == second.sid


async def test_reject_offers_the_next_agent(center_factory: Any) -> None:
    center = await center_factory()
    alice = await center.agent("alice")
    await asyncio.sleep(0.01)
    bob = await center.agent("bob")
    caller = await center.caller(info=NO_CUSTOMER)
    offer = await next_message(alice, "offer")
    await alice.send({"type": "reject", "offer_id": offer["offer_id"]})
    assert (await next_message(alice, "offer_ended"))["reason"] == "rejected"
    assert (await next_message(bob, "offer"))["call_sid"] == caller.sid
    await alice.send({"type": "accept", "offer_id": offer["offer_id"]})
    error = await next_message(alice, "error")
    assert error["code"] == "no_offer"
    await alice.send({"type": "accept", "offer_id": {"deep": [1, 2, 3]}})
    assert (await next_message(alice, "error"))["code"] == "bad_message"


async def test_rest_429_then_success(center_factory: Any) -> None:
    center = await center_factory()
    alice = await center.agent("alice")
    center.emu.softphones["alice"] = answering([])
    await center.caller(info=NO_CUSTOMER)
    offer = await next_message(alice, "offer")
    center.emu.inject(status=429, code=20429, times=2, path="/Members/")
    await alice.send({"type": "accept", "offer_id": offer["offer_id"]})
    assert (await next_message(alice, "offer_ended"))["reason"] == "accepted"
    await alice.wait_for(lambda s: s["agents"]["alice"]["state"] == "on-call", timeout=15)
    assert [r.status for r in center.emu.requests if "/Members/" in r.path] == [429, 429, 200]


async def test_rest_failure_ends_the_offer_and_the_caller_is_offered_again(center_factory: Any) -> None:
    center = await center_factory()
    alice = await center.agent("alice")
    center.emu.softphones["alice"] = answering([])
    caller = await center.caller(info=NO_CUSTOMER)
    offer = await next_message(alice, "offer")
    center.emu.inject(status=503, code=20503, times=5, path="/Members/")
    await alice.send({"type": "accept", "offer_id": offer["offer_id"]})
    ended = await next_message(alice, "offer_ended", timeout=20)
    assert ended["reason"] == "dequeue_failed"
    again = await next_message(alice, "offer", timeout=10)
    assert again["call_sid"] == caller.sid
    await alice.send({"type": "accept", "offer_id": again["offer_id"]})
    await alice.wait_for(lambda s: s["agents"]["alice"]["state"] == "on-call", timeout=15)
    today = await center.support_today()
    assert today["offered"] == 1 and today["answered"] == 1


async def test_dial_not_connected_requeues_keeping_fifo_and_counts(center_factory: Any) -> None:
    center = await center_factory()
    alice = await center.agent("alice")
    rang: list[dict[str, str]] = []
    center.emu.softphones["alice"] = answering(rang, "reject")  # the softphone refuses the dial
    first = await center.caller("+15557770001", info=NO_CUSTOMER)
    await asyncio.sleep(0.05)
    second = await center.caller("+15557770002", info=NO_CUSTOMER)
    entered = await center.redis.zscore(keys.queue_waiting("support"), first.sid)
    offer = await next_message(alice, "offer")
    assert offer["call_sid"] == first.sid
    await alice.send({"type": "accept", "offer_id": offer["offer_id"]})
    assert (await next_message(alice, "offer_ended"))["reason"] == "accepted"
    again = await next_message(alice, "offer")  # back in the queue, still ahead of the second caller
    assert again["call_sid"] == first.sid and rang
    assert await center.redis.zscore(keys.queue_waiting("support"), first.sid) == entered
    assert center.emu.queue_named("support").members[-1] == first.sid  # Twilio's queue has it again
    today = await center.support_today()
    assert today["offered"] == 2 and today["answered"] == 0 and today["abandoned"] == 0
    assert [f for f in await center.facts() if f["type"] == "call.requeued"] == [
        {"type": "call.requeued", "call_sid": first.sid, "queue": "support",
         "at_ms": next(f["at_ms"] for f in await center.facts() if f["type"] == "call.requeued")}]
    center.emu.softphones["alice"] = answering(rang)
    await alice.send({"type": "accept", "offer_id": again["offer_id"]})
    await alice.wait_for(lambda s: s["agents"]["alice"]["state"] == "on-call", timeout=15)
    today = await center.support_today()
    assert today["offered"] == 2 and today["answered"] == 1
    del second


async def test_pull_mode_stays_the_default(make_instance: Any) -> None:
    server = await make_instance()
    assert server.app[SERVICES].routing is None


async def test_offers_are_exclusive_under_races_from_two_instances(center_factory: Any) -> None:
    center = await center_factory(instances=2)
    agents = {"alice": await center.agent("alice", i=0), "bob": await center.agent("bob", i=1),
              "dave": await center.agent("dave", i=1)}
    await center.agent("alice", i=1)  # a second console of alice, on the other instance
    callers = [await center.caller(f"+1555777000{n}", info=NO_CUSTOMER) for n in range(6)]
    routers = [center.services(0).routing, center.services(1).routing]
    assert all(routers)
    for _ in range(20):  # both instances decide at once, again and again, on top of their own loops
        await asyncio.gather(*(r.tick() for r in routers for _ in range(3)))  # type: ignore[union-attr]
    by_agent = {k.decode(): v.decode() for k, v in (await center.redis.hgetall(keys.OFFER_AGENTS)).items()}
    by_call = {k.decode(): v.decode() for k, v in (await center.redis.hgetall(keys.OFFER_CALLS)).items()}
    assert sorted(by_agent) == ["alice", "bob", "dave"]
    assert len(by_call) == 3 and set(by_call.values()) == set(by_agent.values())
    # the three longest-waiting callers, FIFO, each offered to exactly one agent
    assert set(by_call) == {c.sid for c in callers[:3]}
    created = [f for f in await center.facts() if f["type"] == "offer.created"]
    assert len(created) == 3 and len({f["agent"] for f in created}) == 3 and len({f["call_sid"] for f in created}) == 3
    for agent_id, client in agents.items():
        offer = await next_message(client, "offer")
        assert offer["offer_id"] == by_agent[agent_id]
    await asyncio.sleep(0.3)
    assert not [m for c in agents.values() for m in c.messages if m["type"] == "offer"], "one offer per agent"


async def test_connect_and_dial_result_with_garbage_never_drop_the_caller(center_factory: Any) -> None:
    """Twilio-signed requests with queries routing never made: the caller goes (back) into a queue."""
    import aiohttp

    from callflow.signature import SIGNATURE_HEADER, sign
    from tests.conftest import TWILIO_TOKEN

    center = await center_factory()
    base = center.base()
    form = {"CallSid": "CA" + "e" * 32, "From": "+15550001111", "To": "+15550000001", "CallStatus": "in-progress",
            "DialCallStatus": "no-answer"}
    async with aiohttp.ClientSession() as http:
        for path in ("/twilio/voice/connect?offer=&agent=nobody&queue=support",
                     "/twilio/voice/connect?" + "x" * 3000,
                     "/twilio/voice/dial-result?offer=of999&agent=alice&queue=support",
                     "/twilio/voice/dial-result?queue=%00%FF"):
            url = base + path
            async with http.post(url, data=form, headers={SIGNATURE_HEADER: sign(TWILIO_TOKEN, url, form)}) as resp:
                body = await resp.text()
            assert resp.status == 200, (path, body)
            assert "<Enqueue" in body, (path, body)
        url = base + "/twilio/voice/connect?offer=of1&agent=alice&queue=support"
        async with http.post(url, data=form, headers={SIGNATURE_HEADER: "forged"}) as resp:
            assert resp.status == 403
        async with http.post(url, data={"From": "x"}, headers={SIGNATURE_HEADER: sign(TWILIO_TOKEN, url, {"From": "x"})}) as resp:
            assert resp.status == 400 and "CallSid" in await resp.text()


async def test_resync_restores_ringing_missed_offers_and_the_open_offer(center_factory: Any) -> None:
    clock = FakeClock()
    center = await center_factory(clock=clock, server={"lease_renew_s": 0.2, "lease_ttl_s": 600}, missed_to_away=0)
    alice = await center.agent("alice")
    await center.caller(info=NO_CUSTOMER)
    await next_message(alice, "offer")
    clock.advance(15.5)
    assert (await next_message(alice, "offer_ended"))["reason"] == "expired"
    offer = await next_message(alice, "offer")
    services = center.services()
    services.mirror.reset_agents({})  # as a fresh instance's mirror: nothing known about offers
    services.mirror.offers = {}
    await services.follower.resync()
    entry = services.mirror.agents["alice"]
    assert entry["ringing"] is True and entry["missed_offers"] == 1
    assert services.mirror.offers["alice"]["offer_id"] == offer["offer_id"]
    again = await center.agent("alice")  # a reconnecting console gets the open offer again
    assert (await next_message(again, "offer"))["offer_id"] == offer["offer_id"]


async def test_caller_hanging_up_while_the_agent_rings_frees_the_agent(center_factory: Any) -> None:
    center = await center_factory()
    alice = await center.agent("alice")
    ringing = asyncio.Event()
    release = asyncio.Event()

    async def slow_phone(params: dict[str, str], call: Any) -> str:
        ringing.set()
        await release.wait()
        return "answer"

    center.emu.softphones["alice"] = slow_phone
    first = await center.caller(info=NO_CUSTOMER)
    offer = await next_message(alice, "offer")
    await alice.send({"type": "accept", "offer_id": offer["offer_id"]})
    await asyncio.wait_for(ringing.wait(), 10)
    await center.emu.hangup(first.sid)  # the caller gives up while alice's softphone rings
    second = await center.caller("+15557770009", info=NO_CUSTOMER)
    got = await next_message(alice, "offer", timeout=5)  # well before the 60 s connect deadline
    assert got["call_sid"] == second.sid
    release.set()
    await center.emu.settle()


async def test_agent_turning_available_gets_the_waiting_caller(center_factory: Any) -> None:
    center = await center_factory(tick_ms=200)
    alice = await center.agent("alice")
    await alice.send({"type": "set_state", "state": "away", "reason": "lunch"})
    await alice.wait_for(lambda s: s["agents"]["alice"]["state"] == "away", timeout=15)
    caller = await center.caller(info=NO_CUSTOMER)
    await asyncio.sleep(0.5)
    assert not [m for m in alice.messages if m["type"] == "offer"], "away agents are not offered calls"
    await alice.send({"type": "set_state", "state": "available"})
    offer = await next_message(alice, "offer")
    assert offer["call_sid"] == caller.sid


async def test_instance_killed_during_an_offer_the_caller_goes_to_an_agent_elsewhere(center_factory: Any) -> None:
    center = await center_factory(instances=2)
    alice = await center.agent("alice", i=0)
    await asyncio.sleep(0.01)
    bob = await center.agent("bob", i=1)
    caller = await center.caller(info=NO_CUSTOMER, i=1)
    offer = await next_message(alice, "offer")
    await center.services(0).crash()  # like SIGKILL: no drain; its lease expires and instance 1 reaps it
    moved = await next_message(bob, "offer", timeout=20)
    assert moved["call_sid"] == caller.sid and moved["offer_id"] != offer["offer_id"]
    ended = [f for f in await center.facts() if f["type"] == "offer.ended"]
    assert ended[0]["offer_id"] == offer["offer_id"] and ended[0]["reason"] == "agent_unavailable"
    center.clients.remove(alice)


async def test_router_survives_a_redis_restart(aiohttp_server: Any, redis_server_factory: Any, tmp_path: Any) -> None:
    """Redis goes away and comes back empty: the router logs, keeps ticking, and routes again afterwards."""
    from redis.asyncio import Redis

    proc, url, directory = redis_server_factory(tmp_path)
    client = Redis.from_url(url)
    center = await start_center(aiohttp_server, url, client, offer_config())
    try:
        alice = await center.agent("alice")
        router = center.services().routing
        assert router is not None
        proc.terminate()
        proc.wait(5)
        ticks = router.ticks
        await asyncio.sleep(1.0)
        assert router.ticks > ticks, "the router loop keeps going while Redis is away"
        redis_server_factory(directory)
        await asyncio.wait_for(center.services().follower.caught_up.wait(), 15)
        for _ in range(200):  # the lease renewal finds its lease missing and registers alice again
            if await client.hexists(keys.AGENTS, "alice") and center.services().mirror.staffed("support"):
                break
            await asyncio.sleep(0.1)
        caller = await center.caller(info=NO_CUSTOMER)
        offer = await next_message(alice, "offer", timeout=20)
        assert offer["call_sid"] == caller.sid
    finally:
        for c in center.clients:
            await c.close()
        await center.emu.close()
        await client.aclose()


async def test_a_redirected_queue_result_during_the_connect_is_not_a_leaving(center_factory: Any) -> None:
    """Should Twilio report the REST dequeue as QueueResult=redirected, the caller still has not left."""
    import aiohttp

    from callflow.signature import SIGNATURE_HEADER, sign
    from tests.conftest import TWILIO_TOKEN

    center = await center_factory()
    alice = await center.agent("alice")
    ringing, release = asyncio.Event(), asyncio.Event()

    async def slow_phone(params: dict[str, str], call: Any) -> str:
        ringing.set()
        await release.wait()
        return "reject"

    center.emu.softphones["alice"] = slow_phone
    caller = await center.caller(info=NO_CUSTOMER)
    offer = await next_message(alice, "offer")
    await alice.send({"type": "accept", "offer_id": offer["offer_id"]})
    await asyncio.wait_for(ringing.wait(), 10)
    url = center.base() + "/twilio/voice/queue-result?queue=support"
    form = {"CallSid": caller.sid, "QueueResult": "redirected", "QueueTime": "3", "From": caller.from_,
            "To": caller.to}
    async with aiohttp.ClientSession() as http:
        async with http.post(url, data=form, headers={SIGNATURE_HEADER: sign(TWILIO_TOKEN, url, form)}) as resp:
            assert resp.status == 200
    assert await center.redis.zscore(keys.queue_waiting("support"), caller.sid) is not None
    release.set()  # the softphone refuses: the caller is put back and offered again
    again = await next_message(alice, "offer")
    assert again["call_sid"] == caller.sid
    today = await center.support_today()
    assert today["offered"] == 1 and today.get("redirected", 0) == 0


async def test_caller_hanging_up_while_the_accepted_agent_rings_is_an_abandon(center_factory: Any) -> None:
    """Routing dequeued the caller (not a leaving: no queue-result follows) and its <Dial><Client> rings;
    the caller hangs up before alice answers. The caller's own status callback is then the only word of it:
    counted abandoned once, never left offered-but-neither."""
    center = await center_factory()
    alice = await center.agent("alice")
    center.emu.softphones["alice"] = "wait"  # alice's phone rings until the caller gives up
    caller = await center.caller(info=NO_CUSTOMER)
    offer = await next_message(alice, "offer")
    await alice.send({"type": "accept", "offer_id": offer["offer_id"]})
    await wait_until(lambda: _ringing(center, caller.sid), what="alice's softphone ringing")
    await center.emu.hangup(caller.sid)
    await center.emu.settle()

    async def counted() -> bool:
        today = await center.support_today()
        return today["abandoned"] == 1

    await wait_until(counted, what="the abandon counted")
    today = await center.support_today()
    assert today["offered"] == 1 and today["answered"] == 0 and today["abandoned"] == 1
    assert await center.redis.hlen(keys.OFFER_CALLS) == 0 and await center.redis.hlen(keys.OFFER_AGENTS) == 0
    await alice.wait_for(lambda s: s["agents"]["alice"]["state"] == "available", timeout=15)
    left = [f for f in await center.facts() if f["type"] == "call.left_queue"]
    assert len(left) == 1 and left[0]["outcome"] in ("abandoned", "short_abandoned")  # short: under short_s
    assert left[0]["wait_s"] is not None  # measured from its enqueue, never an unknown wait
    metrics = center.services().metrics.render().decode()
    assert 'callboard_calls_abandoned_total{queue="support"} 1.0' in metrics


async def _ringing(center: OfferCenter, caller_sid: str) -> bool:
    return any(c.parent_sid == caller_sid and c.status == "ringing" for c in center.emu.calls.values())


async def test_console_ready_right_after_its_hello_is_offered_calls(center_factory: Any) -> None:
    """The console says "can_take_calls": false in its hello (the SDK is still registering) and true a moment
    later. The hello's "cannot" is written by the registration task, the "can" by the toggle: the toggle must
    wait for the registration, or a slow first write lands last and the agent is never offered a caller (seen
    once in CI). The first write is slowed here (fault injection around the real router method)."""
    center = await center_factory()
    router = center.services().routing
    real = router.connection_cannot_take_calls

    async def slow_cannot(agent: str, conn_id: str, instance: str | None) -> None:
        if instance:  # the hello's "cannot": Redis answers it late
            await asyncio.sleep(0.3)
        await real(agent, conn_id, instance)

    router.connection_cannot_take_calls = slow_cannot
    conn = await websockets.connect(ws_url(center.servers[0]), subprotocols=["callboard.v1.json"], open_timeout=5)
    alice = WsClient(conn)
    center.clients.append(alice)
    await alice.send({"type": "hello", "token": token("alice"), "can_take_calls": False})
    alice.welcome = await alice.recv()  # the registration (and its slowed "cannot") has begun
    await alice.send({"type": "can_take_calls", "value": True})
    await alice.wait_for(lambda s: s.get("agents", {}).get("alice", {}).get("connections", 0) >= 1, timeout=15)
    await asyncio.sleep(0.5)  # both writes done, in whatever order they ran
    assert await center.redis.hlen(keys.no_calls("alice")) == 0
    caller = await center.caller(info=NO_CUSTOMER)
    offer = await next_message(alice, "offer")
    assert offer["call_sid"] == caller.sid
