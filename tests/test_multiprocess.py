"""Three real `callboard serve` processes on one Redis: one is SIGKILLed, one SIGTERMed, one stays up.

No proxy: clients pick instances round-robin and, like the pages, reconnect to the next instance (with a
small jitter) when the server closes them with 1012. The killed instance's softphones are simply gone
(their connections were cut, as when a machine dies with the server). Every wallboard delta is recorded,
so a flicker of any duration would be seen.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from pathlib import Path
from typing import Any

import pytest
import websockets
from redis.asyncio import Redis
from websockets.exceptions import ConnectionClosed

from callboard import keys
from tests.conftest import SECRET, TWILIO_TOKEN, token
from tests.procs import SHARED_DATABASE_URL, ProcessGroup, parse_samples, scrape, serve_env, write_config
from wallboard.patch import apply

# Several instances on one Redis must share one SQL database (SQLite there is refused by /readyz). This
# test is about the real-time path, which never touches SQL: without a test PostgreSQL an unreachable one
# does (and shows that a database outage does not disturb presence or the wallboard).

LEASE_RENEW_S, LEASE_TTL_S, SWEEP_EVERY_S, GRACE_S = 0.5, 1.5, 0.2, 3
TEAMS = ("support", "sales")
STATES = ("available", "on-call", "wrap-up", "away", "offline")
N_AGENTS = 12
KILLED, DRAINED, SURVIVOR = 0, 1, 2


def agent_ids() -> list[str]:
    return [f"agent{i:02d}" for i in range(N_AGENTS)]


def team_of(i: int) -> str:
    return TEAMS[i % 2]


def center_config(path: Path) -> Path:
    return write_config(
        path,
        center={"name": "Multiprocess center", "timezone": "UTC", "disconnect_grace_s": GRACE_S, "wrap_up_s": 2},
        server={"lease_renew_s": LEASE_RENEW_S, "lease_ttl_s": LEASE_TTL_S, "sweep_every_s": SWEEP_EVERY_S,
                "tick_ms": 50},
        queues=[{"name": team, "numbers": [f"+1555000000{n}"], "team": team} for n, team in enumerate(TEAMS, 1)],
        agents=[{"id": a, "name": a.title(), "team": team_of(i), "queues": [team_of(i)]}
                for i, a in enumerate(agent_ids())],
    )


class Client:
    """A websocket client of one instance list. Agents reconnect to the next instance on 1012; any other
    close ends the client. Every change of an agent's (state, reason) it sees is recorded with its time."""

    def __init__(self, sub: str, role: str, urls: list[str], start: int) -> None:
        self.sub, self.role, self.urls, self.index = sub, role, urls, start
        self.tok = token(sub, role)
        self.snapshot: dict[str, Any] = {}
        self.seen: dict[str, tuple[str, str | None]] = {}
        self.changes: list[tuple[float, str, str, str | None]] = []  # (monotonic time, agent, state, reason)
        self.closes: list[tuple[float, int | None, str]] = []  # (time, close code, url)
        self.instances: list[str] = []  # the instance id of every welcome
        self.errors: list[dict[str, Any]] = []
        self.connected = asyncio.Event()
        self.conn: Any = None
        self.done = False
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self._run(), name=f"client-{self.sub}")

    async def _connect(self) -> None:
        for _attempt in range(20):
            url = self.urls[self.index]
            try:
                conn = await websockets.connect(url, subprotocols=["callboard.v1.json"], open_timeout=3)
                await conn.send(json.dumps({"type": "hello", "token": self.tok}))
                welcome = json.loads(await asyncio.wait_for(conn.recv(), 3))
                assert welcome["type"] == "welcome", welcome
                self.instances.append(welcome["instance"])
                self.conn = conn
                return
            except (OSError, TimeoutError, websockets.InvalidHandshake, ConnectionClosed):
                self.index = (self.index + 1) % len(self.urls)
                await asyncio.sleep(random.uniform(0.05, 0.3))
        raise AssertionError(f"{self.sub} could not connect to any instance")

    async def _run(self) -> None:
        while True:
            await self._connect()
            self.connected.set()
            try:
                async for raw in self.conn:
                    self._on_message(json.loads(raw))
            except ConnectionClosed:
                pass
            code = self.conn.close_code
            self.closes.append((time.monotonic(), code, self.urls[self.index]))
            self.connected.clear()
            if code != 1012 or self.role != "agent":
                self.done = True
                return
            self.index = (self.index + 1) % len(self.urls)  # the page: next instance, small jitter
            await asyncio.sleep(random.uniform(0.05, 0.3))

    def _on_message(self, msg: dict[str, Any]) -> None:
        kind = msg.get("type")
        if kind == "snapshot":
            self.snapshot = msg
        elif kind == "delta":
            self.snapshot = apply(self.snapshot, {k: v for k, v in msg.items() if k != "type"})
        elif kind == "error":
            self.errors.append(msg)
            return
        else:
            return
        now = time.monotonic()
        for agent, rec in self.snapshot.get("agents", {}).items():
            key = (rec.get("state"), rec.get("reason"))
            if self.seen.get(agent) != key:
                self.seen[agent] = key
                self.changes.append((now, agent, key[0], key[1]))

    async def send(self, obj: dict[str, Any]) -> None:
        await self.conn.send(json.dumps(obj))

    def state(self, agent: str) -> tuple[str, str | None] | None:
        return self.seen.get(agent)

    def history(self, agent: str, since: float = 0.0) -> list[tuple[float, str, str | None]]:
        return [(t, s, r) for t, a, s, r in self.changes if a == agent and t >= since]

    async def until(self, predicate: Any, timeout: float, what: str) -> float:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout} s waiting for {what}; "
                                     f"{self.sub} sees {dict(sorted(self.seen.items()))}")
            await asyncio.sleep(0.02)
        return time.monotonic()

    async def close(self) -> None:
        self.done = True
        if self.task is not None:
            self.task.cancel()
        if self.conn is not None:
            try:
                await asyncio.wait_for(self.conn.close(), 2)
            except (TimeoutError, ConnectionClosed, OSError):
                pass


