"""Signed Twilio webhook mix at increasing concurrency, against callboard and a bare aiohttp handler.

    python bench/webhooks.py                    # concurrency 1, 2, 4, ... until p99 > 25 ms; 8 s per step
    python bench/webhooks.py --smoke            # concurrency 1 and 4, 1.5 s per step

Each virtual client plays whole calls in order, as Twilio would, following the URLs the TwiML gives:
incoming -> wait x2 -> agent (the agent's softphone takes the caller) -> bridge -> status (agent leg
completed) -> queue-result (bridged) -> status (caller completed): 8 requests per call, each signed with
twilio's RequestValidator.compute_signature over PUBLIC_URL + path + query and the form parameters.
A few agents (one per queue) are connected over websockets so the queues are staffed.

The same client runs the same ladder against bench/bare_server.py (its own process: a trivial aiohttp app
answering small TwiML) as the ceiling. Client load runs in --processes worker processes.
Target: >= 2,000 req/s with p99 <= 25 ms, and >= 0.5 of the bare handler.
"""

from __future__ import annotations

import argparse
import asyncio
import email.utils
import html
import multiprocessing as mp
import re
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp  # noqa: E402
from twilio.request_validator import RequestValidator  # noqa: E402

from bench import common, harness  # noqa: E402

P99_LIMIT_MS = 25.0
BARE_SERVER = Path(__file__).resolve().parent / "bare_server.py"
ATTR = {name: re.compile(name + r'="([^"]*)"') for name in ("action", "waitUrl", "url")}
ACCOUNT = "AC" + "0" * 32


def _attr(body: str, name: str) -> str | None:
    m = ATTR[name].search(body)
    return html.unescape(m.group(1)) if m else None


class Caller:
    """One virtual Twilio: calls in a loop, each the 8-request sequence, timing every request."""

    def __init__(self, session: aiohttp.ClientSession, base: str, agent: str, queue: str, number: str, n: int) -> None:
        self.session, self.base, self.agent, self.queue, self.number = session, base, agent, queue, number
        self.validator = RequestValidator(common.TWILIO_TOKEN)
        self.n = n
        self.calls = 0
        self.lat: list[float] = []
        self.errors = 0

    async def post(self, url: str, params: dict[str, str]) -> str:
        headers = {"X-Twilio-Signature": self.validator.compute_signature(url, params),
                   "I-Twilio-Idempotency-Token": f"{params['CallSid']}-{len(self.lat)}"}
        t0 = time.perf_counter()
        async with self.session.post(url, data=params, headers=headers) as resp:
            body = await resp.text()
        self.lat.append(time.perf_counter() - t0)
        if resp.status != 200:
            self.errors += 1
        return body

    async def call(self) -> None:
        self.calls += 1
        sid = f"CA{self.n:08d}{self.calls:024d}"
        leg = f"CA{self.n:08d}{self.calls:023d}L"
        voice = self.base + "/twilio/voice/"
        caller = {"AccountSid": ACCOUNT, "ApiVersion": "2010-04-01", "CallSid": sid, "CallStatus": "ringing",
                  "Direction": "inbound", "From": f"+1415555{self.n % 10000:04d}", "To": self.number,
                  "Caller": f"+1415555{self.n % 10000:04d}", "Called": self.number}
        body = await self.post(voice + "incoming", caller)
        action = _attr(body, "action") or voice + f"queue-result?queue={self.queue}"
        wait = _attr(body, "waitUrl") or voice + f"wait?queue={self.queue}"
        queued = caller | {"CallStatus": "queued", "QueueSid": "QU" + "1" * 32, "QueuePosition": "1"}
        for qt in ("0", "3"):
            await self.post(wait, queued | {"QueueTime": qt, "AvgQueueTime": "5", "CurrentQueueSize": "1"})
        client = f"client:{self.agent}"
        agent = {"AccountSid": ACCOUNT, "ApiVersion": "2010-04-01", "ApplicationSid": "AP" + "2" * 32,
                 "CallSid": leg, "CallStatus": "ringing", "Direction": "inbound", "From": client, "Caller": client,
                 "To": "", "Called": "", "queue": self.queue}
        body = await self.post(voice + "agent", agent)
        bridge = _attr(body, "url") or voice + f"bridge?queue={self.queue}&agent={self.agent}"
        await self.post(bridge, caller | {"CallStatus": "in-progress", "QueueSid": "QU" + "1" * 32, "QueueTime": "5",
                                          "DequeingCallSid": leg})
        stamp = email.utils.format_datetime(datetime.now(UTC).replace(microsecond=0))
        agent_done = {k: v for k, v in agent.items() if k != "queue"} | {
            "CallStatus": "completed", "CallDuration": "60", "Timestamp": stamp}
        await self.post(voice + "status", agent_done)
        await self.post(action, caller | {"CallStatus": "in-progress", "QueueResult": "bridged", "QueueTime": "5",
                                          "QueueSid": "QU" + "1" * 32})
        await self.post(voice + "status", caller | {"CallStatus": "completed", "CallDuration": "70", "Timestamp": stamp})


def _worker(base: str, first: int, count: int, agents: list[tuple[str, str]], numbers: dict[str, str],
            duration_s: float, results: mp.Queue) -> None:
    try:
        results.put(asyncio.run(_run(base, first, count, agents, numbers, duration_s)))
    except Exception as exc:  # a boundary: reported to the parent
        results.put({"error": repr(exc)})


