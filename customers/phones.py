"""Phone numbers as people type them, as E.164: pure functions over the `phonenumbers` package.

A Japanese center types `03-1234-5678` or `090-1111-2222`; Twilio's caller ID says `+81312345678`. Both
are stored and compared as E.164, parsed with the center's `default_region` when a number has no `+`.
"""

from __future__ import annotations

import re

import phonenumbers

MAX_PHONE_INPUT = 40  # longer than any real spelling of a number; refuses pasted garbage early
WITHHELD = frozenset({"", "anonymous", "restricted", "unknown", "private", "unavailable", "blocked"})
# Characters people put in numbers: digits, +, spaces (ASCII and ideographic), hyphens of every width,
# dots, slashes and parentheses. NFKC in fold() has already made full-width digits ASCII.
_PHONE_LIKE = re.compile(r"^\+?[0-9\s\-‐‑‒–—―ー−().／/]{3,40}$")


class PhoneError(ValueError):
    """A number that is not a valid phone number; the message is English and safe to show."""


def normalize(raw: str, region: str) -> str:
    """E.164 for a number in any usual spelling; national numbers are read in `region` (e.g. "JP")."""
    text = (raw or "").strip()
    if not text:
        raise PhoneError("a phone number is empty")
    if len(text) > MAX_PHONE_INPUT:
        raise PhoneError(f"{text[:20]}... is too long for a phone number")
    text = _ascii_digits(text)
    if text.startswith("00") and not text.startswith("+"):
        text = "+" + text[2:]  # the international prefix most of the world dials
    try:
        parsed = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException:
        raise PhoneError(f"{raw!r} is not a phone number") from None
    if not phonenumbers.is_valid_number(parsed):
        raise PhoneError(f"{raw!r} is not a valid phone number (read in region {region})")
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


def try_normalize(raw: str, region: str) -> str | None:
    try:
        return normalize(raw, region)
    except PhoneError:
        return None


def is_withheld(caller: str | None) -> bool:
    """Twilio's From for a hidden caller ID: anonymous, restricted, unknown, or empty."""
    return (caller or "").strip().lower() in WITHHELD


def looks_like_phone(query: str) -> bool:
    """A search text that is a spelling of a number (at least 3 digits, only number punctuation)."""
    text = _ascii_digits(query.strip())
    return bool(_PHONE_LIKE.match(text)) and sum(c.isdigit() for c in text) >= 3


def digits(text: str) -> str:
    return "".join(c for c in _ascii_digits(text) if c.isdigit())


def national_digits(e164: str) -> str:
    """The number as dialled at home, digits only: +81312345678 -> 0312345678 (for substring search)."""
    try:
        parsed = phonenumbers.parse(e164, None)
    except phonenumbers.NumberParseException:
        return digits(e164)
    return digits(phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.NATIONAL))


def _ascii_digits(text: str) -> str:
    # Full-width digits (０３−１２３４) are common in Japanese input; make them ASCII.
    return text.translate(_FULLWIDTH)


_FULLWIDTH = str.maketrans("０１２３４５６７８９＋（）　－", "0123456789+() -")
