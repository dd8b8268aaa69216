"""Outgoing webhooks against real receivers (aiohttp servers on loopback) and a real Redis.

Receivers verify every request with the `standardwebhooks` package, as a CRM would.
"""

from __future__ import annotations

import asyncio
import base64
import signal
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from redis.asyncio import Redis
from standardwebhooks.webhooks import Webhook

from callboard.config import ConfigError
from callboard.services import SERVICES, cancel_and_wait
from tests.conftest import make_config, token
from webhooks import messages
from webhooks import outbox as outbox_mod
from webhooks.config import Endpoint, parse_webhooks, resolve_secrets
from webhooks.outbox import Outbox

SECRET = "whsec_" + base64.b64encode(b"a-test-secret-of-32-bytes-long!!").decode()
OTHER_SECRET = "whsec_" + base64.b64encode(b"another-secret-of-32-bytes-long!").decode()


class Receiver:
    """A webhook receiver: fails the first `fail_first` attempts of each webhook-id, verifies signatures."""

    def __init__(self, secret: str, fail_first: int = 0) -> None:
        self.webhook = Webhook(secret)
        self.fail_first = fail_first
        self.attempts: Counter[str] = Counter()
        self.delivered: list[tuple[str, dict[str, Any]]] = []  # (webhook-id, verified body) answered 2xx
        self.bodies: dict[str, set[str]] = {}
        self.healthy = asyncio.Event()
        self.blackhole = False
        self.got = asyncio.Event()

    async def handle(self, request: web.Request) -> web.Response:
        raw = await request.text()
        if self.blackhole:
            await asyncio.Event().wait()  # never answers: a dead endpoint
        payload = self.webhook.verify(raw, dict(request.headers))  # raises on a bad signature -> 500
        msg_id = request.headers["webhook-id"]
        self.bodies.setdefault(msg_id, set()).add(raw)
        self.attempts[msg_id] += 1
        if self.attempts[msg_id] <= self.fail_first:
            return web.Response(status=503, text="try later")
        self.delivered.append((msg_id, payload))
        self.got.set()
        return web.Response(status=204)


async def serve(aiohttp_server: Any, receiver: Receiver) -> str:
    app = web.Application()
    app.router.add_post("/hook", receiver.handle)
    server = await aiohttp_server(app)
    return f"http://127.0.0.1:{server.port}/hook"


async def until(predicate: Any, timeout: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.05)


@pytest.fixture
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(messages, "RETRY_SCHEDULE_S", (0.2, 0.2, 0.2))
    monkeypatch.setattr(outbox_mod, "POLL_S", 0.1)
    monkeypatch.setattr(outbox_mod, "CLAIM_LEASE_S", 2.0)
    monkeypatch.setattr(outbox_mod, "ATTEMPT_TIMEOUT_S", 1.5)


# -- config ---------------------------------------------------------------------------------------------------

def test_endpoints_must_be_https_except_on_loopback() -> None:
    ok = parse_webhooks([{"url": "https://crm.example.com/h", "secret_env": "CRM"},
                         {"url": "http://127.0.0.1:9000/h", "secret_env": "LOCAL", "events": ["call.completed"]},
                         {"url": "http://[::1]:9000/h", "secret_env": "V6", "name": "v6"},
                         {"url": "http://localhost/h", "secret_env": "LH"}])
    assert [e.name for e in ok] == ["crm.example.com", "127.0.0.1", "v6", "localhost"]
    assert ok[0].events == ("call.completed", "customer.note_added", "agent.state_changed")
    bad = [
        ([{"url": "http://crm.example.com/h", "secret_env": "X"}], "webhooks[0].url", "https"),
        ([{"url": "ftp://127.0.0.1/h", "secret_env": "X"}], "webhooks[0].url", "https"),
        ([{"url": "https:///nohost", "secret_env": "X"}], "webhooks[0].url", "no host"),
        ([{"url": "https://a.example/h", "secret_env": "X", "events": ["call.exploded"]}], "webhooks[0].events", "unknown event"),
        ([{"url": "https://a.example/h", "secret_env": "X", "events": []}], "webhooks[0].events", "non-empty"),
        ([{"url": "https://a.example/h"}], "webhooks[0].secret_env", "environment variable"),
        ([{"url": "https://a.example/h", "secret_env": "X", "secret": "whsec_x"}], "webhooks[0].secret", "unknown key"),
        ([{"url": "https://a.example/h", "secret_env": "X"}, {"url": "https://a.example/g", "secret_env": "Y"}],
         "webhooks[1].name", "duplicate"),
    ]
    for raw, key, words in bad:
        with pytest.raises(ConfigError) as err:
            make_config(webhooks=raw)
        assert err.value.key == key and words in err.value.problem, (raw, err.value)


