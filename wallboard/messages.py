"""Pure builders and parsers of websocket messages, and the wire errors."""

from __future__ import annotations

import json
from typing import Any

import msgpack
import orjson

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


# Client messages and API bodies are flat objects (hello, set_state: depth 1-2). 32 levels is generous for any
# later message, and far below what recursive decoders and encoders survive (Python's limit is 1,000 frames).
MAX_NESTING = 32
TOO_DEEP = f"the message is nested too deeply (at most {MAX_NESTING} levels of arrays and objects)"
NOT_JSON = "the message is not valid JSON (or msgpack on the msgpack subprotocol)"
_FLAT = frozenset((str, int, bool, type(None)))  # the value types orjson and json.loads decode alike


def _may_be_deep(data: str | bytes) -> bool:
    """Cheap pre-check: fewer brackets than the limit cannot nest deeper than it (every ordinary message)."""
    if isinstance(data, str):
        return data.count("[") + data.count("{") > MAX_NESTING
    return data.count(b"[") + data.count(b"{") > MAX_NESTING


def _nesting_of(obj: Any, limit: int) -> int:
    """Depth of a decoded value, level by level (no recursion); stops counting past `limit`."""
    depth, level = 0, [obj] if isinstance(obj, dict | list) else []
    while level and depth <= limit:
        depth += 1
        inner: list[Any] = []
        for value in level:
            inner.extend(v for v in (value.values() if isinstance(value, dict) else value) if isinstance(v, dict | list))
        level = inner
    return depth


def parse_json(data: str | bytes) -> Any:
    """JSON text (str, or bytes in UTF-8/16/32) -> value, or WireError("bad_message") in plain English.

    The one place client JSON is decoded (websocket frames and HTTP API bodies). The C decoder stops at the
    interpreter's recursion limit with a RecursionError (quickly: it fails on the way down); anything it
    does return is then held to MAX_NESTING, so no caller ever sees a deeper value or a traceback.

    Fast path: orjson, about 7x faster than json.loads on a set_state frame (the json module's part was a
    tenth of the server's work per intent). It is taken only when it gives exactly what json.loads would: a
    flat object of strings, integers, booleans and nulls (orjson turns an integer beyond 64 bits into a
    float, and it refuses what json.loads accepts: NaN, lone surrogates, UTF-16). Anything else, including
    every input orjson refuses, goes through json.loads as before, with the same errors.
    """
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        pass
    else:
        if type(obj) is dict and all(type(v) in _FLAT for v in obj.values()):
            return obj  # depth 1: nothing to hold to MAX_NESTING
    try:
        obj = json.loads(data)
    except RecursionError:
        raise WireError("bad_message", TOO_DEEP) from None
    except ValueError:  # JSONDecodeError and UnicodeDecodeError are both ValueErrors
        raise WireError("bad_message", NOT_JSON) from None
    if _may_be_deep(data) and _nesting_of(obj, MAX_NESTING) > MAX_NESTING:
        raise WireError("bad_message", TOO_DEEP)
    return obj


def decode(data: str | bytes) -> dict[str, Any]:
    """A client frame (JSON text or msgpack binary) -> dict, or WireError."""
    if isinstance(data, str):
        obj = parse_json(data)
    else:
        try:
            # msgpack's own stack limit (StackError) bounds its recursion; our limit is checked after.
            obj = msgpack.unpackb(data, raw=False)
        except msgpack.StackError:
            raise WireError("bad_message", TOO_DEEP) from None
        except (ValueError, msgpack.ExtraData, msgpack.FormatError):
            raise WireError("bad_message", NOT_JSON) from None
        # msgpack bytes say nothing about brackets: measured, unless every value is a scalar (depth 1; the
        # walk cost more than the unpacking of a set_state frame)
        flat = type(obj) is dict and all(type(v) in _FLAT for v in obj.values())
        if not flat and _nesting_of(obj, MAX_NESTING) > MAX_NESTING:
            raise WireError("bad_message", TOO_DEEP)
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
