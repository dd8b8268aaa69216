"""Gauges of shared state, computed from the in-memory mirror at scrape time (no Redis round trip)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

from prometheus_client.core import GaugeMetricFamily

from callboard.services import Services
from presence.rules import STATES


def shared_state_collector(services: Services) -> Callable[[], Iterable[GaugeMetricFamily]]:
    def collect() -> Iterable[GaugeMetricFamily]:
        mirror = services.mirror
        config = services.config
        now_ms = services.clock.now_ms()
        agents = GaugeMetricFamily("callboard_agents", "Agents by team and state", labels=["team", "state"])
        counts = {(team, state): 0 for team in (*config.teams, "") for state in STATES}
        for entry in mirror.agents.values():
            counts[(entry["team"] or "", entry["state"])] += 1
        for (team, state), n in counts.items():
            if team or any(a.team is None for a in config.agents):
                agents.add_metric([team, state], n)
        waiting = GaugeMetricFamily("callboard_queue_calls_waiting", "Calls waiting now", labels=["queue"])
        oldest = GaugeMetricFamily("callboard_queue_oldest_call_enqueued_timestamp_seconds",
                                   "When the longest-waiting call was enqueued (0: nobody waits)", labels=["queue"])
        sl = GaugeMetricFamily("callboard_service_level_ratio", "Service level (NaN when undefined)",
                               labels=["queue", "window"])
        target = GaugeMetricFamily("callboard_service_level_target_ratio", "Configured service level target",
                                   labels=["queue"])
        queue_agents = GaugeMetricFamily("callboard_queue_agents", "Agents serving a queue, by state",
                                         labels=["queue", "state"])
        for queue in config.queues:
            entry = mirror.queue_entry(queue.name, now_ms)
            waiting.add_metric([queue.name], entry["waiting"])
            oldest.add_metric([queue.name], (entry["oldest_enqueued_ms"] or 0) / 1000)
            for window in ("today", "last_30m"):
                value = entry[window]["service_level"]
                sl.add_metric([queue.name, window], math.nan if value is None else value)
            target.add_metric([queue.name], queue.thresholds.sl_target)
            for state, n in entry["agents"].items():
                queue_agents.add_metric([queue.name, state], n)
        return [agents, waiting, oldest, sl, target, queue_agents]

    return collect
