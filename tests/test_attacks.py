"""Attacks on the first wave's surfaces: garbage, huge and absurd values on every webhook and API route.

Every answer is a 4xx in English (JSON for the API, text/plain for Twilio) or valid TwiML, never a 500, and
nothing an attacker sends can stop the service for anyone else (a poisoned presence batch once did).
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import aiohttp
import pytest
from redis.asyncio import Redis

from callboard.clock import Clock
from presence.batcher import Batcher
from presence.rules import AWAY, CONNECT, MAX_SEQ, SET, Intent, Settings
from presence.store import Addressed, PresenceStore
from tests.conftest import token
from tests.test_callflow_day import SUPPORT, make_harness, sid

GARBAGE = ["", " ", "x" * 60_000, "9" * 5_000, "1e308", "-1", "nan", "inf", "\x00", "💥", "%00", "client:",
           "client:" + "a" * 5_000, "CA" + "0" * 32, "<Say>hi</Say>", "' OR 1=1 --", "{}", "[[[[[[[["]
FIELDS = ["CallSid", "QueueTime", "QueuePosition", "To", "From", "QueueResult", "CallStatus", "DequeingCallSid"]
ROUTES = ["incoming", "wait", "agent", "bridge", "queue-result", "status"]


def _english(text: str) -> bool:
    return bool(text) and text.isascii() and text.strip()[-1] in ".)" and len(text) < 300


async def test_every_webhook_answers_garbage_with_twiml_or_an_english_4xx(aiohttp_client: Any, redis: Redis) -> None:
    h = await make_harness(aiohttp_client, redis)
    h.signed_in.add("alice")
    base = {"CallSid": sid(1), "To": SUPPORT, "From": "client:alice", "QueueResult": "hangup",
            "CallStatus": "completed", "QueueTime": "3", "QueuePosition": "1", "DequeingCallSid": sid(2)}
    seen: dict[int, int] = {}
    for route in ROUTES:
        cases: list[tuple[dict[str, str], dict[str, str] | None]] = []
        for field in FIELDS:
            cases += [({**base, field: value}, None) for value in GARBAGE]
        for name in ("queue", "agent", "pos", "at"):
            cases += [(base, {name: value}) for value in GARBAGE[:6]]
        for params, query in cases:
            status, body = await h.twilio.post(route, params, query)
            seen[status] = seen.get(status, 0) + 1
            where = (route, {k: v[:20] for k, v in params.items() if base.get(k) != v}, query and str(query)[:40])
            assert status in (200, 400, 413), (where, status, body[:200])
            if status == 200:
                assert body.startswith("<?xml") and "<Response" in body, (where, body[:200])
                assert len(body) < 4_000, (where, len(body))  # no echo of a huge value into TwiML
            else:
                assert _english(body), (where, status, body[:200])
    assert seen.get(400, 0) > 0 and seen.get(200, 0) > 0  # both kinds of answer were exercised


async def test_a_sid_that_is_not_a_sid_is_refused_by_name(aiohttp_client: Any, redis: Redis) -> None:
    h = await make_harness(aiohttp_client, redis)
    for field, value in (("CallSid", "CA" + "1" * 100), ("CallSid", "CA 1"), ("DequeingCallSid", "x:y")):
        status, body = await h.twilio.post("bridge", {"CallSid": sid(1), **{field: value}}, {"queue": "support"})
        assert (status, body) == (400, f"Parameter {field} is not a Twilio SID (letters and digits, at most 64)."), \
            (field, value)
    assert await redis.dbsize() == 0  # refused before anything was written


async def test_a_garbage_queue_result_is_logged_and_kept_short(aiohttp_client: Any, redis: Redis,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    h = await make_harness(aiohttp_client, redis)
    status, _ = await h.twilio.post("queue-result", {"CallSid": sid(3), "QueueResult": "z" * 50_000, "QueueTime": "4"},
                                    {"queue": "support"})
    assert status == 200
    assert max(len(r.getMessage()) for r in caplog.records) < 500
    assert len(await redis.hget(f"cb:call:{sid(3)}", "qr") or b"") <= 64


# -- the HTTP API --------------------------------------------------------------------------------------------

async def test_an_absurd_seq_is_a_400_and_never_stops_state_changes(make_instance: Any) -> None:
    server = await make_instance()
    url = f"http://{server.host}:{server.port}"
    boss = {"Authorization": f"Bearer {token('boss', 'supervisor')}"}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as http:
        for seq in (10**30, 2**64, MAX_SEQ + 1, -1, 1.5, True, "7", [1]):
            async with http.post(f"{url}/api/agents/alice/state", json={"state": "away", "seq": seq}, headers=boss) as r:
                body = await r.json()
                assert r.status == 400 and '"seq"' in body["error"], (seq, r.status, body)
        # the service still takes everyone's changes (a 10^30 seq once poisoned every later batch)
        for agent in ("alice", "bob", "carol"):
            async with http.post(f"{url}/api/agents/{agent}/state", json={"state": "away", "reason": "x"},
                                 headers=boss) as r:
                assert r.status == 200, await r.text()
                assert (await r.json())["state"] == "away"


async def test_every_api_route_answers_garbage_in_english_never_500(make_instance: Any) -> None:
    server = await make_instance()
    url = f"http://{server.host}:{server.port}"
    boss, alice = token("boss", "supervisor"), token("alice")
    auths = [None, f"Bearer {boss}", f"Bearer {alice}", "Bearer", "Bearer garbage", "Bearer a.b.c",
             "Bearer eyJ" + "a" * 6_000, "Basic Zm9vOmJhcg==", "Bearer \u00ff\u00fe"]
    bodies = [b"", b"null", b"[]", b"1e999", b'"x"', b"\xff\xfe", b'{"state": {"a": 1}}', b'{"state": ["away"]}',
              b'{"state": "away", "reason": 5}', b'{"state": "away", "reason": "' + b"r" * 500 + b'"}',
              b'{"state": "offline"}', b'{"state": "on-call"}', b'{"state": "away", "seq": 1e400}',
              b"{" * 50 + b"}" * 50]
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as http:
        async def check(method: str, path: str, auth: str | None, body: bytes | None = None) -> None:
            headers = {"Content-Type": "application/json", **({"Authorization": auth} if auth else {})}
            async with http.request(method, url + path, data=body, headers=headers, allow_redirects=False) as r:
                text = await r.text(errors="replace")
                where = (method, path[:40], (auth or "")[:20], (body or b"")[:40])
                unconfigured = r.status == 503 and path in ("/api/voice-token", "/readyz")  # says what is missing
                assert r.status < 500 or unconfigured, (where, r.status, text[:300])
                if r.status >= 400 and r.content_type != "application/json":  # the router's own 404/405
                    assert r.status in (404, 405) and text.isascii() and "Not" in text, (where, r.status, text[:200])
                elif r.status >= 400 and path.startswith("/api/"):
                    error = json.loads(text)["error"]  # may quote what was sent (an agent id), so not ASCII-only
                    assert isinstance(error, str) and re.match(r'^["a-zA-Z]', error), (where, text[:300])

        for agent in ("alice", "nobody", "a" * 3_000, "%2e%2e", "💥"):
            for auth in auths:
                for body in bodies:
                    await check("POST", f"/api/agents/{agent}/state", auth, body)
        for path in ("/api/snapshot", "/api/voice-token", "/metrics", "/healthz", "/readyz", "/wallboard", "/agent",
                     "/", "/static/../pyproject.toml", "/static/%2e%2e/pyproject.toml", "/api/agents/alice/state"):
            for auth in auths:
                await check("GET", path, auth)
        async with http.post(f"{url}/api/agents/alice/state", data=b"x" * (3 * 1024 * 1024),
                             headers={"Authorization": f"Bearer {boss}"}) as r:
            assert r.status == 413, r.status


async def test_the_second_wave_routes_answer_garbage_in_english_never_500(make_instance: Any) -> None:
    """Directory, records, reports, webhooks and call controls: deep, huge, wrong-typed and non-JSON bodies
    and absurd queries get a 4xx naming the problem (or 503 naming missing Twilio settings), never a 500."""
    server = await make_instance()
    url = f"http://{server.host}:{server.port}"
    auths = [f"Bearer {token('boss', 'supervisor')}", f"Bearer {token('alice')}", "Bearer garbage"]
    bodies = [b"", b"null", b"[]", b"\xff\xfe", b"[" * 60_000, b'{"a":' * 5_000 + b"1" + b"}" * 5_000,
              b'{"name": {"x": 1}, "phones": "not a list"}', b'{"text": ' + b"9" * 400 + b"}",
              b'{"on": "yes", "agent": 5, "mode": [], "disposition": null}']
    sid = "CA" + "0" * 32
    posts = ["/api/customers", "/api/customers/cu_nope/notes", f"/api/calls/{sid}/hold", f"/api/calls/{sid}/transfer",
             f"/api/calls/{sid}/monitor", f"/api/calls/{sid}/hangup", f"/api/calls/{sid}/wrap-up",
             "/api/webhooks/deliveries/nope/retry", "/api/calls/%2e%2e/hold"]
    gets = ["/api/customers?q=" + "山" * 3_000, "/api/customers?limit=-1", "/api/customers?limit=1e9",
            "/api/calls?since=yesterday", "/api/calls?limit=0&cursor=%%%", "/api/calls?since=1e400",
            "/api/calls.csv?until=-5", f"/api/calls/{sid}", "/api/reports/intraday?date=2025-02-30",
            "/api/reports/intraday?step_min=0", "/api/reports/agents?date=" + "9" * 300,
            "/api/webhooks/deliveries?status=nope", "/api/customers.csv", "/customers", "/reports"]
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        async def check(method: str, path: str, auth: str, body: bytes | None = None) -> None:
            headers = {"Content-Type": "application/json", "Authorization": auth}
            async with http.request(method, url + path, data=body, headers=headers, allow_redirects=False) as r:
                text = await r.text(errors="replace")
                where = (method, path[:50], auth[:20], (body or b"")[:30])
                twilio_unset = r.status == 503 and "/api/calls/" in path and "TWILIO" in text
                assert r.status < 500 or twilio_unset, (where, r.status, text[:300])
                if r.status >= 400 and r.content_type == "application/json":
                    assert "Traceback" not in text and re.search(r"[A-Za-z]{3}", text), (where, text[:300])

        for path in posts:
            for auth in auths:
                for body in bodies:
                    await check("POST", path, auth, body)
        for path in gets:
            for auth in auths:
                await check("GET", path, auth)


# -- presence: one bad batch never stops the batcher ----------------------------------------------------------

class _FailingOnce(PresenceStore):
    """A real store whose first apply fails as a bug would (not an outage)."""

    failed = False

    async def apply(self, items: Any, now_ms: int) -> list[str | None]:
        if not self.failed:
            self.failed = True
            raise ValueError("cannot encode this batch")
        return await super().apply(items, now_ms)


async def test_a_flush_that_fails_by_a_bug_refuses_that_batch_and_the_batcher_goes_on(redis: Redis) -> None:
    store = _FailingOnce(redis, Settings(wrap_up_s=5, disconnect_grace_s=5), day_key=lambda _: "2025-11-21")
    store.failed = True
    await store.apply([Addressed("alice", Intent(kind=CONNECT), conn="c1", instance="i")], Clock().now_ms())
    store.failed = False
    batcher = Batcher(store, Clock())
    batcher.start()
    try:
        assert await asyncio.wait_for(batcher.submit("alice", Intent(kind=SET, actor="agent", state=AWAY)), 10) \
            == "not_stored"
        assert await asyncio.wait_for(batcher.submit("alice", Intent(kind=SET, actor="agent", state=AWAY,
                                                                     reason="lunch")), 10) is None
        assert (await store.read_agent("alice")).reason == "lunch"
        assert await asyncio.wait_for(batcher.submit("alice", Intent(kind=SET, actor="agent", state=AWAY,
                                                                     seq=10**30)), 10) == "bad_seq"
    finally:
        await batcher.stop()
