"""The instance that made a transfer offer is SIGKILLed while the target rings: the other instance ends or
completes the transfer (issue 13's transfers are offers; attack 2).

Two real `callboard serve` processes in conference mode on one Redis, Twilio played by the emulator
(simulator/twilio_api.py). Both sit behind one PUBLIC_URL: a small proxy in the test that forwards each
Twilio request to the first instance that answers (the victim while it lives), as a load balancer would. The
transfer itself is asked of the victim directly, so the offer is the victim's.
"""

from __future__ import annotations

import asyncio
import json
import types
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from redis.asyncio import Redis

from callboard import keys
from simulator.twilio_api import TwilioEmulator
from tests.conftest import SECRET, TWILIO_TOKEN, WsClient, connect, token
from tests.procs import SHARED_DATABASE_URL, ProcessGroup, ServeProcess, free_port, serve_env, write_config
from tests.test_controls import ACCOUNT, SUPPORT, wait_message

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

OFFER_TIMEOUT_S = 3


class Balancer:
    """PUBLIC_URL: forwards each request to the first backend that takes it (path, query, headers, body)."""

    def __init__(self) -> None:
        self.backends: list[str] = []
        self.served: list[tuple[str, str]] = []  # (backend, path)
        self._http: aiohttp.ClientSession | None = None

    async def handle(self, request: web.Request) -> web.Response:
        if self._http is None:
            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15))
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")}
        for backend in self.backends:
            try:
                async with self._http.request(request.method, backend + request.path_qs, data=body,
                                              headers=headers) as resp:
                    self.served.append((backend, request.path))
                    return web.Response(status=resp.status, body=await resp.read(),
                                        content_type=resp.content_type)
            except (aiohttp.ClientConnectionError, OSError):
                continue  # that instance is gone: the next one
        return web.Response(status=502, text="no instance answered")

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()


class Center:
    def __init__(self, emu: TwilioEmulator, public_url: str, victim: ServeProcess, survivor: ServeProcess,
                 balancer: Balancer) -> None:
        self.emu, self.public_url, self.victim, self.survivor, self.balancer = emu, public_url, victim, survivor, balancer

    async def console(self, proc: ServeProcess, agent: str) -> WsClient:
        ws = await connect(types.SimpleNamespace(host="127.0.0.1", port=proc.port), token(agent))
        await ws.wait_for(lambda s: s["agents"][agent]["state"] == "available", timeout=10)
        return ws

    async def caller_with(self, agent: str) -> tuple[str, str]:
        """A caller enters support and `agent` takes it (their softphone's TwiML App call). -> (caller, leg)."""
        call = await self.emu.place_call(from_="+15551230001", to=SUPPORT, url=f"{self.public_url}/twilio/voice/incoming",
                                         status_callback=f"{self.public_url}/twilio/voice/status")
        assert call.queue == "support", call.events
        leg = await self.emu.place_call(from_=f"client:{agent}", to="", url=f"{self.public_url}/twilio/voice/agent",
                                        status_callback=f"{self.public_url}/twilio/voice/status",
                                        params={"queue": "support"})
        assert leg.conference is not None, leg.events
        await self.emu.settle()
        return call.sid, leg.sid

    async def transfer(self, proc: ServeProcess, caller: str, target: str, by: str) -> dict[str, Any]:
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{proc.url}/api/calls/{caller}/transfer", json={"agent": target},
                                 headers={"Authorization": f"Bearer {token(by)}"}) as r:
                body = await r.json()
                assert r.status == 200 and body["status"] == "offered", body
                return dict(body)

    async def today(self) -> dict[str, Any]:
        async with aiohttp.ClientSession() as http:
            async with http.get(self.survivor.url + "/api/snapshot",
                                headers={"Authorization": f"Bearer {token('w', 'wallboard')}"}) as r:
                return dict((await r.json())["queues"]["support"]["today"])

    def in_conference(self, caller: str) -> set[str]:
        room = self.emu.conference_named(caller)
        return set(room.participants) if room is not None else set()


