"""Per-connection cost: objects the cyclic collector tracks, tasks, and Python heap per idle websocket.

    python bench/conn_objects.py                 # 2,000 idle agent sockets
    python bench/conn_objects.py --smoke         # 200

Why: at 10,000 sockets every tracked object is scanned by each full collection, so objects per connection
is what turns into collector pauses (issue 15). Unlike the latency benches this figure does not depend on
the machine's load, so it compares trees reliably (BENCH_SERVER_ROOT=<checkout> measures another tree).

The server runs in this process (so gc.get_objects() sees its heap) on BENCH_REDIS_URL; the clients are
bench/light_client.py in a process of their own. Counted after gc.collect(), before and after N agents
connect and settle: tracked objects, asyncio tasks, tracemalloc bytes.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

HERE = Path(__file__).resolve().parent
SERVER_ROOT = Path(os.environ.get("BENCH_SERVER_ROOT", str(HERE.parent)))
sys.path.insert(0, str(SERVER_ROOT))
sys.path.insert(1, str(HERE.parent))

from bench import common  # noqa: E402


def _types() -> dict[str, int]:
    counts: dict[str, int] = {}
    for obj in gc.get_objects():
        name = type(obj).__qualname__
        counts[name] = counts.get(name, 0) + 1
    return counts


async def measure(agents: int) -> dict[str, object]:
    from aiohttp import web
    from redis.asyncio import Redis

    from callboard.app import build_app
    from callboard.config import load_config
    from callboard.services import Settings

    common.flush_db()
    with common.workdir("cb-bench-objects-") as wd:
        cfg_path = common.write_config(wd, agents=agents, queues=max(agents // 100, 1), team_size=25)
        config = load_config(str(cfg_path))
        settings = Settings(secret=common.SECRET, twilio_auth_token=common.TWILIO_TOKEN, data_dir=wd / "data")
        app = build_app(config, settings, Redis.from_url(common.REDIS_URL), close_redis=True)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        port = common.free_port()
        site = web.TCPSite(runner, "127.0.0.1", port, backlog=4096)
        await site.start()
        await asyncio.sleep(1.0)
        gc.collect()
        tracemalloc.start()
        types0 = _types()
        objects0, tasks0 = len(gc.get_objects()), len(asyncio.all_tasks())
        heap0 = tracemalloc.get_traced_memory()[0]
        snap0 = tracemalloc.take_snapshot()
        specs = [["agent", aid, common.token(aid, "agent")] for aid, _, _ in common.center_layout(agents, 1, 25)]
        client = await asyncio.create_subprocess_exec(
            sys.executable, str(HERE / "light_client.py"), stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert client.stdin is not None and client.stdout is not None
        client.stdin.write((json.dumps({"host": "127.0.0.1", "port": port, "clients": specs}) + "\n").encode())
        await client.stdin.drain()
        connected = json.loads(await client.stdout.readline())
        await asyncio.sleep(3.0)  # registrations and their deltas settle
        gc.collect()
        objects1, tasks1 = len(gc.get_objects()), len(asyncio.all_tasks())
        types1 = _types()
        heap1 = tracemalloc.get_traced_memory()[0]
        growth = tracemalloc.take_snapshot().compare_to(snap0, "lineno")
        tracemalloc.stop()
        client.stdin.write(b"stop\n")
        await client.stdin.drain()
        await client.stdout.readline()
        await client.wait()
        await runner.cleanup()
    n = max(int(connected["connected"]), 1)
    by_type = sorted(((t, (types1.get(t, 0) - types0.get(t, 0)) / n) for t in types1), key=lambda x: -x[1])
    top_heap = {f"{st.traceback[0].filename.rsplit('/', 2)[-2:]!s}:{st.traceback[0].lineno}": round(st.size_diff / n)
                for st in growth[:12]}
    return {"top_heap_bytes_per_conn": top_heap, "top_tracked_types_per_conn": {t: round(v, 2) for t, v in by_type[:15] if v >= 0.5},"connected": connected["connected"], "connect_s": connected["connect_s"],
            "tracked_objects_per_conn": round((objects1 - objects0) / n, 1),
            "tasks_per_conn": round((tasks1 - tasks0) / n, 2),
            "python_heap_per_conn_kib": round((heap1 - heap0) / n / 1024, 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agents", type=int, default=2000)
    parser.add_argument("--smoke", action="store_true", help="200 agents")
    args = parser.parse_args()
    if args.smoke:
        args.agents = 200
    common.raise_nofile()
    started = time.time()
    fig = asyncio.run(measure(args.agents))
    common.emit("conn_objects", {"agents": args.agents, "idle": True, "smoke": args.smoke,
                                 "server_root": str(SERVER_ROOT), "loadavg": [round(x, 2) for x in os.getloadavg()],
                                 "machine": common.machine()},
                **fig, seconds=round(time.time() - started, 1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
