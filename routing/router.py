"""The router (offer mode): match waiting callers with available agents, and carry offers to the bridge.

Each instance runs the same loop every `tick_ms` (and at once when woken): read the waiting callers from
Redis, rank agents for them with the pure rules of routing/order.py over the mirror's view of presence,
and hand the proposals to one Lua call (routing/lua.py ROUTE_TICK) that re-checks everything and claims
atomically. Several instances proposing at once is harmless: the script decides, one caller to one agent.

With the conference bridge a transfer to an agent is an offer too (kind "transfer", made by softphone/):
the tick expires and cleans those up, and an accepted one is handed to softphone/ (transfer_accepted) to
ring the agent into the conference. That is why the app starts a router in pull mode as well when the
bridge is "conference": there it proposes nothing (offers_callers is False) and only keeps transfer offers.

An accepted offer is dequeued through Twilio's REST API (routing/twilio_rest.py) in a background task, so
no websocket read and no webhook waits on Twilio. Whatever the REST outcome, Redis hears it: success makes
the offer `connecting`; failure ends it and the caller, who never left its queue, is offered again.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import msgpack
from prometheus_client import Counter, Histogram
from redis.asyncio import Redis
from redis.exceptions import RedisError
from twilio.base.exceptions import TwilioException, TwilioRestException

from callboard import keys
from callboard.clock import Clock
from callboard.config import Config
from presence.store import PresenceStore
from routing import lua
from routing.order import AvailableAgent, Caller, plan
from routing.twilio_rest import RestNotConfigured, RestUnavailable, TwilioRest

log = logging.getLogger(__name__)

LOOKUP_WAIT_MS = 1000  # a caller without its directory lookup yet waits this long before the queue step
WAITING_READ = 200  # callers read per queue per tick: more than any agent pool can take in one tick
OFFER_RESULTS = ("accepted", "rejected", "missed", "cancelled")
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0)


class RoutingMetrics:
    """offers_total{queue,result} and the offer latency histogram, on the instance's registry."""

    def __init__(self, registry: Any) -> None:
        self.offers = Counter("callboard_offers", "Offers that ended, by result", ["queue", "result"],
                              registry=registry)
        self.latency = Histogram("callboard_offer_latency_seconds",
                                 "Caller waiting and agent available -> offer sent", ["queue"],
                                 buckets=LATENCY_BUCKETS, registry=registry)


@dataclass(frozen=True, slots=True)
class Created:
    offer_id: str
    call_sid: str
    agent: str
    queue: str
    latency_ms: int


