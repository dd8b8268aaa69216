"""App composition: build the services of one instance, wire the routes, and run their lifecycle."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from aiohttp import web
from redis.asyncio import BlockingConnectionPool, Redis
from redis.exceptions import RedisError

from callboard import __version__
from callboard import web as web_ground
from callboard.clock import Clock
from callboard.config import Config
from callboard.services import SERVICES, Services, Settings
from callflow.flow import CallFlow
from callflow.live import QueueStatsMirror
from callflow.lua import CALL_HANDLED_HOOK
from callflow.windows import day_key
from customers.app import setup as customers_setup
from presence.batcher import Batcher
from presence.liveness import Liveness, dedicated_client
from presence.rules import Settings as RuleSettings
from presence.store import PresenceStore
from records import api as records_api
from records.recorder import Recorder
from store import runtime as store_runtime
from store.db import Database
from wallboard import api
from wallboard.follower import Follower
from wallboard.hub import Hub
from wallboard.metrics import Metrics
from wallboard.mirror import Mirror
from wallboard.runtime import LoopWatch
from wallboard.shared_gauges import shared_state_collector
from webhooks import api as webhooks_api
from webhooks.config import resolve_secrets
from webhooks.outbox import Outbox

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024  # webhooks and API bodies are small; bigger ones are refused with 413


def build_services(config: Config, settings: Settings, redis: Redis, *, clock: Clock | None = None,
                   instance_id: str | None = None, db: Database | None = None) -> Services:
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
                        sweep_every_s=server.sweep_every_s, instance_id=instance_id, on_redis_error=redis_error,
                        lease_redis=dedicated_client(redis))
    mirror = Mirror(config, QueueStatsMirror(config, clock))
    hub = Hub(mirror, clock, tick_ms=server.tick_ms)
    hub.on_sent = metrics.ws_messages_sent.inc
    follower = Follower(redis, presence, mirror, hub, clock, on_redis_error=redis_error)
    callflow = CallFlow(config=config, redis=redis, presence=presence, clock=clock,
                        auth_token=settings.twilio_auth_token, public_url=settings.public_url,
                        insecure=settings.insecure_dev, metrics=metrics, staffed=mirror.staffed)
    services = Services(config=config, settings=settings, clock=clock, redis=redis, metrics=metrics, presence=presence,
                        batcher=batcher, liveness=liveness, mirror=mirror, hub=hub, follower=follower, callflow=callflow)
    services.db = db or Database.from_url(settings.database_url, data_dir=settings.data_dir)
    from routing.twilio_rest import TwilioRest  # no network until a first REST call

    services.twilio_rest = TwilioRest.from_settings(settings)
    # routing: in offer mode callboard offers callers to agents itself; with the conference bridge a transfer
    # to an agent is an offer too, so pull mode gets a router that only keeps those (it proposes nothing)
    if config.routing.mode == "offer" or config.center.bridge == "conference":
        from routing.service import build_router

        services.routing = build_router(services)
    services.outbox = _outbox(config, redis, metrics)
    services.recorder = Recorder(redis, services.db, config, consumer=liveness.instance_id, outbox=services.outbox,
                                 registry=metrics.registry)
    metrics.build_info.labels(__version__, liveness.instance_id).set(1)
    metrics.add_shared_state(shared_state_collector(services))
    return services


def build_app(config: Config, settings: Settings, redis: Redis, *, clock: Clock | None = None,
              instance_id: str | None = None, close_redis: bool = False, db: Database | None = None) -> web.Application:
    """The aiohttp app of one instance. Background tasks start and stop with the app (cleanup_ctx).

    A `db` passed in belongs to the caller (tests share one); otherwise the app makes and disposes its own.
    """
    services = build_services(config, settings, redis, clock=clock, instance_id=instance_id, db=db)
    app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[web_ground.refusals])
    app[SERVICES] = services
    app.add_routes(api.routes())
    app.add_routes(services.callflow.routes())
    app.add_routes(webhooks_api.routes())
    app.add_routes(records_api.routes())
    customers_setup(app)
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
        await _start_database(s)
        s.loop_watch = LoopWatch(s.metrics)
        s.start(s.loop_watch.run(), "loop-watch")
        if s.routing is not None:
            s.start(s.routing.run(), "router")
        if s.outbox is not None:
            s.start(s.outbox.run(), "webhooks")
        s.start(s.recorder.run(), "recorder")
        try:
            await asyncio.wait_for(s.follower.caught_up.wait(), timeout=5.0)
            s.hub.reset_published()
        except TimeoutError:
            log.warning("change stream not readable yet; serving and catching up in the background")
        yield
        await s.drain()
        await s.stop_tasks()
        await s.batcher.stop()
        await s.liveness.aclose()
        if s.routing is not None:
            await s.routing.close()
        if s.twilio_rest is not None:
            await s.twilio_rest.close()
        if close_redis:
            await s.redis.aclose()
        if db is None and s.db is not None:
            await s.db.dispose()

    app.cleanup_ctx.append(lifecycle)
    app.on_shutdown.append(_on_shutdown)
    return app


async def _on_shutdown(app: web.Application) -> None:
    await app[SERVICES].drain()


async def _start_database(s: Services) -> None:
    """Migrations at start-up (never blocking the real-time service for long) and the SQLite-sharing check."""
    db = s.db
    if db is None:
        return
    if not db.migrated and not await store_runtime.migrate_at_start(db):
        s.start(store_runtime.migrate_until_done(db), "database-migrations")

    def report(problem: str | None) -> None:
        s.database_misconfigured = problem

    s.start(store_runtime.watch_sqlite_sharing(db, s.redis, s.clock, s.config.server.lease_renew_s, report),
            "sqlite-sharing-check")


async def _pending_gauge(s: Services) -> None:
    while True:
        s.metrics.presence_pending.set(s.batcher.pending)
        s.metrics.spool_depth.set(s.callflow.spool_depth)
        s.metrics.follower_lag.set(s.follower.lag_s())
        await asyncio.sleep(1.0)


def _outbox(config: Config, redis: Redis, metrics: Metrics) -> Outbox | None:
    """The webhook outbox when [[webhooks]] are configured (secrets from the environment, see webhooks/config.py)."""
    if not config.webhooks:
        return None
    secrets, problems = resolve_secrets(config.webhooks)
    return Outbox(redis, config.webhooks, secrets, secret_problems=problems, registry=metrics.registry)


def redis_client(url: str) -> Redis:
    """A pooled asyncio client with timeouts, so an outage turns into errors instead of hangs."""
    pool = BlockingConnectionPool.from_url(url, max_connections=100, timeout=5, socket_connect_timeout=2,
                                           socket_timeout=10, health_check_interval=15)
    return Redis(connection_pool=pool, retry_on_timeout=False)


