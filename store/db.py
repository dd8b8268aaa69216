"""One instance's SQL database: an async SQLAlchemy engine over SQLite (aiosqlite) or PostgreSQL (asyncpg).

`DATABASE_URL` unset means SQLite at `<CALLBOARD_DATA>/callboard.db` — single instance, like the embedded
Redis. SQLite runs in WAL mode with a busy timeout so that readers never block the one writer and a brief
lock waits instead of failing. Plain `postgresql://` and `postgres://` URLs (what Heroku, Render and psql
print) are mapped to the asyncpg dialect.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

log = logging.getLogger(__name__)

SQLITE_BUSY_TIMEOUT_MS = 5000  # a write waits this long for another writer's lock before failing
DB_FILE_NAME = "callboard.db"
# asyncpg waits for a dead server's TCP connect this long, so an outage turns into errors, not hangs.
PG_CONNECT_TIMEOUT_S = 5
PG_COMMAND_TIMEOUT_S = 30


class DatabaseUrlError(ValueError):
    """A DATABASE_URL this service cannot use; the message says why, in English."""


def normalize_url(url: str) -> URL:
    """Map user-facing URLs to the async dialects: postgres[ql]:// -> asyncpg, sqlite:// -> aiosqlite."""
    try:
        parsed = make_url(url)
    except Exception as exc:  # noqa: BLE001 - SQLAlchemy raises ArgumentError and others; all mean "bad URL"
        raise DatabaseUrlError(f"DATABASE_URL is not a database URL: {exc}") from None
    backend = parsed.get_backend_name()
    if backend in ("postgres", "postgresql"):
        query = dict(parsed.query)
        # libpq's sslmode is not an asyncpg argument; asyncpg's `ssl` accepts the same words.
        if "sslmode" in query:
            query["ssl"] = query.pop("sslmode")
        return parsed.set(drivername="postgresql+asyncpg", query=query)
    if backend == "sqlite":
        return parsed.set(drivername="sqlite+aiosqlite")
    raise DatabaseUrlError(f"DATABASE_URL must be postgresql://... or sqlite:///..., not {backend}://")


def default_sqlite_url(data_dir: Path) -> str:
    return f"sqlite+aiosqlite:///{(data_dir / DB_FILE_NAME).resolve()}"


class Database:
    """The async engine and its migrations; `begin()` for a transaction, `connect()` for reads."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.is_postgres = engine.dialect.name == "postgresql"
        self.is_sqlite = engine.dialect.name == "sqlite"
        self.migrated = False

    @classmethod
    def from_url(cls, url: str | None, *, data_dir: Path | None = None, **engine_kw: Any) -> Database:
        """A Database for a URL; None means SQLite in data_dir (default ./.callboard)."""
        if not url:
            directory = data_dir or Path(".callboard")
            directory.mkdir(parents=True, exist_ok=True)
            url = default_sqlite_url(directory)
        parsed = normalize_url(url)
        kw: dict[str, Any] = {}
        if parsed.get_backend_name() == "postgresql":
            # a server can drop idle connections; a SQLite file cannot, and its ping was one more thread hop
            # (aiosqlite) on every checkout, in the process that answers the webhooks
            kw["pool_pre_ping"] = True
            kw["connect_args"] = {"timeout": PG_CONNECT_TIMEOUT_S, "command_timeout": PG_COMMAND_TIMEOUT_S}
            kw["pool_size"] = 10
            kw["max_overflow"] = 10
            kw["pool_timeout"] = 10
        elif parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        kw.update(engine_kw)
        engine = create_async_engine(parsed, **kw)
        if engine.dialect.name == "sqlite":
            event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return cls(engine)

    @property
    def url(self) -> str:
        """The URL without its password, for logs."""
        return self.engine.url.render_as_string(hide_password=True)

    def describe(self) -> str:
        if self.is_sqlite:
            return f"SQLite at {self.engine.url.database}"
        return f"PostgreSQL at {self.engine.url.host}:{self.engine.url.port or 5432}/{self.engine.url.database}"

    @asynccontextmanager
    async def begin(self) -> AsyncIterator[AsyncConnection]:
        """A connection inside one transaction: committed on exit, rolled back on an exception."""
        async with self.engine.begin() as conn:
            yield conn

    @asynccontextmanager
    async def connect(self) -> AsyncIterator[AsyncConnection]:
        async with self.engine.connect() as conn:
            yield conn

    async def ping(self) -> bool:
        try:
            async with asyncio.timeout(5):
                async with self.engine.connect() as conn:
                    await conn.execute(text("SELECT 1"))
            return True
        except (OSError, TimeoutError) as exc:
            log.debug("database ping failed: %s", exc)
            return False
        except Exception as exc:  # noqa: BLE001 - a boundary: any driver error means "not answering"
            log.debug("database ping failed: %r", exc)
            return False

    async def upgrade(self, revision: str = "head") -> None:
        """Apply the Alembic migrations up to `revision` (idempotent)."""
        from store import migrate

        async with self.engine.begin() as conn:
            await conn.run_sync(migrate.upgrade, revision)
        if revision == "head":
            self.migrated = True

    async def downgrade(self, revision: str) -> None:
        from store import migrate

        async with self.engine.begin() as conn:
            await conn.run_sync(migrate.downgrade, revision)
        self.migrated = False

    async def current(self) -> str | None:
        from store import migrate

        async with self.engine.connect() as conn:
            return await conn.run_sync(migrate.current)

    async def dispose(self) -> None:
        await self.engine.dispose()


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA foreign_keys=ON")  # notes go with their customer (ON DELETE CASCADE)
    cursor.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable at checkpoints, fast commits
    cursor.close()
