"""Transfers offered like routed calls, end to end: click Transfer -> the offer on the target's socket ->
Accept -> the target's screen pop (the participant created, rung and answered through the emulator).

    python bench/transfer.py                 # 10 calls, each handed back and forth 20 times, all at once
    python bench/transfer.py --smoke         # 2 calls, 4 hand-overs each

One process on loopback: an embedded Redis, one callboard instance in conference mode (pull routing: its
router only keeps transfer offers), the emulator (simulator/conferences.py) as Twilio with softphones that
answer at once. Each call has two agents who cold-transfer it to each other (`busy_retries`: the agent
who just handed it on is still finishing their zero-second wrap-up when the call comes back; retried). Two latencies per hand-over:
`offer_ms` (the transfer request until the offer frame reaches the target's websocket: the Lua step and
the change stream) and `accept_ms` (the target's accept frame until their screen pop: the router's answer,
the Participants request, the emulator's ringing and answered callback, the take-over). Prints one JSON
object. No target is set: a transfer is a person's click; what matters is that it rings at once.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp  # noqa: E402
from redis.asyncio import Redis  # noqa: E402

from bench.controls import ACCOUNT, SECRET, TWILIO_TOKEN, post_signed, serve  # noqa: E402
from callboard.app import build_app  # noqa: E402
from callboard.auth import issue_token  # noqa: E402
from callboard.config import parse_config  # noqa: E402
from callboard.embedded import EmbeddedRedis  # noqa: E402
from callboard.services import Settings  # noqa: E402
from simulator.conferences import ConferenceEmulator  # noqa: E402


def center(calls: int) -> dict[str, Any]:
    return {"center": {"bridge": "conference", "conference_region": "jp1", "wrap_up_s": 0},
            "server": {"lease_ttl_s": 600, "lease_renew_s": 5},
            "routing": {"tick_ms": 200},
            "queues": [{"name": "support", "numbers": ["+15550000001"]}],
            "agents": [{"id": f"a{i}", "name": f"Agent {i}", "queues": ["support"]} for i in range(2 * calls)]}


class Agent:
    """One agent's websocket: frames go to waiting futures by type."""

    def __init__(self, name: str, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.name, self.ws = name, ws
        self.waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for msg in self.ws:
            data = json.loads(msg.data)
            future = self.waiting.pop(data.get("type"), None)
            if future is not None and not future.done():
                future.set_result(data)

    def expect(self, kind: str) -> asyncio.Future[dict[str, Any]]:
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.waiting[kind] = future
        return future


async def run(calls: int, rounds: int) -> None:
    with tempfile.TemporaryDirectory(prefix="cb-bench-transfer-") as tmp:
        embedded = EmbeddedRedis(Path(tmp))
        redis_url = embedded.start()
        emu = ConferenceEmulator(ACCOUNT, TWILIO_TOKEN)
        emu.ring_delay_s = 0
        emu_runner, emu_url = await serve(emu.app())
        settings = Settings(secret=SECRET, twilio_auth_token=TWILIO_TOKEN, twilio_account_sid=ACCOUNT,
                            twilio_api_url=emu_url)
        app = build_app(parse_config(center(calls), "<bench>"), settings, Redis.from_url(redis_url), close_redis=True)
        runner, base = await serve(app)
        offer_ms: list[float] = []
        accept_ms: list[float] = []
        busy_retries = 0
        try:
            async with aiohttp.ClientSession() as http:
                agents = []
                for i in range(2 * calls):
                    ws = await http.ws_connect(base.replace("http", "ws") + "/ws", protocols=["callboard.v1.json"])
                    await ws.send_json({"type": "hello", "token": issue_token(SECRET, f"a{i}", "agent", 3600)})
                    agents.append(Agent(f"a{i}", ws))
                await asyncio.sleep(0.5)
                sids = []
                for i in range(calls):  # agent a{2i} takes caller i
                    sid, leg = f"CA{i:032d}", f"CA{i + 10_000:032d}"
                    await post_signed(http, f"{base}/twilio/voice/incoming",
                                      {"CallSid": sid, "From": "+15551230000", "To": "+15550000001"})
                    emu.add_call(sid, "+15551230000", "+15550000001", queue="support")
                    emu.add_call(leg, f"client:a{2 * i}", "", status_callback=f"{base}/twilio/voice/status")
                    twiml = await post_signed(http, f"{base}/twilio/voice/agent",
                                              {"CallSid": leg, "From": f"client:a{2 * i}", "queue": "support"})
                    await emu.run_twiml(leg, twiml)
                    sids.append(sid)
                await emu.settle()

                async def hand_overs(i: int) -> None:
                    nonlocal busy_retries
                    holder, other = agents[2 * i], agents[2 * i + 1]
                    for _ in range(rounds):
                        offered = other.expect("offer")
                        started = time.perf_counter()
                        while True:  # the previous holder may still be finishing its (zero) wrap-up
                            async with http.post(f"{base}/api/calls/{sids[i]}/transfer", json={"agent": other.name},
                                                 headers={"Authorization": "Bearer " + issue_token(
                                                     SECRET, holder.name, "agent", 3600)}) as r:
                                body = await r.json()
                            if r.status == 200:
                                break
                            if body.get("code") != "agent_busy":
                                raise RuntimeError(f"transfer refused: {body}")
                            busy_retries += 1
                            await asyncio.sleep(0.01)
                            started = time.perf_counter()
                        offer = await asyncio.wait_for(offered, 10)
                        offer_ms.append((time.perf_counter() - started) * 1000)
                        popped = other.expect("pop")
                        started = time.perf_counter()
                        await other.ws.send_json({"type": "accept", "offer_id": offer["offer_id"]})
                        await asyncio.wait_for(popped, 10)
                        accept_ms.append((time.perf_counter() - started) * 1000)
                        holder, other = other, holder

                started = time.perf_counter()
                await asyncio.gather(*(hand_overs(i) for i in range(calls)))
                elapsed = time.perf_counter() - started
                await emu.settle()
                for agent in agents:
                    await agent.ws.close()
        finally:
            await runner.cleanup()
            await emu_runner.cleanup()
            embedded.stop()
    load = {"calls": calls, "hand_overs_per_call": rounds, "loadavg_1m": round(os.getloadavg()[0], 2),
            "cpus": os.cpu_count()}
    print(json.dumps({"bench": "transfer_offers", "load": load, "hand_overs": len(accept_ms),
                      "per_s": round(len(accept_ms) / elapsed, 1), "busy_retries": busy_retries,
                      "offer_p50_ms": _pct(offer_ms, 0.5), "offer_p99_ms": _pct(offer_ms, 0.99),
                      "accept_to_pop_p50_ms": _pct(accept_ms, 0.5), "accept_to_pop_p99_ms": _pct(accept_ms, 0.99)}),
          flush=True)


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if q == 0.5:
        return round(statistics.median(ordered), 2)
    return round(ordered[min(len(ordered) - 1, int(len(ordered) * q))], 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a few seconds: 2 calls, 4 hand-overs each")
    args = parser.parse_args()
    asyncio.run(run(2, 4) if args.smoke else run(10, 20))


if __name__ == "__main__":
    main()
