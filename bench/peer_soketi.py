"""Soketi side by side with callboard: the same light client, the same changes per second, one run.

    npm ci --prefix bench/soketi                  # once: Soketi 1.6.1 from the npm registry (see below)
    python bench/peer_soketi.py                   # 10,000 sockets (50 wallboards), 1,000 changes/s, 30 s
    python bench/peer_soketi.py --clients 2000 --duration 20
    python bench/peer_soketi.py --smoke           # 300 sockets, 100 changes/s, 3 s

Soketi (a Pusher-protocol server on uWebSockets.js) runs with its Redis adapter on the same Redis as
callboard (BENCH_REDIS_URL's host, port and database). Its uWebSockets.js dependency is a GitHub tarball
that is not on the registry; bench/soketi/package.json overrides it with @trufflesuite/uws-js-unofficial
(the same C++ library, published to npm). SOKETI_DIR points at another installation.

The load is the one of bench/fanout.py, in Pusher's terms: wallboards subscribe to channel `all`, each
agent to its team's channel; a change is one event published through Soketi's HTTP API (signed) to `all`
and the agent's team channel, carrying {"agents": {id: {"state": "away", "reason": "bench:<send time>"}}}.
Soketi keeps no presence or queue statistics, so it sends less per change than callboard does (callboard's
deltas also carry the queues' agent counts). The light client (bench/light_client.py) measures both.

Prints one JSON line per server and one with the ratios callboard / Soketi.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp  # noqa: E402

from bench import common, harness  # noqa: E402
from bench.fanout import add_fanout_args, apply_smoke, load_of, with_delivery  # noqa: E402

SOKETI_DIR = Path(os.environ.get("SOKETI_DIR", str(Path(__file__).resolve().parent / "soketi")))
APP_ID, APP_KEY, APP_SECRET = "app-id", "app-key", "app-secret"  # Soketi's default app


def soketi_server(workdir: Path) -> common.ServerProcess:
    binary = SOKETI_DIR / "node_modules" / ".bin" / "soketi"
    if not binary.exists():
        raise SystemExit(f"Soketi is not installed: run `npm ci --prefix {SOKETI_DIR}` first")
    common.flush_db()
    redis = urlsplit(common.REDIS_URL)
    port = common.free_port()
    env = dict(os.environ, SOKETI_PORT=str(port), SOKETI_HOST="127.0.0.1", SOKETI_ADAPTER_DRIVER="redis",
               SOKETI_DB_REDIS_HOST=redis.hostname or "127.0.0.1", SOKETI_DB_REDIS_PORT=str(redis.port or 6379),
               SOKETI_DB_REDIS_DB=redis.path.strip("/") or "0", SOKETI_METRICS_ENABLED="false",
               SOKETI_DEFAULT_APP_ID=APP_ID, SOKETI_DEFAULT_APP_KEY=APP_KEY, SOKETI_DEFAULT_APP_SECRET=APP_SECRET,
               SOKETI_DEFAULT_APP_MAX_BACKEND_EVENTS_PER_SEC="-1", SOKETI_DEFAULT_APP_MAX_CLIENT_EVENTS_PER_SEC="-1",
               SOKETI_DEFAULT_APP_MAX_READ_REQ_PER_SEC="-1")
    return common.ServerProcess([str(binary), "start"], env, port, workdir / f"soketi-{port}.log", ready_path="/")


def _signed_path(body: bytes) -> str:
    """Pusher's HTTP API signature: HMAC-SHA256 over method, path and the sorted query string."""
    query = {"auth_key": APP_KEY, "auth_timestamp": str(int(time.time())), "auth_version": "1.0",
             "body_md5": hashlib.md5(body).hexdigest()}  # noqa: S324 - the protocol says MD5
    qs = "&".join(f"{k}={query[k]}" for k in sorted(query))
    path = f"/apps/{APP_ID}/events"
    sig = hmac.new(APP_SECRET.encode(), f"POST\n{path}\n{qs}".encode(), hashlib.sha256).hexdigest()
    return f"{path}?{qs}&auth_signature={sig}"


async def drive_soketi(base: str, agents: list[tuple[str, str]], rate_per_s: float, duration_s: float) -> dict[str, Any]:
    """Publish `rate_per_s` stamped changes through the HTTP API, round-robin over the agents."""
    sent = failed = 0
    in_flight: set[asyncio.Task[None]] = set()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64)) as http:
        async def publish(agent: str, team: str) -> None:
            nonlocal sent, failed
            data = json.dumps({"agents": {agent: {"state": "away", "reason": harness.stamp()}}}, separators=(",", ":"))
            body = json.dumps({"name": "delta", "channels": ["all", f"team-{team}"], "data": data}).encode()
            try:
                async with http.post(base + _signed_path(body), data=body,
                                     headers={"Content-Type": "application/json"}) as resp:
                    if resp.status == 200:
                        sent += 1
                    else:
                        failed += 1
            except (aiohttp.ClientError, OSError):
                failed += 1

        loop = asyncio.get_running_loop()
        t0 = loop.time()
        i = 0
        while (elapsed := loop.time() - t0) < duration_s:
            while i < int(elapsed * rate_per_s):
                agent, team = agents[i % len(agents)]
                task = asyncio.create_task(publish(agent, team))
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)
                i += 1
            await asyncio.sleep(0.005)
        wall = loop.time() - t0
        if in_flight:
            await asyncio.wait(in_flight, timeout=10)
        await asyncio.sleep(1.0)
    return {"sent": sent, "sent_per_s": round(sent / wall, 1), "send_failed": failed}


