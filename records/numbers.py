"""Phone numbers in any spelling -> one form, so "03-1234-5678" finds the call from +81312345678."""

from __future__ import annotations

import re

import phonenumbers

from customers.phones import try_normalize

_DIGITS = re.compile(r"\D+")


def normalize_number(text: str | None, region: str | None) -> str | None:
    """E.164 as the directory stores it (customers/phones.py), else E.164 of a merely possible number (test
    and fictional ranges), else the digits: the same function runs on the stored number and on the search."""
    if not text:
        return None
    raw = text.strip()
    if raw.startswith("client:") or raw.lower() in ("anonymous", "restricted", "unknown", "private"):
        return None
    if region and (e164 := try_normalize(raw, region)):
        return e164
    try:
        parsed = phonenumbers.parse(raw, region if region else None)
        if phonenumbers.is_possible_number(parsed):
            return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)
    except phonenumbers.NumberParseException:
        pass
    digits = _DIGITS.sub("", raw)
    return digits[:32] or None
