"""A light websocket load client: one process, raw asyncio protocols, every socket read from the moment it opens.

Why not the aiohttp fleet of harness.py: it reads no socket until all have connected (server pings go
unanswered and the server drops sockets during a long connect), and its per-message cost (aiohttp frames,
json.loads of every delta) made the clients, not the server, the limit on a 2-core machine. This client:

- speaks just enough RFC 6455: the upgrade, masked client frames, unmasked server frames, answers pings
  with pongs at once (from the first byte on), records close codes;
- measures without decoding: a wallboard finds every `"reason":"bench:<send time>"` in a delta with one
  regex over the raw bytes; an agent looks for its own record's stamp the same way;
- reports its own CPU (getrusage) next to the figures, so a reader can see whether the client was the limit.

Run by bench/fanout.py (`--client light`, the default). As a program it reads one JSON spec on stdin
({"host", "port", "clients": [[kind, id, token], ...], "concurrency"}), prints {"event": "connected", ...}
once every socket has opened (or failed), waits for a line "stop" on stdin, and prints {"event": "result"}.
With "protocol": "pusher" and "path": "/app/<key>?protocol=7" it speaks Pusher's protocol instead (the
peer in bench/peer_soketi.py): the third member of each client is then the channel it subscribes to.
With "absorb": {"burst", "duration_s", "burst_wait_s", "final_wait_s"} (bench/presence_absorb.py) it waits
for a line "go" instead, runs the agents' closed loop of set_state intents (see `Absorber`) and prints the
result when the last agent is done.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import resource
import struct
import sys
import time
from typing import Any

PREFIX = b"bench:"
# Optional backslashes: Pusher carries event data as a JSON string inside the JSON frame (escaped quotes).
STAMP = re.compile(rb'\\?"reason\\?":\\?"bench:(\d+\.\d+)')
DELTA_HEADS = (b'{"type":"delta"', b'{"event":"delta"')
RECONNECT_S = 0.5


def client_frame(opcode: int, payload: bytes) -> bytes:
    """A masked client frame (RFC 6455 5.3). The mask is fixed: it protects proxies, not this benchmark."""
    mask = b"\x11\x22\x33\x44"
    n = len(payload)
    if n < 126:
        header = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 65536:
        header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    # XOR as one big integer: a generator over the bytes cost 0.05 ms per 200-byte hello, per socket
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes((mask * (n // 4 + 1))[:n], "big")).to_bytes(n, "big")
    return header + mask + masked


# The stamp inside one agent's record: the first "reason":"bench:<time>" after its key and before any brace.
REASON = re.compile(rb'\\?"reason\\?":\\?"bench:(\d+\.\d+)')


def own_stamps(payload: bytes, keys: tuple[bytes, ...]) -> list[bytes]:
    """The stamps of one agent's record in a delta (plain JSON, or JSON escaped inside a Pusher string).

    What a regex compiled per agent did, with one shared pattern: the compile cost the client 0.28 ms per
    socket while connecting (2026-11-29, the loaded 2-core box), more than the server's whole handshake."""
    found = []
    for key in keys:
        start = payload.find(key)
        while start >= 0:
            body = start + len(key)
            ends = [i for i in (payload.find(b"{", body), payload.find(b"}", body)) if i >= 0]
            match = REASON.search(payload, body, min(ends) if ends else len(payload))
            if match:
                found.append(match.group(1))
            start = payload.find(key, body)
    return found


class Stats:
    def __init__(self) -> None:
        self.wall_ms: list[float] = []
        self.own_ms: list[float] = []
        self.messages = 0
        self.bytes = 0
        self.pings = 0
        self.closes: dict[str, int] = {}
        self.reconnects = 0


