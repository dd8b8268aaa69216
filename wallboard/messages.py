"""Pure builders and parsers of websocket messages, and the wire errors."""

from __future__ import annotations

import json
from typing import Any

import msgpack

from callboard.auth import Claims
from callboard.config import Config
from presence.rules import REJECT_MESSAGES


class WireError(Exception):
    """A client mistake, turned into {"type": "error"} in one place (wallboard/ws.py)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def welcome(claims: Claims, instance: str) -> dict[str, Any]:
    return {"type": "welcome", "role": claims.role, "sub": claims.sub, "instance": instance}


def error(code: str, message: str) -> dict[str, Any]:
    return {"type": "error", "code": code, "message": message}


def rejection(code: str) -> dict[str, Any]:
    return error(code, REJECT_MESSAGES.get(code, code.replace("_", " ")))


def decode(data: str | bytes) -> dict[str, Any]:
    """A client frame (JSON text or msgpack binary) -> dict, or WireError."""
    try:
        obj = json.loads(data) if isinstance(data, str) else msgpack.unpackb(data, raw=False)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError):
        raise WireError("bad_message", "the message is not valid JSON (or msgpack on the msgpack subprotocol)") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("type"), str):
        raise WireError("bad_message", 'a message must be an object with a "type"')
    return obj


def topics_for(claims: Claims, config: Config) -> set[str]:
    """What a token may see: agents their own record, their team and their queues; others all or a scope."""
    if claims.role == "agent":
        agent = config.agent(claims.sub)
        if agent is None:
            raise WireError("unknown_agent", f"no agent {claims.sub!r} in this center's configuration")
        topics = {f"agent:{agent.id}"} | {f"queue:{q}" for q in agent.queues}
        if agent.team:
            topics.add(f"team:{agent.team}")
        return topics
    if not claims.queues and not claims.teams:
        return {"all"}
    topics = {f"team:{t}" for t in claims.teams or ()}
    for name in claims.queues or ():
        queue = config.queue(name)
        if queue is not None:
            topics.add(f"queue:{name}")
            if queue.team:
                topics.add(f"team:{queue.team}")
    for team in claims.teams or ():
        topics |= {f"queue:{q.name}" for q in config.queues if q.team == team}
    return topics
