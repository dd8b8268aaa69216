"""Phone numbers in any spelling -> one form, so "03-1234-5678" finds the call from +81312345678."""

from __future__ import annotations

import re

import phonenumbers

_DIGITS = re.compile(r"\D+")


def normalize_number(text: str | None, region: str | None) -> str | None:
    """E.164 when phonenumbers can parse it (national spellings need the center's region), else the digits."""
    if not text:
        return None
    raw = text.strip()
    if raw.startswith("client:") or raw.lower() in ("anonymous", "restricted", "unknown", "private"):
        return None
    try:
        parsed = phonenumbers.parse(raw, region if region else None)
        if phonenumbers.is_possible_number(parsed):
            return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)
    except phonenumbers.NumberParseException:
        pass
    digits = _DIGITS.sub("", raw)
    return digits[:32] or None
