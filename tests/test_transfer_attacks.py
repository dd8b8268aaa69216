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
import json
import signal
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from callboard import keys
from tests.conftest import keep_facts, token
from tests.test_controls import Phone, _phone, bridged, conference_config, online, state_of, until, wait_message

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
