"""Shared fixtures: a real Redis (REDIS_URL, else an embedded one), flushed per test; apps; clients; tokens.

Pointed at a Redis by REDIS_URL (a developer's, or CI's), the suite leaves it as it found it: it never
touches the database the URL names, and works in databases of its own — ones that were empty when the
session began (claimed by a named connection, so a second suite on the same Redis picks others) — which
it empties again when the session ends. See SuiteRedisDatabases.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import pytest
import redis as sync_redis
import websockets
from redis.asyncio import Redis

from callboard.auth import issue_token
from callboard.clock import FakeClock
from callboard.config import Config, parse_config

SECRET = "test-secret-0123456789abcdef0123456789-long-enough"
TWILIO_TOKEN = "test-twilio-auth-token-0123456789"

TEST_CENTER: dict[str, Any] = {
    "center": {"name": "Test center", "timezone": "UTC", "wrap_up_s": 2, "disconnect_grace_s": 2,
               "sl_threshold_s": 20, "short_abandon_s": 5},
    "server": {"lease_renew_s": 0.2, "lease_ttl_s": 0.6, "sweep_every_s": 0.1, "tick_ms": 20},
    "queues": [{"name": "support", "numbers": ["+15550000001"], "team": "support"},
               {"name": "sales", "numbers": ["+15550000002"], "team": "sales"}],
    "agents": [{"id": "alice", "name": "Alice", "team": "support", "queues": ["support"]},
               {"id": "bob", "name": "Bob", "team": "support", "queues": ["support"]},
               {"id": "carol", "name": "Carol", "team": "sales", "queues": ["sales"]},
               {"id": "dave", "name": "Dave", "team": "sales", "queues": ["sales", "support"]}],
}


def make_config(**overrides: Any) -> Config:
    """The test center, with sections replaced or merged: make_config(center={"wrap_up_s": 0})."""
    raw = json.loads(json.dumps(TEST_CENTER))
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(raw.get(key), dict):
            raw[key].update(value)
        else:
            raw[key] = value
    return parse_config(raw, "<test center>")


def _start_redis_server(directory: Path, *extra: str) -> tuple[subprocess.Popen[bytes], str]:
    from callboard.embedded import redis_server_binary

    sock = directory / "redis.sock"
    proc = subprocess.Popen(
        [redis_server_binary(), "--port", "0", "--unixsocket", str(sock), "--dir", str(directory),
         "--save", "", "--appendonly", "no", *extra],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            if sync_redis.Redis(unix_socket_path=str(sock)).ping():
                return proc, f"unix://{sock}"
        except (sync_redis.ConnectionError, FileNotFoundError):
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("test Redis did not start")


class SuiteRedisDatabases:
    """The suite's own databases on a shared Redis: empty when claimed, emptied again by release().

    A claim is a connection held for the session, named `callboard-tests:<db>` and SELECTed to that
    database, so that CLIENT LIST tells another suite (or a person) which databases are in use. The
    database the URL names is never claimed: it is the developer's.
    """

    NAME_PREFIX = "callboard-tests:"

    def __init__(self, url: str) -> None:
        self.base_url = url
        self.named_db = self._db_of(url)
        self._holders: dict[int, sync_redis.Redis] = {}
        probe = sync_redis.Redis.from_url(url)
        try:
            try:
                count = int(probe.config_get("databases").get("databases", 16))
            except sync_redis.ResponseError:  # CONFIG may be disabled (managed Redis): the default count
                count = 16
            try:
                names = [c.get("name", "") for c in probe.client_list()]
            except sync_redis.ResponseError:
                names = []
        finally:
            probe.close()
        self._count = count
        self._in_use = {int(n[len(self.NAME_PREFIX):]) for n in names
                        if n.startswith(self.NAME_PREFIX) and n[len(self.NAME_PREFIX):].isdigit()}

    @staticmethod
    def _db_of(url: str) -> int:
        parts = urlsplit(url)
        if parts.scheme == "unix":  # unix:///path/redis.sock?db=N
            return int(dict(parse_qsl(parts.query)).get("db", 0))
        return int(parts.path.strip("/") or 0)

    def url_for(self, db: int) -> str:
        parts = urlsplit(self.base_url)
        if parts.scheme == "unix":
            query = urlencode({**dict(parse_qsl(parts.query)), "db": db})
            return urlunsplit((parts.scheme, parts.netloc, parts.path, query, parts.fragment))
        return urlunsplit((parts.scheme, parts.netloc, f"/{db}", parts.query, parts.fragment))

    def claim(self) -> int:
        """An empty database of our own (highest numbers first: furthest from what people use)."""
        for db in range(self._count - 1, -1, -1):
            if db == self.named_db or db in self._in_use or db in self._holders:
                continue
            holder = sync_redis.Redis.from_url(self.url_for(db))
            if holder.dbsize() == 0:
                try:
                    holder.client_setname(f"{self.NAME_PREFIX}{db}")
                except sync_redis.ResponseError:
                    pass  # CLIENT SETNAME refused: the claim is only this session's own bookkeeping
                self._holders[db] = holder
                return db
            holder.close()
        raise RuntimeError(
            f"REDIS_URL={self.base_url}: no empty database left for the test suite among its {self._count} "
            f"(it never uses database {self.named_db}, which REDIS_URL names, nor any that holds data)")

    def release(self) -> None:
        """Empty every claimed database (they were empty when claimed) and drop the claims."""
        for holder in self._holders.values():
            try:
                holder.flushdb()
            finally:
                holder.close()
        self._holders.clear()


@pytest.fixture(scope="session")
def test_redis_databases() -> Iterator[SuiteRedisDatabases | None]:
    """The claimed databases on REDIS_URL's Redis (None when the suite runs its own embedded Redis)."""
    url = os.environ.get("REDIS_URL")
    if not url:
        yield None
        return
    databases = SuiteRedisDatabases(url)
    try:
        yield databases
    finally:
        databases.release()


