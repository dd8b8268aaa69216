"""Instance leases, connection registry and the sweeper.

Each instance renews a lease in Redis and registers every websocket connection under it. Every instance
also runs the sweeper: it reaps the connections of instances whose lease expired (a crash, a partition,
SIGKILL) and fires due presence timers (disconnect grace, end of wrap-up). The sweep is one Lua call and
idempotent, so any number of instances may run it at the same time.

The connect storm (10,000 sockets in seconds) must never cost an instance its lease:
- the lease is renewed on a Redis connection of its own (`dedicated_client`), never queued behind client
  traffic in the shared pool (a dry pool once failed the renewal and the instance reaped itself);
- registrations and deregistrations are group-committed: while one Lua call is in flight the next ones
  wait in order and go as one call (at most REGISTER_BATCH each), so 10,000 connects are tens of calls;
- an instance never reaps itself: it sweeps only while the lease it last wrote is still valid at the time
  it passes to the sweep (the sweep reaps leases scored below that time), so whatever starves its
  renewals, its own connections are reaped only by another instance that really saw it gone.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable

from redis.asyncio import ConnectionPool, Redis
from redis.exceptions import RedisError

from callboard.clock import Clock
from presence import lua
from presence.rules import CONNECT, DISCONNECT, Intent
from presence.store import Addressed, PresenceStore

log = logging.getLogger(__name__)

# Connection intents per Lua call: 500 keeps one call around a few milliseconds of Redis time, so a storm
# never blocks Redis for the other instances, while 10,000 connects still take only 20 calls.
REGISTER_BATCH = 500


def dedicated_client(redis: Redis) -> Redis:
    """A client with its own single connection to the same server as `redis` (for the lease alone)."""
    shared = redis.connection_pool
    kwargs = {k: v for k, v in shared.connection_kwargs.items() if k != "retry"}
    pool = ConnectionPool(connection_class=shared.connection_class, max_connections=1, **kwargs)
    return Redis(connection_pool=pool)


class Liveness:
    """This instance's lease, its live connections, and the shared sweeper loop."""

    def __init__(
        self,
        store: PresenceStore,
        clock: Clock,
        *,
        renew_s: float = 5.0,
        ttl_s: float = 15.0,
        sweep_every_s: float = 1.0,
        instance_id: str | None = None,
        on_redis_error: Callable[[BaseException], None] | None = None,
        lease_redis: Redis | None = None,
    ) -> None:
        self.store = store
        self.clock = clock
        self.renew_s = renew_s
        self.ttl_s = ttl_s
        self.sweep_every_s = sweep_every_s
        self.instance_id = instance_id or f"cb-{secrets.token_hex(4)}"
        self.on_redis_error = on_redis_error
        self.connections: dict[str, str] = {}  # connection id -> agent id, the truth this instance re-registers
        self.lease_held = False
        self.reregistrations = 0
        self.frozen = False  # set by Services.crash() in tests: behave like a killed process, write nothing
        # Writes that failed while Redis was away; replayed (idempotently) at the next successful renewal.
        self._needs_sync = False
        self._failed_disconnects: dict[str, str] = {}
        # The lease's own connection (see the module docstring); without one the shared client is used.
        self.lease_redis = lease_redis
        self._lease_script = lease_redis.register_script(lua.HEARTBEAT) if lease_redis is not None else None
        self.lease_expires_ms = 0  # the expiry this instance last wrote successfully
        # After a drain's release no renewal may write the lease again, not even one already in flight: the
        # lock orders them, `released` ends the renewals (the heartbeat task runs until shutdown stops it).
        self.released = False
        self._lease_lock = asyncio.Lock()
        self.sweeps_skipped = 0  # sweeps left out because the own lease was not confirmed (never reap oneself)
        self._queued: list[tuple[Addressed, asyncio.Future[str | None]]] = []
        self._committing: asyncio.Task[None] | None = None

    async def renew(self) -> None:
        """Renew the lease; when it was missing, register every live connection again (idempotent)."""
        async with self._lease_lock:
            if not self.released:
                await self._renew()

    async def _renew(self) -> None:
        expires_ms = self.clock.now_ms() + int(self.ttl_s * 1000)
        if self._lease_script is not None:
            created = bool(await self._lease_script(args=[self.instance_id, expires_ms]))
        else:
            created = await self.store.heartbeat(self.instance_id, expires_ms)
        self.lease_expires_ms = max(self.lease_expires_ms, expires_ms)
        self.lease_held = True
        if (created or self._needs_sync) and (self.connections or self._failed_disconnects):
            self.reregistrations += 1
            log.warning("registering %d live connections of %s again (lease %s)", len(self.connections),
                        self.instance_id, "was missing" if created else "kept; earlier writes failed")
            items = [self._addressed(conn, agent, CONNECT) for conn, agent in self.connections.items()]
            items += [self._addressed(conn, agent, DISCONNECT) for conn, agent in self._failed_disconnects.items()]
            for start in range(0, len(items), REGISTER_BATCH):
                await self.store.apply(items[start:start + REGISTER_BATCH], self.clock.now_ms())
        self._needs_sync = False
        self._failed_disconnects.clear()

    async def register(self, conn_id: str, agent_id: str) -> str | None:
        """Record a new agent connection (offline -> available, or back from a disconnect-away).

        If Redis is unreachable the connection is still kept and registered at the next renewal.
        """
        self.connections[conn_id] = agent_id
        if self.frozen:
            return None
        try:
            return await self._commit(self._addressed(conn_id, agent_id, CONNECT))
        except (RedisError, OSError):
            self._needs_sync = True
            raise

    async def deregister(self, conn_id: str) -> None:
        """An ordinary disconnect: the grace period starts when it was the agent's last connection."""
        agent_id = self.connections.pop(conn_id, None)
        if agent_id is None or self.frozen:
            return
        try:
            await self._commit(self._addressed(conn_id, agent_id, DISCONNECT))
        except (RedisError, OSError):
            self._needs_sync = True
            self._failed_disconnects[conn_id] = agent_id
            raise

    async def _commit(self, item: Addressed) -> str | None:
        """Queue one connection intent for the group commit and wait for its own result."""
        future: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        self._queued.append((item, future))
        if self._committing is None or self._committing.done():
            self._committing = asyncio.create_task(self._commit_queued(), name=f"register-{self.instance_id}")
        return await future

    async def _commit_queued(self) -> None:
        """Apply queued intents in arrival order, REGISTER_BATCH per Lua call, one call in flight."""
        while self._queued:
            batch = self._queued[:REGISTER_BATCH]
            del self._queued[:REGISTER_BATCH]
            try:
                results = await self.store.apply([item for item, _ in batch], self.clock.now_ms())
            except (RedisError, OSError) as exc:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            except BaseException as exc:  # cancelled (shutdown) or a bug: nobody may wait forever
                for _, future in batch + self._queued:
                    if not future.done():
                        future.set_exception(exc if isinstance(exc, Exception) else RedisError("registration cancelled"))
                self._queued.clear()
                raise
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)

    async def sweep_once(self) -> tuple[int, int, int] | None:
        """One sweep, unless this instance's own lease is not confirmed for the time it would sweep at.

        The sweep reaps every lease scored below the `now` it is given; the lease this instance last wrote
        is scored `lease_expires_ms`. Sweeping only while that is in the future makes reaping oneself
        impossible, however long the renewals were starved. Returns None when skipped.
        """
        now_ms = self.clock.now_ms()
        if self.lease_expires_ms <= now_ms:
            self.sweeps_skipped += 1
            if self.sweeps_skipped == 1 or self.sweeps_skipped % 100 == 0:
                log.warning("not sweeping: the lease of %s is not confirmed (renewal late); an instance never "
                            "reaps itself (%d sweeps skipped)", self.instance_id, self.sweeps_skipped)
            return None
        return await self.store.sweep(now_ms)

    async def aclose(self) -> None:
        if self.lease_redis is not None:
            await self.lease_redis.aclose()

    async def release(self) -> None:
        """After a drain: give up the lease so nobody has to wait for it to expire; it is never renewed again."""
        async with self._lease_lock:
            self.released = True
            self.lease_held = False
            await self.store.release(self.instance_id, self.clock.now_ms())

    async def run_heartbeat(self) -> None:
        while True:
            try:
                await self.renew()
            except (RedisError, OSError) as exc:
                self._redis_error("lease renewal", exc)
            await asyncio.sleep(self.renew_s)

    async def run_sweeper(self) -> None:
        while True:
            try:
                result = await self.sweep_once()
                reaped, conns = result[:2] if result is not None else (0, 0)
                if reaped:
                    log.warning("reaped %d expired instance(s) and %d of their connections", reaped, conns)
            except (RedisError, OSError) as exc:
                self._redis_error("sweep", exc)
            await asyncio.sleep(self.sweep_every_s)

    def _redis_error(self, what: str, exc: BaseException) -> None:
        if self.on_redis_error:
            self.on_redis_error(exc)
        log.warning("%s failed: %s", what, exc)

    def _addressed(self, conn_id: str, agent_id: str, kind: str) -> Addressed:
        return Addressed(agent_id, Intent(kind=kind), conn=conn_id, instance=self.instance_id)
