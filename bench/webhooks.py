"""Signed Twilio webhook mix against callboard and a bare aiohttp handler, alternating, with CPU per request.

    python bench/webhooks.py                    # the judged figure: 2 rounds (ABBA) of both ladders, ratio
    python bench/webhooks.py --smoke            # concurrency 1 and 4, 1.5 s per step, one round
    python bench/webhooks.py --concurrency 8 --step-duration 15 --rounds 1   # one step (while profiling)

Each virtual client plays whole calls in order, as Twilio would, following the URLs the TwiML gives:
incoming -> wait x2 -> agent (the agent's softphone takes the caller) -> bridge -> status (agent leg
completed) -> queue-result (bridged) -> status (caller completed): 8 requests per call, each signed like
twilio's RequestValidator.compute_signature over PUBLIC_URL + path + query and the form parameters.
A few agents (one per queue) are connected over websockets so the queues are staffed.

The same client runs the same ladder (concurrency 1, 2, 4, ... until p99 > 25 ms) against
bench/bare_server.py (its own process: a trivial aiohttp app answering small TwiML) as the ceiling.
Rounds alternate the order (callboard, bare, bare, callboard, ...) so a change of machine load hits both.

The client (`--client raw`, the default) is one process of raw asyncio HTTP/1.1 keep-alive connections,
one per virtual caller, signing with a precomputed HMAC; `--client aiohttp` is the older aiohttp client in
`--processes` processes. Every step prints the client's own CPU share (getrusage) and the server's CPU
per request (psutil, all its threads), which depends far less on the machine's load than req/s does.
Target: >= 0.6 of the bare handler (best req/s with p99 <= 25 ms, per round; the median is judged).
ratio_by_cpu_per_req (bare's server CPU per request / callboard's, at those best steps) is printed beside it.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import email.utils
import hashlib
import hmac
import html
import multiprocessing as mp
import os
import re
import resource
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp  # noqa: E402
import psutil  # noqa: E402
from twilio.request_validator import RequestValidator  # noqa: E402

from bench import common, harness  # noqa: E402

P99_LIMIT_MS = 25.0
TARGET_RATIO = 0.6
BARE_SERVER = Path(__file__).resolve().parent / "bare_server.py"
ATTR = {name: re.compile(name + r'="([^"]*)"') for name in ("action", "waitUrl", "url")}
ACCOUNT = "AC" + "0" * 32


def _attr(body: str, name: str) -> str | None:
    m = ATTR[name].search(body)
    return html.unescape(m.group(1)) if m else None


class Signer:
    """twilio's compute_signature (URL + sorted name+value pairs, HMAC-SHA1, base64) with the key set up once."""

    def __init__(self, token: str) -> None:
        self._mac = hmac.new(token.encode(), digestmod=hashlib.sha1)
        reference = RequestValidator(token)  # the client must sign exactly as Twilio's own library
        sample = {"CallSid": "CA1", "From": "+14155550100", "Body": "a b&c"}
        assert self.sign("https://x.test/p?q=1", sample) == reference.compute_signature("https://x.test/p?q=1", sample)

    def sign(self, url: str, params: dict[str, str]) -> str:
        mac = self._mac.copy()
        mac.update((url + "".join(k + params[k] for k in sorted(params))).encode())
        return base64.b64encode(mac.digest()).decode()


class RawConnection:
    """One keep-alive HTTP/1.1 connection: a request written whole, the response read by Content-Length."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, url: str, params: dict[str, str], headers: dict[str, str]) -> tuple[int, str]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        parts = urlsplit(url)
        target = parts.path + ("?" + parts.query if parts.query else "")
        form = urlencode(params).encode()
        head = [f"POST {target} HTTP/1.1", f"Host: {self.host}:{self.port}",
                "Content-Type: application/x-www-form-urlencoded", f"Content-Length: {len(form)}"]
        head += [f"{k}: {v}" for k, v in headers.items()]
        self.writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + form)
        assert self.reader is not None
        raw = await self.reader.readuntil(b"\r\n\r\n")
        lines = raw.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        length, close = None, False
        for line in lines[1:]:
            name, _, value = line.partition(":")
            name = name.strip().lower()
            if name == "content-length":
                length = int(value)
            elif name == "connection" and value.strip().lower() == "close":
                close = True
            elif name == "transfer-encoding":
                raise RuntimeError(f"unexpected Transfer-Encoding {value.strip()} from {url}")
        if length is None:
            raise RuntimeError(f"response without Content-Length from {url}")
        body = (await self.reader.readexactly(length)).decode()
        if close:
            await self.close()
        return status, body

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class AiohttpConnection:
    """The older client: aiohttp's ClientSession (heavier per request than the server it measures)."""

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self.session = session

    async def post(self, url: str, params: dict[str, str], headers: dict[str, str]) -> tuple[int, str]:
        async with self.session.post(url, data=params, headers=headers) as resp:
            return resp.status, await resp.text()

    async def close(self) -> None:
        pass


