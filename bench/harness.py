"""The fan-out client harness, shared by fanout.py (callboard) and peer_fanout.py (python-socketio).

Clients are aiohttp websocket clients spread over worker processes. Each change is a supervisor intent that
sets one agent `away` with reason `bench:<sender's time.time()>`; a wallboard measures change -> delta for
every change it sees, an agent for changes of its own record (its badge). Both servers get the same
clients, the same change driver and the same clocks; only the wire protocol differs:

- callboard: `/ws`, subprotocol callboard.v1.json, hello with a token, JSON merge-patch deltas.
- socketio: Engine.IO v4 over a plain websocket (`/socket.io/?EIO=4&transport=websocket`), namespace
  connect `40{auth}`, events `42["delta", {...}]`, answering Engine.IO pings ("2" -> "3").
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import json
import multiprocessing as mp
import os
import queue as queue_mod
import time
from dataclasses import dataclass
from typing import Any

import aiohttp

from bench import common

REASON_PREFIX = "bench:"
CONNECT_CONCURRENCY = 100  # per worker: enough to open 10,000 sockets in seconds without a SYN storm


@dataclass(frozen=True)
class ClientSpec:
    kind: str  # "wall" | "agent" | "super"
    id: str  # agent id for agents; a name otherwise
    team: str = ""
    token: str = ""  # callboard bearer token


def stamp() -> str:
    return f"{REASON_PREFIX}{time.time():.6f}"


def reasons_in(msg: dict[str, Any]) -> list[tuple[str, str]]:
    """(agent id, reason) of every bench-stamped agent patch in a delta."""
    agents = msg.get("agents") or {}
    out = []
    for aid, p in agents.items():
        if isinstance(p, dict):
            reason = p.get("reason")
            if isinstance(reason, str) and reason.startswith(REASON_PREFIX):
                out.append((aid, reason))
    return out


# -- protocols ------------------------------------------------------------------------------------------


class Conn(abc.ABC):
    """One client connection; subclasses speak the protocol. `on_delta(msg)` gets each delta body."""

    def __init__(self, spec: ClientSpec) -> None:
        self.spec = spec
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.messages = 0

    @abc.abstractmethod
    async def open(self, session: aiohttp.ClientSession, base_ws: str) -> None:
        """Implemented by each protocol's subclass."""

    @abc.abstractmethod
    async def read(self, on_delta: Any) -> None:
        """Implemented by each protocol's subclass."""

    @abc.abstractmethod
    async def set_state(self, agent: str, state: str, reason: str | None) -> None:
        """Implemented by each protocol's subclass."""

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()


class CallboardConn(Conn):
    async def open(self, session: aiohttp.ClientSession, base_ws: str) -> None:
        self.ws = await session.ws_connect(base_ws + "/ws", protocols=("callboard.v1.json",), heartbeat=None,
                                           max_msg_size=0, timeout=aiohttp.ClientWSTimeout(ws_close=2))
        await self.ws.send_str(json.dumps({"type": "hello", "token": self.spec.token}))
        got: set[str] = set()
        while not {"welcome", "snapshot"} <= got:
            msg = await self.ws.receive(timeout=60)
            if msg.type != aiohttp.WSMsgType.TEXT:
                raise ConnectionError(f"closed before snapshot: {msg.type} {msg.data!r} {msg.extra!r}")
            got.add(json.loads(msg.data).get("type"))

    async def read(self, on_delta: Any) -> None:
        assert self.ws is not None
        async for msg in self.ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            self.messages += 1
            data = json.loads(msg.data)
            if data.get("type") == "delta":
                on_delta(data)

    async def set_state(self, agent: str, state: str, reason: str | None) -> None:
        assert self.ws is not None
        await self.ws.send_str(json.dumps({"type": "set_state", "agent": agent, "state": state, "reason": reason}))


