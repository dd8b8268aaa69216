"""The softphone panel in real headless Chromium (Playwright), against real instances, Redis and the Twilio emulator.

The Twilio Voice SDK is REPLACED BY A STAND-IN OBJECT in these tests (STAND_IN_SDK below, installed with
add_init_script before the page's scripts run): a browser cannot place real Twilio calls here. The stand-in
records every call the page makes on it (register, connect, mute, sendDigits, updateToken, accept ...) so the
tests assert what the page asked of the SDK; everything else — the server, the conference, the controls'
REST requests to the emulator, presence, the websocket — is the real thing.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import jwt
import pytest
from redis.asyncio import Redis

from callboard.services import Settings
from callflow.testing import FakeTwilio
from simulator.twilio_api import TwilioEmulator
from tests.conftest import SECRET, TWILIO_TOKEN, make_config, token
from tests.test_browser import ARTIFACTS, JS_TEXT_IS, text_of, tid, wait_js
from tests.test_browser import http as browser_http
from tests.test_controls import (
    ACCOUNT,
    LONG_LEASES,
    Phone,
    _phone,
    bridged,
    online,
    state_of,
    until,
    wait_message,
)

API_SECRET = "api-secret-for-the-browser-tests-0123456789"
VOICE = {"twilio_api_key": "SK" + "2" * 32, "twilio_api_secret": API_SECRET, "twilio_twiml_app_sid": "AP" + "3" * 32}

# The stand-in for the Twilio Voice SDK (see the module docstring): same method and event names as SDK 2.x.
STAND_IN_SDK = """
(() => {
  const sdk = { log: [], devices: [], calls: [], device: null };
  window.__sdk = sdk;
  class Emitter {
    constructor() { this.handlers = {}; }
    on(event, fn) { (this.handlers[event] = this.handlers[event] || []).push(fn); return this; }
    emit(event, ...args) { for (const fn of this.handlers[event] || []) fn(...args); }
  }
  class StandInCall extends Emitter {
    constructor(params) { super(); this.parameters = params || {}; this.muted = false; sdk.calls.push(this); }
    mute(value = true) { this.muted = value; sdk.log.push(["mute", value]); this.emit("mute", value, this); }
    isMuted() { return this.muted; }
    sendDigits(digits) { sdk.log.push(["sendDigits", digits]); }
    disconnect() { sdk.log.push(["disconnect"]); this.emit("disconnect", this); }
    accept() { sdk.log.push(["accept"]); this.emit("accept", this); }
    reject() { sdk.log.push(["reject"]); }
  }
  class StandInDevice extends Emitter {
    constructor(token) { super(); this.token = token; sdk.devices.push(this); sdk.device = this; sdk.log.push(["new", token]); }
    async register() { sdk.log.push(["register"]); this.emit("registering"); await null; this.emit("registered"); }
    updateToken(token) { this.token = token; sdk.log.push(["updateToken", token]); }
    async connect(options) { sdk.log.push(["connect", options]); return new StandInCall(options && options.params); }
    destroy() { sdk.log.push(["destroy"]); }
  }
  window.__StandInCall = StandInCall;
  window.Twilio = { Device: StandInDevice };
})();
"""


async def _voice_phone(make_instance: Any, aiohttp_server: Any, aiohttp_client: Any, redis: Redis, **center: Any) -> Phone:
    config = make_config(center={"wrap_up_s": 30, **center}, server={**LONG_LEASES,
                                                                       "voice_sdk_url": "https://sdk.invalid/twilio.min.js"})
    emu = TwilioEmulator(ACCOUNT, TWILIO_TOKEN, api_keys={VOICE["twilio_api_key"]: API_SECRET})
    emu_server = await aiohttp_server(emu.app())
    settings = Settings(secret=SECRET, twilio_auth_token=TWILIO_TOKEN, twilio_account_sid=ACCOUNT,
                        twilio_api_url=f"http://{emu_server.host}:{emu_server.port}", **VOICE)
    return await _phone(make_instance, aiohttp_server, aiohttp_client, redis, config, settings=settings, emu=emu)


async def _console(browser: Any, phone: Phone, agent: str) -> Any:
    context = await browser.new_context(viewport={"width": 1400, "height": 1000})
    await context.add_init_script(STAND_IN_SDK)
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.errors = errors
    await page.goto(f"http://{phone.server.host}:{phone.server.port}/agent#token={token(agent)}")
    await wait_js(page, "() => document.querySelector('[data-testid=\"device-state\"]')?.dataset.state === 'ready'")
    return page


async def shot(page: Any, name: str) -> None:
    """The whole console to artifacts/browser/<name>, and to docs/screenshots/ with CALLBOARD_SCREENSHOTS=1."""
    from tests.test_wall_fit import docs_shot

    for path in filter(None, [ARTIFACTS / name, docs_shot(name)]):
        await page.screenshot(path=str(path), full_page=True)
        assert path.stat().st_size < 300_000, (path, path.stat().st_size)


async def sdk_log(page: Any) -> list[Any]:
    return await page.evaluate("() => window.__sdk.log")


async def test_device_state_error_codes_and_token_renewal(browser: Any, make_instance: Any, aiohttp_server: Any,
                                                          aiohttp_client: Any, redis: Redis) -> None:
    phone = await _voice_phone(make_instance, aiohttp_server, aiohttp_client, redis)
    page = await _console(browser, phone, "alice")
    assert await text_of(page, "device-state") == "Voice: ready"
    log = await sdk_log(page)
    assert log[0][0] == "new" and ["register"] in log  # registered, so transfers can ring this browser
    first = jwt.decode(log[0][1], API_SECRET, algorithms=["HS256"])
    assert first["grants"]["identity"] == "alice"
    token_requests: list[str] = []
    page.on("request", lambda r: token_requests.append(r.url) if r.url.endswith("/api/voice-token") else None)
    # the SDK says the token will expire soon: the console fetches a fresh one and hands it to updateToken
    await asyncio.sleep(1.1)  # a later second, so the fresh token's exp differs from the first one's
    await page.evaluate("() => window.__sdk.device.emit('tokenWillExpire', window.__sdk.device)")
    await wait_js(page, "() => window.__sdk.log.some(e => e[0] === 'updateToken')")
    fresh = next(e[1] for e in await sdk_log(page) if e[0] == "updateToken")
    claims = jwt.decode(fresh, API_SECRET, algorithms=["HS256"])
    assert claims["grants"]["identity"] == "alice" and claims["exp"] > first["exp"] and fresh != log[0][1]
    assert len(token_requests) == 1
    assert ["new", fresh] not in await sdk_log(page)  # renewed in place, not a new device
    # an error shows its code and a one-line explanation; unregistered is offline
    await page.evaluate("() => window.__sdk.device.emit('error', {code: 31208, message: 'Permission denied'})")
    await wait_js(page, "() => document.querySelector('[data-testid=\"device-state\"]').dataset.state === 'error'")
    text = await text_of(page, "device-state")
    assert "31208" in text and "Microphone access was denied" in text
    await page.evaluate("() => window.__sdk.device.emit('error', {code: 99999, message: 'Something odd'})")
    await wait_js(page, "() => document.querySelector('[data-testid=\"device-state\"]').textContent.includes('Something odd')")
    await page.evaluate("() => window.__sdk.device.emit('unregistered')")
    await wait_js(page, "() => document.querySelector('[data-testid=\"device-state\"]').dataset.state === 'offline'")
    assert page.errors == []


async def test_conference_controls_from_the_console(browser: Any, make_instance: Any, aiohttp_server: Any,
                                                    aiohttp_client: Any, redis: Redis) -> None:
    phone = await _voice_phone(make_instance, aiohttp_server, aiohttp_client, redis, bridge="conference",
                               conference_region="jp1")
    page = await _console(browser, phone, "alice")
    bob = (await online(phone, "bob"))["bob"]
    await wait_js(page, "() => document.querySelector('[data-testid=\"my-state\"]')?.textContent === 'Available'")
    caller = await phone.caller("+15557654321")
    await wait_js(page, "() => !document.querySelector('[data-testid=\"take-next\"]').disabled")
    await page.click(tid("take-next"))
    await wait_js(page, "() => window.__sdk.log.some(e => e[0] === 'connect')")
    connect = next(e for e in await sdk_log(page) if e[0] == "connect")
    assert connect[1] == {"params": {"queue": "support"}}
    await phone.take_next("alice")  # Twilio's side of that click: the TwiML App's agent request
    await wait_js(page, "() => !document.querySelector('[data-testid=\"sp-controls\"]').hidden")
    assert await page.locator(tid("sp-hold")).is_visible()
    assert await page.locator(tid("sp-conference-note")).is_hidden()

    # hold and resume: the caller's participant in the emulator follows the button
    await page.click(tid("sp-hold"))
    await wait_js(page, "() => document.querySelector('[data-testid=\"sp-hold\"]').dataset.on === 'true'")
    conf = phone.emu.conference_named(caller)
    assert conf is not None and conf.region == "jp1"
    await until(lambda: _true(conf.participants[caller].hold))
    assert await text_of(page, "sp-hold") == "Resume"
    await page.click(tid("sp-hold"))
    await wait_js(page, "() => document.querySelector('[data-testid=\"sp-hold\"]').dataset.on === 'false'")
    await until(lambda: _true(not conf.participants[caller].hold))
    assert [f["on"] for f in await phone.facts("call.hold")] == [True, False]

    # mute and the keypad stay in the browser: the SDK's call.mute() and call.sendDigits()
    await page.click(tid("sp-mute"))
    await wait_js(page, "() => window.__sdk.log.some(e => e[0] === 'mute' && e[1] === true)")
    assert await text_of(page, "sp-mute") == "Unmute"
    await page.click(tid("sp-keypad-toggle"))
    await page.click(tid("sp-key-5"))
    await page.click(tid("sp-key-#"))
    log = await sdk_log(page)
    assert [e[1] for e in log if e[0] == "sendDigits"] == ["5", "#"]

    # a supervisor whispers: the agent sees it
    status, _ = await phone.api(caller, "monitor", {"mode": "whisper"}, tok=token("boss", "supervisor"))
    assert status == 200
    await wait_js(page, "() => !document.querySelector('[data-testid=\"monitor-banner\"]').hidden")
    assert "boss" in await text_of(page, "monitor-banner") and "coaching" in await text_of(page, "monitor-banner")
    # docs/softphone.md's picture of the in-call controls on the conference bridge (transfer picker included):
    # the SDK's call says it is connected, as Twilio's would once the agent leg is up; the keypad folded
    await page.evaluate("() => window.__sdk.calls[0].emit('accept', window.__sdk.calls[0])")
    await wait_js(page, JS_TEXT_IS, [tid("voice-notice"), "Connected."])
    await page.click(tid("sp-keypad-toggle"))
    await page.select_option(tid("sp-transfer-target"), "agent:bob")
    await shot(page, "softphone-conference.png")

    # a cold transfer to bob: it is offered to him, he accepts and answers, alice is removed, her wrap-up
    # panel asks for the disposition
    await page.select_option(tid("sp-transfer-target"), "agent:bob")
    await page.click(tid("sp-transfer"))
    offer = await wait_message(bob, "offer")
    assert offer["kind"] == "transfer" and offer["from_agent"] == "alice"
    # (the offer can reach bob before the page has read the API's answer: wait for the notice)
    await wait_js(page, "() => document.querySelector('[data-testid=\"sp-notice\"]').textContent === 'Offered to bob\u2026'")
    await bob.send({"type": "accept", "offer_id": offer["offer_id"]})
    await until(lambda: _is_state(phone, "bob", "on-call"))
    await until(lambda: _is_state(phone, "alice", "wrap-up"))
    await wait_js(page, "() => !document.querySelector('[data-testid=\"wrapup\"]').hidden")
    assert await page.locator(tid("monitor-banner")).is_hidden()
    options = await page.eval_on_selector(tid("wrapup-disposition"), "s => [...s.options].map(o => o.value)")
    assert options == ["resolved", "follow-up", "escalated", "wrong number"]
    await page.select_option(tid("wrapup-disposition"), "escalated")
    await page.fill(tid("wrapup-note"), "passed to billing")
    await page.click(tid("wrapup-save"))
    await wait_js(page, "() => document.querySelector('[data-testid=\"wrapup\"]').hidden")
    call = await phone.call(caller)
    assert (call["disposition"], call["note"], call["disp_by"], call["agent"]) == ("escalated", "passed to billing", "alice", "bob")
    assert await text_of(page, "sp-notice") == "Wrap-up saved."

    # a call ringing this browser (a transfer to alice) shows Answer; answering accepts it on the SDK
    await page.evaluate("() => window.__sdk.device.emit('incoming', new window.__StandInCall({From: '+15557654321'}))")
    await wait_js(page, "() => !document.querySelector('[data-testid=\"sp-incoming\"]').hidden")
    assert "+15557654321" in await text_of(page, "sp-incoming")
    await page.click(tid("sp-answer"))
    await wait_js(page, "() => window.__sdk.log.some(e => e[0] === 'accept')")
    assert page.errors == []


async def test_queue_mode_hides_conference_controls_with_a_reason(browser: Any, make_instance: Any,
                                                                  aiohttp_server: Any, aiohttp_client: Any,
                                                                  redis: Redis) -> None:
    phone = await _voice_phone(make_instance, aiohttp_server, aiohttp_client, redis)
    page = await _console(browser, phone, "alice")
    await wait_js(page, "() => document.querySelector('[data-testid=\"my-state\"]')?.textContent === 'Available'")
    caller = await phone.caller()
    leg = "CA" + "6" * 32
    status, twiml = await phone.twilio.post("agent", {"CallSid": leg, "From": "client:alice", "queue": "support"})
    assert "<Queue" in twiml
    await phone.twilio.post("bridge", {"CallSid": caller, "DequeingCallSid": leg, "QueueTime": "4"},
                            {"queue": "support", "agent": "alice"})
    await wait_js(page, "() => !document.querySelector('[data-testid=\"sp-controls\"]').hidden")
    assert await page.locator(tid("sp-hold")).is_hidden()
    assert await page.locator(tid("sp-transfer-row")).is_hidden()
    note = page.locator(tid("sp-conference-note"))
    assert await note.is_visible() and "conference bridge" in (await note.text_content() or "")
    assert await page.locator(tid("sp-hangup")).is_visible()
    await page.click(tid("sp-hangup"))
    await until(lambda: _true(bool(phone.rest("POST", f"/Calls/{caller}.json"))))
    assert phone.rest("POST", f"/Calls/{caller}.json") == [{"Status": "completed"}]
    assert page.errors == []


# Every button a person sees labelled "Hang up" (visible, whatever the language's label: the page's own t()).
JS_HANG_UP_BUTTONS = """() => [...document.querySelectorAll('button')]
  .filter((b) => b.offsetParent !== null && b.textContent.trim() === (window.t ? window.t('Hang up') : 'Hang up'))
  .map((b) => b.dataset.testid)"""


@pytest.mark.parametrize("bridge", ["conference", "queue"])
async def test_one_hang_up_on_a_call_and_it_ends_the_call_the_bridge_s_way(
        browser: Any, make_instance: Any, aiohttp_server: Any, aiohttp_client: Any, redis: Redis, bridge: str) -> None:
    """The Voice SDK is the stand-in (STAND_IN_SDK): its log says whether the page disconnected the browser's
    leg; the emulator's REST log whether the server ended the caller's call. "Take next caller" used to turn
    into a second "Hang up" (SDK disconnect only) beside the panel's (the server's hangup)."""
    center = {"bridge": "conference", "conference_region": "jp1"} if bridge == "conference" else {}
    phone = await _voice_phone(make_instance, aiohttp_server, aiohttp_client, redis, **center)
    page = await _console(browser, phone, "alice")
    await wait_js(page, "() => document.querySelector('[data-testid=\"my-state\"]')?.textContent === 'Available'")
    caller = await phone.caller("+15557654321")
    await wait_js(page, "() => !document.querySelector('[data-testid=\"take-next\"]').disabled")
    await page.click(tid("take-next"))
    await wait_js(page, "() => window.__sdk.log.some(e => e[0] === 'connect')")
    # before a caller is bridged (the browser's call waits on the queue) the panel's Hang up is already the one
    await wait_js(page, "() => !document.querySelector('[data-testid=\"sp-controls\"]').hidden")
    assert await page.evaluate(JS_HANG_UP_BUTTONS) == ["sp-hangup"]
    if bridge == "conference":
        await phone.take_next("alice")  # Twilio's side of the click: the TwiML App's agent request
    else:
        leg = "CA" + "6" * 32
        status, twiml = await phone.twilio.post("agent", {"CallSid": leg, "From": "client:alice", "queue": "support"})
        assert status == 200 and "<Queue" in twiml
        await phone.twilio.post("bridge", {"CallSid": caller, "DequeingCallSid": leg, "QueueTime": "4"},
                                {"queue": "support", "agent": "alice"})
    await wait_js(page, JS_TEXT_IS, [tid("pop-from"), "+15557654321"], timeout_s=10)
    await page.evaluate("() => window.__sdk.calls[0].emit('accept', window.__sdk.calls[0])")
    await wait_js(page, JS_TEXT_IS, [tid("voice-notice"), "Connected."])

    # on the call: one "Hang up"; "Take next caller" keeps its label, disabled, and says where hanging up is
    assert await page.evaluate(JS_HANG_UP_BUTTONS) == ["sp-hangup"]
    take = page.locator(tid("take-next"))
    assert await take.text_content() == "Take next caller" and await take.is_disabled()
    assert await take.get_attribute("title") == "On a call: hang up in the softphone panel."
    hang_up = page.locator(tid("sp-hangup"))
    await page.click(tid("sp-hangup"))
    await wait_js(page, JS_TEXT_IS, [tid("sp-notice"), "Call ended."])
    if bridge == "conference":
        # the server's hangup: the caller's call completed, so the conference ends for everyone on it; the
        # browser's leg ends when Twilio ends it, not by the page
        assert await hang_up.get_attribute("title") == ("End the call for everyone on it: the caller, you, and a "
                                                         "supervisor listening.")
        updates = phone.rest("POST", f"/Calls/{caller}.json")  # the first moved the caller into its conference
        assert updates[-1] == {"Status": "completed"} and len(updates) == 2, updates
        assert ["disconnect"] not in await sdk_log(page)
    else:
        # the browser's SDK call disconnected (ending the <Dial><Queue> bridge); nothing asked of the server
        # ("Call ended." is set after the disconnect, in the same click, with no request pending)
        assert await hang_up.get_attribute("title") == "Hang up your softphone: the call with the caller ends."
        assert ["disconnect"] in await sdk_log(page)
        assert phone.rest("POST", f"/Calls/{caller}.json") == []
        await wait_js(page, "() => !document.querySelector('[data-testid=\"take-next\"]').disabled")
        assert await take.get_attribute("title") is None
    assert page.errors == []


async def test_supervisor_monitors_from_the_wallboard(browser: Any, make_instance: Any, aiohttp_server: Any,
                                                      aiohttp_client: Any, redis: Redis) -> None:
    phone = await _voice_phone(make_instance, aiohttp_server, aiohttp_client, redis, bridge="conference")
    await online(phone, "alice")
    caller = await phone.caller()
    await phone.take_next("alice")
    await until(lambda: _is_state(phone, "alice", "on-call"))
    base = f"http://{phone.server.host}:{phone.server.port}"

    # a wall display's token never offers monitoring
    context = await browser.new_context(viewport={"width": 1400, "height": 900})
    await context.add_init_script(STAND_IN_SDK)
    wall = await context.new_page()
    await wall.goto(f"{base}/wallboard#token={token('wall-1', 'wallboard')}")
    await wall.wait_for_selector('[data-agent="alice"]')
    await wall.click('[data-agent="alice"]')
    await asyncio.sleep(0.5)
    assert await wall.locator(tid("monitor-popover")).count() == 0
    await context.close()

    context = await browser.new_context(viewport={"width": 1400, "height": 900})
    await context.add_init_script(STAND_IN_SDK)
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    await page.goto(f"{base}/wallboard#token={token('boss', 'supervisor')}")
    await page.wait_for_selector('[data-agent="alice"]')
    await page.click('[data-agent="alice"]')
    await page.wait_for_selector(tid("monitor-popover"))
    await page.click(tid("monitor-listen"))
    # the wallboard registered its own device as supervisor:boss and asked for a muted participant
    await until(lambda: _true(bool(phone.rest("POST", "/Participants.json"))))
    [create] = phone.rest("POST", "/Participants.json")
    assert create["To"] == "client:supervisor:boss" and create["Muted"] == "true"
    log = await sdk_log(page)
    assert jwt.decode(log[0][1], API_SECRET, algorithms=["HS256"])["grants"]["identity"] == "supervisor:boss"
    assert ["register"] in log
    # Twilio rings the supervisor's browser: it answers the call it asked for
    await page.evaluate("() => window.__sdk.device.emit('incoming', new window.__StandInCall({}))")
    await wait_js(page, "() => window.__sdk.log.some(e => e[0] === 'accept')")
    await wait_js(page, "() => document.querySelector('[data-testid=\"monitor-status\"]')?.textContent.includes('Monitoring alice')")
    # a call it did not ask for is declined
    await page.evaluate("() => window.__sdk.device.emit('incoming', new window.__StandInCall({}))")
    await wait_js(page, "() => window.__sdk.log.some(e => e[0] === 'reject')")
    [fact] = await phone.facts("call.monitor")
    assert (fact["call_sid"], fact["supervisor"], fact["mode"]) == (caller, "boss", "listen")
    assert errors == []


async def _true(value: bool) -> bool:
    return value


async def _is_state(phone: Phone, agent: str, state: str) -> bool:
    return await state_of(phone, agent) == state


pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


async def test_conference_offer_is_accepted_and_its_participant_call_answered_by_the_console(
        browser: Any, aiohttp_server: Any, redis_url: str, redis: Redis, tmp_path: Path) -> None:
    from callboard.app import build_app
    from tests.routing_support import OFFER_ROUTING, free_port

    emu = TwilioEmulator(ACCOUNT, TWILIO_TOKEN, api_keys={VOICE["twilio_api_key"]: API_SECRET})
    emu.softphones["alice"] = "wait"  # Twilio learns of the answer when the browser's SDK accepts (below)
    emu_server = await aiohttp_server(emu.app(), host="127.0.0.1")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    settings = Settings(secret=SECRET, twilio_auth_token=TWILIO_TOKEN, twilio_account_sid=ACCOUNT, public_url=base,
                        twilio_api_url=f"http://127.0.0.1:{emu_server.port}", data_dir=tmp_path / "data", **VOICE)
    config = make_config(center={"bridge": "conference", "conference_region": "jp1"}, routing=OFFER_ROUTING,
                         server={"voice_sdk_url": "https://sdk.invalid/twilio.min.js"})
    app = build_app(config, settings, Redis.from_url(redis_url, socket_timeout=10), close_redis=True)
    await aiohttp_server(app, host="127.0.0.1", port=port)

    context = await browser.new_context(viewport={"width": 1400, "height": 1000})
    await context.add_init_script(STAND_IN_SDK)
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    await page.goto(f"{base}/agent#token={token('alice')}")
    await wait_js(page, "() => document.querySelector('[data-testid=\"device-state\"]')?.dataset.state === 'ready'")
    await wait_js(page, "() => document.querySelector('[data-testid=\"my-state\"]')?.textContent === 'Available'")

    caller = "CA" + "8" * 32
    async with browser_http(base) as client:
        twilio = FakeTwilio(client, TWILIO_TOKEN, base)
        status, body = await twilio.post("incoming", {"CallSid": caller, "From": "+15552220001", "To": "+15550000001"})
        assert status == 200 and "<Enqueue" in body
    emu.add_call(caller, "+15552220001", "+15550000001", status_callback=f"{base}/twilio/voice/status", queue="support")
    # the offer rings in the console; Accept
    await wait_js(page, "() => !!document.querySelector('[data-testid=\"offer-accept\"]') && "
                        "document.querySelector('[data-testid=\"offer-from\"]')?.textContent.includes('+15552220001')",
                  timeout_s=10)
    await page.click(tid("offer-accept"))
    # the router dequeued the caller to connect, which rang alice into the caller's conference
    await until(lambda: _true(any(p.endswith("/Participants.json") for m, p, f in emu.requests if m == "POST")), 10)
    [create] = [f for m, p, f in emu.requests if m == "POST" and p.endswith("/Participants.json")]
    assert create["To"].startswith("client:alice?offer_id=")
    offer_id = create["To"].split("offer_id=", 1)[1]
    # Twilio rings the browser with that custom parameter: the console answers it without a second click
    await page.evaluate("""(offerId) => {
      const call = new window.__StandInCall({});
      call.customParameters = new Map([["offer_id", offerId]]);
      window.__sdk.device.emit('incoming', call);
    }""", offer_id)
    await wait_js(page, "() => window.__sdk.log.some(e => e[0] === 'accept')")
    assert await page.locator(tid("sp-incoming")).is_hidden()
    await emu.answer("alice")  # Twilio's side of that answer: the participant's answered callback = the bridge
    await wait_js(page, "() => !document.querySelector('[data-testid=\"sp-controls\"]').hidden", timeout_s=10)
    # The controls show at the SDK's accept (sp.sdkCall, in the page); the pop is written only at the bridge
    # (the answered callback above) and reaches the page through Redis, the follower and the socket: later.
    await wait_js(page, JS_TEXT_IS, [tid("pop-from"), "+15552220001"], timeout_s=10)
    conf = emu.conference_named(caller)
    assert conf is not None and conf.region == "jp1" and len(conf.participants) == 2
    assert errors == []


async def test_a_transfer_rings_in_the_console_as_an_offer_and_accept_answers_its_call(
        browser: Any, make_instance: Any, aiohttp_server: Any, aiohttp_client: Any, redis: Redis) -> None:
    """Pull mode, conference bridge: alice (a websocket client) transfers her caller to bob, whose console
    (the browser, SDK stand-in) shows "Transfer from alice", and whose Accept answers the participant call."""
    phone = await _voice_phone(make_instance, aiohttp_server, aiohttp_client, redis, bridge="conference",
                               conference_region="jp1")
    phone.emu.softphones["bob"] = "wait"  # Twilio learns of the answer when the browser's SDK accepts (below)
    page = await _console(browser, phone, "bob")
    await wait_js(page, "() => document.querySelector('[data-testid=\"my-state\"]')?.textContent === 'Available'")
    caller, leg, socks = await bridged(phone, "alice")
    status, body = await phone.api(caller, "transfer", {"agent": "bob"}, tok=token("alice"))
    assert status == 200 and body["status"] == "offered", body
    # the ringing panel: who hands it on, the caller, Accept / Reject
    await wait_js(page, "() => !document.querySelector('[data-testid=\"offer\"]').hidden")
    assert await text_of(page, "offer-title") == "Transfer from alice"
    assert await text_of(page, "offer-from") == "+15551230001"
    assert await page.eval_on_selector(tid("offer"), "p => p.dataset.kind") == "transfer"
    await shot(page, "softphone-transfer-offer.png")  # docs/softphone.md's picture of a ringing transfer
    await page.click(tid("offer-accept"))
    # Accept rang bob's client into the caller's conference with the offer id as a custom parameter
    await until(lambda: _true(any(p.endswith("/Participants.json") for m, p, f in phone.emu.requests if m == "POST")), 10)
    [create] = [f for m, p, f in phone.emu.requests if m == "POST" and p.endswith("/Participants.json")]
    assert create["To"] == f"client:bob?offer_id={body['offer_id']}"
    await wait_js(page, "() => document.querySelector('[data-testid=\"offer-status\"]').textContent.startsWith('Accepted')")
    # Twilio rings the browser with that parameter: the console answers it without a second click
    await page.evaluate("""(offerId) => {
      const call = new window.__StandInCall({From: '+15551230001'});
      call.customParameters = new Map([["offer_id", offerId]]);
      window.__sdk.device.emit('incoming', call);
    }""", body["offer_id"])
    await wait_js(page, "() => window.__sdk.log.some(e => e[0] === 'accept')")
    assert await page.locator(tid("sp-incoming")).is_hidden()
    await phone.emu.answer("bob")  # Twilio's side of that answer: the participant's answered callback
    await until(lambda: _is_state(phone, "bob", "on-call"))
    await wait_js(page, "() => !document.querySelector('[data-testid=\"sp-controls\"]').hidden", timeout_s=10)
    assert await page.locator(tid("offer")).is_hidden()
    await wait_js(page, JS_TEXT_IS, [tid("pop-from"), "+15551230001"], timeout_s=10)  # the pop: as above
    await until(lambda: _is_state(phone, "alice", "wrap-up"))  # cold: alice was removed
    assert (await phone.call(caller))["agent"] == "bob"
    assert page.errors == []
