"""Presence absorb: thousands of agent sockets sending set_state intents flat out.

    python bench/presence_absorb.py                  # 2,000 agents from bench/light_client.py, 20 s
    python bench/presence_absorb.py --smoke          # 200 agents, 3 s
    python bench/presence_absorb.py --rate 15000     # paced: server CPU per intent at one load, tree vs tree
    python bench/presence_absorb.py --client aiohttp # the older fleet of 2 aiohttp processes

The client is one process of raw asyncio sockets (bench/light_client.py) that finds its own record's reason in
the deltas with a regex instead of decoding them: the two aiohttp processes used to need about 40 ms of CPU per
1,000 intents, twice the server's, and on a 2-core machine they took the core the server needed. Both
kinds print their CPU. The server runs with `tick_ms` 25 (its default; --tick-ms), the old script's 100 made
every closed-loop cycle wait longer.

Each agent sends `away` intents with a fresh reason (`n<counter>`) in bursts of --burst (default 4) back
to back, then waits until the burst's last intent shows in its own deltas, and goes again, for --duration
seconds: flat out, but closed-loop, so what is counted is what the server read, applied and published (an
open loop only fills loopback TCP buffers: 120,000 "sent"/s that the server reads much later). The earlier
intents of a burst are superseded (coalesced) by the last. lag = send of a burst's last intent -> the delta
showing it. Figures:

- accepted_intents_per_s: intents sent / (first send -> last agent saw its last intent);
  sent_per_s is the same count over the send window.
- lua_calls_per_100_intents: from /metrics, callboard_presence_batch_size _count (flushes, one Lua call
  each) per 100 accepted intents; flushed_per_flush = _sum / _count.
- lag p50/p99/max, and final_states_right: each agent's record in Redis (cb:agents, msgpack) is `away`
  with its last intent's reason.
- server cpu_ms_per_1000_intents: the server's CPU seconds (user + system) over the intents' window per
  1,000 intents sent; less noisy than intents/s on a shared machine (the server's share of a core is not).

Targets: >= 30,000 intents/s on one instance (issue 15), <= 1 Redis call per 100 intents, final states 100% right.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing as mp
import os
import queue as queue_mod
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp  # noqa: E402
import msgpack  # noqa: E402

from bench import common, harness  # noqa: E402

FINAL_WAIT_S = 20.0
BURST_WAIT_S = 3.0


def _worker(base_ws: str, specs: list[harness.ClientSpec], duration_s: float, burst: int, results: mp.Queue,
            go: Any) -> None:
    common.raise_nofile()
    try:
        results.put(("done", asyncio.run(_main(base_ws, specs, duration_s, burst, results, go))))
    except Exception as exc:  # a boundary: reported to the parent
        results.put(("error", repr(exc)))


async def _main(base_ws: str, specs: list[harness.ClientSpec], duration_s: float, burst: int, results: mp.Queue,
                go: Any) -> dict[str, Any]:
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, force_close=True))
    sem = asyncio.Semaphore(harness.CONNECT_CONCURRENCY)
    conns = [harness.CallboardConn(s) for s in specs]

    async def open_one(c: harness.Conn) -> None:
        async with sem:
            await c.open(session, base_ws)

    await asyncio.gather(*(open_one(c) for c in conns))
    results.put(("connected", len(conns)))
    while not go.is_set():  # noqa: ASYNC110 - a multiprocessing Event: polled
        await asyncio.sleep(0.01)
    loop = asyncio.get_running_loop()
    lags: list[float] = []
    errors: dict[str, int] = {}
    sent_total = 0
    stalls = 0
    last: dict[str, str] = {}
    final_seen: dict[str, float] = {}
    t_start = time.time()
    cpu_start = _cpu_s()
    stop_at = loop.time() + duration_s

    def reader(c: harness.Conn, sent_at: dict[int, float], seen: asyncio.Event, want: list[int]) -> Any:
        me = c.spec.id

        def on_msg(msg: dict[str, Any]) -> None:
            p = (msg.get("agents") or {}).get(me)
            if not isinstance(p, dict) or not isinstance(p.get("reason"), str):
                return
            reason = p["reason"]
            if not reason.startswith("n"):
                return
            k = int(reason[1:])
            t = sent_at.pop(k, None)
            if t is not None:
                lags.append(loop.time() - t)
            if k >= want[0]:
                seen.set()
        return on_msg

    async def read_all(c: harness.Conn, on_delta: Any) -> None:
        assert c.ws is not None
        async for m in c.ws:
            if m.type != aiohttp.WSMsgType.TEXT:
                continue
            data = json.loads(m.data)
            t = data.get("type")
            if t == "delta":
                on_delta(data)
            elif t == "error":
                errors[data.get("code")] = errors.get(data.get("code"), 0) + 1

    async def send_loop(c: harness.Conn, sent_at: dict[int, float], seen: asyncio.Event, want: list[int]) -> None:
        """Bursts of `burst` intents back to back, then wait until the burst's last intent shows in a delta.

        A burst that does not show within BURST_WAIT_S (refused, e.g. `not_connected`) counts as a stall and
        the agent goes on; after --duration it keeps going until its last burst shows (at most FINAL_WAIT_S).
        """
        nonlocal sent_total, stalls
        assert c.ws is not None
        k = 0
        final_deadline = stop_at + FINAL_WAIT_S
        while True:
            seen.clear()
            want[0] = k + burst
            for _ in range(burst):
                k += 1
                await c.ws.send_str('{"type":"set_state","state":"away","reason":"n%d"}' % k)
            sent_at[k] = loop.time()  # lag is timed for the burst's last intent: the one that must show
            sent_total += burst
            try:
                await asyncio.wait_for(seen.wait(), BURST_WAIT_S)
                shown = True
            except TimeoutError:
                stalls += 1
                shown = False
            now = loop.time()
            if (now >= stop_at and shown) or now >= final_deadline:
                break
        last[c.spec.id] = f"n{k}"
        if shown:
            final_seen[c.spec.id] = time.time()  # the loop ends right after its last burst showed

    tables = {c.spec.id: ({}, asyncio.Event(), [0]) for c in conns}
    readers = [asyncio.create_task(read_all(c, reader(c, *tables[c.spec.id]))) for c in conns]
    await asyncio.gather(*(send_loop(c, *tables[c.spec.id]) for c in conns))
    t_sent = time.time()
    deadline = loop.time() + FINAL_WAIT_S
    while len(final_seen) < len(conns) and loop.time() < deadline:  # noqa: ASYNC110 - bounded poll
        await asyncio.sleep(0.02)
    for t in readers:
        t.cancel()
    await asyncio.gather(*readers, return_exceptions=True)
    await asyncio.gather(*(c.close() for c in conns), return_exceptions=True)
    await session.close()
    return {"lags": lags, "sent": sent_total, "last": last, "t_start": t_start, "t_sent": t_sent,
            "t_final": max(final_seen.values()) if final_seen else None, "final_seen": len(final_seen),
            "stalls": stalls,
            "errors": errors, "cpu_s": _cpu_s() - cpu_start, "wall_s": time.time() - t_start}


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _run_light(server: common.ServerProcess, specs: list[harness.ClientSpec], args: argparse.Namespace,
               between: Any) -> dict[str, Any]:
    """The same closed loop from bench/light_client.py (one process, raw sockets, no JSON decoding)."""
    client = subprocess.Popen([sys.executable, str(common.ROOT / "bench" / "light_client.py")],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, preexec_fn=common.raise_nofile)
    assert client.stdin is not None and client.stdout is not None
    spec = {"host": "127.0.0.1", "port": server.port, "concurrency": 200,
            "clients": [[s.kind, s.id, s.token] for s in specs],
            "absorb": {"burst": args.burst, "duration_s": args.duration, "burst_wait_s": BURST_WAIT_S,
                       "final_wait_s": FINAL_WAIT_S, "one_write": args.one_write,
                       "rate": args.rate}}
    try:
        client.stdin.write(json.dumps(spec) + "\n")
        client.stdin.flush()
        connected = json.loads(client.stdout.readline())
        if connected.get("failed"):
            raise RuntimeError(f"{connected['failed']} agents could not connect: {connected['fail_samples']}")
        common.log(f"{connected['connected']} agents connected in {connected['connect_s']} s; server pid {server.pid}")
        with between():
            client.stdin.write("go\n")
            client.stdin.flush()
            result = json.loads(client.stdout.readline())
        client.wait(30)
    finally:
        if client.poll() is None:
            client.kill()
            client.wait(5)
    return {"sent": result["sent"], "send_window_s": result["send_window_s"],
            "accepted_window_s": result["accepted_window_s"] if result["final_seen"] == result["agents"] else None,
            "drain_after_stop_s": result["drain_after_stop_s"], "lags_s": [x / 1000 for x in result["lags_ms"]],
            "last": result["last"], "stalls": result["stalls"], "errors": result["errors"],
            "all_seen": result["final_seen"] == result["agents"],
            "client": {"kind": "light (bench/light_client.py, one process)", "cpu_s": result["client_cpu_s"],
                       "cpu_share": result["client_cpu_share"], "server_closes": sum(result["close_codes"].values()),
                       "reconnects": result["reconnects"]}}


def _run_aiohttp(server: common.ServerProcess, specs: list[harness.ClientSpec], args: argparse.Namespace,
                 between: Any) -> dict[str, Any]:
    """The older fleet: --processes aiohttp client processes (their CPU summed: cpu_share 1.0 is a core)."""
    base_ws = "ws" + server.base[4:]
    ctx = mp.get_context("fork")
    results: mp.Queue = ctx.Queue()
    go = ctx.Event()
    parts = common.split(specs, args.processes)
    procs = [ctx.Process(target=_worker, args=(base_ws, part, args.duration, args.burst, results, go), daemon=True)
             for part in parts]
    for p in procs:
        p.start()
    for _ in procs:
        kind, *rest = results.get(timeout=180)
        if kind == "error":
            raise RuntimeError(rest[0])
    common.log(f"{len(specs)} agents connected; server pid {server.pid}")
    outs = []
    with between():
        go.set()
        for _ in procs:
            try:
                kind, *rest = results.get(timeout=args.duration + FINAL_WAIT_S + 60)
            except queue_mod.Empty:
                raise RuntimeError("a client worker did not report") from None
            if kind == "error":
                raise RuntimeError(rest[0])
            outs.append(rest[0])
    for p in procs:
        p.join(5)
    t_start = min(o["t_start"] for o in outs)
    t_sent = max(o["t_sent"] for o in outs)
    finals = [o["t_final"] for o in outs if o["t_final"] is not None]
    t_final = max(finals) if finals else None
    last: dict[str, str] = {}
    for o in outs:
        last.update(o["last"])
    all_seen = sum(o["final_seen"] for o in outs) == len(last)
    errors: dict[str, int] = {}
    for o in outs:
        for k, v in o["errors"].items():
            errors[k] = errors.get(k, 0) + v
    return {"sent": sum(o["sent"] for o in outs), "send_window_s": t_sent - t_start,
            "accepted_window_s": (t_final - t_start) if (t_final and all_seen) else None,
            "drain_after_stop_s": round(t_final - t_sent, 2) if t_final else None,
            "lags_s": [x for o in outs for x in o["lags"]], "last": last,
            "stalls": sum(o["stalls"] for o in outs), "errors": errors, "all_seen": all_seen,
            "client": {"kind": f"aiohttp ({args.processes} processes)", "cpu_s": round(sum(o["cpu_s"] for o in outs), 3),
                       "cpu_share": round(sum(o["cpu_s"] / max(o["wall_s"], 1e-6) for o in outs), 3)}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agents", type=int, default=2000)
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--burst", type=int, default=4, help="intents per agent back to back before it waits")
    parser.add_argument("--team-size", type=int, default=25)
    parser.add_argument("--queues", type=int, default=20)
    parser.add_argument("--client", choices=("light", "aiohttp"), default="light",
                        help="light: bench/light_client.py, one process, its CPU printed (default); aiohttp: the older "
                             "fleet of --processes aiohttp processes")
    parser.add_argument("--one-write", action="store_true",
                        help="light client: write each burst's frames in one write (one segment) instead of one each")
    parser.add_argument("--rate", type=float, default=None,
                        help="light client: offer at most this many intents/s in all (paced bursts, still closed "
                             "loop), to compare server CPU per intent at the same load; default: flat out")
    parser.add_argument("--tick-ms", type=int, default=25, help="the server's [server] tick_ms (default 25, the server's)")
    parser.add_argument("--smoke", action="store_true", help="200 agents, 3 s")
    args = parser.parse_args()
    if args.smoke:
        args.agents, args.duration, args.processes = 200, 3.0, 1
    load = {"agents": args.agents, "burst": args.burst, "duration_s": args.duration, "client": args.client, "one_write": args.one_write,
            "rate": args.rate, "client_processes": 1 if args.client == "light" else args.processes, "tick_ms": args.tick_ms,
            "team_size": args.team_size, "queues": args.queues, "smoke": args.smoke,
            "nofile": common.raise_nofile(), "machine": common.machine()}
    layout = common.center_layout(args.agents, args.queues, args.team_size)
    specs = [harness.ClientSpec("agent", aid, team, common.token(aid, "agent")) for aid, team, _ in layout]
    window: dict[str, Any] = {}
    with common.workdir("cb-bench-absorb-") as wd:
        cfg = common.write_config(wd, agents=args.agents, queues=args.queues, team_size=args.team_size,
                                  tick_ms=args.tick_ms)
        with common.callboard_server(cfg, wd) as server:

            @contextlib.contextmanager
            def between() -> Any:
                """Around the intents: /metrics before and after, the server's CPU, the load average."""
                time.sleep(2.0)
                window["m0"] = server.get("/metrics").decode()
                window["load_before"] = os.getloadavg()
                sampler = common.ProcSampler(server.pid)
                yield
                cpu_s = sampler.proc.cpu_times().user + sampler.proc.cpu_times().system - sampler.cpu0
                window["cpu"] = sampler.result() | {"cpu_s": round(cpu_s, 3)}
                window["load_after"] = os.getloadavg()
                window["m1"] = server.get("/metrics").decode()

            run = _run_light if args.client == "light" else _run_aiohttp
            out = run(server, specs, args, between)
            r = common.redis_sync()
            stored = r.hgetall("cb:agents")
            r.close()
    m0, m1 = window["m0"], window["m1"]
    flushes = common.prom_values(m1, "callboard_presence_batch_size_count") - common.prom_values(m0, "callboard_presence_batch_size_count")
    flushed = common.prom_values(m1, "callboard_presence_batch_size_sum") - common.prom_values(m0, "callboard_presence_batch_size_sum")
    sent = out["sent"]
    right = 0
    for aid, reason in out["last"].items():
        raw = stored.get(aid.encode())
        rec = msgpack.unpackb(raw, raw=False) if raw else {}
        right += rec.get("state") == "away" and rec.get("reason") == reason
    accepted_per_s = sent / out["accepted_window_s"] if out["accepted_window_s"] else None
    cpu = window["cpu"]
    common.emit("presence_absorb", load,
                sent=sent, sent_per_s=round(sent / out["send_window_s"], 1),
                accepted_intents_per_s=round(accepted_per_s, 1) if accepted_per_s else None,
                drain_after_stop_s=out["drain_after_stop_s"],
                flushes=int(flushes), flushed_intents=int(flushed),
                lua_calls_per_100_intents=round(100 * flushes / sent, 3) if sent else None,
                flushed_per_flush=round(flushed / flushes, 1) if flushes else None,
                lag=common.latency_ms(out["lags_s"]),
                final_states_right=f"{right}/{len(out['last'])}",
                final_states_right_ratio=round(right / max(len(out["last"]), 1), 4),
                all_final_intents_seen=out["all_seen"], stalled_bursts=out["stalls"], error_messages=out["errors"],
                server=cpu | {"cpu_ms_per_1000_intents": round(1e6 * cpu["cpu_s"] / sent, 1) if sent else None},
                client=out["client"],
                loadavg_before=[round(x, 2) for x in window["load_before"]],
                loadavg_after=[round(x, 2) for x in window["load_after"]],
                targets={"accepted_ge_30000_per_s": bool(accepted_per_s and accepted_per_s >= 30000),
                         "le_1_call_per_100": bool(sent and 100 * flushes / sent <= 1),
                         "final_states_100pct": right == len(out["last"]) == args.agents})
    return 0


if __name__ == "__main__":
    sys.exit(main())
