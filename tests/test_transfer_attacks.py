"""Attacks on transfers to an agent (issue 13's transfer offers), the way the first wave's outside testers did
it: Redis going away while a transfer rings, garbage at the transfer API and at the answer, a target console
that stops reading its websocket. (The instance that made the offer being SIGKILLed is in
tests/test_transfer_kill.py: real `callboard serve` processes.)

Everything end to end through the Twilio emulator on loopback, on real Redis servers; nothing of callboard is
mocked. Each Redis-outage test runs its own redis-server (append-only, fsync always), killed and started again
on the same socket, so the data survives and only the outage is tested.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import socket
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from callboard import keys
from callboard.services import SERVICES
from tests.conftest import connect, keep_facts, token
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
from wallboard.hub import owed_bytes

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

AOF = ("--appendonly", "yes", "--appendfsync", "always")


class PrivateRedis:
    """A redis-server of the test's own that can be taken away and brought back with its data."""

    def __init__(self, factory: Any, directory: Path) -> None:
        self.factory = factory
        self.proc, self.url, self.directory = factory(directory, *AOF)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGKILL)  # no goodbye; the AOF (fsync always) holds every write
        self.proc.wait(10)

    def start(self) -> None:
        self.proc, url, _ = self.factory(self.directory, *AOF)
        assert url == self.url  # the same socket: the instance's client reconnects by itself


async def _outage_phone(make_instance: Any, aiohttp_server: Any, aiohttp_client: Any, factory: Any,
                        tmp_path: Path) -> tuple[Phone, PrivateRedis]:
    server = PrivateRedis(factory, tmp_path)
    private = Redis.from_url(server.url)
    await keep_facts(private)
    phone = await _phone(make_instance, aiohttp_server, aiohttp_client, private, conference_config(), url=server.url)
    return phone, server


async def _offers(redis: Redis) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in (await redis.hgetall(keys.OFFER_AGENTS)).items()}


async def _transfer(phone: Phone, caller: str, target: str, ws: Any, *, by: str = "alice") -> dict[str, Any]:
    status, body = await phone.api(caller, "transfer", {"agent": target}, tok=token(by))
    assert status == 200 and body["status"] == "offered", body
    offer = await wait_message(ws, "offer")
    assert offer["offer_id"] == body["offer_id"]
    return offer


async def _redis_answers(phone: Phone) -> bool:
    try:
        return bool(await phone.redis.ping())
    except Exception:  # noqa: BLE001 - any failure is "not yet"
        return False


async def _exact(phone: Phone) -> None:
    """One call: offered once, answered once, nothing abandoned."""
    stats = await phone.stats()
    assert (stats["offered"], stats["answered"], stats["abandoned"]) == (1, 1, 0), stats


async def _nothing_left(phone: Phone, caller: str) -> None:
    """No reservation, no due offer, no pending transfer on the call."""
    assert await _offers(phone.redis) == {}
    assert await phone.redis.zcard(keys.OFFER_DUE) == 0
    assert "xfer" not in await phone.call(caller)


def _in_conference(phone: Phone, caller: str) -> set[str]:
    conf = phone.emu.conference_named(caller)
    return set(conf.participants) if conf is not None else set()


def _legs_of(phone: Phone, agent: str) -> list[str]:
    return [c.sid for c in phone.emu.calls.values() if c.to.startswith(f"client:{agent}")]


async def _true(value: bool) -> bool:
    return value


# -- 1. Redis goes away while a transfer offer rings --------------------------------------------------------

async def test_redis_away_while_the_offer_rings_the_answer_waits_and_then_the_transfer_completes(
        make_instance: Any, aiohttp_server: Any, aiohttp_client: Any, redis_server_factory: Any,
        tmp_path: Path) -> None:
    phone, server = await _outage_phone(make_instance, aiohttp_server, aiohttp_client, redis_server_factory, tmp_path)
    caller, leg, socks = await bridged(phone)
    socks.update(await online(phone, "bob"))
    offer = await _transfer(phone, caller, "bob", socks["bob"])
    server.stop()
    # bob accepts during the outage: he is told it could not be recorded, nothing rings
    await socks["bob"].send({"type": "accept", "offer_id": offer["offer_id"]})
    error = await wait_message(socks["bob"], "error", timeout=15)
    assert error["code"] == "unavailable" and "try again" in error["message"]
    assert phone.rest("POST", "/Participants.json") == []
    server.start()
    await until(lambda: _redis_answers(phone))
    # the offer is still his (it did not expire meanwhile): he accepts again and takes the call
    await socks["bob"].send({"type": "accept", "offer_id": offer["offer_id"]})
    await until(lambda: _is(phone, "bob", "on-call"), timeout=15)
    await phone.emu.settle()
    assert _in_conference(phone, caller) == {caller, *_legs_of(phone, "bob")}  # alice was removed (cold)
    await until(lambda: _is(phone, "alice", "wrap-up"))
    await _nothing_left(phone, caller)
    await _exact(phone)


