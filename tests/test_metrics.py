"""/metrics against the contract (DESIGN.md "Metrics", docs/operations.md), and /healthz and /readyz."""

from __future__ import annotations

import asyncio
import math
import re
import sys
import time
from typing import Any

import pytest
from aiohttp import ClientSession
from redis.asyncio import Redis

from callboard.services import SERVICES
from callflow.testing import FakeTwilio
from tests.conftest import TEST_CENTER, TWILIO_TOKEN, connect, make_config, token
from tests.procs import declared_types, parse_samples
from wallboard import api

# name as exported -> (type, label names): the contract's table in docs/operations.md
CONTRACT: dict[str, tuple[str, set[str]]] = {
    "callboard_agents": ("gauge", {"team", "state"}),
    "callboard_queue_agents": ("gauge", {"queue", "state"}),
    "callboard_queue_calls_waiting": ("gauge", {"queue"}),
    "callboard_queue_oldest_call_enqueued_timestamp_seconds": ("gauge", {"queue"}),
    "callboard_calls_entered_total": ("counter", {"queue"}),
    "callboard_calls_answered_total": ("counter", {"queue"}),
    "callboard_calls_abandoned_total": ("counter", {"queue"}),
    "callboard_queue_wait_seconds": ("histogram", {"queue", "outcome"}),
    "callboard_call_handle_seconds": ("histogram", {"queue"}),
    "callboard_service_level_ratio": ("gauge", {"queue", "window"}),
    "callboard_service_level_target_ratio": ("gauge", {"queue"}),
    "callboard_ws_connections": ("gauge", {"role"}),
    "callboard_ws_messages_sent_total": ("counter", set()),
    "callboard_ws_slow_consumer_closes_total": ("counter", set()),
    "callboard_presence_batch_size": ("histogram", set()),
    "callboard_presence_flush_seconds": ("histogram", set()),
    "callboard_presence_pending_intents": ("gauge", set()),
    "callboard_webhook_duration_seconds": ("histogram", {"route"}),
    "callboard_webhook_rejected_total": ("counter", {"reason"}),
    "callboard_redis_errors_total": ("counter", set()),
    "callboard_spool_depth": ("gauge", set()),
    "callboard_spool_dropped_total": ("counter", set()),
    "callboard_follower_lag_seconds": ("gauge", set()),
    "callboard_build_info": ("gauge", {"version", "instance_id"}),
}
QUEUES = [q["name"] for q in TEST_CENTER["queues"]]
TEAMS = sorted({a["team"] for a in TEST_CENTER["agents"]})
AGENTS = [a["id"] for a in TEST_CENTER["agents"]]
STATES = ("available", "on-call", "wrap-up", "away", "offline")
ROUTES = ("incoming", "wait", "agent", "bridge", "queue-result", "status")
REASONS = ("bad_signature", "missing_signature", "bad_request", "too_large", "unknown_agent")
ROLES = ("agent", "supervisor", "wallboard")
SHARED_GAUGES = ("callboard_agents", "callboard_queue_agents", "callboard_queue_calls_waiting",
                 "callboard_queue_oldest_call_enqueued_timestamp_seconds", "callboard_service_level_ratio",
                 "callboard_service_level_target_ratio")
SUPPORT_NUMBER = TEST_CENTER["queues"][0]["numbers"][0]


def base(server: Any) -> str:
    return f"http://{server.host}:{server.port}"


async def get(server: Any, path: str) -> tuple[int, str, str]:
    async with ClientSession() as http, http.get(base(server) + path) as resp:
        return resp.status, resp.content_type, await resp.text()


async def scrape(server: Any) -> str:
    status, content_type, text = await get(server, "/metrics")
    assert status == 200 and content_type == "text/plain", (status, content_type)
    return text


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    key = (name, tuple(sorted(labels.items())))
    assert key in samples, f"no sample {name}{labels}"
    return samples[key]


