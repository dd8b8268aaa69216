"""The fan-out hub: topics, deltas that rebuild the snapshot, serialize-once, and slow consumers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import socket
import time
from collections.abc import Callable
from typing import Any

import pytest
import websockets
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from callboard.clock import FakeClock
from callboard.config import Config
from callboard.services import SERVICES
from callflow.live import QueueStatsMirror
from presence.rules import SET, STATES, Intent
from presence.store import Addressed
from tests.conftest import connect, make_config, token, ws_url
from wallboard import patch
from wallboard.hub import Hub, Subscriber
from wallboard.mirror import Changes, Mirror

TEAMS = ("north", "south", "east")


def big_config(agents: int = 60) -> Config:
    queues = [{"name": f"q{i}", "team": TEAMS[i % 3]} for i in range(6)]
    people = [{"id": f"ag{i:03d}", "name": f"Agent {i}", "team": TEAMS[i % 3],
               "queues": [f"q{i % 6}", f"q{(i + 1) % 6}"]} for i in range(agents)]
    return make_config(queues=queues, agents=people, teams=[{"name": t} for t in TEAMS])


def scoped(snapshot: dict[str, Any]) -> dict[str, Any]:
    """The part of a document that deltas maintain. Compared exactly: a snapshot omits null members the way a
    merge patch does (null deletes), so the deltas' document and a fresh snapshot are the same document."""
    return {"agents": snapshot["agents"], "queues": snapshot["queues"]}


def has_null(doc: Any) -> bool:
    if isinstance(doc, dict):
        return any(v is None or has_null(v) for v in doc.values())
    if isinstance(doc, list):
        return any(has_null(v) for v in doc)
    return False


# --- property: deltas applied to the first snapshot always equal a fresh snapshot ---------------------

agent_change = st.fixed_dictionaries({
    "agent": st.integers(0, 11),
    "state": st.sampled_from(STATES),
    "reason": st.one_of(st.none(), st.sampled_from(["lunch", "break", "disconnected"])),
    "connections": st.integers(0, 3),
    "call": st.one_of(st.none(), st.fixed_dictionaries({"call_sid": st.sampled_from(["CA1", "CA2"]),
                                                        "queue": st.just("q0")})),
})


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(st.lists(agent_change, min_size=1, max_size=6), min_size=1, max_size=12),
       topics=st.sampled_from([{"all"}, {"team:north"}, {"agent:ag001", "team:south", "queue:q1"}, {"queue:q2"}]))
def test_deltas_rebuild_the_snapshot(steps: list[list[dict[str, Any]]], topics: set[str]) -> None:
    async def scenario() -> None:
        config = big_config(12)
        clock = FakeClock()
        mirror = Mirror(config, QueueStatsMirror(config, clock))
        hub = Hub(mirror, clock, tick_ms=0)
        hub.reset_published()
        sub = Subscriber(topics, "json", on_slow=lambda: None)
        document = hub.subscribe(sub)
        hub.snapshot_json({"all"})  # warm the fragment cache: the changes below must invalidate it
        hub.shared_snapshot_json(frozenset(topics))  # and the shared snapshot: any change must drop it
        for seq, step in enumerate(steps):
            changes = Changes()
            for change in step:
                data = {"state": change["state"], "reason": change["reason"], "since_ms": 1000 + seq,
                        "connections": change["connections"], "seq": seq, "call": change["call"]}
                mirror.apply_entry("agent", f"ag{change['agent']:03d}", {k: v for k, v in data.items() if v is not None},
                                   changes)
            hub.notify(changes)
            hub.flush()
        while sub.outbox:
            message = sub.outbox.popleft().obj
            assert message["type"] in ("snapshot", "delta")
            document = patch.apply(document, {k: v for k, v in message.items() if k != "type"})
        fresh = hub.snapshot(topics)
        assert not has_null(fresh)
        assert document == fresh  # the whole document, exactly: deltas applied to the first snapshot == fresh
        assert hub.snapshot_json(topics) == json.dumps(fresh, separators=(",", ":"), ensure_ascii=False)
        assert hub.shared_snapshot_json(frozenset(topics)) == hub.snapshot_json(topics)

    asyncio.run(scenario())


