"""Routing decisions under load: offer mode next to pull mode, same center and same arrival rate.

    python bench/routing.py                 # 1,000 agents, 50 new callers/s, 30 s per mode
    python bench/routing.py --smoke         # 100 agents, 10 callers/s, 3 s per mode

The server under test is `callboard serve` in its own process on Redis DB 6. The agents' connections are
registered by this script playing one more instance (its own lease and connection registry), so 1,000
agents are present without 1,000 client sockets competing for the two cores. Callers are signed Twilio
webhooks; each caller's directory lookup (cb:caller:{CallSid}) is written before `incoming`, as the
lookup would, with an owner for a third of them.

Offer mode: a caller is "decided" when its offer is written (the `offer` entry on the change stream). The
decision latency is caller waiting -> offer sent (`waited_s` of the offer: agents here are available long
before callers arrive, so the caller's wait is the later of the two starts). The bench then hangs the
caller up, which cancels the offer (caller_left) and frees the agent, so each caller is one decision.
Pull mode: agents press "Take next caller" at once (a lower bound: people take seconds): the decision is
the `bridge` webhook's answer, and its latency is from the caller's `incoming` answer to that answer
(agent + bridge webhooks). Decisions/s are decided callers per second of the run.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp  # noqa: E402
import msgpack  # noqa: E402
from redis.asyncio import Redis  # noqa: E402
from twilio.request_validator import RequestValidator  # noqa: E402

from bench import common  # noqa: E402
from callboard import keys  # noqa: E402
from callflow.lua import CALL_HANDLED_HOOK  # noqa: E402
from presence.rules import CONNECT, Intent  # noqa: E402
from presence.rules import Settings as RuleSettings  # noqa: E402
from presence.store import Addressed, PresenceStore  # noqa: E402

BENCH_INSTANCE = "bench-agents"
QUEUES = 4


def _sid(prefix: str, n: int) -> str:
    return f"{prefix}{n:032x}"


class Load:
    def __init__(self, base: str, redis: Redis, agents: list[tuple[str, str, str]], rate: float, duration_s: float) -> None:
        self.base, self.redis, self.agents = base, redis, agents
        self.rate, self.duration_s = rate, duration_s
        self.validator = RequestValidator(common.TWILIO_TOKEN)
        self.by_queue: dict[str, list[str]] = {}
        for aid, _team, queue in agents:
            self.by_queue.setdefault(queue, []).append(aid)
        self.session: aiohttp.ClientSession | None = None
        self.errors = 0

    async def post(self, route: str, params: dict[str, str], query: str = "") -> str:
        path = f"/twilio/voice/{route}" + (f"?{query}" if query else "")
        url = self.base + path
        headers = {"X-Twilio-Signature": self.validator.compute_signature(url, params)}
        assert self.session is not None
        async with self.session.post(url, data=params, headers=headers) as resp:
            body = await resp.text()
            if resp.status != 200:
                self.errors += 1
            return body

    async def present_agents(self) -> None:
        """Connect every agent as connections of a bench-held instance (kept alive by its lease)."""
        store = PresenceStore(self.redis, RuleSettings(wrap_up_s=0, disconnect_grace_s=30), day_key=lambda ms: "bench",
                              handled_hook=CALL_HANDLED_HOOK)
        await store.heartbeat(BENCH_INSTANCE, int(time.time() * 1000) + 3_600_000)
        for start in range(0, len(self.agents), 200):
            chunk = self.agents[start:start + 200]
            await store.apply([Addressed(aid, Intent(kind=CONNECT, actor="system"), conn=f"{BENCH_INSTANCE}:{aid}",
                                         instance=BENCH_INSTANCE) for aid, _, _ in chunk], int(time.time() * 1000))

    def caller_params(self, n: int, queue: int) -> dict[str, str]:
        return {"AccountSid": "AC" + "b" * 32, "CallSid": _sid("CA", n), "From": f"+1444{n:07d}",
                "To": f"+1555{queue:07d}", "CallStatus": "ringing", "Direction": "inbound"}

    async def arrivals(self, each: Any) -> int:
        """Start one caller every 1/rate s for duration_s (open loop); returns how many arrived."""
        started = time.perf_counter()
        tasks = []
        for n in itertools.count(1):
            at = started + (n - 1) / self.rate
            if at - started >= self.duration_s:
                break
            await asyncio.sleep(max(0.0, at - time.perf_counter()))
            tasks.append(asyncio.create_task(each(n)))
        await asyncio.gather(*tasks)
        return len(tasks)


async def run_offer(load: Load) -> dict[str, Any]:
    waited_s: list[float] = []
    decided: dict[str, asyncio.Future[float]] = {}
    last_id = (await load.redis.xrevrange(keys.CHANGES, count=1) or [(b"0-0", {})])[0][0]

    async def follow() -> None:
        nonlocal last_id
        while True:
            reply = await load.redis.xread({keys.CHANGES: last_id}, count=5000, block=1000)
            for _, entries in reply or []:
                for entry_id, fields in entries:
                    last_id = entry_id
                    if fields[b"k"] == b"offer":
                        data = msgpack.unpackb(fields[b"d"], raw=False)
                        future = decided.get(data["call_sid"])
                        if future is not None and not future.done():
                            future.set_result(float(data["waited_s"]))

    async def caller(n: int) -> None:
        q = n % QUEUES
        params = load.caller_params(n, q)
        sid = params["CallSid"]
        owner = load.by_queue[f"q{q:03d}"][n % len(load.by_queue[f"q{q:03d}"])] if n % 3 == 0 else None
        await load.redis.set(keys.caller(sid), json.dumps({"withheld": False, "customers": [], "owner": owner,
                                                           "owner_team": None}), ex=3600)
        decided[sid] = asyncio.get_running_loop().create_future()
        await load.post("incoming", params)
        try:
            waited_s.append(await asyncio.wait_for(decided[sid], 30))
        except TimeoutError:
            load.errors += 1
        # the caller hangs up: the offer is cancelled (caller_left) and the agent is free again
        await load.post("queue-result", params | {"QueueResult": "hangup", "QueueTime": "1"}, f"queue=q{q:03d}")
        await load.post("status", params | {"CallStatus": "completed"})

    follower = asyncio.create_task(follow())
    started = time.perf_counter()
    arrived = await load.arrivals(caller)
    elapsed = time.perf_counter() - started
    follower.cancel()
    return {"arrived": arrived, "decided": len(waited_s), "decisions_per_s": round(len(waited_s) / elapsed, 1),
            "decision_latency": common.latency_ms(waited_s)}


async def run_pull(load: Load) -> dict[str, Any]:
    latencies: list[float] = []
    idle = {q: list(a) for q, a in load.by_queue.items()}  # agents who press "Take next caller" at once
    legs = itertools.count(1)

    async def caller(n: int) -> None:
        q = n % QUEUES
        queue = f"q{q:03d}"
        params = load.caller_params(n, q)
        await load.post("incoming", params)
        t0 = time.perf_counter()
        if not idle[queue]:
            load.errors += 1
            return
        agent = idle[queue].pop(0)
        leg = _sid("CL", next(legs))
        agent_params = {"AccountSid": params["AccountSid"], "CallSid": leg, "From": f"client:{agent}", "To": "",
                        "CallStatus": "ringing", "Direction": "inbound"}
        await load.post("agent", agent_params | {"queue": queue})
        await load.post("bridge", params | {"CallStatus": "in-progress", "DequeingCallSid": leg, "QueueTime": "0"},
                        f"queue={queue}&agent={agent}")
        latencies.append(time.perf_counter() - t0)
        await load.post("status", agent_params | {"CallStatus": "completed"})
        await load.post("queue-result", params | {"QueueResult": "bridged", "QueueTime": "0"}, f"queue={queue}")
        await load.post("status", params | {"CallStatus": "completed"})
        idle[queue].append(agent)

    started = time.perf_counter()
    arrived = await load.arrivals(caller)
    elapsed = time.perf_counter() - started
    return {"arrived": arrived, "decided": len(latencies), "decisions_per_s": round(len(latencies) / elapsed, 1),
            "decision_latency": common.latency_ms(latencies)}


async def one_mode(mode: str, agents: int, rate: float, duration_s: float, redis_url: str) -> dict[str, Any]:
    with common.workdir("cb-bench-routing-") as wd:
        config = common.write_config(wd, agents=agents, queues=QUEUES)
        config.write_text(config.read_text(encoding="utf-8") + f'\n[routing]\nmode = "{mode}"\n', encoding="utf-8")
        with common.callboard_server(config, wd, redis_url=redis_url) as server:
            redis = Redis.from_url(redis_url)
            layout = common.center_layout(agents, QUEUES, 25)
            load = Load(server.base, redis, layout, rate, duration_s)
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=200)) as session:
                load.session = session
                await load.present_agents()
                await asyncio.sleep(2.0)  # the server's mirror sees every agent available
                sampler = common.ProcSampler(server.pid)
                figures = await (run_offer(load) if mode == "offer" else run_pull(load))
                figures["server"] = sampler.result()
            metrics = server.get("/metrics").decode()
            await redis.aclose()
            figures["errors"] = load.errors
            if mode == "offer":
                figures["server_offers_observed"] = common.prom_values(metrics, "callboard_offer_latency_seconds_count")
            return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="a small, short run (tests use it)")
    parser.add_argument("--agents", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=50.0, help="new callers per second")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of arrivals per mode")
    parser.add_argument("--modes", default="offer,pull")
    args = parser.parse_args()
    if args.smoke:
        args.agents, args.rate, args.duration = 100, 10.0, 3.0
    common.raise_nofile()
    for mode in args.modes.split(","):
        common.log(f"routing bench: {mode} mode, {args.agents} agents, {args.rate}/s for {args.duration} s")
        figures = asyncio.run(one_mode(mode, args.agents, args.rate, args.duration, common.REDIS_URL))
        common.emit("routing", {"mode": mode, "agents": args.agents, "callers_per_s": args.rate,
                                "duration_s": args.duration, "queues": QUEUES}, **figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
