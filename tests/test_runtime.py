"""The loop-stall watch and the collector tuning (wallboard/runtime.py)."""

from __future__ import annotations

import asyncio
import gc
import time

from aiohttp import ClientSession

from wallboard.metrics import Metrics
from wallboard.runtime import GC_THRESHOLDS, STALL_WINDOW_S, LoopWatch, tune_collector


def _sample(text: str, name: str) -> float:
    line = next(line for line in text.splitlines() if line.startswith(name + " "))
    return float(line.split()[1])


async def test_a_blocked_loop_shows_as_a_stall_in_metrics(make_instance) -> None:  # type: ignore[no-untyped-def]
    server = await make_instance()
    base = f"http://{server.host}:{server.port}"
    async with ClientSession() as http:
        await asyncio.sleep(0.3)  # the watch has run a few quiet ticks
        quiet = await (await http.get(f"{base}/metrics")).text()
        assert _sample(quiet, "callboard_event_loop_stall_seconds_count") > 0
        time.sleep(0.4)  # noqa: ASYNC251 - the point: a synchronous step that stops the loop
        await asyncio.sleep(0.2)
        after = await (await http.get(f"{base}/metrics")).text()
    assert _sample(after, "callboard_event_loop_stall_max_seconds") >= 0.3
    assert _sample(after, 'callboard_event_loop_stall_seconds_bucket{le="0.25"}') < _sample(
        after, "callboard_event_loop_stall_seconds_count")


def test_the_stall_maximum_forgets_stalls_older_than_its_window() -> None:
    metrics = Metrics()
    watch = LoopWatch(metrics)
    watch.observe(0.8, now=100.0)
    watch.observe(0.0, now=101.0)
    assert metrics.loop_stall_max._value.get() == 0.8  # noqa: SLF001
    watch.observe(0.06, now=100.0 + STALL_WINDOW_S + 1)
    assert metrics.loop_stall_max._value.get() == 0.06  # noqa: SLF001
    assert watch.longest_s == 0.8


def test_start_up_stalls_leave_the_maximum_when_the_instance_starts_serving() -> None:
    metrics = Metrics()
    watch = LoopWatch(metrics)
    watch.observe(0.2, now=100.0)  # e.g. tune_collector's full collection before the port opens
    watch.start_serving()
    assert metrics.loop_stall_max._value.get() == 0.0  # noqa: SLF001
    watch.observe(0.01, now=101.0)
    assert metrics.loop_stall_max._value.get() == 0.01  # noqa: SLF001
    text = metrics.render().decode()
    assert _sample(text, "callboard_event_loop_stall_seconds_count") == 2  # the histogram still has both


async def test_a_probe_asleep_across_start_serving_does_not_bring_start_up_back() -> None:
    """tune_collector's full collection happens while the watch's probe sleeps; that probe wakes after
    start_serving() and must not put the start-up stall back into the window."""
    metrics = Metrics()
    watch = LoopWatch(metrics)
    task = asyncio.create_task(watch.run())
    await asyncio.sleep(0.12)  # the watch is asleep in a probe
    time.sleep(0.3)  # noqa: ASYNC251 - start-up's synchronous step
    watch.start_serving()
    await asyncio.sleep(0.15)
    task.cancel()
    assert metrics.loop_stall_max._value.get() < 0.1  # noqa: SLF001
    assert watch.longest_s < 0.1
    text = metrics.render().decode()
    assert _sample(text, 'callboard_event_loop_stall_seconds_bucket{le="0.25"}') < _sample(
        text, "callboard_event_loop_stall_seconds_count")  # the histogram has it


async def test_a_scrape_is_formatted_off_the_loop_and_says_the_same() -> None:
    from prometheus_client.core import GaugeMetricFamily

    metrics = Metrics(queues=["q1"])

    def shared() -> list[GaugeMetricFamily]:
        family = GaugeMetricFamily("callboard_agents", "Agents by team and state", labels=["team", "state"])
        family.add_metric(["north", "available"], 3)
        return [family]

    metrics.add_shared_state(shared)
    assert await metrics.render_off_loop() == metrics.render()
    assert b'callboard_agents{state="available",team="north"} 3.0' in metrics.render()


