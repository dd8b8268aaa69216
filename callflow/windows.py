"""Statistics windows: which `today` a moment belongs to, DST-safe, and the minute buckets of last_30m.

A `today` window starts at the first instant whose local wall-clock time reaches reset_time on its date:
- reset_time inside a spring-forward gap (it never happens that day): the window starts when the clocks
  jump, the first instant past it;
- reset_time inside a fall-back overlap (it happens twice): the window starts at the first occurrence.
day_key() is derived from the same starts, so it never goes backwards while the wall clock repeats an hour.
"""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

LAST_WINDOW_MINUTES = 30


def _reset(reset_time: str) -> time:
    hours, minutes = reset_time.split(":")
    return time(int(hours), int(minutes))


def _wall(ts: float, zone: ZoneInfo) -> datetime:
    return datetime.fromtimestamp(ts, zone).replace(tzinfo=None)


@lru_cache(maxsize=1024)
def window_start_ms(day: date, timezone: str, reset_time: str) -> int:
    """Epoch ms at which the `today` window of local date `day` starts (see the module docstring)."""
    zone = ZoneInfo(timezone)
    wanted = datetime.combine(day, _reset(reset_time))
    existing = []
    for fold in (0, 1):
        ts = wanted.replace(tzinfo=zone, fold=fold).timestamp()
        if _wall(ts, zone) == wanted:
            existing.append(ts)
    if existing:
        return int(min(existing) * 1000)
    # A gap: the wall clock skips reset_time. Find the jump (whole seconds) between the two readings.
    lo, hi = sorted(int(wanted.replace(tzinfo=zone, fold=f).timestamp()) for f in (0, 1))
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _wall(mid, zone) >= wanted:
            hi = mid
        else:
            lo = mid
    return hi * 1000


def _window_day(now_ms: int, timezone: str, reset_time: str) -> date:
    local_day = datetime.fromtimestamp(now_ms / 1000, ZoneInfo(timezone)).date()
    for day in (local_day + timedelta(days=1), local_day, local_day - timedelta(days=1)):
        if window_start_ms(day, timezone, reset_time) <= now_ms:
            return day
    return local_day - timedelta(days=2)  # unreachable for real zones; keeps the function total


def day_key(now_ms: int, timezone: str, reset_time: str) -> str:
    """The local date on which the `today` window containing now_ms started (ISO yyyy-mm-dd)."""
    return _window_day(now_ms, timezone, reset_time).isoformat()


def day_start_ms(now_ms: int, timezone: str, reset_time: str) -> int:
    """Epoch ms at which the current `today` window started (wall-clock reset_time, resolved in the zone)."""
    return window_start_ms(_window_day(now_ms, timezone, reset_time), timezone, reset_time)


def epoch_minute(now_ms: int) -> int:
    """The minute bucket (minutes since the epoch) a moment falls in."""
    return now_ms // 60_000