def test_secrets_come_from_the_environment_and_a_bad_one_is_named() -> None:
    endpoints = parse_webhooks([{"url": "https://a.example/h", "secret_env": "A", "name": "a"},
                                {"url": "https://b.example/h", "secret_env": "B", "name": "b"},
                                {"url": "https://c.example/h", "secret_env": "C", "name": "c"}])
    secrets, problems = resolve_secrets(endpoints, {"A": SECRET, "B": "whsec_!!!"})
    assert secrets == {"a": SECRET}
    assert "B is not a Standard Webhooks secret" in problems["b"] and "C is not set" in problems["c"]


def test_the_retry_schedule_is_the_contracts() -> None:
    delays = [messages.retry_delay_s(n) for n in range(1, 40)]
    assert delays[:6] == [5, 30, 120, 600, 1800, 3600]
    assert delays[6:30] == [3600] * 24 and delays[30:] == [None] * 9  # then hourly for 24 h, then give up


# -- delivery ---------------------------------------------------------------------------------------------------

def outbox_for(redis: Redis, *targets: tuple[str, str, str]) -> Outbox:
    endpoints = tuple(Endpoint(name, url, ("call.completed", "agent.state_changed"), "X") for name, url, _ in targets)
    return Outbox(redis, endpoints, {name: secret for name, _, secret in targets})


async def test_a_receiver_that_fails_twice_gets_each_event_exactly_once_per_webhook_id(
        aiohttp_server: Any, redis: Redis, fast_retries: None) -> None:
    receiver = Receiver(SECRET, fail_first=2)
    box = outbox_for(redis, ("crm", await serve(aiohttp_server, receiver), SECRET))
    for n in range(5):
        assert await box.enqueue("call.completed", f"CA{n}", 1_763_700_000_000 + n, {"call_sid": f"CA{n}", "n": n}) == 1
    assert await box.enqueue("call.completed", "CA0", 1_763_700_000_000, {"call_sid": "CA0", "n": 0}) == 0  # same event
    runner = asyncio.create_task(box.run())
    try:
        await until(lambda: len(receiver.delivered) >= 5)
        await asyncio.sleep(0.5)  # nothing more arrives
    finally:
        assert not await cancel_and_wait([runner])  # see cancel_and_wait: one cancel may be lost on 3.11
    ids = [m for m, _ in receiver.delivered]
    assert len(ids) == len(set(ids)) == 5
    assert all(receiver.attempts[m] == 3 for m in ids)  # two failures, one success, same id each time
    assert all(len(receiver.bodies[m]) == 1 for m in ids)  # the very same bytes on every attempt
    by_n = {p["data"]["n"]: p for _, p in receiver.delivered}
    assert by_n[3] == {"type": "call.completed", "timestamp": "2025-11-21T04:40:00.003Z", "data": {"call_sid": "CA3", "n": 3}}
    listed = await box.deliveries("delivered", 10)
    assert len(listed) == 5 and {d["attempts"] for d in listed} == {3} and {d["endpoint"] for d in listed} == {"crm"}
    assert box.deliveries_total.labels("crm", "retry")._value.get() == 10
    assert box.deliveries_total.labels("crm", "delivered")._value.get() == 5


