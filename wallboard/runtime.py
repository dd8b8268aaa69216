"""Process-level care of the event loop that every socket shares: the collector and the loop-stall watch.

Why it exists: at 10,000 sockets the heap held about 1.8 M objects tracked by Python's cyclic collector,
and each full collection stopped the loop for close to a second while freeing nothing (long-lived sessions,
config, mirror). Those pauses were exactly the seconds with a wallboard p99 over 1 s. So:

- `tune_collector()` freezes what start-up allocated (gc.freeze: the config, the mirror, imported modules
  are never scanned again) and raises the thresholds so that young collections stay rare and cheap and a
  full collection waits for a real amount of new garbage (see GC_THRESHOLDS).
- `LoopWatch` measures what the loop actually does: every STALL_PROBE_S it notes how late its own timer
  fired. Any stall (a collection, a long synchronous step) shows up as lateness, exported as
  `callboard_event_loop_stall_seconds` (histogram) and `callboard_event_loop_stall_max_seconds` (the longest
  in the last STALL_WINDOW_S). Collections are timed too (`callboard_gc_pause_seconds{generation}`), so a
  stall can be told apart from a collector pause.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import time
from collections import deque
from collections.abc import Coroutine
from typing import Any, TypeVar

from wallboard.metrics import Metrics

log = logging.getLogger(__name__)

# Generation 0 is collected after this many net allocations of tracked objects, and a young collection
# walks every young object still alive. CPython's 700 means a collection every few hundred messages under
# load. In a connect storm nearly everything allocated survives (each socket keeps 30-45 tracked objects),
# so each young collection walks the whole threshold: at 50,000 the longest took 78-120 ms of CPU in a
# 10,000-socket storm on the loaded bench machine, a stall by itself; at 10,000, 25-36 ms, for a collector
# total 18-62 % higher (five times the collections; about 0.01-0.03 ms per connection) (docs/benchmarks.md,
# "Third pass on the connect storm").
# Generation 1 is collected every 100 young collections, so after the same 1,000,000 survivors as the
# earlier (50,000, 20): its collections stay as rare as before. A full collection additionally waits until
# the young survivors are 25 % of the old heap (CPython's own rule), which a steady server with a frozen
# start-up heap rarely reaches.
GC_THRESHOLDS = (10_000, 100, 100)
STALL_PROBE_S = 0.05  # the watch's own tick: stalls shorter than this are not worth a metric
STALL_WINDOW_S = 60.0


T = TypeVar("T")


def run_loop(main: Coroutine[Any, Any, T]) -> T:
    """Run the server's main coroutine on asyncio's loop, or on uvloop with CALLBOARD_EVENT_LOOP=uvloop.

    Why an option and not the default: the fan-out writes one frame per subscriber per delta (about 25,000
    socket writes/s at 1,000 changes/s with teams of 25) and uvloop's transport.write is C, but alternating
    runs on the loaded 2-core bench machine did not show it faster (docs/benchmarks.md); a default changes
    on measurements, not on expectations.
    """
    choice = os.environ.get("CALLBOARD_EVENT_LOOP", "asyncio")
    if choice == "uvloop":
        try:
            import uvloop
        except ImportError:
            log.info("uvloop is not installed: running on asyncio's own event loop")
        else:
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                return runner.run(main)
    return asyncio.run(main)


def tune_collector() -> None:
    """Freeze the start-up heap and raise the thresholds (idempotent; call once start-up is done)."""
    gc.collect()  # what start-up left as garbage goes now, not in the first busy minute
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    log.info("collector tuned: %d objects frozen, thresholds %s", gc.get_freeze_count(), GC_THRESHOLDS)


class LoopWatch:
    """How late the loop runs a timer (its stalls), and how long each collection took."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self.longest_s = 0.0  # since the instance started serving (or over its lifetime), for benches and tests
        self._recent: deque[tuple[float, float]] = deque()  # (when, stall) of stalls >= STALL_PROBE_S
        self._gc_started = 0.0
        self._serving = 0  # how many times start_serving() was called (the probes' epoch)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        gc.callbacks.append(self._on_gc)
        try:
            while True:
                due = loop.time() + STALL_PROBE_S
                serving = self._serving
                await asyncio.sleep(STALL_PROBE_S)
                self.observe(max(loop.time() - due, 0.0), loop.time(), windowed=serving == self._serving)
        finally:
            gc.callbacks.remove(self._on_gc)

    def observe(self, stall_s: float, now: float, *, windowed: bool = True) -> None:
        """One probe's lateness; `windowed=False` for a probe that began before start_serving()."""
        self.metrics.loop_stall.observe(stall_s)
        if windowed:
            self.longest_s = max(self.longest_s, stall_s)
        recent = self._recent
        if stall_s >= STALL_PROBE_S and windowed:
            recent.append((now, stall_s))
        while recent and recent[0][0] < now - STALL_WINDOW_S:
            recent.popleft()
        self.metrics.loop_stall_max.set(max((s for _, s in recent), default=stall_s))

    def start_serving(self) -> None:
        """Forget start-up's stalls in the 60 s maximum (the histogram keeps them).

        Before the port opens nobody waits on the loop, yet start-up's synchronous steps (the mirror and the
        published state of a 10,000-agent center, the full collection of `tune_collector`: 0.1-0.2 s each)
        sat in the maximum for the first minute, which is exactly when a bench reads it.
        """
        self._recent.clear()
        self._serving += 1  # a probe asleep across this call measured start-up: it stays out of the window
        self.longest_s = 0.0
        self.metrics.loop_stall_max.set(0.0)

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._gc_started = time.perf_counter()
        else:
            self.metrics.gc_pause.labels(str(info.get("generation", "?"))).observe(time.perf_counter() - self._gc_started)
