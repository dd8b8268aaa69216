"""Prometheus metrics. One registry per app, so several instances in one test process never collide.

Counters and histograms are per process (sum them across instances). Gauges of shared state (agents by
state, calls waiting, service level) are filled from the in-memory mirror at scrape time, so they read the
same on every instance (take max) and a scrape never costs a Redis round trip. No per-call or per-agent
labels, ever: label values are teams, states, queues, routes and reasons, all known from the config.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Iterator

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

WEBHOOK_ROUTES = ("incoming", "wait", "agent", "bridge", "queue-result", "status")
WEBHOOK_REJECT_REASONS = ("bad_signature", "missing_signature", "bad_request", "too_large", "unknown_agent",
                          "not_configured")
ROLES = ("agent", "supervisor", "wallboard")
WAIT_OUTCOMES = ("answered", "abandoned")
disable_created_metrics()  # the _created series double the scrape size and nobody graphs them
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Metrics:
    """Every metric of the contract, registered in its own registry."""

    def __init__(self, *, queues: Iterable[str] = (), sl_thresholds_s: Iterable[float] = (20.0,)) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._shared: list[Callable[[], Iterable[GaugeMetricFamily]]] = []
        r = self.registry
        queue_names = list(queues)
        wait_buckets = sorted({1.0, 5.0, 10.0, 15.0, 30.0, 45.0, 60.0, 90.0, 120.0, 180.0, 300.0, 600.0,
                               *(float(s) for s in sl_thresholds_s)})
        self.calls_entered = Counter("callboard_calls_entered", "Calls enqueued", ["queue"], registry=r)
        self.calls_answered = Counter("callboard_calls_answered", "Calls bridged to an agent", ["queue"], registry=r)
        self.calls_abandoned = Counter("callboard_calls_abandoned", "Callers who hung up while waiting", ["queue"], registry=r)
        self.queue_wait = Histogram("callboard_queue_wait_seconds", "Queue time by outcome", ["queue", "outcome"],
                                    buckets=wait_buckets, registry=r)
        self.call_handle = Histogram("callboard_call_handle_seconds", "Handle time: talk plus wrap-up spent", ["queue"],
                                     buckets=(30, 60, 120, 180, 300, 600, 900, 1800, 3600), registry=r)
        self.ws_connections = Gauge("callboard_ws_connections", "Open websockets on this instance", ["role"], registry=r)
        self.ws_messages_sent = Counter("callboard_ws_messages_sent", "Websocket messages sent", registry=r)
        self.ws_slow_consumer_closes = Counter("callboard_ws_slow_consumer_closes",
                                               "Sockets closed 4429 for falling behind", registry=r)
        self.presence_batch_size = Histogram("callboard_presence_batch_size", "Intents per presence flush",
                                             buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000), registry=r)
        self.presence_flush = Histogram("callboard_presence_flush_seconds", "Duration of one presence flush",
                                        buckets=_LATENCY_BUCKETS, registry=r)
        self.presence_pending = Gauge("callboard_presence_pending_intents", "Intents waiting for the next flush", registry=r)
        self.webhook_duration = Histogram("callboard_webhook_duration_seconds", "Twilio webhook handling time", ["route"],
                                          buckets=_LATENCY_BUCKETS, registry=r)
        self.webhook_rejected = Counter("callboard_webhook_rejected", "Webhook requests refused", ["reason"], registry=r)
        self.redis_errors = Counter("callboard_redis_errors", "Redis commands that failed", registry=r)
        self.spool_depth = Gauge("callboard_spool_depth", "Call events held in memory while Redis is away", registry=r)
        self.spool_dropped = Counter("callboard_spool_dropped", "Call events dropped because the spool was full", registry=r)
        self.follower_lag = Gauge("callboard_follower_lag_seconds", "Age of the newest change applied to the mirror", registry=r)
        self.loop_stall = Histogram("callboard_event_loop_stall_seconds",
                                    "How late the event loop ran a timer (a stall: collector pause, long step)",
                                    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0), registry=r)
        self.loop_stall_max = Gauge("callboard_event_loop_stall_max_seconds",
                                    "Longest event-loop stall in the last 60 s", registry=r)
        self.gc_pause = Histogram("callboard_gc_pause_seconds", "Cyclic collector pauses", ["generation"],
                                  buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0), registry=r)
        self.build_info = Gauge("callboard_build_info", "Build and instance", ["version", "instance_id"], registry=r)
        for q in queue_names:  # label sets known in advance are exported as 0
            self.calls_entered.labels(q)
            self.calls_answered.labels(q)
            self.calls_abandoned.labels(q)
            self.call_handle.labels(q)
            for outcome in WAIT_OUTCOMES:
                self.queue_wait.labels(q, outcome)
        # each role's child, looked up once: labels() takes a lock and builds a key, per connection in a storm
        self.ws_connections_of = {role: self.ws_connections.labels(role) for role in ROLES}
        for route in WEBHOOK_ROUTES:
            self.webhook_duration.labels(route)
        for reason in WEBHOOK_REJECT_REASONS:
            self.webhook_rejected.labels(reason)

    def add_shared_state(self, collect: Callable[[], Iterable[GaugeMetricFamily]]) -> None:
        """Gauges computed at scrape time from the mirror (exported after the registry's own metrics)."""
        self._shared.append(collect)

    def render(self) -> bytes:
        return generate_latest(_Scrape(self.registry, self._shared_families()))

    async def render_off_loop(self) -> bytes:
        """`render()` without stalling the event loop.

        At 10,000 agents and 100 queues a scrape is about 8,000 lines and took 110-140 ms of the loop: a
        stall on every scrape. Here the gauges computed from the mirror are read on the loop (the mirror is
        only consistent there) and the text is formatted in a worker thread (prometheus_client's own
        metrics are thread-safe); the worker holds the GIL in 5 ms slices, so the loop keeps running.
        """
        scrape = _Scrape(self.registry, self._shared_families())
        return await asyncio.to_thread(generate_latest, scrape)

    def _shared_families(self) -> list[GaugeMetricFamily]:
        return [family for collect in self._shared for family in collect()]


class _Scrape(Collector):
    """One scrape: the registry's metrics, then the mirror's gauges as they were when the scrape began."""

    def __init__(self, registry: CollectorRegistry, shared: list[GaugeMetricFamily]) -> None:
        self._registry = registry
        self._shared = shared

    def collect(self) -> Iterator[Metric]:
        yield from self._registry.collect()
        yield from self._shared