class Router:
    """One instance's router. `run()` is its background task; views call answer() and connected()."""

    def __init__(self, *, config: Config, redis: Redis, presence: PresenceStore, agents: Callable[[], dict[str, dict[str, Any]]],
                 clock: Clock, rest: TwilioRest, public_url: str | None, registry: Any,
                 on_redis_error: Callable[[BaseException], None] | None = None) -> None:
        self.config = config
        self.settings = config.routing
        self.redis = redis
        self.presence = presence
        self.agents = agents  # the mirror's agent entries (state, since_ms, connections, ...)
        self.clock = clock
        self.rest = rest
        self.public_url = public_url.rstrip("/") if public_url else None
        self.metrics = RoutingMetrics(registry)
        self.on_redis_error = on_redis_error
        self.wakeup = asyncio.Event()
        self._tick = redis.register_script(lua.ROUTE_TICK)
        self._answer = redis.register_script(lua.ANSWER)
        self._dequeued = redis.register_script(lua.DEQUEUED)
        self._connected = redis.register_script(lua.CONNECTED)
        self._no_calls = redis.register_script(lua.NO_CALLS)
        self._settings = msgpack.packb({"timeout_ms": self.settings.offer_timeout_s * 1000,
                                        "connect_ms": self.settings.connect_timeout_s * 1000,
                                        "missed_to_away": self.settings.missed_to_away})
        self._tasks: set[asyncio.Task[Any]] = set()
        self.ticks = 0
        # pull mode with the conference bridge: the router only keeps transfer offers (their expiry and
        # cleanup in each tick) and takes agents' answers; it offers no waiting caller
        self.offers_callers = self.settings.mode == "offer"
        # softphone/ sets this: an accepted transfer offer -> add the agent to the caller's conference
        self.transfer_accepted: Callable[[str, str, str], Awaitable[bool]] | None = None
        # ... and this: a failed transfer left its caller alone (the first agent had left) -> hang it up
        self.transfer_orphaned: Callable[[str], Awaitable[None]] | None = None
        # ... and this: a transfer timed out after its participant was rung -> end that participant's call
        self.transfer_stray: Callable[[str, str], Awaitable[None]] | None = None

    # -- the loop ----------------------------------------------------------------------------------------

    async def run(self) -> None:
        if self.public_url is None and self.offers_callers:
            log.error("offer mode needs PUBLIC_URL (the base URL Twilio calls) to dequeue accepted callers; "
                      "accepted offers will fail and their callers stay queued")
        while True:
            try:
                await self.tick()
            except (RedisError, OSError) as exc:
                if self.on_redis_error:
                    self.on_redis_error(exc)
                log.warning("router tick failed (%s); retrying", exc)
            self.wakeup.clear()
            try:
                async with asyncio.timeout(self.settings.tick_ms / 1000):
                    await self.wakeup.wait()
            except TimeoutError:
                pass

    def wake(self) -> None:
        """Tick now (an agent turned available, a caller arrived)."""
        self.wakeup.set()

    async def waiting_callers(self, now_ms: int) -> list[Caller]:
        """Callers waiting in every queue without an offer, with what the directory lookup said about them."""
        queues = [q.name for q in self.config.queues]
        pipe = self.redis.pipeline(transaction=False)
        for name in queues:
            pipe.zrange(keys.queue_waiting(name), 0, WAITING_READ - 1, withscores=True)
        pipe.hkeys(keys.OFFER_CALLS)
        replies = await pipe.execute()
        reserved = {_text(s) for s in replies[-1]}
        raw: list[tuple[str, str, int]] = []
        for name, members in zip(queues, replies[:-1], strict=True):
            raw.extend((_text(sid), name, int(score)) for sid, score in members if _text(sid) not in reserved)
        if not raw:
            return []
        infos = await self.redis.mget([keys.caller(sid) for sid, _, _ in raw])
        callers = []
        for (sid, queue, entered_ms), info in zip(raw, infos, strict=True):
            owner, team = _owner_of(info)
            if info is None and now_ms - entered_ms < LOOKUP_WAIT_MS:
                continue  # the lookup may still land: give the owner a chance
            if owner and not team and (agent := self.config.agent(owner)) is not None:
                team = agent.team
            callers.append(Caller(sid, queue, entered_ms, owner, team))
        return callers

    def available_agents(self, busy: set[str]) -> list[AvailableAgent]:
        """Agents the mirror shows available and connected, without an open offer."""
        out = []
        for agent_id, entry in self.agents().items():
            if entry.get("state") == "available" and (entry.get("connections") or 0) > 0 and agent_id not in busy \
                    and not entry.get("ringing"):
                agent = self.config.agent(agent_id)
                if agent is not None:
                    out.append(AvailableAgent(agent_id, agent.team, frozenset(agent.queues), entry.get("since_ms") or 0))
        return out

    async def tick(self) -> list[Created]:
        """One pass: end what must end, offer what can be offered. Returns the offers created."""
        self.ticks += 1
        now_ms = self.clock.now_ms()
        callers = await self.waiting_callers(now_ms) if self.offers_callers else []
        proposals: list[dict[str, Any]] = []
        if callers:
            busy = {_text(a) for a in await self.redis.hkeys(keys.OFFER_AGENTS)}
            for caller, candidates in plan(callers, self.available_agents(busy), self.settings.order):
                proposals.append({"call": caller.call_sid, "queue": caller.queue, "cands": candidates})
        raw = await self._tick(args=[*self.presence.header(now_ms), self._settings, msgpack.packb(proposals)])
        out = msgpack.unpackb(raw, raw=False)
        for queue, result in out.get("ended") or []:
            self.metrics.offers.labels(queue, result).inc()
        for call_sid in out.get("orphans") or []:
            self._orphaned(call_sid)
        for call_sid, part in out.get("strays") or []:
            if self.transfer_stray is not None:
                self._spawn(self.transfer_stray(call_sid, part), f"stray-{part}")
        created = []
        for offer_id, call_sid, agent, queue, entered_ms, since_ms in out.get("created") or []:
            latency_ms = max(now_ms - max(int(entered_ms or 0), int(since_ms or 0)), 0)
            self.metrics.latency.labels(queue).observe(latency_ms / 1000)
            created.append(Created(offer_id, call_sid, agent, queue, latency_ms))
        return created

    # -- the agent's answer ------------------------------------------------------------------------------

    async def answer(self, agent: str, offer_id: str, accept: bool) -> str | None:
        """Accept or reject; None when done, else an error code (no_offer). Accept dequeues in the background."""
        now_ms = self.clock.now_ms()
        deadline = now_ms + self.settings.connect_timeout_s * 1000
        reply = await self._answer(args=[*self.presence.header(now_ms), offer_id, agent,
                                         "accept" if accept else "reject", deadline])
        status, *rest = (_text(x) for x in reply)
        if status != "ok":
            return rest[0] if rest else "no_offer"
        call_sid, queue, kind, alone = rest
        if not accept:
            self.metrics.offers.labels(queue, "rejected").inc()
            if alone:
                self._orphaned(call_sid)
            self.wake()
            return None
        if kind == "transfer":
            self._spawn(self._transfer(offer_id, call_sid, queue, agent), f"transfer-{offer_id}")
        else:
            self._spawn(self._dequeue(offer_id, call_sid, queue, agent), f"dequeue-{offer_id}")
        return None

    def _orphaned(self, call_sid: str) -> None:
        if self.transfer_orphaned is not None:
            self._spawn(self.transfer_orphaned(call_sid), f"orphan-{call_sid}")

    async def _transfer(self, offer_id: str, call_sid: str, queue: str, agent: str) -> None:
        """An accepted transfer offer: softphone/ rings the agent into the call's conference. Whatever fails,
        the offer's connect deadline (checked by every instance's tick) ends the transfer."""
        if self.transfer_accepted is None:
            log.error("transfer offer %s accepted but this instance has no conference bridge; its deadline ends it",
                      offer_id)
            return
        ringing = await self.transfer_accepted(offer_id, call_sid, agent)
        self.metrics.offers.labels(queue, "accepted" if ringing else "cancelled").inc()

    def connect_url(self, offer_id: str, agent: str, queue: str) -> str:
        query = urlencode({"offer": offer_id, "agent": agent, "queue": queue})
        return f"{self.public_url}/twilio/voice/connect?{query}"

    async def _dequeue(self, offer_id: str, call_sid: str, queue: str, agent: str) -> None:
        """REST dequeue with retries; its outcome always reaches Redis (or the offer's deadline does)."""
        reason = ""
        try:
            if self.public_url is None:
                raise RestNotConfigured("PUBLIC_URL is not set")
            await self.rest.dequeue(queue, call_sid, self.connect_url(offer_id, agent, queue))
        except RestUnavailable as exc:
            reason = "dequeue_failed"
            log.error("offer %s: caller %s could not be dequeued (%s); offering them again", offer_id, call_sid, exc)
        except TwilioRestException as exc:
            # 404: the caller is no longer in Twilio's queue (hung up meanwhile); the sweep sees it left
            reason = "dequeue_failed"
            log.warning("offer %s: Twilio refused the dequeue of %s (HTTP %s, code %s: %s)", offer_id, call_sid,
                        exc.status, exc.code, exc.msg)
        except (RestNotConfigured, TwilioException) as exc:  # e.g. 401: the credentials are wrong
            reason = "dequeue_failed"
            log.error("offer %s: cannot dequeue %s: %s", offer_id, call_sid, exc)
        except Exception:  # a boundary: whatever went wrong, Redis must hear that this offer failed
            reason = "dequeue_failed"
            log.exception("offer %s: dequeue of %s failed unexpectedly", offer_id, call_sid)
        outcome = "failed" if reason else "ok"
        for attempt in range(5):  # Redis away for a moment: the connect deadline is the last resort
            try:
                await self._dequeued(args=[*self.presence.header(self.clock.now_ms()), offer_id, outcome, reason])
                break
            except (RedisError, OSError) as exc:
                if self.on_redis_error:
                    self.on_redis_error(exc)
                await asyncio.sleep(0.2 * (attempt + 1))
        self.metrics.offers.labels(queue, "accepted" if outcome == "ok" else "cancelled").inc()
        if outcome == "failed":
            self.wake()

    async def connected(self, offer_id: str, call_sid: str, bridged: bool) -> bool:
        """Twilio's side of an accepted offer ended: bridged, or the dial did not connect (requeued)."""
        done = await self._connected(args=[*self.presence.header(self.clock.now_ms()), offer_id,
                                           "bridged" if bridged else "requeued", call_sid])
        if not bridged:
            self.wake()
        return bool(done)

    async def holds(self, call_sid: str) -> bool:
        """Is this caller reserved by an offer (open, or accepted and being connected)? False if unknown."""
        try:
            return bool(await self.redis.hexists(keys.OFFER_CALLS, call_sid))
        except (RedisError, OSError) as exc:
            if self.on_redis_error:
                self.on_redis_error(exc)
            return False

    async def connection_cannot_take_calls(self, agent: str, conn_id: str, instance: str | None) -> None:
        """Register (instance given) or forget (None) a connection that said it cannot take offered calls."""
        await self._no_calls(args=[*self.presence.header(self.clock.now_ms()), agent, conn_id, instance or ""])

    # -- housekeeping ------------------------------------------------------------------------------------

    def _spawn(self, coro: Awaitable[Any], name: str) -> None:
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("routing task %s failed", task.get_name(), exc_info=task.exception())

    async def close(self) -> None:
        """Let dequeues in flight finish (briefly); the REST client is the instance's (closed with it)."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5.0)
        for task in list(self._tasks):
            task.cancel()


def _owner_of(info: bytes | str | None) -> tuple[str | None, str | None]:
    """owner and owner_team from the directory lookup's JSON; anything malformed counts as unknown."""
    if info is None:
        return None, None
    try:
        data = json.loads(info)
    except (ValueError, UnicodeDecodeError):
        return None, None
    if not isinstance(data, dict):
        return None, None
    owner, team = data.get("owner"), data.get("owner_team")
    return (owner if isinstance(owner, str) and owner else None,
            team if isinstance(team, str) and team else None)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
