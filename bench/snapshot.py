"""Snapshot latency for a big center: 10,000 agents, 100 queues.

    python bench/snapshot.py                    # 10,000 agents, 100 queues, 300 samples of each
    python bench/snapshot.py --smoke            # 1,000 agents, 20 samples

Before measuring, one supervisor socket sets the agents' states (half available, a quarter away with a
reason, the rest offline) so the snapshot carries a realistic mix. Then, one request at a time:
- GET /api/snapshot with a wallboard bearer token: request sent -> whole JSON body read;
- websocket: a new connection per sample; hello sent -> snapshot frame received (and upgrade start ->
  snapshot); the frame is recognised by its prefix, not parsed, so client JSON decoding is not counted.
Target: p50 <= 50 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp  # noqa: E402

from bench import common, harness  # noqa: E402


async def populate(base_ws: str, agent_ids: list[str]) -> None:
    sup = harness.CallboardConn(harness.ClientSpec("super", "sup", token=common.token("sup", "supervisor")))
    async with aiohttp.ClientSession() as session:
        await sup.open(session, base_ws)
        for i, aid in enumerate(agent_ids):
            if i % 4 == 3:
                continue
            state, reason = ("away", "lunch") if i % 4 == 2 else ("available", None)
            await sup.set_state(aid, state, reason)
        # wait until the last one shows in a delta (the socket is ordered)
        target = agent_ids[-2] if len(agent_ids) > 1 else agent_ids[-1]
        assert sup.ws is not None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            msg = await sup.ws.receive(timeout=60)
            if msg.type == aiohttp.WSMsgType.TEXT and target in (json.loads(msg.data).get("agents") or {}):
                break
        await sup.close()


async def measure(base: str, samples: int) -> dict[str, Any]:
    wall_token = common.token("wall-snap", "wallboard")
    http: list[float] = []
    ws_hello: list[float] = []
    ws_connect: list[float] = []
    size = 0
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as session:
        headers = {"Authorization": f"Bearer {wall_token}"}
        for _ in range(3):  # warm-up
            async with session.get(base + "/api/snapshot", headers=headers) as resp:
                await resp.read()
        for _ in range(samples):
            t0 = time.perf_counter()
            async with session.get(base + "/api/snapshot", headers=headers) as resp:
                body = await resp.read()
                assert resp.status == 200, resp.status
            http.append(time.perf_counter() - t0)
            size = len(body)
        ws_base = "ws" + base[4:]
        for _ in range(samples):
            t0 = time.perf_counter()
            ws = await session.ws_connect(ws_base + "/ws", protocols=("callboard.v1.json",), max_msg_size=0)
            t1 = time.perf_counter()
            await ws.send_str(json.dumps({"type": "hello", "token": wall_token}))
            while True:
                msg = await ws.receive(timeout=30)
                assert msg.type == aiohttp.WSMsgType.TEXT, msg
                # received, not parsed: a 1.6 MB json.loads on the client would add ~15 ms that is not the server's
                if msg.data.startswith('{"type":"snapshot"'):
                    break
            t2 = time.perf_counter()
            ws_hello.append(t2 - t1)
            ws_connect.append(t2 - t0)
            await ws.close()
    return {"snapshot_bytes": size, "api_snapshot": common.latency_ms(http),
            "ws_hello_to_snapshot": common.latency_ms(ws_hello), "ws_connect_to_snapshot": common.latency_ms(ws_connect)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agents", type=int, default=10_000)
    parser.add_argument("--queues", type=int, default=100)
    parser.add_argument("--team-size", type=int, default=25)
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--smoke", action="store_true", help="1,000 agents, 20 samples")
    args = parser.parse_args()
    if args.smoke:
        args.agents, args.samples = 1000, 20
    load = {"agents": args.agents, "queues": args.queues, "team_size": args.team_size, "samples": args.samples,
            "smoke": args.smoke, "machine": common.machine()}
    with common.workdir("cb-bench-snapshot-") as wd:
        cfg = common.write_config(wd, agents=args.agents, queues=args.queues, team_size=args.team_size)
        with common.callboard_server(cfg, wd) as server:
            ids = [common.agent_id(i) for i in range(args.agents)]
            asyncio.run(populate("ws" + server.base[4:], ids))
            sampler = common.ProcSampler(server.pid)
            fig = asyncio.run(measure(server.base, args.samples))
            fig["server"] = sampler.result()
    common.emit("snapshot", load, **fig, targets={
        "api_snapshot_p50_le_50ms": fig["api_snapshot"]["p50_ms"] <= 50,
        "ws_snapshot_p50_le_50ms": fig["ws_hello_to_snapshot"]["p50_ms"] <= 50})
    return 0


if __name__ == "__main__":
    sys.exit(main())
