"""call records, their facts and the agent-state history (records/schema.py)

Revision ID: 0002_records
Revises: 0001_customers
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_records"
down_revision = "0001_customers"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "calls",
        sa.Column("call_sid", sa.String(64), nullable=False),
        sa.Column("started_ms", sa.BigInteger(), nullable=False),
        sa.Column("day", sa.String(10), nullable=True),
        sa.Column("from_number", sa.String(64), nullable=True),
        sa.Column("from_e164", sa.String(32), nullable=True),
        sa.Column("to_number", sa.String(64), nullable=True),
        sa.Column("queue", sa.String(64), nullable=True),
        sa.Column("agent", sa.String(121), nullable=True),
        sa.Column("outcome", sa.String(32), nullable=True),
        sa.Column("entered_ms", sa.BigInteger(), nullable=True),
        sa.Column("answered_ms", sa.BigInteger(), nullable=True),
        sa.Column("ended_ms", sa.BigInteger(), nullable=True),
        sa.Column("wait_ms", sa.BigInteger(), nullable=True),
        sa.Column("talk_ms", sa.BigInteger(), nullable=True),
        sa.Column("wrap_ms", sa.BigInteger(), nullable=True),
        sa.Column("handle_ms", sa.BigInteger(), nullable=True),
        sa.Column("final", sa.Boolean(), nullable=False),
        sa.Column("record", sa.Text(), nullable=False),
        sa.Column("updated_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("call_sid", name="pk_calls"),
    )
    op.create_index("ix_calls_started_ms_call_sid", "calls", ["started_ms", "call_sid"])
    op.create_index("ix_calls_day_queue", "calls", ["day", "queue"])
    op.create_index("ix_calls_agent_started_ms", "calls", ["agent", "started_ms"])
    op.create_index("ix_calls_from_e164", "calls", ["from_e164"])
    op.create_table(
        "call_facts",
        sa.Column("fact_id", sa.String(40), nullable=False),
        sa.Column("call_sid", sa.String(64), nullable=False),
        sa.Column("at_ms", sa.BigInteger(), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("fact_id", name="pk_call_facts"),
    )
    op.create_index("ix_call_facts_call_sid", "call_facts", ["call_sid"])
    op.create_index("ix_call_facts_at_ms", "call_facts", ["at_ms"])
    op.create_table(
        "agent_states",
        sa.Column("fact_id", sa.String(40), nullable=False),
        sa.Column("agent", sa.String(121), nullable=False),
        sa.Column("at_ms", sa.BigInteger(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("reason", sa.String(200), nullable=True),
        sa.Column("prev_state", sa.String(16), nullable=True),
        sa.PrimaryKeyConstraint("fact_id", name="pk_agent_states"),
    )
    op.create_index("ix_agent_states_agent_at_ms", "agent_states", ["agent", "at_ms"])
    op.create_index("ix_agent_states_at_ms", "agent_states", ["at_ms"])


def downgrade() -> None:
    op.drop_table("agent_states")
    op.drop_table("call_facts")
    op.drop_table("calls")
