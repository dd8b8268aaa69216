"""The services of one instance and their deployment settings: what every view reaches as request.app[SERVICES].

This module imports no views, so any room (wallboard/, callflow/, ...) can depend on it without a circle
through the app composition in callboard/app.py.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
from collections.abc import Coroutine, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from aiohttp import web
from redis.asyncio import Redis
from redis.exceptions import RedisError

from callboard.auth import VerifiedTokens
from callboard.clock import Clock
from callboard.config import Config
from wallboard.const import CLOSE_RESTART

if TYPE_CHECKING:
    from callflow.flow import CallFlow
    from presence.batcher import Batcher
    from presence.liveness import Liveness
    from presence.store import PresenceStore
    from routing.router import Router
    from routing.twilio_rest import TwilioRest
    from store.db import Database
    from wallboard.follower import Follower
    from wallboard.hub import Hub
    from wallboard.metrics import Metrics
    from wallboard.mirror import Mirror

log = logging.getLogger("callboard.app")


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
    database_url: str | None = None  # None: SQLite at <data_dir>/callboard.db (store/db.py)
    twilio_api_url: str = "https://api.twilio.com"  # a Twilio-compatible API or the emulator (routing)

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
            "database_url": env.get("DATABASE_URL") or None,
            "twilio_api_url": (env.get("TWILIO_API_URL") or "https://api.twilio.com").rstrip("/"),
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
    outbox: Any = None  # webhooks.outbox.Outbox when [[webhooks]] are configured
    recorder: Any = None  # records.recorder.Recorder when the SQL store is there
    sessions: set[Any] = field(default_factory=set)
    draining: bool = False
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)
    db: Database | None = None
    # Set while several live instances share this Redis and this one keeps its records in SQLite.
    database_misconfigured: str | None = None
    routing: Router | None = None  # offer mode, or the conference bridge (transfer offers): routing/router.py
    twilio_rest: TwilioRest | None = None  # the instance's one Twilio REST client (routing/twilio_rest.py)
    loop_watch: Any = None  # wallboard.runtime.LoopWatch, while the app runs
    pinger: Any = None  # wallboard.wsconn.Pinger: the heartbeat of every websocket (made at the first one)
    _tokens: Any = field(default=None, repr=False)

    @property
    def tokens(self) -> VerifiedTokens:
        """Token checks for websocket hellos, remembering the tokens already verified (see callboard/auth.py)."""
        if self._tokens is None:
            self._tokens = VerifiedTokens(self.settings.secret)
        return self._tokens

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
        if self.database_misconfigured:
            problems.append(self.database_misconfigured)
        return problems

    def start(self, coro: Coroutine[Any, Any, Any], name: str) -> None:
        task = asyncio.create_task(_logged(coro, name), name=name)
        self.tasks.append(task)

    async def stop_tasks(self) -> None:
        """Cancel the background tasks; a task that ignores a cancellation is cancelled again, and named."""
        pending = await cancel_and_wait(self.tasks)
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


async def cancel_and_wait(tasks: Iterable[asyncio.Task[Any]], *, rounds: int = 5,
                          wait_s: float = 2.0) -> set[asyncio.Task[Any]]:
    """Cancel tasks and wait for them to end, cancelling again those that go on; returns any still running.

    One cancel is not always enough on Python 3.11: asyncio.wait_for returns the awaited result instead of
    raising when the cancellation arrives in the loop iteration that completes it, so the cancellation is
    lost (CPython gh-86296, fixed in 3.12). redis-py awaits every send through wait_for when the connection
    has a socket timeout (callboard's pool sets one, redis-py 8 sets one by default), so a loop around
    Redis commands can miss the first cancel and go on with its next turn.
    """
    pending = {t for t in tasks if not t.done()}
    for _ in range(rounds):
        if not pending:
            break
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=wait_s)
    return pending


def raise_if_cancel_lost() -> None:
    """At the top of a loop around Redis commands: end the task if a cancellation was lost (see cancel_and_wait).

    Cancelling again does not reach a child of an asyncio.TaskGroup whose parent is already being cancelled
    (the group cancels its children once), so such a loop must notice by itself: a lost cancel leaves the
    task's cancellation count above zero.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


async def _logged(coro: Coroutine[Any, Any, Any], name: str) -> None:
    try:
        await coro
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("background task %s died", name)
        raise


SERVICES = web.AppKey("services", Services)
