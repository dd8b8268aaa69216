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


# Business facts for the recorder (records/): a stream, entry field f = JSON {type, at_ms, ...} (see
# docs/DESIGN.md "Facts"). Writers append in the same Lua call as the change; only the recorder trims it.
FACTS = PREFIX + "facts"


def facts() -> str:
    """The facts stream the recorder consumes (never trimmed by writers)."""
    return FACTS
