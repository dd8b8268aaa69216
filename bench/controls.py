"""Call controls end to end: hold/resume requests through callboard to the Twilio conference emulator.

    python bench/controls.py                 # 20 bridged calls, concurrency 1, 4, 16; 300 controls per step
    python bench/controls.py --smoke         # 4 calls, concurrency 1 and 4, 40 controls per step

One process on loopback: an embedded Redis, one callboard instance in conference mode, the emulator
(simulator/twilio_api.py) as Twilio. Each control is the whole path a button click takes: bearer check,
call lookup in Redis, the Twilio REST request through the `twilio` package (to the emulator, which also
fetches the HoldUrl and sends the hold status callback back, signed), the Lua step, the facts. Prints one
JSON object per step with the load it ran. There is no target: a person clicks a button, so what matters
is that a control answers in tens of milliseconds, not how many per second one instance can do.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp  # noqa: E402
from aiohttp import web  # noqa: E402
from redis.asyncio import Redis  # noqa: E402

from callboard.app import build_app  # noqa: E402
from callboard.auth import issue_token  # noqa: E402
from callboard.config import parse_config  # noqa: E402
from callboard.embedded import EmbeddedRedis  # noqa: E402
from callboard.services import Settings  # noqa: E402
from callflow.signature import SIGNATURE_HEADER, sign  # noqa: E402
from simulator.twilio_api import TwilioEmulator  # noqa: E402

SECRET = "bench-secret-0123456789abcdef0123456789abcdef"
TWILIO_TOKEN = "bench-twilio-token-0123456789"
ACCOUNT = "AC" + "9" * 32


def center(agents: int) -> dict:
    return {"center": {"bridge": "conference", "conference_region": "jp1", "wrap_up_s": 0},
            "server": {"lease_ttl_s": 600, "lease_renew_s": 5},
            "queues": [{"name": "support", "numbers": ["+15550000001"]}],
            "agents": [{"id": f"a{i}", "name": f"Agent {i}", "queues": ["support"]} for i in range(agents)]}


async def serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}"


async def post_signed(http: aiohttp.ClientSession, url: str, params: dict[str, str]) -> str:
    async with http.post(url, data=params, headers={SIGNATURE_HEADER: sign(TWILIO_TOKEN, url, params)}) as r:
        return await r.text()


async def run(calls: int, ladder: list[int], per_step: int) -> None:
    with tempfile.TemporaryDirectory(prefix="cb-bench-controls-") as tmp:
        embedded = EmbeddedRedis(Path(tmp))
        redis_url = embedded.start()
        emu = TwilioEmulator(ACCOUNT, TWILIO_TOKEN)
        emu.ring_delay_s = 0
        emu_runner, emu_url = await serve(emu.app())
        settings = Settings(secret=SECRET, twilio_auth_token=TWILIO_TOKEN, twilio_account_sid=ACCOUNT,
                            twilio_api_url=emu_url)
        config = parse_config(center(calls), "<bench>")
        app = build_app(config, settings, Redis.from_url(redis_url), close_redis=True)
        runner, base = await serve(app)
        try:
            async with aiohttp.ClientSession() as http:
                socks = []
                for i in range(calls):  # staffed and available: each agent takes one caller
                    ws = await http.ws_connect(base.replace("http", "ws") + "/ws", protocols=["callboard.v1.json"])
                    await ws.send_json({"type": "hello", "token": issue_token(SECRET, f"a{i}", "agent", 3600)})
                    socks.append(ws)
                await asyncio.sleep(0.5)
                sids = []
                for i in range(calls):
                    sid, leg = f"CA{i:032d}", f"CA{i + 10_000:032d}"
                    await post_signed(http, f"{base}/twilio/voice/incoming",
                                      {"CallSid": sid, "From": "+15551230000", "To": "+15550000001"})
                    emu.add_call(sid, "+15551230000", "+15550000001", queue="support")
                    emu.add_call(leg, f"client:a{i}", "")
                    twiml = await post_signed(http, f"{base}/twilio/voice/agent",
                                              {"CallSid": leg, "From": f"client:a{i}", "queue": "support"})
                    await emu.run_twiml(leg, twiml)
                    sids.append((sid, issue_token(SECRET, f"a{i}", "agent", 3600)))
                await emu.settle()
                for concurrency in ladder:
                    result = await step(http, base, sids, concurrency, per_step)
                    await emu.settle()
                    print(json.dumps({"bench": "controls_hold", "calls": calls, **result}), flush=True)
                for ws in socks:
                    await ws.close()
        finally:
            await runner.cleanup()
            await emu_runner.cleanup()
            embedded.stop()


async def step(http: aiohttp.ClientSession, base: str, sids: list[tuple[str, str]], concurrency: int,
               per_step: int) -> dict[str, float | int]:
    """per_step hold toggles spread over the calls by `concurrency` clients; latency of each request."""
    latencies: list[float] = []
    failures = 0
    on = {sid: False for sid, _ in sids}
    left = per_step

    async def worker(n: int) -> None:
        nonlocal left, failures
        while left > 0:  # one event loop: the check and the decrement cannot interleave
            left -= 1
            sid, tok = sids[n % len(sids)]
            on[sid] = not on[sid]
            started = time.perf_counter()
            async with http.post(f"{base}/api/calls/{sid}/hold", json={"on": on[sid]},
                                 headers={"Authorization": f"Bearer {tok}"}) as r:
                await r.read()
                failures += r.status != 200
            latencies.append((time.perf_counter() - started) * 1000)

    started = time.perf_counter()
    await asyncio.gather(*(worker(n) for n in range(concurrency)))
    elapsed = time.perf_counter() - started
    latencies.sort()
    return {"concurrency": concurrency, "controls": per_step, "failures": failures,
            "per_s": round(per_step / elapsed, 1), "p50_ms": round(statistics.median(latencies), 2),
            "p99_ms": round(latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))], 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a few seconds: 4 calls, concurrency 1 and 4")
    args = parser.parse_args()
    if args.smoke:
        asyncio.run(run(4, [1, 4], 40))
    else:
        asyncio.run(run(20, [1, 4, 16], 300))


if __name__ == "__main__":
    main()
