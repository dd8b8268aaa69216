"""Instance leases, connection registry and the sweeper.

Each instance renews a lease in Redis and registers every websocket connection under it. Every instance
also runs the sweeper: it reaps the connections of instances whose lease expired (a crash, a partition,
SIGKILL) and fires due presence timers (disconnect grace, end of wrap-up). The sweep is one Lua call and
idempotent, so any number of instances may run it at the same time.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable

from redis.exceptions import RedisError

from callboard.clock import Clock
from presence.rules import CONNECT, DISCONNECT, Intent
from presence.store import Addressed, PresenceStore

log = logging.getLogger(__name__)


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

    async def renew(self) -> None:
        """Renew the lease; when it was missing, register every live connection again (idempotent)."""
        created = await self.store.heartbeat(self.instance_id, self.clock.now_ms() + int(self.ttl_s * 1000))
        self.lease_held = True
        if (created or self._needs_sync) and (self.connections or self._failed_disconnects):
            self.reregistrations += 1
            log.warning("registering %d live connections of %s again (lease %s)", len(self.connections),
                        self.instance_id, "was missing" if created else "kept; earlier writes failed")
            items = [self._addressed(conn, agent, CONNECT) for conn, agent in self.connections.items()]
            items += [self._addressed(conn, agent, DISCONNECT) for conn, agent in self._failed_disconnects.items()]
            await self.store.apply(items, self.clock.now_ms())
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
            [error] = await self.store.apply([self._addressed(conn_id, agent_id, CONNECT)], self.clock.now_ms())
        except (RedisError, OSError):
            self._needs_sync = True
            raise
        return error

    async def deregister(self, conn_id: str) -> None:
        """An ordinary disconnect: the grace period starts when it was the agent's last connection."""
        agent_id = self.connections.pop(conn_id, None)
        if agent_id is None or self.frozen:
            return
        try:
            await self.store.apply([self._addressed(conn_id, agent_id, DISCONNECT)], self.clock.now_ms())
        except (RedisError, OSError):
            self._needs_sync = True
            self._failed_disconnects[conn_id] = agent_id
            raise

    async def release(self) -> None:
        """After a drain: give up the lease so nobody has to wait for it to expire."""
        await self.store.release(self.instance_id, self.clock.now_ms())
        self.lease_held = False

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
                reaped, conns, _ = await self.store.sweep(self.clock.now_ms())
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
