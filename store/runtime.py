"""The store's life inside one instance: migrations at start-up, and the SQLite-sharing check.

Start-up never waits long for the database: a database that does not answer is logged, migrated in the
background when it comes back, and meanwhile the real-time service runs (webhooks, presence and the
wallboard never touch SQL). Several live instances on one Redis with SQLite each keep their own file, so
their directories and records split silently; the check below makes that loud (log + /readyz).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from redis.asyncio import Redis
from redis.exceptions import RedisError

from callboard import keys
from callboard.clock import Clock
from store.db import Database

log = logging.getLogger("callboard.store")

START_MIGRATION_WAIT_S = 15.0  # how long start-up waits for the database before going on without it
MIGRATION_RETRY_S = 5.0


async def migrate_at_start(db: Database) -> bool:
    """Upgrade to head; False (logged) when the database did not answer in time."""
    try:
        async with asyncio.timeout(START_MIGRATION_WAIT_S):
            await db.upgrade()
        log.info("database: %s, migrations at head", db.describe())
        return True
    except asyncio.CancelledError:
        raise
    except Exception:  # noqa: BLE001 - a boundary: any failure here must not stop the real-time service
        log.exception("database %s not migrated at start-up; retrying in the background", db.describe())
        return False


async def migrate_until_done(db: Database, retry_s: float = MIGRATION_RETRY_S) -> None:
    """Background retry of the start-up migration until it succeeds."""
    while not db.migrated:
        await asyncio.sleep(retry_s)
        try:
            await db.upgrade()
            log.info("database %s reachable again; migrations at head", db.describe())
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - keep retrying; one line per attempt is enough
            log.warning("database %s still not migrated: %r", db.describe(), exc)


def sqlite_sharing_problem(db: Database, live_instances: int) -> str | None:
    """The readiness problem for SQLite under several live instances, else None (pure)."""
    if not db.is_sqlite or live_instances <= 1:
        return None
    return (f"{live_instances} instances share this Redis but this one keeps its records in SQLite "
            f"({db.engine.url.database}): set DATABASE_URL to one PostgreSQL for every instance")


async def watch_sqlite_sharing(db: Database, redis: Redis, clock: Clock, every_s: float,
                               report: Callable[[str | None], None]) -> None:
    """Count live leases (score = expiry ms) and report the SQLite-sharing problem when it starts or ends."""
    previous: str | None = None
    while True:
        try:
            live = await redis.zcount(keys.INSTANCES, clock.now_ms(), "+inf")
        except (RedisError, OSError):
            live = None  # Redis away: keep the last verdict; the follower reports the outage itself
        if live is not None:
            problem = sqlite_sharing_problem(db, int(live))
            if problem != previous:
                if problem:
                    log.error("misconfiguration: %s", problem)
                else:
                    log.info("only one live instance on this Redis now; SQLite is fine again")
                report(problem)
                previous = problem
        await asyncio.sleep(every_s)