class WsClient(asyncio.Protocol):
    """One socket: upgrade, hello, then frames; wallboards and agents measure stamped deltas."""

    __slots__ = ("kind", "ident", "token", "stats", "fleet", "transport", "buf", "upgraded", "ready",
                 "own", "seen", "close_code")

    def __init__(self, fleet: Fleet, kind: str, ident: str, token: str) -> None:
        self.fleet, self.kind, self.ident, self.token, self.stats = fleet, kind, ident, token, fleet.stats
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.upgraded = False
        self.ready: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self.own = (b'"' + ident.encode() + b'":{', b'\\"' + ident.encode() + b'\\":{') if kind == "agent" else None
        self.seen: set[bytes] = set()
        self.close_code: int | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        key = base64.b64encode(os.urandom(16)).decode()
        host = f"{self.fleet.host}:{self.fleet.port}"
        extra = "Sec-WebSocket-Protocol: callboard.v1.json\r\n" if self.fleet.protocol == "callboard" else ""
        self.transport.write((f"GET {self.fleet.path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
                              f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                              f"{extra}\r\n").encode())

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        if not self.upgraded:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            if not buf.startswith(b"HTTP/1.1 101"):
                self._fail(f"upgrade refused: {bytes(buf[:40])!r}")
                return
            del buf[:end + 4]
            self.upgraded = True
            if self.fleet.protocol == "callboard":
                hello = {"type": "hello", "token": self.token}
            else:  # Pusher: `token` carries the channel (a wallboard's "all", an agent's team)
                hello = {"event": "pusher:subscribe", "data": {"channel": self.token}}
            self.transport.write(client_frame(0x1, json.dumps(hello).encode()))  # type: ignore[union-attr]
        while len(buf) >= 2:
            b1 = buf[1] & 0x7F
            if b1 < 126:
                start, n = 2, b1
            elif b1 == 126:
                if len(buf) < 4:
                    return
                start, n = 4, struct.unpack_from("!H", buf, 2)[0]
            else:
                if len(buf) < 10:
                    return
                start, n = 10, struct.unpack_from("!Q", buf, 2)[0]
            if len(buf) < start + n:
                return
            opcode = buf[0] & 0x0F
            payload = bytes(buf[start:start + n])
            del buf[:start + n]
            self._frame(opcode, payload)

    def _frame(self, opcode: int, payload: bytes) -> None:
        stats = self.stats
        if opcode == 0x1:
            stats.messages += 1
            stats.bytes += len(payload)
            if not self.ready.done():
                if payload.startswith(b'{"type":"snapshot"') or b"pusher_internal:subscription_succeeded" in payload:
                    self.ready.set_result(True)
                return
            if self.fleet.absorber is not None:
                self.fleet.absorber.frame(self, payload)
                return
            if not (payload.startswith(DELTA_HEADS) or b'"event":"delta"' in payload[:80]):  # Pusher: any key order
                if payload.startswith(b'{"event":"pusher:ping"'):
                    self.transport.write(client_frame(0x1, b'{"event":"pusher:pong","data":{}}'))  # type: ignore[union-attr]
                    stats.pings += 1
                return
            now = time.time()
            if self.kind == "wall":
                for sent in STAMP.findall(payload):
                    stats.wall_ms.append((now - float(sent)) * 1000)
            elif self.own is not None:
                for sent in own_stamps(payload, self.own):
                    if sent not in self.seen:  # own record comes on the agent and the team topic
                        self.seen.add(sent)
                        stats.own_ms.append((now - float(sent)) * 1000)
        elif opcode == 0x9:
            stats.pings += 1
            self.transport.write(client_frame(0xA, payload))  # type: ignore[union-attr]
        elif opcode == 0x8:
            self.close_code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
            self.transport.close()  # type: ignore[union-attr]

    def _fail(self, why: str) -> None:
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(why))
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"closed before the snapshot ({self.close_code}, {exc!r})"))
            return
        self.fleet.lost(self)


class Fleet:
    def __init__(self, host: str, port: int, specs: list[list[str]], concurrency: int, protocol: str = "callboard",
                 path: str = "/ws") -> None:
        self.host, self.port, self.specs, self.concurrency = host, port, specs, concurrency
        self.protocol, self.path = protocol, path
        self.stats = Stats()
        self.clients: list[WsClient] = []
        self.failed: list[str] = []
        self.stopping = False
        self.absorber: Absorber | None = None  # presence_absorb's closed loop of intents, when it runs

    async def open(self, kind: str, ident: str, token: str) -> WsClient:
        loop = asyncio.get_running_loop()
        _, client = await loop.create_connection(lambda: WsClient(self, kind, ident, token), self.host, self.port)
        await asyncio.wait_for(client.ready, 60)
        return client

    async def connect_all(self) -> float:
        sem = asyncio.Semaphore(self.concurrency)

        async def one(spec: list[str]) -> None:
            async with sem:
                for attempt in range(3):
                    try:
                        self.clients.append(await self.open(*spec))
                        return
                    except (OSError, ConnectionError, TimeoutError) as exc:
                        if attempt == 2:
                            self.failed.append(f"{spec[1]}: {exc!r}"[:200])
                        await asyncio.sleep(0.2 * (attempt + 1))

        t0 = time.monotonic()
        await asyncio.gather(*(one(s) for s in self.specs))
        return time.monotonic() - t0

    def lost(self, client: WsClient) -> None:
        if self.stopping:
            return
        code = str(client.close_code)
        self.stats.closes[code] = self.stats.closes.get(code, 0) + 1
        asyncio.get_running_loop().create_task(self._reopen(client))

    async def _reopen(self, client: WsClient) -> None:
        """A socket the server closed is reopened (resnapshot), as a real screen would."""
        await asyncio.sleep(RECONNECT_S)
        try:
            fresh = await self.open(client.kind, client.ident, client.token)
        except (OSError, ConnectionError, TimeoutError):
            return
        self.clients[self.clients.index(client)] = fresh
        self.stats.reconnects += 1

    def close_all(self) -> None:
        self.stopping = True
        for c in self.clients:
            if c.transport is not None:
                c.transport.close()