def run_soketi(server: common.ServerProcess, specs: list[harness.ClientSpec], agents: list[tuple[str, str]], *,
               rate_per_s: float, duration_s: float) -> dict[str, Any]:
    time.sleep(1.0)
    rss0 = common.ProcSampler(server.pid).rss()
    load_before = os.getloadavg()
    client = subprocess.Popen([sys.executable, str(common.ROOT / "bench" / "light_client.py")], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, preexec_fn=common.raise_nofile)
    assert client.stdin is not None and client.stdout is not None
    spec = {"host": "127.0.0.1", "port": server.port, "concurrency": 200, "protocol": "pusher",
            "path": f"/app/{APP_KEY}?protocol=7&client=js&version=8.0.0&flash=false",
            "clients": [[s.kind, s.id, "all" if s.kind == "wall" else f"team-{s.team}"] for s in specs]}
    connect_sampler = common.ProcSampler(server.pid)
    client.stdin.write(json.dumps(spec) + "\n")
    client.stdin.flush()
    connected = json.loads(client.stdout.readline())
    server_connect = connect_sampler.result()
    time.sleep(3.0)
    rss_idle = common.ProcSampler(server.pid).rss()
    sampler = common.ProcSampler(server.pid)
    try:
        driver = asyncio.run(drive_soketi(server.base, agents, rate_per_s, duration_s))
    finally:
        sampler.sample()
        cpu = sampler.result()
        client.stdin.write("stop\n")
        client.stdin.flush()
        result = json.loads(client.stdout.readline())
        client.wait(30)
    n = max(connected["connected"], 1)
    return {
        "client": "light (bench/light_client.py, one process)",
        "connected": connected["connected"], "connect_failed": connected["failed"],
        "connect_fail_samples": connected["fail_samples"], "connect_s": connected["connect_s"],
        "server_cpu_share_connect": server_connect["cpu_share"],
        "client_cpu_share_connect": connected["client_cpu_share_connect"], "changes": driver,
        "wallboard_latency": common.latency_ms(v / 1000 for v in result["wall_ms"]),
        "own_badge_latency": common.latency_ms(v / 1000 for v in result["own_ms"]),
        "server": cpu | {"rss_before_clients_mib": round(rss0 / 2**20, 1), "rss_idle_mib": round(rss_idle / 2**20, 1),
                         "rss_per_idle_conn_kib": round((rss_idle - rss0) / n / 1024, 2)},
        "client_cpu_share": result["client_cpu_share"], "client_messages": result["messages"],
        "client_bytes": result["bytes"], "server_closes": result["server_closes"], "close_codes": result["close_codes"],
        "reconnects": result["reconnects"],
        "loadavg_before": [round(x, 2) for x in load_before], "loadavg_after": [round(x, 2) for x in os.getloadavg()],
    }


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a is not None and b else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_fanout_args(parser)
    args = parser.parse_args()
    apply_smoke(args)
    load = load_of(args)
    specs, sups, agent_ids = harness.fanout_specs("callboard", args.clients, args.walls, args.team_size,
                                                  args.queues, args.supervisors)
    teams = {s.id: s.team for s in specs if s.kind == "agent"}
    figures: dict[str, dict[str, Any]] = {}
    with common.workdir("cb-bench-soketi-") as wd:
        common.log(f"soketi: {len(specs)} sockets")
        with soketi_server(wd) as server:
            figures["soketi"] = with_delivery(run_soketi(server, specs, [(a, teams[a]) for a in agent_ids],
                                                         rate_per_s=args.rate, duration_s=args.duration), args.walls)
        common.log(f"callboard: {len(specs)} sockets")
        cfg = common.write_config(wd, agents=len(agent_ids), queues=args.queues, team_size=args.team_size,
                                  tick_ms=args.tick_ms)
        with common.callboard_server(cfg, wd) as server:
            figures["callboard"] = with_delivery(harness.run_fanout_light(
                server, specs, sups, agent_ids, rate_per_s=args.rate, duration_s=args.duration), args.walls)
    for name, fig in figures.items():
        common.emit(f"peer_soketi.{name}", load, **fig)
    cb, sk = figures["callboard"], figures["soketi"]
    common.emit("peer_soketi.ratios", load, callboard_over_soketi={
        "wallboard_p50": _ratio(cb["wallboard_latency"]["p50_ms"], sk["wallboard_latency"]["p50_ms"]),
        "wallboard_p99": _ratio(cb["wallboard_latency"]["p99_ms"], sk["wallboard_latency"]["p99_ms"]),
        "own_badge_p99": _ratio(cb["own_badge_latency"]["p99_ms"], sk["own_badge_latency"]["p99_ms"]),
        "rss_per_idle_conn": _ratio(cb["server"]["rss_per_idle_conn_kib"], sk["server"]["rss_per_idle_conn_kib"]),
        "connect_s": _ratio(cb["connect_s"], sk["connect_s"]),
    }, targets={"wallboard_p99_le_2x_soketi": (r := _ratio(cb["wallboard_latency"]["p99_ms"],
                                                            sk["wallboard_latency"]["p99_ms"])) is not None and r <= 2})
    return 0


if __name__ == "__main__":
    sys.exit(main())
