"""Twilio's Conferences and Participants, emulated on loopback: the part of the REST emulator the softphone needs.

An aiohttp app speaking the 2010-04-01 API shapes for Calls update (Url, Status=completed), Conferences
(read, update Status=completed) and Participants (create, read, list, update Hold/HoldUrl/Muted/Coaching/
CallSidToCoach, delete), over an in-memory model of calls and conferences. Like Twilio it answers the REST
request first and then does what was asked: it fetches a redirected call's Url (signed with the auth token,
as Twilio signs), acts on the TwiML (`<Dial><Conference>`, `<Enqueue>`, `<Hangup>`), rings the emulated
softphones of participants (`client:<identity>`: answer, no-answer or wait for the test), and sends the
participant status callbacks (initiated, ringing, answered, completed) and the conference status callbacks
(participant-join, participant-leave, participant-hold, participant-unhold, conference-end) as Twilio does.

Every REST request is kept in `requests` so tests can assert exactly what callboard asked of Twilio.
Errors are Twilio's error JSON (`code`, `message`, `more_info`, `status`). `fail_next` injects 429/5xx.

It is written as a route table plus a model so that the routing room's emulator (queues, members,
`<Dial><Client>`) can mount the same routes on its app (see `routes()`).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from callflow.signature import SIGNATURE_HEADER, sign

log = logging.getLogger(__name__)

API = "/2010-04-01/Accounts/{account}"
_counter = itertools.count(1)


def new_sid(prefix: str) -> str:
    return prefix + secrets.token_hex(15) + f"{next(_counter) % 256:02x}"


@dataclass
class EmCall:
    sid: str
    from_: str
    to: str
    status: str = "in-progress"
    status_callback: str | None = None
    status_events: tuple[str, ...] = ("completed",)
    conference: str | None = None  # conference sid it is in
    queue: str | None = None
    twiml: list[str] = field(default_factory=list)  # every TwiML document it ran


@dataclass
class EmParticipant:
    call_sid: str
    label: str | None = None
    muted: bool = False
    hold: bool = False
    hold_url: str | None = None
    hold_twiml: str | None = None
    coaching: bool = False
    call_sid_to_coach: str | None = None
    end_conference_on_exit: bool = False
    status: str = "connected"


@dataclass
class EmConference:
    sid: str
    name: str
    region: str = "us1"
    status: str = "in-progress"
    status_callback: str | None = None
    status_events: tuple[str, ...] = ()
    participants: dict[str, EmParticipant] = field(default_factory=dict)
    left: list[str] = field(default_factory=list)


class ConferenceEmulator:
    """The model, the routes, and the emulated softphones (policy per client identity)."""

    def __init__(self, account_sid: str, auth_token: str) -> None:
        self.account_sid, self.auth_token = account_sid, auth_token
        self.calls: dict[str, EmCall] = {}
        self.conferences: dict[str, EmConference] = {}
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.callbacks: list[tuple[str, dict[str, str], int]] = []  # (url, params, status) we sent
        self.softphones: dict[str, str] = {}  # identity -> "answer" | "no-answer" | "wait"
        self.ringing: dict[str, str] = {}  # call sid -> identity, while a "wait" softphone rings
        self._pending: dict[str, tuple[EmConference, EmParticipant]] = {}  # rung participants not yet answered
        self.ring_delay_s = 0.02
        self.fail_next: list[tuple[int, int]] = []  # (HTTP status, Twilio code) for the next requests
        self._tasks: set[asyncio.Task[Any]] = set()
        self._session: aiohttp.ClientSession | None = None

    # -- app ---------------------------------------------------------------------------------------------

    def routes(self) -> list[web.RouteDef]:
        p = API
        return [
            web.get(p + "/Queues.json", self._list_queues),
            web.post(p + "/Queues/{queue}/Members/{call}.json", self._dequeue_member),
            web.post(p + "/Calls/{call}.json", self._update_call),
            web.get(p + "/Calls/{call}.json", self._read_call),
            web.get(p + "/Conferences/{conf}.json", self._read_conference),
            web.post(p + "/Conferences/{conf}.json", self._update_conference),
            web.post(p + "/Conferences/{conf}/Participants.json", self._create_participant),
            web.get(p + "/Conferences/{conf}/Participants.json", self._list_participants),
            web.get(p + "/Conferences/{conf}/Participants/{part}.json", self._read_participant),
            web.post(p + "/Conferences/{conf}/Participants/{part}.json", self._update_participant),
            web.delete(p + "/Conferences/{conf}/Participants/{part}.json", self._delete_participant),
        ]

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._record_and_fail])
        app.add_routes(self.routes())
        app.on_cleanup.append(self._close)
        return app

    async def _close(self, app: web.Application) -> None:
        await self.settle()
        if self._session is not None:
            await self._session.close()

    async def settle(self, timeout: float = 10.0) -> None:
        """Wait until every callback and TwiML fetch started so far (and those they start) is done."""
        deadline = asyncio.get_running_loop().time() + timeout
        while self._tasks:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                raise TimeoutError("emulator tasks did not settle")
            await asyncio.wait(set(self._tasks), timeout=left)

    @web.middleware
    async def _record_and_fail(self, request: web.Request, handler: Any) -> web.StreamResponse:
        form = dict(await request.post()) if request.method == "POST" else {}
        self.requests.append((request.method, request.path, {k: str(v) for k, v in form.items()}))
        if request.match_info.get("account") not in (None, self.account_sid):
            return _error(404, 20404, "The requested resource was not found")
        if self.fail_next:
            status, code = self.fail_next.pop(0)
            return _error(status, code, "Too Many Requests" if status == 429 else "Service unavailable (injected)")
        return await handler(request)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- the model seen from tests -----------------------------------------------------------------------

    def add_call(self, sid: str, from_: str, to: str, *, status_callback: str | None = None,
                 queue: str | None = None) -> EmCall:
        """A call that exists on Twilio's side already (a caller waiting in a queue, an agent's leg)."""
        call = EmCall(sid, from_, to, status="queued" if queue else "in-progress", status_callback=status_callback,
                      queue=queue)
        self.calls[sid] = call
        return call

    def conference_named(self, name: str) -> EmConference | None:
        return next((c for c in self.conferences.values() if c.name == name and c.status != "completed"), None)

    async def run_twiml(self, call_sid: str, twiml: str) -> None:
        """Act on a TwiML document for a call, as Twilio would (the verbs callboard's bridge uses)."""
        call = self.calls[call_sid]
        call.twiml.append(twiml)
        root = ET.fromstring(twiml)
        for verb in root:
            if verb.tag == "Dial":
                conf = verb.find("Conference")
                if conf is not None:
                    await self._join(call, conf)
                    return
            elif verb.tag == "Enqueue":
                call.queue, call.status = (verb.text or "").strip(), "queued"
                return
            elif verb.tag == "Hangup":
                await self.end_call(call_sid, "completed")
                return

    async def answer(self, identity: str) -> None:
        """A "wait" softphone answers its ringing call."""
        for sid, who in list(self.ringing.items()):
            if who == identity:
                del self.ringing[sid]
                await self._answered(sid)

    async def end_call(self, call_sid: str, status: str = "completed") -> None:
        call = self.calls.get(call_sid)
        if call is None or call.status in ("completed", "busy", "failed", "no-answer", "canceled"):
            return
        call.status = status
        self.ringing.pop(call_sid, None)
        if call.conference:
            await self._leave(call)
        if call.status_callback and (status != "completed" or "completed" in call.status_events):
            await self._post(call.status_callback, {"CallSid": call_sid, "CallStatus": status, "From": call.from_,
                                                    "To": call.to, "AccountSid": self.account_sid})

    # -- conferences -------------------------------------------------------------------------------------

    async def _join(self, call: EmCall, el: ET.Element) -> None:
        name = (el.text or "").strip()
        conf = self.conference_named(name)
        if conf is None:
            conf = EmConference(new_sid("CF"), name, region=el.get("region", "us1"))
            self.conferences[conf.sid] = conf
        if conf.status_callback is None and el.get("statusCallback"):
            conf.status_callback = el.get("statusCallback")
            conf.status_events = tuple((el.get("statusCallbackEvent") or "").split())
        part = EmParticipant(call.sid, label=el.get("participantLabel"),
                             end_conference_on_exit=el.get("endConferenceOnExit") == "true")
        await self._add(conf, call, part)

    async def _add(self, conf: EmConference, call: EmCall, part: EmParticipant) -> None:
        call.conference, call.queue, call.status = conf.sid, None, "in-progress"
        conf.participants[call.sid] = part
        await self._conf_event(conf, "participant-join", "join", part)

    async def _leave(self, call: EmCall) -> None:
        conf = self.conferences.get(call.conference or "")
        call.conference = None
        if conf is None or call.sid not in conf.participants:
            return
        part = conf.participants.pop(call.sid)
        conf.left.append(call.sid)
        await self._conf_event(conf, "participant-leave", "leave", part)
        if part.end_conference_on_exit and conf.status != "completed":
            await self._end_conference(conf)

    async def _end_conference(self, conf: EmConference) -> None:
        conf.status = "completed"
        for sid in list(conf.participants):
            await self.end_call(sid)
        await self._conf_event(conf, "conference-end", "end", None)

    async def _conf_event(self, conf: EmConference, event: str, short: str, part: EmParticipant | None) -> None:
        if not conf.status_callback or short not in conf.status_events:
            return
        params = {"ConferenceSid": conf.sid, "FriendlyName": conf.name, "StatusCallbackEvent": event,
                  "AccountSid": self.account_sid}
        if part is not None:
            params.update({"CallSid": part.call_sid, "Muted": _b(part.muted), "Hold": _b(part.hold),
                           "Coaching": _b(part.coaching)})
            if part.label:
                params["ParticipantLabel"] = part.label
        await self._post(conf.status_callback, params)

    # -- outgoing requests (signed like Twilio's) --------------------------------------------------------

    async def _post(self, url: str, params: dict[str, str]) -> tuple[int, str]:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        headers = {SIGNATURE_HEADER: sign(self.auth_token, url, params)}
        try:
            async with self._session.post(url, data=params, headers=headers) as resp:
                text = await resp.text()
                self.callbacks.append((url, params, resp.status))
                if resp.status >= 400:
                    log.warning("emulator: %s answered %s: %s", url, resp.status, text[:200])
                return resp.status, text
        except aiohttp.ClientError as exc:
            self.callbacks.append((url, params, 0))
            log.warning("emulator: %s unreachable: %s", url, exc)
            return 0, ""

    async def _fetch_and_run(self, call: EmCall, url: str) -> None:
        status, text = await self._post(url, {"CallSid": call.sid, "From": call.from_, "To": call.to,
                                              "CallStatus": "in-progress", "AccountSid": self.account_sid})
        if status == 200:
            await self.run_twiml(call.sid, text)

    # -- REST views --------------------------------------------------------------------------------------

    # -- queues: just enough for routing's dequeue of an accepted offer (routing's emulator has the rest) ---

    @staticmethod
    def queue_sid(name: str) -> str:
        import hashlib

        return "QU" + hashlib.sha256(name.encode()).hexdigest()[:32]

    async def _list_queues(self, request: web.Request) -> web.StreamResponse:
        names = sorted({c.queue for c in self.calls.values() if c.queue})
        uri = f"/2010-04-01/Accounts/{self.account_sid}/Queues.json"
        queues = [{"sid": self.queue_sid(n), "friendly_name": n, "account_sid": self.account_sid,
                   "current_size": sum(1 for c in self.calls.values() if c.queue == n),
                   "uri": f"/2010-04-01/Accounts/{self.account_sid}/Queues/{self.queue_sid(n)}.json"} for n in names]
        return web.json_response({"queues": queues, "page": 0, "page_size": 1000, "start": 0,
                                  "end": max(len(queues) - 1, 0), "first_page_uri": uri, "next_page_uri": None,
                                  "previous_page_uri": None, "uri": uri})

    async def _dequeue_member(self, request: web.Request) -> web.StreamResponse:
        call = self.calls.get(request.match_info["call"])
        if call is None or call.queue is None or self.queue_sid(call.queue) != request.match_info["queue"]:
            return _error(404, 20404, f"The requested resource {request.path} was not found")
        form = await request.post()
        url = str(form.get("Url") or "")
        if not url:
            return _error(400, 21205, "Url parameter is required")
        body = {"call_sid": call.sid, "queue_sid": self.queue_sid(call.queue), "position": 1, "wait_time": 0,
                "account_sid": self.account_sid}
        call.queue = None
        self._spawn(self._fetch_and_run(call, url))
        return web.json_response(body)

    async def _update_call(self, request: web.Request) -> web.StreamResponse:
        call = self.calls.get(request.match_info["call"])
        if call is None:
            return _error(404, 20404, f"The requested resource {request.path} was not found")
        form = await request.post()
        if call.status in ("completed", "busy", "failed", "no-answer", "canceled"):
            return _error(400, 21220, "Call is not in-progress. Cannot redirect.")
        if form.get("Status") == "completed":
            self._spawn(self.end_call(call.sid, "completed"))
        elif form.get("Url"):
            url = str(form["Url"])

            async def redirect() -> None:
                if call.conference:
                    await self._leave(call)
                call.queue = None
                await self._fetch_and_run(call, url)

            self._spawn(redirect())
        else:
            return _error(400, 21218, "Invalid 'Url' or 'Status' parameter")
        return web.json_response(self._call_json(call))

    async def _read_call(self, request: web.Request) -> web.StreamResponse:
        call = self.calls.get(request.match_info["call"])
        if call is None:
            return _error(404, 20404, f"The requested resource {request.path} was not found")
        return web.json_response(self._call_json(call))

    def _conf_of(self, request: web.Request) -> EmConference | None:
        key = request.match_info["conf"]
        return self.conferences.get(key) or self.conference_named(key)

    async def _read_conference(self, request: web.Request) -> web.StreamResponse:
        conf = self._conf_of(request)
        if conf is None:
            return _error(404, 20404, f"The requested resource {request.path} was not found")
        return web.json_response(self._conf_json(conf))

    async def _update_conference(self, request: web.Request) -> web.StreamResponse:
        conf = self._conf_of(request)
        if conf is None:
            return _error(404, 20404, f"The requested resource {request.path} was not found")
        form = await request.post()
        if form.get("Status") == "completed":
            self._spawn(self._end_conference(conf))
        return web.json_response(self._conf_json(conf))

    async def _create_participant(self, request: web.Request) -> web.StreamResponse:
        key = request.match_info["conf"]
        form = await request.post()
        to, from_ = str(form.get("To", "")), str(form.get("From", ""))
        if not to or not from_:
            return _error(400, 21604 if not to else 21603, "A 'To' and a 'From' phone number or client are required.")
        conf = self.conferences.get(key) or self.conference_named(key)
        if conf is None:
            if key.startswith("CF"):
                return _error(404, 20404, f"The requested resource {request.path} was not found")
            # Twilio creates a conference named like this; the first participant sets its region and callback
            conf = EmConference(new_sid("CF"), key, region=str(form.get("Region") or "us1"),
                                status_callback=str(form.get("ConferenceStatusCallback") or "") or None,
                                status_events=tuple(" ".join(form.getall("ConferenceStatusCallbackEvent", [])).split()))
            self.conferences[conf.sid] = conf
        if form.get("Coaching") == "true":
            coached = str(form.get("CallSidToCoach", ""))
            if coached not in conf.participants:
                return _error(400, 16004, "CallSidToCoach is not a participant of this conference")
        call = EmCall(new_sid("CA"), from_, to, status="queued", status_callback=str(form.get("StatusCallback") or "") or None,
                      status_events=tuple(form.getall("StatusCallbackEvent", [])) or ("completed",))
        events = []
        for value in call.status_events:
            events.extend(value.split())
        call.status_events = tuple(events)
        self.calls[call.sid] = call
        part = EmParticipant(call.sid, label=str(form.get("Label") or "") or None, muted=form.get("Muted") == "true",
                             coaching=form.get("Coaching") == "true",
                             call_sid_to_coach=str(form.get("CallSidToCoach") or "") or None,
                             end_conference_on_exit=form.get("EndConferenceOnExit") == "true", status="queued")
        self._spawn(self._ring(conf, call, part))
        return web.json_response(self._part_json(conf, part), status=201)

    async def _ring(self, conf: EmConference, call: EmCall, part: EmParticipant) -> None:
        await self._status(call, "initiated", "initiated")
        await asyncio.sleep(self.ring_delay_s)
        call.status = "ringing"
        await self._status(call, "ringing", "ringing")
        identity = call.to.removeprefix("client:").split("?")[0]  # client:alice?offer_id=...: custom parameters
        policy = self.softphones.get(identity, "answer")
        if policy == "answer":
            await asyncio.sleep(self.ring_delay_s)
            self._pending[call.sid] = (conf, part)
            await self._answered(call.sid)
        elif policy == "wait":
            self._pending[call.sid] = (conf, part)
            self.ringing[call.sid] = identity
        else:
            await self.end_call(call.sid, "no-answer")

    async def _answered(self, call_sid: str) -> None:
        conf, part = self._pending.pop(call_sid)
        call = self.calls[call_sid]
        if call.status != "ringing":
            return
        call.status = "in-progress"
        part.status = "connected"
        await self._status(call, "in-progress", "answered")
        await self._add(conf, call, part)

    async def _status(self, call: EmCall, status: str, event: str) -> None:
        if call.status_callback and event in call.status_events:
            await self._post(call.status_callback, {"CallSid": call.sid, "CallStatus": status, "From": call.from_,
                                                    "To": call.to, "AccountSid": self.account_sid})

    def _part_of(self, request: web.Request) -> tuple[EmConference | None, EmParticipant | None]:
        conf = self._conf_of(request)
        if conf is None:
            return None, None
        key = request.match_info["part"]
        part = conf.participants.get(key) or next((p for p in conf.participants.values() if p.label == key), None)
        return conf, part

    async def _list_participants(self, request: web.Request) -> web.StreamResponse:
        conf = self._conf_of(request)
        if conf is None:
            return _error(404, 20404, f"The requested resource {request.path} was not found")
        return web.json_response({"participants": [self._part_json(conf, p) for p in conf.participants.values()],
                                  "page": 0, "page_size": 50, "next_page_uri": None})

    async def _read_participant(self, request: web.Request) -> web.StreamResponse:
        conf, part = self._part_of(request)
        if conf is None or part is None:
            return _error(404, 20404, f"The requested resource {request.path} was not found")
        return web.json_response(self._part_json(conf, part))

    async def _update_participant(self, request: web.Request) -> web.StreamResponse:
        conf, part = self._part_of(request)
        if conf is None or part is None:
            return _error(404, 20404, f"The requested resource {request.path} was not found")
        form = await request.post()
        if "Hold" in form:
            was = part.hold
            part.hold = form["Hold"] == "true"
            part.hold_url = str(form.get("HoldUrl") or "") or None
            if part.hold and part.hold_url:
                hold_url = part.hold_url

                async def fetch_hold() -> None:
                    status, text = await self._post(hold_url, {"CallSid": part.call_sid, "AccountSid": self.account_sid})
                    part.hold_twiml = text if status == 200 else None

                self._spawn(fetch_hold())
            if was != part.hold:
                self._spawn(self._conf_event(conf, "participant-hold" if part.hold else "participant-unhold", "hold", part))
        if "Muted" in form:
            part.muted = form["Muted"] == "true"
        if "Coaching" in form:
            part.coaching = form["Coaching"] == "true"
        if "CallSidToCoach" in form:
            part.call_sid_to_coach = str(form["CallSidToCoach"]) or None
        return web.json_response(self._part_json(conf, part))

    async def _delete_participant(self, request: web.Request) -> web.StreamResponse:
        conf, part = self._part_of(request)
        if conf is None or part is None:
            return _error(404, 20404, f"The requested resource {request.path} was not found")
        self._spawn(self.end_call(part.call_sid, "completed"))
        return web.Response(status=204)

    # -- JSON shapes (Twilio's field names) --------------------------------------------------------------

    def _call_json(self, call: EmCall) -> dict[str, Any]:
        return {"sid": call.sid, "account_sid": self.account_sid, "from": call.from_, "to": call.to,
                "status": call.status, "uri": f"/2010-04-01/Accounts/{self.account_sid}/Calls/{call.sid}.json"}

    def _conf_json(self, conf: EmConference) -> dict[str, Any]:
        return {"sid": conf.sid, "account_sid": self.account_sid, "friendly_name": conf.name, "region": conf.region,
                "status": conf.status, "uri": f"/2010-04-01/Accounts/{self.account_sid}/Conferences/{conf.sid}.json"}

    def _part_json(self, conf: EmConference, part: EmParticipant) -> dict[str, Any]:
        return {"account_sid": self.account_sid, "call_sid": part.call_sid, "conference_sid": conf.sid,
                "label": part.label, "muted": part.muted, "hold": part.hold, "coaching": part.coaching,
                "call_sid_to_coach": part.call_sid_to_coach, "end_conference_on_exit": part.end_conference_on_exit,
                "start_conference_on_enter": True, "status": part.status,
                "uri": f"/2010-04-01/Accounts/{self.account_sid}/Conferences/{conf.sid}/Participants/{part.call_sid}.json"}


def _b(value: bool) -> str:
    return "true" if value else "false"


def _error(status: int, code: int, message: str) -> web.Response:
    return web.json_response({"code": code, "message": message, "more_info": f"https://www.twilio.com/docs/errors/{code}",
                              "status": status}, status=status)