def test_a_subscriber_joining_between_a_change_and_its_flush_sees_it_undone() -> None:
    """An offer rings and is accepted within one tick: `ringing` goes true then false before the hub flushes,
    so no delta ever carries it. A wallboard that connected in between must not keep `ringing: true` (seen in
    full suite runs: tests/test_routing.py::test_whole_path_offer_accept_bridge_hangup): its snapshot is the
    published state, and the next flush's delta brings it to the mirror's, whichever path built it."""
    async def scenario() -> None:
        config = make_config()
        clock = FakeClock()
        mirror = Mirror(config, QueueStatsMirror(config, clock))
        hub = Hub(mirror, clock, tick_ms=50)
        hub.reset_published()
        changes = Changes()
        mirror.apply_entry("offer", "alice", {"type": "offer", "offer_id": "of1", "call_sid": "CA1",
                                              "queue": "support", "expires_ms": 15_000}, changes)
        hub.notify(changes)  # the flush waits for the end of this loop turn (or a tick): not yet
        assert mirror.agents["alice"]["ringing"] is True
        as_dict = Subscriber({"all"}, "msgpack", on_slow=lambda: None)
        as_json = Subscriber({"team:support"}, "json", on_slow=lambda: None)
        documents = [hub.subscribe(as_dict), json.loads(hub.subscribe_message(as_json).data)]
        changes = Changes()
        mirror.apply_entry("offer_ended", "alice", {"type": "offer_ended", "offer_id": "of1", "call_sid": "CA1",
                                                    "reason": "accepted", "missed_offers": 0}, changes)
        hub.notify(changes)
        hub.flush()
        for sub, topics in ((as_dict, {"all"}), (as_json, {"team:support"})):
            document = documents.pop(0)
            for message in sub.outbox:
                if message.obj.get("type") == "delta":
                    document = patch.apply(document, {k: v for k, v in message.obj.items() if k != "type"})
            assert document["agents"]["alice"]["ringing"] is False, sub.encoding
            assert scoped(document) == scoped(hub.snapshot(topics))

    asyncio.run(scenario())


def test_teammates_connecting_together_share_one_snapshot_until_a_change_is_published() -> None:
    """Issue 15, the connect storm: a team's agents cover the same agents and queues (their own agent topic is
    inside their team's), so the snapshot is built once for them; a flush that publishes a change, or one
    tick, ends the sharing. A change the hub was told of but has not flushed does not: a snapshot is the
    published state (in a storm every registration is such a change)."""
    async def scenario() -> None:
        config = big_config(12)
        clock = FakeClock()
        mirror = Mirror(config, QueueStatsMirror(config, clock))
        hub = Hub(mirror, clock, tick_ms=50)
        hub.reset_published()
        north = [a for a in config.agents if a.team == "north"]
        first, second = (frozenset({f"agent:{a.id}", "team:north", *(f"queue:{q}" for q in north[0].queues)})
                         for a in north[:2])
        assert first != second
        one = hub.shared_snapshot_json(first)
        assert hub.shared_snapshot_json(second) is one and hub.snapshots_shared == 1
        assert one == hub.snapshot_json(first)
        changes = Changes()
        mirror.apply_entry("agent", north[0].id, {"state": "away", "reason": "lunch", "since_ms": 5, "seq": 1,
                                                  "connections": 1}, changes)
        hub.notify(changes)
        assert hub.shared_snapshot_json(second) is one and hub.snapshots_shared == 2  # not published yet
        assert one == hub.snapshot_json(second) and '"reason":"lunch"' not in one
        hub.flush()  # snapshots are the published state: the change shows once it is published
        after = hub.shared_snapshot_json(second)
        assert after is not one and '"reason":"lunch"' in after and after == hub.snapshot_json(second)
        await asyncio.sleep(0.08)  # a tick later nothing is kept: an idle hub holds no snapshot text
        assert hub._snapshots == {}  # noqa: SLF001

    asyncio.run(scenario())