async def test_redis_away_past_the_offers_expiry_it_is_missed_once_redis_is_back(
        make_instance: Any, aiohttp_server: Any, aiohttp_client: Any, redis_server_factory: Any,
        tmp_path: Path) -> None:
    phone, server = await _outage_phone(make_instance, aiohttp_server, aiohttp_client, redis_server_factory, tmp_path)
    caller, leg, socks = await bridged(phone)
    socks.update(await online(phone, "bob"))
    offer = await _transfer(phone, caller, "bob", socks["bob"])
    server.stop()
    await asyncio.sleep(0.5)  # router ticks fail meanwhile
    phone.clock.advance(16)  # the offer's 15 s pass during the outage
    server.start()
    failed = await wait_message(socks["alice"], "transfer_failed", timeout=15)
    assert (failed["offer_id"], failed["reason"]) == (offer["offer_id"], "missed")
    assert (await wait_message(socks["bob"], "offer_ended", timeout=15))["reason"] == "expired"
    await _nothing_left(phone, caller)
    assert (await phone.call(caller))["agent"] == "alice" and phone.emu.calls[caller].status == "in-progress"
    assert _in_conference(phone, caller) == {caller, leg}
    assert await state_of(phone, "bob") == "available" and await state_of(phone, "alice") == "on-call"
    await _exact(phone)


async def test_redis_away_when_the_accepted_target_answers_the_call_is_still_handed_over(
        make_instance: Any, aiohttp_server: Any, aiohttp_client: Any, redis_server_factory: Any,
        tmp_path: Path) -> None:
    """The participant's answered callback reaches callboard while Redis is away: Twilio does not send a
    status callback again, so callboard must not lose it — bob is in the conference with the caller."""
    phone, server = await _outage_phone(make_instance, aiohttp_server, aiohttp_client, redis_server_factory, tmp_path)
    caller, leg, socks = await bridged(phone)
    socks.update(await online(phone, "bob"))
    phone.emu.softphones["bob"] = "wait"
    offer = await _transfer(phone, caller, "bob", socks["bob"])
    await socks["bob"].send({"type": "accept", "offer_id": offer["offer_id"]})
    assert (await wait_message(socks["bob"], "offer_ended"))["reason"] == "accepted"
    server.stop()
    await phone.emu.answer("bob")  # his softphone answers during the outage; Twilio joins him to the call
    await asyncio.sleep(1.5)
    server.start()
    await until(lambda: _redis_answers(phone))
    [bobs] = _legs_of(phone, "bob")
    # whatever callboard did, it did not leave bob in a call that is not his, nor the caller without anyone
    # it says holds it: either bob took the call over, or the transfer failed and his leg was ended
    await until(lambda: _settled_transfer(phone, caller, bobs), timeout=20)
    await phone.emu.settle()
    call = await phone.call(caller)
    in_room = _in_conference(phone, caller)
    if call["agent"] == "bob":
        assert in_room == {caller, bobs} and await state_of(phone, "bob") == "on-call"
        await until(lambda: _is(phone, "alice", "wrap-up"))
    else:
        assert bobs not in in_room and call["leg"] in in_room
        assert (await wait_message(socks["alice"], "transfer_failed"))["offer_id"] == offer["offer_id"]
    phone.clock.advance(61)  # past any connect deadline: nothing changes any more
    await asyncio.sleep(0.3)
    await phone.emu.settle()
    assert (await phone.call(caller))["agent"] == call["agent"]
    await _nothing_left(phone, caller)
    await _exact(phone)


