"""The baseline a Python team would otherwise pick: python-socketio on aiohttp with AsyncRedisManager.

Run by peer_fanout.py as its own process. Same job as callboard's fan-out, done the socket.io way: a
supervisor emits `set_state`; the server stores the agent's record in Redis (HSET, msgpack) and emits a
`delta` ({"agents": {id: {...}}}, the same shape as callboard's) to the room `all` (wallboards) and the
agent's team room (its team mates and itself). Emits go through Redis pub/sub (AsyncRedisManager), so like
callboard every change takes one path through Redis and would reach every instance. It keeps no queue
statistics, so it sends less per change than callboard does.
"""

from __future__ import annotations

import argparse
import time
import tomllib
from pathlib import Path
from typing import Any

import msgpack
import socketio
from aiohttp import web
from redis.asyncio import Redis

AGENTS_KEY = "peer:agents"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--config", required=True)
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/6")
    args = p.parse_args()
    raw = tomllib.loads(Path(args.config).read_text(encoding="utf-8"))
    team_of = {a["id"]: a.get("team", "") for a in raw.get("agents", [])}

    mgr = socketio.AsyncRedisManager(args.redis_url, channel="peer-bench")
    sio = socketio.AsyncServer(async_mode="aiohttp", client_manager=mgr, cors_allowed_origins="*")
    redis = Redis.from_url(args.redis_url)
    app = web.Application()
    sio.attach(app)

    @sio.event
    async def connect(sid: str, environ: dict[str, Any], auth: dict[str, Any] | None) -> bool:
        auth = auth or {}
        kind = auth.get("kind")
        if kind == "wall":
            await sio.enter_room(sid, "all")
        elif kind == "agent":
            await sio.enter_room(sid, f"agent:{auth.get('id')}")
            await sio.enter_room(sid, f"team:{auth.get('team')}")
        elif kind != "super":
            return False
        await sio.save_session(sid, {"kind": kind})
        return True

    @sio.event
    async def set_state(sid: str, data: dict[str, Any]) -> None:
        agent = data.get("agent")
        if agent not in team_of:
            return
        rec = {"state": data.get("state"), "reason": data.get("reason"), "since_ms": int(time.time() * 1000)}
        await redis.hset(AGENTS_KEY, agent, msgpack.packb(rec))
        delta = {"type": "delta", "agents": {agent: rec}}
        await sio.emit("delta", delta, room="all")
        await sio.emit("delta", delta, room=f"team:{team_of[agent]}")

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app.router.add_get("/healthz", healthz)
    web.run_app(app, host="127.0.0.1", port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
