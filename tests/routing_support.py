"""A center in offer mode for tests: callboard instance(s) on loopback, Twilio played by the emulator.

The emulator (simulator/twilio_api.py) is Twilio's side; callboard is the code under test, reached only
as Twilio and agents reach it: signed webhooks, REST, websockets.
"""

from __future__ import annotations

import asyncio
import json
import socket
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import websockets
from aiohttp.test_utils import TestServer
from redis.asyncio import Redis

from callboard import keys
from callboard.app import build_app
from callboard.config import Config
from callboard.services import SERVICES, Services, Settings
from simulator.twilio_api import EmuCall, TwilioEmulator, new_sid
from tests.conftest import SECRET, TWILIO_TOKEN, WsClient, keep_facts, make_config, token, ws_url

ACCOUNT = "AC" + "7" * 32
OFFER_ROUTING = {"mode": "offer", "offer_timeout_s": 15, "missed_to_away": 2, "tick_ms": 50}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def offer_config(server: dict[str, Any] | None = None, **routing: Any) -> Config:
    if server:
        return make_config(routing={**OFFER_ROUTING, **routing}, server=server)
    return make_config(routing={**OFFER_ROUTING, **routing})


@dataclass
class OfferCenter:
    emu: TwilioEmulator
    emu_url: str
    redis: Redis
    servers: list[TestServer] = field(default_factory=list)
    clients: list[WsClient] = field(default_factory=list)

    def services(self, i: int = 0) -> Services:
        return self.servers[i].app[SERVICES]

    def base(self, i: int = 0) -> str:
        return f"http://127.0.0.1:{self.servers[i].port}"

    async def caller(self, from_: str = "+15557770001", to: str = "+15550000001", *, info: dict[str, Any] | None = None,
                     i: int = 0) -> EmuCall:
        """A caller dials in; `info` stands for the directory lookup (written before `incoming`, as input)."""
        sid = new_sid("CA")
        if info is not None:
            await self.redis.set(keys.caller(sid), json.dumps(info), ex=43200)
        return await self.emu.place_call(from_=from_, to=to, url=f"{self.base(i)}/twilio/voice/incoming",
                                         status_callback=f"{self.base(i)}/twilio/voice/status", sid=sid)

    async def agent(self, agent_id: str, *, i: int = 0, **hello: Any) -> WsClient:
        conn = await websockets.connect(ws_url(self.servers[i]), subprotocols=["callboard.v1.json"], open_timeout=5)
        client = WsClient(conn)
        await client.send({"type": "hello", "token": token(agent_id), **hello})
        client.welcome = await client.recv()
        assert client.welcome["type"] == "welcome", client.welcome
        await client.recv()
        self.clients.append(client)
        await client.wait_for(lambda s: s["agents"][agent_id]["connections"] >= 1, timeout=15)
        return client

    async def wall(self, i: int = 0) -> WsClient:
        conn = await websockets.connect(ws_url(self.servers[i]), subprotocols=["callboard.v1.json"], open_timeout=5)
        client = WsClient(conn)
        await client.send({"type": "hello", "token": token("wall", "wallboard")})
        client.welcome = await client.recv()
        await client.recv()
        self.clients.append(client)
        return client

    async def facts(self) -> list[dict[str, Any]]:
        return [json.loads(f[b"f"]) for _, f in await self.redis.xrange(keys.facts())]

    async def support_today(self) -> dict[str, Any]:
        return self.services().mirror.queue_entry("support", self.services().clock.now_ms())["today"]


async def next_message(client: WsClient, kind: str, timeout: float = 15.0,
                       where: Callable[[dict[str, Any]], bool] = lambda m: True) -> dict[str, Any]:
    """The next message of this type (already received ones count), e.g. an offer."""
    seen = 0
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        for msg in client.messages[seen:]:
            seen += 1
            if msg["type"] == kind and where(msg):
                client.messages.remove(msg)
                return msg
        left = deadline - asyncio.get_running_loop().time()
        if left <= 0:
            raise AssertionError(f"no {kind} message within {timeout} s; got {[m['type'] for m in client.messages]}")
        await client.recv(left)


async def start_center(aiohttp_server: Any, redis_url: str, redis: Redis, config: Config, *, instances: int = 1,
                       clock: Any = None, directory: bool = False, data_dir: Path | None = None,
                       **settings_extra: Any) -> OfferCenter:
    """`directory=False`: tests stand in for the customer directory by writing `cb:caller:{CallSid}` (input),
    so the instance's own lookup is switched off; `directory=True` keeps the real lookup against the SQL store
    in `data_dir` (tests/test_routing.py::test_owner_from_the_real_directory_gets_the_offer)."""
    api_keys = {settings_extra["twilio_api_key"]: settings_extra["twilio_api_secret"]} \
        if settings_extra.get("twilio_api_key") else {}
    emu = TwilioEmulator(account_sid=ACCOUNT, auth_token=TWILIO_TOKEN, api_keys=api_keys)
    emu_server = await aiohttp_server(emu.app(), host="127.0.0.1")
    center = OfferCenter(emu=emu, emu_url=f"http://127.0.0.1:{emu_server.port}", redis=redis)
    await keep_facts(redis)  # the facts stay on the stream for center.facts()
    for n in range(instances):
        port = free_port()
        data = Path(tempfile.mkdtemp(prefix="cb-routing-")) if data_dir is None else data_dir
        settings = Settings(secret=SECRET, twilio_auth_token=TWILIO_TOKEN, public_url=f"http://127.0.0.1:{port}",
                            twilio_account_sid=ACCOUNT, twilio_api_url=center.emu_url, data_dir=data,
                            **settings_extra)
        client = Redis.from_url(redis_url, socket_timeout=10, socket_connect_timeout=2)
        app = build_app(config, settings, client, clock=clock, instance_id=f"inst{n}", close_redis=True)
        if not directory:
            app[SERVICES].callflow.caller_lookup = None
        center.servers.append(await aiohttp_server(app, host="127.0.0.1", port=port))
    return center