class SocketIOConn(Conn):
    async def open(self, session: aiohttp.ClientSession, base_ws: str) -> None:
        self.ws = await session.ws_connect(base_ws + "/socket.io/?EIO=4&transport=websocket", heartbeat=None,
                                           max_msg_size=0, timeout=aiohttp.ClientWSTimeout(ws_close=2))
        opened = await self.ws.receive(timeout=60)
        if opened.type != aiohttp.WSMsgType.TEXT or not opened.data.startswith("0"):
            raise ConnectionError(f"no engine.io open: {opened.type} {opened.data!r}")
        auth = {"kind": self.spec.kind, "id": self.spec.id, "team": self.spec.team}
        await self.ws.send_str("40" + json.dumps(auth))
        while True:
            msg = await self.ws.receive(timeout=60)
            if msg.type != aiohttp.WSMsgType.TEXT:
                raise ConnectionError(f"closed before namespace connect: {msg.type}")
            if msg.data == "2":
                await self.ws.send_str("3")
            elif msg.data.startswith("40"):
                return
            elif msg.data.startswith("44"):
                raise ConnectionError(f"namespace connect refused: {msg.data}")

    async def read(self, on_delta: Any) -> None:
        assert self.ws is not None
        async for msg in self.ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            data = msg.data
            if data == "2":
                await self.ws.send_str("3")
                continue
            self.messages += 1
            if data.startswith("42"):
                event = json.loads(data[2:])
                if event and event[0] == "delta":
                    on_delta(event[1])

    async def set_state(self, agent: str, state: str, reason: str | None) -> None:
        assert self.ws is not None
        await self.ws.send_str("42" + json.dumps(["set_state", {"agent": agent, "state": state, "reason": reason}]))


PROTOCOLS: dict[str, type[Conn]] = {"callboard": CallboardConn, "socketio": SocketIOConn}


# -- worker processes -----------------------------------------------------------------------------------


def _worker(protocol: str, base_ws: str, specs: list[ClientSpec], results: mp.Queue, stop: Any) -> None:
    common.raise_nofile()
    try:
        results.put(("done", asyncio.run(_worker_main(protocol, base_ws, specs, results, stop))))
    except Exception as exc:  # a boundary: the parent reports it rather than hanging
        results.put(("error", repr(exc)))


async def _worker_main(protocol: str, base_ws: str, specs: list[ClientSpec], results: mp.Queue, stop: Any) -> dict[str, Any]:
    cls = PROTOCOLS[protocol]
    wall_lat: list[float] = []
    own_lat: list[float] = []
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    session = aiohttp.ClientSession(connector=connector)
    sem = asyncio.Semaphore(CONNECT_CONCURRENCY)
    conns = [cls(s) for s in specs]
    failed: list[str] = []

    async def open_one(c: Conn) -> bool:
        async with sem:
            for attempt in range(3):
                try:
                    await c.open(session, base_ws)
                    return True
                except (aiohttp.ClientError, ConnectionError, TimeoutError, OSError) as exc:
                    if attempt == 2:
                        failed.append(f"{c.spec.id}: {exc!r}"[:200])
                    await asyncio.sleep(0.2 * (attempt + 1))
            return False

    ok = await asyncio.gather(*(open_one(c) for c in conns))
    live = [c for c, good in zip(conns, ok, strict=True) if good]
    results.put(("connected", len(live), failed[:5], len(failed)))

    def on_delta_for(c: Conn) -> Any:
        if c.spec.kind == "wall":
            def on_delta(msg: dict[str, Any]) -> None:
                now = time.time()
                for _, reason in reasons_in(msg):
                    wall_lat.append(now - float(reason[len(REASON_PREFIX):]))
        else:
            seen: set[str] = set()  # own record arrives twice (agent topic and team topic): count the first

            def on_delta(msg: dict[str, Any]) -> None:
                now = time.time()
                for aid, reason in reasons_in(msg):
                    if aid == c.spec.id and reason not in seen:
                        seen.add(reason)
                        own_lat.append(now - float(reason[len(REASON_PREFIX):]))
        return on_delta

    closes: dict[str, int] = {}
    reconnects = 0

    async def keep_reading(c: Conn) -> None:
        """Read until stopped; a socket the server closes is reopened (resnapshot), as a real screen would."""
        nonlocal reconnects
        on_delta = on_delta_for(c)
        while True:
            with contextlib.suppress(aiohttp.ClientError, ConnectionError, OSError):
                await c.read(on_delta)
            if stop.is_set():
                return
            code = str(c.ws.close_code if c.ws is not None else None)
            closes[code] = closes.get(code, 0) + 1
            await asyncio.sleep(0.5)
            with contextlib.suppress(aiohttp.ClientError, ConnectionError, OSError, TimeoutError):
                await c.open(session, base_ws)
                reconnects += 1

    readers = [asyncio.create_task(keep_reading(c)) for c in live]
    while not stop.is_set():  # noqa: ASYNC110 - a multiprocessing Event: polled
        await asyncio.sleep(0.05)
    closed_early = sum(closes.values())
    for t in readers:
        t.cancel()
    await asyncio.gather(*readers, return_exceptions=True)
    await asyncio.gather(*(c.close() for c in live), return_exceptions=True)
    await session.close()
    return {"wall": wall_lat, "own": own_lat, "closed_early": closed_early, "close_codes": closes,
            "reconnects": reconnects, "messages": sum(c.messages for c in live)}