def test_collector_pauses_are_timed_by_generation() -> None:
    metrics = Metrics()
    watch = LoopWatch(metrics)
    gc.callbacks.append(watch._on_gc)  # noqa: SLF001
    try:
        gc.collect(2)
    finally:
        gc.callbacks.remove(watch._on_gc)  # noqa: SLF001
    text = metrics.render().decode()
    assert _sample(text, 'callboard_gc_pause_seconds_count{generation="2"}') >= 1


def test_tune_collector_freezes_the_start_up_heap_and_raises_thresholds() -> None:
    before = gc.get_threshold()
    try:
        tune_collector()
        assert gc.get_threshold() == GC_THRESHOLDS
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


def test_young_collections_stay_small_while_everything_survives_and_the_middle_one_stays_rare() -> None:
    """A connect storm keeps nearly all it allocates: each young collection then walks its whole threshold.
    With the tuned collector, 40,000 surviving objects are walked in young collections of about 10,000
    each, and none of them reaches the middle generation's collection (a million survivors apart)."""
    before = gc.get_threshold()
    started: list[tuple[int, int]] = []

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started.append((info["generation"], gc.get_count()[0]))

    try:
        tune_collector()
        gc.callbacks.append(on_gc)
        kept = [[i] for i in range(40_000)]  # tracked, and alive until the end: a storm's sessions
        gc.callbacks.remove(on_gc)
        assert len(kept) == 40_000
        assert sum(1 for generation, _ in started if generation == 0) >= 3
        assert all(generation == 0 for generation, _ in started)
        assert max(young for _, young in started) <= GC_THRESHOLDS[0] + 100
    finally:
        if on_gc in gc.callbacks:
            gc.callbacks.remove(on_gc)
        gc.unfreeze()
        gc.set_threshold(*before)


async def test_a_task_that_loses_a_cancellation_is_cancelled_again() -> None:
    """What Python 3.11's wait_for does inside redis-py (see cancel_and_wait): the first cancel is lost."""
    from callboard.services import cancel_and_wait

    turns_after_cancel = 0

    async def loses_one_cancel() -> None:
        nonlocal turns_after_cancel
        lost = False
        while True:
            try:
                await asyncio.sleep(0.01)
            except asyncio.CancelledError:
                if lost:
                    raise
                lost = True
                asyncio.current_task().uncancel()  # type: ignore[union-attr]
            if lost:
                turns_after_cancel += 1

    release = asyncio.Event()

    async def ignores_cancels() -> None:
        while not release.is_set():
            try:
                await asyncio.sleep(0.01)
            except asyncio.CancelledError:
                pass

    first = asyncio.create_task(loses_one_cancel())
    await asyncio.sleep(0.02)
    assert not await cancel_and_wait([first]) and first.cancelled() and turns_after_cancel >= 1
    stubborn = asyncio.create_task(ignores_cancels())
    await asyncio.sleep(0)
    assert await cancel_and_wait([stubborn], rounds=2, wait_s=0.05) == {stubborn}  # returned for the caller to name
    release.set()
    await stubborn


async def test_a_group_child_that_lost_its_cancel_ends_at_its_next_turn() -> None:
    """A TaskGroup cancels its children once: a child whose cancel was lost (redis-py's wait_for on 3.11) is
    not reached by cancelling the group's task again, so its loop checks raise_if_cancel_lost each turn."""
    from callboard.services import cancel_and_wait, raise_if_cancel_lost

    async def child() -> None:
        lost = False
        while True:
            raise_if_cancel_lost()
            try:
                await asyncio.sleep(0.01)
            except asyncio.CancelledError:
                if lost:
                    raise
                lost = True  # swallowed, as wait_for does; the task's cancellation count stays above zero

    async def group() -> None:
        async with asyncio.TaskGroup() as g:
            g.create_task(child())

    task = asyncio.create_task(group())
    await asyncio.sleep(0.03)
    assert not await cancel_and_wait([task], rounds=2, wait_s=1.0) and task.cancelled()