@pytest.fixture
def procs(tmp_path: Path) -> Any:
    group = ProcessGroup(tmp_path)
    yield group
    group.stop_all()


def agents_gauges(text: str) -> dict[tuple[str, str], float]:
    out = {}
    for (name, labels), value in parse_samples(text).items():
        if name == "callboard_agents":
            d = dict(labels)
            out[(d["team"], d["state"])] = value
    return out


def expected_gauges(states: dict[str, tuple[str, str | None]]) -> dict[tuple[str, str], float]:
    counts = {(team, state): 0.0 for team in TEAMS for state in STATES}
    for i, agent in enumerate(agent_ids()):
        counts[(team_of(i), states[agent][0])] += 1
    return counts


async def test_three_processes_kill_one_drain_one_nobody_else_notices(procs: ProcessGroup, redis: Redis,
                                                                      redis_url: str, tmp_path: Path) -> None:
    started = time.monotonic()
    config = center_config(tmp_path / "center.toml")
    servers = []
    for n in range(3):
        data = tmp_path / f"data{n}"
        data.mkdir()
        servers.append(procs.spawn(f"cb{n}", config, serve_env(
            redis_url=redis_url, data_dir=data, secret=SECRET, twilio_auth_token=TWILIO_TOKEN,
            public_url="https://callboard.example.com", DATABASE_URL=SHARED_DATABASE_URL)))
    await asyncio.gather(*(s.wait_ready() for s in servers))
    urls = [s.ws_url for s in servers]
    killed, drained, survivor = servers[KILLED], servers[DRAINED], servers[SURVIVOR]

    clients: list[Client] = []
    try:
        board = Client("wall", "wallboard", urls, SURVIVOR)
        clients.append(board)
        board.start()
        await asyncio.wait_for(board.connected.wait(), 10)
        agents = {a: Client(a, "agent", urls, i % 3) for i, a in enumerate(agent_ids())}  # round-robin
        clients += agents.values()
        for c in agents.values():
            c.start()
        await asyncio.wait_for(asyncio.gather(*(c.connected.wait() for c in agents.values())), 10)
        on = {n: [a for i, a in enumerate(agent_ids()) if i % 3 == n] for n in range(3)}
        assert len({c.instances[0] for c in agents.values()}) == 3, "the agents are spread over three instances"
        await board.until(lambda: all(board.state(a) == ("available", None) for a in agents), 10,
                          "every agent available on the wallboard")

        # Some chosen states to keep through the hand-over: one drained agent and one survivor agent go away.
        kept_away = {on[DRAINED][0]: "meeting", on[SURVIVOR][0]: "lunch"}
        for agent, reason in kept_away.items():
            await agents[agent].send({"type": "set_state", "state": "away", "reason": reason})
        await board.until(lambda: all(board.state(a) == ("away", r) for a, r in kept_away.items()), 10,
                          "the chosen away states")
        before = dict(board.seen)
        await asyncio.sleep(0.3)  # let every client's own snapshot settle before the watch starts
        own_before = {a: agents[a].state(a) for a in on[SURVIVOR]}
        assert own_before == {a: before[a] for a in on[SURVIVOR]}
        survivor_closes = {a: len(agents[a].closes) for a in on[SURVIVOR]}
        metrics_before = agents_gauges(await scrape(survivor.url))
        assert metrics_before == expected_gauges(before), "the survivor's gauges before the failures"

        # --- the failures: SIGKILL one instance, SIGTERM another -------------------------------------------
        t_fail = time.monotonic()
        killed.kill()
        drained.terminate()
        exit_code = await asyncio.to_thread(drained.wait, 10)
        t_exit = time.monotonic()
        assert exit_code == 0, f"SIGTERM must drain and exit 0; {drained.describe()}"
        assert t_exit - t_fail < 5, f"the drained process took {t_exit - t_fail:.1f} s to exit"

        # The drained instance's agents were closed with 1012 and are back, on the survivor.
        await board.until(lambda: all(agents[a].connected.is_set() and len(agents[a].instances) == 2
                                      for a in on[DRAINED]), GRACE_S, "the drained agents to reconnect")
        for a in on[DRAINED]:
            assert [c[1] for c in agents[a].closes] == [1012], f"{a} closes: {agents[a].closes}"
            assert agents[a].index == SURVIVOR, f"{a} reconnected to instance {agents[a].index}"
        # The killed instance's softphones saw their connection cut (no close frame, no 1012).
        for a in on[KILLED]:
            await agents[a].until(lambda a=a: agents[a].done, 5, f"{a}'s connection to drop")
            assert agents[a].closes and agents[a].closes[0][1] != 1012, agents[a].closes

        # The killed instance's agents go away (disconnected) within lease + grace (+ slack).
        await board.until(lambda: all(board.state(a) == ("away", "disconnected") for a in on[KILLED]),
                          LEASE_TTL_S + GRACE_S + 3, "the killed instance's agents to go away")
        for a in on[KILLED]:
            [(t_changed, _, _)] = [h for h in board.history(a, t_fail)]
            assert GRACE_S - 0.2 <= t_changed - t_fail < LEASE_TTL_S + GRACE_S + 3, \
                f"{a} went away {t_changed - t_fail:.2f} s after the kill (lease {LEASE_TTL_S} s + grace {GRACE_S} s)"
        # ... and stay the whole grace of the drained agents, plus slack, before the verdict.
        await asyncio.sleep(max(0.0, t_exit + GRACE_S + 1.0 - time.monotonic()))

        # --- the verdicts -------------------------------------------------------------------------------------
        assert not board.closes, f"the wallboard was disconnected: {board.closes}"
        assert not board.errors, board.errors
        for a in on[DRAINED]:  # never away, never offline, never any change at all
            assert board.history(a, t_fail) == [], f"{a} flickered on the wallboard: {board.history(a, t_fail)}"
            assert board.state(a) == before[a]
            conns = board.snapshot["agents"][a]["connections"]
            assert conns == 1, (
                f"{a} has {conns} connections after its hand-over, one of them a ghost of the drained instance: "
                "its DISCONNECT reached Redis after the drain's RELEASE had deleted the instance's connection "
                "registry, so it was ignored (see test_a_drain_writes_every_disconnect_before_releasing_its_lease)")
        for a in on[SURVIVOR]:  # nobody else noticed: no change on the wallboard, nor in their own feed
            assert board.history(a, t_fail) == [], f"{a} changed on the wallboard: {board.history(a, t_fail)}"
            assert agents[a].history(a, t_fail) == [], f"{a} saw its own state change: {agents[a].history(a)}"
            assert agents[a].state(a) == own_before[a]
            assert len(agents[a].closes) == survivor_closes[a] == 0, f"{a} was disconnected: {agents[a].closes}"
            assert agents[a].connected.is_set() and not agents[a].errors, agents[a].errors
        final = {a: board.state(a) for a in agents}
        expected = {**before, **{a: ("away", "disconnected") for a in on[KILLED]}}
        assert final == expected

        # The survivor's metrics say the same as its wallboard feed.
        text = await scrape(survivor.url)
        assert agents_gauges(text) == expected_gauges(expected), "callboard_agents on the surviving instance"
        samples = parse_samples(text)
        assert samples[("callboard_ws_connections", (("role", "agent"),))] == len(on[SURVIVOR]) + len(on[DRAINED])
        assert samples[("callboard_ws_connections", (("role", "wallboard"),))] == 1

        # Redis: the drained instance released its lease, the killed one was reaped; the survivor holds its own.
        leases = {m.decode() for m in await redis.zrange(keys.INSTANCES, 0, -1)}
        assert leases == {board.instances[0]}, leases
        assert time.monotonic() - started < 40, f"the test took {time.monotonic() - started:.1f} s"
    finally:
        for c in clients:
            await c.close()


