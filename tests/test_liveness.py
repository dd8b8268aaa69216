"""Leases, connection registry and sweeper, at the store level with a clock the test drives."""

from __future__ import annotations

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
