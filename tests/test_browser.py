"""The two pages in a real browser (Debian chromium driven by Playwright) against real instances on a real Redis.

What is proven here is what a wall display and an agent actually see: the demo center rendered, changes
and new calls on screen within a second of the write, the stale banner through a server outage and the
recovery without a reload, and the agent console's badge, buttons and screen pop driven by the signed
Twilio webhook sequence. Every test saves screenshots to artifacts/browser/.

`CALLBOARD_SCREENSHOTS=1 pytest tests/test_browser.py -k screenshots` regenerates docs/screenshots/.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import re
import socket
import time
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import aiohttp
import pytest
from aiohttp import web
from redis.asyncio import Redis
from yarl import URL

from callboard.app import build_app
from callboard.clock import Clock
from callboard.config import Config, demo_config
from callboard.services import SERVICES
from callflow.flow import BASE_PATH
from callflow.testing import FakeTwilio
from tests.conftest import CHROMIUM, CHROMIUM_ARGS, TWILIO_TOKEN, WsClient, connect, token  # noqa: F401

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "artifacts" / "browser"
DOCS_SCREENSHOTS = ROOT / "docs" / "screenshots"
VIEWPORT = {"width": 1600, "height": 900}
LIVE_WITHIN_S = 1.0  # a write must be on screen within this

# The demo center's numbers (callboard.config.demo_config).
SUPPORT, SALES, BILLING = "+15550100001", "+15550100002", "+15550100003"
NUMBER_OF = {"support": SUPPORT, "sales": SALES, "billing": BILLING}

# Console errors a healthy page may log: the voice token is refused when Twilio voice is not configured
# (the console then runs presence-only), and the browser logs every refused websocket during an outage.
VOICE_TOKEN_503 = ("Failed to load resource: the server responded with a status of 503", "/api/voice-token")
WS_REFUSED = re.compile(r"WebSocket connection to 'ws://127\.0\.0\.1:\d+/ws' failed")

TIMINGS: dict[str, float] = {}


def _record(name: str, seconds: float) -> None:
    TIMINGS[name] = round(seconds, 3)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "timings.json").write_text(json.dumps(TIMINGS, indent=2, sort_keys=True) + "\n")


class Watched:
    """A page whose uncaught errors and console errors are collected; check() fails on unexpected ones."""

    def __init__(self, page: Any) -> None:
        self.page = page
        self.outage = False  # set while the server is down: refused websockets are expected then, only then
        self.page_errors: list[str] = []
        self.unexpected: list[tuple[str, str]] = []
        self.expected: list[str] = []
        page.on("pageerror", lambda exc: self.page_errors.append(str(exc)))
        page.on("console", self._console)

    def _console(self, msg: Any) -> None:
        if msg.type != "error":
            return
        text, url = msg.text, (msg.location or {}).get("url", "")
        voice_503 = text.startswith(VOICE_TOKEN_503[0]) and url.endswith(VOICE_TOKEN_503[1])
        if voice_503 or (self.outage and WS_REFUSED.search(text)):
            self.expected.append(text)
        else:
            self.unexpected.append((text, url))

    def check(self) -> None:
        assert self.page_errors == [], f"uncaught page errors: {self.page_errors}"
        assert self.unexpected == [], f"unexpected console errors: {self.unexpected}"

    async def shot(self, name: str, path: Path | None = None) -> Path:
        target = path or ARTIFACTS / f"{name}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        await self.page.screenshot(path=str(target))
        return target


async def open_page(browser: Any, url: str) -> Watched:
    context = await browser.new_context(viewport=VIEWPORT, device_scale_factor=1)
    page = await context.new_page()
    watched = Watched(page)
    await page.goto(url)
    return watched


def tid(testid: str) -> str:
    return f'[data-testid="{testid}"]'


JS_TEXT_IS = "([sel, text]) => document.querySelector(sel)?.textContent === text"
JS_ATTR_IS = "([sel, name, value]) => document.querySelector(sel)?.getAttribute(name) === value"
JS_LIVE = "() => !document.body.classList.contains('stale') && document.getElementById('stale-banner').hidden"


async def wait_js(page: Any, js: str, arg: Any = None, timeout_s: float = 5.0) -> None:
    await page.wait_for_function(js, arg=arg, polling="raf", timeout=timeout_s * 1000)


async def text_of(page: Any, testid: str) -> str:
    return await page.locator(tid(testid)).text_content() or ""


async def timed(name: str, write: Callable[[], Awaitable[Any]], page: Any, js: str, arg: Any = None) -> float:
    """Seconds from just before `write` starts to the frame in which `js` holds; recorded and asserted < 1 s."""
    started = time.perf_counter()
    await write()
    await wait_js(page, js, arg, timeout_s=5.0)
    elapsed = time.perf_counter() - started
    _record(name, elapsed)
    assert elapsed < LIVE_WITHIN_S, f"{name}: {elapsed:.3f} s from the write to the screen"
    return elapsed


# -- servers, agents, Twilio ----------------------------------------------------------------------------------

class Http:
    """The little of aiohttp's TestClient that FakeTwilio uses, for any base URL."""

    def __init__(self, session: aiohttp.ClientSession, base: str) -> None:
        self.session, self.base = session, base.rstrip("/")

    def make_url(self, path: str) -> URL:
        return URL(self.base + path)

    async def post(self, path: str, **kw: Any) -> aiohttp.ClientResponse:
        return await self.session.post(self.base + path, **kw)