class Caller:
    """One virtual Twilio: calls in a loop, each the 8-request sequence, timing every request."""

    def __init__(self, conn: RawConnection | AiohttpConnection, signer: Signer, base: str, agent: str, queue: str,
                 number: str, n: int) -> None:
        self.conn, self.signer, self.base, self.agent, self.queue, self.number = conn, signer, base, agent, queue, number
        self.n = n
        self.calls = 0
        self.lat: list[float] = []
        self.errors = 0
        self.error_sample: str | None = None

    async def post(self, url: str, params: dict[str, str]) -> str:
        headers = {"X-Twilio-Signature": self.signer.sign(url, params),
                   "I-Twilio-Idempotency-Token": f"{params['CallSid']}-{len(self.lat)}"}
        t0 = time.perf_counter()
        status, body = await self.conn.post(url, params, headers)
        self.lat.append(time.perf_counter() - t0)
        if status != 200:
            self.errors += 1
            self.error_sample = self.error_sample or f"{status} {url}: {body[:200]}"
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


def _cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def _worker(client: str, base: str, first: int, count: int, agents: list[tuple[str, str]], numbers: dict[str, str],
            duration_s: float, results: mp.Queue) -> None:
    try:
        results.put(asyncio.run(_run(client, base, first, count, agents, numbers, duration_s)))
    except Exception as exc:  # a boundary: reported to the parent
        results.put({"error": repr(exc)})


async def _run(client: str, base: str, first: int, count: int, agents: list[tuple[str, str]], numbers: dict[str, str],
               duration_s: float) -> dict[str, Any]:
    signer = Signer(common.TWILIO_TOKEN)
    host, port = urlsplit(base).hostname or "127.0.0.1", urlsplit(base).port or 80
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) if client == "aiohttp" else None
    try:
        callers = []
        for i in range(first, first + count):
            aid, queue = agents[i % len(agents)]
            conn = AiohttpConnection(session) if session is not None else RawConnection(host, port)
            callers.append(Caller(conn, signer, base, aid, queue, numbers[queue], i))
        loop = asyncio.get_running_loop()
        stop_at = loop.time() + duration_s

        async def loop_calls(c: Caller) -> None:
            while loop.time() < stop_at:
                await c.call()

        cpu0, t0 = _cpu_s(), time.perf_counter()
        await asyncio.gather(*(loop_calls(c) for c in callers))
        wall, cpu = time.perf_counter() - t0, _cpu_s() - cpu0
        for c in callers:
            await c.conn.close()
    finally:
        if session is not None:
            await session.close()
    return {"lat": [x for c in callers for x in c.lat], "errors": sum(c.errors for c in callers), "wall": wall,
            "cpu_s": cpu, "error_sample": next((c.error_sample for c in callers if c.error_sample), None)}


