"""The call controls and the conference bridge: thin views over softphone/rules.py, one Lua step and one Twilio request.

API (bearer tokens): POST /api/calls/{call_sid}/hold | transfer | monitor | hangup | wrap-up, and
GET /api/softphone (what the console needs to draw itself: bridge mode, dispositions).

Twilio webhooks (signed, under /twilio/voice/, through CallFlow.webhook): `conference` (the caller, once
taken by an agent, joins its conference), `conference-events` (the conference's status callback),
`participant` (an added participant's call status: a transfer's second agent, a supervisor), `requeue` and
`requeue-result` (a caller transferred to a queue), `hold-music` (the HoldUrl).

A transfer to an agent is a routing offer (routing/lua.py): made in Redis with the call's `xfer`, answered
on the target's websocket; only its Accept rings the target in (`transfer_accepted`).

Order of the two sides: a control that must be exclusive (a transfer, a claim) is reserved in Redis first
and released if Twilio refuses; a control that only records (hold, monitor, a transfer to a queue) asks
Twilio first and records what Twilio did, so the record never says something happened that did not.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote, urlencode

import msgpack
from aiohttp import web
from multidict import MultiDictProxy
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from callboard import keys
from callboard.auth import AuthRefused, Claims, claims_from_header
from callboard.clock import Clock
from callboard.config import Config
from callflow import twiml as callflow_twiml
from callflow.connect import release_offer
from callflow.events import BRIDGE, QUEUE_RESULT, STATUS, CallEvent
from callflow.flow import BASE_PATH, CallFlow, _sid
from callflow.stats import ABANDONED
from presence.store import PresenceStore
from softphone import lua, rules
from softphone import twiml as sp_twiml
from softphone.rest import RestError, TwilioRest
from softphone.rules import ControlError
from wallboard.messages import WireError, parse_json

log = logging.getLogger(__name__)

JSON_HEADERS = {"Cache-Control": "no-store"}
ANSWERED_STATUSES = frozenset({"in-progress", "answered"})
END_STATUSES = frozenset({"completed", "busy", "failed", "no-answer", "canceled"})
TRANSFER_RING_S = 20  # how long an accepted offer's participant rings; the console answers at once, this is slack
MAX_BODY_BYTES = 16 * 1024
CALL_NOT_IN_PROGRESS = 21220  # Twilio's answer to a Calls update of a call that has ended
# Status callbacks (a participant answered, the holder left the conference) are sent once: Twilio does not
# send one again because callboard answered 500. One that finds Redis away is kept, in order, and applied
# when Redis is back (like callflow's call-event spool); Twilio gets its empty answer at once.
BACKLOG_MAX = 10_000
BACKLOG_RETRY_S = (0.05, 2.0)
_UNAVAILABLE = (RedisConnectionError, RedisTimeoutError, OSError)  # worth waiting for; other errors are bugs
Hook = Callable[[web.Request, MultiDictProxy[str]], Awaitable[str]]


class Controls:
    """The softphone room of one instance."""

    def __init__(self, *, config: Config, redis: Redis, presence: PresenceStore, clock: Clock, flow: CallFlow,
                 rest: TwilioRest, secret: str, public_url: str | None) -> None:
        self.config, self.redis, self.presence, self.clock, self.flow, self.rest = config, redis, presence, clock, flow, rest
        self.secret = secret
        self.public_url = public_url.rstrip("/") if public_url else None
        self._script = redis.register_script(lua.CONTROL)
        self.conference_mode = config.center.bridge == "conference"
        self._backlog: deque[tuple[str, Hook, web.Request, MultiDictProxy[str]]] = deque()
        self._backlog_task: asyncio.Task[None] | None = None
        if self.conference_mode:
            flow.take_next_in_conference = self.take_next
            flow.connect_in_conference = self.connect_offer

    # -- composition -------------------------------------------------------------------------------------

    def routes(self) -> list[web.AbstractRouteDef]:
        api = [web.get("/api/softphone", self.settings_view)]
        for name, handler in (("hold", self.hold), ("transfer", self.transfer), ("monitor", self.monitor),
                              ("hangup", self.hangup), ("wrap-up", self.wrap_up)):
            api.append(web.post(f"/api/calls/{{call_sid}}/{name}", self._api(name, handler)))
        hooks: dict[str, Hook] = {
            "conference": self._conference, "requeue": self._requeue, "hold-music": self._hold_music,
            # status callbacks: their answer is empty TwiML, what matters is that their step happens
            "conference-events": self._kept("conference-events", self._conference_events),
            "participant": self._kept("participant", self._participant),
            "requeue-result": self._kept("requeue-result", self._requeue_result,
                                         callflow_twiml.queue_result(None, callflow_twiml.ENGLISH))}
        return [*api, *(self.flow.webhook(name, handler) for name, handler in hooks.items())]

    # -- status callbacks that outlive a Redis outage -----------------------------------------------------

    def _kept(self, name: str, handler: Hook, answer: str = callflow_twiml.empty()) -> Hook:
        """A status callback whose step waits in the backlog while Redis is away, instead of being lost.
        `answer` is the TwiML Twilio gets meanwhile (what the handler answers whatever its step did)."""
        async def hook(request: web.Request, form: MultiDictProxy[str]) -> str:
            if self._backlog:  # others wait already: this one goes after them (their order is Twilio's)
                self._keep(name, handler, request, form)
                return answer
            try:  # (no overall timeout: it would cut the handler's Twilio requests short, not only Redis)
                return await handler(request, form)
            except _UNAVAILABLE as exc:
                log.warning("twilio %s: Redis unavailable (%s); applied when Redis is back", name,
                            exc or type(exc).__name__)
                self._keep(name, handler, request, form)
                return answer

        return hook

    def _keep(self, name: str, handler: Hook, request: web.Request, form: MultiDictProxy[str]) -> None:
        if len(self._backlog) >= BACKLOG_MAX:
            dropped = self._backlog.popleft()
            log.error("twilio %s callback dropped: %d callbacks already wait for Redis", dropped[0], BACKLOG_MAX)
        self._backlog.append((name, handler, request, form))
        if self._backlog_task is None or self._backlog_task.done():
            self._backlog_task = asyncio.ensure_future(self._drain_backlog())

    async def _drain_backlog(self) -> None:
        """Apply the kept callbacks in order once Redis answers (each step is safe to apply twice)."""
        pause = BACKLOG_RETRY_S[0]
        while self._backlog:
            name, handler, request, form = self._backlog[0]
            try:
                await handler(request, form)
            except _UNAVAILABLE:
                await asyncio.sleep(pause)
                pause = min(pause * 2, BACKLOG_RETRY_S[1])
                continue
            except Exception:  # a boundary: one bad callback must not hold the others back
                log.exception("twilio %s callback failed after Redis came back; dropped", name)
            pause = BACKLOG_RETRY_S[0]
            if self._backlog and self._backlog[0][2] is request:
                self._backlog.popleft()
            if not self._backlog:
                log.info("status callbacks kept during the Redis outage are applied")

    async def close(self) -> None:
        """At shutdown: stop waiting for Redis (what is still kept is lost with the instance; deadlines apply)."""
        if self._backlog_task is not None:
            self._backlog_task.cancel()
            await asyncio.gather(self._backlog_task, return_exceptions=True)
        if self._backlog:
            log.warning("%d status callbacks kept for Redis are lost with this instance", len(self._backlog))

    async def step(self, op: dict[str, Any]) -> dict[str, Any]:
        """One atomic control step in Redis (softphone/lua.py CONTROL)."""
        payload = {k: v for k, v in op.items() if v is not None}
        raw = await self._script(args=[*self.presence.header(self.clock.now_ms()), msgpack.packb(payload)])
        return msgpack.unpackb(raw, raw=False)

    def _base(self, request: web.Request) -> str:
        return self.public_url or str(request.url.origin())

    def _url(self, request: web.Request, route: str, **query: str | None) -> str:
        return _at(self._base(request), route, **query)

    # -- the API views -----------------------------------------------------------------------------------

    def _api(self, name: str, handler: Any) -> Any:
        async def view(request: web.Request) -> web.StreamResponse:
            try:
                claims = self._claims(request)
                call_sid = request.match_info["call_sid"]
                rules.check_call_sid(call_sid)
                body = await _json_body(request)
                answer = await handler(request, claims, call_sid, body)
                return web.json_response({"call_sid": call_sid, **answer}, headers=JSON_HEADERS)
            except ControlError as err:
                out = {"error": str(err), "code": err.code}
                if err.field:
                    out["field"] = err.field
                return web.json_response(out, status=err.status, headers=JSON_HEADERS)
            except RestError as err:
                return web.json_response({"error": str(err), "code": "twilio_error", "twilio_code": err.twilio_code},
                                         status=err.status, headers=JSON_HEADERS)
            except (RedisError, OSError) as exc:
                log.warning("control %s: Redis unavailable (%s)", name, exc)
                return web.json_response({"error": "Redis is unreachable; try again in a moment", "code": "unavailable"},
                                         status=503, headers=JSON_HEADERS)

        view.__name__ = f"control_{name.replace('-', '_')}"
        return view

    def _claims(self, request: web.Request) -> Claims:
        try:
            return claims_from_header(self.secret, request.headers.get("Authorization", ""), ("agent", "supervisor"),
                                      forbidden="a {role} token cannot control calls")
        except AuthRefused as exc:
            raise ControlError(exc.status, exc.code, exc.message) from None

    async def _call(self, call_sid: str) -> dict[str, str]:
        fields = ("mode", "agent", "leg", "conf", "end_ms", "from", "to", "queue", "wq", "hold_since")
        values = await self.redis.hmget(keys.call(call_sid), list(fields))
        call = {f: (v.decode() if isinstance(v, bytes) else v) for f, v in zip(fields, values, strict=True) if v is not None}
        if not call.get("mode"):
            raise ControlError(404, "unknown_call", f"no call {call_sid} in this center")
        return call

    def _may_control(self, claims: Claims, call: dict[str, str]) -> None:
        if claims.role == "supervisor":
            self._in_scope(claims, call)
            return
        if call.get("agent") != claims.sub:
            raise ControlError(403, "not_your_call", "only the agent on this call (or a supervisor) may do that")

    def _in_scope(self, claims: Claims, call: dict[str, str]) -> None:
        """A supervisor token scoped to some queues or teams (callboard token --queues/--teams) controls only those."""
        agent = self.config.agent(call.get("agent", ""))
        if claims.queues is not None and call.get("queue") not in claims.queues:
            raise ControlError(403, "forbidden", "this supervisor token does not cover the call's queue")
        if claims.teams is not None and (agent is None or agent.team not in claims.teams):
            raise ControlError(403, "forbidden", "this supervisor token does not cover the agent's team")

    @staticmethod
    def _live(call: dict[str, str]) -> None:
        if call.get("end_ms"):
            raise ControlError(409, "call_ended", "this call has already ended")

    async def settings_view(self, request: web.Request) -> web.StreamResponse:
        try:
            self._claims(request)
        except ControlError as err:
            return web.json_response({"error": str(err), "code": err.code}, status=err.status)
        c = self.config.center
        return web.json_response({"bridge": c.bridge, "conference_region": c.conference_region,
                                  "dispositions": list(c.dispositions), "monitor_modes": list(rules.MONITOR_MODES),
                                  "conference_controls": sorted(rules.CONFERENCE_ONLY)}, headers=JSON_HEADERS)

    async def hold(self, request: web.Request, claims: Claims, call_sid: str, body: Any) -> dict[str, Any]:
        rules.check_mode("hold", self.config.center.bridge)
        on = rules.hold_on(body)
        call = await self._call(call_sid)
        self._may_control(claims, call)
        self._live(call)
        conference = call.get("conf") or call_sid
        changes: dict[str, Any] = {"hold": on}
        if on:
            changes["hold_url"] = self._url(request, "hold-music")
            changes["hold_method"] = "POST"
        await self.rest.update_participant(conference, call_sid, **changes)
        done = await self.step({"op": "hold", "sid": call_sid, "on": on})
        return {"on": on, "hold_s": done.get("hold_ms", 0) / 1000}

    async def hangup(self, request: web.Request, claims: Claims, call_sid: str, body: Any) -> dict[str, Any]:
        rules.no_fields(body)
        call = await self._call(call_sid)
        self._may_control(claims, call)
        self._live(call)
        await self.rest.complete_call(call_sid)
        return {"status": "completed"}

    async def transfer(self, request: web.Request, claims: Claims, call_sid: str, body: Any) -> dict[str, Any]:
        rules.check_mode("transfer", self.config.center.bridge)
        target = rules.transfer(body, self.config)
        call = await self._call(call_sid)
        self._may_control(claims, call)
        self._live(call)
        holder = call.get("agent")
        if not holder:
            # a caller still waiting for its first agent (a supervisor's token reaches it): nobody would hand
            # it on, an agent would be rung into an empty conference and put on a call nobody is on
            raise ControlError(409, "call_queued", "this call is waiting in a queue; it can be transferred once an "
                                                   "agent has it")
        if target.queue is not None:
            await self.rest.redirect_call(call_sid, self._url(request, "requeue", queue=target.queue, call=call_sid))
            done = await self.step({"op": "requeue", "sid": call_sid, "queue": target.queue, "from": holder})
            if not done.get("ok"):
                raise ControlError(409, done.get("code", "refused"), "the call ended before it could be transferred")
            return {"queue": target.queue, "status": "queued"}
        assert target.agent is not None
        if target.agent == call.get("agent"):
            raise ControlError(400, "same_agent", "that agent already has this call", "agent")
        routing = self.config.routing
        done = await self.step({"op": "transfer_offer", "sid": call_sid, "to": target.agent, "warm": target.warm,
                                "from": holder, "timeout_ms": routing.offer_timeout_s * 1000,
                                "connect_ms": routing.connect_timeout_s * 1000, "base": self._base(request)})
        if not done.get("ok"):
            code = done.get("code", "refused")
            text = {"agent_busy": f"{target.agent} is not available (state: {done.get('state', 'unknown')})",
                    "agent_ringing": f"{target.agent} is being offered another call; try again in a moment",
                    "no_softphone": f"{target.agent}'s console cannot take calls right now (no working softphone)",
                    "transfer_pending": "a transfer of this call is already ringing",
                    "call_queued": "this call is waiting in a queue; it can be transferred once an agent has it",
                    "call_ended": "this call has already ended"}.get(code, "the transfer was refused")
            raise ControlError(409, code, text)
        return {"agent": target.agent, "warm": target.warm, "status": "offered", "offer_id": done["offer_id"],
                "expires_ms": done["expires_ms"]}

    async def transfer_accepted(self, offer_id: str, caller: str, agent: str) -> bool:
        """The target accepted the transfer offer (routing/router.py answer): ring their client into the call's
        conference with the offer id as a custom parameter, so their console answers the call it accepted.
        True when it rings (the offer ended `accepted`)."""
        conf, from_, raw = await self.redis.hmget(keys.call(caller), ["conf", "from", "xfer"])
        xfer = _json_object(raw)
        if xfer.get("offer") != offer_id:
            log.info("transfer offer %s of %s was accepted after it ended; nothing to ring", offer_id, caller)
            return False
        base = str(xfer.get("base") or self.public_url or "")
        try:
            part = await self.rest.add_participant(
                _text(conf) or caller, to=f"{rules.client_identity(agent)}?offer_id={quote(offer_id)}",
                from_=_text(from_) or "callboard", region=self.config.center.conference_region,
                conference_status_callback=_at(base, "conference-events", call=caller),
                status_callback=_at(base, "participant", call=caller, agent=agent, kind="transfer", offer=offer_id),
                timeout=TRANSFER_RING_S, end_conference_on_exit=False, beep="false", label=f"agent:{agent}")
        except RestError as exc:
            log.warning("transfer offer %s: could not ring %s into %s (%s)", offer_id, agent, caller, exc)
            await self._cancel_transfer(caller, offer_id)
            return False
        done = await self.step({"op": "transfer_connecting", "sid": caller, "offer": offer_id, "part": part})
        if not done.get("ok"):  # ended meanwhile (the caller hung up): the participant's own end cleans up
            log.info("transfer offer %s of %s ended while %s was being rung", offer_id, caller, agent)
        return bool(done.get("ok"))

    async def monitor(self, request: web.Request, claims: Claims, call_sid: str, body: Any) -> dict[str, Any]:
        rules.check_mode("monitor", self.config.center.bridge)
        if claims.role != "supervisor":
            raise ControlError(403, "forbidden", "only a supervisor may monitor calls")
        mode = rules.monitor_mode(body)
        call = await self._call(call_sid)
        self._in_scope(claims, call)
        self._live(call)
        options = rules.monitor_options(mode, call.get("leg"))
        part = await self.rest.add_participant(
            call.get("conf") or call_sid, to=rules.supervisor_identity(claims.sub), from_=call.get("from") or "callboard",
            region=self.config.center.conference_region,
            conference_status_callback=self._url(request, "conference-events", call=call_sid),
            status_callback=self._url(request, "participant", call=call_sid, agent=claims.sub, kind="monitor"),
            end_conference_on_exit=False, label=f"supervisor:{claims.sub}", **options)
        await self.step({"op": "monitor", "sid": call_sid, "supervisor": claims.sub, "mode": mode, "part": part})
        return {"mode": mode, "participant": part, **{k: v for k, v in options.items() if k != "beep"}}

    async def wrap_up(self, request: web.Request, claims: Claims, call_sid: str, body: Any) -> dict[str, Any]:
        if claims.role != "agent":
            raise ControlError(403, "forbidden", "only the agent who took the call records its wrap-up")
        disposition, note = rules.wrap_up(body, self.config)
        done = await self.step({"op": "disposition", "sid": call_sid, "agent": claims.sub,
                                "disposition": disposition, "note": note})
        if not done.get("ok"):
            if done.get("code") == "no_call":
                raise ControlError(404, "unknown_call", f"no call {call_sid} in this center")
            raise ControlError(403, "not_your_call", "only an agent who took this call may record its wrap-up")
        return {"disposition": disposition, "note": note}

    # -- conference mode: the agent takes the next caller ------------------------------------------------

    async def take_next(self, request: web.Request, agent: str, leg: str, queue: str) -> str:
        """The agent's softphone asked for the next caller: claim one, bring it into its conference, join it."""
        try:
            done = await self.step({"op": "claim", "queue": queue, "leg": leg})
        except (RedisError, OSError) as exc:  # without Redis nobody can be claimed safely: say so, never hang
            log.warning("agent %s could not take a caller: Redis unavailable (%s)", agent, exc)
            return callflow_twiml.spoken_error("Calls cannot be taken right now. Please try again in a moment.")
        if not done.get("ok"):
            return callflow_twiml.spoken_error(f"No caller is waiting in {queue}. Goodbye.")
        caller = str(done["claimed"])
        try:
            if not done.get("answered"):
                # the answer is counted before the caller moves: Twilio may report the redirect out of the
                # queue (QueueResult redirected) before we get to record it, and the first outcome wins
                await self.flow.record(CallEvent(BRIDGE, self.clock.now_ms(), {
                    "sid": caller, "leg": leg, "queue": queue, "agent": agent}))
            await self.rest.redirect_call(caller, self._url(request, "conference", call=caller))
        except RestError as exc:
            log.warning("could not bring caller %s to agent %s: %s", caller, agent, exc)
            await self.step({"op": "unclaim", "sid": caller, "leg": leg})
            return callflow_twiml.spoken_error("The caller could not be reached. Please try again.")
        if done.get("answered"):
            call = await self._call(caller)
            await self.step({"op": "took_again", "sid": caller, "agent": agent, "leg": leg,
                             "queue": call.get("wq") or queue})
        return sp_twiml.conference(caller, self.config.center.conference_region, end_on_exit=False,
                                   status_url=self._url(request, "conference-events", call=caller), label=f"agent:{agent}")

    # -- conference mode, offer routing: an accepted offer's caller ------------------------------------------

    async def connect_offer(self, request: web.Request, caller: str, offer: str, agent: str, queue: str) -> str:
        """Routing dequeued an accepted caller to `connect`: the caller into its conference, the agent rung in.

        The agent's client is added with the Participants resource; its answer is the bridge (see
        _participant, kind "offer"), so the caller is counted answered only when an agent is really there.
        """
        call = await self._call(caller)
        try:
            # the offer id rides as a custom parameter, so the console answers the call of the offer it accepted
            await self.rest.add_participant(
                caller, to=f"{rules.client_identity(agent)}?offer_id={quote(offer)}", from_=call.get("from") or "callboard",
                region=self.config.center.conference_region,
                conference_status_callback=self._url(request, "conference-events", call=caller),
                status_callback=self._url(request, "participant", call=caller, agent=agent, kind="offer",
                                          offer=offer, queue=queue),
                timeout=TRANSFER_RING_S, end_conference_on_exit=False, beep="false", label=f"agent:{agent}")
        except RestError as exc:
            log.warning("offer %s: could not ring %s into the conference (%s); caller back to %s", offer, agent, exc, queue)
            await release_offer(request, offer, caller, bridged=False)
            return self._requeue_twiml(request, queue, answered=False)
        return sp_twiml.conference(caller, self.config.center.conference_region, end_on_exit=True,
                                   status_url=self._url(request, "conference-events", call=caller),
                                   wait_url=self.config.center.hold_music_url, label="caller")

    async def _offer_participant(self, request: web.Request, caller: str, agent: str, part: str, status: str) -> None:
        offer, queue = request.query.get("offer", ""), request.query.get("queue", "")
        if self.config.queue(queue) is None:
            return
        if status in ANSWERED_STATUSES:
            await self.flow.record(CallEvent(BRIDGE, self.clock.now_ms(), {
                "sid": caller, "leg": part, "queue": queue, "agent": agent}))
            await release_offer(request, offer, caller, bridged=True)
            await self.step({"op": "holder_leg", "sid": caller, "leg": part, "agent": agent})
        elif status in END_STATUSES:
            try:
                call = await self._call(caller)
            except ControlError:  # not a call of ours (expired, or a forged query): nothing to undo
                return
            if _text(await self.redis.hget(keys.agent_leg(part), "caller")) == caller:
                # the agent had the caller (maybe handed it on since by a transfer): their leg is over,
                # wrap-up starts; the caller stays where it is
                await self.flow.record(CallEvent(STATUS, self.clock.now_ms(), {"sid": part, "agent": agent}))
                return
            await release_offer(request, offer, caller, bridged=False)
            if call.get("end_ms"):
                await self._gone_while_ringing(caller, queue, call)
                return
            try:  # the agent never answered: the caller goes back to its queue, keeping its place
                await self.rest.redirect_call(caller, self._url(request, "requeue", queue=queue, call=caller))
            except RestError as exc:
                if exc.twilio_code == CALL_NOT_IN_PROGRESS:  # it hung up; its status callback is still on its way
                    await self._gone_while_ringing(caller, queue, call)
                else:
                    log.warning("offer %s: caller %s could not be put back in %s: %s", offer, caller, queue, exc)

    async def _gone_while_ringing(self, caller: str, queue: str, call: dict[str, str]) -> None:
        """The caller hung up while the offered agent's phone rang: it left the queue unanswered, an abandon.

        Routing's dequeue was not a leaving (no queue-result follows a redirect), so this is the only place
        that can count it; the script counts a call's leaving once, whichever order Twilio's callbacks take.
        """
        await self.flow.record(CallEvent(QUEUE_RESULT, self.clock.now_ms(), {
            "sid": caller, "result": "hangup", "outcome": ABANDONED, "queue": queue, "qt_s": None,
            "from": call.get("from", ""), "to": call.get("to", "")}))

    # -- Twilio webhooks ------------------------------------------------------------------------------------

    async def _conference(self, request: web.Request, form: MultiDictProxy[str]) -> str:
        """The caller's TwiML once an agent took it: into the conference named after its CallSid."""
        caller = _sid(form, "CallSid")
        hold = self.config.center.hold_music_url
        return sp_twiml.conference(caller, self.config.center.conference_region, end_on_exit=True,
                                   status_url=self._url(request, "conference-events", call=caller),
                                   wait_url=hold, label="caller")

    async def _conference_events(self, request: web.Request, form: MultiDictProxy[str]) -> str:
        caller = request.query.get("call") or form.get("FriendlyName", "")
        conf = form.get("ConferenceSid", "")
        event = form.get("StatusCallbackEvent", "")
        if not caller:
            return callflow_twiml.empty()
        if conf and event == "participant-join":  # leave/end events may come from a conference already left
            await self.step({"op": "conference", "sid": caller, "conf": conf})
        if event == "participant-leave":
            await self._owner_left(caller, form.get("CallSid", ""), conf)
        return callflow_twiml.empty()

    async def _owner_left(self, caller: str, leg: str, conf: str) -> None:
        """The agent who holds the call left and nobody takes over: end the caller's call, not leave it alone."""
        done = await self.step({"op": "owner_left", "sid": caller, "leg": leg})
        if done.get("action") == "complete":  # (with a transfer pending it waits: transfer_orphaned, below)
            await self.transfer_orphaned(caller)

    async def transfer_orphaned(self, caller: str) -> None:
        """The caller is alone in its conference (its agent left, no transfer will take it): hang it up."""
        try:
            await self.rest.complete_call(caller)
        except RestError as exc:
            log.info("caller %s already gone when its agent left (%s)", caller, exc)

    async def transfer_stray(self, caller: str, part: str) -> None:
        """A transfer reached its connect deadline after its participant was rung (routing's tick ended it):
        end that call, ringing or answered unbeknown to us (a status callback Twilio could not deliver)."""
        try:
            await self.rest.complete_call(part)
        except RestError as exc:  # already over (21220): nothing to do
            log.info("transfer participant %s of %s already gone at its deadline (%s)", part, caller, exc)

    async def _participant(self, request: web.Request, form: MultiDictProxy[str]) -> str:
        """Call status of a participant we added: a transfer's second agent, or a supervisor."""
        caller, agent, kind = request.query.get("call", ""), request.query.get("agent", ""), request.query.get("kind", "")
        part = _sid(form, "CallSid")
        status = form.get("CallStatus", "")
        if not caller or not agent:
            return callflow_twiml.empty()
        if kind == "offer":
            await self._offer_participant(request, caller, agent, part, status)
            return callflow_twiml.empty()
        if kind == "monitor":
            if status in END_STATUSES:
                await self.step({"op": "monitor_end", "sid": caller, "part": part})
            return callflow_twiml.empty()
        offer = request.query.get("offer", "")
        if kind != "transfer" or not offer:
            return callflow_twiml.empty()
        if status in ANSWERED_STATUSES:
            done = await self.step({"op": "transfer_answered", "sid": caller, "part": part, "agent": agent,
                                    "offer": offer})
            if not done.get("ok"):
                if _text(await self.redis.hget(keys.call(caller), "leg")) == part:
                    return callflow_twiml.empty()  # Twilio said it twice: this leg took the call already
                # the transfer ended first (its connect deadline, the caller leaving): the late answer must
                # not hang on in the call as a stranger; the transfer was already reported as failed
                log.info("transfer %s of %s answered by %s after it ended; removing them", offer, caller, agent)
                try:  # its call, not its participant: Twilio may report the answer before it joins
                    await self.rest.complete_call(part)
                except RestError as exc:
                    log.info("could not remove late participant %s of %s: %s", part, caller, exc)
            elif not done.get("warm") and done.get("prev_leg"):
                # cold: the first agent leaves as soon as the second answers
                try:
                    await self.rest.remove_participant(await self._conference_of(caller), str(done["prev_leg"]))
                except RestError as exc:
                    log.warning("cold transfer of %s: could not remove %s: %s", caller, done.get("prev_agent"), exc)
        elif status in END_STATUSES and not await self._cancel_transfer(caller, offer):
            # not the pending transfer (rung after Accept, never answered): this agent's leg was answered and
            # held the call at some point (maybe handed on since); it ended, as a softphone leg's status
            # would say. For a leg that never took the call this changes nothing (no caller on the leg).
            await self.flow.record(CallEvent(STATUS, self.clock.now_ms(), {"sid": part, "agent": agent}))
        return callflow_twiml.empty()

    async def _cancel_transfer(self, caller: str, offer: str) -> bool:
        """End the pending transfer `offer` of this caller as not connected; False if it is not pending."""
        done = await self.step({"op": "transfer_cancel", "sid": caller, "offer": offer, "reason": "not_connected"})
        if done.get("alone"):
            await self.transfer_orphaned(caller)
        return bool(done.get("ok"))

    async def _conference_of(self, caller: str) -> str:
        conf = await self.redis.hget(keys.call(caller), "conf")
        return conf.decode() if isinstance(conf, bytes) else (conf or caller)

    async def _requeue(self, request: web.Request, form: MultiDictProxy[str]) -> str:
        caller = _sid(form, "CallSid")
        queue = (self.config.queue(request.query.get("queue", "")) or self.config.queues[0]).name
        answered = bool(await self.redis.hexists(keys.call(caller), "ans"))
        return self._requeue_twiml(request, queue, answered=answered)

    def _requeue_twiml(self, request: web.Request, name: str, *, answered: bool) -> str:
        """<Enqueue> again. A caller never answered leaves through queue-result (an abandon counts there);
        an answered one (transferred to a queue) through requeue-result, which counts nothing twice."""
        queue = self.config.queue(name) or self.config.queues[0]
        center = self.config.center
        voice = callflow_twiml.Voice(queue.language or center.language, queue.voice or center.voice)
        action = self._url(request, "requeue-result" if answered else "queue-result", queue=queue.name)
        return sp_twiml.requeue(queue.name, voice, action, self._url(request, "wait", queue=queue.name))

    async def _requeue_result(self, request: web.Request, form: MultiDictProxy[str]) -> str:
        caller = _sid(form, "CallSid")
        queue = request.query.get("queue", "")
        if self.config.queue(queue) is not None:
            await self.step({"op": "left_requeue", "sid": caller, "queue": queue})
        return callflow_twiml.queue_result(None, callflow_twiml.ENGLISH)

    async def _hold_music(self, request: web.Request, form: MultiDictProxy[str]) -> str:
        return sp_twiml.hold_music(self.config.center.hold_music_url)


