"""The one MetaData every room's tables join (`from store.schema import metadata`, tables in <room>/schema.py).

A naming convention makes constraint and index names deterministic, so Alembic migrations written on
SQLite and PostgreSQL name the same things the same way and every downgrade can drop them by name.
"""

from __future__ import annotations

from sqlalchemy import MetaData

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING_CONVENTION)
