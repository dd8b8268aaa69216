"""Alembic environment: runs on the connection callboard hands over (store/migrate.py), else on DATABASE_URL.

`render_as_batch` lets a migration alter columns on SQLite, which cannot ALTER most things in place.
"""

from __future__ import annotations

import asyncio
import os

from alembic import context
from sqlalchemy.engine import Connection

import customers.schema  # noqa: F401 - registers the customers tables on the shared metadata
import records.schema  # noqa: F401 - registers the call records tables on the shared metadata
from store.schema import metadata

config = context.config


def _run(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=metadata,
                      render_as_batch=connection.dialect.name == "sqlite", compare_type=True)
    with context.begin_transaction():
        context.run_migrations()


async def _run_from_url(url: str) -> None:
    from store.db import Database

    db = Database.from_url(url)
    try:
        async with db.engine.begin() as conn:
            await conn.run_sync(_run)
    finally:
        await db.dispose()


connection = config.attributes.get("connection")
if connection is not None:
    _run(connection)
elif context.is_offline_mode():
    raise SystemExit("callboard migrations run online only: use `callboard db upgrade`")
else:
    # The `alembic` command line (for writing new migrations): the database in DATABASE_URL.
    asyncio.run(_run_from_url(config.get_main_option("sqlalchemy.url") or os.environ.get("DATABASE_URL", "")))