async def _settled_transfer(phone: Phone, caller: str, bobs: str) -> bool:
    phone.clock.advance(1)  # time moves on (the connect deadline is 60 s): whatever waits for it happens
    await asyncio.sleep(0.05)
    call = await phone.call(caller)
    if "xfer" in call:
        return False
    return call.get("agent") == "bob" or bobs not in _in_conference(phone, caller)


async def test_redis_away_when_the_first_agent_hangs_up_the_caller_is_not_left_alone(
        make_instance: Any, aiohttp_server: Any, aiohttp_client: Any, redis_server_factory: Any,
        tmp_path: Path) -> None:
    """Alice hangs up her softphone during the outage while her transfer to bob rings; then bob rejects it.
    The caller must not stay alone in the conference on hold music: hung up (nobody holds it)."""
    phone, server = await _outage_phone(make_instance, aiohttp_server, aiohttp_client, redis_server_factory, tmp_path)
    caller, leg, socks = await bridged(phone)
    socks.update(await online(phone, "bob"))
    offer = await _transfer(phone, caller, "bob", socks["bob"])
    server.stop()
    await phone.emu.end_call(leg)  # the conference's participant-leave reaches callboard while Redis is away
    await phone.emu.settle()
    server.start()
    await until(lambda: _redis_answers(phone))
    await until(lambda: _is(phone, "alice", "wrap-up"), timeout=15)
    await socks["bob"].send({"type": "reject", "offer_id": offer["offer_id"]})
    await until(lambda: _true(phone.emu.calls[caller].status == "completed"), timeout=15)
    await _nothing_left(phone, caller)
    await _exact(phone)


async def _is(phone: Phone, agent: str, state: str) -> bool:
    return await state_of(phone, agent) == state


# -- 3. garbage at the transfer API and at the answer ---------------------------------------------------------

def _english(text: str) -> bool:
    """A short sentence (it may quote what was sent, shortened and escaped)."""
    return bool(text) and len(text) < 300 and text.lstrip("\"")[:1].isalpha() and text.isprintable()


async def _untouched(phone: Phone, caller: str, requests_before: int) -> None:
    """Refusals change nothing: no offer, no reservation, no pending transfer, no fact, nothing asked of Twilio."""
    assert await _offers(phone.redis) == {} and await phone.redis.zcard(keys.OFFER_DUE) == 0
    call = await phone.call(caller)
    assert "xfer" not in call and call["agent"] == "alice" and "transfers" not in call
    assert await phone.facts("offer.created") == [] and await phone.facts("call.transfer") == []
    assert len(phone.emu.requests) == requests_before
    assert await state_of(phone, "bob") == "available" and await state_of(phone, "alice") == "on-call"


