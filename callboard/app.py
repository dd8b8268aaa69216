"""App composition: build the services of one instance, wire the routes, and run their lifecycle."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from aiohttp import web
from redis.asyncio import BlockingConnectionPool, Redis
from redis.exceptions import RedisError

from callboard import __version__
from callboard.clock import Clock
from callboard.config import Config
from callboard.services import SERVICES, Services, Settings
from callflow.flow import CallFlow
from callflow.live import QueueStatsMirror
from callflow.lua import CALL_HANDLED_HOOK
from callflow.windows import day_key
from presence.batcher import Batcher
from presence.liveness import Liveness
from presence.rules import Settings as RuleSettings
from presence.store import PresenceStore
from wallboard import api
from wallboard.follower import Follower
from wallboard.hub import Hub
from wallboard.metrics import Metrics
from wallboard.mirror import Mirror
from wallboard.shared_gauges import shared_state_collector

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024  # webhooks and API bodies are small; bigger ones are refused with 413


def build_services(config: Config, settings: Settings, redis: Redis, *, clock: Clock | None = None,
                   instance_id: str | None = None) -> Services:
    clock = clock or Clock()
    center = config.center
    metrics = Metrics(queues=[q.name for q in config.queues], sl_thresholds_s=[center.sl_threshold_s])
    presence = PresenceStore(
        redis,
        RuleSettings(wrap_up_s=center.wrap_up_s, disconnect_grace_s=center.disconnect_grace_s),
        day_key=lambda now_ms: day_key(now_ms, center.timezone, center.reset_time),
        stream_max_len=config.server.stream_max_len,
        handled_hook=CALL_HANDLED_HOOK,
    )
    server = config.server

    def on_flush(size: int, seconds: float) -> None:
        metrics.presence_batch_size.observe(size)
        metrics.presence_flush.observe(seconds)

    def redis_error(exc: BaseException) -> None:
        metrics.redis_errors.inc()

    batcher = Batcher(presence, clock, max_ops_per_s=server.redis_max_ops_per_s, on_flush=on_flush, on_error=redis_error)
    liveness = Liveness(presence, clock, renew_s=server.lease_renew_s, ttl_s=server.lease_ttl_s,
                        sweep_every_s=server.sweep_every_s, instance_id=instance_id, on_redis_error=redis_error)
    mirror = Mirror(config, QueueStatsMirror(config, clock))
    hub = Hub(mirror, clock, tick_ms=server.tick_ms)
    follower = Follower(redis, presence, mirror, hub, clock, on_redis_error=redis_error)
    callflow = CallFlow(config=config, redis=redis, presence=presence, clock=clock,
                        auth_token=settings.twilio_auth_token, public_url=settings.public_url,
                        insecure=settings.insecure_dev, metrics=metrics, staffed=mirror.staffed)
    services = Services(config=config, settings=settings, clock=clock, redis=redis, metrics=metrics, presence=presence,
                        batcher=batcher, liveness=liveness, mirror=mirror, hub=hub, follower=follower, callflow=callflow)
    from routing.twilio_rest import TwilioRest  # no network until a first REST call

    services.twilio_rest = TwilioRest.from_settings(settings)
    if config.routing.mode == "offer":  # routing: callboard offers callers to agents itself
        from routing.service import build_router

        services.routing = build_router(services)
    metrics.build_info.labels(__version__, liveness.instance_id).set(1)
    metrics.add_shared_state(shared_state_collector(services))
    return services


def build_app(config: Config, settings: Settings, redis: Redis, *, clock: Clock | None = None,
              instance_id: str | None = None, close_redis: bool = False) -> web.Application:
    """The aiohttp app of one instance. Background tasks start and stop with the app (cleanup_ctx)."""
    services = build_services(config, settings, redis, clock=clock, instance_id=instance_id)
    app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[api.refusals])
    app[SERVICES] = services
    app.add_routes(api.routes())
    app.add_routes(services.callflow.routes())
    import softphone

    softphone.install(app, services)  # call controls and the conference bridge (docs/softphone.md)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        s = app[SERVICES]
        s.batcher.start()
        try:
            await s.liveness.renew()
        except (RedisError, OSError) as exc:
            log.warning("Redis not reachable at start-up (%s); retrying in the background", exc)
        s.start(s.follower.run(), "follower")
        s.start(s.liveness.run_heartbeat(), "heartbeat")
        s.start(s.liveness.run_sweeper(), "sweeper")
        s.start(s.hub.run_queue_ticker(), "queue-ticker")
        s.start(s.callflow.run_spool(), "callflow-spool")
        s.start(_pending_gauge(s), "pending-gauge")
        if s.routing is not None:
            s.start(s.routing.run(), "router")
        try:
            await asyncio.wait_for(s.follower.caught_up.wait(), timeout=5.0)
            s.hub.reset_published()
        except TimeoutError:
            log.warning("change stream not readable yet; serving and catching up in the background")
        yield
        await s.drain()
        await s.stop_tasks()
        await s.batcher.stop()
        if s.routing is not None:
            await s.routing.close()
        if s.twilio_rest is not None:
            await s.twilio_rest.close()
        if close_redis:
            await s.redis.aclose()

    app.cleanup_ctx.append(lifecycle)
    app.on_shutdown.append(_on_shutdown)
    return app


async def _on_shutdown(app: web.Application) -> None:
    await app[SERVICES].drain()


async def _pending_gauge(s: Services) -> None:
    while True:
        s.metrics.presence_pending.set(s.batcher.pending)
        s.metrics.spool_depth.set(s.callflow.spool_depth)
        s.metrics.follower_lag.set(s.follower.lag_s())
        await asyncio.sleep(1.0)


def redis_client(url: str) -> Redis:
    """A pooled asyncio client with timeouts, so an outage turns into errors instead of hangs."""
    pool = BlockingConnectionPool.from_url(url, max_connections=100, timeout=5, socket_connect_timeout=2,
                                           socket_timeout=10, health_check_interval=15)
    return Redis(connection_pool=pool, retry_on_timeout=False)


