"""A customer's fields as the API, the CSV import and the pop see them: validation and shapes (pure).

Every limit is here, so a 400 always names the field and says the limit in English. Stored phone numbers
are E.164 (customers/phones.py); `search_text` is derived from the searchable fields, never sent.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from typing import Any

from customers import phones as ph
from customers.fold import fold

MAX_NAME = 200
MAX_KANA = 200
MAX_COMPANY = 200
MAX_EMAIL = 254  # RFC 5321's limit on a forward path
MAX_TEAM = 64
MAX_OWNER = 121  # an agent id (callboard.config.AGENT_ID_RE)
MAX_EXTERNAL_ID = 100
MAX_MEMO = 4000  # a screenful; longer histories belong in notes
MAX_PHONES = 10
MAX_NOTE = 4000
MAX_CALL_SID = 64
POP_NOTES = 3  # notes in a pop entry: what was said last time, not the whole history
EDITABLE = ("name", "kana", "company", "phones", "email", "owner", "team", "external_id", "memo")
READ_ONLY = frozenset({"id", "created_ms", "updated_ms", "notes"})  # sent back by clients that PUT a GET
_EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+$")
_CALL_SID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class FieldError(ValueError):
    """Bad input for one field: `field` names it, str() is the English reason (the 400 body)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


@dataclass(frozen=True, slots=True)
class CustomerFields:
    """The editable fields, validated; phones are E.164, in the order given, without duplicates."""

    name: str
    kana: str = ""
    company: str = ""
    phones: tuple[str, ...] = ()
    email: str = ""
    owner: str | None = None
    team: str | None = None
    external_id: str | None = None
    memo: str = ""

    def search_text(self) -> str:
        """Every searchable spelling in one folded line: fields, then each phone as E.164 and national digits."""
        parts = [fold(self.name), fold(self.kana), fold(self.company), fold(self.email), fold(self.external_id)]
        for number in self.phones:
            parts.append(ph.digits(number) + " " + ph.national_digits(number))
        return "\n".join(parts)

    def row(self) -> dict[str, Any]:
        return {"name": self.name, "kana": self.kana, "company": self.company, "email": self.email,
                "owner": self.owner, "team": self.team, "external_id": self.external_id, "memo": self.memo,
                "search_text": self.search_text()}


def new_id(prefix: str = "cu_") -> str:
    return prefix + secrets.token_hex(8)


def parse_customer(body: Any, *, region: str, agents: frozenset[str] | None = None,
                   teams: frozenset[str] | None = None) -> CustomerFields:
    """Validate a create/replace body (a JSON object); raises FieldError naming the first bad field."""
    if not isinstance(body, dict):
        raise FieldError("body", "must be a JSON object")
    unknown = sorted(k for k in body if k not in EDITABLE and k not in READ_ONLY)
    if unknown:
        raise FieldError(str(unknown[0]), f"unknown field (editable: {', '.join(EDITABLE)})")
    name = _text(body, "name", MAX_NAME, required=True)
    phones = _phones(body.get("phones", []), region)
    email = _text(body, "email", MAX_EMAIL)
    if email and not _EMAIL_RE.match(email):
        raise FieldError("email", f"{email!r} is not an email address")
    owner = _optional(body, "owner", MAX_OWNER)
    if owner is not None and agents is not None and owner not in agents:
        raise FieldError("owner", f"no agent {owner!r} in this center")
    team = _optional(body, "team", MAX_TEAM)
    if team is not None and teams is not None and team not in teams:
        raise FieldError("team", f"no team {team!r} in this center")
    return CustomerFields(name=name, kana=_text(body, "kana", MAX_KANA), company=_text(body, "company", MAX_COMPANY),
                          phones=phones, email=email, owner=owner, team=team,
                          external_id=_optional(body, "external_id", MAX_EXTERNAL_ID),
                          memo=_text(body, "memo", MAX_MEMO, strip=False))


def parse_note(body: Any) -> tuple[str, str | None]:
    """A note body {"text", "call_sid"?} -> (text, call_sid)."""
    if not isinstance(body, dict):
        raise FieldError("body", "must be a JSON object")
    unknown = sorted(k for k in body if k not in ("text", "call_sid"))
    if unknown:
        raise FieldError(str(unknown[0]), "unknown field (a note has text and call_sid)")
    text = _text(body, "text", MAX_NOTE, required=True, strip=False)
    if not text.strip():
        raise FieldError("text", "is required")
    call_sid = _optional(body, "call_sid", MAX_CALL_SID)
    if call_sid is not None and not _CALL_SID_RE.match(call_sid):
        raise FieldError("call_sid", "must be a Twilio CallSid (letters and digits)")
    return text, call_sid


def _text(body: dict[str, Any], key: str, limit: int, *, required: bool = False, strip: bool = True) -> str:
    value = body.get(key)
    if value is None:
        if required:
            raise FieldError(key, "is required")
        return ""
    if not isinstance(value, str):
        raise FieldError(key, "must be a string")
    if strip:
        value = value.strip()
    if required and not value:
        raise FieldError(key, "is required")
    if len(value) > limit:
        raise FieldError(key, f"is longer than {limit} characters")
    if "\x00" in value:
        raise FieldError(key, "must not contain NUL characters")
    return value


def _optional(body: dict[str, Any], key: str, limit: int) -> str | None:
    return _text(body, key, limit) or None


def _phones(value: Any, region: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = [p for p in re.split(r"[;,、\n]", value) if p.strip()]  # one CSV cell may hold several
    if not isinstance(value, list):
        raise FieldError("phones", "must be a list of phone numbers")
    if len(value) > MAX_PHONES:
        raise FieldError("phones", f"at most {MAX_PHONES} numbers")
    out: list[str] = []
    for i, raw in enumerate(value):
        if not isinstance(raw, str):
            raise FieldError(f"phones[{i}]", "must be a string")
        try:
            number = ph.normalize(raw, region)
        except ph.PhoneError as exc:
            raise FieldError(f"phones[{i}]", str(exc)) from None
        if number not in out:
            out.append(number)
    return tuple(out)