def series(samples: dict[Any, float], name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {labels: v for (n, labels), v in samples.items() if n == name}


def call_sid(n: int) -> str:
    return f"CA{n:032x}"


async def test_every_metric_of_the_contract_is_exported_with_its_type_and_labels(make_instance) -> None:  # type: ignore[no-untyped-def]
    server = await make_instance(instance_id="M1")
    text = await scrape(server)
    types = declared_types(text)
    missing = sorted(set(CONTRACT) - set(types))
    assert not missing, f"metrics of the contract not exported: {missing}"
    for name, (kind, _labels) in CONTRACT.items():
        assert types[name] == kind, f"{name} is a {types[name]}, the contract says {kind}"
    assert all(n.startswith("callboard_") for n in types), sorted(n for n in types if not n.startswith("callboard_"))
    assert all(n.endswith("_total") for n, k in types.items() if k == "counter")
    assert not any(n.endswith("_created") for n in types), "the _created series double the scrape for nothing"
    samples = parse_samples(text)
    for (name, labels), _ in samples.items():
        family = re.sub(r"_(bucket|count|sum)$", "", name) if name not in CONTRACT else name
        if family in CONTRACT:
            expected = CONTRACT[family][1] | ({"le"} if name.endswith("_bucket") else set())
            assert {k for k, _ in labels} == expected, f"{name}{dict(labels)}: labels {expected} expected"
    [(build_labels, one)] = series(samples, "callboard_build_info").items()
    assert one == 1 and dict(build_labels)["instance_id"] == "M1"


async def test_label_sets_known_in_advance_are_exported_as_zero_before_any_activity(make_instance) -> None:  # type: ignore[no-untyped-def]
    server = await make_instance()
    samples = parse_samples(await scrape(server))
    for q in QUEUES:
        for name in ("callboard_calls_entered_total", "callboard_calls_answered_total",
                     "callboard_calls_abandoned_total", "callboard_queue_calls_waiting",
                     "callboard_queue_oldest_call_enqueued_timestamp_seconds", "callboard_call_handle_seconds_count"):
            assert value(samples, name, queue=q) == 0, (name, q)
        for outcome in ("answered", "abandoned"):
            buckets = {dict(lb)["le"]: v for lb, v in series(samples, "callboard_queue_wait_seconds_bucket").items()
                       if dict(lb)["queue"] == q and dict(lb)["outcome"] == outcome}
            assert buckets and set(buckets.values()) == {0.0}, (q, outcome, buckets)
            assert "+Inf" in buckets
            assert value(samples, "callboard_queue_wait_seconds_count", queue=q, outcome=outcome) == 0
        for window in ("today", "last_30m"):
            assert math.isnan(value(samples, "callboard_service_level_ratio", queue=q, window=window))
        assert value(samples, "callboard_service_level_target_ratio", queue=q) == 0.8
        for state in STATES:
            value(samples, "callboard_queue_agents", queue=q, state=state)
    for route in ROUTES:
        assert value(samples, "callboard_webhook_duration_seconds_count", route=route) == 0
    for reason in REASONS:
        assert value(samples, "callboard_webhook_rejected_total", reason=reason) == 0
    for role in ROLES:
        assert value(samples, "callboard_ws_connections", role=role) == 0
    expected_offline = {t: sum(1 for a in TEST_CENTER["agents"] if a["team"] == t) for t in TEAMS}
    for team in TEAMS:
        for state in STATES:
            want = expected_offline[team] if state == "offline" else 0
            assert value(samples, "callboard_agents", team=team, state=state) == want, (team, state)
    assert not any(dict(lb).get("team") == "" for lb in series(samples, "callboard_agents")), \
        "team=\"\" is only for centers with agents without a team"


async def test_agents_without_a_team_are_counted_under_an_empty_team(make_instance) -> None:  # type: ignore[no-untyped-def]
    agents = [*TEST_CENTER["agents"], {"id": "erin", "name": "Erin", "queues": ["support"]}]
    server = await make_instance(make_config(agents=agents))
    samples = parse_samples(await scrape(server))
    assert value(samples, "callboard_agents", team="", state="offline") == 1
    for state in ("available", "on-call", "wrap-up", "away"):
        assert value(samples, "callboard_agents", team="", state=state) == 0


@pytest.mark.parametrize("sl_threshold_s", [20, 25])
async def test_queue_wait_has_a_bucket_at_the_sl_threshold(make_instance, sl_threshold_s: int) -> None:  # type: ignore[no-untyped-def]
    server = await make_instance(make_config(center={"sl_threshold_s": sl_threshold_s}))
    samples = parse_samples(await scrape(server))
    for q in QUEUES:
        for outcome in ("answered", "abandoned"):
            les = {float(dict(lb)["le"]) for lb in series(samples, "callboard_queue_wait_seconds_bucket")
                   if dict(lb)["queue"] == q and dict(lb)["outcome"] == outcome}
            assert float(sl_threshold_s) in les, f"no le={sl_threshold_s} bucket for {q}/{outcome}: {sorted(les)}"


async def _activity(server: Any, aiohttp_client: Any, redis: Redis) -> tuple[list[Any], Any]:
    """Agents connected, one away, a signed call waiting in support; returns the open clients and a wallboard."""
    wall = await connect(server, token("wall", "wallboard"))
    alice = await connect(server, token("alice"))
    bob = await connect(server, token("bob"))
    await wall.wait_for(lambda s: s["agents"]["alice"]["state"] == s["agents"]["bob"]["state"] == "available")
    await bob.send({"type": "set_state", "state": "away", "reason": "lunch"})
    await wall.wait_for(lambda s: s["agents"]["bob"]["state"] == "away")
    twilio = FakeTwilio(await aiohttp_client(server), TWILIO_TOKEN, None)
    status, body = await twilio.post("incoming", {"CallSid": call_sid(1), "From": "+15551230001", "To": SUPPORT_NUMBER})
    assert status == 200 and "<Enqueue" in body, body
    await wall.wait_for(lambda s: s["queues"]["support"]["waiting"] == 1)
    return [wall, alice, bob], twilio


async def test_counters_move_with_activity(make_instance, aiohttp_client, redis: Redis) -> None:  # type: ignore[no-untyped-def]
    server = await make_instance()
    reg = server.app[SERVICES].metrics.registry
    before = parse_samples(await scrape(server))
    assert value(before, "callboard_ws_messages_sent_total") == 0
    wall = await connect(server, token("wall", "wallboard"))  # welcome + snapshot
    samples = parse_samples(await scrape(server))
    assert value(samples, "callboard_ws_messages_sent_total") >= 2
    assert value(samples, "callboard_ws_connections", role="wallboard") == 1
    batches = reg.get_sample_value("callboard_presence_batch_size_count") or 0
    alice = await connect(server, token("alice"))
    await alice.send({"type": "set_state", "state": "away", "reason": "lunch"})
    await wall.wait_for(lambda s: s["agents"]["alice"].get("reason") == "lunch")
    samples = parse_samples(await scrape(server))
    assert value(samples, "callboard_presence_batch_size_count") >= batches + 1
    assert value(samples, "callboard_presence_batch_size_sum") >= 1
    assert value(samples, "callboard_presence_flush_seconds_count") >= 1
    assert value(samples, "callboard_ws_connections", role="agent") == 1
    await alice.send({"type": "set_state", "state": "available"})
    await wall.wait_for(lambda s: s["agents"]["alice"]["state"] == "available")

    twilio = FakeTwilio(await aiohttp_client(server), TWILIO_TOKEN, None)
    status, body = await twilio.post("incoming", {"CallSid": call_sid(7), "From": "+15551230001", "To": SUPPORT_NUMBER})
    assert status == 200 and "<Enqueue" in body, body
    status, _ = await twilio.post("incoming", {"CallSid": call_sid(7), "From": "+15551230001", "To": SUPPORT_NUMBER})
    assert status == 200  # Twilio's retry: counted once
    status, _ = await twilio.post("incoming", {"CallSid": call_sid(8), "To": SUPPORT_NUMBER}, signature="bm9wZQ==")
    assert status == 403
    samples = parse_samples(await scrape(server))
    assert value(samples, "callboard_calls_entered_total", queue="support") == 1
    assert value(samples, "callboard_calls_entered_total", queue="sales") == 0
    assert value(samples, "callboard_webhook_duration_seconds_count", route="incoming") == 3
    assert value(samples, "callboard_webhook_rejected_total", reason="bad_signature") == 1
    assert value(samples, "callboard_queue_calls_waiting", queue="support") == 1
    oldest = value(samples, "callboard_queue_oldest_call_enqueued_timestamp_seconds", queue="support")
    assert abs(oldest - time.time()) < 30, oldest
    await alice.close()
    await wall.close()


async def test_no_per_call_or_per_agent_label_values(make_instance, aiohttp_client, redis: Redis) -> None:  # type: ignore[no-untyped-def]
    server = await make_instance()
    clients, _ = await _activity(server, aiohttp_client, redis)
    text = await scrape(server)
    allowed_names = {"team", "state", "queue", "outcome", "le", "route", "reason", "role", "window", "version",
                     "instance_id", "generation"}
    sid_like = re.compile(r"^(CA|QU|AC|AP)[0-9a-f]{32}$")
    for (name, labels), _ in parse_samples(text).items():
        for key, val in labels:
            assert key in allowed_names, f"{name} has an unexpected label {key}={val!r}"
            assert val not in AGENTS, f"{name} has a per-agent label value {key}={val!r}"
            assert not sid_like.match(val), f"{name} has a per-call label value {key}={val!r}"
            assert not re.match(r"^(\+\d|client:)", val), f"{name} has a caller label value {key}={val!r}"
    for agent in AGENTS:
        assert f'"{agent}"' not in text
    assert call_sid(1) not in text and "+15551230001" not in text
    for c in clients:
        await c.close()


async def test_shared_state_gauges_read_the_same_on_every_instance(make_instance, aiohttp_client,  # type: ignore[no-untyped-def]
                                                                   redis: Redis) -> None:
    a = await make_instance(instance_id="A")
    b = await make_instance(instance_id="B")
    clients, _ = await _activity(a, aiohttp_client, redis)
    carol = await connect(b, token("carol"))  # activity on B as well
    clients.append(carol)
    wall = clients[0]
    await wall.wait_for(lambda s: s["agents"]["carol"]["state"] == "available")

    def shared(text: str) -> dict[Any, float]:
        return {k: (-1.0 if math.isnan(v) else v) for k, v in parse_samples(text).items() if k[0] in SHARED_GAUGES}

    deadline = time.monotonic() + 5
    while True:
        on_a, on_b = shared(await scrape(a)), shared(await scrape(b))
        if on_a == on_b or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    differ = {k: (on_a.get(k), on_b.get(k)) for k in on_a.keys() | on_b.keys() if on_a.get(k) != on_b.get(k)}
    assert not differ, f"shared-state gauges differ between instances: {differ}"
    # ... and they are not trivially equal: they show the activity
    samples = parse_samples(await scrape(b))
    assert value(samples, "callboard_agents", team="support", state="available") == 1
    assert value(samples, "callboard_agents", team="support", state="away") == 1
    assert value(samples, "callboard_agents", team="sales", state="available") == 1
    assert value(samples, "callboard_queue_agents", queue="support", state="available") == 1
    assert value(samples, "callboard_queue_calls_waiting", queue="support") == 1
    # per-process metrics are per process
    samples_a = parse_samples(await scrape(a))
    assert value(samples_a, "callboard_calls_entered_total", queue="support") == 1
    assert value(samples, "callboard_calls_entered_total", queue="support") == 0
    assert value(samples_a, "callboard_ws_connections", role="agent") == 2
    assert value(samples, "callboard_ws_connections", role="agent") == 1
    for c in clients:
        await c.close()


async def test_a_scrape_costs_no_redis_round_trip(make_instance, aiohttp_client, redis: Redis) -> None:  # type: ignore[no-untyped-def]
    server = await make_instance()
    clients, _ = await _activity(server, aiohttp_client, redis)
    client = server.app[SERVICES].redis
    calls: dict[str, list[str]] = {"metrics": [], "set_state": []}
    handlers = {api.metrics.__code__: "metrics", api.set_state.__code__: "set_state"}

    def handler_on_stack() -> str | None:
        frame = sys._getframe(2)
        while frame is not None:
            if frame.f_code in handlers:
                return handlers[frame.f_code]
            frame = frame.f_back  # type: ignore[assignment]
        return None

    def counting(original: Any, what: str) -> Any:
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            who = handler_on_stack()
            if who:
                calls[who].append(f"{what} {args[0] if args else ''}")
            return await original(*args, **kwargs)

        return wrapper

    # Every command goes through execute_command; pipelines and scripts' transactions take a pooled connection.
    client.execute_command = counting(client.execute_command, "command")  # type: ignore[method-assign]
    pool = client.connection_pool
    pool.get_connection = counting(pool.get_connection, "connection")  # type: ignore[method-assign]
    for _ in range(5):
        await scrape(server)
    # The control: a handler that reads Redis in its own coroutine is seen by the counter.
    async with ClientSession() as http:
        resp = await http.post(base(server) + "/api/agents/alice/state", json={"state": "away", "reason": "x"},
                               headers={"Authorization": f"Bearer {token('alice')}"})
        assert resp.status == 200, await resp.text()
    assert calls["set_state"], "the counter must see the API's read, or it proves nothing about /metrics"
    assert calls["metrics"] == [], f"a scrape made Redis calls: {calls['metrics']}"
    for c in clients:
        await c.close()


async def test_a_scrape_answers_while_redis_is_down(make_instance, redis_server_factory, tmp_path) -> None:  # type: ignore[no-untyped-def]
    proc, url, directory = redis_server_factory(tmp_path)
    server = await make_instance(url=url)
    wall = await connect(server, token("wall", "wallboard"))
    alice = await connect(server, token("alice"))
    await wall.wait_for(lambda s: s["agents"]["alice"]["state"] == "available")
    before = {k: v for k, v in parse_samples(await scrape(server)).items() if k[0] == "callboard_agents"}
    proc.terminate()
    proc.wait(5)
    started = time.monotonic()
    samples = parse_samples(await scrape(server))
    assert time.monotonic() - started < 1.0
    assert {k: v for k, v in samples.items() if k[0] == "callboard_agents"} == before, "last known state"
    redis_server_factory(directory)
    await alice.close()
    await wall.close()


async def test_healthz_and_readyz(make_instance, redis_server_factory, tmp_path) -> None:  # type: ignore[no-untyped-def]
    proc, url, directory = redis_server_factory(tmp_path)
    server = await make_instance(url=url)
    services = server.app[SERVICES]
    assert await get(server, "/healthz") == (200, "text/plain", "ok\n")
    assert (await get(server, "/readyz"))[:2] == (200, "text/plain")

    proc.terminate()  # Redis unreachable
    proc.wait(5)
    status, content_type, body = await get(server, "/readyz")
    assert (status, content_type) == (503, "text/plain"), (status, body)
    assert body.startswith("not ready: ") and "Redis unreachable" in body, body
    assert body.isascii() and "Traceback" not in body, body
    assert (await get(server, "/healthz"))[0] == 200, "liveness does not depend on Redis"

    redis_server_factory(directory)  # Redis is back (empty): ready again once the follower caught up
    deadline = time.monotonic() + 10
    while (got := await get(server, "/readyz"))[0] != 200:
        assert time.monotonic() < deadline, f"not ready again after Redis came back: {got}"
        await asyncio.sleep(0.1)

    await services.drain()  # what SIGTERM does first
    status, content_type, body = await get(server, "/readyz")
    assert (status, content_type) == (503, "text/plain"), (status, body)
    assert "draining" in body and body.isascii(), body
    assert (await get(server, "/healthz"))[0] == 200