def test_a_backlog_is_merged_into_one_delta_and_a_stuck_client_is_closed(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr("wallboard.hub.SLOW_CLOSE_S", 0.05)
    closed = []
    sub = Subscriber({"all"}, "json", on_slow=lambda: closed.append(True))
    document: dict[str, Any] = {"agents": {"a": {"state": "offline"}}}
    expected = document
    from wallboard.hub import Outgoing

    for i in range(40):
        delta = {"type": "delta", "agents": {"a": {"state": STATES[i % 5], "seq": i}}}
        expected = patch.apply(expected, {k: v for k, v in delta.items() if k != "type"})
        sub.push(Outgoing(delta, json.dumps(delta)))
    assert len(sub.outbox) <= 33  # merged instead of growing without bound
    merged = document
    for item in sub.outbox:
        merged = patch.apply(merged, {k: v for k, v in item.obj.items() if k != "type"})
    assert merged == expected  # latest state wins, nothing lost
    time.sleep(0.06)
    for i in range(40):
        sub.push(Outgoing({"type": "delta", "agents": {"a": {"seq": 100 + i}}}, "{}"))
    assert closed == [True]


# --- with real sockets -------------------------------------------------------------------------------

async def _write_random_states(services: Any, rng: random.Random, agents: list[str], n: int) -> None:
    """Supervisor intents straight into the store: the same Lua path as a click, without a socket."""
    items = []
    for _ in range(n):
        state = rng.choice(["available", "away", "offline"])
        reason = rng.choice(["lunch", "break", None]) if state == "away" else None
        items.append(Addressed(rng.choice(agents), Intent(kind=SET, actor="supervisor", state=state, reason=reason)))
    await services.presence.apply(items, services.clock.now_ms())


async def _connect_reading(server: Any, tok: str) -> Any:
    """conftest.connect, with a client library that keeps reading (and answering the server's pings) however
    many messages wait: connecting 200 clients one by one on a loaded machine takes longer than the server's
    10 s ping, and a client that stopped reading at 16 queued messages would be closed for a missing pong."""
    from tests.conftest import WsClient

    conn = await websockets.connect(ws_url(server), subprotocols=["callboard.v1.json"], open_timeout=10, max_queue=None)
    client = WsClient(conn)
    await client.send({"type": "hello", "token": tok})
    client.welcome = await client.recv(timeout=10)
    assert client.welcome["type"] == "welcome", client.welcome
    assert (await client.recv(timeout=10))["type"] == "snapshot"
    return client


async def test_200_clients_receive_exactly_their_topics_and_end_in_a_fresh_snapshot(make_instance) -> None:  # type: ignore[no-untyped-def]
    config = big_config(60)
    server = await make_instance(config)
    services = server.app[SERVICES]
    scopes: list[dict[str, Any]] = (
        [{"role": "wallboard"}] * 40
        + [{"role": "wallboard", "teams": [t]} for t in TEAMS] * 20
        + [{"role": "supervisor", "queues": [f"q{i}"]} for i in range(6)] * 10
    )
    clients = []
    for i, scope in enumerate(scopes):
        sub = f"viewer{i}"
        clients.append(await _connect_reading(server, token(sub, scope["role"], queues=scope.get("queues"),
                                                            teams=scope.get("teams"))))
    assert len(clients) == 160
    agents = [a.id for a in config.agents]
    agent_clients = [await _connect_reading(server, token(agents[i])) for i in range(40)]
    clients += agent_clients
    assert len(clients) == 200

    rng = random.Random(3)
    for _ in range(20):
        await _write_random_states(services, rng, agents, 15)
        await asyncio.sleep(0.01)

    async def settle(client: Any) -> None:
        """Read until the socket is quiet, then compare with the server's fresh snapshot for its scope."""
        while True:
            try:
                await client.recv(timeout=0.5)
            except TimeoutError:
                return

    await asyncio.gather(*(settle(c) for c in clients))
    for client in clients:
        topics = set(next(s.sub.topics for s in services.sessions if s.claims.sub == client.welcome["sub"]))
        allowed_agents, allowed_queues = services.hub.covered(topics)
        for message in client.messages:
            if message["type"] == "delta":
                assert set(message.get("agents", {})) <= set(allowed_agents), (client.welcome, message)
                assert set(message.get("queues", {})) <= set(allowed_queues), (client.welcome, message)
        assert scoped(client.snapshot) == scoped(services.hub.snapshot(topics)), client.welcome
    for client in clients:
        await client.close()


async def test_a_topic_is_serialized_once_per_tick_not_per_client(make_instance) -> None:  # type: ignore[no-untyped-def]
    config = big_config(12)
    server = await make_instance(config)
    services = server.app[SERVICES]
    walls = [await connect(server, token(f"w{i}", "wallboard")) for i in range(50)]
    packed = await websockets.connect(ws_url(server), subprotocols=["callboard.v1.msgpack"])
    import msgpack

    await packed.send(msgpack.packb({"type": "hello", "token": token("mp", "wallboard")}))
    await packed.recv()
    await packed.recv()
    await asyncio.sleep(0.2)
    before_serial, before_flushes = services.hub.serializations, services.hub.flushes
    await services.presence.apply([Addressed("ag001", Intent(kind=SET, actor="supervisor", state="away", reason="x"))],
                                  services.clock.now_ms())
    await asyncio.gather(*(w.wait_for(lambda s: s["agents"]["ag001"].get("reason") == "x") for w in walls))
    assert services.hub.flushes - before_flushes == 1
    # one "all" topic, two encodings in use: two serializations for 51 clients
    assert services.hub.serializations - before_serial == 2
    assert all(s.sub.serializations == 0 for s in services.sessions)
    await packed.close()
    for w in walls:
        await w.close()


async def test_a_client_that_stops_reading_is_closed_4429_and_others_stay_fast(make_instance, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr("wallboard.hub.SLOW_CLOSE_S", 1.0)
    config = big_config(60)
    server = await make_instance(config)
    services = server.app[SERVICES]
    fast = await connect(server, token("fast", "wallboard"))

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a tiny window fills fast
    sock.connect((server.host, server.port))
    slow = await websockets.connect(ws_url(server), sock=sock, max_queue=1)
    await slow.send(json.dumps({"type": "hello", "token": token("slow", "wallboard")}))
    # ...and never reads again. A slow link, emulated: a small send buffer on the server side of this socket
    # too, so the test does not have to push megabytes through loopback before the backlog shows.
    for _ in range(50):
        session = next((s for s in services.sessions if s.claims.sub == "slow"), None)
        if session is not None:
            break
        await asyncio.sleep(0.02)
    assert session is not None
    session.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)

    agents = [a.id for a in config.agents]
    rng = random.Random(5)
    lags = []
    started = time.monotonic()
    while services.metrics.ws_slow_consumer_closes._value.get() == 0 and time.monotonic() - started < 30:  # noqa: SLF001
        reason = f"r{rng.random():.12f}" + "x" * 70  # fat deltas (60 agents each) fill socket buffers quickly
        target = rng.choice(agents)
        sent = time.monotonic()
        await services.presence.apply(
            [Addressed(a, Intent(kind=SET, actor="supervisor", state="away", reason=reason + a)) for a in agents],
            services.clock.now_ms())
        await fast.wait_for(lambda s, t=target, r=reason: s["agents"][t].get("reason") == r + t, timeout=5)
        lags.append(time.monotonic() - sent)
    assert services.metrics.ws_slow_consumer_closes._value.get() == 1  # noqa: SLF001
    for _ in range(100):  # the close is under way; its handler cleans up within moments
        if not any(s.claims.sub == "slow" for s in services.sessions):
            break
        await asyncio.sleep(0.05)
    assert not any(s.claims.sub == "slow" for s in services.sessions)
    lags.sort()
    assert lags[len(lags) // 2] < 0.5, f"median change-to-fast-client {lags[len(lags) // 2]:.3f}s"
    await fast.close()
    with pytest.raises(Exception):  # noqa: B017 - any close/abort is fine; the server already dropped it
        for _ in range(10_000):
            await asyncio.wait_for(slow.recv(), 2)


def _server_side_established(server: Any, client_port: int) -> bool:
    """Is the server's end of the connection from `client_port` still ESTABLISHED (in this process)?"""
    import psutil

    return any(c.status == psutil.CONN_ESTABLISHED and c.laddr and c.laddr.port == server.port
               and c.raddr and c.raddr.port == client_port for c in psutil.Process().net_connections("tcp"))


async def _cut_within(server: Any, client_port: int, limit_s: float) -> bool:
    """Poll until the server's end of that connection is gone; False if it outlives limit_s."""
    for _ in range(int(limit_s / 0.1)):
        if not _server_side_established(server, client_port):
            return True
        await asyncio.sleep(0.1)
    return False


async def _stalled_wallboard(server: Any, sub: str, *, shrink_server_buffer: bool) -> tuple[Any, socket.socket]:
    """A wallboard that says hello and then never reads again (its receive window is tiny)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((server.host, server.port))
    conn = await websockets.connect(ws_url(server), sock=sock, max_queue=1, ping_interval=None)
    await conn.send(json.dumps({"type": "hello", "token": token(sub, "wallboard")}))
    services = server.app[SERVICES]
    for _ in range(100):
        session = next((s for s in services.sessions if s.claims.sub == sub), None)
        if session is not None:
            break
        await asyncio.sleep(0.02)
    assert session is not None
    if shrink_server_buffer:
        session.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    return conn, sock


async def _churn(services: Any, agents: list[str], until: Callable[[], bool], limit_s: float) -> None:
    """Fat deltas for every agent until `until()` holds (or the time limit passes)."""
    rng = random.Random(9)
    started = time.monotonic()
    while not until() and time.monotonic() - started < limit_s:
        reason = f"r{rng.random():.12f}" + "x" * 70
        await services.presence.apply(
            [Addressed(a, Intent(kind=SET, actor="supervisor", state="away", reason=reason + a)) for a in agents],
            services.clock.now_ms())
        await asyncio.sleep(0.02)


async def test_a_4429_close_cuts_the_tcp_connection_within_seconds(make_instance, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Issue 9.1: the close frame gets about a second; then the transport is aborted, not left ESTABLISHED."""
    monkeypatch.setattr("wallboard.hub.SLOW_CLOSE_S", 1.0)
    config = big_config(60)
    server = await make_instance(config)
    services = server.app[SERVICES]
    slow, sock = await _stalled_wallboard(server, "slow", shrink_server_buffer=True)
    client_port = sock.getsockname()[1]
    closes = services.metrics.ws_slow_consumer_closes
    await _churn(services, [a.id for a in config.agents], lambda: closes._value.get() > 0, 30)  # noqa: SLF001
    assert closes._value.get() == 1  # noqa: SLF001
    assert await _cut_within(server, client_port, 5.0), "the slow socket is still ESTABLISHED"
    assert services.metrics.ws_connections.labels("wallboard")._value.get() == 0  # noqa: SLF001
    assert not any(s.claims.sub == "slow" for s in services.sessions)
    sock.close()


async def test_a_client_that_pings_but_never_reads_is_judged_by_what_it_has_not_taken(make_instance, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Issue 9.1: the outbox stays short (the kernel takes the frames), yet the client owes ever more bytes."""
    monkeypatch.setattr("wallboard.hub.SLOW_CLOSE_S", 1.0)
    config = big_config(60)
    server = await make_instance(config)
    services = server.app[SERVICES]
    slow, sock = await _stalled_wallboard(server, "pinger", shrink_server_buffer=False)
    client_port = sock.getsockname()[1]
    closes = services.metrics.ws_slow_consumer_closes

    async def keep_pinging() -> None:
        with contextlib.suppress(websockets.ConnectionClosed, OSError):
            while True:
                await slow.send(json.dumps({"type": "ping"}))
                await asyncio.sleep(0.1)

    pinger = asyncio.create_task(keep_pinging())
    try:
        await _churn(services, [a.id for a in config.agents], lambda: closes._value.get() > 0, 30)  # noqa: SLF001
    finally:
        pinger.cancel()
    assert closes._value.get() == 1, "a client that never reads was not closed in 30 s"  # noqa: SLF001
    assert await _cut_within(server, client_port, 5.0), "the slow socket is still ESTABLISHED"
    assert not any(s.claims.sub == "pinger" for s in services.sessions)
    sock.close()


async def test_an_idle_hub_sends_at_once_and_a_busy_one_coalesces_within_the_tick(make_instance) -> None:  # type: ignore[no-untyped-def]
    """Issue 15: latency follows the load. With a 5 s tick, a lone change still arrives at once (the hub was
    idle), while the changes right after it wait for the tick and go as one delta. (The bounds are seconds
    apart on purpose: the machine may be loaded.)"""
    config = make_config(server={"tick_ms": 5000})
    server = await make_instance(config)
    services = server.app[SERVICES]
    wall = await connect(server, token("w", "wallboard"))
    await asyncio.sleep(5.5)  # whatever start-up published, the hub is idle now
    flushes = services.hub.flushes
    started = time.monotonic()
    await services.presence.apply([Addressed("alice", Intent(kind=SET, actor="supervisor", state="away", reason="one"))],
                                  services.clock.now_ms())
    await wall.wait_for(lambda s: s["agents"]["alice"].get("reason") == "one", timeout=10)
    assert time.monotonic() - started < 3.5, "an idle hub waited for its tick"
    for reason in ("two", "three"):
        await services.presence.apply([Addressed("bob", Intent(kind=SET, actor="supervisor", state="away", reason=reason))],
                                      services.clock.now_ms())
    await wall.wait_for(lambda s: s["agents"]["bob"].get("reason") == "three", timeout=20)
    assert services.hub.flushes - flushes == 2  # the lone change, then both later ones in one coalesced delta
    assert not any(m.get("agents", {}).get("bob", {}).get("reason") == "two" for m in wall.messages)
    await wall.close()


def test_extra_agent_fields_pass_through_the_mirror_and_reach_snapshots_and_deltas() -> None:
    """Fields another room adds to the public agent record (routing's `ringing`, `missed_offers`) need no
    change in the fan-out: they are mirrored, snapshotted and diffed; a presence entry that does not carry
    them clears only presence's own fields (absent = null), never another room's."""
    async def scenario() -> None:
        config = big_config(6)
        clock = FakeClock()
        mirror = Mirror(config, QueueStatsMirror(config, clock))
        hub = Hub(mirror, clock, tick_ms=0)
        hub.reset_published()
        sub = Subscriber({"all"}, "json", on_slow=lambda: None)
        first = hub.subscribe(sub)
        base = {"state": "available", "since_ms": 5, "connections": 1, "seq": 3}
        changes = Changes()
        mirror.apply_entry("agent", "ag001", {**base, "ringing": True, "missed_offers": 1, "name": "forged"}, changes)
        hub.notify(changes)
        hub.flush()
        assert mirror.agents["ag001"]["name"] == "Agent 1"  # static fields come from the config only
        snap = hub.snapshot({"all"})["agents"]["ag001"]
        assert snap["ringing"] is True and snap["missed_offers"] == 1
        changes = Changes()
        mirror.apply_entry("agent", "ag001", {"state": "away", "seq": 4, "missed_offers": 2}, changes)
        hub.notify(changes)
        hub.flush()
        snap = hub.snapshot({"all"})["agents"]["ag001"]
        assert snap["ringing"] is True and snap["missed_offers"] == 2  # another room's field stays
        assert snap["state"] == "away" and "since_ms" not in snap and "connections" not in snap  # absent = null
        document = first
        while sub.outbox:
            message = sub.outbox.popleft().obj
            document = patch.apply(document, {k: v for k, v in message.items() if k != "type"})
        assert document == hub.snapshot({"all"})

    asyncio.run(scenario())


def _frames(data: bytes) -> list[dict[str, Any]]:
    """The JSON messages of unmasked server frames written back to back (lengths under 64 KiB)."""
    out, i = [], 0
    while i < len(data):
        n, i = data[i + 1], i + 2
        if n == 126:
            n, i = int.from_bytes(data[i:i + 2], "big"), i + 2
        out.append(json.loads(data[i:i + n]))
        i += n
    return out


async def test_a_flush_reaches_each_socket_in_one_write_in_topic_order(make_instance) -> None:  # type: ignore[no-untyped-def]
    """An agent's change moves its team's topic and its queue's in the same flush: a teammate gets both deltas
    as one write to its socket (one send, not one per topic), the team's first."""
    server = await make_instance()
    services = server.app[SERVICES]
    alice = await connect(server, token("alice"))
    bob = await connect(server, token("bob"))
    await alice.wait_for(lambda s: s["agents"].get("bob", {}).get("state") == "available")
    await asyncio.sleep(0.3)  # the registrations' deltas are out
    session = next(s for s in services.sessions if s.claims.sub == "alice")
    writes: list[bytes] = []
    write = session.transport.write

    def counted(data: bytes) -> None:
        writes.append(bytes(data))
        write(data)

    session.transport.write = counted  # type: ignore[method-assign]
    await bob.send({"type": "set_state", "state": "away", "reason": "lunch"})
    await alice.wait_for(lambda s: s["queues"]["support"]["agents"]["away"] == 1
                         and s["agents"]["bob"]["state"] == "away")
    assert len(writes) == 1, f"{len(writes)} writes for one flush"
    team, queue = _frames(writes[0])
    assert team["type"] == queue["type"] == "delta"
    assert team["agents"]["bob"]["state"] == "away" and "queues" not in team
    assert queue["queues"]["support"]["agents"]["away"] == 1 and "agents" not in queue
    await alice.close()
    await bob.close()
