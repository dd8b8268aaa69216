"""The agent console in offer mode, in real headless Chromium: an offer rings, is accepted, and its call is
answered automatically.

The Twilio Voice SDK is REPLACED in the page by a stand-in object (window.Twilio.Device, injected before
the page's scripts run) that records what the console does with it: the test delivers the "incoming" call
that Twilio would send after the dequeue, carrying the offer id as a custom parameter, and checks that the
console answered it. Everything else is real: callboard, Redis, the Twilio emulator's dequeue, dial and
bridge webhooks, and the page's own websocket.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from callboard import keys
from tests.conftest import token
from tests.routing_support import next_message, offer_config, start_center

# `browser` is the shared Debian chromium fixture of tests/conftest.py (a CI failure when missing, never a skip)
from tests.test_browser import JS_LIVE, JS_TEXT_IS, open_page, text_of, tid, wait_js  # noqa: F401

SDK_STAND_IN = """
window.__sdk = {devices: [], accepted: [], incoming: []};
window.Twilio = {Device: class {
  constructor(token) { this.token = token; this.handlers = {}; window.__sdk.devices.push(this); }
  on(name, fn) { (this.handlers[name] = this.handlers[name] || []).push(fn); }
  updateToken(t) { this.token = t; }
  destroy() {}
  connect() { throw new Error("the stand-in SDK places no outgoing calls"); }
}};
window.__ring = (offerId) => {
  const call = {customParameters: new Map([["offer_id", offerId]]), handlers: {},
                on(name, fn) { this.handlers[name] = fn; },
                accept() { window.__sdk.accepted.push(offerId); }};
  window.__sdk.incoming.push(offerId);
  for (const device of window.__sdk.devices) for (const fn of device.handlers.incoming || []) fn(call);
};
"""

VOICE = {"twilio_api_key": "SK" + "3" * 32, "twilio_api_secret": "api-secret", "twilio_twiml_app_sid": "AP" + "4" * 32}


@pytest.fixture
async def center(aiohttp_server: Any, redis_url: str, redis: Any) -> Any:
    config = offer_config(server={"voice_sdk_url": "https://sdk.invalid/twilio.min.js"})
    c = await start_center(aiohttp_server, redis_url, redis, config, **VOICE)
    yield c
    for client in c.clients:
        await client.close()
    await c.emu.close()


async def test_offer_rings_in_the_console_and_is_accepted(browser: Any, center: Any) -> None:
    context = await browser.new_context(viewport={"width": 1400, "height": 900})
    await context.add_init_script(SDK_STAND_IN)
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    await page.goto(f"{center.base()}/agent#token={token('alice', 'agent')}")
    await wait_js(page, JS_LIVE)
    await wait_js(page, "() => document.querySelector('[data-testid=\"offer-notice\"]')?.dataset.canTakeCalls === 'true'")
    await wait_js(page, JS_TEXT_IS, [tid("my-state"), "Available"])
    await page.click(tid("agent-name"))  # a user gesture: from now on the ring is audible (WebAudio)

    async def softphone(params: dict[str, str], call: Any) -> str:
        # Twilio rings alice's client: deliver the incoming call to the page's SDK stand-in, and answer the
        # dial only once the console has accepted that call itself
        await page.evaluate("(id) => window.__ring(id)", params["offer_id"])
        for _ in range(100):
            if params["offer_id"] in await page.evaluate("() => window.__sdk.accepted"):
                return "answer"
            await asyncio.sleep(0.05)
        return "no-answer"

    center.emu.softphones["alice"] = softphone
    info = {"withheld": False, "owner": "alice", "owner_team": "support",
            "customers": [{"id": "c1", "name": "Yamada Hanako", "kana": "やまだ はなこ", "company": "ACME",
                           "owner": "alice", "memo": "VIP", "notes": []}]}
    caller = await center.caller("+15551234567", info=info)
    await page.wait_for_selector(tid("offer"), state="visible", timeout=10_000)
    assert await text_of(page, "offer-from") == "+15551234567"
    assert "Yamada Hanako" in await text_of(page, "offer-customer-0")
    assert await page.evaluate("() => document.body.classList.contains('offer-ringing')")
    await wait_js(page, "() => Number(document.querySelector('[data-testid=\"offer\"]').dataset.rang || 0) >= 1")
    offer_id = await page.get_attribute(tid("offer"), "data-offer-id")
    await page.screenshot(path="artifacts/browser/routing-offer.png")

    await page.click(tid("offer-accept"))
    await wait_js(page, JS_TEXT_IS, [tid("my-state"), "On call"], timeout_s=15)
    assert await page.evaluate("() => window.__sdk.accepted") == [offer_id]
    await wait_js(page, "() => document.querySelector('[data-testid=\"offer\"]').hidden")
    await wait_js(page, JS_TEXT_IS, [tid("pop-from"), "+15551234567"])
    today = await center.support_today()
    assert today["answered"] == 1
    facts = [f["type"] for f in await center.facts() if f["type"].startswith("offer.")]
    assert facts == ["offer.created", "offer.ended"]
    assert caller.sid in {f.get("call_sid") for f in await center.facts()}
    assert errors == []
    await context.close()


async def test_console_without_sdk_says_it_cannot_take_offered_calls(browser: Any, aiohttp_server: Any,
                                                                     redis_url: str, redis: Any) -> None:
    center = await start_center(aiohttp_server, redis_url, redis, offer_config())  # no voice configured
    try:
        w = await open_page(browser, f"{center.base()}/agent#token={token('alice', 'agent')}")
        page = w.page
        await wait_js(page, JS_LIVE)
        await wait_js(page, "() => document.querySelector('[data-testid=\"offer-notice\"]')?.dataset.canTakeCalls === 'false'")
        assert "cannot take offered calls" in await text_of(page, "offer-notice")
        assert await redis.hlen(keys.no_calls("alice")) == 1  # its hello said so
        bob = await center.agent("bob")
        caller = await center.caller(info={"withheld": False, "customers": [], "owner": "alice", "owner_team": "support"})
        assert (await next_message(bob, "offer"))["call_sid"] == caller.sid
        assert await page.locator(tid("offer")).is_hidden()
        w.check()
    finally:
        for client in center.clients:
            await client.close()
        await center.emu.close()