class ClientFleet:
    """N clients over P worker processes; `start()` returns once all tried to connect."""

    def __init__(self, protocol: str, base_ws: str, specs: list[ClientSpec], processes: int) -> None:
        self.protocol, self.base_ws = protocol, base_ws
        self.parts = common.split(specs, processes)
        ctx = mp.get_context("fork")
        self.results: mp.Queue = ctx.Queue()
        self.stop_event = ctx.Event()
        self.procs = [ctx.Process(target=_worker, args=(protocol, base_ws, part, self.results, self.stop_event),
                                  daemon=True) for part in self.parts]
        self.connected = 0
        self.failed = 0
        self.fail_samples: list[str] = []

    def start(self, timeout_s: float = 180.0) -> None:
        for p in self.procs:
            p.start()
        deadline = time.monotonic() + timeout_s
        reported = 0
        while reported < len(self.procs):
            try:
                kind, *rest = self.results.get(timeout=max(deadline - time.monotonic(), 0.1))
            except queue_mod.Empty:
                raise RuntimeError(f"clients not connected in {timeout_s} s") from None
            if kind == "error":
                raise RuntimeError(f"client worker failed: {rest[0]}")
            self.connected += rest[0]
            self.fail_samples += rest[1]
            self.failed += rest[2]
            reported += 1

    def stop(self, timeout_s: float = 60.0) -> dict[str, Any]:
        self.stop_event.set()
        wall: list[float] = []
        own: list[float] = []
        closed_early = messages = reconnects = 0
        codes: dict[str, int] = {}
        errors = []
        for _ in self.procs:
            try:
                kind, *rest = self.results.get(timeout=timeout_s)
            except queue_mod.Empty:
                errors.append("a worker did not report")
                break
            if kind == "error":
                errors.append(rest[0])
                continue
            r = rest[0]
            wall += r["wall"]
            own += r["own"]
            closed_early += r["closed_early"]
            reconnects += r["reconnects"]
            for k, v in r["close_codes"].items():
                codes[k] = codes.get(k, 0) + v
            messages += r["messages"]
        for p in self.procs:
            p.join(5)
            if p.is_alive():
                p.kill()
        return {"wall": wall, "own": own, "closed_early": closed_early, "close_codes": codes, "reconnects": reconnects,
                "messages": messages, "errors": errors}


# -- the change driver ----------------------------------------------------------------------------------


