"""App composition: settings from the environment, the services of one instance, and their lifecycle."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web
from redis.asyncio import BlockingConnectionPool, Redis
from redis.exceptions import RedisError

from callboard import __version__
from callboard.clock import Clock
from callboard.config import Config
from callflow.flow import CallFlow
from callflow.live import QueueStatsMirror
from callflow.lua import CALL_HANDLED_HOOK
from callflow.windows import day_key
from presence.batcher import Batcher
from presence.liveness import Liveness
from presence.rules import Settings as RuleSettings
from presence.store import PresenceStore
from wallboard import api
from wallboard.const import CLOSE_RESTART
from wallboard.follower import Follower
from wallboard.hub import Hub
from wallboard.metrics import Metrics
from wallboard.mirror import Mirror
from wallboard.shared_gauges import shared_state_collector

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024  # webhooks and API bodies are small; bigger ones are refused with 413


@dataclass(frozen=True)
class Settings:
    """Deployment settings and secrets; from the environment, never from the config file."""

    host: str = "127.0.0.1"
    port: int = 8080
    redis_url: str | None = None
    public_url: str | None = None
    secret: str = ""
    twilio_auth_token: str | None = None
    twilio_account_sid: str | None = None
    twilio_api_key: str | None = None
    twilio_api_secret: str | None = None
    twilio_twiml_app_sid: str | None = None
    data_dir: Path = Path(".callboard")
    insecure_dev: bool = False

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, **overrides: Any) -> Settings:
        env = dict(os.environ if env is None else env)
        values: dict[str, Any] = {
            "host": env.get("HOST", "127.0.0.1"),
            "port": int(env.get("PORT", "8080")),
            "redis_url": env.get("REDIS_URL") or None,
            "public_url": (env.get("PUBLIC_URL") or "").rstrip("/") or None,
            "secret": env.get("CALLBOARD_SECRET", ""),
            "twilio_auth_token": env.get("TWILIO_AUTH_TOKEN") or None,
            "twilio_account_sid": env.get("TWILIO_ACCOUNT_SID") or None,
            "twilio_api_key": env.get("TWILIO_API_KEY") or None,
            "twilio_api_secret": env.get("TWILIO_API_SECRET") or None,
            "twilio_twiml_app_sid": env.get("TWILIO_TWIML_APP_SID") or None,
            "data_dir": Path(env.get("CALLBOARD_DATA", ".callboard")),
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


def load_or_create_secret(data_dir: Path, name: str = "secret") -> tuple[str, bool]:
    """A random secret kept in the data directory (0600); returns (secret, created)."""
    path = data_dir / name
    if path.exists():
        return path.read_text(encoding="utf-8").strip(), False
    data_dir.mkdir(parents=True, exist_ok=True)
    value = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(value + "\n")
    return value, True


@dataclass
class Services:
    """Everything one instance runs, reachable from views as request.app[SERVICES]."""

    config: Config
    settings: Settings
    clock: Clock
    redis: Redis
    metrics: Metrics
    presence: PresenceStore
    batcher: Batcher
    liveness: Liveness
    mirror: Mirror
    hub: Hub
    follower: Follower
    callflow: CallFlow
    sessions: set[Any] = field(default_factory=set)
    draining: bool = False
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)

    @property
    def secret(self) -> str:
        return self.settings.secret

    def count_redis_error(self, exc: BaseException | None = None) -> None:
        self.metrics.redis_errors.inc()

    def origin_allowed(self, request: web.Request) -> bool:
        """Browsers send Origin on websocket upgrades; refuse foreign pages unless configured."""
        origin = request.headers.get("Origin")
        if not origin:
            return True  # not a browser (simulator, tests, curl): tokens still apply
        if origin in self.config.server.allowed_origins:
            return True
        host = request.headers.get("X-Forwarded-Host", request.host)
        return urlsplit(origin).netloc == host

    def readiness_problems(self) -> list[str]:
        problems = []
        if self.draining:
            problems.append("draining for shutdown")
        if not self.follower.caught_up.is_set():
            problems.append("change stream not caught up (Redis unreachable?)")
        if not self.callflow.redis_ok:
            problems.append(f"Redis unreachable; {self.callflow.spool_depth} call events spooled")
        if not self.liveness.lease_held:
            problems.append("no instance lease yet")
        return problems

    def start(self, coro: Coroutine[Any, Any, Any], name: str) -> None:
        task = asyncio.create_task(_logged(coro, name), name=name)
        self.tasks.append(task)

    async def stop_tasks(self) -> None:
        """Cancel the background tasks; a task that ignores a cancellation is cancelled again, and named."""
        pending = {t for t in self.tasks if not t.done()}
        for _ in range(5):
            if not pending:
                break
            for task in pending:
                task.cancel()
            _, pending = await asyncio.wait(pending, timeout=2.0)
        for task in pending:
            log.error("background task %s did not stop when cancelled", task.get_name())
        for task in self.tasks:
            if task.done() and not task.cancelled() and task.exception() is not None:
                log.error("background task %s had died: %r", task.get_name(), task.exception())
        self.tasks.clear()

    async def drain(self) -> None:
        """Graceful shutdown: close sockets 1012, deregister them as ordinary disconnects, release the lease."""
        if self.draining:
            return
        self.draining = True
        log.info("draining %d websocket(s) for shutdown", len(self.sessions))
        await asyncio.gather(*(s.close(CLOSE_RESTART, "server restart") for s in list(self.sessions)),
                             return_exceptions=True)
        for _ in range(50):  # the handlers' finally blocks deregister; give them a moment
            if not self.liveness.connections:
                break
            await asyncio.sleep(0.02)
        try:
            async with asyncio.timeout(5.0):  # Redis away: the lease then expires by itself, as after a crash
                await self.batcher.drain()
                await self.liveness.release()
        except (RedisError, OSError, TimeoutError) as exc:
            log.warning("could not finish the drain in Redis (%s); the lease will expire instead", exc)

    async def crash(self) -> None:
        """Tests only: die like SIGKILL would — no drain, no deregistration, sockets cut."""
        self.liveness.frozen = True
        await self.stop_tasks()
        await self.batcher.stop()
        for session in list(self.sessions):
            if session.transport is not None:
                session.transport.abort()


async def _logged(coro: Coroutine[Any, Any, Any], name: str) -> None:
    try:
        await coro
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("background task %s died", name)
        raise


SERVICES = web.AppKey("services", Services)


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
        try:
            await asyncio.wait_for(s.follower.caught_up.wait(), timeout=5.0)
            s.hub.reset_published()
        except TimeoutError:
            log.warning("change stream not readable yet; serving and catching up in the background")
        yield
        await s.drain()
        await s.stop_tasks()
        await s.batcher.stop()
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