@pytest.fixture(scope="session")
def bench_redis_url(test_redis_databases: SuiteRedisDatabases | None) -> str | None:
    """A TCP Redis database the bench smoke runs may flush (None without a TCP REDIS_URL)."""
    if test_redis_databases is None or urlsplit(test_redis_databases.base_url).scheme != "redis":
        return None
    return test_redis_databases.url_for(test_redis_databases.claim())


@pytest.fixture(scope="session")
def redis_url(test_redis_databases: SuiteRedisDatabases | None) -> Iterator[str]:
    if test_redis_databases is not None:
        yield test_redis_databases.url_for(test_redis_databases.claim())
        return
    with tempfile.TemporaryDirectory(prefix="cb-test-redis-") as tmp:
        proc, url = _start_redis_server(Path(tmp))
        try:
            yield url
        finally:
            proc.terminate()
            proc.wait(5)


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    await client.flushdb()
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(start_ms=int(time.time() * 1000))


@pytest.fixture
def config() -> Config:
    return make_config()


def token(sub: str, role: str = "agent", **kw: Any) -> str:
    return issue_token(SECRET, sub, role, 3600, **kw)


@pytest.fixture
def settings(tmp_path: Path) -> Any:
    from callboard.services import Settings

    # data_dir in the test's temp dir: an instance's default SQLite database never lands in the checkout.
    return Settings(secret=SECRET, twilio_auth_token=TWILIO_TOKEN, public_url=None, data_dir=tmp_path / "data")


AppFactory = Callable[..., Awaitable[Any]]


