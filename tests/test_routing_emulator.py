"""The Twilio emulator and the REST client: callboard's REST path against Twilio's shapes, on loopback.

The emulator stands for Twilio (it is the fixture, not the code under test); the code under test here is
routing/twilio_rest.py talking to it through the `twilio` package, and the emulator's own contract (JSON
shapes, error JSON, signed webhooks) that the routing tests rely on.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from twilio.base.exceptions import TwilioRestException

from callflow.signature import SIGNATURE_HEADER, check_signature
from routing.twilio_rest import RestUnavailable, TwilioRest
from simulator.twilio_api import TwilioEmulator

ACCOUNT = "AC" + "1" * 32
TOKEN = "emulator-token-0123456789"


@pytest.fixture
async def emulator() -> Any:
    emu = TwilioEmulator(account_sid=ACCOUNT, auth_token=TOKEN, api_keys={"SK" + "2" * 32: "key-secret"})
    server = TestServer(emu.app(), host="127.0.0.1")
    await server.start_server()
    emu.base_url = str(server.make_url("")).rstrip("/")  # type: ignore[attr-defined]
    yield emu
    await server.close()


@pytest.fixture
async def webhook_sink() -> Any:
    """A stand-in for callboard's webhooks: records signed requests and answers a fixed TwiML per path."""
    seen: list[tuple[str, dict[str, str], bool]] = []
    answers: dict[str, str] = {}

    async def handler(request: web.Request) -> web.Response:
        form = dict(await request.post())
        ok = check_signature(TOKEN, str(request.url), form, request.headers.get(SIGNATURE_HEADER)) is None
        seen.append((request.path, {k: str(v) for k, v in form.items()}, ok))
        return web.Response(text=answers.get(request.path, "<Response/>"), content_type="text/xml")

    app = web.Application()
    app.router.add_post("/{tail:.*}", handler)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield server, seen, answers
    await server.close()


def rest_for(emu: Any, **kw: Any) -> TwilioRest:
    return TwilioRest(account_sid=ACCOUNT, auth_token=TOKEN, api_url=emu.base_url, base_delay_s=0.01, **kw)


async def enqueue_caller(emu: TwilioEmulator, sink: Any, queue: str = "support") -> Any:
    server, _, answers = sink
    answers["/incoming"] = (f'<Response><Say>Hello</Say><Enqueue action="{server.make_url("/queue-result")}" '
                            f'waitUrl="{server.make_url("/wait")}">{queue}</Enqueue></Response>')
    return await emu.place_call(from_="+15551230001", to="+15550000001", url=str(server.make_url("/incoming")),
                                status_callback=str(server.make_url("/status")))


async def test_queues_and_members_have_twilio_shapes(emulator: Any, webhook_sink: Any) -> None:
    leg = await enqueue_caller(emulator, webhook_sink)
    rest = rest_for(emulator)
    try:
        sid = await rest.queue_sid("support")
        assert sid.startswith("QU") and len(sid) == 34
        queue = await rest.account().queues(sid).fetch_async()
        assert queue.friendly_name == "support" and queue.current_size == 1
        members = await rest.account().queues(sid).members.list_async()
        assert [m.call_sid for m in members] == [leg.sid] and members[0].position == 1
    finally:
        await rest.close()
    await emulator.settle()
    _, seen, _ = webhook_sink
    assert all(ok for _, _, ok in seen), "every webhook the emulator sends is signed with the auth token"
    assert any(path == "/wait" and params["QueueSid"] == sid for path, params, _ in seen)


async def test_unknown_member_is_twilio_error_json(emulator: Any) -> None:
    async with aiohttp.ClientSession(headers={"Authorization": aiohttp.encode_basic_auth(ACCOUNT, TOKEN)}) as http:
        url = f"{emulator.base_url}/2010-04-01/Accounts/{ACCOUNT}/Queues/QUnope/Members/CAnope.json"
        async with http.post(url, data={"Url": "http://127.0.0.1:1/x"}) as resp:
            body = await resp.json()
        assert resp.status == 404 and body["code"] == 20404 and body["status"] == 404 and body["more_info"]
    async with aiohttp.ClientSession(headers={"Authorization": aiohttp.encode_basic_auth(ACCOUNT, "wrong")}) as http:
        async with http.get(f"{emulator.base_url}/2010-04-01/Accounts/{ACCOUNT}/Queues.json") as resp:
            assert resp.status == 401 and (await resp.json())["code"] == 20003


