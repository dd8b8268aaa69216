"""A websocket connection without aiohttp's per-connection machinery, and one heartbeat for all of them.

Why (issue 15, measured in docs/benchmarks.md): a bare aiohttp `WebSocketResponse` handler, with nothing of
callboard in it, costs 14.6-14.9 KiB of RSS and 0.30 ms of server CPU per connection under the bench's light
client, which alone is over the 10 KiB and 3 s-for-10,000 targets. What it keeps per idle socket is the
HTTP request (headers, parser, payload stream), the handler's task and coroutine frames, a reader, a
writer, a message queue, and heartbeat timer handles. The same socket as an `asyncio.Protocol` over
websockets' sans-I/O `Protocol` (websockets is already a dependency) costs a few KiB and no task at all.

So aiohttp still parses and routes the upgrade request and answers every refusal (403 origin, 503 while
draining, 400 for a malformed upgrade, with its own messages); once a request is a valid upgrade, the view
writes the 101 itself and `take_over` hands the TCP transport to a protocol of ours. From then on frames
are parsed by websockets' `Protocol` (masking, fragmentation, control frames, the close handshake, the
size limit with 1009, protocol errors with 1002) and messages reach the session synchronously from
`data_received`: no task, no queue, no timer per idle connection.

`Pinger` is the heartbeat of every connection of an instance: one timer visits a 1/SLOTS share of the
connections every HEARTBEAT_S/SLOTS seconds, so each is pinged every HEARTBEAT_S and closed when nothing
at all (a pong or any frame) came back within HEARTBEAT_S/2 of its ping — aiohttp's own rule, minus a
timer handle and a ping task per connection, and never a burst of 10,000 writes in one loop turn.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
from typing import Any, Protocol

from aiohttp import web

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 4.2.2
PING_FRAME = b"\x89\x00"  # an unmasked, empty ping (RFC 6455 5.5.2)
SLOTS = 40  # the heartbeat wheel: each tick visits 1/40 of the connections


def handshake(request: web.Request, protocol: str | None) -> bytes:
    """The 101 response to a websocket upgrade that aiohttp's `can_prepare` already found valid."""
    key = request.headers["Sec-WebSocket-Key"].encode()
    accept = base64.b64encode(hashlib.sha1(key + _GUID).digest())  # noqa: S324 - RFC 6455 mandates SHA-1 here
    chosen = f"Sec-WebSocket-Protocol: {protocol}\r\n".encode() if protocol else b""
    return (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n"
            b"Sec-WebSocket-Accept: " + accept + b"\r\n" + chosen + b"\r\n")


def take_over(request: web.Request, protocol: asyncio.Protocol) -> asyncio.Transport | None:
    """Hand the request's TCP transport from aiohttp to `protocol` (after the 101 was written).

    aiohttp's request handler is then told the connection is gone (connection_lost) with its transport
    already detached, so it neither writes a response to nor closes a socket it no longer owns, and it
    leaves its server's connection table (a graceful shutdown drains these sockets through
    Services.drain instead). Bytes aiohttp had read past the request head (a client that did not wait for
    the 101) are passed on. Returns the transport, or None when the connection was already gone.
    """
    transport = request.transport
    handler = request.protocol
    if transport is None or transport.is_closing():
        return None
    handler.keep_alive(False)
    tail = getattr(handler, "_message_tail", b"")
    transport.set_protocol(protocol)
    handler.transport = None
    handler.connection_lost(None)
    protocol.connection_made(transport)
    if tail:
        protocol.data_received(tail)
    return transport


class TakenOver(web.StreamResponse):
    """What the upgrade view returns once the socket is handed over: never written (the transport is gone
    from aiohttp), and left out of the access log, which gets the connection's line when it closes, with
    its duration, as it did while aiohttp held websockets (callboard.logs.AccessLogger).

    aiohttp prepares and ends every response a handler returns; for this one that built the headers of a
    101 nobody reads (`_prepare_headers`, `_write_headers`, `write_eof`: 3-5 % of the server's CPU in a
    connect storm), so both are no-ops here.
    """

    taken_over = True

    def __init__(self) -> None:
        super().__init__(status=101)

    async def prepare(self, request: web.BaseRequest) -> None:
        return None

    async def write_eof(self, data: bytes = b"") -> None:
        return None


class Pingable(Protocol):
    heard: bool
    awaiting_pong: bool

    def ping(self) -> None: ...
    def pong_missed(self) -> None: ...


class Pinger:
    """The heartbeat of every websocket of an instance: a wheel of SLOTS sets, one timer while any is in it."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self.slots: list[set[Any]] = [set() for _ in range(SLOTS)]
        self.cursor = 0
        self.count = 0
        self._timer: asyncio.TimerHandle | None = None
        self.missed = 0  # connections closed for a missing pong (tests, logs)

    def add(self, conn: Pingable) -> int:
        """Register a connection; it is first pinged about `interval_s` from now. Returns its slot."""
        slot = (self.cursor - 1) % SLOTS
        self.slots[slot].add(conn)
        self.count += 1
        if self._timer is None:
            self._arm()
        return slot

    def discard(self, conn: Pingable, slot: int) -> None:
        members = self.slots[slot]
        if conn in members:
            members.remove(conn)
            self.count -= 1
        if not self.count and self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _arm(self) -> None:
        self._timer = asyncio.get_running_loop().call_later(self.interval_s / SLOTS, self._tick)

    def _tick(self) -> None:
        self._timer = None
        self.cursor = (self.cursor + 1) % SLOTS
        # Pinged half an interval ago and nothing heard since: the peer is gone (a closed lid, a dropped NAT).
        for conn in [c for c in self.slots[(self.cursor - SLOTS // 2) % SLOTS] if c.awaiting_pong and not c.heard]:
            self.missed += 1
            conn.pong_missed()
        for conn in list(self.slots[self.cursor]):
            conn.heard = False
            conn.awaiting_pong = True
            conn.ping()
        if self.count:
            self._arm()

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