async def drive_changes(protocol: str, base_ws: str, supervisors: list[ClientSpec], agent_ids: list[str],
                        rate_per_s: float, duration_s: float) -> dict[str, Any]:
    """Send `rate_per_s` stamped `away` intents over a few supervisor sockets, round-robin over the agents."""
    cls = PROTOCOLS[protocol]
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        conns = [cls(s) for s in supervisors]
        for c in conns:
            await c.open(session, base_ws)
        drains = {id(c): asyncio.create_task(c.read(lambda _m: None)) for c in conns}
        sent = failed = reopened = 0
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        i = 0
        while (elapsed := loop.time() - t0) < duration_s:
            due = int(elapsed * rate_per_s)
            while sent + failed < due:
                c = conns[(sent + failed) % len(conns)]
                try:
                    await c.set_state(agent_ids[i % len(agent_ids)], "away", stamp())
                    sent += 1
                except (aiohttp.ClientError, ConnectionError, OSError):
                    failed += 1  # the server dropped this supervisor: reopen it and go on
                    with contextlib.suppress(aiohttp.ClientError, ConnectionError, OSError, TimeoutError):
                        await c.open(session, base_ws)
                        drains[id(c)] = asyncio.create_task(c.read(lambda _m: None))
                        reopened += 1
                i += 1
            await asyncio.sleep(0.005)
        wall = loop.time() - t0
        await asyncio.sleep(1.0)  # let the last changes arrive before the clients stop
        for t in drains.values():
            t.cancel()
        await asyncio.gather(*drains.values(), return_exceptions=True)
        for c in conns:
            await c.close()
    return {"sent": sent, "sent_per_s": round(sent / wall, 1), "send_failed": failed, "supervisor_reopened": reopened}


# -- one fan-out run --------------------------------------------------------------------------------------


def fanout_specs(protocol: str, clients: int, walls: int, team_size: int, queues: int,
                 supervisors: int) -> tuple[list[ClientSpec], list[ClientSpec], list[str]]:
    """(listening clients, supervisor clients, agent ids): `walls` wallboards, the rest agents of the center."""
    agents = max(clients - walls, 1)
    layout = common.center_layout(agents, queues, team_size)
    cb = protocol == "callboard"
    # agents first, wallboards last: a wallboard's big snapshot should not meet the agents' connect storm
    specs = [ClientSpec("agent", aid, team, token=common.token(aid, "agent") if cb else "") for aid, team, _ in layout]
    specs += [ClientSpec("wall", f"wall-{i}", token=common.token(f"wall-{i}", "wallboard") if cb else "")
              for i in range(walls)]
    sups = [ClientSpec("super", f"sup-{i}", token=common.token(f"sup-{i}", "supervisor") if cb else "")
            for i in range(supervisors)]
    return specs, sups, [aid for aid, _, _ in layout]


def run_fanout(protocol: str, server: common.ServerProcess, specs: list[ClientSpec], sups: list[ClientSpec],
               agent_ids: list[str], *, rate_per_s: float, duration_s: float, processes: int) -> dict[str, Any]:
    """Connect the fleet, measure idle RSS, drive changes for duration_s, return the figures."""
    base_ws = "ws" + server.base[4:]
    time.sleep(1.0)
    rss0 = common.ProcSampler(server.pid).rss()
    fleet = ClientFleet(protocol, base_ws, specs, processes)
    t0 = time.monotonic()
    fleet.start()
    connect_s = time.monotonic() - t0
    time.sleep(3.0)  # let connect-time changes settle before the idle reading
    rss_idle = common.ProcSampler(server.pid).rss()
    sampler = common.ProcSampler(server.pid)
    try:
        driver = asyncio.run(drive_changes(protocol, base_ws, sups, agent_ids, rate_per_s, duration_s))
    finally:
        sampler.sample()
        cpu = sampler.result()
        got = fleet.stop()
    connected = max(fleet.connected, 1)
    return {
        "connected": fleet.connected, "connect_failed": fleet.failed, "connect_fail_samples": fleet.fail_samples,
        "connect_s": round(connect_s, 1), "changes": driver,
        "wallboard_latency": common.latency_ms(got["wall"]),
        "own_badge_latency": common.latency_ms(got["own"]),
        "server": cpu | {"rss_before_clients_mib": round(rss0 / 2**20, 1),
                         "rss_idle_mib": round(rss_idle / 2**20, 1),
                         "rss_per_idle_conn_kib": round((rss_idle - rss0) / connected / 1024, 2)},
        "client_messages": got["messages"], "server_closes": got["closed_early"], "close_codes": got["close_codes"],
        "reconnects": got["reconnects"], "client_errors": got["errors"],
    }


# -- the light client (bench/light_client.py): one process, every socket read from the moment it opens ------