class Absorber:
    """bench/presence_absorb.py's load: every agent sends `burst` set_state intents back to back (one write),
    waits until the burst's last one shows in its own deltas, and goes again, for `duration_s`; then it keeps
    going until its last burst shows (at most `final_wait_s`). A burst not shown in `burst_wait_s` (refused,
    say `not_connected`) counts as a stall and the agent goes on. Lags are send -> delta of a burst's last
    intent. A burst is written frame by frame (one write each) unless `one_write`. No task per agent: the next burst is written from the frame that showed the last one."""

    ERROR_CODE = re.compile(rb'"code":"([^"]*)"')

    def __init__(self, clients: list[WsClient], burst: int, duration_s: float, burst_wait_s: float,
                 final_wait_s: float, one_write: bool = False, rate: float | None = None) -> None:
        self.burst, self.burst_wait_s, self.one_write = burst, burst_wait_s, one_write
        self.clients = [c for c in clients if c.kind == "agent"]
        self.period_s = len(self.clients) * burst / rate if rate else 0.0
        self.started_at: dict[WsClient, float] = {}
        self.sent = 0
        self.stalls = 0
        self.lags_ms: list[float] = []
        self.errors: dict[str, int] = {}
        self.k: dict[WsClient, int] = {}
        self.want: dict[WsClient, int] = {}
        self.sent_at: dict[WsClient, float] = {}
        self.shown_last: dict[WsClient, bool] = {}
        self.final_seen: dict[str, float] = {}
        self.own = {c: re.compile(rb'"' + c.ident.encode() + rb'":\{[^{}]*?"reason":"n(\d+)"') for c in self.clients}
        self.t_start = time.monotonic()
        self.stop_at = self.t_start + duration_s
        self.final_deadline = self.stop_at + final_wait_s
        self.done = asyncio.get_running_loop().create_future()
        self.active = len(self.clients)

    def start(self) -> None:
        for c in self.clients:
            self.k[c] = 0
            self._send_burst(c)
        if not self.clients:
            self.done.set_result(None)

    def _send_burst(self, c: WsClient) -> None:
        k = self.k[c]
        frames = []
        for _ in range(self.burst):
            k += 1
            frames.append(client_frame(0x1, b'{"type":"set_state","state":"away","reason":"n%d"}' % k))
        self.k[c] = self.want[c] = k
        self.sent += self.burst
        self.started_at[c] = time.monotonic()
        if c.transport is not None and not c.transport.is_closing():
            if self.one_write:
                c.transport.write(b"".join(frames))
            else:  # each intent its own write (and, on an idle socket, its own segment), as a browser sends them
                for f in frames:
                    c.transport.write(f)
        self.sent_at[c] = time.monotonic()

    def _finish(self, c: WsClient, shown: bool) -> None:
        self.sent_at.pop(c, None)
        if shown:
            self.final_seen[c.ident] = time.monotonic()
        self.active -= 1
        if not self.active and not self.done.done():
            self.done.set_result(None)

    def frame(self, c: WsClient, payload: bytes) -> None:
        if payload.startswith(b'{"type":"error"'):
            m = self.ERROR_CODE.search(payload)
            code = m.group(1).decode() if m else "?"
            self.errors[code] = self.errors.get(code, 0) + 1
            return
        own = self.own.get(c)
        if own is None or c not in self.sent_at:
            return
        m = own.search(payload)
        if m is None or int(m.group(1)) < self.want[c]:
            return
        now = time.monotonic()
        self.lags_ms.append((now - self.sent_at[c]) * 1000)
        self._next(c, now, shown=True)

    def _next(self, c: WsClient, now: float, *, shown: bool) -> None:
        if (now >= self.stop_at and shown) or now >= self.final_deadline:
            self._finish(c, shown)
            return
        self.sent_at.pop(c, None)
        # --rate: each agent starts a burst at most every agents * burst / rate seconds (still closed loop)
        wait = self.started_at.get(c, 0.0) + self.period_s - now
        if wait > 0 and now < self.stop_at:
            asyncio.get_running_loop().call_later(wait, self._send_burst, c)
        else:
            self._send_burst(c)

    async def run(self) -> None:
        self.start()
        while not self.done.done():
            await asyncio.sleep(0.1)
            now = time.monotonic()
            for c, at in list(self.sent_at.items()):
                if now - at > self.burst_wait_s:
                    self.stalls += 1
                    self._next(c, now, shown=False)
        self.t_end = max(self.final_seen.values()) if self.final_seen else None

    def result(self) -> dict[str, Any]:
        return {"sent": self.sent, "lags_ms": self.lags_ms, "stalls": self.stalls, "errors": self.errors,
                "last": {c.ident: f"n{self.k[c]}" for c in self.clients},
                "final_seen": len(self.final_seen), "agents": len(self.clients),
                "send_window_s": round(min(time.monotonic(), self.stop_at) - self.t_start, 3),
                "accepted_window_s": round(self.t_end - self.t_start, 3) if self.t_end else None,
                "drain_after_stop_s": round(self.t_end - self.stop_at, 3) if self.t_end else None}


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def main() -> None:
    spec = json.loads(sys.stdin.readline())
    fleet = Fleet(spec["host"], spec["port"], spec["clients"], spec.get("concurrency", 200),
                  spec.get("protocol", "callboard"), spec.get("path", "/ws"))
    loop = asyncio.get_running_loop()
    cpu0, t0 = _cpu_s(), time.monotonic()
    connect_s = await fleet.connect_all()
    cpu1 = _cpu_s()
    print(json.dumps({"event": "connected", "connected": len(fleet.clients), "failed": len(fleet.failed),
                      "fail_samples": fleet.failed[:5], "connect_s": round(connect_s, 2),
                      "client_cpu_share_connect": round((cpu1 - cpu0) / max(connect_s, 1e-6), 3)}), flush=True)
    t1 = time.monotonic()
    fleet.stats.wall_ms.clear()
    fleet.stats.own_ms.clear()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    absorb = spec.get("absorb")
    if absorb is not None:  # bench/presence_absorb.py: "go", the closed loop of intents, then the result
        await reader.readline()  # "go"
        cpu1, t1 = _cpu_s(), time.monotonic()
        fleet.absorber = Absorber(fleet.clients, absorb["burst"], absorb["duration_s"], absorb["burst_wait_s"],
                                  absorb["final_wait_s"], absorb.get("one_write", False),
                                  absorb.get("rate"))
        await fleet.absorber.run()
        cpu2, t2 = _cpu_s(), time.monotonic()
        fleet.close_all()
        print(json.dumps({"event": "result", **fleet.absorber.result(), "pings_answered": fleet.stats.pings,
                          "close_codes": fleet.stats.closes, "reconnects": fleet.stats.reconnects,
                          "client_cpu_s": round(cpu2 - cpu1, 3),
                          "client_cpu_share": round((cpu2 - cpu1) / max(t2 - t1, 1e-6), 3)}), flush=True)
        return
    await reader.readline()  # "stop"
    cpu2, t2 = _cpu_s(), time.monotonic()
    fleet.close_all()
    s = fleet.stats
    print(json.dumps({"event": "result", "wall_ms": s.wall_ms, "own_ms": s.own_ms, "messages": s.messages,
                      "bytes": s.bytes, "pings_answered": s.pings, "close_codes": s.closes,
                      "server_closes": sum(s.closes.values()), "reconnects": s.reconnects,
                      "client_cpu_share": round((cpu2 - cpu1) / max(t2 - t1, 1e-6), 3),
                      "client_wall_s": round(t2 - t0, 1)}), flush=True)


if __name__ == "__main__":
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(main())
