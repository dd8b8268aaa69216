"""Leases, connection registry and sweeper, at the store level with a clock the test drives."""

from __future__ import annotations

import asyncio

from callboard import keys
from callboard.clock import FakeClock
from presence.liveness import Liveness
from presence.rules import AVAILABLE, AWAY, Settings
from presence.store import PresenceStore

SETTINGS = Settings(wrap_up_s=5, disconnect_grace_s=10)


def _liveness(redis, clock: FakeClock, name: str) -> Liveness:  # type: ignore[no-untyped-def]
    store = PresenceStore(redis, SETTINGS, day_key=lambda _: "2025-11-21")
    return Liveness(store, clock, renew_s=5, ttl_s=15, instance_id=name)


async def _states(redis) -> list[tuple[str, str | None]]:  # type: ignore[no-untyped-def]
    entries = await redis.xrange(keys.CHANGES)
    import msgpack

    return [(msgpack.unpackb(f[b"d"])["state"], msgpack.unpackb(f[b"d"]).get("reason")) for _, f in entries]


async def test_two_tabs_keep_an_agent_present_until_both_are_gone_for_the_grace(redis) -> None:  # type: ignore[no-untyped-def]
    clock = FakeClock()
    live = _liveness(redis, clock, "i1")
    await live.renew()
    await live.register("tab1", "alice")
    await live.register("tab2", "alice")
    await live.deregister("tab1")
    rec = await live.store.read_agent("alice")
    assert (rec.state, rec.connections) == (AVAILABLE, 1)
    await live.deregister("tab2")
    clock.advance(9.9)
    await live.store.sweep(clock.now_ms())
    assert (await live.store.read_agent("alice")).state == AVAILABLE
    clock.advance(0.1)
    await live.store.sweep(clock.now_ms())
    rec = await live.store.read_agent("alice")
    assert (rec.state, rec.reason) == (AWAY, "disconnected")


async def test_reconnecting_inside_the_grace_never_leaves(redis) -> None:  # type: ignore[no-untyped-def]
    clock = FakeClock()
    live = _liveness(redis, clock, "i1")
    await live.renew()
    await live.register("tab1", "alice")
    await live.deregister("tab1")
    clock.advance(8)
    await live.register("tab2", "alice")
    clock.advance(30)
    await live.store.sweep(clock.now_ms())
    assert (await live.store.read_agent("alice")).state == AVAILABLE
    assert all(state == AVAILABLE for state, _ in await _states(redis))


async def test_an_expired_instance_is_reaped_by_any_survivor_exactly_once(redis) -> None:  # type: ignore[no-untyped-def]
    clock = FakeClock()
    a, b, c = (_liveness(redis, clock, n) for n in ("A", "B", "C"))
    for live in (a, b, c):
        await live.renew()
    await a.register("a1", "alice")
    await a.register("a2", "bob")
    await b.register("b1", "carol")
    clock.advance(16)  # A stops renewing (crashed); B and C keep their leases
    await b.renew()
    await c.renew()
    results = [await b.store.sweep(clock.now_ms()), await c.store.sweep(clock.now_ms())]
    assert sorted(r[:2] for r in results) == [(0, 0), (1, 2)]  # one reaper did the work, the other found none
    assert await redis.zscore(keys.INSTANCES, "A") is None
    clock.advance(10)
    await b.store.sweep(clock.now_ms())
    agents = await b.store.read_agents()
    assert (agents["alice"].state, agents["alice"].reason) == (AWAY, "disconnected")
    assert (agents["bob"].state, agents["bob"].connections) == (AWAY, 0)
    assert (agents["carol"].state, agents["carol"].connections) == (AVAILABLE, 1)
    assert (AWAY, "disconnected") in await _states(redis)


async def test_a_released_lease_is_never_renewed_again(redis) -> None:  # type: ignore[no-untyped-def]
    """A drain releases the lease while the heartbeat task still runs (until shutdown stops it): neither a
    renewal that starts right after the release nor one issued with it may write the lease back."""
    clock = FakeClock()
    live = _liveness(redis, clock, "i1")
    await live.renew()
    await live.register("tab1", "alice")
    assert await redis.zscore(keys.INSTANCES, "i1") is not None
    await asyncio.gather(live.release(), live.renew())  # the release's write goes out first
    assert await redis.zscore(keys.INSTANCES, "i1") is None
    clock.advance(5)
    await live.renew()  # the heartbeat's next turn
    assert await redis.zscore(keys.INSTANCES, "i1") is None
    assert not live.lease_held


