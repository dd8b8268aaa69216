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
# Answered / abandoned calls whose queue time nobody knows (a call this server never saw enter, whose
# request carried no usable QueueTime): counted in `answered` / `abandoned` — that much is known — but
# kept out of everything that needs the wait (SL, short abandons, abandon rate, ASA) instead of guessing 0.
ANSWERED_WAIT_UNKNOWN = "answered_wait_unknown"
ABANDONED_WAIT_UNKNOWN = "abandoned_wait_unknown"

# A QueueTime is believed only within bounds; beyond them the measured time is used (and a warning logged).
MAX_QUEUE_TIME_S = 4 * 3600  # Twilio ends every call at 4 hours: no caller can have waited longer
# For a call this server saw enter, QueueTime may exceed the time since its `incoming` by at most this:
# Twilio's clock and ours differ a little, and Twilio's requests can be delayed (its own retries take ~15 s).
QUEUE_TIME_TOLERANCE_S = 60

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
            HANDLE_MS, UNSTAFFED, ANSWERED_WAIT_UNKNOWN, ABANDONED_WAIT_UNKNOWN,
            *[o for o in LEAVE_OUTCOMES if o != ABANDONED])
WAIT_UNKNOWN = "wait_unknown"  # the snapshot field: answered + abandoned calls whose wait is unknown

# Why a QueueTime was not believed (bounded_queue_time_ms).
OVER_MAX, OVER_MEASURED = "over_max", "over_measured"


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


def bounded_queue_time_ms(given_ms: int | None, enq_ms: int | None, seen_enter: bool,
                          now_ms: int) -> tuple[int | None, str | None]:
    """The queue time to count, and why Twilio's was refused (None when it was used or absent).

    `given_ms` is Twilio's QueueTime, `enq_ms` when the call entered (from our `incoming`, or inferred when
    an unknown call was adopted: then `seen_enter` is False and only the 4-hour bound applies). A refused
    or missing QueueTime falls back to the measured time; with nothing to measure from the wait is unknown
    (None), never zero. The Lua twin is `bounded_queue_time` in callflow/lua.py.
    """
    measured = max(now_ms - enq_ms, 0) if enq_ms is not None else None
    if given_ms is None:
        return measured, None
    if given_ms > MAX_QUEUE_TIME_S * 1000:
        return measured, OVER_MAX
    if seen_enter and measured is not None and given_ms > measured + QUEUE_TIME_TOLERANCE_S * 1000:
        return measured, OVER_MEASURED
    return given_ms, None


def _ratio(num: int, den: int) -> float | None:
    return round(num / den, 4) if den > 0 else None


def _mean_s(total_ms: int, count: int) -> float | None:
    return round(total_ms / count / 1000, 3) if count > 0 else None


def stats_from_counters(counters: Mapping[str, int]) -> dict[str, int | float | None]:
    """The contract's statistics table from one window's counters (missing counters are 0).

    service_level = answered_within_sl / (answered + abandoned - short_abandoned); abandon_rate =
    (abandoned - short_abandoned) / the same denominator; both null when the denominator is 0. asa_s and
    aht_s are null when nothing was answered / handled yet. Calls whose wait is unknown are left out of
    the denominators and of asa_s (see ANSWERED_WAIT_UNKNOWN) and reported as `wait_unknown`.
    """
    c = {name: int(counters.get(name, 0)) for name in COUNTERS}
    answered_known = c[ANSWERED] - c[ANSWERED_WAIT_UNKNOWN]
    abandoned_known = c[ABANDONED] - c[ABANDONED_WAIT_UNKNOWN]
    base = answered_known + abandoned_known - c[SHORT_ABANDONED]
    out: dict[str, int | float | None] = {
        OFFERED: c[OFFERED],
        ANSWERED: c[ANSWERED],
        ANSWERED_WITHIN_SL: c[ANSWERED_WITHIN_SL],
        ABANDONED: c[ABANDONED],
        SHORT_ABANDONED: c[SHORT_ABANDONED],
        "service_level": _ratio(c[ANSWERED_WITHIN_SL], base),
        "abandon_rate": _ratio(abandoned_known - c[SHORT_ABANDONED], base),
        "asa_s": _mean_s(c[ANSWER_WAIT_MS], answered_known),
        "aht_s": _mean_s(c[HANDLE_MS], c[HANDLED]),
        HANDLED: c[HANDLED],
        UNSTAFFED: c[UNSTAFFED],
        WAIT_UNKNOWN: c[ANSWERED_WAIT_UNKNOWN] + c[ABANDONED_WAIT_UNKNOWN],
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
