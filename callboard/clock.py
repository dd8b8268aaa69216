"""Time source. Everything that needs "now" takes a Clock so tests can drive time instead of sleeping."""

from __future__ import annotations

import time


class Clock:
    """Wall-clock time in Unix epoch milliseconds."""

    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000


class FakeClock(Clock):
    """A clock tests move by hand."""

    def __init__(self, start_ms: int = 1_763_700_000_000) -> None:
        self._now_ms = start_ms

    def now_ms(self) -> int:
        return self._now_ms

    def advance(self, seconds: float) -> None:
        self._now_ms += int(seconds * 1000)

    def set(self, now_ms: int) -> None:
        self._now_ms = now_ms