def _stall_figures(metrics_text: str) -> dict[str, float]:
    """Counts of the loop-stall histogram and the collector's time, from one /metrics scrape."""
    def sample(name: str) -> float:
        for line in metrics_text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        return 0.0

    gc_s = sum(float(line.rsplit(" ", 1)[1]) for line in metrics_text.splitlines()
               if line.startswith("callboard_gc_pause_seconds_sum"))
    return {"probes": sample("callboard_event_loop_stall_seconds_count"),
            "le_50ms": sample('callboard_event_loop_stall_seconds_bucket{le="0.05"}'),
            "max_60s": sample("callboard_event_loop_stall_max_seconds"), "gc_s": gc_s}


def run_fanout_light(server: common.ServerProcess, specs: list[ClientSpec], sups: list[ClientSpec],
                     agent_ids: list[str], *, rate_per_s: float, duration_s: float) -> dict[str, Any]:
    """Like run_fanout, with bench/light_client.py as the listening clients (one process)."""
    import subprocess
    import sys

    base_ws = "ws" + server.base[4:]
    time.sleep(1.0)
    rss0 = common.ProcSampler(server.pid).rss()
    load_before = os.getloadavg()
    client = subprocess.Popen([sys.executable, str(common.ROOT / "bench" / "light_client.py")],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, preexec_fn=common.raise_nofile)
    assert client.stdin is not None and client.stdout is not None
    spec = {"host": "127.0.0.1", "port": server.port, "concurrency": 200,
            "clients": [[s.kind, s.id, s.token] for s in specs]}
    connect_sampler = common.ProcSampler(server.pid)
    client.stdin.write(json.dumps(spec) + "\n")
    client.stdin.flush()
    connected = json.loads(client.stdout.readline())
    server_connect = connect_sampler.result()
    time.sleep(3.0)  # let connect-time changes settle before the idle reading
    rss_idle = common.ProcSampler(server.pid).rss()
    stalls0 = _stall_figures(server.get("/metrics").decode())
    sampler = common.ProcSampler(server.pid)
    try:
        driver = asyncio.run(drive_changes("callboard", base_ws, sups, agent_ids, rate_per_s, duration_s))
    finally:
        sampler.sample()
        cpu = sampler.result()
        stalls1 = _stall_figures(server.get("/metrics").decode())
        client.stdin.write("stop\n")
        client.stdin.flush()
        result = json.loads(client.stdout.readline())
        client.wait(30)
    probes = stalls1["probes"] - stalls0["probes"]
    n = max(connected["connected"], 1)
    return {
        "client": "light (bench/light_client.py, one process)",
        "connected": connected["connected"], "connect_failed": connected["failed"],
        "connect_fail_samples": connected["fail_samples"], "connect_s": connected["connect_s"],
        "server_cpu_share_connect": server_connect["cpu_share"],
        "client_cpu_share_connect": connected["client_cpu_share_connect"],
        "changes": driver,
        "wallboard_latency": common.latency_ms(v / 1000 for v in result["wall_ms"]),
        "own_badge_latency": common.latency_ms(v / 1000 for v in result["own_ms"]),
        "server": cpu | {"rss_before_clients_mib": round(rss0 / 2**20, 1), "rss_idle_mib": round(rss_idle / 2**20, 1),
                         "rss_per_idle_conn_kib": round((rss_idle - rss0) / n / 1024, 2)},
        "loop_stalls": {"probes": probes, "over_50ms": probes - (stalls1["le_50ms"] - stalls0["le_50ms"]),
                        "longest_last_60s_s": stalls1["max_60s"], "gc_pause_s": round(stalls1["gc_s"] - stalls0["gc_s"], 3)},
        "client_cpu_share": result["client_cpu_share"], "client_messages": result["messages"],
        "client_bytes": result["bytes"], "pings_answered": result["pings_answered"],
        "server_closes": result["server_closes"], "close_codes": result["close_codes"],
        "reconnects": result["reconnects"],
        "loadavg_before": [round(x, 2) for x in load_before], "loadavg_after": [round(x, 2) for x in os.getloadavg()],
    }
