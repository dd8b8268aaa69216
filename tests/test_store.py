"""The SQL store (DESIGN.md "SQL store"): URLs, SQLite settings, migrations up and down on both backends,
start-up migration, a database that is down, and several instances sharing one Redis with SQLite."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from sqlalchemy import inspect, text

from store import migrate
from store.db import Database, DatabaseUrlError, normalize_url
from store.runtime import sqlite_sharing_problem
from tests.conftest import postgres_test_url


def test_urls_map_to_the_async_drivers() -> None:
    assert normalize_url("postgres://u:p@db:5432/cb").drivername == "postgresql+asyncpg"
    assert normalize_url("postgresql://u@db/cb").drivername == "postgresql+asyncpg"
    assert normalize_url("postgresql+asyncpg://u@db/cb").drivername == "postgresql+asyncpg"
    assert normalize_url("sqlite:////tmp/x.db").drivername == "sqlite+aiosqlite"
    url = normalize_url("postgresql://u@db/cb?sslmode=require")
    assert dict(url.query) == {"ssl": "require"}
    with pytest.raises(DatabaseUrlError, match="postgresql://"):
        normalize_url("mysql://u@db/cb")
    with pytest.raises(DatabaseUrlError, match="not a database URL"):
        normalize_url("no url at all")


async def test_default_is_sqlite_in_the_data_dir_with_wal_and_busy_timeout(tmp_path: Path) -> None:
    db = Database.from_url(None, data_dir=tmp_path / "data")
    try:
        assert db.is_sqlite and not db.is_postgres
        assert Path(db.engine.url.database or "") == (tmp_path / "data" / "callboard.db").resolve()
        async with db.connect() as conn:
            assert (await conn.execute(text("PRAGMA journal_mode"))).scalar() == "wal"
            assert (await conn.execute(text("PRAGMA busy_timeout"))).scalar() == 5000
            assert (await conn.execute(text("PRAGMA foreign_keys"))).scalar() == 1
        assert await db.ping()
    finally:
        await db.dispose()


def _tables(conn: Any) -> set[str]:
    return set(inspect(conn).get_table_names()) - {"alembic_version"}


async def _migrations_up_and_down(db: Database) -> None:
    """Every revision applies from empty, every one reverses, and the schema comes back the same."""
    revisions = migrate.history()
    assert revisions and revisions[0] == "0001_customers"
    async with db.connect() as conn:
        assert await conn.run_sync(_tables) == set(), "the database must start empty"
    for revision in revisions:
        await db.upgrade(revision)
        assert await db.current() == revision
    async with db.connect() as conn:
        at_head = await conn.run_sync(_tables)
    assert {"customers", "customer_phones", "customer_notes"} <= at_head
    for previous in reversed(["base", *revisions[:-1]]):
        await db.downgrade(previous)
        assert await db.current() == (None if previous == "base" else previous)
    async with db.connect() as conn:
        assert await conn.run_sync(_tables) == set()
    await db.upgrade()
    async with db.connect() as conn:
        assert await conn.run_sync(_tables) == at_head
    assert db.migrated


async def test_migrations_from_an_empty_sqlite_database_up_and_down(tmp_path: Path) -> None:
    db = Database.from_url(f"sqlite:///{tmp_path / 'empty.db'}")
    try:
        await _migrations_up_and_down(db)
    finally:
        await db.dispose()


async def test_migrations_from_an_empty_postgresql_database_up_and_down() -> None:
    db = Database.from_url(postgres_test_url())
    try:
        await db.downgrade("base")  # the shared test database, emptied; left at head for the other tests
        await _migrations_up_and_down(db)
    finally:
        await db.dispose()


async def test_db_fixture_is_migrated_and_empty(db: Database) -> None:
    async with db.begin() as conn:
        await conn.execute(text("INSERT INTO customers (id, name, created_ms, updated_ms) VALUES ('c1', 'A', 1, 1)"))
    async with db.connect() as conn:
        assert (await conn.execute(text("SELECT count(*) FROM customers"))).scalar() == 1
    assert await db.current() == migrate.head()


async def test_db_fixture_empties_between_tests(db: Database) -> None:
    async with db.connect() as conn:
        assert (await conn.execute(text("SELECT count(*) FROM customers"))).scalar() == 0


async def test_instance_migrates_its_default_sqlite_at_start_up(make_instance: Any, settings: Any) -> None:
    server = await make_instance()
    from callboard.services import SERVICES

    db = server.app[SERVICES].db
    assert db is not None and db.is_sqlite and db.migrated
    assert Path(db.engine.url.database) == (settings.data_dir / "callboard.db").resolve()
    assert await db.current() == migrate.head()


async def test_a_database_that_is_down_does_not_stop_the_service(make_instance: Any, settings: Any) -> None:
    """Start-up goes on without the database; the wallboard, webhooks and /readyz do not depend on it."""
    import dataclasses

    from callboard.services import SERVICES

    down = dataclasses.replace(settings, database_url="postgresql://postgres@127.0.0.1:9/nowhere")
    server = await make_instance(app_settings=down)
    db = server.app[SERVICES].db
    assert db is not None and not db.migrated
    assert not await db.ping()
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://{server.host}:{server.port}/readyz") as resp:
            assert resp.status == 200, await resp.text()
    names = [t.get_name() for t in server.app[SERVICES].tasks if not t.done()]
    assert "database-migrations" in names


def test_sqlite_sharing_problem_rule(tmp_path: Path) -> None:
    sqlite = Database.from_url(None, data_dir=tmp_path)
    postgres = Database.from_url("postgresql://postgres@127.0.0.1:9/x")
    assert sqlite_sharing_problem(sqlite, 1) is None
    assert "2 instances share this Redis" in (sqlite_sharing_problem(sqlite, 2) or "")
    assert sqlite_sharing_problem(postgres, 3) is None


async def test_two_instances_with_sqlite_on_one_redis_are_not_ready(make_instance: Any, settings: Any,
                                                                     tmp_path: Path) -> None:
    import dataclasses

    from callboard.services import SERVICES

    first = await make_instance(instance_id="sqlite-a")
    second = await make_instance(instance_id="sqlite-b",
                                 app_settings=dataclasses.replace(settings, data_dir=tmp_path / "other"))
    async with aiohttp.ClientSession() as http:
        for server in (first, second):
            body = ""
            for _ in range(100):  # the check runs every lease renewal (0.2 s in the test center)
                async with http.get(f"http://{server.host}:{server.port}/readyz") as resp:
                    body = await resp.text()
                    if resp.status == 503 and "SQLite" in body:
                        break
                await asyncio.sleep(0.1)
            else:
                raise AssertionError(f"/readyz never reported the SQLite sharing: {body}")
            assert "DATABASE_URL" in body
    assert first.app[SERVICES].database_misconfigured
    await second.close()  # the other instance leaves; its lease goes with the drain
    for _ in range(100):
        if first.app[SERVICES].database_misconfigured is None:
            break
        await asyncio.sleep(0.1)
    assert first.app[SERVICES].database_misconfigured is None


def test_callboard_db_command_upgrades_reports_and_downgrades(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    from callboard.cli import main

    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.setenv("CALLBOARD_DATA", str(tmp_path / "data"))
    assert main(["db", "history"]) == 0
    assert capsys.readouterr().out.split() == migrate.history()
    assert main(["db", "current"]) == 0
    assert "at revision base (empty)" in capsys.readouterr().out
    assert main(["db", "upgrade"]) == 0
    out = capsys.readouterr().out
    assert f"SQLite at {(tmp_path / 'data' / 'callboard.db').resolve()}: at revision {migrate.head()}" in out
    assert main(["db", "downgrade"]) == 2
    assert "needs --revision" in capsys.readouterr().err
    assert main(["db", "downgrade", "--revision", "base"]) == 0
    assert "base (empty)" in capsys.readouterr().out
    monkeypatch.setenv("DATABASE_URL", "mysql://x@y/z")
    assert main(["db", "upgrade"]) == 2
    assert "postgresql://" in capsys.readouterr().err
    monkeypatch.setenv("DATABASE_URL", "postgresql://postgres@127.0.0.1:9/nowhere")
    assert main(["db", "upgrade"]) == 1
    assert "PostgreSQL at 127.0.0.1:9/nowhere" in capsys.readouterr().err