def _cpu_of(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return t.user + t.system


def _stalls(server: common.ServerProcess) -> tuple[float, float, float]:
    """callboard's loop-stall probes: (all, late by <= 10 ms, late by <= 25 ms), from /metrics."""
    text = server.get("/metrics").decode()

    def sample(name: str) -> float:
        line = next((x for x in text.splitlines() if x.startswith(name + " ")), None)
        return float(line.split()[1]) if line else 0.0

    base = "callboard_event_loop_stall_seconds"
    return (sample(base + "_count"), sample(base + '_bucket{le="0.01"}'), sample(base + '_bucket{le="0.025"}'))


def ladder(name: str, base: str, server_pid: int, concurrencies: list[int], step_s: float, client: str,
           processes: int, agents: list[tuple[str, str]], numbers: dict[str, str],
           stop_over_ms: float | None, server: common.ServerProcess | None = None) -> list[dict[str, Any]]:
    steps = []
    ctx = mp.get_context("fork")
    proc = psutil.Process(server_pid)
    for c in concurrencies:
        procs_n = 1 if client == "raw" else min(processes, c)
        results: mp.Queue = ctx.Queue()
        shares = [c // procs_n + (1 if i < c % procs_n else 0) for i in range(procs_n)]
        procs, first = [], 0
        for share in shares:
            procs.append(ctx.Process(target=_worker, args=(client, base, first, share, agents, numbers, step_s,
                                                           results), daemon=True))
            first += share
        load_before = os.getloadavg()[0]
        stalls0 = _stalls(server) if server is not None else None
        server_cpu0, t0 = _cpu_of(proc), time.monotonic()
        for p in procs:
            p.start()
        outs = [results.get(timeout=step_s + 120) for _ in procs]
        server_cpu, wall_server = _cpu_of(proc) - server_cpu0, time.monotonic() - t0
        for p in procs:
            p.join(5)
        errs = [o["error"] for o in outs if "error" in o]
        if errs:
            raise RuntimeError(errs[0])
        lat = [x for o in outs for x in o["lat"]]
        wall = max(o["wall"] for o in outs)
        n = len(lat)
        step = {"concurrency": c, "requests": n, "req_per_s": round(n / wall, 1),
                "errors": sum(o["errors"] for o in outs)} | common.latency_ms(lat) | {
            # the server's CPU over the step (start-up of the client included, a few ms), per request
            "server_cpu_share": round(server_cpu / wall_server, 3),
            "server_cpu_ms_per_req": round(server_cpu * 1000 / n, 3) if n else None,
            "client_cpu_share": round(sum(o["cpu_s"] for o in outs) / wall, 3), "client_processes": procs_n,
            "load_avg_1m": round(load_before, 2)}
        if server is not None and stalls0 is not None:  # the loop probe's lateness during the step
            probes, le10, le25 = (b - a for a, b in zip(stalls0, _stalls(server), strict=True))
            step["loop_probes"], step["loop_late_over_10ms"], step["loop_late_over_25ms"] = \
                int(probes), int(probes - le10), int(probes - le25)
        sample = next((o["error_sample"] for o in outs if o.get("error_sample")), None)
        if sample:
            step["error_sample"] = sample
        common.log(f"webhooks {name}: {step}")
        steps.append(step)
        if stop_over_ms is not None and step["p99_ms"] > stop_over_ms:
            break
    return steps


def best_under(steps: list[dict[str, Any]], limit_ms: float) -> dict[str, Any] | None:
    ok = [s for s in steps if s["p99_ms"] <= limit_ms and s["errors"] == 0]
    return max(ok, key=lambda s: s["req_per_s"]) if ok else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--step-duration", type=float, default=6.0, help="seconds per concurrency step (default 6)")
    parser.add_argument("--max-concurrency", type=int, default=256)
    parser.add_argument("--concurrency", type=int, help="run this one concurrency only (e.g. while profiling)")
    parser.add_argument("--rounds", type=int, default=2,
                        help="rounds of both ladders, the order alternating: callboard, bare, bare, callboard (default 2)")
    parser.add_argument("--client", choices=("raw", "aiohttp"), default="raw",
                        help="raw: one process of raw asyncio HTTP/1.1 keep-alive (default); aiohttp: --processes of them")
    parser.add_argument("--processes", type=int, default=2, help="client worker processes of --client aiohttp (default 2)")
    parser.add_argument("--queues", type=int, default=10)
    parser.add_argument("--agents", type=int, default=300)
    parser.add_argument("--smoke", action="store_true", help="concurrency 1 and 4, 1.5 s per step, one round")
    args = parser.parse_args()
    concurrencies = [1, 4] if args.smoke else [c for c in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
                                               if c <= args.max_concurrency]
    if args.concurrency:
        concurrencies = [args.concurrency]
    if args.smoke:
        args.step_duration, args.processes, args.agents, args.rounds = 1.5, 1, 40, 1
    load = {"mix": "incoming, wait x2, agent, bridge, status(agent), queue-result, status(caller)",
            "concurrencies": concurrencies, "step_s": args.step_duration, "client": args.client,
            "client_processes": 1 if args.client == "raw" else args.processes, "rounds": args.rounds,
            "queues": args.queues, "agents": args.agents, "smoke": args.smoke, "machine": common.machine(),
            "server_root": os.environ.get("BENCH_SERVER_ROOT", str(common.ROOT)),
            "load_avg_before": [round(x, 2) for x in os.getloadavg()]}
    layout = common.center_layout(args.agents, args.queues, max(args.agents // args.queues, 1))
    agents = [(aid, q) for aid, _, q in layout]
    numbers = {f"q{q:03d}": f"+1555{q:07d}" for q in range(args.queues)}
    staffers = {}
    for aid, team, q in layout:  # one connected agent per queue: the queues are staffed
        staffers.setdefault(q, harness.ClientSpec("agent", aid, team, common.token(aid, "agent")))

    def run_ladder(name: str, base: str, pid: int, server: common.ServerProcess | None = None) -> list[dict[str, Any]]:
        return ladder(name, base, pid, concurrencies, args.step_duration, args.client, args.processes, agents,
                      numbers, P99_LIMIT_MS, server)

    rounds: list[dict[str, Any]] = []
    with common.workdir("cb-bench-webhooks-") as wd:
        cfg = common.write_config(wd, agents=args.agents, queues=args.queues,
                                  team_size=max(args.agents // args.queues, 1))

        def callboard() -> dict[str, Any]:
            with common.callboard_server(cfg, wd) as server:
                fleet = harness.ClientFleet("callboard", "ws" + server.base[4:], list(staffers.values()), 1)
                fleet.start()
                sampler = common.ProcSampler(server.pid)
                try:
                    steps = run_ladder("callboard", server.base, server.pid, server)
                finally:
                    cpu = sampler.result()
                    fleet.stop()
            return {"steps": steps, "server": cpu}

        def bare() -> dict[str, Any]:
            with common.python_server(BARE_SERVER, [], wd) as server:
                return {"steps": run_ladder("bare", server.base, server.pid)}

        for r in range(args.rounds):
            order = [("callboard", callboard), ("bare", bare)]
            if r % 2:
                order.reverse()  # ABBA: a drift of the machine's load favours neither side
            out: dict[str, Any] = {"round": r + 1, "order": [name for name, _ in order]}
            for name, run in order:
                out[name] = run()
            cb_best = best_under(out["callboard"]["steps"], P99_LIMIT_MS)
            bare_best = best_under(out["bare"]["steps"], P99_LIMIT_MS)
            out["callboard_best_under_25ms"], out["bare_best_under_25ms"] = cb_best, bare_best
            out["ratio"] = round(cb_best["req_per_s"] / bare_best["req_per_s"], 3) if cb_best and bare_best else 0.0
            same = next((s for s in out["bare"]["steps"] if cb_best and s["concurrency"] == cb_best["concurrency"]),
                        None)
            out["ratio_same_concurrency"] = round(cb_best["req_per_s"] / same["req_per_s"], 3) if same else None
            common.log(f"webhooks round {r + 1}: ratio {out['ratio']} (callboard "
                       f"{cb_best and cb_best['req_per_s']} vs bare {bare_best and bare_best['req_per_s']} req/s)")
            rounds.append(out)
    ratios = [r["ratio"] for r in rounds]
    ratio = round(statistics.median(ratios), 3)
    cpu_cb = [r["callboard_best_under_25ms"]["server_cpu_ms_per_req"] for r in rounds if r["callboard_best_under_25ms"]]
    cpu_bare = [r["bare_best_under_25ms"]["server_cpu_ms_per_req"] for r in rounds if r["bare_best_under_25ms"]]
    # What the ratio would be with both servers CPU-bound on a core of their own: far less sensitive to the
    # machine's load than req/s (a starved server shows it in req/s, much less in CPU per request).
    ratio_cpu = round(statistics.median(cpu_bare) / statistics.median(cpu_cb), 3) if cpu_cb and cpu_bare else None
    load["load_avg_after"] = [round(x, 2) for x in os.getloadavg()]
    common.emit("webhooks", load, rounds=rounds, ratios=ratios, ratio_vs_bare=ratio,
                callboard_cpu_ms_per_req=cpu_cb, bare_cpu_ms_per_req=cpu_bare, ratio_by_cpu_per_req=ratio_cpu,
                targets={"ge_0_6_of_bare": ratio >= TARGET_RATIO})
    return 0


if __name__ == "__main__":
    sys.exit(main())