@contextlib.asynccontextmanager
async def http(base: str) -> AsyncIterator[Http]:
    async with aiohttp.ClientSession() as session:
        yield Http(session, base)


def base_url(server: Any) -> str:
    return f"http://{server.host}:{server.port}"


async def set_state(client: Http, agent: str, state: str, reason: str | None = None, *, as_: str = "supervisor") -> None:
    """POST /api/agents/{id}/state with a supervisor token (or the agent's own); returns once applied."""
    tok = token("sup-1", "supervisor") if as_ == "supervisor" else token(agent, "agent")
    body: dict[str, Any] = {"state": state}
    if reason:
        body["reason"] = reason
    resp = await client.session.post(f"{client.base}/api/agents/{agent}/state", json=body,
                                     headers={"Authorization": f"Bearer {tok}"})
    assert resp.status == 200, (resp.status, await resp.text())


class Agents:
    """Agents signed in over websockets (the softphone's connection), each drained by a reader task."""

    def __init__(self) -> None:
        self.clients: dict[str, WsClient] = {}
        self.readers: list[asyncio.Task[None]] = []

    async def sign_in(self, server: Any, *ids: str) -> None:
        for agent in ids:
            client = await connect(server, token(agent, "agent"))
            self.clients[agent] = client
            self.readers.append(asyncio.create_task(self._drain(client)))
        mirror = server.app[SERVICES].mirror
        await until(lambda: all(mirror.agents[a]["state"] != "offline" for a in ids), "agents signed in")

    @staticmethod
    async def _drain(client: WsClient) -> None:
        with contextlib.suppress(Exception):
            while True:
                await client.recv(timeout=3600)

    async def close(self) -> None:
        for task in self.readers:
            task.cancel()
        for client in self.clients.values():
            with contextlib.suppress(Exception):
                await client.close()


@pytest.fixture
async def agents() -> AsyncIterator[Agents]:
    group = Agents()
    yield group
    await group.close()


