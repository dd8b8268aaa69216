"""The controls' rules as pure functions: body validation, who may do what, what each bridge mode can do.

Every refusal is a ControlError with the HTTP status, the field it is about, and an English sentence; the
views turn it into `{"error", "code", "field"}` in one place.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from callboard.config import Config

CONFERENCE_ONLY = frozenset({"hold", "transfer", "monitor"})
MONITOR_MODES = ("listen", "whisper", "barge")
NOTE_MAX_CHARS = 2000
CALL_SID_MAX = 64


class ControlError(Exception):
    def __init__(self, status: int, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.field = status, code, field


@dataclass(frozen=True, slots=True)
class Transfer:
    agent: str | None
    queue: str | None
    warm: bool


def check_mode(control: str, bridge: str) -> None:
    """409 for a control the bridge mode cannot do (queue mode has no conference to act on)."""
    if control in CONFERENCE_ONLY and bridge != "conference":
        raise ControlError(409, "needs_conference",
                           f"{control} needs the conference bridge; this center bridges calls through a queue "
                           "([center] bridge = \"queue\")")


def check_call_sid(call_sid: str) -> None:
    if not call_sid or len(call_sid) > CALL_SID_MAX or not call_sid.isascii() or not call_sid.isalnum():
        raise ControlError(400, "bad_call_sid", "call_sid must be a Twilio CallSid (letters and digits)", "call_sid")


def _object(body: Any, fields: tuple[str, ...]) -> dict[str, Any]:
    """The body as a JSON object of these fields only: a misspelt one ("wram") is refused, never ignored."""
    if not isinstance(body, dict):
        raise ControlError(400, "bad_message", "the body must be a JSON object")
    for name in body:
        if name not in fields:
            takes = f"takes {', '.join(fields)}" if fields else "takes no fields"
            raise ControlError(400, "unknown_field", f"unknown field {str(name)[:64]!r}: this control {takes}",
                               str(name)[:64])
    return body


def no_fields(body: Any) -> None:
    """A control without parameters (hang-up): an empty body, `{}`, or none at all."""
    if body is not None:
        _object(body, ())


def hold_on(body: Any) -> bool:
    on = _object(body, ("on",)).get("on")
    if not isinstance(on, bool):
        raise ControlError(400, "bad_message", '"on" must be true or false', "on")
    return on


def transfer(body: Any, config: Config) -> Transfer:
    b = _object(body, ("agent", "queue", "warm"))
    agent, queue, warm = b.get("agent"), b.get("queue"), b.get("warm", False)
    if not isinstance(warm, bool):
        raise ControlError(400, "bad_message", '"warm" must be true or false', "warm")
    if (agent is None) == (queue is None):
        raise ControlError(400, "bad_message", 'give exactly one of "agent" or "queue"', "agent")
    if agent is not None:
        if not isinstance(agent, str) or config.agent(agent) is None:
            raise ControlError(400, "unknown_agent", f"no agent {str(agent)[:64]!r} in this center", "agent")
        return Transfer(agent, None, warm)
    if not isinstance(queue, str) or config.queue(queue) is None:
        raise ControlError(400, "unknown_queue", f"no queue {str(queue)[:64]!r} in this center", "queue")
    if warm:
        raise ControlError(400, "bad_message", "a transfer to a queue cannot be warm (nobody to talk to first)", "warm")
    return Transfer(None, queue, False)


def monitor_mode(body: Any) -> str:
    mode = _object(body, ("mode",)).get("mode")
    if mode not in MONITOR_MODES:
        raise ControlError(400, "bad_message", f'"mode" must be one of {", ".join(MONITOR_MODES)}', "mode")
    return str(mode)


def wrap_up(body: Any, config: Config) -> tuple[str, str]:
    b = _object(body, ("disposition", "note"))
    disposition, note = b.get("disposition"), b.get("note", "")
    if not isinstance(disposition, str) or disposition not in config.center.dispositions:
        raise ControlError(400, "bad_disposition",
                           f'"disposition" must be one of: {", ".join(config.center.dispositions)}', "disposition")
    if note is None:
        note = ""
    if not isinstance(note, str):
        raise ControlError(400, "bad_message", '"note" must be text', "note")
    if len(note) > NOTE_MAX_CHARS:
        raise ControlError(400, "bad_message", f'"note" is longer than {NOTE_MAX_CHARS} characters', "note")
    return disposition, note


def client_identity(agent_id: str) -> str:
    return f"client:{agent_id}"


def supervisor_identity(sub: str) -> str:
    """The Twilio client identity of a supervisor (their voice token uses the same)."""
    return f"client:supervisor:{sub}"


def monitor_options(mode: str, agent_leg: str | None) -> dict[str, Any]:
    """Participants create options for a supervisor: listen muted, whisper coaching the agent, barge plain."""
    if mode == "listen":
        return {"muted": True, "beep": "false"}
    if mode == "whisper":
        if not agent_leg:
            raise ControlError(409, "no_agent_leg", "there is no agent on this call to whisper to")
        return {"coaching": True, "call_sid_to_coach": agent_leg, "beep": "false"}
    return {"beep": "false"}
