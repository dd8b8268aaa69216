"""Offer messages and the mirror's view of offers, as pure functions over change-stream entries.

The Lua emits `offer` and `offer_ended` entries (routing/lua.py); the follower hands them to the mirror,
which calls apply_offer_entry: the agent's sockets get the message at once (like a screen pop), and the
agent's record gets `ringing` (an offer is open) and `missed_offers` (today), which the wallboard shows.
"""

from __future__ import annotations

import json
from typing import Any, Protocol

import msgpack
from redis.asyncio import Redis

from callboard import keys

MAX_CUSTOMERS = 20  # an offer shows the matches a person can read at a glance; the pop has the rest
RINGING, MISSED_OFFERS = "ringing", "missed_offers"


class _Changes(Protocol):
    agents: set[str]
    pops: list[tuple[str, dict[str, Any]]]


class _Mirror(Protocol):
    agents: dict[str, dict[str, Any]]
    offers: dict[str, dict[str, Any]]


def customers_of(raw: str | bytes | None) -> tuple[list[dict[str, Any]], bool]:
    """(customers, withheld) from the directory lookup's JSON; malformed or missing means none."""
    if not raw:
        return [], False
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return [], False
    if not isinstance(data, dict):
        return [], False
    customers = data.get("customers")
    good = [c for c in customers if isinstance(c, dict)] if isinstance(customers, list) else []
    return good[:MAX_CUSTOMERS], bool(data.get("withheld"))


def offer_message(data: dict[str, Any]) -> dict[str, Any]:
    """The websocket `offer` message from an `offer` entry."""
    customers, withheld = customers_of(data.get("customers_json"))
    message = {"type": "offer", "offer_id": data.get("offer_id"), "call_sid": data.get("call_sid"),
               "queue": data.get("queue"), "from": data.get("from") or "", "waited_s": data.get("waited_s"),
               "customers": customers, "withheld": withheld, "expires_ms": data.get("expires_ms"), "kind": "call"}
    if data.get("kind") == "transfer":  # a call in progress handed on by another agent (softphone/)
        message.update(kind="transfer", from_agent=data.get("from_agent"), warm=bool(data.get("warm")))
    return message


def offer_ended_message(data: dict[str, Any]) -> dict[str, Any]:
    return {"type": "offer_ended", "offer_id": data.get("offer_id"), "call_sid": data.get("call_sid"),
            "reason": data.get("reason")}


def apply_offer_entry(mirror: _Mirror, kind: str, agent_id: str, data: dict[str, Any], changes: _Changes) -> None:
    """Apply one `offer` / `offer_ended` entry to the mirror (idempotent: entries may be applied twice)."""
    entry = mirror.agents.get(agent_id)
    if entry is None:
        return
    if kind == "offer":
        message = offer_message(data)
        mirror.offers[agent_id] = message
        entry[RINGING] = True
    else:
        message = offer_ended_message(data)
        held = mirror.offers.get(agent_id)
        if held is not None and held.get("offer_id") == data.get("offer_id"):
            del mirror.offers[agent_id]
            entry[RINGING] = False
        if isinstance(data.get("missed_offers"), int):
            entry[MISSED_OFFERS] = data["missed_offers"]
    changes.pops.append((agent_id, message))
    changes.agents.add(agent_id)


async def load_offer_state(redis: Redis, mirror: _Mirror, day: str) -> None:
    """A resync: every agent's open offer and today's missed offers, read from Redis into the mirror."""
    by_agent = await redis.hgetall(keys.OFFER_AGENTS)
    missed = await redis.hgetall(keys.offers_missed(day))
    offers: dict[str, dict[str, Any]] = {}
    for agent, offer_id in by_agent.items():
        state, raw = await redis.hmget(keys.offer(_text(offer_id)), "state", "msg")
        if state == b"open" and raw:
            offers[_text(agent)] = offer_message(msgpack.unpackb(raw, raw=False))
    mirror.offers = offers
    counts = {_text(a): int(n) for a, n in missed.items()}
    for agent_id, entry in mirror.agents.items():
        entry[RINGING] = agent_id in offers
        entry[MISSED_OFFERS] = counts.get(agent_id, 0)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
