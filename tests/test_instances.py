"""Several instances on one Redis: visibility, crash reaping, graceful drain, and a Redis restart."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import msgpack
from aiohttp import ClientSession
from redis.asyncio import Redis

from callboard import keys
from callboard.services import SERVICES
from tests.conftest import connect, token


async def _stream_states(redis: Redis, agent: str) -> list[tuple[str, str | None]]:
    out = []
    for _, fields in await redis.xrange(keys.CHANGES):
        if fields[b"id"] == agent.encode() and fields[b"k"] == b"agent":
            data = msgpack.unpackb(fields[b"d"])
            out.append((data["state"], data.get("reason")))
    return out


async def _api_snapshot(server) -> dict:  # type: ignore[no-untyped-def, type-arg]
    async with ClientSession() as http:
        r = await http.get(f"http://{server.host}:{server.port}/api/snapshot",
                           headers={"Authorization": f"Bearer {token('w', 'wallboard')}"})
        return json.loads(await r.text())


async def test_an_agent_on_instance_a_is_visible_on_b(make_instance) -> None:  # type: ignore[no-untyped-def]
    a = await make_instance(instance_id="A")
    b = await make_instance(instance_id="B")
    wall_b = await connect(b, token("wall", "wallboard"))
    alice = await connect(a, token("alice"))
    await wall_b.wait_for(lambda s: s["agents"]["alice"]["state"] == "available")
    await alice.send({"type": "set_state", "state": "away", "reason": "lunch"})
    await wall_b.wait_for(lambda s: s["agents"]["alice"].get("reason") == "lunch")
    snap = await _api_snapshot(b)
    assert snap["agents"]["alice"]["state"] == "away" and snap["agents"]["alice"]["connections"] == 1
    await alice.close()
    await wall_b.close()


async def test_a_crashed_instance_is_reaped_and_its_agents_go_away(make_instance, redis) -> None:  # type: ignore[no-untyped-def]
    a = await make_instance(instance_id="A")
    b = await make_instance(instance_id="B")
    wall_b = await connect(b, token("wall", "wallboard"))
    await connect(a, token("alice"))  # left open: the crash cuts it
    await wall_b.wait_for(lambda s: s["agents"]["alice"]["state"] == "available")
    await a.app[SERVICES].crash()  # like SIGKILL: no drain, no deregistration
    # lease 0.6 s + grace 2 s in the test center; allow generous slack for a busy CI machine
    snap = await wall_b.wait_for(lambda s: s["agents"]["alice"]["state"] == "away", timeout=10)
    assert snap["agents"]["alice"]["reason"] == "disconnected"
    assert snap["agents"]["alice"].get("connections", 0) == 0
    assert ("away", "disconnected") in await _stream_states(redis, "alice")
    assert await redis.zscore(keys.INSTANCES, "A") is None
    await wall_b.close()


async def test_a_drained_instance_hands_over_without_a_flicker(make_instance, redis) -> None:  # type: ignore[no-untyped-def]
    a = await make_instance(instance_id="A")
    b = await make_instance(instance_id="B")
    wall_b = await connect(b, token("wall", "wallboard"))
    alice = await connect(a, token("alice"))
    await alice.send({"type": "set_state", "state": "away", "reason": "meeting"})
    await wall_b.wait_for(lambda s: s["agents"]["alice"].get("reason") == "meeting")
    await a.app[SERVICES].drain()  # what SIGTERM does
    close_code = None
    try:
        while True:
            await alice.recv(timeout=3)
    except Exception as exc:  # noqa: BLE001 - the socket must close; we only want its code
        close_code = getattr(getattr(exc, "rcvd", None), "code", None)
    assert close_code == 1012
    assert await redis.zscore(keys.INSTANCES, "A") is None  # lease released, not left to expire
    alice_again = await connect(b, token("alice"))  # the softphone reconnects elsewhere within the grace
    await asyncio.sleep(3)  # longer than the 2 s grace
    snap = await _api_snapshot(b)
    assert snap["agents"]["alice"]["state"] == "away" and snap["agents"]["alice"]["reason"] == "meeting"
    assert ("away", "disconnected") not in await _stream_states(redis, "alice")
    await alice_again.close()
    await wall_b.close()


async def test_an_instance_survives_a_redis_restart(make_instance, redis_server_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    proc, url, directory = redis_server_factory(tmp_path)
    server = await make_instance(instance_id="R", url=url)
    services = server.app[SERVICES]
    alice = await connect(server, token("alice"))
    wall = await connect(server, token("wall", "wallboard"))
    await wall.wait_for(lambda s: s["agents"]["alice"]["state"] == "available")

    proc.terminate()  # Redis goes away, and comes back empty (no persistence in this test)
    proc.wait(5)
    await asyncio.sleep(1.0)
    redis_server_factory(directory)
    await asyncio.wait_for(services.follower.caught_up.wait(), 10)
    fresh = Redis.from_url(url)
    try:
        for _ in range(100):  # the lease renewal finds its lease missing and registers alice again
            raw = await fresh.hget(keys.AGENTS, "alice")
            if raw and msgpack.unpackb(raw)["connections"] == 1:
                break
            await asyncio.sleep(0.1)
        record = msgpack.unpackb(await fresh.hget(keys.AGENTS, "alice"))
        assert record["state"] == "available" and record["connections"] == 1
        [conn_id] = services.liveness.connections
        assert await fresh.hget(keys.instance_connections("R"), conn_id) == b"alice"
    finally:
        await fresh.aclose()
    # and presence works afterwards, end to end
    await alice.send({"type": "set_state", "state": "away", "reason": "after restart"})
    await wall.wait_for(lambda s: s["agents"]["alice"].get("reason") == "after restart", timeout=10)
    await alice.close()
    await wall.close()