async def test_garbage_transfer_bodies_are_refused_in_english_and_change_nothing(phone: Phone) -> None:
    caller, leg, socks = await bridged(phone)
    socks.update(await online(phone, "bob"))
    alice = token("alice")
    before = len(phone.emu.requests)
    nested = {"agent": json.loads("[" * 40 + "]" * 40)}
    cases: list[tuple[Any, int, str, str | None]] = [
        ({"agent": "nobody"}, 400, "unknown_agent", "agent"),
        ({"agent": "x" * 10_000}, 400, "unknown_agent", "agent"),
        ({"agent": "b\u00f6b"}, 400, "unknown_agent", "agent"),
        ({"agent": "bob\u0000"}, 400, "unknown_agent", "agent"),
        ({"agent": ""}, 400, "unknown_agent", "agent"),
        ({"agent": 123}, 400, "unknown_agent", "agent"),
        ({"agent": ["bob"]}, 400, "unknown_agent", "agent"),
        ({"agent": {"id": "bob"}}, 400, "unknown_agent", "agent"),
        ({"agent": True}, 400, "unknown_agent", "agent"),
        ({"agent": "bob", "warm": "yes"}, 400, "bad_message", "warm"),
        ({"agent": "bob", "warm": 1}, 400, "bad_message", "warm"),
        ({"agent": "bob", "warm": None}, 400, "bad_message", "warm"),
        ({"agent": "bob", "queue": "support"}, 400, "bad_message", "agent"),
        ({"agent": None}, 400, "bad_message", "agent"),
        ({}, 400, "bad_message", "agent"),
        ({"queue": 5}, 400, "unknown_queue", "queue"),
        ({"agent": "alice"}, 400, "same_agent", "agent"),  # a transfer to oneself
        (nested, 400, "bad_message", None),
        ("[" * 100_000, 413, "too_large", None),
        ("{" * 5_000, 400, "bad_message", None),
        (json.dumps({"agent": "bob", "pad": "x" * 20_000}), 413, "too_large", None),
        ("[1, 2]", 400, "bad_message", None),
        ('"bob"', 400, "bad_message", None),
        ("null", 400, "bad_message", None),
        ("{\"agent\": \"bob\"", 400, "bad_message", None),
        (b"\xff\xfe\x00garbage", 400, "bad_message", None),
        ('{"agent": NaN}', 400, "unknown_agent", "agent"),
    ]
    for body, status, code, field in cases:
        got, answer = await phone.api(caller, "transfer", body, tok=alice)
        shown = (str(body)[:40], answer)
        assert (got, answer.get("code")) == (status, code), shown
        assert answer.get("field") == field, shown
        assert _english(answer["error"]) and "\u0000" not in answer["error"], shown
    # who may not: another agent, a wallboard, a forged token, an unknown call, a call id that is not a sid
    for tok, status, code in ((token("bob"), 403, "not_your_call"), (token("wall", "wallboard"), 403, "forbidden"),
                              ("forged", 401, "bad_token")):
        got, answer = await phone.api(caller, "transfer", {"agent": "bob"}, tok=tok)
        assert (got, answer["code"]) == (status, code) and _english(answer["error"]), answer
    got, answer = await phone.api("CA" + "9" * 32, "transfer", {"agent": "bob"}, tok=alice)
    assert (got, answer["code"]) == (404, "unknown_call"), answer
    got, answer = await phone.api("CA-1';--", "transfer", {"agent": "bob"}, tok=alice)
    assert (got, answer["code"], answer["field"]) == (400, "bad_call_sid", "call_sid"), answer
    await _untouched(phone, caller, before)
    # and after all that, a good transfer still works
    await _transfer(phone, caller, "bob", socks["bob"])


async def test_a_transfer_while_one_is_pending_and_of_a_call_nobody_holds_is_refused(phone: Phone) -> None:
    caller, leg, socks = await bridged(phone)
    socks.update(await online(phone, "bob", "dave"))
    offer = await _transfer(phone, caller, "bob", socks["bob"])
    for target in ("dave", "bob"):  # to someone else, or to the same agent again
        got, answer = await phone.api(caller, "transfer", {"agent": target}, tok=token("alice"))
        assert (got, answer["code"]) == (409, "transfer_pending") and _english(answer["error"]), answer
    got, answer = await phone.api(caller, "transfer", {"agent": "dave"}, tok=token("boss", "supervisor"))
    assert (got, answer["code"]) == (409, "transfer_pending"), answer
    assert await _offers(phone.redis) == {"bob": offer["offer_id"]}
    assert len(await phone.facts("offer.created")) == 1
    # a caller still waiting in its queue is held by nobody: a supervisor cannot "transfer" it to an agent
    # (nobody would hand it on: the agent would be rung into an empty conference and put on-call)
    waiting = await phone.caller()
    before = len(phone.emu.requests)
    got, answer = await phone.api(waiting, "transfer", {"agent": "dave"}, tok=token("boss", "supervisor"))
    assert got == 409 and answer["code"] == "call_queued" and _english(answer["error"]), answer
    assert await _offers(phone.redis) == {"bob": offer["offer_id"]} and len(phone.emu.requests) == before
    assert "xfer" not in await phone.call(waiting) and await state_of(phone, "dave") == "available"