async def until(predicate: Callable[[], bool], what: str, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def _twiml_url(body: str, tag: str, attr: str) -> str:
    node = ET.fromstring(body).find(f".//{tag}")
    assert node is not None and node.get(attr), body
    return node.get(attr) or ""


class Caller:
    """One inbound call, driven through the six routes the way Twilio does, following the TwiML's URLs."""

    def __init__(self, twilio: FakeTwilio, n: int, queue: str) -> None:
        self.twilio, self.queue = twilio, queue
        self.sid, self.leg = f"CA{n:032x}", f"CA{n + 5000:032x}"
        self.caller = f"+1415555{n:04d}"
        self.to = NUMBER_OF[queue]
        self.action_url = ""
        self.agent = ""

    async def _post(self, route: str, params: dict[str, str], query: dict[str, str] | None = None) -> str:
        status, body = await self.twilio.post(route, params, query)
        assert status == 200 and "<Response" in body, (route, status, body)
        return body

    async def _follow(self, url: str, params: dict[str, str]) -> str:
        parts = urlsplit(url)
        assert parts.path.startswith(BASE_PATH), url
        return await self._post(parts.path.removeprefix(BASE_PATH), params, dict(parse_qsl(parts.query)))

    async def dial(self) -> None:
        body = await self._post("incoming", {"CallSid": self.sid, "From": self.caller, "To": self.to,
                                             "CallStatus": "ringing", "Direction": "inbound"})
        assert "<Enqueue" in body, f"not enqueued (unstaffed?): {body}"
        self.action_url = _twiml_url(body, "Enqueue", "action")

    async def answer(self, agent: str, queue_time_s: int) -> None:
        self.agent = agent
        body = await self._post("agent", {"CallSid": self.leg, "From": f"client:{agent}", "To": "", "queue": self.queue})
        bridge_url = _twiml_url(body, "Dial/Queue", "url")
        await self._follow(bridge_url, {"CallSid": self.sid, "DequeingCallSid": self.leg, "QueueTime": str(queue_time_s),
                                        "QueueSid": "QU1", "From": self.caller, "To": self.to})

    async def hang_up(self, queue_time_s: int) -> None:
        """The caller hangs up: after an answer this ends the call (caller, queue result, agent leg)."""
        if self.agent:
            await self._post("status", {"CallSid": self.sid, "CallStatus": "completed", "From": self.caller, "To": self.to})
            await self._follow(self.action_url, {"CallSid": self.sid, "QueueResult": "bridged",
                                                 "QueueTime": str(queue_time_s), "QueueSid": "QU1"})
            await self._post("status", {"CallSid": self.leg, "CallStatus": "completed", "From": f"client:{self.agent}"})
        else:
            await self._follow(self.action_url, {"CallSid": self.sid, "QueueResult": "hangup",
                                                 "QueueTime": str(queue_time_s), "QueueSid": "QU1"})
            await self._post("status", {"CallSid": self.sid, "CallStatus": "completed", "From": self.caller, "To": self.to})


# -- the wallboard ----------------------------------------------------------------------------------------------

async def test_wallboard_renders_the_demo_center_and_shows_changes_within_a_second(
        browser: Any, make_instance: Any, agents: Agents) -> None:
    config = demo_config()
    server = await make_instance(config)
    await agents.sign_in(server, "alice", "bob", "carol", "grace")
    w = await open_page(browser, f"{base_url(server)}/wallboard#token={token('wall-1', 'wallboard')}")
    page = w.page
    await wait_js(page, JS_LIVE)

    # the token left the address bar; the center is drawn: 3 queue tiles, 12 agent cards in their teams
    assert "token=" not in page.url
    assert await text_of(page, "center-name") == "callboard demo center"
    assert await page.locator("article.queue").count() == 3
    for queue in ("support", "sales", "billing"):
        await page.locator(tid(f"queue-{queue}")).wait_for()
        assert await text_of(page, f"queue-{queue}-waiting") == "0"
    assert await page.locator(".agent[data-agent]").count() == 12
    for agent in config.agents:
        assert await text_of(page, f"agent-{agent.id}-name") == agent.name
    for team in ("support", "sales", "billing"):
        assert await page.locator(tid(f"team-{team}")).count() == 1
    assert await page.get_attribute(tid("agent-alice"), "data-state") == "available"
    assert await page.get_attribute(tid("agent-heidi"), "data-state") == "offline"
    assert await text_of(page, "queue-support-available") == "3"  # alice, bob, carol (+ judy offline)
    await w.shot("wallboard-demo-initial")

    # an agent sets itself away with a reason over its websocket
    await timed("wallboard: agent ws set_state away -> card", lambda: agents.clients["alice"].send(
        {"type": "set_state", "state": "away", "reason": "lunch"}), page,
        "() => document.querySelector('[data-testid=\"agent-alice\"]')?.dataset.state === 'away'"
        " && document.querySelector('[data-testid=\"agent-alice-reason\"]')?.textContent === 'lunch'")
    assert await text_of(page, "agent-alice-state") == "Away"
    assert await text_of(page, "queue-support-away") == "1"

    async with http(base_url(server)) as client:
        # a supervisor sets another agent away over HTTP
        await timed("wallboard: supervisor POST state -> card", lambda: set_state(client, "bob", "away", "meeting"), page,
                    JS_ATTR_IS, [tid("agent-bob"), "data-state", "away"])
        assert await text_of(page, "agent-bob-reason") == "meeting"

        # a new caller on the support number waits in the queue
        twilio = FakeTwilio(client, TWILIO_TOKEN)
        call = Caller(twilio, 1, "support")
        await timed("wallboard: signed incoming -> waiting", call.dial, page,
                    JS_TEXT_IS, [tid("queue-support-waiting"), "1"])
        await wait_js(page, JS_TEXT_IS, [tid("queue-support-longest"), "0:01"], timeout_s=3)

        # carol takes it: waiting back to 0, carol on call with the queue shown on her card
        await timed("wallboard: bridge -> on-call", lambda: call.answer("carol", 2), page,
                    "() => document.querySelector('[data-testid=\"agent-carol\"]')?.dataset.state === 'on-call'"
                    " && document.querySelector('[data-testid=\"queue-support-waiting\"]')?.textContent === '0'")
        assert await text_of(page, "agent-carol-reason") == "support"
        assert await text_of(page, "queue-support-sl-today") == "100%"
        assert await text_of(page, "queue-support-asa-today") == "0:02"
    await w.shot("wallboard-demo-after-changes")
    w.check()


async def test_wallboard_goes_stale_when_the_server_stops_and_recovers_without_a_reload(
        browser: Any, redis: Redis, redis_url: str, settings: Any) -> None:
    config = demo_config()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    base = f"http://127.0.0.1:{port}"

    async def start() -> web.AppRunner:
        """One instance on the fixed port, on the shared test Redis (not a TestServer: it must stop and come back)."""
        app = build_app(config, settings, Redis.from_url(redis_url, socket_timeout=10, socket_connect_timeout=2),
                        close_redis=True)
        runner = web.AppRunner(app, shutdown_timeout=2)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        return runner

    runner = await start()
    sockets: list[Any] = []
    try:
        w = await open_page(browser, f"{base}/wallboard#token={token('wall-1', 'wallboard')}")
        page = w.page
        await wait_js(page, JS_LIVE)
        assert await page.locator(".agent[data-agent]").count() == 12
        async with http(base) as client:
            await set_state(client, "erin", "away", "training")
        await wait_js(page, JS_ATTR_IS, [tid("agent-erin"), "data-state", "away"])
        await page.evaluate("() => { window.__sameDocument = true; }")  # gone if the page ever reloads

        # the server goes away: 1012 on the open socket (graceful drain), then refused reconnects
        w.outage = True
        stopped = time.perf_counter()
        await runner.cleanup()
        await wait_js(page, "() => document.body.classList.contains('stale')"
                            " && document.getElementById('stale-banner').dataset.state === 'reconnecting'", timeout_s=5)
        _record("outage: server stop -> stale banner", time.perf_counter() - stopped)
        banner = page.locator(tid("stale-banner"))
        assert await banner.is_visible()
        text = await text_of(page, "stale-text")
        assert text.startswith("Stale since ") and "reconnecting" in text, text
        assert await page.locator(".agent[data-agent]").count() == 12  # the last picture is kept, not blanked
        await page.wait_for_timeout(400)  # the greying fades in over 0.3 s
        assert float(await page.eval_on_selector("#board", "e => getComputedStyle(e).opacity")) < 0.5
        await w.shot("wallboard-stale")
        await asyncio.sleep(0.6)  # a refused reconnect or two, keeping the backoff window small
        assert await page.evaluate("() => document.body.classList.contains('stale')")
        assert await banner.is_visible()

        # a new instance on the same port and the same Redis; the page reconnects by itself
        runner = await start()
        restarted = time.perf_counter()
        async with http(base) as client:
            await set_state(client, "erin", "available")  # while the page is still disconnected
            await wait_js(page, JS_LIVE, timeout_s=15)
            _record("outage: server back -> banner gone", time.perf_counter() - restarted)
            w.outage = False
            assert await banner.is_hidden()
            assert await page.evaluate("() => window.__sameDocument === true"), "the page reloaded"
            # the new snapshot is the hub's published state; a change made just before the page reconnected
            # comes in the next flush's delta, a tick later at most (wallboard/hub.py Hub.snapshot)
            await wait_js(page, JS_ATTR_IS, [tid("agent-erin"), "data-state", "available"], timeout_s=5)
            # the numbers are live again: deltas flow on the new connection
            await timed("outage: supervisor POST after recovery -> card",
                        lambda: set_state(client, "frank", "away", "break"),
                        page, JS_ATTR_IS, [tid("agent-frank"), "data-state", "away"])
            sockets.append(await sign_in_raw(client, "grace"))
            await timed("outage: incoming after recovery -> waiting", Caller(FakeTwilio(client, TWILIO_TOKEN), 7, "sales").dial,
                        page, JS_TEXT_IS, [tid("queue-sales-waiting"), "1"])
        await w.shot("wallboard-recovered")
        w.check()
    finally:
        for conn in sockets:
            with contextlib.suppress(Exception):
                await conn.close()
        await runner.cleanup()


async def sign_in_raw(client: Http, agent: str) -> Any:
    """Sign an agent in on a server that is not a TestServer; returns once the instance counts it signed in."""
    import websockets

    conn = await websockets.connect(client.base.replace("http", "ws", 1) + "/ws", subprotocols=["callboard.v1.json"])
    await conn.send(json.dumps({"type": "hello", "token": token(agent, "agent")}))
    while json.loads(await asyncio.wait_for(conn.recv(), 5))["type"] != "snapshot":
        pass
    wall = {"Authorization": f"Bearer {token('wall-1', 'wallboard')}"}
    for _ in range(250):  # the incoming webhook reads the instance's mirror: wait until the connect reached it
        resp = await client.session.get(f"{client.base}/api/snapshot", headers=wall)
        if (await resp.json())["agents"][agent]["state"] != "offline":
            return conn
        await asyncio.sleep(0.02)
    raise AssertionError(f"{agent} never signed in")


async def test_wallboard_url_options_and_a_rejected_token(browser: Any, make_instance: Any, agents: Agents) -> None:
    server = await make_instance(demo_config())
    await agents.sign_in(server, "grace", "judy")
    base = base_url(server)
    w = await open_page(browser, f"{base}/wallboard?queues=sales&offline=hide&group=none&sort=state"
                                 f"#token={token('wall-1', 'wallboard')}")
    page = w.page
    await wait_js(page, JS_LIVE)
    # one queue, and only the agents who serve it, in one group, available first; offline cards hidden
    assert await page.locator("article.queue").count() == 1 and await page.locator(tid("queue-sales")).count() == 1
    assert await page.locator(tid("team-all")).count() == 1 and await page.locator(".team").count() == 1
    cards = page.locator(".agent[data-agent]")
    # (heidi is 佐藤 花子 in the demo center: a Latin name sorts before a Japanese one)
    assert [await cards.nth(i).get_attribute("data-agent") for i in range(await cards.count())] == \
        ["grace", "judy", "ivan", "heidi"]
    assert await page.locator(tid("agent-grace")).is_visible() and await page.locator(tid("agent-heidi")).is_hidden()
    assert await page.get_attribute(tid("offline-toggle"), "aria-pressed") == "true"
    assert await page.input_value(tid("sort-select")) == "state"
    # the theme toggle switches and is remembered in the query string (never the token)
    assert await page.evaluate("() => document.documentElement.dataset.theme") == "dark"
    await page.click(tid("theme-toggle"))
    assert await page.evaluate("() => document.documentElement.dataset.theme") == "light"
    assert "theme=light" in page.url and "token" not in page.url
    await w.shot("wallboard-options")
    w.check()

    k = await open_page(browser, f"{base}/wallboard?kiosk=1&theme=light#token={token('wall-1', 'wallboard')}")
    await wait_js(k.page, JS_LIVE)
    assert await k.page.locator(tid("header")).is_hidden()  # kiosk: data only
    assert await k.page.evaluate("() => document.documentElement.dataset.theme") == "light"
    assert await k.page.locator("article.queue").count() == 3
    k.check()

    r = await open_page(browser, f"{base}/wallboard#token=not-a-token")
    await wait_js(r.page, JS_ATTR_IS, ["#stale-banner", "data-state", "rejected"])
    assert await r.page.locator(tid("token-form")).is_visible()
    assert await text_of(r.page, "stale-text") == "Token rejected \u2014 get a new link"
    await r.page.fill(tid("token-input"), token("wall-1", "wallboard"))  # a fresh token, pasted: live again
    await r.page.click(tid("token-submit"))
    await wait_js(r.page, JS_LIVE)
    assert await r.page.locator(tid("token-form")).count() == 0
    await r.shot("wallboard-token-pasted")
    r.check()


# -- the agent console ----------------------------------------------------------------------------------------

async def test_agent_console_badge_buttons_and_screen_pop(browser: Any, make_instance: Any) -> None:
    server = await make_instance(demo_config())
    w = await open_page(browser, f"{base_url(server)}/agent#token={token('alice', 'agent')}")
    page = w.page
    await wait_js(page, JS_LIVE)
    assert "token=" not in page.url
    await wait_js(page, JS_TEXT_IS, [tid("my-state"), "Available"])  # the page's own connection signed her in
    assert await text_of(page, "agent-name") == "Alice Moreau"
    assert await page.get_attribute(tid("my-badge"), "data-state") == "available"
    # no Twilio credentials on this server: the console says so and keeps presence working
    await wait_js(page, "() => document.querySelector('[data-testid=\"take-next\"]').dataset.voice === 'unavailable'")
    assert (await text_of(page, "voice-notice")).startswith("Presence only")
    assert await page.locator(tid("myqueue-support")).count() == 1 and await page.locator(tid("myqueue-billing")).count() == 1
    assert await page.locator(tid("teammate-bob")).count() == 1  # her team, not herself
    assert await page.locator(tid("teammate-alice")).count() == 0

    # Away... opens the reasons; a reason sets away with it
    await page.click(tid("btn-away"))
    assert await page.locator(tid("away-reasons")).is_visible()
    await timed("agent: click away reason -> badge", lambda: page.click(tid("away-reason-lunch")), page,
                JS_TEXT_IS, [tid("my-state"), "Away"])
    assert await text_of(page, "my-reason") == "lunch"
    assert await page.locator(tid("away-reasons")).is_hidden()
    assert server.app[SERVICES].mirror.agents["alice"]["state"] == "away"
    await w.shot("agent-away")
    await timed("agent: click available -> badge", lambda: page.click(tid("btn-available")), page,
                JS_TEXT_IS, [tid("my-state"), "Available"])
    assert await text_of(page, "my-reason") == ""

    # a caller dials support, Alice's softphone dials the queue, Twilio bridges them: the pop
    assert await page.locator(tid("pop")).get_attribute("class") == "panel pop empty"
    async with http(base_url(server)) as client:
        call = Caller(FakeTwilio(client, TWILIO_TOKEN), 42, "support")
        await call.dial()
        await wait_js(page, JS_TEXT_IS, [tid("myqueue-support-waiting"), "1"])
        assert await text_of(page, "pop-from") == ""
        await timed("agent: bridge webhook -> pop", lambda: call.answer("alice", 3), page,
                    JS_TEXT_IS, [tid("pop-from"), call.caller])
        await wait_js(page, JS_TEXT_IS, [tid("my-state"), "On call"])
        assert await page.locator(tid("pop-from")).is_visible()
        assert await text_of(page, "pop-queue") == "support"
        assert await text_of(page, "pop-to") == SUPPORT
        assert await text_of(page, "pop-waited") == "0:03"
        assert await text_of(page, "my-reason") == f"with {call.caller}"
        assert await page.locator(tid("btn-away")).is_enabled()  # the server refuses on-call changes, not the page
        await w.shot("agent-pop")

        # the call ends: the pop clears, the badge goes to wrap-up
        await timed("agent: call end webhooks -> pop cleared + wrap-up", lambda: call.hang_up(3), page,
                    "() => document.querySelector('[data-testid=\"pop\"]').classList.contains('empty')"
                    " && document.querySelector('[data-testid=\"my-state\"]').textContent === 'Wrap-up'")
        assert await page.locator(tid("pop-from")).is_hidden()
        assert await page.get_attribute(tid("my-badge"), "data-state") == "wrap-up"
    await w.shot("agent-wrap-up")
    w.check()


# -- screenshots for docs/pages.md --------------------------------------------------------------------------

class SteppingClock(Clock):
    """Real time shifted into the past by `offset_ms`, moved forward by hand to play a morning in seconds."""

    def __init__(self, offset_s: float) -> None:
        self.offset_ms = int(offset_s * 1000)

    def now_ms(self) -> int:
        return super().now_ms() + self.offset_ms

    def advance(self, seconds: float) -> None:
        self.offset_ms += int(seconds * 1000)

    def at(self, seconds_ago: float) -> None:
        target = -int(seconds_ago * 1000)
        assert target >= self.offset_ms, "the clock only moves forward"
        self.offset_ms = target


def _screenshot_config() -> Config:
    config = demo_config()
    # "today" must hold the whole played hour, even just after midnight UTC
    reset_time = "22:00" if time.gmtime().tm_hour < 1 else "00:00"
    # Leases far longer than the jumps of the stepping clock, so the instance never reaps its own sockets.
    return dataclasses.replace(config, center=dataclasses.replace(config.center, reset_time=reset_time),
                               server=dataclasses.replace(config.server, lease_ttl_s=86_400.0))


@pytest.mark.skipif(not os.environ.get("CALLBOARD_SCREENSHOTS"),
                    reason="writes docs/screenshots/; run with CALLBOARD_SCREENSHOTS=1")
async def test_screenshots_for_the_docs(browser: Any, make_instance: Any, agents: Agents) -> None:
    clock = SteppingClock(-50 * 60)
    server = await make_instance(_screenshot_config(), clock=clock)
    await agents.sign_in(server, "alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "judy", "mallory")
    async with http(base_url(server)) as client:
        twilio = FakeTwilio(client, TWILIO_TOKEN)
        n = 0

        async def handled(queue: str, agent: str, queue_time: int, talk: int, wrap: int) -> None:
            nonlocal n
            n += 1
            call = Caller(twilio, n, queue)
            await call.dial()
            clock.advance(queue_time)
            await call.answer(agent, queue_time)
            clock.advance(talk)
            await call.hang_up(queue_time)
            clock.advance(wrap)
            await set_state(client, agent, "available", as_="agent")

        async def abandoned(queue: str, queue_time: int) -> None:
            nonlocal n
            n += 1
            call = Caller(twilio, n, queue)
            await call.dial()
            clock.advance(queue_time)
            await call.hang_up(queue_time)

        # the last 50 minutes, compressed: mostly answered calls, a few abandons
        for queue, agent, qt, talk, wrap in [
            ("support", "alice", 6, 184, 9), ("sales", "grace", 4, 241, 12), ("support", "bob", 14, 132, 8),
            ("billing", "mallory", 9, 205, 11), ("support", "carol", 27, 96, 7), ("sales", "heidi", 11, 318, 13),
            ("support", "erin", 8, 151, 10), ("billing", "alice", 17, 122, 8), ("support", "dave", 33, 264, 12),
            ("sales", "judy", 5, 187, 9), ("support", "frank", 12, 143, 10), ("billing", "erin", 7, 98, 6),
        ]:
            await handled(queue, agent, qt, talk, wrap)
            if n in (3, 7, 10):
                await abandoned("support" if n != 7 else "sales", 41 if n != 10 else 3)
        assert clock.offset_ms < -8 * 60 * 1000, clock.offset_ms

        # now: some away, three on calls, one in wrap-up, three callers waiting, ivan and oscar offline
        clock.at(8 * 60)
        await set_state(client, "dave", "away", "lunch", as_="agent")
        clock.at(5 * 60 + 12)
        await set_state(client, "frank", "away", "meeting", as_="agent")
        live: dict[str, Caller] = {}
        for seconds_ago, queue, agent, qt in [(4 * 60 + 3, "support", "alice", 7), (3 * 60 + 31, "sales", "grace", 12),
                                             (2 * 60 + 14, "billing", "mallory", 18), (100, "support", "carol", 5)]:
            clock.at(seconds_ago + qt)
            n += 1
            call = live[agent] = Caller(twilio, n, queue)
            await call.dial()
            clock.at(seconds_ago)
            await call.answer(agent, qt)
        for seconds_ago, queue in [(74, "support"), (38, "support"), (21, "sales")]:
            clock.at(seconds_ago)
            n += 1
            await Caller(twilio, n, queue).dial()
        clock.at(3)
        await live["carol"].hang_up(5)  # carol is in wrap-up (10 s) when the pictures are taken
        clock.at(0)

    wall = token("wall-1", "wallboard")
    shots: list[Path] = []
    for name, query in [("wallboard", ""), ("wallboard-light", "?theme=light"), ("wallboard-kiosk", "?kiosk=1")]:
        w = await open_page(browser, f"{base_url(server)}/wallboard{query}#token={wall}")
        await wait_js(w.page, JS_LIVE)
        await wait_js(w.page, JS_ATTR_IS, [tid("agent-carol"), "data-state", "wrap-up"])
        await w.page.wait_for_timeout(300)
        shots.append(await w.shot(name, DOCS_SCREENSHOTS / f"{name}.png"))
        await w.shot(f"docs-{name}")
        w.check()
        await w.page.context.close()

    w = await open_page(browser, f"{base_url(server)}/agent#token={token('alice', 'agent')}")
    await wait_js(w.page, JS_LIVE)
    await wait_js(w.page, JS_TEXT_IS, [tid("pop-from"), live["alice"].caller])  # the pop again, on connect
    await wait_js(w.page, "() => document.querySelector('[data-testid=\"take-next\"]').dataset.voice === 'unavailable'")
    await w.page.wait_for_timeout(300)
    shots.append(await w.shot("agent", DOCS_SCREENSHOTS / "agent.png"))
    await w.shot("docs-agent")
    w.check()

    # the same board while its server is gone
    w = await open_page(browser, f"{base_url(server)}/wallboard#token={wall}")
    await wait_js(w.page, JS_LIVE)
    w.outage = True
    await server.close()
    await wait_js(w.page, JS_ATTR_IS, ["#stale-banner", "data-state", "reconnecting"])
    await w.page.wait_for_timeout(400)
    shots.append(await w.shot("wallboard-stale", DOCS_SCREENSHOTS / "wallboard-stale.png"))
    w.check()
    for path in shots:
        assert path.stat().st_size < 300_000, (path, path.stat().st_size)
