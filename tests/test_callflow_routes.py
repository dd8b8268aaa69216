"""The webhook routes one by one: refusals, bad input, outbound calls, the wait loop, key names, resets."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import msgpack
import pytest
from aiohttp import web
from redis.asyncio import Redis

from callboard import keys
from callflow.flow import CallFlow
from callflow.live import QueueStatsMirror
from callflow.lua import KEY_NAMES
from callflow.testing import FakeTwilio
from presence.rules import Intent
from presence.store import Addressed
from tests.test_callflow_day import (
    SALES,
    SUPPORT,
    T0,
    TOKEN,
    Harness,
    bridge,
    caller_end,
    day_config,
    incoming,
    make_harness,
    queue_result,
    sid,
)


async def _support(h: Harness) -> dict[str, Any]:
    mirror = QueueStatsMirror(h.config, h.clock)
    await mirror.load(h.redis)
    return mirror.snapshot("support", h.clock.now_ms())


async def _connect(h: Harness, agent: str) -> None:
    h.signed_in.add(agent)
    await h.store.apply([Addressed(agent, Intent("connect"), conn=f"c-{agent}", instance="i1")], h.clock.now_ms())


# -- signatures over HTTP ---------------------------------------------------------------------------------

async def test_missing_bad_and_tampered_signatures_get_403_plain_english(aiohttp_client: Any, redis: Redis) -> None:
    h = await make_harness(aiohttp_client, redis)
    params = {"CallSid": sid(1), "From": "+15551230001", "To": SUPPORT}
    status, body = await h.twilio.post("incoming", params, signature=None)
    assert (status, body) == (403, "Missing X-Twilio-Signature header.")
    status, body = await h.twilio.post("incoming", params, signature="bm90IGEgc2lnbmF0dXJl")
    assert (status, body) == (403, "Invalid Twilio signature.")
    wrong = FakeTwilio(h.client, "some-other-token", "https://cb.example.com/callboard")
    assert (await wrong.post("incoming", params))[0] == 403
    no_prefix = FakeTwilio(h.client, TOKEN, "https://cb.example.com")  # signed without the proxy prefix
    assert (await no_prefix.post("incoming", params))[0] == 403
    _, signed = h.twilio.url_for("incoming")
    from callflow.signature import sign

    sig = sign(TOKEN, signed, params)
    resp = await h.client.post("/twilio/voice/incoming", data={**params, "From": "+15559999999"},
                               headers={"X-Twilio-Signature": sig})
    assert resp.status == 403 and resp.content_type == "text/plain"
    reg = h.metrics.registry
    assert reg.get_sample_value("callboard_webhook_rejected_total", {"reason": "missing_signature"}) == 1
    assert reg.get_sample_value("callboard_webhook_rejected_total", {"reason": "bad_signature"}) == 4
    assert (await _support(h))["today"]["offered"] == 0


async def test_without_public_url_the_servers_own_url_is_signed(aiohttp_client: Any, redis: Redis,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    h = await make_harness(aiohttp_client, redis)
    with caplog.at_level(logging.WARNING):
        flow = CallFlow(config=h.config, redis=redis, presence=h.store, clock=h.clock, auth_token=TOKEN,
                        public_url=None, insecure=False, metrics=h.metrics, staffed=lambda q: True)
    assert any("PUBLIC_URL is not set" in r.message for r in caplog.records)
    app = web.Application()
    app.add_routes(flow.routes())
    client = await aiohttp_client(app)
    twilio = FakeTwilio(client, TOKEN, None)  # signs http://127.0.0.1:<port>/...
    status, body = await twilio.post("incoming", {"CallSid": sid(2), "To": SUPPORT})
    assert status == 200 and f"http://127.0.0.1:{client.port}/twilio/voice/wait?queue=support" in body


async def test_no_auth_token_refuses_to_start_unless_insecure(aiohttp_client: Any, redis: Redis,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    h = await make_harness(aiohttp_client, redis)
    kwargs: dict[str, Any] = {"config": h.config, "redis": redis, "presence": h.store, "clock": h.clock,
                              "public_url": None, "metrics": h.metrics, "staffed": lambda q: True}
    with caplog.at_level(logging.ERROR):
        refusing = CallFlow(auth_token=None, insecure=False, **kwargs)
    assert any("TWILIO_AUTH_TOKEN" in r.message for r in caplog.records)
    off = web.Application()
    off.add_routes(refusing.routes())
    off_client = await aiohttp_client(off)
    status, body = await FakeTwilio(off_client, None).post("incoming", {"CallSid": sid(3), "To": SUPPORT})
    assert status == 503 and "TWILIO_AUTH_TOKEN is not set" in body
    with caplog.at_level(logging.WARNING):
        flow = CallFlow(auth_token=None, insecure=True, **kwargs)
    assert any("INSECURE" in r.message for r in caplog.records)
    app = web.Application()
    app.add_routes(flow.routes())
    client = await aiohttp_client(app)
    status, body = await FakeTwilio(client, None).post("incoming", {"CallSid": sid(3), "To": SUPPORT})
    assert status == 200 and "<Enqueue" in body


# -- bad input: a 4xx in plain English or safe TwiML, never a 500, never a corrupted count --------------

async def test_bad_input_never_500_never_corrupts(aiohttp_client: Any, redis: Redis) -> None:
    h = await make_harness(aiohttp_client, redis)
    await _connect(h, "alice")
    # missing CallSid
    status, body = await h.twilio.post("incoming", {"From": "+15551230001", "To": SUPPORT})
    assert (status, body) == (400, "Missing required parameter CallSid.")
    # non-numeric QueueTime: queue time measured from the incoming request instead (7 s here)
    await h.do(incoming(0, 1))
    await h.do(bridge(7, 1, "alice", "soon"))
    # unknown QueueResult: safe TwiML, counted under "other", logged
    await h.do(incoming(10, 2))
    h.clock.set(T0 + 13_000)
    status, body = await h.twilio.post("queue-result", {"CallSid": sid(2), "QueueResult": "teleported",
                                                         "QueueTime": "x"}, {"queue": "support"})
    assert status == 200 and "<Hangup" in body
    # a queue-result without QueueResult at all
    await h.do(incoming(20, 3))
    await h.do(queue_result(21, 3, "", 1))
    # a hangup counted once even when sent three times, and a late status resurrects nothing
    await h.do(incoming(30, 4))
    for _ in range(3):
        await h.do(queue_result(40, 4, "hangup", 10))
    await h.do(caller_end(41, 4))
    await h.do(bridge(42, 4, "alice", 12))  # a bridge after the call left: no answer, no double count
    assert (await h.store.read_agent("alice")).state == "on-call"  # still on call 1 only
    assert (await h.store.read_agent("alice")).call["call_sid"] == sid(1)  # type: ignore[index]
    snap = await _support(h)
    today = snap["today"]
    assert today["offered"] == 4 and today["answered"] == 1 and today["asa_s"] == 7.0
    assert today["other"] == 2 and today["abandoned"] == 1 and snap["waiting"] == 0
    # unknown agent: spoken English error, logged, counted as a rejection
    status, body = await h.twilio.post("agent", {"CallSid": sid(50), "From": "client:mallory"})
    assert status == 200 and "<Say" in body and "<Hangup" in body and "<Dial" not in body
    assert h.metrics.registry.get_sample_value("callboard_webhook_rejected_total", {"reason": "unknown_agent"}) == 1
    # a queue the agent does not serve
    status, body = await h.twilio.post("agent", {"CallSid": sid(51), "From": "client:alice", "queue": "sales"})
    assert status == 200 and "<Dial" not in body
    # body over 64 KiB
    status, body = await h.twilio.post("status", {"CallSid": sid(52), "Junk": "x" * 70_000})
    assert status == 413 and "64 KiB" in body
    # not a form
    resp = await h.client.post("/twilio/voice/status", data=b"\xff\xfe", headers={"Content-Type": "application/json"})
    assert resp.status == 400 and resp.content_type == "text/plain"
    # non-UTF-8 form
    resp = await h.client.post("/twilio/voice/status", data=b"CallSid=\xff",
                               headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert resp.status == 400 and resp.content_type == "text/plain"
    assert (await _support(h))["today"] == today


# -- agents: outbound calls, pops, wait loop --------------------------------------------------------------

async def test_outbound_call_puts_the_agent_on_call_then_wrap_up_without_queue_stats(aiohttp_client: Any,
                                                                                      redis: Redis) -> None:
    h = await make_harness(aiohttp_client, redis)
    await _connect(h, "carol")
    status, body = await h.twilio.post("agent", {"CallSid": sid(60), "From": "client:carol", "To": "+15557654321"})
    assert status == 200 and 'callerId="+15550009999"' in body and "<Number>+15557654321</Number>" in body
    rec = await h.store.read_agent("carol")
    assert rec.state == "on-call" and rec.call and rec.call["to"] == "+15557654321"
    h.clock.advance(60)
    await h.twilio.post("status", {"CallSid": sid(60), "CallStatus": "completed", "From": "client:carol"})
    assert (await h.store.read_agent("carol")).state == "wrap-up"
    h.clock.advance(10)
    await h.store.sweep(h.clock.now_ms())
    assert (await h.store.read_agent("carol")).state == "available"
    assert (await _support(h))["today"]["handled"] == 0
    assert await h.flow.drain_handled() == 0


async def test_the_pop_is_stored_for_reconnects_and_removed_when_the_call_ends(aiohttp_client: Any,
                                                                                redis: Redis) -> None:
    h = await make_harness(aiohttp_client, redis)
    await _connect(h, "alice")
    await h.do(incoming(0, 1))
    await h.twilio.post("agent", {"CallSid": sid(501), "From": "client:alice"})
    await h.do(bridge(9, 1, "alice", 9))
    pop = msgpack.unpackb(await redis.get(keys.agent_pop("alice")))
    assert pop == {"type": "pop", "call_sid": sid(1), "from": "+15551230001", "to": SUPPORT, "queue": "support",
                   "waited_s": 9, "customers": [], "lookup_pending": True}  # no directory lookup in this harness
    entries = [(f[b"k"], msgpack.unpackb(f[b"d"])) for _, f in await redis.xrange(keys.CHANGES)]
    assert (b"pop", pop) in entries
    await h.do(caller_end(30, 1))
    assert await redis.get(keys.agent_pop("alice")) is None
    entries = [(f[b"k"], f[b"id"], msgpack.unpackb(f[b"d"])) for _, f in await redis.xrange(keys.CHANGES)]
    assert (b"unpop", b"alice", {"call_sid": sid(1)}) in entries


async def test_wait_announces_position_on_change_and_every_period_without_redis(aiohttp_client: Any,
                                                                                 redis: Redis) -> None:
    h = await make_harness(aiohttp_client, redis)
    params = {"CallSid": sid(1), "QueuePosition": "3", "QueueTime": "0"}
    status, body = await h.twilio.post("wait", params, {"queue": "support"})
    assert status == 200 and "number 3 in line" in body and "<Pause" in body
    assert "wait?queue=support&amp;pos=3&amp;at=0" in body
    status, body = await h.twilio.post("wait", {**params, "QueueTime": "10"}, {"queue": "support", "pos": "3", "at": "0"})
    assert "<Say" not in body and "pos=3&amp;at=0" in body
    status, body = await h.twilio.post("wait", {**params, "QueuePosition": "2", "QueueTime": "12"},
                                       {"queue": "support", "pos": "3", "at": "0"})
    assert "number 2 in line" in body and "pos=2&amp;at=12" in body
    status, body = await h.twilio.post("wait", {**params, "QueuePosition": "2", "QueueTime": "42"},
                                       {"queue": "support", "pos": "2", "at": "12"})
    assert "number 2 in line" in body
    status, body = await h.twilio.post("wait", {**params, "QueuePosition": "junk"}, {"queue": "support", "pos": "x"})
    assert status == 200 and "<Redirect" in body
    assert await redis.dbsize() == 0  # the hold loop never writes to Redis


async def test_greeting_uses_the_queue_language_and_voice(aiohttp_client: Any, redis: Redis) -> None:
    h = await make_harness(aiohttp_client, redis)
    await _connect(h, "carol")
    status, body = await h.twilio.post("incoming", {"CallSid": sid(7), "To": SALES})
    assert 'language="ja-JP"' in body and 'voice="Polly.Mizuki"' in body and ">sales</Enqueue>" in body


# -- Lua key names and the `today` reset ---------------------------------------------------------------

async def test_lua_key_names_match_keys_py(redis: Redis) -> None:
    script = redis.register_script(KEY_NAMES)
    names = await script(args=[0, "2025-11-21", 0, 0, 100, "CA1", "support", "2025-11-21", 29395000, "alice"])
    assert [n.decode() for n in names] == [keys.call("CA1"), keys.agent_leg("CA1"), keys.queue_waiting("support"),
                                           keys.queue_day("support", "2025-11-21"),
                                           keys.queue_minute("support", 29395000), keys.agent_pop("alice")]


async def test_today_resets_at_reset_time_in_the_configured_zone(aiohttp_client: Any, redis: Redis) -> None:
    tokyo = ZoneInfo("Asia/Tokyo")
    config = day_config(timezone="Asia/Tokyo", reset_time="06:00")
    h = await make_harness(aiohttp_client, redis, config)
    await _connect(h, "alice")
    before = int(datetime(2025, 11, 21, 5, 50, tzinfo=tokyo).timestamp() * 1000)
    h.clock.set(before)
    await h.twilio.post("incoming", {"CallSid": sid(1), "To": SUPPORT})
    h.clock.advance(30)
    await h.twilio.post("queue-result", {"CallSid": sid(1), "QueueResult": "hangup", "QueueTime": "30"},
                        {"queue": "support"})
    mirror = QueueStatsMirror(h.config, h.clock)
    await mirror.load(redis)
    assert mirror.snapshot("support", h.clock.now_ms())["today"]["abandoned"] == 1
    at_reset = int(datetime(2025, 11, 21, 6, 0, tzinfo=tokyo).timestamp() * 1000)
    assert mirror.tick(at_reset - 1) == set()
    assert mirror.tick(at_reset) == {"support"}  # 06:00 Tokyo = 21:00 UTC the day before
    snap = mirror.snapshot("support", at_reset)
    assert snap["today"]["offered"] == 0 and snap["today"]["abandoned"] == 0
    assert snap["last_30m"]["abandoned"] == 1  # the last 30 minutes do not care about the reset
    h.clock.set(at_reset + 60_000)
    await h.twilio.post("incoming", {"CallSid": sid(2), "To": SUPPORT})
    await mirror.load(redis)
    assert mirror.snapshot("support", h.clock.now_ms())["today"]["offered"] == 1
    assert await redis.exists(keys.queue_day("support", "2025-11-20"), keys.queue_day("support", "2025-11-21")) == 2


async def test_wrap_up_ended_early_by_the_agent_counts_the_wrap_up_actually_spent(aiohttp_client: Any,
                                                                                 redis: Redis) -> None:
    h = await make_harness(aiohttp_client, redis)
    await _connect(h, "alice")
    await h.do(incoming(0, 1))
    await h.twilio.post("agent", {"CallSid": sid(501), "From": "client:alice"})
    await h.do(bridge(4, 1, "alice", 4))
    await h.do(caller_end(64, 1))
    await h.twilio.post("status", {"CallSid": sid(501), "CallStatus": "completed", "From": "client:alice"})
    h.clock.set(T0 + 67_000)  # 3 s of the 10 s wrap-up, then the agent is ready
    await h.store.apply([Addressed("alice", Intent("set", actor="agent", state="available"))], h.clock.now_ms())
    snap = await _support(h)
    assert snap["today"]["handled"] == 1 and snap["today"]["aht_s"] == 63.0  # 60 s talk + 3 s wrap-up
    assert await h.flow.drain_handled() == 1
    ttl_ms = await redis.pttl(keys.call(sid(1)))
    assert 6 * 86_400_000 < ttl_ms <= 7 * 86_400_000  # call_retention_days
    assert 0 < await redis.pttl(keys.queue_minute("support", (T0 + 4_000) // 60_000)) <= 33 * 60_000
