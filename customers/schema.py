"""The customer directory's tables on the shared MetaData (SQLAlchemy Core; no ORM on any path).

`phones` holds one row per (customer, E.164 number) and is indexed by number: the screen pop and the
routing look a caller up by exact E.164, and one number may belong to several customers (a family's line).
`search_text` is a folded copy of every searchable field (see customers/search.py), so a substring search
is one LIKE over one column — backed on PostgreSQL by a trigram index.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, ForeignKey, Index, String, Table, Text

from store.schema import metadata

customers = Table(
    "customers", metadata,
    Column("id", String(32), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("kana", String(200), nullable=False, server_default=""),
    Column("company", String(200), nullable=False, server_default=""),
    Column("email", String(254), nullable=False, server_default=""),
    Column("owner", String(121), nullable=True),
    Column("team", String(64), nullable=True),
    Column("external_id", String(100), nullable=True, unique=True),
    Column("memo", Text, nullable=False, server_default=""),
    Column("search_text", Text, nullable=False, server_default=""),
    Column("created_ms", BigInteger, nullable=False),
    Column("updated_ms", BigInteger, nullable=False),
)
Index("ix_customers_name", customers.c.name)
Index("ix_customers_owner", customers.c.owner)

customer_phones = Table(
    "customer_phones", metadata,
    Column("customer_id", String(32), ForeignKey("customers.id", ondelete="CASCADE"), primary_key=True),
    Column("e164", String(16), primary_key=True),
    Column("position", BigInteger, nullable=False, server_default="0"),
)
Index("ix_customer_phones_e164", customer_phones.c.e164)

customer_notes = Table(
    "customer_notes", metadata,
    Column("id", String(32), primary_key=True),
    Column("customer_id", String(32), ForeignKey("customers.id", ondelete="CASCADE"), nullable=False),
    Column("agent", String(121), nullable=False),
    Column("text", Text, nullable=False),
    Column("call_sid", String(64), nullable=True),
    Column("at_ms", BigInteger, nullable=False),
)
Index("ix_customer_notes_customer_id_at_ms", customer_notes.c.customer_id, customer_notes.c.at_ms)
Index("ix_customer_notes_call_sid", customer_notes.c.call_sid)