async def test_a_forged_signature_is_refused_by_the_receiver(aiohttp_server: Any, redis: Redis, fast_retries: None) -> None:
    """The receiver's check is real: a sender with the wrong secret never gets a 2xx."""
    receiver = Receiver(SECRET)
    box = outbox_for(redis, ("crm", await serve(aiohttp_server, receiver), OTHER_SECRET))
    await box.enqueue("call.completed", "CA1", 1, {"x": 1})
    runner = asyncio.create_task(box.run())
    try:
        await until(lambda: box.deliveries_total.labels("crm", "retry")._value.get() >= 1)
    finally:
        assert not await cancel_and_wait([runner])  # see cancel_and_wait: one cancel may be lost on 3.11
    assert receiver.delivered == []


async def test_a_dead_endpoint_never_delays_another(aiohttp_server: Any, redis: Redis, fast_retries: None,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(outbox_mod, "ATTEMPT_TIMEOUT_S", 60.0)  # the dead one holds its attempts a long time
    monkeypatch.setattr(outbox_mod, "CLAIM_LEASE_S", 120.0)
    dead, alive = Receiver(SECRET), Receiver(SECRET)
    dead.blackhole = True
    box = outbox_for(redis, ("dead", await serve(aiohttp_server, dead), SECRET),
                     ("alive", await serve(aiohttp_server, alive), SECRET))
    runner = asyncio.create_task(box.run())
    try:
        for n in range(30):
            await box.enqueue("agent.state_changed", f"f{n}", 1, {"n": n})
        await until(lambda: len(alive.delivered) == 30, timeout=20.0)
    finally:
        assert not await cancel_and_wait([runner])  # see cancel_and_wait: one cancel may be lost on 3.11
    assert dead.delivered == []
    pending = await box.deliveries("pending", 100)
    assert len(pending) == 30 and {d["endpoint"] for d in pending} == {"dead"}  # waiting, not lost


async def test_a_restart_in_the_middle_of_retries_still_delivers(aiohttp_server: Any, redis_server_factory: Any,
                                                                 fast_retries: None, tmp_path: Path) -> None:
    """Callboard and Redis both restart while a delivery is being retried: it is delivered, same id."""
    proc, url, directory = redis_server_factory(tmp_path, "--appendonly", "yes", "--appendfsync", "always")
    receiver = Receiver(SECRET, fail_first=10**6)  # down until we say so
    target = await serve(aiohttp_server, receiver)
    first = Redis.from_url(url)
    box = outbox_for(first, ("crm", target, SECRET))
    await box.enqueue("call.completed", "CA-restart", 1, {"call_sid": "CA-restart"})
    runner = asyncio.create_task(box.run())
    await until(lambda: sum(receiver.attempts.values()) >= 2)
    assert not await cancel_and_wait([runner])  # see cancel_and_wait: one cancel may be lost on 3.11
    await first.aclose()
    proc.send_signal(signal.SIGKILL)  # Redis dies too; AOF (fsync always) holds the outbox
    proc.wait(10)
    _, url, _ = redis_server_factory(directory, "--appendonly", "yes")
    receiver.fail_first = 0
    second = Redis.from_url(url)
    try:
        box2 = outbox_for(second, ("crm", target, SECRET))
        runner = asyncio.create_task(box2.run())
        try:
            await until(lambda: len(receiver.delivered) == 1)
            # the receiver has answered; the outbox writes "delivered" once that answer reaches it
            for _ in range(100):
                if (await box2.deliveries(None, 10))[0]["status"] == "delivered":
                    break
                await asyncio.sleep(0.05)
        finally:
            assert not await cancel_and_wait([runner])  # see cancel_and_wait: one cancel may be lost on 3.11
        (msg_id, payload), = receiver.delivered
        assert list(receiver.attempts) == [msg_id] and receiver.attempts[msg_id] >= 3
        assert payload["data"] == {"call_sid": "CA-restart"}
        assert (await box2.deliveries(None, 10))[0]["status"] == "delivered"
    finally:
        await second.aclose()


# -- the deliveries API on a full instance -------------------------------------------------------------------

async def test_failed_deliveries_are_listed_and_retried_through_the_api(
        aiohttp_server: Any, aiohttp_client: Any, make_instance: Any, fast_retries: None,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(messages, "RETRY_SCHEDULE_S", (0.1,))  # one retry, then failed
    monkeypatch.setenv("CB_TEST_HOOK_SECRET", SECRET)
    receiver = Receiver(SECRET, fail_first=2)
    target = await serve(aiohttp_server, receiver)
    config = make_config(webhooks=[{"url": target, "secret_env": "CB_TEST_HOOK_SECRET", "name": "crm"}])
    server = await make_instance(config)
    client = await aiohttp_client(server)
    box = server.app[SERVICES].outbox
    await box.enqueue("agent.state_changed", "fact-1", 1, {"agent": "alice"})
    sup = {"Authorization": f"Bearer {token('boss', 'supervisor')}"}

    async def failed() -> list[dict[str, Any]]:
        resp = await client.get("/api/webhooks/deliveries?status=failed", headers=sup)
        assert resp.status == 200
        return (await resp.json())["deliveries"]

    for _ in range(200):
        if await failed():
            break
        await asyncio.sleep(0.05)
    (delivery,) = await failed()
    assert delivery["status"] == "failed" and delivery["attempts"] == 2 and delivery["last_status"] == 503
    assert "try later" in delivery["last_error"] and delivery["type"] == "agent.state_changed"
    # refusals: not a supervisor, bad filters, unknown id
    agent = {"Authorization": f"Bearer {token('alice')}"}
    assert (await client.get("/api/webhooks/deliveries", headers=agent)).status == 403
    assert (await client.get("/api/webhooks/deliveries?status=lost", headers=sup)).status == 400
    assert (await client.get("/api/webhooks/deliveries?limit=0", headers=sup)).status == 400
    assert (await client.post("/api/webhooks/deliveries/crm:msg_nope/retry", headers=sup)).status == 404
    # a person retries it: delivered, with the same webhook-id
    resp = await client.post(f"/api/webhooks/deliveries/{delivery['id']}/retry", headers=sup)
    assert resp.status == 202, await resp.text()
    await until(lambda: len(receiver.delivered) == 1, timeout=10)
    assert receiver.delivered[0][0] == delivery["webhook_id"]
    assert await failed() == []
    resp = await client.post(f"/api/webhooks/deliveries/{delivery['id']}/retry", headers=sup)
    assert resp.status == 409
    metrics = await (await client.get("/metrics")).text()
    assert 'callboard_webhook_deliveries_total{endpoint="crm",result="failed"} 1.0' in metrics
    assert 'callboard_webhook_backlog{endpoint="crm"}' in metrics


async def test_a_note_added_through_the_directory_reaches_the_receiver(
        aiohttp_server: Any, aiohttp_client: Any, make_instance: Any, db: Any, fast_retries: None,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CB_TEST_HOOK_SECRET", SECRET)
    receiver = Receiver(SECRET)
    target = await serve(aiohttp_server, receiver)
    config = make_config(webhooks=[{"url": target, "secret_env": "CB_TEST_HOOK_SECRET", "name": "crm",
                                    "events": ["customer.note_added"]}])
    client = await aiohttp_client(await make_instance(config, db=db))
    agent = {"Authorization": f"Bearer {token('alice')}"}
    resp = await client.post("/api/customers", json={"name": "Sato Hanako", "phones": ["03-1234-5678"]}, headers=agent)
    assert resp.status == 201, await resp.text()
    customer = await resp.json()
    resp = await client.post(f"/api/customers/{customer['id']}/notes", json={"text": "called about the invoice"},
                             headers=agent)
    assert resp.status == 201, await resp.text()
    note = await resp.json()
    await until(lambda: len(receiver.delivered) == 1, timeout=15)
    (_, payload), = receiver.delivered
    assert payload["type"] == "customer.note_added"
    assert payload["data"] == {"customer_id": customer["id"], **note}