async def test_a_drain_writes_every_disconnect_before_releasing_its_lease(make_instance, redis: Redis) -> None:  # type: ignore[no-untyped-def]
    """The deterministic form of the hand-over race above: a deregistration whose Redis write is slow (a
    new pool connection, a busy Redis) must still land before RELEASE deletes the connection registry."""
    from callboard.services import SERVICES
    from presence.store import decode_record
    from tests.conftest import connect

    server = await make_instance(instance_id="D")
    services = server.app[SERVICES]
    softphones = [await connect(server, token(a)) for a in ("alice", "bob", "carol", "dave")]
    for a in ("alice", "bob", "carol", "dave"):  # registrations are group-committed: wait until they land
        for _ in range(250):
            if (await services.presence.read_agent(a)).connections == 1:
                break
            await asyncio.sleep(0.02)
        assert (await services.presence.read_agent(a)).connections == 1
    original = services.presence.apply

    async def slow_disconnects(items, now_ms):  # type: ignore[no-untyped-def]
        items = list(items)
        if any(i.intent.kind == "disconnect" for i in items):
            await asyncio.sleep(0.1)  # what a fresh connection from the pool can cost under load
        return await original(items, now_ms)

    services.presence.apply = slow_disconnects  # type: ignore[method-assign]
    await services.drain()
    records = {a.decode(): decode_record(raw) for a, raw in (await redis.hgetall(keys.AGENTS)).items()}
    ghosts = {a: r.connections for a, r in records.items() if r.connections}
    assert not ghosts, (f"connections left registered on agents after the drain: {ghosts}; their DISCONNECT "
                        "arrived after RELEASE deleted the registry, so these agents can never go away")
    for phone in softphones:
        await phone.close()
