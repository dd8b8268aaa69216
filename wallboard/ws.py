"""The websocket endpoint: one session per connection, and no task of its own beside aiohttp's handler.

Frames to the client are written by the hub, directly to the transport (see wallboard/hub.py); the handler
reads client messages and turns mistakes into {"type": "error"} in one place.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import socket
import struct
from typing import Any

from aiohttp import WSMsgType, web
from redis.exceptions import RedisError

from callboard.auth import TokenError, verify_token
from callboard.services import SERVICES, Services
from presence.rules import SET, Intent, validate_set
from wallboard import messages
from wallboard.const import (
    CLOSE_BAD_MESSAGE,
    CLOSE_BAD_TOKEN,
    CLOSE_FORBIDDEN,
    CLOSE_GRACE_S,
    CLOSE_NO_HELLO,
    CLOSE_TOO_SLOW,
    HEARTBEAT_S,
    HELLO_TIMEOUT_S,
    JSON_PROTOCOL,
    MAX_BAD_MESSAGES,
    MAX_FRAME_BYTES,
    MSGPACK_PROTOCOL,
)
from wallboard.hub import Outgoing, Subscriber, encode
from wallboard.messages import WireError

log = logging.getLogger(__name__)


def _reset_on_close(transport: asyncio.Transport | None) -> None:
    """Make the socket's close a reset: a peer that reads nothing must not keep our kernel buffers."""
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is not None:
        with contextlib.suppress(OSError, ValueError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


class Session:
    """One authenticated websocket: its claims and its subscriber."""

    __slots__ = ("services", "transport", "ws", "claims", "conn_id", "sub", "closer", "closing", "bad_in_a_row",
                 "can_take_calls")

    def __init__(self, services: Services, request: web.Request, ws: web.WebSocketResponse, claims: Any,
                 encoding: str) -> None:
        self.services = services
        self.transport = request.transport
        self.ws = ws
        self.claims = claims
        self.conn_id = f"{services.liveness.instance_id}:{secrets.token_hex(6)}"
        topics = messages.topics_for(claims, services.config)
        self.sub = Subscriber(topics, encoding, on_slow=self._on_slow, transport=self.transport)
        self.closer: asyncio.Task[None] | None = None  # held so the close task is not garbage-collected
        self.closing = False
        self.bad_in_a_row = 0
        self.can_take_calls = True  # routing: False when the hello said "can_take_calls": false

    def send(self, obj: dict[str, Any]) -> None:
        """A message for this client only; written at once unless the client is behind."""
        self.push(Outgoing(obj, encode(obj, self.sub.encoding)))

    def push(self, item: Outgoing) -> None:
        sub = self.sub
        before = sub.sent
        sub.push(item)
        if sub.sent != before:
            self.services.metrics.ws_messages_sent.inc(sub.sent - before)

    def _on_slow(self) -> None:
        if self.closing:
            return
        self.services.metrics.ws_slow_consumer_closes.inc()
        log.warning("closing slow websocket %s (%s %s) with 4429", self.conn_id, self.claims.role, self.claims.sub)
        self.closer = asyncio.get_running_loop().create_task(self.close(CLOSE_TOO_SLOW, "too slow"))

    async def close(self, code: int, reason: str) -> None:
        """Close without ever waiting long on the peer.

        Messages already owed (the errors that explain a 4400) are written first; a slow consumer's are
        not. The close frame then gets CLOSE_GRACE_S; a 4429 connection is reset after that, whatever the
        peer does, so it cannot hold the socket open by not reading.
        """
        if self.closing:
            return
        self.closing = True
        if code == CLOSE_TOO_SLOW:
            _reset_on_close(self.transport)
        else:
            self.sub.flush_owed()
        self.sub.closed = True
        try:
            await asyncio.wait_for(self.ws.close(code=code, message=reason.encode()), timeout=CLOSE_GRACE_S)
        except (TimeoutError, ConnectionError, RuntimeError):
            pass
        if self.transport is not None and (code == CLOSE_TOO_SLOW or not self.transport.is_closing()
                                           or self.transport.get_write_buffer_size()):
            self.transport.abort()

    def handle(self, msg: dict[str, Any]) -> None:
        """Act on one client message; raises WireError for the client's mistakes."""
        kind = msg["type"]
        if kind == "set_state":
            self._set_state(msg)
        elif kind in ("accept", "reject"):  # routing (offer mode): the agent's answer to an offer
            self._answer_offer(msg, accept=kind == "accept")
        elif kind == "can_take_calls":  # routing: the console's softphone became ready (or failed)
            self._can_take_calls(msg)
        elif kind == "ping":
            self.send({"type": "pong", "server_time_ms": self.services.clock.now_ms()})
        elif kind == "hello":
            raise WireError("already_authenticated", "hello was already received on this connection")
        else:
            raise WireError("unknown_type", f"unknown message type {kind!r}")

    def _set_state(self, msg: dict[str, Any]) -> None:
        role, sub = self.claims.role, self.claims.sub
        if role == "agent":  # the hot path: an agent's own console
            target = msg.get("agent", sub)
            if target != sub:
                raise WireError("forbidden", "agents may only change their own state")
            # known: messages.topics_for refused an agent missing from the config before the session existed
        else:
            target = msg.get("agent")
            if role == "wallboard":
                raise WireError("forbidden", "a wallboard token cannot change states")
            if not isinstance(target, str) or self.services.config.agent(target) is None:
                raise WireError("unknown_agent", 'name a known agent in "agent"')
        state, reason, seq = msg.get("state"), msg.get("reason"), msg.get("seq")
        code = validate_set(role, state, reason)
        if code:
            raise WireError(code, messages.rejection(code)["message"])
        if seq is not None and (type(seq) is not int):  # bool is an int subclass, and no seq
            raise WireError("bad_message", '"seq" must be an integer')
        self.services.batcher.offer(target, Intent(SET, role, state, reason, None, seq), self._report)

    def _answer_offer(self, msg: dict[str, Any], *, accept: bool) -> None:
        router = self.services.routing
        if self.claims.role != "agent":
            raise WireError("forbidden", "only agents answer offers")
        if router is None:
            raise WireError("not_offer_mode", "this center does not offer calls (routing mode is pull and calls "
                                              "are bridged through a queue)")
        offer_id = msg.get("offer_id")
        if not isinstance(offer_id, str) or not 0 < len(offer_id) <= 64:
            raise WireError("bad_message", '"offer_id" must be the id of the offer you received')
        task = asyncio.get_running_loop().create_task(router.answer(self.claims.sub, offer_id, accept))
        task.add_done_callback(self._report_answer)

    def _can_take_calls(self, msg: dict[str, Any]) -> None:
        value = msg.get("value")
        if not isinstance(value, bool):
            raise WireError("bad_message", '"value" must be true or false')
        if self.claims.role != "agent" or value == self.can_take_calls:
            self.can_take_calls = value
            return
        self.can_take_calls = value
        router = self.services.routing
        if router is not None:
            instance = None if value else self.services.liveness.instance_id
            task = asyncio.get_running_loop().create_task(
                router.connection_cannot_take_calls(self.claims.sub, self.conn_id, instance))
            task.add_done_callback(self._report_answer)

    def _report_answer(self, task: asyncio.Future[str | None]) -> None:
        if task.cancelled() or self.sub.closed:
            return
        exc = task.exception()
        if exc is not None:
            log.error("offer answer failed", exc_info=exc)
            self.sub.send_now(messages.error("unavailable", "the answer could not be recorded; try again"))
        elif task.result():
            self.sub.send_now(messages.error("no_offer", "that offer is no longer open (it ended or is not yours)"))

    def _report(self, code: str | None) -> None:
        """The batcher's answer to one of this socket's intents: only a refusal is sent (the delta is the ack)."""
        if code and not self.sub.closed:
            self.send(messages.rejection(code))


async def websocket_handler(request: web.Request) -> web.StreamResponse:
    services = request.app[SERVICES]
    if not services.origin_allowed(request):
        return web.Response(status=403, text="websocket origin not allowed\n")
    if services.draining:
        return web.Response(status=503, text="this instance is restarting; connect again\n")
    # compress=False: frames are serialized and framed once for every subscriber of a topic (wallboard/hub.py),
    # which per-connection deflate contexts would undo.
    ws = web.WebSocketResponse(protocols=(JSON_PROTOCOL, MSGPACK_PROTOCOL), heartbeat=HEARTBEAT_S,
                               max_msg_size=MAX_FRAME_BYTES, compress=False)
    await ws.prepare(request)
    encoding = "msgpack" if ws.ws_protocol == MSGPACK_PROTOCOL else "json"
    session = await _hello(services, request, ws, encoding)
    if session is None:
        return ws
    services.sessions.add(session)
    metrics_gauge = services.metrics.ws_connections.labels(session.claims.role)
    metrics_gauge.inc()
    # The snapshot is not bound to a name: this frame lives as long as the connection, and a wallboard's
    # snapshot of a 10,000-agent center is megabytes.
    session.send(messages.welcome(session.claims, services.liveness.instance_id))
    session.push(services.hub.subscribe_message(session.sub))
    is_agent = session.claims.role == "agent"
    if is_agent and (pop := services.mirror.pops.get(session.claims.sub)) is not None:
        session.send(pop)
    if is_agent and (offer := services.mirror.offers.get(session.claims.sub)) is not None:
        session.send(offer)  # routing: an offer still open rings again on the new connection
    try:
        if is_agent:
            try:
                if services.routing is not None and not session.can_take_calls:  # before it counts as connected
                    await services.routing.connection_cannot_take_calls(
                        session.claims.sub, session.conn_id, services.liveness.instance_id)
                await services.liveness.register(session.conn_id, session.claims.sub)
            except (RedisError, OSError) as exc:  # Redis away: the next lease renewal registers it
                services.count_redis_error(exc)
                log.warning("could not register %s now (%s); it is registered when Redis answers", session.conn_id, exc)
        await _read_loop(session)
    finally:
        services.hub.unsubscribe(session.sub)
        services.sessions.discard(session)
        metrics_gauge.dec()
        if is_agent:
            try:
                await services.liveness.deregister(session.conn_id)
                if services.routing is not None and not session.can_take_calls:
                    await services.routing.connection_cannot_take_calls(session.claims.sub, session.conn_id, None)
            except (RedisError, OSError) as exc:  # Redis away: the next renewal replays it
                services.count_redis_error(exc)
                log.warning("could not deregister %s now (%s); it is replayed when Redis answers", session.conn_id, exc)
    return ws


async def _hello(services: Services, request: web.Request, ws: web.WebSocketResponse, encoding: str) -> Session | None:
    try:
        msg = await asyncio.wait_for(ws.receive(), HELLO_TIMEOUT_S)
    except TimeoutError:
        await ws.close(code=CLOSE_NO_HELLO, message=b"no hello in time")
        return None
    if msg.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
        return None
    try:
        hello = messages.decode(msg.data)
        if hello["type"] != "hello":
            raise WireError("bad_message", 'the first message must be {"type": "hello", "token": ...}')
    except WireError as exc:
        await _send_then_close(ws, encoding, messages.error(exc.code, exc.message), CLOSE_BAD_MESSAGE, exc.message)
        return None
    try:
        claims = verify_token(services.secret, hello.get("token"))
    except TokenError as exc:
        await _send_then_close(ws, encoding, messages.error("bad_token", str(exc)), CLOSE_BAD_TOKEN, str(exc))
        return None
    try:
        session = Session(services, request, ws, claims, encoding)
        # routing: a console without a softphone says so; clients that say nothing are offered calls
        session.can_take_calls = hello.get("can_take_calls") is not False
        return session
    except WireError as exc:
        await _send_then_close(ws, encoding, messages.error(exc.code, exc.message), CLOSE_FORBIDDEN, exc.message)
        return None


async def _send_then_close(ws: web.WebSocketResponse, encoding: str, obj: dict[str, Any], code: int, reason: str) -> None:
    from wallboard.hub import encode

    with contextlib.suppress(ConnectionError, RuntimeError):
        data = encode(obj, encoding)
        await (ws.send_str(data) if isinstance(data, str) else ws.send_bytes(data))
    await ws.close(code=code, message=reason.encode()[:120])


async def _read_loop(session: Session) -> None:
    ws = session.ws
    while True:
        msg = await ws.receive()  # not `async for`: one coroutine frame less per idle connection
        if msg.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
            if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
                return
            continue
        try:
            session.handle(messages.decode(msg.data))
            session.bad_in_a_row = 0
        except WireError as exc:
            session.send(messages.error(exc.code, exc.message))
            if exc.code in ("bad_message", "unknown_type"):
                session.bad_in_a_row += 1
                if session.bad_in_a_row >= MAX_BAD_MESSAGES:
                    await session.close(CLOSE_BAD_MESSAGE, "too many bad messages")
                    return