@pytest.fixture
async def center(tmp_path: Path, redis_url: str, redis: Redis) -> AsyncIterator[Center]:
    emu = TwilioEmulator(ACCOUNT, TWILIO_TOKEN)
    api_url = await emu.start()
    balancer = Balancer()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", balancer.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    public_url = f"http://127.0.0.1:{port}"
    config = write_config(
        tmp_path / "center.toml",
        center={"name": "Kill center", "timezone": "UTC", "wrap_up_s": 1, "disconnect_grace_s": 1,
                "sl_threshold_s": 20, "short_abandon_s": 5, "bridge": "conference", "conference_region": "jp1"},
        server={"lease_renew_s": 0.3, "lease_ttl_s": 1.0, "sweep_every_s": 0.2, "tick_ms": 50},
        routing={"mode": "pull", "offer_timeout_s": OFFER_TIMEOUT_S, "missed_to_away": 0, "tick_ms": 50,
                 "connect_timeout_s": 30},
        queues=[{"name": "support", "numbers": [SUPPORT], "team": "support"}],
        agents=[{"id": a, "name": a.title(), "team": "support", "queues": ["support"]} for a in ("alice", "bob")],
    )
    procs = ProcessGroup(tmp_path)
    servers = []
    for name in ("victim", "survivor"):
        data = tmp_path / name
        data.mkdir()
        servers.append(procs.spawn(name, config, serve_env(
            redis_url=redis_url, data_dir=data, secret=SECRET, twilio_auth_token=TWILIO_TOKEN, public_url=public_url,
            DATABASE_URL=SHARED_DATABASE_URL, TWILIO_ACCOUNT_SID=ACCOUNT, TWILIO_API_URL=api_url)))
    victim, survivor = servers
    balancer.backends = [victim.url, survivor.url]
    try:
        await asyncio.gather(victim.wait_ready(), survivor.wait_ready())
        yield Center(emu, public_url, victim, survivor, balancer)
    finally:
        procs.stop_all()
        await emu.settle(2)
        await emu.close()
        await emu.stop()
        await balancer.close()
        await runner.cleanup()


async def _until(predicate: Any, timeout: float = 15.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.05)


async def _state(redis: Redis, agent: str) -> str:
    import msgpack

    raw = await redis.hget(keys.AGENTS, agent)
    return str(msgpack.unpackb(raw)["state"]) if raw else "offline"


async def _call(redis: Redis, sid: str) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in (await redis.hgetall(keys.call(sid))).items()}


async def test_the_offering_instance_killed_while_the_target_rings_the_other_expires_it(
        center: Center, redis: Redis) -> None:
    alice = await center.console(center.survivor, "alice")
    bob = await center.console(center.survivor, "bob")
    caller, leg = await center.caller_with("alice")
    offer = await center.transfer(center.victim, caller, "bob", by="alice")  # the victim makes the offer
    assert (await wait_message(bob, "offer"))["offer_id"] == offer["offer_id"]
    center.victim.kill()  # SIGKILL while bob's console rings
    failed = await wait_message(alice, "transfer_failed", timeout=OFFER_TIMEOUT_S + 10)
    assert (failed["offer_id"], failed["to"], failed["reason"]) == (offer["offer_id"], "bob", "missed")
    assert (await wait_message(bob, "offer_ended"))["reason"] == "expired"
    assert await redis.hgetall(keys.OFFER_AGENTS) == {} and await redis.zcard(keys.OFFER_DUE) == 0
    call = await _call(redis, caller)
    assert call["agent"] == "alice" and "xfer" not in call
    assert center.in_conference(caller) == {caller, leg}  # the caller never noticed
    assert await _state(redis, "bob") == "available" and await _state(redis, "alice") == "on-call"
    today = await center.today()
    assert (today["offered"], today["answered"], today["abandoned"]) == (1, 1, 0), today
    # and the survivor carries on: alice transfers again, through it, and bob takes the call
    center.emu.softphones["bob"] = "answer"
    again = await center.transfer(center.survivor, caller, "bob", by="alice")
    await wait_message(bob, "offer")
    await bob.send({"type": "accept", "offer_id": again["offer_id"]})
    await _until(lambda: _is(redis, "bob", "on-call"))
    await _until(lambda: _is(redis, "alice", "wrap-up"))
    today = await center.today()
    assert (today["offered"], today["answered"], today["abandoned"]) == (1, 1, 0), today
    await alice.close()
    await bob.close()


