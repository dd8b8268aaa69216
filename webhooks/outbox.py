"""Outgoing webhooks: a durable outbox in Redis, one worker per endpoint, Standard Webhooks signatures.

Why Redis and not SQL: Redis is already the service's durable engine (AOF on; it holds today's statistics),
every instance reaches it, and each step of a delivery (enqueue once, claim, settle, retry) is one Lua call
there — so a delivery never waits on the database and a database outage does not stop the CRM's feed of
agent states. A restart loses nothing: everything lives in Redis, nothing in the process.

Promises:
- At least once, made exactly-once-per-id for the receiver: a message's webhook-id is derived from what it
  is about (webhooks/messages.py), every retry sends the same id and the same body bytes; receivers dedupe.
- A 2xx is delivered; anything else (an error status, a refused connection, a timeout) is retried on the
  schedule of messages.RETRY_SCHEDULE_S, then `failed` (listed and retried by a person through the API).
- One dead endpoint never delays another: each endpoint has its own due set and its own worker with at
  most INFLIGHT attempts; a black-holed endpoint only ever ties up its own attempts, each bounded by
  ATTEMPT_TIMEOUT_S.
- An instance that dies mid-attempt leaves the delivery leased, not lost: after CLAIM_LEASE_S it is due
  again and any instance retries it (same id).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import Any

import aiohttp
from prometheus_client import CollectorRegistry, Counter, Gauge
from redis.asyncio import Redis
from redis.exceptions import RedisError

from callboard import keys
from callboard.services import raise_if_cancel_lost
from webhooks import lua
from webhooks.config import Endpoint
from webhooks.messages import body, message_id, retry_delay_s, signed_headers

log = logging.getLogger("callboard.webhooks")

ATTEMPT_TIMEOUT_S = 10.0  # one HTTP attempt, connect to last byte; a slow receiver is a failed attempt
CLAIM_LEASE_S = 60.0  # longer than an attempt: a claimed delivery comes due again only if its instance died
INFLIGHT = 4  # attempts at once per endpoint: enough for a backlog to drain, bounded for a dead endpoint
POLL_S = 1.0  # how often an idle worker looks for deliveries enqueued by other instances
KEEP_DELIVERED_S = 7 * 86400  # a settled delivery stays readable in the log this long
KEEP_FAILED_S = 30 * 86400
ERROR_TEXT_MAX = 300
RESULTS = ("delivered", "retry", "failed")


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


class Outbox:
    """Enqueue events for the configured endpoints; deliver them from run() (a background task)."""

    def __init__(self, redis: Redis, endpoints: tuple[Endpoint, ...], secrets: Mapping[str, str], *,
                 registry: CollectorRegistry | None = None, secret_problems: Mapping[str, str] | None = None) -> None:
        self.redis = redis
        self.endpoints = endpoints
        self.secrets = dict(secrets)
        self.secret_problems = dict(secret_problems or {})
        for problem in self.secret_problems.values():
            log.error("%s: its deliveries wait until the secret is set and callboard restarted", problem)
        self._enqueue = redis.register_script(lua.ENQUEUE)
        self._claim = redis.register_script(lua.CLAIM)
        self._settle = redis.register_script(lua.SETTLE)
        self._retry = redis.register_script(lua.RETRY)
        self._wake = {e.name: asyncio.Event() for e in endpoints}
        self.deliveries_total = Counter("callboard_webhook_deliveries", "Outgoing webhook attempts by result "
                                        "(delivered, retry: failed and rescheduled, failed: gave up)",
                                        ["endpoint", "result"], registry=registry)
        self.backlog = Gauge("callboard_webhook_backlog", "Deliveries waiting for an attempt, per endpoint "
                             "(shared state: take max across instances)", ["endpoint"], registry=registry)
        for e in endpoints:
            self.backlog.labels(e.name)
            for result in RESULTS:
                self.deliveries_total.labels(e.name, result)

    def problems(self) -> list[str]:
        """For /readyz: endpoints that cannot deliver (their deliveries wait)."""
        return list(self.secret_problems.values())

    def subscribers(self, event_type: str) -> list[str]:
        return [e.name for e in self.endpoints if event_type in e.events]

    async def enqueue(self, event_type: str, key: str, at_ms: int, data: Any) -> int:
        """Queue one event for every endpoint subscribed to it; the same (type, key) twice is queued once."""
        names = self.subscribers(event_type)
        if not names:
            return 0
        msg = message_id(event_type, key)
        created = int(await self._enqueue(args=[int(time.time() * 1000), msg, event_type, body(event_type, at_ms, data),
                                                *names]))
        for name in names:
            self._wake[name].set()
        return created

    async def run(self) -> None:
        """Deliver forever: one worker per endpoint (cancel to stop)."""
        if not self.endpoints:
            return
        connector = aiohttp.TCPConnector(limit=0, limit_per_host=INFLIGHT * 2)
        async with aiohttp.ClientSession(connector=connector) as session:
            async with asyncio.TaskGroup() as group:
                for endpoint in self.endpoints:
                    if endpoint.name not in self.secrets:
                        continue  # no secret: nothing is sent unsigned; its deliveries wait (see problems())
                    group.create_task(self._worker(endpoint, session), name=f"webhooks-{endpoint.name}")
                group.create_task(self._housekeeping(), name="webhooks-housekeeping")

    async def _housekeeping(self) -> None:
        while True:
            try:
                await self.trim_log()
            except (RedisError, OSError) as exc:
                log.warning("webhooks: could not trim the delivery log (%s)", exc)
            await asyncio.sleep(3600)

    async def _worker(self, endpoint: Endpoint, session: aiohttp.ClientSession) -> None:
        slots = asyncio.Semaphore(INFLIGHT)
        attempts: set[asyncio.Task[None]] = set()
        wake = self._wake[endpoint.name]
        pause = 0.5
        try:
            while True:
                raise_if_cancel_lost()  # redis-py can swallow the group's one cancel (callboard.services)
                await slots.acquire()
                try:
                    now_ms = int(time.time() * 1000)
                    claimed = await self._claim(args=[endpoint.name, now_ms, int(CLAIM_LEASE_S * 1000)])
                    self.backlog.labels(endpoint.name).set(await self.redis.zcard(keys.webhook_due(endpoint.name)))
                    pause = 0.5
                except (RedisError, OSError) as exc:
                    slots.release()
                    log.warning("webhooks %s: Redis unavailable (%s); retrying", endpoint.name, exc)
                    await asyncio.sleep(pause)
                    pause = min(pause * 2, 10.0)
                    continue
                delivery_id = _text(claimed[0])
                if not delivery_id:
                    slots.release()
                    next_ms = _text(claimed[1])
                    wait_s = POLL_S if not next_ms else min(max(int(float(next_ms)) - now_ms, 0) / 1000, POLL_S)
                    wake.clear()
                    try:
                        async with asyncio.timeout(max(wait_s, 0.01)):
                            await wake.wait()
                    except TimeoutError:
                        pass
                    continue
                item = {"id": delivery_id, "msg": _text(claimed[1]), "type": _text(claimed[2]),
                        "body": _text(claimed[3]), "fails": int(claimed[4] or 0)}
                task = asyncio.create_task(self._attempt(endpoint, session, item))
                attempts.add(task)

                def done(t: asyncio.Task[None]) -> None:
                    attempts.discard(t)
                    slots.release()

                task.add_done_callback(done)
        finally:
            for task in attempts:
                task.cancel()

    async def _attempt(self, endpoint: Endpoint, session: aiohttp.ClientSession, item: dict[str, Any]) -> None:
        status, error = 0, ""
        headers = signed_headers(self.secrets[endpoint.name], item["msg"], item["body"], time.time())
        try:
            async with session.post(endpoint.url, data=item["body"].encode(), headers=headers, allow_redirects=False,
                                    timeout=aiohttp.ClientTimeout(total=ATTEMPT_TIMEOUT_S)) as resp:
                status = resp.status
                if not 200 <= status < 300:
                    excerpt = (await resp.content.read(200)).decode("utf-8", "replace")
                    error = f"HTTP {status}: {excerpt}".strip()
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            error = f"{type(exc).__name__}: {exc}".strip(": ") or type(exc).__name__
        ok = 200 <= status < 300
        delay = None if ok else retry_delay_s(item["fails"] + 1)
        keep_s = KEEP_DELIVERED_S if ok else KEEP_FAILED_S
        try:
            outcome = _text(await self._settle(args=[
                item["id"], int(time.time() * 1000), 1 if ok else 0, status, error[:ERROR_TEXT_MAX],
                -1 if delay is None else int(delay * 1000), int(keep_s * 1000)]))
        except (RedisError, OSError) as exc:
            # The lease runs out and the delivery is attempted again (same id): at least once, never lost.
            log.warning("webhooks %s: could not record the attempt of %s (%s)", endpoint.name, item["id"], exc)
            return
        if ok:
            self.deliveries_total.labels(endpoint.name, "delivered").inc()
        elif outcome == "failed":
            self.deliveries_total.labels(endpoint.name, "failed").inc()
            log.error("webhooks %s: gave up on %s (%s) after its retries: %s", endpoint.name, item["id"], item["type"], error)
        else:
            self.deliveries_total.labels(endpoint.name, "retry").inc()
            log.info("webhooks %s: %s failed (%s); retry in %ss", endpoint.name, item["id"], error, delay)

    # -- the deliveries API ---------------------------------------------------------------------------------

    async def deliveries(self, status: str | None, limit: int) -> list[dict[str, Any]]:
        """Newest first; status None, `pending`, `delivered` or `failed`."""
        if status == "failed":
            ids = await self.redis.zrevrange(keys.WEBHOOK_FAILED, 0, limit - 1)
        else:
            ids = await self.redis.zrevrange(keys.WEBHOOK_LOG, 0, max(limit * 20, 1000) - 1)
        pipe = self.redis.pipeline(transaction=False)
        for delivery_id in ids:
            pipe.hgetall(keys.webhook_delivery(_text(delivery_id)))
        out: list[dict[str, Any]] = []
        for delivery_id, raw in zip(ids, await pipe.execute(), strict=True):
            if not raw:
                continue  # expired out of the log
            d = {_text(k): _text(v) for k, v in raw.items()}
            if status and d.get("status") != status:
                continue
            out.append(public_delivery(_text(delivery_id), d))
            if len(out) >= limit:
                break
        return out

    async def delivery(self, delivery_id: str) -> dict[str, Any] | None:
        raw = await self.redis.hgetall(keys.webhook_delivery(delivery_id))
        return public_delivery(delivery_id, {_text(k): _text(v) for k, v in raw.items()}) if raw else None

    async def retry(self, delivery_id: str) -> str:
        """'' when there is no such delivery; else its status before the retry."""
        before = _text(await self._retry(args=[delivery_id, int(time.time() * 1000)]))
        endpoint = delivery_id.partition(":")[0]
        if endpoint in self._wake:
            self._wake[endpoint].set()
        return before

    async def trim_log(self) -> None:
        """Forget log entries older than the longest a delivery is kept."""
        cutoff = int((time.time() - KEEP_FAILED_S) * 1000)
        await self.redis.zremrangebyscore(keys.WEBHOOK_LOG, "-inf", cutoff)
        await self.redis.zremrangebyscore(keys.WEBHOOK_FAILED, "-inf", cutoff)


def _int_or_none(v: str | None) -> int | None:
    return int(float(v)) if v not in (None, "") else None


def public_delivery(delivery_id: str, d: Mapping[str, str]) -> dict[str, Any]:
    return {
        "id": delivery_id, "endpoint": d.get("endpoint"), "webhook_id": d.get("msg"), "type": d.get("type"),
        "status": d.get("status"), "attempts": _int_or_none(d.get("attempts")) or 0,
        "created_ms": _int_or_none(d.get("created_ms")), "next_attempt_ms": _int_or_none(d.get("next_ms")),
        "last_attempt_ms": _int_or_none(d.get("last_ms")), "last_status": _int_or_none(d.get("last_status")),
        "last_error": d.get("last_error") or None, "delivered_ms": _int_or_none(d.get("delivered_ms")),
    }
