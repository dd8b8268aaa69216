"""The floor of the websocket layer alone: what a socket costs before any callboard work.

    python bench/ws_floor.py                 # 10,000 sockets, aiohttp then sans-I/O, one server process each
    python bench/ws_floor.py --smoke         # 300

Two minimal servers, nothing of callboard in them, each in this process (so its CPU and RSS are read
exactly): `aiohttp` is a `web.WebSocketResponse` handler with heartbeat=10 s, as callboard used until issue
15; `sans-io` is an `asyncio.Protocol` over websockets' sans-I/O `Protocol`, answering the upgrade by hand,
as wallboard/wsconn.py now does after aiohttp has routed the request. Both read the hello frame, answer
with a welcome and a 2 KB "snapshot" in one write and keep the socket idle. The clients are
bench/light_client.py (one process). Prints, per server: connect time for all sockets, the server's CPU
milliseconds per connection (process CPU during the connect / N), RSS per idle socket ((RSS idle - RSS
before) / N) and the client's CPU share. This is why callboard's sockets leave aiohttp after the upgrade:
aiohttp's own machinery alone was over the 10 KiB per idle socket target.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gc
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import psutil
from aiohttp import WSMsgType, web
from websockets.frames import Opcode
from websockets.protocol import OPEN, Protocol, Side

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from bench import common  # noqa: E402

SNAPSHOT = ('{"type":"snapshot","server_time_ms":1,"agents":{'
            + ",".join(f'"a{i}":{{"state":"available","reason":null}}' for i in range(40)) + "}}")
WELCOME = '{"type":"welcome"}'
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def _frame(data: bytes) -> bytes:
    n = len(data)
    return (bytes((0x81, n)) if n < 126 else bytes((0x81, 126)) + n.to_bytes(2, "big")) + data


async def aiohttp_handler(request: web.Request) -> web.StreamResponse:
    ws = web.WebSocketResponse(protocols=("callboard.v1.json",), heartbeat=10.0, compress=False)
    await ws.prepare(request)
    await ws.receive(timeout=10)
    await ws.send_str(WELCOME)
    await ws.send_str(SNAPSHOT)
    while True:
        msg = await ws.receive()
        if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
            return ws


class SansIo(asyncio.Protocol):
    """The upgrade by hand, then frames through websockets' sans-I/O parser."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.head = b""
        self.parser: Protocol | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        if self.parser is None:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            key = next(line.split(b":", 1)[1].strip() for line in self.head[:end].split(b"\r\n")
                       if line.lower().startswith(b"sec-websocket-key:"))
            accept = base64.b64encode(hashlib.sha1(key + GUID).digest())  # noqa: S324 - RFC 6455
            self.transport.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n"
                                 b"Sec-WebSocket-Accept: " + accept + b"\r\nSec-WebSocket-Protocol: callboard.v1.json\r\n\r\n")
            self.parser = Protocol(Side.SERVER, state=OPEN, max_size=65536)
            data, self.head = self.head[end + 4:], b""
        self.parser.receive_data(data)
        for frame in self.parser.events_received():
            if frame.opcode is Opcode.TEXT:
                self.transport.write(_frame(WELCOME.encode()) + _frame(SNAPSHOT.encode()))
        for chunk in self.parser.data_to_send():
            if chunk:
                self.transport.write(chunk)
            else:
                self.transport.close()


async def measure(mode: str, n: int) -> dict[str, object]:
    loop = asyncio.get_running_loop()
    port = common.free_port()
    if mode == "aiohttp":
        app = web.Application()
        app.router.add_get("/ws", aiohttp_handler)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port, backlog=4096).start()
    else:
        server = await loop.create_server(SansIo, "127.0.0.1", port, backlog=4096)
    gc.collect()
    me = psutil.Process()
    rss0, cpu0 = me.memory_info().rss, sum(me.cpu_times()[:2])
    specs = [["agent", f"a{i}", "t" * 180] for i in range(n)]
    client = await asyncio.create_subprocess_exec(sys.executable, str(HERE / "light_client.py"),
                                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert client.stdin is not None and client.stdout is not None
    client.stdin.write((json.dumps({"host": "127.0.0.1", "port": port, "clients": specs, "concurrency": 200}) + "\n").encode())
    await client.stdin.drain()
    connected = json.loads(await client.stdout.readline())
    cpu1 = sum(me.cpu_times()[:2])
    await asyncio.sleep(2.0)
    rss1 = me.memory_info().rss
    client.stdin.write(b"stop\n")
    await client.stdin.drain()
    await client.stdout.readline()
    await client.wait()
    if mode == "aiohttp":
        await runner.cleanup()
    else:
        server.close()
    done = max(int(connected["connected"]), 1)
    return {"server": mode, "connected": connected["connected"], "failed": connected["failed"],
            "connect_s": connected["connect_s"], "server_cpu_ms_per_conn": round((cpu1 - cpu0) / done * 1000, 3),
            "rss_per_idle_conn_kib": round((rss1 - rss0) / done / 1024, 2),
            "client_cpu_share_connect": connected["client_cpu_share_connect"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sockets", type=int, default=10_000)
    parser.add_argument("--smoke", action="store_true", help="300 sockets")
    args = parser.parse_args()
    if args.smoke:
        args.sockets = 300
    nofile = common.raise_nofile()
    load_before = [round(x, 2) for x in os.getloadavg()]
    for mode in ("aiohttp", "sans-io"):
        fig = asyncio.run(measure(mode, args.sockets))
        common.emit("ws_floor", {"sockets": args.sockets, "smoke": args.smoke, "nofile": nofile,
                                 "loadavg_before": load_before, "loadavg_now": [round(x, 2) for x in os.getloadavg()],
                                 "machine": common.machine()}, **fig)
    return 0


if __name__ == "__main__":
    sys.exit(main())