async def test_rest_429_then_success_dequeues(emulator: Any, webhook_sink: Any) -> None:
    server, seen, answers = webhook_sink
    leg = await enqueue_caller(emulator, webhook_sink)
    answers["/connect"] = "<Response><Hangup/></Response>"
    rest = rest_for(emulator)
    try:
        await rest.queue_sid("support")
        emulator.inject(status=429, code=20429, times=2, path="/Members/")
        await rest.dequeue("support", leg.sid, str(server.make_url("/connect")))
        assert rest.retries == 2
        statuses = [r.status for r in emulator.requests if "/Members/" in r.path]
        assert statuses == [429, 429, 200]
    finally:
        await rest.close()
    await emulator.settle()
    assert emulator.queue_named("support").members == []
    assert [p for p, _, _ in seen if p == "/connect"] == ["/connect"]
    # a redirected member's <Enqueue action> is not requested: no queue-result for a dequeue
    assert not any(p == "/queue-result" for p, _, _ in seen)


async def test_rest_gives_up_after_every_attempt_and_never_retries_a_4xx(emulator: Any, webhook_sink: Any) -> None:
    leg = await enqueue_caller(emulator, webhook_sink)
    rest = rest_for(emulator, attempts=3)
    try:
        await rest.queue_sid("support")
        emulator.inject(status=503, code=20503, times=5, path="/Members/")
        with pytest.raises(RestUnavailable):
            await rest.dequeue("support", leg.sid, "http://127.0.0.1:1/connect")
        emulator.faults.clear()
        with pytest.raises(TwilioRestException) as info:
            await rest.dequeue("support", "CA" + "9" * 32, "http://127.0.0.1:1/connect")
        assert info.value.status == 404
        assert emulator.queue_named("support").members == [leg.sid], "a failed dequeue leaves the caller queued"
    finally:
        await rest.close()


async def test_rest_timeout_is_retried(emulator: Any, webhook_sink: Any) -> None:
    leg = await enqueue_caller(emulator, webhook_sink)
    rest = TwilioRest(account_sid=ACCOUNT, auth_token=TOKEN, api_url=emulator.base_url, base_delay_s=0.01,
                      timeout_s=0.5)
    try:
        await rest.queue_sid("support")
        emulator.inject(status=200, code=0, times=1, delay_s=2.0, path="/Members/")
        await rest.dequeue("support", leg.sid, "http://127.0.0.1:1/connect")
        assert rest.retries == 1
    finally:
        await rest.close()


async def test_api_key_credentials_are_accepted(emulator: Any, webhook_sink: Any) -> None:
    await enqueue_caller(emulator, webhook_sink)
    rest = TwilioRest(account_sid=ACCOUNT, api_key="SK" + "2" * 32, api_secret="key-secret",
                      api_url=emulator.base_url)
    try:
        assert (await rest.queue_sid("support")).startswith("QU")
    finally:
        await rest.close()


async def test_dial_client_rings_softphone_then_bridge_and_dial_result(emulator: Any, webhook_sink: Any) -> None:
    server, seen, answers = webhook_sink
    leg = await enqueue_caller(emulator, webhook_sink)
    rang: list[dict[str, str]] = []

    async def phone(params: dict[str, str], call: Any) -> str:
        rang.append(params)
        return "answer"

    emulator.softphones["alice"] = phone
    answers["/connect"] = (f'<Response><Dial action="{server.make_url("/dial-result")}"><Client '
                           f'url="{server.make_url("/bridge")}"><Identity>alice</Identity>'
                           f'<Parameter name="offer_id" value="of1"/></Client></Dial></Response>')
    answers["/dial-result"] = "<Response><Hangup/></Response>"
    rest = rest_for(emulator)
    try:
        await rest.dequeue("support", leg.sid, str(server.make_url("/connect")))
    finally:
        await rest.close()
    await emulator.settle()
    assert rang == [{"offer_id": "of1"}]
    bridge = next(params for path, params, _ in seen if path == "/bridge")
    assert bridge["ParentCallSid"] == leg.sid and bridge["To"] == "client:alice"
    child = bridge["CallSid"]
    await emulator.hangup(child)  # the agent hangs up
    await emulator.settle()
    result = next(params for path, params, _ in seen if path == "/dial-result")
    assert result["DialCallStatus"] == "completed" and result["DialCallSid"] == child
    assert emulator.calls[leg.sid].status == "completed"
    assert any(path == "/status" and params["CallSid"] == leg.sid for path, params, _ in seen)