async def test_answers_to_offers_that_are_not_open_or_not_yours_are_refused_and_change_nothing(phone: Phone) -> None:
    caller, leg, socks = await bridged(phone)
    socks.update(await online(phone, "bob", "dave"))
    offer = await _transfer(phone, caller, "bob", socks["bob"])
    oid = offer["offer_id"]
    # dave answers bob's offer: no_offer, and bob's offer is untouched (still open, still his)
    for kind in ("accept", "reject"):
        await socks["dave"].send({"type": kind, "offer_id": oid})
        error = await wait_message(socks["dave"], "error")
        assert error["code"] == "no_offer" and _english(error["message"]), error
    assert await _offers(phone.redis) == {"bob": oid}
    assert (await phone.redis.hget(keys.offer(oid), "state")) == b"open"
    assert phone.rest("POST", "/Participants.json") == [] and "transfer_failed" not in _types(socks["alice"])
    # garbage offer ids, an unknown one, a supervisor's answer
    for bad in (None, 123, "", "x" * 65, ["of1"], {"id": oid}):
        await socks["bob"].send({"type": "accept", "offer_id": bad})
        error = await wait_message(socks["bob"], "error")
        assert error["code"] == "bad_message" and "offer_id" in error["message"], (bad, error)
        await socks["bob"].send({"type": "ping"})  # (five bad messages in a row close the socket: 4400)
        await wait_message(socks["bob"], "pong")
    await socks["bob"].send({"type": "accept", "offer_id": "of999999"})
    assert (await wait_message(socks["bob"], "error"))["code"] == "no_offer"
    boss = await connect(phone.server, token("boss", "supervisor"))
    await boss.send({"type": "accept", "offer_id": oid})
    assert (await wait_message(boss, "error"))["code"] == "forbidden"
    await boss.close()
    assert await _offers(phone.redis) == {"bob": oid} and phone.rest("POST", "/Participants.json") == []
    # the offer expires; accepting or rejecting it afterwards is refused and changes nothing
    phone.clock.advance(16)
    assert (await wait_message(socks["alice"], "transfer_failed"))["reason"] == "missed"
    assert (await wait_message(socks["bob"], "offer_ended"))["reason"] == "expired"
    for kind in ("accept", "reject"):
        await socks["bob"].send({"type": kind, "offer_id": oid})
        assert (await wait_message(socks["bob"], "error"))["code"] == "no_offer"
    await asyncio.sleep(0.2)
    await phone.emu.settle()
    assert phone.rest("POST", "/Participants.json") == [] and await _offers(phone.redis) == {}
    assert [f["result"] for f in await phone.facts("offer.ended")] == ["missed"]
    assert (await phone.call(caller))["agent"] == "alice" and await state_of(phone, "bob") == "available"
    assert "transfer_failed" not in _types(socks["alice"])  # told once


def _types(ws: Any) -> list[str]:
    return [m["type"] for m in ws.messages]


@pytest.fixture
async def phone(make_instance: Any, aiohttp_server: Any, aiohttp_client: Any, redis: Redis) -> Phone:
    return await _phone(make_instance, aiohttp_server, aiohttp_client, redis, conference_config())


# -- 4. the target's console stops reading its websocket ------------------------------------------------------

async def _stalled_console(phone: Phone, agent: str) -> tuple[asyncio.StreamWriter, socket.socket]:
    """An agent console that says hello and then never reads again: a raw websocket client (no library
    reading for it in the background) with a tiny receive window, and a tiny send buffer on the server side."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (phone.server.host, phone.server.port))
    reader, writer = await asyncio.open_connection(sock=sock)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write((f"GET /ws HTTP/1.1\r\nHost: {phone.server.host}:{phone.server.port}\r\nUpgrade: websocket\r\n"
                  f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                  "Sec-WebSocket-Protocol: callboard.v1.json\r\n\r\n").encode())
    assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 101")  # the last read it ever does
    writer.transport.pause_reading()  # (asyncio would otherwise keep reading into its buffer for us)
    payload = json.dumps({"type": "hello", "token": token(agent)}).encode()
    mask = os.urandom(4)
    head = bytes([0x81]) + (bytes([0x80 | len(payload)]) if len(payload) < 126
                            else bytes([0x80 | 126]) + len(payload).to_bytes(2, "big"))
    writer.write(head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))
    await writer.drain()
    services = phone.server.app[SERVICES]
    for _ in range(200):
        session = next((s for s in services.sessions if s.claims.sub == agent), None)
        if session is not None:
            break
        await asyncio.sleep(0.02)
    assert session is not None
    session.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    await until(lambda: _is(phone, agent, "available"))
    return writer, sock


async def _owes(phone: Phone, agent: str) -> bool:
    """Has the server bytes for this agent's socket that its client has not taken (or closed it for that)?"""
    stalled = [s for s in phone.server.app[SERVICES].sessions if s.claims.sub == agent]
    return not stalled or owed_bytes(stalled[0].transport) > 0


