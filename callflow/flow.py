"""The Twilio voice webhooks: thin aiohttp views over pure rules (signature, twiml, stats) and one Lua call.

Every route: body at most 64 KiB, form-encoded, signature checked, then one call event applied atomically
in Redis (callflow/events.py) and TwiML answered. Errors are short English text/plain (Twilio's debugger
garbles anything else). When Redis is unreachable the views still answer valid TwiML from the config and
the in-memory mirror, and the events wait, in order, in a bounded spool that run_spool applies when Redis
is back — each event carries its own time, so late application counts exactly as on-time application.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import deque
from collections.abc import Awaitable, Callable
from urllib.parse import parse_qsl, urlencode

from aiohttp import web
from multidict import MultiDict, MultiDictProxy
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from callboard import keys
from callboard.clock import Clock
from callboard.config import E164_RE, Config, Queue
from callboard.services import SERVICES
from callflow import signature, twiml
from callflow.events import AGENT_LEG, BRIDGE, INCOMING, QUEUE_RESULT, STATUS, Applied, CallEvent, CallStore
from callflow.stats import (
    ABANDONED,
    BRIDGED_RESULTS,
    MAX_QUEUE_TIME_S,
    OVER_MAX,
    OVER_MEASURED,
    QUEUE_RESULT_OUTCOMES,
    QUEUE_TIME_TOLERANCE_S,
    outcome_of,
    parse_queue_time_s,
    should_announce,
)
from presence.store import PresenceStore
from wallboard.metrics import Metrics

log = logging.getLogger(__name__)

BASE_PATH = "/twilio/voice/"
MAX_BODY_BYTES = 64 * 1024  # Twilio's voice requests are a few KiB; anything near this is not Twilio
SPOOL_MAX_EVENTS = 10_000  # about an hour of a busy center's call events; memory stays a few MiB
SPOOL_RETRY_S = (0.05, 2.0)
HANDLED_DRAIN_EVERY_S = 1.0
# A webhook waits at most this long for Redis before it spools the event and answers: Twilio gives up after
# 15 s and callers hear silence meanwhile. An event that did reach Redis is harmless to apply again.
REDIS_WAIT_S = 1.0  # first and longest pause between replay attempts while Redis is away
END_STATUSES = frozenset({"completed", "busy", "failed", "no-answer", "canceled"})
QT_REFUSALS = {
    OVER_MAX: f"over {MAX_QUEUE_TIME_S // 3600} hours, Twilio's longest call",
    OVER_MEASURED: f"more than {QUEUE_TIME_TOLERANCE_S} s beyond the time since the call entered",
}
SID_RE = re.compile(r"[A-Za-z0-9]{2,64}")
MAX_SHOWN = 64  # characters of a caller-supplied value that are logged or kept as free text
_UNAVAILABLE = (RedisConnectionError, RedisTimeoutError, OSError)  # worth spooling; other errors are bugs

Handler = Callable[[web.Request, MultiDictProxy[str]], Awaitable[str]]


class _Reject(Exception):
    """A refused request: HTTP status, the webhook_rejected reason, and the English text/plain body."""

    def __init__(self, status: int, reason: str, text: str) -> None:
        super().__init__(text)
        self.status, self.reason, self.text = status, reason, text


class CallFlow:
    """The six /twilio/voice/ routes, the call-event spool and its replay task."""

    def __init__(
        self,
        *,
        config: Config,
        redis: Redis,
        presence: PresenceStore,
        clock: Clock,
        auth_token: str | None,
        public_url: str | None,
        insecure: bool,
        metrics: Metrics,
        staffed: Callable[[str], bool],
    ) -> None:
        # Without a token the webhooks stay off (503) but presence and the wallboard still serve: a fresh
        # `callboard serve` must start, and unsigned calls must never be accepted by accident.
        self.disabled_reason: str | None = None
        if not auth_token and not insecure:
            self.disabled_reason = ("Twilio webhooks are disabled: TWILIO_AUTH_TOKEN is not set on this server "
                                    "(use --insecure-dev for local development only).")
            log.error("TWILIO_AUTH_TOKEN is not set: the Twilio webhooks answer 503 and no calls are counted; "
                      "set it (or use --insecure-dev for local development only)")
        self.config = config
        self.clock = clock
        self.metrics = metrics
        self.staffed = staffed
        self.public_url = public_url.rstrip("/") if public_url else None
        self.auth_token = None if insecure else auth_token
        self.store = CallStore(redis, presence, config)
        self._spool: deque[CallEvent] = deque()
        # Set by the app (customers/lookup.py): start the directory lookup of a caller; never awaited here.
        self.caller_lookup: Callable[..., None] | None = None
        # set by softphone/ in conference mode: (request, agent id, agent leg CallSid, queue) -> TwiML
        self.take_next_in_conference: Callable[[web.Request, str, str, str], Awaitable[str]] | None = None
        # set by softphone/ in conference mode: (request, caller CallSid, offer id, agent, queue) -> TwiML
        self.connect_in_conference: Callable[[web.Request, str, str, str, str], Awaitable[str]] | None = None
        self._spool_wakeup = asyncio.Event()
        if self.auth_token is None and insecure:
            log.warning("INSECURE: Twilio webhook signatures are NOT checked (--insecure-dev); anyone who can "
                        "reach /twilio/voice/ can fake calls and statistics. Never run this in production.")
        if not self.public_url:
            log.warning("PUBLIC_URL is not set: Twilio signatures are checked against the URL this server sees "
                        "and TwiML links use it; behind a proxy or tunnel set PUBLIC_URL to the URL Twilio calls")

    # -- composition -------------------------------------------------------------------------------------

    def routes(self) -> list[web.RouteDef]:
        views: dict[str, Handler] = {
            "incoming": self._incoming, "wait": self._wait, "agent": self._agent,
            "bridge": self._bridge, "queue-result": self._queue_result, "status": self._status,
        }
        from callflow import connect  # routing's connect and dial-result (offer mode); imports this module

        return [web.post(BASE_PATH + name, self._view(name, handler)) for name, handler in views.items()] \
            + connect.routes(self)

    def webhook(self, name: str, handler: Handler) -> web.RouteDef:
        """Another room's Twilio webhook under /twilio/voice/<name>, with this route's checks (softphone/)."""
        return web.post(BASE_PATH + name, self._view(name, handler))

    async def record(self, event: CallEvent) -> Applied | None:
        """Apply a call event for another room (the softphone's conference legs), spooled like ours."""
        return await self._record(event)

    @property
    def spool_depth(self) -> int:
        return len(self._spool)

    @property
    def redis_ok(self) -> bool:
        """False while call events wait in the spool for Redis (/readyz reports not ready)."""
        return not self._spool

    # -- the common path of every route -----------------------------------------------------------------

    def _view(self, route: str, handler: Handler) -> Callable[[web.Request], Awaitable[web.Response]]:
        duration = self.metrics.webhook_duration.labels(route)  # once: labels() takes a lock and a lookup

        async def view(request: web.Request) -> web.Response:
            started = time.perf_counter()
            try:
                if self.disabled_reason:
                    raise _Reject(503, "not_configured", self.disabled_reason)
                form = await _read_form(request)
                self._check_signature(request, form)
                body = await handler(request, form)
                return web.Response(text=body, content_type="text/xml")
            except _Reject as reject:
                self.metrics.webhook_rejected.labels(reject.reason).inc()
                log.info("twilio %s refused (%s): %s", route, reject.reason, reject.text)
                return web.Response(status=reject.status, text=reject.text, content_type="text/plain")
            except Exception:
                log.exception("twilio %s failed", route)
                return web.Response(status=500, text="Internal error; see the callboard log.",
                                    content_type="text/plain")
            finally:
                duration.observe(time.perf_counter() - started)

        view.__name__ = f"twilio_{route.replace('-', '_')}"
        return view

    def _check_signature(self, request: web.Request, form: MultiDictProxy[str]) -> None:
        if self.auth_token is None:
            return
        url = signature.signed_url(self.public_url, request.raw_path, str(request.url))
        reason = signature.check_signature(self.auth_token, url, form, request.headers.get(signature.SIGNATURE_HEADER),
                                           request.headers.get(signature.SETTINGS_HEADER))
        if reason == signature.MISSING_SIGNATURE:
            raise _Reject(403, reason, "Missing X-Twilio-Signature header.")
        if reason is not None:
            raise _Reject(403, reason, "Invalid Twilio signature.")

    def _url(self, request: web.Request, route: str, **query: str | int | None) -> str:
        base = self.public_url or str(request.url.origin())
        params = {k: v for k, v in query.items() if v is not None}
        return f"{base}{BASE_PATH}{route}" + (f"?{urlencode(params)}" if params else "")

    def _voice(self, queue: Queue) -> twiml.Voice:
        center = self.config.center
        return twiml.Voice(queue.language or center.language, queue.voice or center.voice)

    def _queue_named(self, name: str | None, form: MultiDictProxy[str]) -> Queue:
        return (self.config.queue(name) if name else None) or self.config.queue_for_number(form.get("To", ""))

    # -- the routes -----------------------------------------------------------------------------------------

    async def _incoming(self, request: web.Request, form: MultiDictProxy[str]) -> str:
        sid = _sid(form, "CallSid")
        if self.caller_lookup is not None:
            self.caller_lookup(sid, form.get("From", ""))
        queue = self.config.queue_for_number(form.get("To", ""))
        staffed = self.staffed(queue.name)
        applied = await self._record(CallEvent(INCOMING, self.clock.now_ms(), {
            "sid": sid, "queue": queue.name, "from": form.get("From", ""), "to": form.get("To", ""),
            "staffed": staffed}))
        # A repeated request gets the decision made the first time (when Redis could tell us).
        mode = applied.mode if applied and applied.mode else ("enqueued" if staffed else "unstaffed")
        voice = self._voice(queue)
        if mode == "unstaffed":
            return twiml.unstaffed(voice)
        _wake_router(request)
        return twiml.enqueue(queue.name, queue.greeting, voice,
                             action_url=self._url(request, "queue-result", queue=queue.name),
                             wait_url=self._url(request, "wait", queue=queue.name))

    async def _wait(self, request: web.Request, form: MultiDictProxy[str]) -> str:
        """Polled for every waiting caller: no Redis at all; the last announcement rides in the URL."""
        queue = self._queue_named(request.query.get("queue"), form)
        every_s = int(queue.position_every_s or self.config.center.position_every_s)
        position = _int(form.get("QueuePosition"))
        queue_time_s = parse_queue_time_s(form.get("QueueTime"))
        last_position, last_at = _int(request.query.get("pos")), _int(request.query.get("at"))
        announce = should_announce(position, last_position, queue_time_s, last_at, every_s)
        if announce:
            last_position, last_at = position, queue_time_s if queue_time_s is not None else 0
        next_url = self._url(request, "wait", queue=queue.name, pos=last_position, at=last_at)
        return twiml.wait(position, announce, self._voice(queue),
                          queue.hold_music_url or self.config.center.hold_music_url, every_s, next_url)

    async def _agent(self, request: web.Request, form: MultiDictProxy[str]) -> str:
        caller = form.get("From", "")
        agent = self.config.agent(caller[len("client:"):]) if caller.startswith("client:") else None
        if agent is None:
            self.metrics.webhook_rejected.labels("unknown_agent").inc()
            log.warning("agent call from %r refused: not a configured agent (From must be client:<agent id>)",
                        _shown(caller))
            return twiml.spoken_error("This phone is not registered as a call center agent. Goodbye.")
        sid = _sid(form, "CallSid")
        to = form.get("To", "").strip()
        if E164_RE.match(to):
            caller_id = self.config.center.caller_id
            if not caller_id:
                log.warning("agent %s dialled %s but center.caller_id is not configured", agent.id, to)
                return twiml.spoken_error("Outbound calls are not set up: the center has no caller ID. Goodbye.")
            await self._record(CallEvent(AGENT_LEG, self.clock.now_ms(), {"sid": sid, "agent": agent.id, "outbound": to}))
            return twiml.dial_number(to, caller_id)
        name = form.get("queue") or (agent.queues[0] if agent.queues else None)
        if name is None or self.config.queue(name) is None or name not in agent.queues:
            log.warning("agent %s asked for queue %r, which is not one of theirs", agent.id, _shown(name))
            return twiml.spoken_error("That queue is not one of yours. Goodbye.")
        await self._record(CallEvent(AGENT_LEG, self.clock.now_ms(), {"sid": sid, "agent": agent.id}))
        if self.take_next_in_conference is not None:  # [center] bridge = "conference" (softphone/)
            return await self.take_next_in_conference(request, agent.id, sid, name)
        return twiml.dial_queue(name, self._url(request, "bridge", queue=name, agent=agent.id))

    async def _bridge(self, request: web.Request, form: MultiDictProxy[str]) -> str:
        if request.query.get("offer"):  # routing: the agent's <Client url>, requested on the agent's leg
            from callflow import connect

            return await connect.offer_bridge(self, request, form)
        sid = _sid(form, "CallSid")
        agent_id = request.query.get("agent")
        queue = self._queue_named(request.query.get("queue"), form)
        if self.caller_lookup is not None:  # the incoming was missed (another outage, a lost request)
            self.caller_lookup(sid, form.get("From", ""), only_if_missing=True)
        await self._record(CallEvent(BRIDGE, self.clock.now_ms(), {
            "sid": sid, "leg": _optional_sid(form, "DequeingCallSid"), "queue": queue.name,
            "agent": agent_id if agent_id and self.config.agent(agent_id) else None,
            "qt_s": parse_queue_time_s(form.get("QueueTime")), "from": form.get("From", ""), "to": form.get("To", "")}))
        return twiml.empty()

    async def _queue_result(self, request: web.Request, form: MultiDictProxy[str]) -> str:
        sid = _sid(form, "CallSid")
        result = form.get("QueueResult", "")
        outcome = outcome_of(result)
        if result not in QUEUE_RESULT_OUTCOMES and result not in BRIDGED_RESULTS:
            log.warning("unknown QueueResult %r for call %s: counted as outcome 'other'", _shown(result), sid)
        queue = self._queue_named(request.query.get("queue"), form)
        if result == "redirected" and await _routing_holds(request, sid):
            # routing dequeued this caller for an accepted offer (docs/routing.md): it has not left the
            # queue for the statistics, and a dial that does not connect puts it back in its place
            return twiml.empty()
        await self._record(CallEvent(QUEUE_RESULT, self.clock.now_ms(), {
            "sid": sid, "result": result[:MAX_SHOWN] or "(none)", "outcome": outcome, "queue": queue.name,
            "qt_s": parse_queue_time_s(form.get("QueueTime")), "from": form.get("From", ""), "to": form.get("To", "")}))
        _wake_router(request)  # routing: a caller who left cancels its offer now
        return twiml.queue_result(outcome, self._voice(queue))

    async def _status(self, request: web.Request, form: MultiDictProxy[str]) -> str:
        sid = _sid(form, "CallSid")
        if form.get("CallStatus", "") in END_STATUSES:
            caller = form.get("From", "")
            agent = caller[len("client:"):] if caller.startswith("client:") else None
            await self._record(CallEvent(STATUS, self.clock.now_ms(), {
                "sid": sid, "agent": agent if agent and self.config.agent(agent) else None}))
            _wake_router(request)  # routing: a hung-up caller's offer ends now, a freed agent is offered
        return twiml.empty()

    # -- events, metrics, spool -------------------------------------------------------------------------

    async def _record(self, event: CallEvent) -> Applied | None:
        """Apply now, or spool when Redis is away (or events already wait: order is kept). None if spooled."""
        if self._spool:
            self._spool_put(event)
            return None
        try:
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for wraps the call in a task of its own (a
            # second task and loop turn per webhook) and can swallow a cancellation that lands as it completes
            async with asyncio.timeout(REDIS_WAIT_S):
                applied = await self.store.apply(event)
        except (*_UNAVAILABLE, TimeoutError) as exc:
            self.metrics.redis_errors.inc()
            log.warning("Redis unavailable (%s): spooling call events", exc or type(exc).__name__)
            self._spool_put(event)
            return None
        except RedisError:
            self.metrics.redis_errors.inc()
            log.exception("call event %s failed in Redis and is dropped", event.kind)
            return None
        self._observe(event, applied)
        return applied

    def _spool_put(self, event: CallEvent) -> None:
        if len(self._spool) >= SPOOL_MAX_EVENTS:
            self._spool.popleft()  # the oldest goes; a later event of that call adopts it (see lua.adopt)
            self.metrics.spool_dropped.inc()
        self._spool.append(event)
        self.metrics.spool_depth.set(len(self._spool))
        self._spool_wakeup.set()

    async def run_spool(self) -> None:
        """Background task: apply spooled events in order once Redis answers again.

        While idle it also observes, about once a second, the handle times that presence scripts finalized
        (see drain_handled).
        """
        pause = SPOOL_RETRY_S[0]
        while True:
            if not self._spool:
                self._spool_wakeup.clear()
                try:
                    # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancellation
                    # that lands as the inner wait completes, and this loop would then never stop.
                    async with asyncio.timeout(HANDLED_DRAIN_EVERY_S):
                        await self._spool_wakeup.wait()
                except TimeoutError:
                    try:
                        await self.drain_handled()
                    except _UNAVAILABLE:
                        self.metrics.redis_errors.inc()
                continue
            event = self._spool[0]
            try:
                applied = await self.store.apply(event)
            except _UNAVAILABLE:
                self.metrics.redis_errors.inc()
                await asyncio.sleep(pause)
                pause = min(pause * 2, SPOOL_RETRY_S[1])
                continue
            except RedisError:
                self.metrics.redis_errors.inc()
                log.exception("spooled call event %s failed in Redis and is dropped", event.kind)
                applied = None
            pause = SPOOL_RETRY_S[0]
            if self._spool and self._spool[0] is event:
                self._spool.popleft()
            self.metrics.spool_depth.set(len(self._spool))
            if applied is not None:
                self._observe(event, applied)
            if not self._spool:
                log.info("call event spool drained; Redis is back")

    async def drain_handled(self, batch: int = 500) -> int:
        """Observe call_handle for calls finalized inside presence scripts (a wrap-up ended in a sweep).

        Those scripts cannot return to us, so they leave "<queue>\t<ms>" in a list; LPOP hands each item to
        exactly one instance, which keeps the per-process counters summable.
        """
        items = await self.store.redis.lpop(keys.HANDLED_OBSERVATIONS, batch) or []
        for item in items:
            queue, _, handle_ms = (item.decode() if isinstance(item, bytes) else item).partition("\t")
            if self.config.queue(queue) is not None and handle_ms.isdigit():
                self.metrics.call_handle.labels(queue).observe(int(handle_ms) / 1000)
        return len(items)

    def _observe(self, event: CallEvent, applied: Applied) -> None:
        """Metrics, only for what the Lua says it counted just now (exactly once per call and outcome)."""
        m = self.metrics
        if applied.counted and applied.queue:
            queue = applied.queue
            if applied.qt_refused:
                log.warning("call %s: QueueTime=%s s is beyond bounds (%s); counted the measured queue time "
                            "%s instead", event.fields.get("sid"), applied.qt_given_s,
                            QT_REFUSALS.get(applied.qt_refused, applied.qt_refused),
                            "(unknown)" if applied.qt_ms is None else f"{applied.qt_ms / 1000:g} s")
            # An unknown wait (None) is counted as answered / abandoned but never observed as a wait.
            if event.kind == INCOMING and applied.mode == "enqueued":
                m.calls_entered.labels(queue).inc()
            elif event.kind == BRIDGE:
                m.calls_answered.labels(queue).inc()
                if applied.qt_ms is not None:
                    m.queue_wait.labels(queue, "answered").observe(applied.qt_ms / 1000)
            elif event.kind in (QUEUE_RESULT, STATUS) and applied.outcome:  # STATUS: a dequeued caller's end
                if applied.outcome == ABANDONED:
                    m.calls_abandoned.labels(queue).inc()
                if applied.qt_ms is not None:
                    m.queue_wait.labels(queue, applied.outcome).observe(applied.qt_ms / 1000)
        for queue, handle_ms in applied.handled:
            m.call_handle.labels(queue).observe(handle_ms / 1000)


async def _read_form(request: web.Request) -> MultiDictProxy[str]:
    """The form body, at most MAX_BODY_BYTES, as a MultiDict (the signature covers repeated keys)."""
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise _Reject(413, "too_large", f"Request body is larger than {MAX_BODY_BYTES // 1024} KiB.")
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = await request.content.read(16 * 1024)
        if not chunk:
            break
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise _Reject(413, "too_large", f"Request body is larger than {MAX_BODY_BYTES // 1024} KiB.")
        chunks.append(chunk)
    ctype = request.content_type
    if chunks and ctype not in ("application/x-www-form-urlencoded", "application/octet-stream"):
        raise _Reject(400, "bad_request", "Expected a form-encoded body (application/x-www-form-urlencoded).")
    try:
        text = b"".join(chunks).decode("utf-8")
    except UnicodeDecodeError:
        raise _Reject(400, "bad_request", "Request body is not valid UTF-8.") from None
    return MultiDictProxy(MultiDict(parse_qsl(text, keep_blank_values=True)))


def _wake_router(request: web.Request) -> None:
    """Routing (offer mode): tick now rather than at the next tick. No Services: a call-flow-only app."""
    services = request.app.get(SERVICES)
    if services is not None and services.routing is not None:
        services.routing.wake()


async def _routing_holds(request: web.Request, call_sid: str) -> bool:
    """Routing (offer mode): is this caller being connected for an accepted offer?"""
    services = request.app.get(SERVICES)
    if services is None or services.routing is None:
        return False
    return await services.routing.holds(call_sid)


def _sid(form: MultiDictProxy[str], name: str) -> str:
    """A required Twilio SID parameter: letters and digits, at most 64 (Twilio's are 34); it becomes a Redis key."""
    value = _optional_sid(form, name)
    if value is None:
        raise _Reject(400, "bad_request", f"Missing required parameter {name}.")
    return value


def _optional_sid(form: MultiDictProxy[str], name: str) -> str | None:
    value = form.get(name, "").strip()
    if not value:
        return None
    if not SID_RE.fullmatch(value):
        raise _Reject(400, "bad_request", f"Parameter {name} is not a Twilio SID (letters and digits, at most 64).")
    return value


def _int(value: str | None) -> int | None:
    """A small integer parameter (a queue position, seconds), or None when absent or absurd."""
    if value is None or len(value) > 12:
        return None
    try:
        return int(value)
    except ValueError:
        return None


def _shown(value: str | None) -> str | None:
    """A caller-supplied value as logged: cut short, so one request cannot write megabytes of log."""
    return value if value is None or len(value) <= MAX_SHOWN else value[:MAX_SHOWN] + "..."
