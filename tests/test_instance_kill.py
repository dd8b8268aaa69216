"""An instance is SIGKILLed in the middle of calls: the calls' later webhooks reach another instance (as
Twilio's retries and a load balancer would have them) and every statistic of those calls stays exact.

Two real `callboard serve` processes on one Redis behind one PUBLIC_URL (the signature is the same on both).
alice's console is on the survivor; bob's is on the victim, so his connection dies with it while his call
goes on (media outlives the websocket).
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
import pytest
import websockets
from redis.asyncio import Redis

from callflow.signature import sign
from tests.conftest import SECRET, TWILIO_TOKEN, token
from tests.procs import SHARED_DATABASE_URL, ProcessGroup, serve_env, write_config

PUBLIC_URL = "https://callboard.example.com"
WRAP_UP_S = 1


def _sid(n: int) -> str:
    return f"CA{n:032x}"


@pytest.fixture
def procs(tmp_path: Path) -> Any:
    group = ProcessGroup(tmp_path)
    yield group
    group.stop_all()


async def _post(http: aiohttp.ClientSession, base: str, route: str, params: dict[str, str],
                query: dict[str, str] | None = None) -> str:
    path = f"/twilio/voice/{route}" + (f"?{urlencode(query)}" if query else "")
    headers = {"Content-Type": "application/x-www-form-urlencoded",
               "X-Twilio-Signature": sign(TWILIO_TOKEN, PUBLIC_URL + path, params)}
    async with http.post(base + path, data=urlencode(params), headers=headers) as resp:
        body = await resp.text()
        assert resp.status == 200 and "<Response" in body, (route, resp.status, body[:300])
        return body


async def _console(ws_url: str, agent: str) -> Any:
    conn = await websockets.connect(ws_url, subprotocols=["callboard.v1.json"], open_timeout=5)
    await conn.send(json.dumps({"type": "hello", "token": token(agent)}))
    assert json.loads(await asyncio.wait_for(conn.recv(), 5))["type"] == "welcome"
    return conn


async def _support_today(http: aiohttp.ClientSession, base: str) -> dict[str, Any]:
    async with http.get(base + "/api/snapshot", headers={"Authorization": f"Bearer {token('w', 'wallboard')}"}) as r:
        assert r.status == 200
        return dict((await r.json())["queues"]["support"]["today"])


async def test_calls_stay_exact_when_their_instance_is_killed_mid_call(procs: ProcessGroup, redis: Redis,
                                                                       redis_url: str, tmp_path: Path) -> None:
    config = write_config(
        tmp_path / "center.toml",
        center={"name": "Kill center", "timezone": "UTC", "wrap_up_s": WRAP_UP_S, "disconnect_grace_s": 1,
                "sl_threshold_s": 20, "short_abandon_s": 5},
        server={"lease_renew_s": 0.3, "lease_ttl_s": 1.0, "sweep_every_s": 0.2, "tick_ms": 50},
        queues=[{"name": "support", "numbers": ["+15550000001"], "team": "support"}],
        agents=[{"id": a, "name": a.title(), "team": "support", "queues": ["support"]} for a in ("alice", "bob")],
    )
    servers = []
    for name in ("victim", "survivor"):
        data = tmp_path / name
        data.mkdir()
        servers.append(procs.spawn(name, config, serve_env(redis_url=redis_url, data_dir=data, secret=SECRET,
                                                          twilio_auth_token=TWILIO_TOKEN, public_url=PUBLIC_URL,
                                                          DATABASE_URL=SHARED_DATABASE_URL)))
    victim, survivor = servers
    await asyncio.gather(victim.wait_ready(), survivor.wait_ready())
    alice = await _console(survivor.ws_url, "alice")
    bob = await _console(victim.ws_url, "bob")
    caller = {"From": "+15551230000", "To": "+15550000001"}
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as http:
            v, s = victim.url, survivor.url
            # two callers enter and are answered, all through the victim
            for n, agent, queue_time in ((1, "alice", 3), (2, "bob", 4)):
                body = await _post(http, v, "incoming", {"CallSid": _sid(n), **caller})
                assert "<Enqueue" in body
                await _post(http, v, "agent", {"CallSid": _sid(100 + n), "From": f"client:{agent}", "To": ""})
                await _post(http, v, "bridge", {"CallSid": _sid(n), "DequeingCallSid": _sid(100 + n),
                                                "QueueTime": str(queue_time), **caller},
                            {"queue": "support", "agent": agent})
            bridged_at = time.monotonic()
            victim.kill()  # SIGKILL mid-call: no drain, bob's console connection dies with it
            await asyncio.sleep(1.5)
            # Twilio retries the last request the victim may not have answered, then the calls end, all on
            # the survivor
            await _post(http, s, "bridge", {"CallSid": _sid(2), "DequeingCallSid": _sid(102), "QueueTime": "4",
                                            **caller}, {"queue": "support", "agent": "bob"})
            for n, agent in ((1, "alice"), (2, "bob")):
                await _post(http, s, "status", {"CallSid": _sid(n), "CallStatus": "completed", **caller})
                await _post(http, s, "queue-result", {"CallSid": _sid(n), "QueueResult": "bridged", "QueueTime": "3"},
                            {"queue": "support"})
                await _post(http, s, "status", {"CallSid": _sid(100 + n), "CallStatus": "completed",
                                                "From": f"client:{agent}"})
            ended_at = time.monotonic()
            # the survivor reaps the victim's connections (bob: away once his call ended) and ends alice's
            # wrap-up; then the numbers are final
            deadline = time.monotonic() + 15
            while True:
                today = await _support_today(http, s)
                if today["handled"] == 2 or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.2)
            assert (today["offered"], today["answered"], today["abandoned"], today["handled"]) == (2, 2, 0, 2), today
            assert today["asa_s"] == 3.5 and today["answered_within_sl"] == 2 and today["wait_unknown"] == 0
            talk = {}
            for n in (1, 2):
                call = {k.decode(): v.decode() for k, v in (await redis.hgetall(f"cb:call:{_sid(n)}")).items()}
                talk[n] = int(call["talk_ms"])
                assert abs(talk[n] / 1000 - (ended_at - bridged_at)) < 3, (n, call)
                # alice wrapped up for exactly wrap_up_s; bob had no console left: no wrap-up
                assert int(call["wrap_ms"]) == (WRAP_UP_S * 1000 if n == 1 else 0), (n, call)
            assert today["aht_s"] == round((talk[1] + WRAP_UP_S * 1000 + talk[2]) / 2 / 1000, 3), (today, talk)
            async with http.get(s + "/api/snapshot", headers={"Authorization": f"Bearer {token('w', 'wallboard')}"}) as r:
                snap = await r.json()
            assert snap["agents"]["bob"]["state"] == "away" and snap["agents"]["bob"]["reason"] == "disconnected"
            assert snap["agents"]["alice"]["state"] == "available"
    finally:
        await alice.close()
        try:
            await asyncio.wait_for(bob.close(), 2)
        except (TimeoutError, OSError, websockets.ConnectionClosed):
            pass
