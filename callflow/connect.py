"""The webhooks of an accepted offer (routing, offer mode): connect, the agent's bridge, and dial-result.

After routing dequeues an accepted caller through Twilio's REST API, Twilio requests `connect` for that
caller; it answers `<Dial action=dial-result><Client url=bridge?offer=...>agent<Parameter offer_id/></Dial>`.
When the agent's softphone answers, Twilio requests the Client's url on the agent's leg (CallSid = the
agent's leg, ParentCallSid = the caller): that is the bridge (answered, on-call, pop), the same call event
as a pulled caller's. When the dial ends Twilio requests dial-result: connected -> the agent's leg ended
(wrap-up) and the caller hangs up; not connected -> the caller goes back to its queue with `<Enqueue>`. Its
place is kept: the waiting set still holds it at its first entered_ms, and no second `incoming` counts it.

These views go through CallFlow's common path (signature, body limit, spool), like the other six.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from aiohttp import web
from multidict import MultiDictProxy
from redis.exceptions import RedisError

from callboard.services import SERVICES
from callflow import twiml
from callflow.events import BRIDGE, STATUS, CallEvent
from callflow.stats import parse_queue_time_s

if TYPE_CHECKING:
    from callflow.flow import CallFlow

log = logging.getLogger(__name__)

RING_S = 20  # how long the agent's softphone rings after Accept; the SDK answers at once, so this is slack
CONNECTED_STATUSES = frozenset({"completed", "answered"})


def routes(flow: CallFlow) -> list[web.RouteDef]:
    from callflow.flow import BASE_PATH

    async def connect(request: web.Request, form: MultiDictProxy[str]) -> str:
        return await _connect(flow, request, form)

    async def dial_result(request: web.Request, form: MultiDictProxy[str]) -> str:
        return await _dial_result(flow, request, form)

    return [web.post(BASE_PATH + "connect", flow._view("connect", connect)),
            web.post(BASE_PATH + "dial-result", flow._view("dial-result", dial_result))]


def _offer_query(flow: CallFlow, request: web.Request) -> tuple[str, str, str] | None:
    offer, agent, queue = (request.query.get(k, "") for k in ("offer", "agent", "queue"))
    if not offer or flow.config.agent(agent) is None or flow.config.queue(queue) is None:
        return None
    return offer, agent, queue


async def _connect(flow: CallFlow, request: web.Request, form: MultiDictProxy[str]) -> str:
    from callflow.flow import _sid

    sid = _sid(form, "CallSid")
    found = _offer_query(flow, request)
    if found is None:
        # not a URL routing made: never drop the caller, put them (back) in their queue
        queue = flow._queue_named(request.query.get("queue"), form)
        log.warning("connect for %s with a bad query %r: caller re-enqueued in %s", sid, request.query_string, queue.name)
        return twiml.requeue(queue.name, flow._voice(queue), flow._url(request, "queue-result", queue=queue.name),
                             flow._url(request, "wait", queue=queue.name))
    offer, agent, queue = found
    if flow.connect_in_conference is not None:  # [center] bridge = "conference": softphone/ adds the agent
        return await flow.connect_in_conference(request, sid, offer, agent, queue)
    return twiml.dial_client(agent, offer,
                             bridge_url=flow._url(request, "bridge", queue=queue, agent=agent, offer=offer),
                             action_url=flow._url(request, "dial-result", queue=queue, agent=agent, offer=offer),
                             ring_s=RING_S)


async def offer_bridge(flow: CallFlow, request: web.Request, form: MultiDictProxy[str]) -> str:
    """The agent answered the dial of an accepted offer: the caller is answered (on the agent's leg)."""
    from callflow.flow import _sid

    leg = _sid(form, "CallSid")
    caller = _sid(form, "ParentCallSid")
    found = _offer_query(flow, request)
    queue = flow._queue_named(request.query.get("queue"), form)
    agent = found[1] if found else None
    await flow._record(CallEvent(BRIDGE, flow.clock.now_ms(), {
        "sid": caller, "leg": leg, "queue": queue.name, "agent": agent,
        "qt_s": parse_queue_time_s(form.get("QueueTime")), "from": form.get("From", ""), "to": form.get("To", "")}))
    if found:
        await release_offer(request, found[0], caller, bridged=True)
    return twiml.empty()


async def _dial_result(flow: CallFlow, request: web.Request, form: MultiDictProxy[str]) -> str:
    from callflow.flow import _sid

    sid = _sid(form, "CallSid")
    status = form.get("DialCallStatus", "")
    found = _offer_query(flow, request)
    queue = flow._queue_named(request.query.get("queue"), form)
    if status in CONNECTED_STATUSES:
        leg = form.get("DialCallSid", "")
        if found and leg:  # the agent's leg is over: its call ends, wrap-up starts
            await flow._record(CallEvent(STATUS, flow.clock.now_ms(), {"sid": leg, "agent": found[1]}))
        if found:
            await release_offer(request, found[0], sid, bridged=True)
        return twiml.hangup()
    if found:
        await release_offer(request, found[0], sid, bridged=False)
    if form.get("CallStatus") == "completed":  # the caller hung up while it rang: nothing to re-enqueue
        return twiml.empty()
    log.info("dial to %s for %s ended %r: caller back in queue %s", found[1] if found else "?", sid, status, queue.name)
    return twiml.requeue(queue.name, flow._voice(queue), flow._url(request, "queue-result", queue=queue.name),
                         flow._url(request, "wait", queue=queue.name))


async def release_offer(request: web.Request, offer_id: str, call_sid: str, *, bridged: bool) -> None:
    """Tell the router an accepted offer's caller was bridged (or not); Redis away: its deadline does it."""
    services = request.app.get(SERVICES)
    router = services.routing if services is not None else None
    if router is None:
        return
    try:
        await router.connected(offer_id, call_sid, bridged)
    except (RedisError, OSError) as exc:  # the offer's connect deadline releases it instead
        log.warning("could not release offer %s now (%s); its deadline will", offer_id, exc)