async def _run(base: str, first: int, count: int, agents: list[tuple[str, str]], numbers: dict[str, str],
               duration_s: float) -> dict[str, Any]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        callers = []
        for i in range(first, first + count):
            aid, queue = agents[i % len(agents)]
            callers.append(Caller(session, base, aid, queue, numbers[queue], i))
        loop = asyncio.get_running_loop()
        stop_at = loop.time() + duration_s

        async def loop_calls(c: Caller) -> None:
            while loop.time() < stop_at:
                await c.call()

        t0 = time.perf_counter()
        await asyncio.gather(*(loop_calls(c) for c in callers))
        wall = time.perf_counter() - t0
    return {"lat": [x for c in callers for x in c.lat], "errors": sum(c.errors for c in callers), "wall": wall}


def ladder(base: str, concurrencies: list[int], step_s: float, processes: int, agents: list[tuple[str, str]],
           numbers: dict[str, str], stop_over_ms: float | None) -> list[dict[str, Any]]:
    steps = []
    ctx = mp.get_context("fork")
    for c in concurrencies:
        procs_n = min(processes, c)
        results: mp.Queue = ctx.Queue()
        shares = [c // procs_n + (1 if i < c % procs_n else 0) for i in range(procs_n)]
        procs, first = [], 0
        for share in shares:
            procs.append(ctx.Process(target=_worker, args=(base, first, share, agents, numbers, step_s, results),
                                     daemon=True))
            first += share
        for p in procs:
            p.start()
        outs = [results.get(timeout=step_s + 120) for _ in procs]
        for p in procs:
            p.join(5)
        errs = [o["error"] for o in outs if "error" in o]
        if errs:
            raise RuntimeError(errs[0])
        lat = [x for o in outs for x in o["lat"]]
        wall = max(o["wall"] for o in outs)
        step = {"concurrency": c, "requests": len(lat), "req_per_s": round(len(lat) / wall, 1),
                "errors": sum(o["errors"] for o in outs)} | common.latency_ms(lat)
        common.log(f"webhooks {base}: {step}")
        steps.append(step)
        if stop_over_ms is not None and step["p99_ms"] > stop_over_ms:
            break
    return steps


def best_under(steps: list[dict[str, Any]], limit_ms: float) -> dict[str, Any] | None:
    ok = [s for s in steps if s["p99_ms"] <= limit_ms and s["errors"] == 0]
    return max(ok, key=lambda s: s["req_per_s"]) if ok else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--step-duration", type=float, default=8.0, help="seconds per concurrency step (default 8)")
    parser.add_argument("--max-concurrency", type=int, default=256)
    parser.add_argument("--concurrency", type=int, help="run this one concurrency only (e.g. while profiling)")
    parser.add_argument("--processes", type=int, default=2, help="client worker processes (default 2)")
    parser.add_argument("--queues", type=int, default=10)
    parser.add_argument("--agents", type=int, default=300)
    parser.add_argument("--smoke", action="store_true", help="concurrency 1 and 4, 1.5 s per step")
    args = parser.parse_args()
    concurrencies = [1, 4] if args.smoke else [c for c in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
                                               if c <= args.max_concurrency]
    if args.concurrency:
        concurrencies = [args.concurrency]
    if args.smoke:
        args.step_duration, args.processes, args.agents = 1.5, 1, 40
    load = {"mix": "incoming, wait x2, agent, bridge, status(agent), queue-result, status(caller)",
            "concurrencies": concurrencies, "step_s": args.step_duration, "client_processes": args.processes,
            "queues": args.queues, "agents": args.agents, "smoke": args.smoke, "machine": common.machine()}
    layout = common.center_layout(args.agents, args.queues, max(args.agents // args.queues, 1))
    agents = [(aid, q) for aid, _, q in layout]
    numbers = {f"q{q:03d}": f"+1555{q:07d}" for q in range(args.queues)}
    staffers = {}
    for aid, team, q in layout:  # one connected agent per queue: the queues are staffed
        staffers.setdefault(q, harness.ClientSpec("agent", aid, team, common.token(aid, "agent")))
    with common.workdir("cb-bench-webhooks-") as wd:
        cfg = common.write_config(wd, agents=args.agents, queues=args.queues,
                                  team_size=max(args.agents // args.queues, 1))
        with common.callboard_server(cfg, wd) as server:
            fleet = harness.ClientFleet("callboard", "ws" + server.base[4:], list(staffers.values()), 1)
            fleet.start()
            sampler = common.ProcSampler(server.pid)
            try:
                cb_steps = ladder(server.base, concurrencies, args.step_duration, args.processes, agents, numbers,
                                  P99_LIMIT_MS)
            finally:
                cpu = sampler.result()
                fleet.stop()
        with common.python_server(BARE_SERVER, [], wd) as bare:
            bare_steps = ladder(bare.base, concurrencies, args.step_duration, args.processes, agents, numbers,
                                P99_LIMIT_MS)
    cb_best, bare_best = best_under(cb_steps, P99_LIMIT_MS), best_under(bare_steps, P99_LIMIT_MS)
    same_c = next((s for s in bare_steps if cb_best and s["concurrency"] == cb_best["concurrency"]), None)
    cb_rps = cb_best["req_per_s"] if cb_best else 0.0
    ratio_best = round(cb_rps / bare_best["req_per_s"], 3) if bare_best else None
    ratio_same = round(cb_rps / same_c["req_per_s"], 3) if same_c else None
    common.emit("webhooks", load, callboard_steps=cb_steps, bare_steps=bare_steps,
                callboard_best_under_25ms=cb_best, bare_best_under_25ms=bare_best,
                ratio_vs_bare_best=ratio_best, ratio_vs_bare_same_concurrency=ratio_same, callboard_server=cpu,
                targets={"ge_2000_req_per_s_p99_le_25ms": cb_rps >= 2000,
                         "ge_half_of_bare": bool(ratio_best is not None and ratio_best >= 0.5)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