@pytest.fixture
async def make_instance(redis_url: str, redis: Redis, aiohttp_server: Any, settings: Any) -> AsyncIterator[AppFactory]:
    """Start a full callboard instance on the shared test Redis; returns its TestServer (server.app holds it)."""
    from callboard.app import build_app

    async def factory(config: Config | None = None, *, clock: Any = None, instance_id: str | None = None,
                      app_settings: Any = None, url: str | None = None, db: Any = None) -> Any:
        client = Redis.from_url(url or redis_url, socket_timeout=10, socket_connect_timeout=2)
        chosen = app_settings or settings
        if chosen.data_dir == Path(".callboard"):  # never the checkout's own data directory (its SQLite file)
            chosen = dataclasses.replace(chosen, data_dir=settings.data_dir)
        app = build_app(config or make_config(), chosen, client, clock=clock,
                        instance_id=instance_id, close_redis=True, db=db)
        await keep_facts(redis)
        return await aiohttp_server(app)

    yield factory


async def keep_facts(redis: Redis) -> None:
    """A consumer group on the facts stream that never reads: the recorder trims only what every group has
    acknowledged, so the facts stay on the stream for a test to read (it is emptied with the database)."""
    from callboard import keys

    try:
        await redis.xgroup_create(keys.facts(), "tests-observer", id="0", mkstream=True)
    except sync_redis.ResponseError as exc:  # BUSYGROUP: a second instance of the same test made it already
        if "BUSYGROUP" not in str(exc):
            raise


def ws_url(server: Any) -> str:
    return f"ws://{server.host}:{server.port}/ws"