def _at(base: str, route: str, **query: str | None) -> str:
    """A callback URL under /twilio/voice/ on `base` (PUBLIC_URL, or the origin the request came to)."""
    params = {k: v for k, v in query.items() if v is not None}
    return f"{base.rstrip('/')}{BASE_PATH}{route}" + (f"?{urlencode(params)}" if params else "")


def _text(value: bytes | str | None) -> str:
    return value.decode() if isinstance(value, bytes) else (value or "")


def _json_object(raw: bytes | str | None) -> dict[str, Any]:
    try:
        value = json.loads(raw) if raw else {}
    except (ValueError, UnicodeDecodeError):
        return {}
    return value if isinstance(value, dict) else {}


async def _json_body(request: web.Request) -> Any:
    if request.method != "POST":
        return None
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise ControlError(413, "too_large", f"the body is larger than {MAX_BODY_BYTES // 1024} KiB")
    raw = await request.content.read(MAX_BODY_BYTES + 1)
    if len(raw) > MAX_BODY_BYTES:
        raise ControlError(413, "too_large", f"the body is larger than {MAX_BODY_BYTES // 1024} KiB")
    if not raw.strip():
        return {}
    try:  # the one decoder of client JSON: bounded nesting, English errors (wallboard/messages.py)
        return parse_json(raw)
    except WireError as exc:
        raise ControlError(400, "bad_message", exc.message) from None