async def test_a_target_console_that_never_reads_still_has_its_offer_expire_and_the_first_agent_is_told(
        phone: Phone) -> None:
    caller, leg, socks = await bridged(phone)
    # a fat directory match (over 100 KiB): the offer frame alone is more than the stalled socket takes
    lookup = {"withheld": False, "customers": [{"name": f"Customer {n} " + "x" * 3000, "company": "y" * 3000}
                                               for n in range(20)]}  # (an offer shows at most 20)
    await given_lookup(phone, caller, lookup)
    writer, sock = await _stalled_console(phone, "bob")
    status, body = await phone.api(caller, "transfer", {"agent": "bob"}, tok=token("alice"))
    assert status == 200, body
    # the queue's deltas keep coming to bob's console too: callers enter and wait, until the server holds bytes
    # he has not taken (the offer alone may fit the kernel's buffers if the caller lookup replaced the fat one)
    for _ in range(300):
        if await _owes(phone, "bob"):
            break
        await phone.caller()
    await until(lambda: _owes(phone, "bob"))  # he really does not take what he is sent
    phone.clock.advance(16)
    failed = await wait_message(socks["alice"], "transfer_failed", timeout=10)
    assert (failed["offer_id"], failed["to"], failed["reason"]) == (body["offer_id"], "bob", "missed")
    await _nothing_left(phone, caller)
    assert (await phone.call(caller))["agent"] == "alice" and _in_conference(phone, caller) == {caller, leg}
    assert phone.rest("POST", "/Participants.json") == []
    assert [(f["result"], f["kind"]) for f in await phone.facts("offer.ended")] == [("missed", "transfer")]
    # the instance still serves everyone else, and bob (still connected, still available) can be offered again
    # or, if the stall closed his socket meanwhile (4429), is refused as not available
    status, again = await phone.api(caller, "transfer", {"agent": "bob"}, tok=token("alice"))
    assert (status == 200 and again["status"] == "offered") or (status == 409 and again["code"] == "agent_busy"), again
    writer.close()


async def test_an_answer_callboard_never_hears_of_ends_with_the_connect_deadline_and_the_leg_is_ended(
        phone: Phone) -> None:
    """Twilio cannot reach callboard when the target answers (the callbacks of this transfer go to an address
    that refuses connections; Twilio does not send them again). The target is in the conference, callboard
    does not know: at the connect deadline the transfer fails and his leg is ended, never left in a call that
    is not his."""
    from tests.routing_support import free_port

    caller, leg, socks = await bridged(phone)
    socks.update(await online(phone, "bob"))
    phone.emu.softphones["bob"] = "wait"
    unreachable = f"127.0.0.1:{free_port()}"  # the transfer's callbacks use the address its request came to
    r = await phone.client.post(f"/api/calls/{caller}/transfer", json={"agent": "bob"},
                                headers={"Authorization": f"Bearer {token('alice')}", "Host": unreachable})
    body = await r.json()
    assert r.status == 200, body
    await socks["bob"].send({"type": "accept", "offer_id": (await wait_message(socks["bob"], "offer"))["offer_id"]})
    assert (await wait_message(socks["bob"], "offer_ended"))["reason"] == "accepted"
    await phone.emu.answer("bob")
    await phone.emu.settle()
    [bobs] = _legs_of(phone, "bob")
    assert bobs in _in_conference(phone, caller)  # Twilio joined him; callboard heard nothing
    assert (await phone.call(caller))["agent"] == "alice"
    phone.clock.advance(61)  # past connect_timeout_s
    failed = await wait_message(socks["alice"], "transfer_failed")
    assert (failed["offer_id"], failed["reason"]) == (body["offer_id"], "connect_timeout")
    await until(lambda: _true(bool(phone.rest("POST", f"/Calls/{bobs}.json"))))
    assert phone.rest("POST", f"/Calls/{bobs}.json") == [{"Status": "completed"}]
    await phone.emu.settle()
    assert _in_conference(phone, caller) == {caller, leg}
    assert (await phone.call(caller))["agent"] == "alice" and await state_of(phone, "alice") == "on-call"
    await _nothing_left(phone, caller)
    await _exact(phone)
