"""The websocket endpoint: one session per connection, and no task of its own while idle.

aiohttp routes and checks the upgrade request; the view then answers the handshake itself and hands the
TCP transport to a `Connection` (wallboard/wsconn.py says why: aiohttp's per-connection machinery alone
was over the memory and connect-time targets of issue 15). Frames to the client are written by the hub,
directly to the transport (see wallboard/hub.py); client messages reach the session synchronously from
`Connection.data_received`, and mistakes become {"type": "error"} in one place.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import socket
import struct
from collections.abc import Awaitable
from typing import Any

from aiohttp import web
from redis.exceptions import RedisError
from websockets.frames import Opcode
from websockets.protocol import OPEN, Side
from websockets.protocol import Protocol as FrameParser

from callboard.auth import TokenError
from callboard.services import SERVICES, Services
from presence.rules import SET, Intent, validate_set
from wallboard import messages
from wallboard.const import (
    CLOSE_BAD_MESSAGE,
    CLOSE_BAD_TOKEN,
    CLOSE_FORBIDDEN,
    CLOSE_GRACE_S,
    CLOSE_NO_HELLO,
    CLOSE_RESTART,
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
from wallboard.wsconn import PING_FRAME, Pinger, TakenOver, handshake, take_over

log = logging.getLogger(__name__)
# websockets' frame parser logs every closed connection at INFO; at 10,000 sockets that is noise, not news.
_FRAMES_LOG = logging.getLogger(__name__ + ".frames")
_FRAMES_LOG.setLevel(logging.WARNING)
_BACKGROUND: set[asyncio.Task[None]] = set()  # deregistrations still running after their socket closed
# A websocket's access-log line is written when it closes, with how long it was open (as under aiohttp).
_ACCESS = logging.getLogger("aiohttp.access")


def _reset_on_close(transport: asyncio.Transport | None) -> None:
    """Make the socket's close a reset: a peer that reads nothing must not keep our kernel buffers."""
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is not None:
        with contextlib.suppress(OSError, ValueError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


class Session:
    """One authenticated websocket: its claims and its subscriber."""

    __slots__ = ("services", "transport", "conn", "claims", "conn_id", "sub", "closing", "bad_in_a_row",
                 "can_take_calls")

    def __init__(self, services: Services, conn: Connection, claims: Any, encoding: str) -> None:
        self.services = services
        self.transport = conn.transport
        self.conn = conn
        self.claims = claims
        self.conn_id = f"{services.liveness.instance_id}:{secrets.token_hex(6)}"
        topics = messages.topics_for(claims, services.config)
        self.sub = Subscriber(topics, encoding, on_slow=self._on_slow, transport=self.transport)
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
        self.begin_close(CLOSE_TOO_SLOW, "too slow")

    async def close(self, code: int, reason: str) -> None:
        """Close, and return once the connection is gone (at most about CLOSE_GRACE_S later)."""
        self.begin_close(code, reason)
        await self.conn.wait_closed()

    def begin_close(self, code: int, reason: str) -> None:
        """Close without ever waiting long on the peer.

        Messages already owed (the errors that explain a 4400) are written first; a slow consumer's are
        not. The close frame then gets CLOSE_GRACE_S to be answered, after which the connection is aborted;
        a 4429 connection is a reset, whatever the peer does, so it cannot hold the socket open by not reading.
        """
        if self.closing:
            return
        self.closing = True
        if code == CLOSE_TOO_SLOW:
            _reset_on_close(self.transport)
        else:
            self.sub.flush_owed()
        self.sub.closed = True
        self.conn.close(code, reason, reset=code == CLOSE_TOO_SLOW)

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
        intent = Intent(SET, role, state, reason, None, seq)
        opening = self.conn.opening
        if opening is not None and not opening.done():
            # a console that sets its state right after its welcome (restoring "away: lunch" on a reconnect)
            # is connected: its change waits for the registration, in order, instead of being refused as
            # "not_connected" because the registration's write had not landed yet
            opening.add_done_callback(lambda _: self.services.batcher.offer(target, intent, self._report))
            return
        self.services.batcher.offer(target, intent, self._report)

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
            conn = self.conn
            # after the registration (which writes the hello's "cannot") and any earlier toggle: written in
            # another order, a console that became ready right after its hello stayed "cannot take calls"
            task = asyncio.get_running_loop().create_task(
                _after(conn.opening, router.connection_cannot_take_calls(self.claims.sub, self.conn_id, instance)))
            conn.opening = task  # the next toggle and the deregistration wait for this one
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


class Connection(asyncio.Protocol):
    """One websocket after the upgrade: client frames through websockets' sans-I/O parser, messages to the session.

    Before the hello it holds a timer (HELLO_TIMEOUT_S); after it, nothing but its parser, its session and
    its place in the instance's Pinger: no task, no queue, no timer handle per idle connection.
    """

    __slots__ = ("services", "encoding", "transport", "parser", "session", "hello_timer", "heard", "awaiting_pong",
                 "slot", "fragments", "closing", "close_timer", "reset", "lost", "lost_waiter", "opening", "gauge",
                 "opened_at")

    def __init__(self, services: Services, encoding: str) -> None:
        self.services = services
        self.encoding = encoding
        self.transport: asyncio.Transport | None = None
        self.parser = FrameParser(Side.SERVER, state=OPEN, max_size=MAX_FRAME_BYTES, logger=_FRAMES_LOG)
        self.session: Session | None = None
        self.hello_timer: asyncio.TimerHandle | None = None
        self.heard = False  # anything received since the last ping (the Pinger's liveness test)
        self.awaiting_pong = False
        self.slot = 0
        self.fragments: list[bytes] | None = None  # a fragmented message being assembled (rare)
        self.closing = False
        self.close_timer: asyncio.TimerHandle | None = None
        self.reset = False
        self.lost = False
        self.lost_waiter: asyncio.Future[None] | None = None
        self.opening: asyncio.Task[None] | None = None  # an agent's registration, while it runs
        self.gauge: Any = None
        self.opened_at = 0.0

    # -- asyncio.Protocol --------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        loop = asyncio.get_running_loop()
        self.opened_at = loop.time()
        self.hello_timer = loop.call_later(HELLO_TIMEOUT_S, self._no_hello)
        self.slot = _pinger(self.services).add(self)

    def data_received(self, data: bytes) -> None:
        self.heard = True
        parser = self.parser
        parser.receive_data(data)
        for frame in parser.events_received():
            opcode = frame.opcode
            if opcode is Opcode.TEXT or opcode is Opcode.BINARY or opcode is Opcode.CONT:
                self._data_frame(opcode, frame.data, frame.fin)
        self._flush_parser()

    def eof_received(self) -> bool | None:
        self.parser.receive_eof()
        self._flush_parser()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.closing = True
        if _ACCESS.isEnabledFor(logging.INFO):
            _ACCESS.info("%s %s %s %.1fms", "GET", "/ws", 101, (asyncio.get_running_loop().time() - self.opened_at) * 1000)
        for timer in (self.hello_timer, self.close_timer):
            if timer is not None:
                timer.cancel()
        self.hello_timer = self.close_timer = None
        services = self.services
        if services.pinger is not None:
            services.pinger.discard(self, self.slot)
        if self.lost_waiter is not None and not self.lost_waiter.done():
            self.lost_waiter.set_result(None)
        session = self.session
        if session is None:
            return
        session.closing = True
        services.hub.unsubscribe(session.sub)
        services.sessions.discard(session)
        self.gauge.dec()
        if session.claims.role == "agent":
            task = asyncio.get_running_loop().create_task(_deregister(services, session, self.opening))
            _BACKGROUND.add(task)
            task.add_done_callback(_BACKGROUND.discard)

    # -- the Pinger's side ------------------------------------------------------------------------

    def ping(self) -> None:
        transport = self.transport
        if not self.closing and transport is not None and not transport.is_closing():
            transport.write(PING_FRAME)

    def pong_missed(self) -> None:
        """Nothing came back within half a heartbeat of a ping: the peer is gone. aiohttp's rule, 1006."""
        if self.transport is not None and not self.lost:
            log.info("closing websocket %s: no pong within %.0f s", self._name(), HEARTBEAT_S / 2)
            self.transport.abort()

    # -- closing ----------------------------------------------------------------------------------

    def close(self, code: int, reason: str, *, reset: bool = False) -> None:
        """Send the close frame; the peer's answer ends the connection, or CLOSE_GRACE_S does (an abort)."""
        if self.closing or self.transport is None:
            return
        self.closing = True
        self.reset = reset
        if self.parser.state is OPEN:
            self.parser.send_close(code, reason.encode()[:120].decode(errors="ignore"))
            self._flush_parser()
        if not self.lost:
            self.close_timer = asyncio.get_running_loop().call_later(CLOSE_GRACE_S, self._grace_over)

    def _grace_over(self) -> None:
        self.close_timer = None
        if self.transport is not None and not self.lost:
            self.transport.abort()

    async def wait_closed(self) -> None:
        if self.lost:
            return
        if self.lost_waiter is None:
            self.lost_waiter = asyncio.get_running_loop().create_future()
        await asyncio.shield(self.lost_waiter)

    def _flush_parser(self) -> None:
        """Write what the parser owes the peer (pongs, a close frame); its end-of-stream marker closes TCP."""
        transport = self.transport
        for chunk in self.parser.data_to_send():
            if transport is None or transport.is_closing():
                return
            if chunk:
                transport.write(chunk)
            elif self.reset:
                transport.abort()  # a 4429: the peer's answer came, the socket goes as a reset all the same
            else:
                transport.close()

    # -- messages ---------------------------------------------------------------------------------

    def _data_frame(self, opcode: Opcode, data: bytes, fin: bool) -> None:
        if opcode is Opcode.CONT or not fin:  # fragments; the parser keeps their total under MAX_FRAME_BYTES
            if opcode is not Opcode.CONT:
                self.fragments = [bytes((opcode.value,)), data]
                return
            if self.fragments is None:
                return  # the parser already failed the connection (1002)
            self.fragments.append(data)
            if not fin:
                return
            first, *parts = self.fragments
            self.fragments = None
            opcode, data = Opcode(first[0]), b"".join(parts)
        if opcode is Opcode.TEXT:
            try:
                text: str | bytes = data.decode()
            except UnicodeDecodeError:
                self._fail(1007, "text frames must be UTF-8")
                return
        else:
            text = data
        if self.closing:
            return
        if self.session is None:
            self._hello(text)
        else:
            self._message(self.session, text)

    def _fail(self, code: int, reason: str) -> None:
        self.parser.fail(code, reason)
        self._flush_parser()

    def _message(self, session: Session, data: str | bytes) -> None:
        try:
            session.handle(messages.decode(data))
            session.bad_in_a_row = 0
        except WireError as exc:
            session.send(messages.error(exc.code, exc.message))
            if exc.code in ("bad_message", "unknown_type"):
                session.bad_in_a_row += 1
                if session.bad_in_a_row >= MAX_BAD_MESSAGES:
                    session.begin_close(CLOSE_BAD_MESSAGE, "too many bad messages")

    def _no_hello(self) -> None:
        self.hello_timer = None
        if self.session is None:
            self.close(CLOSE_NO_HELLO, "no hello in time")

    def _refuse(self, obj: dict[str, Any], code: int, reason: str) -> None:
        """An error message explaining the close, then the close."""
        transport = self.transport
        if transport is not None and not transport.is_closing():
            data = encode(obj, self.encoding)
            transport.write(Outgoing(obj, data).frame)
        self.close(code, reason)

    def _hello(self, data: str | bytes) -> None:
        services = self.services
        if services.draining:  # opened before the drain began, so the drain's 1012 did not reach it
            self.close(CLOSE_RESTART, "server restart")
            return
        try:
            hello = messages.decode(data)
            if hello["type"] != "hello":
                raise WireError("bad_message", 'the first message must be {"type": "hello", "token": ...}')
        except WireError as exc:
            self._refuse(messages.error(exc.code, exc.message), CLOSE_BAD_MESSAGE, exc.message)
            return
        try:
            claims = services.tokens.verify(hello.get("token"))
        except TokenError as exc:
            self._refuse(messages.error("bad_token", str(exc)), CLOSE_BAD_TOKEN, str(exc))
            return
        try:
            session = Session(services, self, claims, self.encoding)
        except WireError as exc:
            self._refuse(messages.error(exc.code, exc.message), CLOSE_FORBIDDEN, exc.message)
            return
        # routing: a console without a softphone says so; clients that say nothing are offered calls
        session.can_take_calls = hello.get("can_take_calls") is not False
        self._open(session)

    def _open(self, session: Session) -> None:
        services = self.services
        if self.hello_timer is not None:
            self.hello_timer.cancel()
            self.hello_timer = None
        self.session = session
        services.sessions.add(session)
        self.gauge = services.metrics.ws_connections_of[session.claims.role]
        self.gauge.inc()
        # The welcome, the snapshot (never bound to a name here: a wallboard's is megabytes), and an agent's
        # open pop and offer (which ring again on a new connection) go out as one write.
        sub = session.sub
        items = [Outgoing(welcome := messages.welcome(session.claims, services.liveness.instance_id),
                          encode(welcome, sub.encoding)),
                 services.hub.subscribe_message(sub)]
        is_agent = session.claims.role == "agent"
        if is_agent:
            for held in (services.mirror.pops.get(session.claims.sub), services.mirror.offers.get(session.claims.sub)):
                if held is not None:
                    items.append(Outgoing(held, encode(held, sub.encoding)))
        before = sub.sent
        sub.push_all(items)
        if sub.sent != before:
            services.metrics.ws_messages_sent.inc(sub.sent - before)
        if is_agent:
            self.opening = asyncio.get_running_loop().create_task(_register(services, session))

    def _name(self) -> str:
        session = self.session
        return session.conn_id if session is not None else "(before hello)"


async def _after(previous: asyncio.Task[Any] | None, step: Awaitable[Any]) -> Any:
    """Run `step` once `previous` (a connection's registration or earlier write) has finished, however."""
    if previous is not None and not previous.done():
        await asyncio.wait([previous])
    return await step


async def _register(services: Services, session: Session) -> None:
    try:
        if services.routing is not None and not session.can_take_calls:  # before it counts as connected
            await services.routing.connection_cannot_take_calls(
                session.claims.sub, session.conn_id, services.liveness.instance_id)
        await services.liveness.register(session.conn_id, session.claims.sub)
    except (RedisError, OSError) as exc:  # Redis away: the next lease renewal registers it
        services.count_redis_error(exc)
        log.warning("could not register %s now (%s); it is registered when Redis answers", session.conn_id, exc)


async def _deregister(services: Services, session: Session, opening: asyncio.Task[None] | None) -> None:
    if opening is not None and not opening.done():
        await asyncio.wait([opening])  # a connection gone during its registration: register first, then leave
    try:
        await services.liveness.deregister(session.conn_id)
        if services.routing is not None and not session.can_take_calls:
            await services.routing.connection_cannot_take_calls(session.claims.sub, session.conn_id, None)
    except (RedisError, OSError) as exc:  # Redis away: the next renewal replays it
        services.count_redis_error(exc)
        log.warning("could not deregister %s now (%s); it is replayed when Redis answers", session.conn_id, exc)


def _pinger(services: Services) -> Pinger:
    pinger = services.pinger
    if pinger is None:
        pinger = services.pinger = Pinger(HEARTBEAT_S)
    return pinger


async def websocket_handler(request: web.Request) -> web.StreamResponse:
    services = request.app[SERVICES]
    if not services.origin_allowed(request):
        return web.Response(status=403, text="websocket origin not allowed\n")
    if services.draining:
        return web.Response(status=503, text="this instance is restarting; connect again\n")
    # aiohttp checks the upgrade (and answers a bad one with its 400 naming the problem); compress=False: frames
    # are serialized and framed once for every subscriber of a topic (wallboard/hub.py).
    checker = web.WebSocketResponse(protocols=(JSON_PROTOCOL, MSGPACK_PROTOCOL), compress=False)
    ready = checker.can_prepare(request)
    if not ready.ok:
        await checker.prepare(request)  # raises the 400
        return checker
    transport = request.transport
    if transport is None or transport.is_closing():
        raise ConnectionResetError("the client left before the handshake")
    encoding = "msgpack" if ready.protocol == MSGPACK_PROTOCOL else "json"
    transport.write(handshake(request, ready.protocol))
    take_over(request, Connection(services, encoding))
    return TakenOver()  # never written: the socket belongs to the Connection now
