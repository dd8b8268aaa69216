"""customers, their phones and notes

Revision ID: 0001_customers
Revises:
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001_customers"
down_revision = None
branch_labels = None
depends_on = None


SQLITE_FTS = (
    "CREATE VIRTUAL TABLE IF NOT EXISTS customers_fts USING fts5("
    "search_text, content='customers', content_rowid='rowid', tokenize='trigram')",
    "CREATE TRIGGER IF NOT EXISTS customers_fts_insert AFTER INSERT ON customers BEGIN "
    "INSERT INTO customers_fts(rowid, search_text) VALUES (new.rowid, new.search_text); END",
    "CREATE TRIGGER IF NOT EXISTS customers_fts_delete AFTER DELETE ON customers BEGIN "
    "INSERT INTO customers_fts(customers_fts, rowid, search_text) VALUES ('delete', old.rowid, old.search_text); END",
    "CREATE TRIGGER IF NOT EXISTS customers_fts_update AFTER UPDATE OF search_text ON customers BEGIN "
    "INSERT INTO customers_fts(customers_fts, rowid, search_text) VALUES ('delete', old.rowid, old.search_text); "
    "INSERT INTO customers_fts(rowid, search_text) VALUES (new.rowid, new.search_text); END",
)


def upgrade() -> None:
    op.create_table(
        "customers",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("kana", sa.String(200), nullable=False, server_default=""),
        sa.Column("company", sa.String(200), nullable=False, server_default=""),
        sa.Column("email", sa.String(254), nullable=False, server_default=""),
        sa.Column("owner", sa.String(121), nullable=True),
        sa.Column("team", sa.String(64), nullable=True),
        sa.Column("external_id", sa.String(100), nullable=True),
        sa.Column("memo", sa.Text(), nullable=False, server_default=""),
        sa.Column("search_text", sa.Text(), nullable=False, server_default=""),
        sa.Column("created_ms", sa.BigInteger(), nullable=False),
        sa.Column("updated_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_customers"),
        sa.UniqueConstraint("external_id", name="uq_customers_external_id"),
    )
    op.create_index("ix_customers_name", "customers", ["name"])
    op.create_index("ix_customers_owner", "customers", ["owner"])
    op.create_table(
        "customer_phones",
        sa.Column("customer_id", sa.String(32), nullable=False),
        sa.Column("e164", sa.String(16), nullable=False),
        sa.Column("position", sa.BigInteger(), nullable=False, server_default="0"),
        sa.ForeignKeyConstraint(["customer_id"], ["customers.id"], ondelete="CASCADE",
                                name="fk_customer_phones_customer_id_customers"),
        sa.PrimaryKeyConstraint("customer_id", "e164", name="pk_customer_phones"),
    )
    op.create_index("ix_customer_phones_e164", "customer_phones", ["e164"])
    op.create_table(
        "customer_notes",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("customer_id", sa.String(32), nullable=False),
        sa.Column("agent", sa.String(121), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("call_sid", sa.String(64), nullable=True),
        sa.Column("at_ms", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["customer_id"], ["customers.id"], ondelete="CASCADE",
                                name="fk_customer_notes_customer_id_customers"),
        sa.PrimaryKeyConstraint("id", name="pk_customer_notes"),
    )
    op.create_index("ix_customer_notes_customer_id_at_ms", "customer_notes", ["customer_id", "at_ms"])
    op.create_index("ix_customer_notes_call_sid", "customer_notes", ["call_sid"])
    if op.get_bind().dialect.name == "sqlite":
        # SQLite's twin of the trigram index: an FTS5 trigram table over search_text (external content, kept
        # by triggers), so words of 3+ characters are found without reading 100,000 rows. The search
        # re-checks every candidate with LIKE, so the index only ever narrows.
        for statement in SQLITE_FTS:
            op.execute(statement)
    if op.get_bind().dialect.name == "postgresql":
        # Substring search (LIKE '%x%') over 100,000 customers needs a trigram index to stay under 50 ms.
        # pg_trgm is a trusted extension (PostgreSQL 13+): a database owner may create it.
        op.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
        op.execute("CREATE INDEX ix_customers_search_text_trgm ON customers USING gin (search_text gin_trgm_ops)")


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        for name in ("customers_fts_insert", "customers_fts_delete", "customers_fts_update"):
            op.execute(f"DROP TRIGGER IF EXISTS {name}")
        op.execute("DROP TABLE IF EXISTS customers_fts")
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP INDEX IF EXISTS ix_customers_search_text_trgm")
        # The extension stays: other databases' objects may use it, and keeping it is harmless.
    op.drop_index("ix_customer_notes_call_sid", table_name="customer_notes")
    op.drop_index("ix_customer_notes_customer_id_at_ms", table_name="customer_notes")
    op.drop_table("customer_notes")
    op.drop_index("ix_customer_phones_e164", table_name="customer_phones")
    op.drop_table("customer_phones")
    op.drop_index("ix_customers_owner", table_name="customers")
    op.drop_index("ix_customers_name", table_name="customers")
    op.drop_table("customers")
