"""The websocket endpoint: one session per connection, one writer task draining its outbox."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
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
    CLOSE_NO_HELLO,
    CLOSE_TOO_SLOW,
    HEARTBEAT_S,
    HELLO_TIMEOUT_S,
    JSON_PROTOCOL,
    MAX_BAD_MESSAGES,
    MAX_FRAME_BYTES,
    MSGPACK_PROTOCOL,
    WRITE_BUFFER_HIGH,
    WRITE_BUFFER_POLL_S,
)
from wallboard.hub import Subscriber
from wallboard.messages import WireError

log = logging.getLogger(__name__)


class Session:
    """One authenticated websocket: its claims, its outbox and its writer."""

    def __init__(self, services: Services, request: web.Request, ws: web.WebSocketResponse, claims: Any,
                 encoding: str) -> None:
        self.services = services
        self.transport = request.transport
        self.ws = ws
        self.claims = claims
        self.conn_id = f"{services.liveness.instance_id}:{secrets.token_hex(6)}"
        topics = messages.topics_for(claims, services.config)
        self.sub = Subscriber(topics, encoding, on_slow=self._on_slow)
        self.writer: asyncio.Task[None] | None = None
        self.bad_in_a_row = 0
        self.can_take_calls = True  # routing: False when the hello said "can_take_calls": false

    async def write_loop(self) -> None:
        metrics = self.services.metrics
        transport = self.transport
        while True:
            item = await self.sub.next()
            if isinstance(item.data, str):
                await self.ws.send_str(item.data)
            else:
                await self.ws.send_bytes(item.data)
            metrics.ws_messages_sent.inc()
            while transport is not None and transport.get_write_buffer_size() > WRITE_BUFFER_HIGH:
                if transport.is_closing():
                    return
                await asyncio.sleep(WRITE_BUFFER_POLL_S)  # the peer is not reading: let the outbox merge

    def _on_slow(self) -> None:
        self.services.metrics.ws_slow_consumer_closes.inc()
        log.warning("closing slow websocket %s (%s %s) with 4429", self.conn_id, self.claims.role, self.claims.sub)
        asyncio.get_running_loop().create_task(self.close(CLOSE_TOO_SLOW, "too slow"))

    async def close(self, code: int, reason: str) -> None:
        """Close without waiting on a writer that is stuck behind a full socket buffer."""
        if self.writer is not None:
            self.writer.cancel()
        try:
            await asyncio.wait_for(self.ws.close(code=code, message=reason.encode()), timeout=2.0)
        except (TimeoutError, ConnectionError, RuntimeError):
            if self.transport is not None:
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
            self.sub.send_now({"type": "pong", "server_time_ms": self.services.clock.now_ms()})
        elif kind == "hello":
            raise WireError("already_authenticated", "hello was already received on this connection")
        else:
            raise WireError("unknown_type", f"unknown message type {kind!r}")

    def _set_state(self, msg: dict[str, Any]) -> None:
        role, sub = self.claims.role, self.claims.sub
        target = msg.get("agent", sub if role == "agent" else None)
        if role == "wallboard":
            raise WireError("forbidden", "a wallboard token cannot change states")
        if role == "agent" and target != sub:
            raise WireError("forbidden", "agents may only change their own state")
        if not isinstance(target, str) or self.services.config.agent(target) is None:
            raise WireError("unknown_agent", 'name a known agent in "agent"')
        state, reason, seq = msg.get("state"), msg.get("reason"), msg.get("seq")
        code = validate_set(role, state, reason)
        if code:
            raise WireError(code, messages.rejection(code)["message"])
        if seq is not None and (not isinstance(seq, int) or isinstance(seq, bool)):
            raise WireError("bad_message", '"seq" must be an integer')
        future = self.services.batcher.submit(target, Intent(kind=SET, actor=role, state=state, reason=reason, seq=seq))
        future.add_done_callback(self._report)

    def _answer_offer(self, msg: dict[str, Any], *, accept: bool) -> None:
        router = self.services.routing
        if self.claims.role != "agent":
            raise WireError("forbidden", "only agents answer offers")
        if router is None:
            raise WireError("not_offer_mode", "this center does not offer calls (routing mode is pull)")
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

    def _report(self, future: asyncio.Future[str | None]) -> None:
        if future.cancelled() or self.sub.closed:
            return
        code = future.result()
        if code:
            self.sub.send_now(messages.rejection(code))


async def websocket_handler(request: web.Request) -> web.StreamResponse:
    services = request.app[SERVICES]
    if not services.origin_allowed(request):
        return web.Response(status=403, text="websocket origin not allowed\n")
    if services.draining:
        return web.Response(status=503, text="this instance is restarting; connect again\n")
    ws = web.WebSocketResponse(protocols=(JSON_PROTOCOL, MSGPACK_PROTOCOL), heartbeat=HEARTBEAT_S,
                               max_msg_size=MAX_FRAME_BYTES)
    await ws.prepare(request)
    encoding = "msgpack" if ws.ws_protocol == MSGPACK_PROTOCOL else "json"
    session = await _hello(services, request, ws, encoding)
    if session is None:
        return ws
    services.sessions.add(session)
    metrics_gauge = services.metrics.ws_connections.labels(session.claims.role)
    metrics_gauge.inc()
    snapshot = services.hub.subscribe(session.sub)
    session.sub.send_now(messages.welcome(session.claims, services.liveness.instance_id))
    session.sub.send_now(snapshot)
    is_agent = session.claims.role == "agent"
    if is_agent and (pop := services.mirror.pops.get(session.claims.sub)) is not None:
        session.sub.send_now(pop)
    if is_agent and (offer := services.mirror.offers.get(session.claims.sub)) is not None:
        session.sub.send_now(offer)  # routing: an offer still open rings again on the new connection
    session.writer = asyncio.create_task(session.write_loop())
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
        session.writer.cancel()
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
    async for msg in ws:
        if msg.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
            continue
        try:
            session.handle(messages.decode(msg.data))
            session.bad_in_a_row = 0
        except WireError as exc:
            session.sub.send_now(messages.error(exc.code, exc.message))
            if exc.code in ("bad_message", "unknown_type"):
                session.bad_in_a_row += 1
                if session.bad_in_a_row >= MAX_BAD_MESSAGES:
                    await session.close(CLOSE_BAD_MESSAGE, "too many bad messages")
                    return
