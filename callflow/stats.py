"""Queue statistics as pure functions: counters (as Redis keeps them) -> the contract's fields.

Counters are integers so that every instance, and every replay, adds up to the same numbers: times are
kept as millisecond sums. The Lua in callflow/lua.py increments exactly these names.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

# Counter names in a day hash and in a minute bucket.
OFFERED = "offered"
ANSWERED = "answered"
ANSWERED_WITHIN_SL = "answered_within_sl"
ABANDONED = "abandoned"
SHORT_ABANDONED = "short_abandoned"
ANSWER_WAIT_MS = "answer_wait_ms"  # sum of queue time of answered calls (ASA)
HANDLED = "handled"
HANDLE_MS = "handle_ms"  # sum of handle time (talk + wrap-up spent) of handled calls (AHT)
UNSTAFFED = "unstaffed"  # calls turned away because nobody of the queue was signed in; never offered

# Twilio QueueResult -> our outcome counter. `bridged` and its variants are not a leaving outcome: the
# call was answered, which the bridge request already counted. Anything else Twilio might add is "other".
QUEUE_RESULT_OUTCOMES = {
    "hangup": ABANDONED,
    "queue-full": "queue_full",
    "leave": "leave",
    "redirected": "redirected",
    "error": "error",
    "system-error": "system_error",
}
BRIDGED_RESULTS = frozenset({"bridged", "bridging-in-process", "redirected-from-bridged"})
OTHER = "other"
LEAVE_OUTCOMES = tuple(dict.fromkeys([*QUEUE_RESULT_OUTCOMES.values(), OTHER]))

COUNTERS = (OFFERED, ANSWERED, ANSWERED_WITHIN_SL, ABANDONED, SHORT_ABANDONED, ANSWER_WAIT_MS, HANDLED,
            HANDLE_MS, UNSTAFFED, *[o for o in LEAVE_OUTCOMES if o != ABANDONED])


def outcome_of(queue_result: str) -> str | None:
    """The outcome counter of a QueueResult, or None for the bridged results (already counted as answered)."""
    if queue_result in BRIDGED_RESULTS:
        return None
    return QUEUE_RESULT_OUTCOMES.get(queue_result, OTHER)


def parse_queue_time_s(value: str | None) -> int | None:
    """Twilio's QueueTime (whole seconds) or None when absent or not a non-negative number."""
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    if not 0 <= seconds < 10**7:  # also rejects nan and inf
        return None
    return int(seconds)


def _ratio(num: int, den: int) -> float | None:
    return round(num / den, 4) if den > 0 else None


def _mean_s(total_ms: int, count: int) -> float | None:
    return round(total_ms / count / 1000, 3) if count > 0 else None


def stats_from_counters(counters: Mapping[str, int]) -> dict[str, int | float | None]:
    """The contract's statistics table from one window's counters (missing counters are 0).

    service_level = answered_within_sl / (answered + abandoned - short_abandoned); abandon_rate =
    (abandoned - short_abandoned) / the same denominator; both null when the denominator is 0. asa_s and
    aht_s are null when nothing was answered / handled yet.
    """
    c = {name: int(counters.get(name, 0)) for name in COUNTERS}
    base = c[ANSWERED] + c[ABANDONED] - c[SHORT_ABANDONED]
    out: dict[str, int | float | None] = {
        OFFERED: c[OFFERED],
        ANSWERED: c[ANSWERED],
        ANSWERED_WITHIN_SL: c[ANSWERED_WITHIN_SL],
        ABANDONED: c[ABANDONED],
        SHORT_ABANDONED: c[SHORT_ABANDONED],
        "service_level": _ratio(c[ANSWERED_WITHIN_SL], base),
        "abandon_rate": _ratio(c[ABANDONED] - c[SHORT_ABANDONED], base),
        "asa_s": _mean_s(c[ANSWER_WAIT_MS], c[ANSWERED]),
        "aht_s": _mean_s(c[HANDLE_MS], c[HANDLED]),
        HANDLED: c[HANDLED],
        UNSTAFFED: c[UNSTAFFED],
    }
    for outcome in LEAVE_OUTCOMES:
        if outcome != ABANDONED:
            out[outcome] = c[outcome]
    return out


def add_counters(windows: Iterable[Mapping[str, int]]) -> dict[str, int]:
    """Sum several windows' counters (the minute buckets of last_30m)."""
    total: dict[str, int] = {}
    for counters in windows:
        for name, value in counters.items():
            total[name] = total.get(name, 0) + int(value)
    return total


def should_announce(position: int | None, last_position: int | None, queue_time_s: int | None,
                    last_announced_s: int | None, every_s: int) -> bool:
    """Whether the wait TwiML speaks the caller's position: first time, when it changed, or every every_s."""
    if position is None or position <= 0:
        return False
    if last_position is None or last_announced_s is None or position != last_position:
        return True
    if every_s <= 0 or queue_time_s is None:
        return False
    return queue_time_s - last_announced_s >= every_s