async def test_the_instance_that_rang_the_target_in_is_killed_before_they_answer_the_other_completes_it(
        center: Center, redis: Redis) -> None:
    alice = await center.console(center.survivor, "alice")
    bob = await center.console(center.victim, "bob")  # bob's console, his accept and the ringing: all the victim's
    caller, leg = await center.caller_with("alice")
    center.emu.softphones["bob"] = "wait"
    offer = await center.transfer(center.victim, caller, "bob", by="alice")
    assert (await wait_message(bob, "offer"))["offer_id"] == offer["offer_id"]
    await bob.send({"type": "accept", "offer_id": offer["offer_id"]})
    assert (await wait_message(bob, "offer_ended"))["reason"] == "accepted"  # his participant call rings
    center.victim.kill()  # bob's console dies with it; his softphone (Twilio's side) still rings
    await asyncio.sleep(1.5)  # the survivor sees the victim's lease expire
    await center.emu.answer("bob")  # he answers: Twilio's callbacks now reach the survivor
    await center.emu.settle()
    await _until(lambda: _is(redis, "bob", "on-call"))
    call = await _call(redis, caller)
    assert call["agent"] == "bob" and "xfer" not in call
    assert [t["to"] for t in json.loads(call["transfers"])] == ["bob"]
    await _until(lambda: _is(redis, "alice", "wrap-up"))  # cold: alice was removed
    bobs = [c.sid for c in center.emu.calls.values() if c.to.startswith("client:bob")]
    assert center.in_conference(caller) == {caller, *bobs}
    assert await redis.hgetall(keys.OFFER_AGENTS) == {} and await redis.zcard(keys.OFFER_DUE) == 0
    today = await center.today()
    assert (today["offered"], today["answered"], today["abandoned"]) == (1, 1, 0), today
    assert any(b == center.survivor.url and p.endswith("/participant") for b, p in center.balancer.served)
    await alice.close()


async def _is(redis: Redis, agent: str, state: str) -> bool:
    return await _state(redis, agent) == state


async def test_the_instance_is_killed_in_the_middle_of_ringing_the_target_in_the_other_completes_it(
        center: Center, redis: Redis) -> None:
    """Killed while its Participants request is on its way: Twilio creates the participant anyway, nobody
    recorded it; the target answers and the survivor hands the call over."""
    alice = await center.console(center.survivor, "alice")
    bob = await center.console(center.victim, "bob")
    caller, leg = await center.caller_with("alice")
    center.emu.softphones["bob"] = "answer"
    center.emu.inject(status=200, code=0, delay_s=2.0, path="/Participants.json")  # slow, then created
    offer = await center.transfer(center.victim, caller, "bob", by="alice")
    await wait_message(bob, "offer")
    await bob.send({"type": "accept", "offer_id": offer["offer_id"]})
    await _until(lambda: _true(bool([r for r in center.emu.faults if r.path == "/Participants.json"]) is False))
    center.victim.kill()  # mid-request: the victim never hears that the participant was created
    await _until(lambda: _is(redis, "bob", "on-call"))
    call = await _call(redis, caller)
    assert call["agent"] == "bob" and "xfer" not in call
    await _until(lambda: _is(redis, "alice", "wrap-up"))
    await center.emu.settle()
    bobs = [c.sid for c in center.emu.calls.values() if c.to.startswith("client:bob")]
    assert center.in_conference(caller) == {caller, *bobs}
    assert await redis.hgetall(keys.OFFER_AGENTS) == {} and await redis.zcard(keys.OFFER_DUE) == 0
    today = await center.today()
    assert (today["offered"], today["answered"], today["abandoned"]) == (1, 1, 0), today
    await alice.close()


async def _true(value: bool) -> bool:
    return value
