"""Presence absorb: thousands of agent sockets sending set_state intents flat out.

    python bench/presence_absorb.py             # 2,000 agents over 2 client processes, 20 s
    python bench/presence_absorb.py --smoke     # 200 agents, 3 s

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

Targets: >= 20,000 intents/s on one instance, <= 1 Redis call per 100 intents, final states 100% right.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import queue as queue_mod
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
            "errors": errors}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agents", type=int, default=2000)
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--burst", type=int, default=4, help="intents per agent back to back before it waits")
    parser.add_argument("--team-size", type=int, default=25)
    parser.add_argument("--queues", type=int, default=20)
    parser.add_argument("--smoke", action="store_true", help="200 agents, 3 s")
    args = parser.parse_args()
    if args.smoke:
        args.agents, args.duration, args.processes = 200, 3.0, 1
    load = {"agents": args.agents, "burst": args.burst, "duration_s": args.duration, "client_processes": args.processes,
            "team_size": args.team_size, "queues": args.queues, "smoke": args.smoke,
            "nofile": common.raise_nofile(), "machine": common.machine()}
    layout = common.center_layout(args.agents, args.queues, args.team_size)
    specs = [harness.ClientSpec("agent", aid, team, common.token(aid, "agent")) for aid, team, _ in layout]
    with common.workdir("cb-bench-absorb-") as wd:
        cfg = common.write_config(wd, agents=args.agents, queues=args.queues, team_size=args.team_size)
        with common.callboard_server(cfg, wd) as server:
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
            time.sleep(2.0)
            m0 = server.get("/metrics").decode()
            sampler = common.ProcSampler(server.pid)
            go.set()
            outs = []
            for _ in procs:
                try:
                    kind, *rest = results.get(timeout=args.duration + FINAL_WAIT_S + 60)
                except queue_mod.Empty:
                    raise RuntimeError("a client worker did not report") from None
                if kind == "error":
                    raise RuntimeError(rest[0])
                outs.append(rest[0])
            cpu = sampler.result()
            m1 = server.get("/metrics").decode()
            for p in procs:
                p.join(5)
            r = common.redis_sync()
            stored = r.hgetall("cb:agents")
            r.close()
    flushes = common.prom_values(m1, "callboard_presence_batch_size_count") - common.prom_values(m0, "callboard_presence_batch_size_count")
    flushed = common.prom_values(m1, "callboard_presence_batch_size_sum") - common.prom_values(m0, "callboard_presence_batch_size_sum")
    sent = sum(o["sent"] for o in outs)
    t_start = min(o["t_start"] for o in outs)
    t_sent = max(o["t_sent"] for o in outs)
    finals = [o["t_final"] for o in outs if o["t_final"] is not None]
    t_final = max(finals) if finals else None
    last: dict[str, str] = {}
    for o in outs:
        last.update(o["last"])
    right = 0
    for aid, reason in last.items():
        raw = stored.get(aid.encode())
        rec = msgpack.unpackb(raw, raw=False) if raw else {}
        right += rec.get("state") == "away" and rec.get("reason") == reason
    all_seen = sum(o["final_seen"] for o in outs) == len(last)
    accepted_per_s = sent / (t_final - t_start) if (t_final and all_seen) else None
    common.emit("presence_absorb", load,
                sent=sent, sent_per_s=round(sent / (t_sent - t_start), 1),
                accepted_intents_per_s=round(accepted_per_s, 1) if accepted_per_s else None,
                drain_after_stop_s=round(t_final - t_sent, 2) if t_final else None,
                flushes=int(flushes), flushed_intents=int(flushed),
                lua_calls_per_100_intents=round(100 * flushes / sent, 3) if sent else None,
                flushed_per_flush=round(flushed / flushes, 1) if flushes else None,
                lag=common.latency_ms(x for o in outs for x in o["lags"]),
                final_states_right=f"{right}/{len(last)}", final_states_right_ratio=round(right / max(len(last), 1), 4),
                all_final_intents_seen=all_seen, stalled_bursts=sum(o["stalls"] for o in outs), error_messages={k: sum(o["errors"].get(k, 0) for o in outs) for o in outs for k in o["errors"]}, server=cpu,
                targets={"accepted_ge_20000_per_s": bool(accepted_per_s and accepted_per_s >= 20000),
                         "le_1_call_per_100": bool(sent and 100 * flushes / sent <= 1),
                         "final_states_100pct": right == len(last) == args.agents})
    return 0


if __name__ == "__main__":
    sys.exit(main())
