"""Text folding for search: one comparable form for every spelling a person might type (pure).

NFKC makes full-width Latin and digits ASCII and half-width katakana full-width; lower-casing makes search
case-blind; katakana become hiragana so a reading typed either way (ヤマダ, やまだ) finds the same kana.
"""

from __future__ import annotations

import unicodedata

_KATAKANA_TO_HIRAGANA = {code: code - 0x60 for code in range(0x30A1, 0x30F7)}


def fold(text: str | None) -> str:
    if not text:
        return ""
    return unicodedata.normalize("NFKC", text).lower().translate(_KATAKANA_TO_HIRAGANA)


def like_pattern(text: str) -> str:
    """A LIKE pattern for `text` anywhere, with LIKE's own wildcards escaped (ESCAPE '\\')."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"
