"""Every Redis key callboard uses, built in one place. All keys share one prefix so a Redis can be shared."""

from __future__ import annotations

PREFIX = "cb:"

# The change stream every writer appends to in the same Lua call as its write, and every instance follows.
# Entry fields: k = kind ("agent" | "queue" | "pop" | "unpop"), id = agent id or queue name, d = msgpack payload.
CHANGES = PREFIX + "changes"

# Agent records: one hash, field = agent id, value = msgpack record, so a snapshot is one HGETALL.
AGENTS = PREFIX + "agents"

# Instance leases: sorted set, member = instance id, score = lease expiry (epoch ms).
INSTANCES = PREFIX + "instances"

# Presence timers (disconnect grace, wrap-up end): sorted set, member = "<kind>:<agent id>", score = due ms.
TIMERS = PREFIX + "timers"


def instance_connections(instance_id: str) -> str:
    """Hash of one instance's live websocket connections: field = connection id, value = agent id."""
    return f"{PREFIX}conns:{instance_id}"


def call(call_sid: str) -> str:
    """Hash holding one call's progress flags, so each Twilio event counts exactly once."""
    return f"{PREFIX}call:{call_sid}"


def queue_waiting(queue: str) -> str:
    """Sorted set of calls waiting in a queue: member = CallSid, score = enqueued ms."""
    return f"{PREFIX}q:{queue}:waiting"


def queue_day(queue: str, day: str) -> str:
    """Hash of a queue's counters for one `today` window; `day` is the window's local start date."""
    return f"{PREFIX}q:{queue}:day:{day}"


def queue_minute(queue: str, epoch_minute: int) -> str:
    """Hash of a queue's counters for calls that left the queue in one minute (the last_30m window)."""
    return f"{PREFIX}q:{queue}:min:{epoch_minute}"


def agent_pop(agent_id: str) -> str:
    """The screen pop of the agent's current call, resent to a reconnecting softphone while the call lasts."""
    return f"{PREFIX}pop:{agent_id}"



def agent_leg(call_sid: str) -> str:
    """Hash of an agent's softphone call leg (the TwiML App call): agent id, the caller it bridged, its end."""
    return f"{PREFIX}leg:{call_sid}"


# Handle times finalized inside presence scripts (a wrap-up ended in a sweep or a state change), waiting for
# any instance's call flow to observe them in its call_handle metric: a list of "<queue>\t<handle ms>".
HANDLED_OBSERVATIONS = PREFIX + "handled:obs"


def caller(call_sid: str) -> str:
    """JSON {"withheld", "customers", "owner", "owner_team"} of a caller, written by the directory lookup at
    `incoming` (customers/) and read by routing; TTL 12 h."""
    return f"{PREFIX}caller:{call_sid}"


def facts() -> str:
    """The facts stream (never trimmed by writers): field `f` = JSON {"type", "at_ms", ...}; see DESIGN."""
    return f"{PREFIX}facts"


# Routing (offer mode), see routing/lua.py: one hash per open offer, the per-agent and per-caller
# reservations that make offers exclusive, and a sorted set of when each offer is due (expiry).
OFFER_AGENTS = PREFIX + "offers:agents"  # hash: agent id -> offer id
OFFER_CALLS = PREFIX + "offers:calls"  # hash: caller CallSid -> offer id
OFFER_DUE = PREFIX + "offers:due"  # sorted set: offer id, score = due ms
OFFER_SEQ = PREFIX + "offers:seq"  # counter behind offer ids
OFFER_MISSED_ROW = PREFIX + "offers:missed_row"  # hash: agent id -> missed offers in a row


def offer(offer_id: str) -> str:
    """Hash of one offer: call, agent, queue, state (open|accepting|connecting), created_ms, due_ms."""
    return f"{PREFIX}offer:{offer_id}"


def offers_missed(day: str) -> str:
    """Hash of missed offers per agent for one `today` window."""
    return f"{PREFIX}offers:missed:{day}"


def no_calls(agent_id: str) -> str:
    """Set of an agent's connection ids that said in their hello that they cannot take offered calls."""
    return f"{PREFIX}nocalls:{agent_id}"
