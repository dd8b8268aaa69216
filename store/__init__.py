"""The SQL store: what must be kept, searched and reported on (customers, notes, call records) lives here.

Redis stays the real-time engine; SQL is never on the path of a webhook's answer, a presence change or the
wallboard. One async SQLAlchemy engine per instance (store/db.py), one shared MetaData (store/schema.py)
that every room's tables join, and one linear Alembic history (store/migrations/) applied at start-up.
"""
