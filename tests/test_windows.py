"""`today` windows across time zones and DST changes, and the last_30m minute buckets."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

from callflow.windows import day_key, day_start_ms, epoch_minute


def ms(text: str, zone: str = "UTC") -> int:
    """'2025-03-30 01:59:59' read as local time in `zone` (fold=0) -> epoch ms."""
    return int(datetime.fromisoformat(text).replace(tzinfo=ZoneInfo(zone)).timestamp() * 1000)


def test_midnight_reset_in_utc() -> None:
    assert day_key(ms("2025-11-21 00:00:00"), "UTC", "00:00") == "2025-11-21"
    assert day_key(ms("2025-11-20 23:59:59"), "UTC", "00:00") == "2025-11-20"
    assert day_start_ms(ms("2025-11-21 13:00:00"), "UTC", "00:00") == ms("2025-11-21 00:00:00")


def test_reset_time_in_the_zone_not_in_utc() -> None:
    tokyo = "Asia/Tokyo"
    # 06:00 in Tokyo is 21:00 UTC the day before
    assert day_key(ms("2025-11-21 05:59:00", tokyo), tokyo, "06:00") == "2025-11-20"
    assert day_key(ms("2025-11-21 06:00:00", tokyo), tokyo, "06:00") == "2025-11-21"
    assert day_start_ms(ms("2025-11-21 12:00:00", tokyo), tokyo, "06:00") == ms("2025-11-20 21:00:00")


def test_spring_forward_day_is_23_hours_long() -> None:
    paris = "Europe/Paris"
    start = day_start_ms(ms("2025-03-30 12:00:00", paris), paris, "00:00")
    nxt = day_start_ms(ms("2025-03-31 12:00:00", paris), paris, "00:00")
    assert start == ms("2025-03-29 23:00:00")
    assert nxt - start == 23 * 3600 * 1000


def test_fall_back_day_is_25_hours_long() -> None:
    paris = "Europe/Paris"
    start = day_start_ms(ms("2025-10-26 12:00:00", paris), paris, "00:00")
    nxt = day_start_ms(ms("2025-10-27 12:00:00", paris), paris, "00:00")
    assert nxt - start == 25 * 3600 * 1000


def test_reset_time_inside_the_spring_forward_gap_starts_when_the_clocks_jump() -> None:
    paris = "Europe/Paris"  # 2025-03-30 02:00 CET -> 03:00 CEST (01:00 UTC); 02:30 never happens
    jump = ms("2025-03-30 01:00:00")
    assert day_start_ms(jump, paris, "02:30") == jump
    assert day_key(jump - 1, paris, "02:30") == "2025-03-29"
    assert day_key(jump, paris, "02:30") == "2025-03-30"


def test_reset_time_inside_the_fall_back_overlap_starts_at_its_first_occurrence_and_never_goes_back() -> None:
    paris = "Europe/Paris"  # 2025-10-26 03:00 CEST -> 02:00 CET (01:00 UTC); 02:30 happens twice
    first = ms("2025-10-26 00:30:00")  # 02:30 CEST
    assert day_start_ms(first + 1, paris, "02:30") == first
    assert day_key(first - 1, paris, "02:30") == "2025-10-25"
    keys = [day_key(first + s * 60_000, paris, "02:30") for s in range(0, 180)]
    assert set(keys) == {"2025-10-26"}  # 02:00-02:30 CET comes again but the window does not go back


def test_every_hour_of_a_dst_year_maps_to_a_window_that_contains_it() -> None:
    zone = "America/New_York"
    t = ms("2025-01-01 00:00:00", zone)
    last_key = ""
    for _ in range(24 * 366):
        key = day_key(t, zone, "04:30")
        start = day_start_ms(t, zone, "04:30")
        assert start <= t < start + 26 * 3600 * 1000
        assert key >= last_key
        last_key = key
        t += 3600 * 1000


def test_epoch_minute() -> None:
    assert epoch_minute(0) == 0
    assert epoch_minute(59_999) == 0
    assert epoch_minute(60_000) == 1