async def test_one_server_moves_a_queued_caller_into_a_conference_and_rings_participants(webhook_sink: Any) -> None:
    """Queues, Members, Conferences and Participants on the one emulator (`start()`), through the `twilio`
    package, with Twilio's signed callbacks: joins, holds, leaves, the end, participants' call statuses."""
    server, seen, answers = webhook_sink
    emu = TwilioEmulator(ACCOUNT, TOKEN)
    base = await emu.start()
    emu.softphones["carol"] = "wait"  # carol's phone rings until the conference ends
    url = lambda path: str(server.make_url(path))  # noqa: E731
    answers["/conference"] = (f'<Response><Dial><Conference region="jp1" statusCallback="{url("/events")}" '
                              f'statusCallbackEvent="join leave hold" endConferenceOnExit="true">room-1'
                              f'</Conference></Dial></Response>')
    answers["/hold-music"] = '<Response><Pause length="20"/></Response>'
    rest = TwilioRest(account_sid=ACCOUNT, auth_token=TOKEN, api_url=base, base_delay_s=0.01)
    try:
        caller = await enqueue_caller(emu, webhook_sink)
        sid = await rest.queue_sid("support")
        await rest.dequeue("support", caller.sid, url("/conference"))
        await emu.settle()
        room = emu.conference_named("room-1")
        assert room is not None and room.region == "jp1" and list(room.participants) == [caller.sid]
        assert caller.queue is None and emu.queues[sid].members == []
        conf = rest.account().conferences("room-1")
        bob = await conf.participants.create_async(from_="+15550000001", to="client:bob",
                                                   status_callback=url("/participant"),
                                                   status_callback_event=["initiated", "answered", "completed"])
        carol = await conf.participants.create_async(from_="+15550000001", to="client:carol",
                                                     status_callback=url("/participant"),
                                                     status_callback_event=["ringing", "completed"])
        await emu.settle()
        assert set(room.participants) == {caller.sid, bob.call_sid} and emu.ringing == {carol.call_sid: "carol"}
        await conf.participants(caller.sid).update_async(hold=True, hold_url=url("/hold-music"))
        await emu.settle()
        assert room.participants[caller.sid].hold and "<Pause" in (room.participants[caller.sid].hold_twiml or "")
        assert await conf.participants(bob.call_sid).delete_async()
        await emu.settle()
        assert emu.calls[bob.call_sid].status == "completed" and bob.call_sid in room.left
        await emu.hangup(caller.sid)  # the caller leaves: the conference ends, carol's ringing call is canceled
        await emu.settle()
        assert room.status == "completed" and emu.calls[carol.call_sid].status == "canceled"
    finally:
        await rest.close()
        await emu.stop()
    events = [f["StatusCallbackEvent"] for path, f, _ in seen if path == "/events"]
    assert events == ["participant-join", "participant-join", "participant-hold", "participant-leave",
                      "participant-leave"]
    statuses = [(f["To"], f["CallStatus"]) for path, f, _ in seen if path == "/participant"]
    assert [s for to, s in statuses if to == "client:bob"] == ["initiated", "in-progress", "completed"]
    assert [s for to, s in statuses if to == "client:carol"] == ["ringing", "canceled"]
    assert all(ok for _, _, ok in seen)  # every callback signed as Twilio signs
    created = [r for r in emu.requests if r.method == "POST" and r.path.endswith("/Participants.json")]
    assert [r.status for r in created] == [201, 201]
    assert created[0].form["StatusCallbackEvent"] == "initiated answered completed"  # repeated keys, one value
    assert [r.status for r in emu.requests if r.method == "DELETE"] == [204]