async def test_a_lost_lease_registers_live_connections_again(redis) -> None:  # type: ignore[no-untyped-def]
    clock = FakeClock()
    live = _liveness(redis, clock, "i1")
    await live.renew()
    await live.register("t1", "alice")
    await redis.flushdb()  # Redis lost everything (restart without persistence)
    await live.renew()
    rec = await live.store.read_agent("alice")
    assert (rec.state, rec.connections) == (AVAILABLE, 1)
    assert await redis.hget(keys.instance_connections("i1"), "t1") == b"alice"
    assert live.reregistrations == 1


async def test_an_instance_whose_renewals_starve_never_reaps_itself(redis, redis_url) -> None:  # type: ignore[no-untyped-def]
    """Issue 15: a connect storm once dried up the pool, the renewal failed, and the instance reaped its own
    lease and connections. Renewals that fail (here: the lease connection points at a closed port) must
    leave the instance's own lease to the others to judge."""
    from redis.asyncio import Redis
    from redis.exceptions import RedisError

    clock = FakeClock()
    dead_end = Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.5)  # nothing listens on port 1
    store = PresenceStore(redis, SETTINGS, day_key=lambda _: "2025-11-21")
    starved = Liveness(store, clock, renew_s=5, ttl_s=15, instance_id="starved", lease_redis=dead_end)
    other = _liveness(redis, clock, "other")
    await store.heartbeat("starved", clock.now_ms() + 15_000)  # its lease as of the last good renewal
    starved.lease_expires_ms = clock.now_ms() + 15_000
    await starved.register("s1", "alice")
    await other.renew()
    clock.advance(16)  # every renewal since failed: the lease is stale in Redis
    try:
        await starved.renew()
    except (RedisError, OSError):
        pass
    else:
        raise AssertionError("the lease connection should have failed")
    assert await starved.sweep_once() is None  # it does not sweep on an unconfirmed lease ...
    assert await redis.zscore(keys.INSTANCES, "starved") is not None  # ... so its lease is still there
    assert (await store.read_agent("alice")).connections == 1
    assert starved.sweeps_skipped == 1
    await other.renew()
    assert (await other.sweep_once())[:2] == (1, 1)  # another instance, which really saw it gone, reaps it
    assert await redis.zscore(keys.INSTANCES, "starved") is None
    await dead_end.aclose()


async def test_the_lease_is_renewed_on_its_own_connection_when_the_shared_pool_is_dry(redis_url) -> None:  # type: ignore[no-untyped-def]
    """A shared pool with every connection taken (a connect storm) does not delay the lease renewal."""
    import asyncio

    from redis.asyncio import BlockingConnectionPool, Redis

    from presence.liveness import dedicated_client

    shared = Redis(connection_pool=BlockingConnectionPool.from_url(redis_url, max_connections=2, timeout=5))
    clock = FakeClock()
    store = PresenceStore(shared, SETTINGS, day_key=lambda _: "2025-11-21")
    live = Liveness(store, clock, instance_id="busy", lease_redis=dedicated_client(shared))
    hogs = [asyncio.create_task(shared.blpop(["cb:test:nothing"], timeout=3)) for _ in range(2)]
    await asyncio.sleep(0.2)  # both shared connections are now blocked
    await asyncio.wait_for(live.renew(), timeout=1.0)
    assert live.lease_expires_ms == clock.now_ms() + 15_000
    for hog in hogs:
        hog.cancel()
    await asyncio.gather(*hogs, return_exceptions=True)
    await live.aclose()
    await shared.aclose()


async def test_a_connect_storm_is_group_committed(redis) -> None:  # type: ignore[no-untyped-def]
    import asyncio

    clock = FakeClock()
    live = _liveness(redis, clock, "storm")
    await live.renew()
    before = live.store.lua_calls
    agents = [f"a{i}" for i in range(1200)]
    results = await asyncio.gather(*(live.register(f"c{i}", a) for i, a in enumerate(agents)))
    assert results == [None] * 1200
    assert live.store.lua_calls - before <= 5  # 1,200 registrations in a handful of Lua calls, not 1,200
    records = await live.store.read_agents()
    assert all(records[a].state == AVAILABLE and records[a].connections == 1 for a in agents)
    await asyncio.gather(*(live.deregister(f"c{i}") for i in range(1200)))
    records = await live.store.read_agents()
    assert all(records[a].connections == 0 for a in agents)
