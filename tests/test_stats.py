"""Derived statistics from counters: the contract's formulas, nulls on 0/0, QueueResult outcomes."""

from __future__ import annotations

from callflow.stats import add_counters, outcome_of, parse_queue_time_s, should_announce, stats_from_counters


def test_contract_example_numbers() -> None:
    s = stats_from_counters({"offered": 10, "answered": 7, "answered_within_sl": 6, "abandoned": 2,
                             "short_abandoned": 1, "answer_wait_ms": 86_100, "handled": 5, "handle_ms": 901_000})
    assert s["service_level"] == 0.75  # 6 / (7 + 2 - 1)
    assert s["abandon_rate"] == 0.125  # (2 - 1) / 8
    assert s["asa_s"] == 12.3
    assert s["aht_s"] == 180.2
    assert (s["offered"], s["answered"], s["abandoned"], s["short_abandoned"]) == (10, 7, 2, 1)


def test_empty_window_has_nulls_not_zero_division() -> None:
    s = stats_from_counters({})
    assert s["service_level"] is None and s["abandon_rate"] is None
    assert s["asa_s"] is None and s["aht_s"] is None
    assert s["offered"] == 0 and s["unstaffed"] == 0


def test_only_short_abandons_is_0_over_0() -> None:
    s = stats_from_counters({"offered": 2, "abandoned": 2, "short_abandoned": 2})
    assert s["service_level"] is None and s["abandon_rate"] is None


def test_queue_results_map_to_outcomes() -> None:
    assert outcome_of("hangup") == "abandoned"
    assert outcome_of("queue-full") == "queue_full"
    assert outcome_of("system-error") == "system_error"
    assert outcome_of("bridged") is None
    assert outcome_of("redirected-from-bridged") is None
    assert outcome_of("something-new") == "other"
    assert outcome_of("") == "other"


def test_queue_time_parsing_refuses_garbage() -> None:
    assert parse_queue_time_s("12") == 12
    assert parse_queue_time_s(" 7.9 ") == 7
    for bad in (None, "", "abc", "-3", "nan", "inf", "1e30"):
        assert parse_queue_time_s(bad) is None


def test_add_counters() -> None:
    assert add_counters([{"a": 1}, {"a": 2, "b": 3}, {}]) == {"a": 3, "b": 3}


def test_position_announced_first_time_on_change_and_every_period() -> None:
    assert should_announce(3, None, 0, None, 30)
    assert not should_announce(3, 3, 20, 0, 30)
    assert should_announce(3, 3, 30, 0, 30)
    assert should_announce(2, 3, 5, 0, 30)
    assert not should_announce(None, 3, 5, 0, 30)
    assert not should_announce(0, None, 5, None, 30)
