"""The group-commit batcher: bursts end in each agent's last intent, with far fewer Lua calls than intents."""

from __future__ import annotations

import asyncio
import random
import time

from redis.exceptions import ConnectionError as RedisConnectionError

from callboard.clock import Clock
from presence.batcher import Batcher
from presence.rules import AWAY, CONNECT, SET, Intent, Settings
from presence.store import Addressed, PresenceStore

SETTINGS = Settings(wrap_up_s=5, disconnect_grace_s=5)


def _store(redis) -> PresenceStore:  # type: ignore[no-untyped-def]
    return PresenceStore(redis, SETTINGS, day_key=lambda _: "2025-11-21")


async def _connect_all(store: PresenceStore, agents: list[str]) -> None:
    await store.apply([Addressed(a, Intent(kind=CONNECT), conn=f"c-{a}", instance="i") for a in agents], Clock().now_ms())


async def test_a_burst_ends_in_every_agents_last_intent_with_few_lua_calls(redis) -> None:  # type: ignore[no-untyped-def]
    store = _store(redis)
    agents = [f"agent{i}" for i in range(300)]
    await _connect_all(store, agents)
    batcher = Batcher(store, Clock())
    batcher.start()
    rng = random.Random(7)
    last: dict[str, tuple[str, str | None]] = {}
    futures = []
    for n in range(6000):
        agent = rng.choice(agents)
        reason = rng.choice(["lunch", "break", "meeting", None])
        state = AWAY if reason else "available"
        last[agent] = (state, reason)
        futures.append(batcher.submit(agent, Intent(kind=SET, actor="agent", state=state, reason=reason)))
        if n % 500 == 0:
            await asyncio.sleep(0)  # let a flush start mid-burst, as sockets would
    await batcher.drain()
    await batcher.stop()
    assert all(f.done() and f.result() is None for f in futures)
    stored = await store.read_agents()
    assert {a: (stored[a].state, stored[a].reason) for a in last} == last
    stats = batcher.stats
    assert stats.submitted == 6000
    assert stats.flushes * 20 <= stats.submitted, f"{stats.flushes} flushes for {stats.submitted} intents"
    assert stats.flushed_intents + stats.coalesced == stats.submitted


async def test_rejected_intents_report_their_error(redis) -> None:  # type: ignore[no-untyped-def]
    store = _store(redis)
    batcher = Batcher(store, Clock())
    batcher.start()
    offline_agent = batcher.submit("ghost", Intent(kind=SET, actor="agent", state="available"))
    assert await offline_agent == "not_connected"
    await batcher.stop()


class FlakyStore(PresenceStore):
    """A real store whose first `failures` calls fail as if Redis were unreachable."""

    failures = 3

    async def apply(self, items, now_ms):  # type: ignore[no-untyped-def]
        if self.failures > 0:
            self.failures -= 1
            raise RedisConnectionError("simulated outage")
        return await super().apply(items, now_ms)


async def test_redis_errors_back_off_and_keep_the_latest_intent(redis) -> None:  # type: ignore[no-untyped-def]
    store = FlakyStore(redis, SETTINGS, day_key=lambda _: "2025-11-21")
    await PresenceStore.apply(store, [Addressed("a", Intent(kind=CONNECT), conn="c", instance="i")], Clock().now_ms())
    errors: list[BaseException] = []
    batcher = Batcher(store, Clock(), on_error=errors.append)
    batcher.start()
    first = batcher.submit("a", Intent(kind=SET, actor="agent", state=AWAY, reason="lunch"))
    await asyncio.sleep(0.01)  # the first flush fails and the intent goes back into the dict
    second = batcher.submit("a", Intent(kind=SET, actor="agent", state=AWAY, reason="meeting"))
    await asyncio.wait_for(batcher.drain(), 10)
    await batcher.stop()
    assert len(errors) == 3 and batcher.stats.errors == 3
    assert await first is None and await second is None
    stored = await store.read_agent("a")
    assert (stored.state, stored.reason) == (AWAY, "meeting")
    assert batcher.pending == 0


async def test_the_ops_budget_spaces_flushes(redis) -> None:  # type: ignore[no-untyped-def]
    store = _store(redis)
    agents = [f"b{i}" for i in range(20)]
    await _connect_all(store, agents)
    batcher = Batcher(store, Clock(), max_ops_per_s=20)
    batcher.start()
    started = time.monotonic()
    while time.monotonic() - started < 0.5:
        for agent in agents:
            batcher.submit(agent, Intent(kind=SET, actor="agent", state=AWAY, reason=str(time.monotonic())))
        await asyncio.sleep(0.005)
    await batcher.drain()
    elapsed = time.monotonic() - started
    await batcher.stop()
    # 20 ops/s: at most one flush per 50 ms (plus the first one), however many intents arrived
    assert batcher.stats.flushes <= elapsed * 20 + 2
    assert batcher.stats.submitted > 10 * batcher.stats.flushes


async def test_offer_tells_every_intent_its_fate_exactly_once(redis) -> None:  # type: ignore[no-untyped-def]
    """The sockets' path: a callback per intent, no Future. Superseded and applied hear None, refused hear
    their code, a bad seq is refused at once, and a reply that raises stops nobody else's intents."""
    store = _store(redis)
    await _connect_all(store, ["on1", "on2"])
    batcher = Batcher(store, Clock())
    batcher.start()
    heard: dict[str, list[str | None]] = {}

    def reply_for(name: str):  # type: ignore[no-untyped-def]
        return lambda code: heard.setdefault(name, []).append(code)

    def broken(code: str | None) -> None:
        raise RuntimeError("a bug in one socket's reply")

    batcher.offer("on1", Intent(kind=SET, actor="agent", state=AWAY, reason="first"), reply_for("first"))
    batcher.offer("on1", Intent(kind=SET, actor="agent", state=AWAY, reason="second"), reply_for("second"))
    batcher.offer("ghost", Intent(kind=SET, actor="agent", state=AWAY), reply_for("ghost"))
    batcher.offer("on2", Intent(kind=SET, actor="agent", state=AWAY, reason="x"), broken)
    batcher.offer("on2", Intent(kind=SET, actor="agent", state=AWAY, reason="y", seq=2**60), reply_for("bad"))
    assert heard == {"first": [None], "bad": ["bad_seq"]}  # superseded and refused-at-once: told already
    await asyncio.wait_for(batcher.drain(), 10)
    batcher.offer("on2", Intent(kind=SET, actor="agent", state=AWAY, reason="after"), reply_for("after"))
    await asyncio.wait_for(batcher.drain(), 10)
    await batcher.stop()
    assert heard == {"first": [None], "second": [None], "ghost": ["not_connected"], "bad": ["bad_seq"],
                     "after": [None]}
    stored = await store.read_agents()
    assert (stored["on1"].reason, stored["on2"].reason) == ("second", "after")