class WsClient:
    """A websockets-library client that keeps the merged snapshot, so tests can assert on state."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.welcome: dict[str, Any] = {}
        self.snapshot: dict[str, Any] = {}
        self.messages: list[dict[str, Any]] = []

    async def recv(self, timeout: float = 5.0) -> dict[str, Any]:
        raw = await asyncio.wait_for(self.conn.recv(), timeout)
        msg = json.loads(raw)
        self.messages.append(msg)
        if msg["type"] == "snapshot":
            self.snapshot = msg
        elif msg["type"] == "delta":
            from wallboard.patch import apply

            self.snapshot = apply(self.snapshot, {k: v for k, v in msg.items() if k != "type"})
        return msg

    async def send(self, obj: dict[str, Any]) -> None:
        await self.conn.send(json.dumps(obj))

    async def wait_for(self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 5.0) -> dict[str, Any]:
        """Read until predicate(snapshot) holds; returns the snapshot."""
        deadline = asyncio.get_running_loop().time() + timeout
        while not predicate(self.snapshot):
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                raise AssertionError(f"timed out; last snapshot agents={self.snapshot.get('agents')}")
            await self.recv(left)
        return self.snapshot

    def agent(self, agent_id: str) -> dict[str, Any]:
        return self.snapshot["agents"][agent_id]

    async def close(self) -> None:
        await self.conn.close()


async def connect(server: Any, tok: str, *, subprotocol: str = "callboard.v1.json") -> WsClient:
    conn = await websockets.connect(ws_url(server), subprotocols=[subprotocol], open_timeout=5)
    client = WsClient(conn)
    await client.send({"type": "hello", "token": tok})
    client.welcome = await client.recv()
    assert client.welcome["type"] == "welcome", client.welcome
    first = await client.recv()
    assert first["type"] == "snapshot", first
    return client


@pytest.fixture
def redis_server_factory() -> Iterator[Callable[..., tuple[subprocess.Popen[bytes], str, Path]]]:
    """Start private redis-servers (for restart and outage tests); all are stopped at the end."""
    procs: list[subprocess.Popen[bytes]] = []
    dirs: list[tempfile.TemporaryDirectory[str]] = []

    def start(directory: Path | None = None, *extra: str) -> tuple[subprocess.Popen[bytes], str, Path]:
        if directory is None:
            tmp = tempfile.TemporaryDirectory(prefix="cb-redis-")
            dirs.append(tmp)
            directory = Path(tmp.name)
        proc, url = _start_redis_server(directory, *extra)
        procs.append(proc)
        return proc, url, directory

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    for tmp in dirs:
        tmp.cleanup()


# --- SQL store (store/db.py): the `db` fixture, on SQLite and on PostgreSQL -------------------------------

_MIGRATED_DATABASES: dict[str, list[str]] = {}  # backend -> its tables, children first (emptied per test)


@pytest.fixture(scope="session")
def sqlite_test_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    return f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('sqlite') / 'callboard-test.db'}"


def postgres_test_url() -> str:
    """TEST_DATABASE_URL; without it the PostgreSQL half skips locally and fails under CI=true."""
    url = os.environ.get("TEST_DATABASE_URL")
    if url:
        return url
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail("CI=true but TEST_DATABASE_URL is not set: the PostgreSQL half of the store tests must run")
    pytest.skip(reason="PostgreSQL store tests need TEST_DATABASE_URL=postgresql://... (.ci/run sets it)")


async def open_test_database(backend: str, sqlite_url: str) -> Any:
    """A migrated (once per session and backend), emptied Database."""
    from sqlalchemy import MetaData, text

    from store.db import Database

    url = sqlite_url if backend == "sqlite" else postgres_test_url()
    db = Database.from_url(url)
    try:
        if backend not in _MIGRATED_DATABASES:
            await db.upgrade()

            def table_order(conn: Any) -> list[str]:
                reflected = MetaData()
                reflected.reflect(conn)
                # SQLite full-text tables and their shadow tables are kept by triggers: emptying them by hand
                # would corrupt them (the DELETE on their content table empties them properly).
                virtual: list[str] = []
                if conn.dialect.name == "sqlite":
                    virtual = [r[0] for r in conn.exec_driver_sql(
                        "SELECT name FROM sqlite_master WHERE type = 'table' AND sql LIKE 'CREATE VIRTUAL TABLE%'")]
                return [t.name for t in reversed(reflected.sorted_tables) if t.name != "alembic_version"
                        and not any(t.name == v or t.name.startswith(v + "_") for v in virtual)]

            async with db.connect() as conn:
                _MIGRATED_DATABASES[backend] = await conn.run_sync(table_order)
        db.migrated = True
        tables = _MIGRATED_DATABASES[backend]
        async with db.begin() as conn:
            if db.is_postgres and tables:
                await conn.execute(text("TRUNCATE " + ", ".join(f'"{t}"' for t in tables) + " CASCADE"))
            else:
                for table in tables:
                    await conn.execute(text(f'DELETE FROM "{table}"'))
    except BaseException:
        await db.dispose()
        raise
    return db


@pytest.fixture(params=["sqlite", "postgresql"])
async def db(request: pytest.FixtureRequest, sqlite_test_url: str) -> AsyncIterator[Any]:
    """A migrated, emptied store.db.Database, once on SQLite and once on PostgreSQL (TEST_DATABASE_URL)."""
    database = await open_test_database(request.param, sqlite_test_url)
    try:
        yield database
    finally:
        await database.dispose()


# -- the browser (every browser test shares this fixture) ----------------------------------------------------

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    """Debian's chromium through Playwright. Missing: a failure in CI, a skip on a developer machine."""
    if not os.path.exists(CHROMIUM):  # noqa: ASYNC240 - one stat at fixture set-up
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing in CI: the browser tests cannot run (apt-get install chromium)")
        pytest.skip(reason="Debian chromium not installed (apt-get install chromium)")
    from playwright.async_api import async_playwright

    (Path(__file__).resolve().parent.parent / "artifacts" / "browser").mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240
    async with async_playwright() as p:
        b = await p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            await b.close()


@pytest.fixture(scope="session", autouse=True)
def checkout_data_dir_untouched() -> Any:
    """No test may use the checkout's own data directory (.callboard/: its SQLite file would be shared by
    every test that forgot its own data_dir, and a file one test holds can stall another's instance)."""
    data = Path(__file__).resolve().parent.parent / ".callboard"
    db = data / "callboard.db"
    before = db.stat().st_mtime_ns if db.exists() else None
    yield
    after = db.stat().st_mtime_ns if db.exists() else None
    assert after == before, f"a test wrote {db}: give its Settings a data_dir of its own (tmp_path)"
