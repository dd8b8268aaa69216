"""SQL tables of the records room on the shared MetaData: call records, their facts, agent-state history.

`call_facts` keeps every fact the recorder wrote, keyed by its stream entry id, so a redelivered fact is a
no-op insert and a call's record is always re-merged from *all* its facts (records/merge.py): writing is
idempotent by construction, and a late fact (a disposition after the record was final) still lands.
`calls` holds the merged record (the JSON of the contract) plus the columns the API filters and the
reports add up, in integer milliseconds so sums are exact.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Boolean, Column, Index, String, Table, Text

from store.schema import metadata

calls = Table(
    "calls", metadata,
    Column("call_sid", String(64), primary_key=True),
    Column("started_ms", BigInteger, nullable=False),  # entered_ms, else the first fact's time (sort and paging key)
    Column("day", String(10), nullable=True),  # the center's `today` window the call entered in (reports)
    Column("from_number", String(64), nullable=True),
    Column("from_e164", String(32), nullable=True),  # the caller's number normalized (search in any spelling)
    Column("to_number", String(64), nullable=True),
    Column("queue", String(64), nullable=True),
    Column("agent", String(121), nullable=True),
    Column("outcome", String(32), nullable=True),
    Column("entered_ms", BigInteger, nullable=True),
    Column("answered_ms", BigInteger, nullable=True),
    Column("ended_ms", BigInteger, nullable=True),
    Column("wait_ms", BigInteger, nullable=True),
    Column("talk_ms", BigInteger, nullable=True),
    Column("wrap_ms", BigInteger, nullable=True),
    Column("handle_ms", BigInteger, nullable=True),
    Column("final", Boolean, nullable=False, default=False),
    Column("record", Text, nullable=False),  # the contract's record as JSON
    Column("updated_ms", BigInteger, nullable=False),
    Index("ix_calls_started_ms_call_sid", "started_ms", "call_sid"),
    Index("ix_calls_day_queue", "day", "queue"),
    Index("ix_calls_agent_started_ms", "agent", "started_ms"),
    Index("ix_calls_from_e164", "from_e164"),
)

call_facts = Table(
    "call_facts", metadata,
    Column("fact_id", String(40), primary_key=True),  # the cb:facts stream entry id
    Column("call_sid", String(64), nullable=False),
    Column("at_ms", BigInteger, nullable=False),
    Column("body", Text, nullable=False),
    Index("ix_call_facts_call_sid", "call_sid"),
    Index("ix_call_facts_at_ms", "at_ms"),
)

agent_states = Table(
    "agent_states", metadata,
    Column("fact_id", String(40), primary_key=True),
    Column("agent", String(121), nullable=False),
    Column("at_ms", BigInteger, nullable=False),
    Column("state", String(16), nullable=False),
    Column("reason", String(200), nullable=True),
    Column("prev_state", String(16), nullable=True),
    Index("ix_agent_states_agent_at_ms", "agent", "at_ms"),
    Index("ix_agent_states_at_ms", "at_ms"),
)
