"""The Twilio emulator on loopback: one server for the 2010-04-01 REST API callboard uses and Twilio's side of calls.

Why: routing dequeues callers and the softphone moves them into conferences through Twilio's REST API, and
then both follow the webhooks Twilio sends after that. Tests, benches and the demo run that whole path here,
on 127.0.0.1, with callboard talking to it through the `twilio` package exactly as it talks to
api.twilio.com (`TWILIO_API_URL`). One class, `TwilioEmulator`, one app (`app()`, or `start()` for a free
port) answers all of it:

- Queues (list, create, read), Members (list, read, dequeue = redirect to `Url`), Calls (read; update with
  `Url`, `Twiml` or `Status=completed`), Conferences (read; update `Status=completed`) and Participants
  (create = ring a client into a conference, list, read, update `Hold`/`HoldUrl`/`Muted`/`Coaching`/
  `CallSidToCoach`, delete);
- an in-memory model: `EmuCall` (one call leg: its queue, its `<Dial>` bridge or its conference, every
  TwiML document it ran), `EmuQueue` (members in FIFO order), `EmuConference` and `EmuParticipant`;
- a TwiML runner that executes what callboard answers: Say/Play/Pause are skipped (no audio here),
  Enqueue (its waitUrl's first turn is requested), Redirect, Hangup, `<Dial><Client>` (rings an emulated
  softphone, then the Client's url, then bridges) and `<Dial><Conference>` (joins, creating it in its
  `region`);
- Twilio's callbacks, signed with the auth token (`X-Twilio-Signature`) as Twilio signs: a call's status
  callback (for participants: initiated, ringing, answered, completed as asked), `<Enqueue action>`,
  `<Dial action>`, and the conference status callback (participant-join, participant-leave,
  participant-hold, participant-unhold, conference-end, as asked by `statusCallbackEvent`).

Like Twilio it answers a REST request first and then does what was asked, in background tasks (`settle()`
waits for them). Every REST request is kept in `requests` (each unpacks as (method, path, form) and carries
`.status`), every request the emulator sent in `webhooks`. Errors are Twilio's error JSON (`code`,
`message`, `more_info`, `status`). Faults: `inject()` (or `POST /_emulator/faults`) makes the next N
matching requests answer a status and Twilio code (429 with 20429, 500, 503) or be delayed; `fail_next`
is a list of (status, code) for the very next requests.

Softphones decide what an emulated client does when it rings: `softphones[identity]` is either a policy
string ("answer", "reject" (busy), "no-answer", "wait" (until `answer(identity)`)) or an async callable
`(params, call) -> policy` given the Client's custom parameters ({"offer_id": ...}) and, for a
`<Dial><Client>`, the parent call, for a Participants create, the participant's own leg. An identity with
no softphone uses `default_softphone`; failing that a `<Dial><Client>` rings out and a participant is
answered (`unregistered_participant`).

`simulator/conferences.py` re-exports this class as `ConferenceEmulator` (and the old model names) for one
release; new code imports from here.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl
from xml.etree import ElementTree

import aiohttp
from aiohttp import web

from callflow.signature import SIGNATURE_HEADER, sign

log = logging.getLogger("callboard.simulator.twilio")

API_PREFIX = "/2010-04-01/Accounts/{account}"
DEFAULT_ACCOUNT_SID = "AC" + "0" * 32
RING_TIMEOUT_S = 30.0  # Twilio's <Dial timeout> default; softphones that "miss" make it ring this long
MORE_INFO = "https://www.twilio.com/docs/errors/{code}"
ENDED = frozenset({"completed", "busy", "failed", "no-answer", "canceled"})
SETTLE_TIMEOUT_S = 10.0

# What an emulated client does when it rings: a policy, or an async callable returning one.
Softphone = Callable[[dict[str, str], "EmuCall"], Awaitable[str]]
SoftphonePolicy = Softphone | str


def new_sid(prefix: str) -> str:
    return prefix + secrets.token_hex(16)


def rfc2822(epoch_s: float) -> str:
    return email.utils.formatdate(epoch_s, usegmt=True)


class ApiError(Exception):
    """A Twilio REST error: HTTP status and Twilio's error code, in Twilio's JSON shape."""

    def __init__(self, status: int, code: int, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message

    def body(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "more_info": MORE_INFO.format(code=self.code),
                "status": self.status}


class RestRequest(tuple[str, str, dict[str, str]]):
    """One REST request the emulator answered: unpacks as (method, path, form); `.status` is what it answered."""

    status: int

    def __new__(cls, method: str, path: str, form: dict[str, str], status: int) -> RestRequest:
        self = super().__new__(cls, (method, path, form))
        self.status = status
        return self

    @property
    def method(self) -> str:
        return self[0]

    @property
    def path(self) -> str:
        return self[1]

    @property
    def form(self) -> dict[str, str]:
        return self[2]


@dataclass
class Fault:
    """Answer the next `times` REST requests (whose path contains `path`) with this status and code."""

    status: int = 429
    code: int = 20429
    times: int = 1
    delay_s: float = 0.0
    path: str = ""


@dataclass
class EmuCall:
    """One call leg: who, where it stands (queue, bridge, conference), and what Twilio would report about it."""

    sid: str
    from_: str
    to: str
    direction: str = "inbound"
    status: str = "queued"
    parent_sid: str | None = None
    status_callback: str | None = None
    status_events: tuple[str, ...] = ("completed",)  # StatusCallbackEvent of a participant's call
    queue_sid: str | None = None  # while it waits in a queue
    queue: str | None = None  # that queue's friendly name
    enqueue_action: str | None = None
    enqueued_at: float = 0.0
    started_at: float = field(default_factory=time.time)
    answered_at: float | None = None
    bridged_to: str | None = None  # the other leg while a <Dial><Client> connects them
    dial_action: str | None = None  # the <Dial action> to request when the bridged dial ends
    conference: str | None = None  # the conference sid it is in
    twiml: list[str] = field(default_factory=list)  # every TwiML document it ran
    events: list[str] = field(default_factory=list)  # what happened, for tests and the demo's report
    ended: asyncio.Event = field(default_factory=asyncio.Event)

    def json(self, account: str) -> dict[str, Any]:
        duration = None
        if self.status == "completed" and self.answered_at is not None:
            duration = str(int(time.time() - self.answered_at))
        return {"sid": self.sid, "account_sid": account, "from": self.from_, "to": self.to,
                "status": self.status, "direction": self.direction, "parent_call_sid": self.parent_sid,
                "start_time": rfc2822(self.started_at), "duration": duration, "queue_time": None,
                "api_version": "2010-04-01", "uri": f"/2010-04-01/Accounts/{account}/Calls/{self.sid}.json"}


@dataclass
class EmuQueue:
    sid: str
    friendly_name: str
    max_size: int = 100
    members: list[str] = field(default_factory=list)  # CallSids, front first
    created_at: float = field(default_factory=time.time)

    def json(self, account: str, calls: dict[str, EmuCall]) -> dict[str, Any]:
        now = time.time()
        waits = [now - calls[s].enqueued_at for s in self.members if s in calls]
        uri = f"/2010-04-01/Accounts/{account}/Queues/{self.sid}"
        return {"sid": self.sid, "account_sid": account, "friendly_name": self.friendly_name,
                "current_size": len(self.members), "max_size": self.max_size,
                "average_wait_time": int(sum(waits) / len(waits)) if waits else 0,
                "date_created": rfc2822(self.created_at), "date_updated": rfc2822(now),
                "uri": uri + ".json", "subresource_uris": {"members": uri + "/Members.json"}}


@dataclass
class EmuParticipant:
    call_sid: str
    label: str | None = None
    muted: bool = False
    hold: bool = False
    hold_url: str | None = None
    hold_twiml: str | None = None  # what the HoldUrl answered
    coaching: bool = False
    call_sid_to_coach: str | None = None
    end_conference_on_exit: bool = False
    status: str = "connected"

    def json(self, account: str, conference: str) -> dict[str, Any]:
        return {"account_sid": account, "call_sid": self.call_sid, "conference_sid": conference,
                "label": self.label, "muted": self.muted, "hold": self.hold, "coaching": self.coaching,
                "call_sid_to_coach": self.call_sid_to_coach, "end_conference_on_exit": self.end_conference_on_exit,
                "start_conference_on_enter": True, "status": self.status,
                "uri": f"/2010-04-01/Accounts/{account}/Conferences/{conference}/Participants/{self.call_sid}.json"}


@dataclass
class EmuConference:
    sid: str
    name: str
    region: str = "us1"
    status: str = "in-progress"
    status_callback: str | None = None
    status_events: tuple[str, ...] = ()  # short names: join leave hold end ...
    participants: dict[str, EmuParticipant] = field(default_factory=dict)
    left: list[str] = field(default_factory=list)  # CallSids that left, in order

    def json(self, account: str) -> dict[str, Any]:
        return {"sid": self.sid, "account_sid": account, "friendly_name": self.name, "region": self.region,
                "status": self.status, "uri": f"/2010-04-01/Accounts/{account}/Conferences/{self.sid}.json"}


# The route table: (method, path pattern under API_PREFIX, handler method name).
ROUTES: list[tuple[str, str, str]] = [
    ("GET", "/Queues.json", "list_queues"),
    ("POST", "/Queues.json", "create_queue"),
    ("GET", "/Queues/{queue}.json", "read_queue"),
    ("GET", "/Queues/{queue}/Members.json", "list_members"),
    ("GET", "/Queues/{queue}/Members/{call}.json", "read_member"),
    ("POST", "/Queues/{queue}/Members/{call}.json", "dequeue_member"),
    ("GET", "/Calls/{call}.json", "read_call"),
    ("POST", "/Calls/{call}.json", "update_call"),
    ("GET", "/Conferences/{conf}.json", "read_conference"),
    ("POST", "/Conferences/{conf}.json", "update_conference"),
    ("GET", "/Conferences/{conf}/Participants.json", "list_participants"),
    ("POST", "/Conferences/{conf}/Participants.json", "create_participant"),
    ("GET", "/Conferences/{conf}/Participants/{part}.json", "read_participant"),
    ("POST", "/Conferences/{conf}/Participants/{part}.json", "update_participant"),
    ("DELETE", "/Conferences/{conf}/Participants/{part}.json", "delete_participant"),
]
CREATED = frozenset({"create_queue", "create_participant"})


class TwilioEmulator:
    """Twilio's REST API and call engine for one account, served by `app()` (or `start()`) on loopback."""

    def __init__(self, account_sid: str = DEFAULT_ACCOUNT_SID, auth_token: str = "", *,
                 api_keys: dict[str, str] | None = None) -> None:
        if not auth_token:
            raise ValueError("the emulator needs the auth token it signs webhooks with")
        self.account_sid = account_sid
        self.auth_token = auth_token
        self.api_keys = dict(api_keys or {})  # API key SID -> secret (either credential pair is accepted)
        self.calls: dict[str, EmuCall] = {}
        self.queues: dict[str, EmuQueue] = {}
        self.conferences: dict[str, EmuConference] = {}
        self.softphones: dict[str, SoftphonePolicy] = {}
        self.default_softphone: SoftphonePolicy | None = None
        self.unregistered_participant = "answer"  # a participant rung at a client nobody registered
        self.ringing: dict[str, str] = {}  # call sid -> identity, while a "wait" softphone rings
        self.faults: list[Fault] = []
        self.fail_next: list[tuple[int, int]] = []  # (HTTP status, Twilio code) for the very next requests
        self.requests: list[RestRequest] = []
        self.webhooks: list[tuple[str, dict[str, str], int]] = []  # (url, params, status) of every request sent
        self.ring_timeout_s = RING_TIMEOUT_S
        self.ring_delay_s = 0.02  # a participant's call: initiated -> ringing -> answered
        self.base_url: str | None = None  # set by start()
        self._waiting: dict[str, asyncio.Future[str]] = {}  # "wait" softphones of <Dial><Client>
        self._pending: dict[str, tuple[EmuConference, EmuParticipant]] = {}  # rung participants not yet answered
        self._session: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._compiled = [(m, re.compile("^" + re.escape(API_PREFIX.format(account=account_sid))
                                         + re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+?)", re.escape(p)) + "$"), h)
                          for m, p, h in ROUTES]

    @property
    def callbacks(self) -> list[tuple[str, dict[str, str], int]]:
        """The conference emulator's name for `webhooks` (kept for one release)."""
        return self.webhooks

    # -- serving -------------------------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        app.on_cleanup.append(self._cleanup)
        return app

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve on host:port (0: a free port); returns the base URL for TWILIO_API_URL. `stop()` ends it."""
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        bound = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.base_url = f"http://{host}:{bound}"
        return self.base_url

    async def stop(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()
        await self.close()

    async def _cleanup(self, app: web.Application) -> None:
        await self.close()

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        if path == "/_emulator/faults" and request.method == "POST":
            body = await request.json()
            self.inject(**{k: body[k] for k in ("status", "code", "times", "delay_s", "path") if k in body})
            return web.json_response({"faults": len(self.faults)})
        status = 200
        form: dict[str, str] = {}
        try:
            if request.method == "POST":
                posted = await request.post()
                for key in posted:  # a repeated key (StatusCallbackEvent=a&...=b) is one space-separated value
                    form[key] = " ".join(str(v) for v in posted.getall(key))
            self._authenticate(request)
            if self.fail_next:
                code_status, code = self.fail_next.pop(0)
                raise ApiError(code_status, code, _fault_message(Fault(status=code_status, code=code)))
            fault = self._take_fault(path)
            if fault is not None:
                if fault.delay_s:
                    await asyncio.sleep(fault.delay_s)
                if fault.status >= 400:
                    raise ApiError(fault.status, fault.code, _fault_message(fault))
            for method, pattern, handler in self._compiled:
                match = pattern.match(path)
                if match and method == request.method:
                    params = {**dict(request.query), **form}
                    result = await getattr(self, handler)(**match.groupdict(), params=params)
                    if result is None:
                        status = 204
                        return web.Response(status=204)
                    status = 201 if handler in CREATED else 200
                    return web.json_response(result, status=status)
            raise ApiError(404, 20404, f"The requested resource {path} was not found")
        except ApiError as exc:
            status = exc.status
            return web.json_response(exc.body(), status=exc.status)
        finally:
            self.requests.append(RestRequest(request.method, path, form, status))

    def _authenticate(self, request: web.Request) -> None:
        header = request.headers.get("Authorization", "")
        try:
            auth = aiohttp.BasicAuth.decode(header)
        except ValueError:
            raise ApiError(401, 20003, "Authenticate") from None
        if auth.login == self.account_sid and auth.password == self.auth_token:
            return
        if self.api_keys.get(auth.login) == auth.password and auth.password:
            return
        raise ApiError(401, 20003, "Authenticate")

    # -- faults --------------------------------------------------------------------------------------------

    def inject(self, status: int = 429, code: int = 20429, times: int = 1, delay_s: float = 0.0,
               path: str = "") -> None:
        """The next `times` REST requests (with `path` in their path) fail with status/code or are delayed."""
        self.faults.append(Fault(status=status, code=code, times=times, delay_s=delay_s, path=path))

    def _take_fault(self, path: str) -> Fault | None:
        for fault in self.faults:
            if fault.path in path and fault.times > 0:
                fault.times -= 1
                if fault.times == 0:
                    self.faults.remove(fault)
                return fault
        return None

    # -- REST: queues and members --------------------------------------------------------------------------

    async def list_queues(self, params: dict[str, str]) -> dict[str, Any]:
        page_size = max(1, min(int(params.get("PageSize", "50") or 50), 1000))
        queues = [q.json(self.account_sid, self.calls) for q in self.queues.values()]
        uri = f"/2010-04-01/Accounts/{self.account_sid}/Queues.json"
        return {"queues": queues[:page_size], "page": 0, "page_size": page_size, "start": 0,
                "end": max(len(queues[:page_size]) - 1, 0), "first_page_uri": f"{uri}?PageSize={page_size}&Page=0",
                "next_page_uri": None, "previous_page_uri": None, "uri": uri}

    async def create_queue(self, params: dict[str, str]) -> dict[str, Any]:
        name = params.get("FriendlyName", "")
        if not name:
            raise ApiError(400, 21212, "Missing required parameter FriendlyName in the post body")
        if self.queue_named(name) is not None:
            raise ApiError(400, 22003, f"A queue with friendly name {name} already exists")
        return self.ensure_queue(name).json(self.account_sid, self.calls)

    async def read_queue(self, queue: str, params: dict[str, str]) -> dict[str, Any]:
        return self._queue(queue).json(self.account_sid, self.calls)

    async def list_members(self, queue: str, params: dict[str, str]) -> dict[str, Any]:
        q = self._queue(queue)
        members = [self._member_json(q, sid) for sid in q.members]
        uri = f"/2010-04-01/Accounts/{self.account_sid}/Queues/{q.sid}/Members.json"
        return {"queue_members": members, "page": 0, "page_size": 50, "start": 0, "end": max(len(members) - 1, 0),
                "first_page_uri": uri, "next_page_uri": None, "previous_page_uri": None, "uri": uri}

    async def read_member(self, queue: str, call: str, params: dict[str, str]) -> dict[str, Any]:
        q = self._queue(queue)
        sid = self._member_sid(q, call)
        return self._member_json(q, sid)

    async def dequeue_member(self, queue: str, call: str, params: dict[str, str]) -> dict[str, Any]:
        """Twilio's dequeue: the member leaves the queue and its call is redirected to `Url`."""
        q = self._queue(queue)
        sid = self._member_sid(q, call)
        url = params.get("Url")
        if not url:
            raise ApiError(400, 21205, "Url parameter is required")
        body = self._member_json(q, sid)
        leg = self.calls[sid]
        self._leave_queue(leg)  # a redirected member's <Enqueue action> is not requested
        leg.events.append("dequeued")
        self._spawn(self._redirect(leg, url, params.get("Method", "POST")))
        return body

    # -- REST: calls ---------------------------------------------------------------------------------------

    async def read_call(self, call: str, params: dict[str, str]) -> dict[str, Any]:
        return self._call(call).json(self.account_sid)

    async def update_call(self, call: str, params: dict[str, str]) -> dict[str, Any]:
        leg = self._call(call)
        if leg.status in ENDED:
            raise ApiError(400, 21220, "Call is not in-progress. Cannot redirect.")
        if params.get("Status") in ("completed", "canceled"):
            self._spawn(self.hangup(leg.sid))
        elif params.get("Url"):
            self._leave_queue(leg)
            self._spawn(self._move(leg, url=params["Url"], method=params.get("Method", "POST")))
        elif params.get("Twiml"):
            self._leave_queue(leg)
            self._spawn(self._move(leg, twiml=params["Twiml"]))
        else:
            raise ApiError(400, 21218, "Invalid 'Url', 'Twiml' or 'Status' parameter")
        return leg.json(self.account_sid)

    async def _move(self, leg: EmuCall, *, url: str | None = None, method: str = "POST", twiml: str | None = None) -> None:
        """A Calls update: the leg leaves its conference (Twilio ends its <Dial>) and runs the new TwiML."""
        if leg.conference:
            await self._leave(leg)
        if url is not None:
            await self._redirect(leg, url, method)
        elif twiml is not None:
            await self._run_twiml(leg, twiml, base_url="")

    # -- REST: conferences and participants ----------------------------------------------------------------

    async def read_conference(self, conf: str, params: dict[str, str]) -> dict[str, Any]:
        return self._conference(conf).json(self.account_sid)

    async def update_conference(self, conf: str, params: dict[str, str]) -> dict[str, Any]:
        room = self._conference(conf)
        if params.get("Status") == "completed":
            self._spawn(self._end_conference(room))
        return room.json(self.account_sid)

    async def list_participants(self, conf: str, params: dict[str, str]) -> dict[str, Any]:
        room = self._conference(conf)
        return {"participants": [p.json(self.account_sid, room.sid) for p in room.participants.values()],
                "page": 0, "page_size": 50, "next_page_uri": None}

    async def read_participant(self, conf: str, part: str, params: dict[str, str]) -> dict[str, Any]:
        room, member = self._participant(conf, part)
        return member.json(self.account_sid, room.sid)

    async def create_participant(self, conf: str, params: dict[str, str]) -> dict[str, Any]:
        """Ring `To` into the conference (Twilio creates it, named `conf`, in `Region` if it does not exist)."""
        to, from_ = params.get("To", ""), params.get("From", "")
        if not to or not from_:
            raise ApiError(400, 21604 if not to else 21603, "A 'To' and a 'From' phone number or client are required.")
        room = self.conferences.get(conf) or self.conference_named(conf)
        if room is None:
            if conf.startswith("CF"):
                raise ApiError(404, 20404, f"The requested resource /Conferences/{conf}.json was not found")
            room = EmuConference(new_sid("CF"), conf, region=params.get("Region") or "us1",
                                 status_callback=params.get("ConferenceStatusCallback") or None,
                                 status_events=tuple(params.get("ConferenceStatusCallbackEvent", "").split()))
            self.conferences[room.sid] = room
        if params.get("Coaching") == "true" and params.get("CallSidToCoach", "") not in room.participants:
            raise ApiError(400, 16004, "CallSidToCoach is not a participant of this conference")
        leg = EmuCall(new_sid("CA"), from_, to, direction="outbound-api", status="queued",
                      status_callback=params.get("StatusCallback") or None,
                      status_events=tuple(params.get("StatusCallbackEvent", "").split()) or ("completed",))
        self.calls[leg.sid] = leg
        member = EmuParticipant(leg.sid, label=params.get("Label") or None, muted=params.get("Muted") == "true",
                                coaching=params.get("Coaching") == "true",
                                call_sid_to_coach=params.get("CallSidToCoach") or None,
                                end_conference_on_exit=params.get("EndConferenceOnExit") == "true", status="queued")
        timeout = float(params.get("Timeout") or self.ring_timeout_s)
        self._spawn(self._ring_participant(room, leg, member, timeout))
        return member.json(self.account_sid, room.sid)

    async def update_participant(self, conf: str, part: str, params: dict[str, str]) -> dict[str, Any]:
        room, member = self._participant(conf, part)
        if "Hold" in params:
            was = member.hold
            member.hold = params["Hold"] == "true"
            member.hold_url = params.get("HoldUrl") or None
            if member.hold and member.hold_url:
                self._spawn(self._fetch_hold(member, member.hold_url))
            if was != member.hold:
                event = "participant-hold" if member.hold else "participant-unhold"
                self._spawn(self._conf_event(room, event, "hold", member))
        if "Muted" in params:
            member.muted = params["Muted"] == "true"
        if "Coaching" in params:
            member.coaching = params["Coaching"] == "true"
        if "CallSidToCoach" in params:
            member.call_sid_to_coach = params["CallSidToCoach"] or None
        return member.json(self.account_sid, room.sid)

    async def delete_participant(self, conf: str, part: str, params: dict[str, str]) -> None:
        _, member = self._participant(conf, part)
        self._spawn(self.end_call(member.call_sid, "completed"))
        return None

    async def _fetch_hold(self, member: EmuParticipant, url: str) -> None:
        text = await self._post(url, {"CallSid": member.call_sid, "AccountSid": self.account_sid})
        member.hold_twiml = text

    # -- lookups -------------------------------------------------------------------------------------------

    def queue_named(self, name: str) -> EmuQueue | None:
        return next((q for q in self.queues.values() if q.friendly_name == name), None)

    def ensure_queue(self, name: str) -> EmuQueue:
        queue = self.queue_named(name)
        if queue is None:
            queue = EmuQueue(sid=new_sid("QU"), friendly_name=name)
            self.queues[queue.sid] = queue
        return queue

    def conference_named(self, name: str) -> EmuConference | None:
        """The conference of that friendly name that has not ended."""
        return next((c for c in self.conferences.values() if c.name == name and c.status != "completed"), None)

    def _queue(self, sid: str) -> EmuQueue:
        queue = self.queues.get(sid)
        if queue is None:
            raise ApiError(404, 20404, f"The requested resource /Queues/{sid}.json was not found")
        return queue

    def _call(self, sid: str) -> EmuCall:
        leg = self.calls.get(sid)
        if leg is None:
            raise ApiError(404, 20404, f"The requested resource /Calls/{sid}.json was not found")
        return leg

    def _conference(self, key: str) -> EmuConference:
        room = self.conferences.get(key) or self.conference_named(key)
        if room is None:
            raise ApiError(404, 20404, f"The requested resource /Conferences/{key}.json was not found")
        return room

    def _participant(self, conf: str, part: str) -> tuple[EmuConference, EmuParticipant]:
        room = self._conference(conf)
        member = room.participants.get(part) or next((p for p in room.participants.values() if p.label == part), None)
        if member is None:
            raise ApiError(404, 20404, f"The requested resource /Conferences/{conf}/Participants/{part}.json was not found")
        return room, member

    def _member_sid(self, q: EmuQueue, call: str) -> str:
        if call == "Front":
            if not q.members:
                raise ApiError(404, 20404, "The requested resource /Members/Front.json was not found")
            return q.members[0]
        if call not in q.members:
            raise ApiError(404, 20404, f"The requested resource /Members/{call}.json was not found")
        return call

    def _member_json(self, q: EmuQueue, sid: str) -> dict[str, Any]:
        leg = self.calls[sid]
        return {"call_sid": sid, "queue_sid": q.sid, "position": q.members.index(sid) + 1,
                "date_enqueued": rfc2822(leg.enqueued_at), "wait_time": int(time.time() - leg.enqueued_at),
                "uri": f"/2010-04-01/Accounts/{self.account_sid}/Queues/{q.sid}/Members/{sid}.json"}

    # -- the call engine -----------------------------------------------------------------------------------

    async def place_call(self, *, from_: str, to: str, url: str, status_callback: str | None = None,
                         sid: str | None = None, params: dict[str, str] | None = None) -> EmuCall:
        """A call reaches Twilio (a caller dials a number, or a softphone's TwiML App call, whose custom
        `params` ride on the first request): Twilio requests the Voice URL and runs its TwiML."""
        leg = EmuCall(sid=sid or new_sid("CA"), from_=from_, to=to, status="ringing", status_callback=status_callback)
        self.calls[leg.sid] = leg
        leg.status = "in-progress"
        leg.answered_at = time.time()
        twiml = await self._webhook(url, leg, dict(params or {}))
        if twiml is not None and leg.status not in ENDED:
            await self._run_twiml(leg, twiml, base_url=url)
        return leg

    def add_call(self, sid: str, from_: str, to: str, *, status_callback: str | None = None,
                 queue: str | None = None) -> EmuCall:
        """A call that exists on Twilio's side already (a caller waiting in `queue`, an agent's leg), for tests
        that drive callboard's webhooks themselves."""
        leg = EmuCall(sid, from_, to, status="in-progress", status_callback=status_callback, answered_at=time.time())
        self.calls[sid] = leg
        if queue:
            self._enqueue(leg, queue, action=None)
        return leg

    async def run_twiml(self, call_sid: str, twiml: str) -> None:
        """Act on a TwiML document for a call, as Twilio would (for tests that fetched it themselves)."""
        await self._run_twiml(self.calls[call_sid], twiml, base_url="")

    async def answer(self, identity: str, timeout_s: float = 10.0) -> None:
        """A "wait" softphone answers what is ringing it.

        A call that is about to ring it (a Participants request answered, its ringing callbacks still on their
        way) is waited for, up to `timeout_s`: answering nothing would silently leave it ringing into a
        no-answer. Nothing ringing by then is an error (LookupError), never a quiet no-op.
        """
        deadline = asyncio.get_running_loop().time() + timeout_s
        while identity not in self.ringing.values():
            if asyncio.get_running_loop().time() > deadline:
                raise LookupError(f"nothing is ringing {identity!r} to answer")
            await asyncio.sleep(0.01)
        for sid, who in list(self.ringing.items()):
            if who != identity:
                continue
            del self.ringing[sid]
            waiting = self._waiting.pop(sid, None)
            if waiting is not None:
                if not waiting.done():
                    waiting.set_result("answer")
            elif sid in self._pending:
                await self._answered(sid)

    async def hangup(self, sid: str) -> None:
        """A leg hangs up (the caller, or an agent's softphone): queue, dial, conference and status callbacks follow."""
        await self.end_call(sid, "completed")

    async def end_call(self, sid: str, status: str = "completed") -> None:
        """A leg ends with `status` (completed, busy, no-answer, failed, canceled)."""
        leg = self.calls.get(sid)
        if leg is None or leg.status in ENDED:
            return
        leg.status = status
        leg.events.append("hangup" if status == "completed" else status)
        self.ringing.pop(sid, None)
        self._pending.pop(sid, None)
        waiting = self._waiting.pop(sid, None)
        if waiting is not None and not waiting.done():
            waiting.cancel()
        action = leg.enqueue_action
        queue = self.queues.get(leg.queue_sid or "")
        if queue is not None:
            enqueued = leg.enqueued_at
            self._leave_queue(leg)
            if action:
                await self._webhook(action, leg, {"QueueResult": "hangup", "QueueSid": queue.sid,
                                                  "QueueTime": str(int(time.time() - enqueued))})
        other = self.calls.get(leg.bridged_to or "")
        leg.bridged_to = None
        if other is not None:
            other.bridged_to = None
            parent, child = (other, leg) if leg.parent_sid == other.sid else (leg, other)
            action, parent.dial_action = parent.dial_action, None
            if action:  # the <Dial> ended: Twilio requests its action (the answer is ignored for a hung-up caller)
                duration = str(int(time.time() - (child.answered_at or time.time())))
                twiml = await self._webhook(action, parent, {"DialCallStatus": "completed", "DialCallSid": child.sid,
                                                              "DialCallDuration": duration})
                if parent.status not in ENDED and twiml is not None:
                    await self._run_twiml(parent, twiml, base_url=action)
            if other is child and other.status not in ENDED:  # the caller left: the agent's leg ends too
                await self.hangup(other.sid)
        if leg.status_callback and (status != "completed" or "completed" in leg.status_events):
            await self._webhook(leg.status_callback, leg, {"CallStatus": status})
        if leg.conference:  # (Twilio does not order these; the call's own status first is the common case)
            await self._leave(leg)
        leg.ended.set()

    def _enqueue(self, leg: EmuCall, name: str, action: str | None) -> EmuQueue:
        queue = self.ensure_queue(name)
        queue.members.append(leg.sid)
        leg.queue_sid, leg.queue, leg.enqueue_action, leg.enqueued_at = queue.sid, name, action, time.time()
        leg.events.append(f"enqueued:{name}")
        return queue

    def _leave_queue(self, leg: EmuCall) -> None:
        queue = self.queues.get(leg.queue_sid or "")
        if queue is not None and leg.sid in queue.members:
            queue.members.remove(leg.sid)
        leg.queue_sid = leg.queue = leg.enqueue_action = None

    async def _redirect(self, leg: EmuCall, url: str, method: str) -> None:
        twiml = await self._webhook(url, leg, {})
        if twiml is not None and leg.status not in ENDED:
            await self._run_twiml(leg, twiml, base_url=url)

    async def _run_twiml(self, leg: EmuCall, twiml: str, base_url: str) -> None:
        """Execute a TwiML document for `leg` until it waits (queue, dial, conference) or ends."""
        leg.twiml.append(twiml)
        try:
            root = ElementTree.fromstring(twiml)
        except ElementTree.ParseError:
            leg.events.append("bad-twiml")
            log.warning("call %s: TwiML from %s does not parse: %.200s", leg.sid, base_url, twiml)
            await self.hangup(leg.sid)
            return
        for verb in root:
            if leg.status in ENDED:
                return
            tag = verb.tag
            if tag in ("Say", "Play", "Pause"):
                leg.events.append(tag.lower())
            elif tag == "Hangup":
                await self.hangup(leg.sid)
                return
            elif tag == "Redirect":
                await self._redirect(leg, (verb.text or "").strip(), verb.get("method", "POST"))
                return
            elif tag == "Enqueue":
                queue = self._enqueue(leg, (verb.text or "").strip(), verb.get("action"))
                wait_url = verb.get("waitUrl")
                if wait_url:  # the first turn of the hold loop: it carries the QueueSid
                    self._spawn(self._webhook(wait_url, leg, {"QueueSid": queue.sid, "QueuePosition":
                                                              str(len(queue.members)), "QueueTime": "0",
                                                              "CurrentQueueSize": str(len(queue.members))}))
                return
            elif tag == "Dial":
                if verb.find("Conference") is not None:
                    await self._join(leg, verb.find("Conference"))  # type: ignore[arg-type]
                else:
                    await self._dial(leg, verb)
                return
        # the document ran out: Twilio hangs up
        if leg.status not in ENDED and leg.queue_sid is None and leg.bridged_to is None and leg.conference is None:
            await self.hangup(leg.sid)

    async def _softphone(self, identity: str, params: dict[str, str], leg: EmuCall, *, unregistered: str,
                         timeout: float, ringing_sid: str) -> str:
        """What the emulated client `identity` does with a ringing call: answer, reject, no-answer or wait."""
        phone = self.softphones.get(identity, self.default_softphone)
        if phone is None:
            return unregistered
        if isinstance(phone, str):
            policy = phone
        else:
            try:
                policy = await asyncio.wait_for(phone(params, leg), timeout)
            except TimeoutError:
                return "no-answer"
        if policy == "wait":
            self.ringing[ringing_sid] = identity
        return policy

    async def _dial(self, leg: EmuCall, dial: ElementTree.Element) -> None:
        client = dial.find("Client")
        action = dial.get("action")
        if client is None:
            leg.events.append("dial-unsupported")
            if action:
                twiml = await self._webhook(action, leg, {"DialCallStatus": "failed"})
                if twiml is not None:
                    await self._run_twiml(leg, twiml, base_url=action)
            return
        identity = (client.findtext("Identity") or client.text or "").strip()
        params = {p.get("name", ""): p.get("value", "") for p in client.findall("Parameter")}
        child = EmuCall(sid=new_sid("CA"), from_=leg.from_, to=f"client:{identity}", direction="outbound-dial",
                        status="ringing", parent_sid=leg.sid)
        self.calls[child.sid] = child
        leg.events.append(f"ringing:{identity}")
        timeout = float(dial.get("timeout") or self.ring_timeout_s)
        answer = await self._softphone(identity, params, leg, unregistered="no-answer", timeout=timeout,
                                       ringing_sid=child.sid)
        if answer == "wait":
            waiting = self._waiting[child.sid] = asyncio.get_running_loop().create_future()
            try:
                answer = await asyncio.wait_for(waiting, timeout)
            except (TimeoutError, asyncio.CancelledError):
                answer = "no-answer"
            self.ringing.pop(child.sid, None)
            self._waiting.pop(child.sid, None)
        if leg.status in ENDED:  # the caller hung up while it rang
            child.status = "canceled"
            return
        if answer != "answer":
            child.status = "busy" if answer == "reject" else "no-answer"
            leg.events.append(f"dial:{child.status}")
            if action:
                twiml = await self._webhook(action, leg, {"DialCallStatus": child.status, "DialCallSid": child.sid})
                if twiml is not None:
                    await self._run_twiml(leg, twiml, base_url=action)
            return
        child.status, child.answered_at = "in-progress", time.time()
        url = client.get("url")
        if url:  # the called party's whisper/bridge URL runs on the child leg before the two are connected
            await self._webhook(url, child, {"ParentCallSid": leg.sid})
        if leg.status in ENDED:
            await self.hangup(child.sid)
            return
        leg.bridged_to, child.bridged_to, leg.dial_action = child.sid, leg.sid, action
        leg.events.append(f"bridged:{identity}")

    # -- conferences ---------------------------------------------------------------------------------------

    async def _join(self, leg: EmuCall, el: ElementTree.Element) -> None:
        """<Dial><Conference>: into the conference of that name (created in `region` by the first to join)."""
        name = (el.text or "").strip()
        room = self.conference_named(name)
        if room is None:
            room = EmuConference(new_sid("CF"), name, region=el.get("region", "us1"))
            self.conferences[room.sid] = room
        if room.status_callback is None and el.get("statusCallback"):
            room.status_callback = el.get("statusCallback")
            room.status_events = tuple((el.get("statusCallbackEvent") or "").split())
        member = EmuParticipant(leg.sid, label=el.get("participantLabel"),
                                end_conference_on_exit=el.get("endConferenceOnExit") == "true")
        leg.events.append(f"conference:{name}")
        await self._add(room, leg, member)

    async def _add(self, room: EmuConference, leg: EmuCall, member: EmuParticipant) -> None:
        self._leave_queue(leg)
        leg.conference, leg.status = room.sid, "in-progress"
        room.participants[leg.sid] = member
        await self._conf_event(room, "participant-join", "join", member)

    async def _leave(self, leg: EmuCall) -> None:
        room = self.conferences.get(leg.conference or "")
        leg.conference = None
        if room is None or leg.sid not in room.participants:
            return
        member = room.participants.pop(leg.sid)
        room.left.append(leg.sid)
        await self._conf_event(room, "participant-leave", "leave", member)
        if member.end_conference_on_exit and room.status != "completed":
            await self._end_conference(room)

    async def _end_conference(self, room: EmuConference) -> None:
        """The conference ends: every participant's <Dial> ends; with nothing after it, their calls end."""
        room.status = "completed"
        for sid in list(room.participants):
            await self.end_call(sid)
        for sid in [sid for sid, (pending, _) in self._pending.items() if pending is room]:
            await self.end_call(sid, "canceled")  # still ringing: Twilio cancels the participant's call
        await self._conf_event(room, "conference-end", "end", None)

    async def _conf_event(self, room: EmuConference, event: str, short: str, member: EmuParticipant | None) -> None:
        if not room.status_callback or short not in room.status_events:
            return
        params = {"ConferenceSid": room.sid, "FriendlyName": room.name, "StatusCallbackEvent": event,
                  "AccountSid": self.account_sid}
        if member is not None:
            params.update({"CallSid": member.call_sid, "Muted": _b(member.muted), "Hold": _b(member.hold),
                           "Coaching": _b(member.coaching)})
            if member.label:
                params["ParticipantLabel"] = member.label
        await self._post(room.status_callback, params)

    async def _ring_participant(self, room: EmuConference, leg: EmuCall, member: EmuParticipant,
                                timeout: float) -> None:
        await self._status(leg, "initiated", "initiated")
        await asyncio.sleep(self.ring_delay_s)
        leg.status = "ringing"
        await self._status(leg, "ringing", "ringing")
        identity, _, query = leg.to.removeprefix("client:").partition("?")  # client:alice?offer_id=...
        self._pending[leg.sid] = (room, member)
        policy = await self._softphone(identity, dict(parse_qsl(query)), leg,
                                       unregistered=self.unregistered_participant, timeout=timeout,
                                       ringing_sid=leg.sid)
        if leg.status in ENDED:
            return
        if policy == "answer":
            await asyncio.sleep(self.ring_delay_s)
            await self._answered(leg.sid)
        elif policy != "wait":
            self._pending.pop(leg.sid, None)
            await self.end_call(leg.sid, "busy" if policy == "reject" else "no-answer")

    async def _answered(self, call_sid: str) -> None:
        pending = self._pending.pop(call_sid, None)
        leg = self.calls.get(call_sid)
        if pending is None or leg is None or leg.status != "ringing":
            return
        room, member = pending
        if room.status == "completed":  # the conference ended while it rang
            await self.end_call(call_sid, "canceled")
            return
        leg.status, leg.answered_at = "in-progress", time.time()
        member.status = "connected"
        await self._status(leg, "in-progress", "answered")
        await self._add(room, leg, member)

    async def _status(self, leg: EmuCall, status: str, event: str) -> None:
        if leg.status_callback and event in leg.status_events:
            await self._webhook(leg.status_callback, leg, {"CallStatus": status})

    # -- requests to callboard (signed like Twilio's) ------------------------------------------------------

    async def _webhook(self, url: str, leg: EmuCall, extra: dict[str, str]) -> str | None:
        """POST a signed Twilio request about `leg`; returns the TwiML body, or None when it failed."""
        params = {"AccountSid": self.account_sid, "CallSid": leg.sid, "From": leg.from_, "To": leg.to,
                  "CallStatus": leg.status, "Direction": leg.direction, "ApiVersion": "2010-04-01", **extra}
        if leg.parent_sid and "ParentCallSid" not in params:
            params["ParentCallSid"] = leg.parent_sid
        return await self._post(url, params)

    async def _post(self, url: str, params: dict[str, str]) -> str | None:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15))
        headers = {SIGNATURE_HEADER: sign(self.auth_token, url, params)}
        try:
            async with self._session.post(url, data=params, headers=headers) as resp:
                body = await resp.text()
                self.webhooks.append((url, params, resp.status))
                if resp.status != 200:
                    log.warning("webhook %s answered %d: %.200s", url, resp.status, body)
                    return None
                return body
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.webhooks.append((url, params, 0))
            log.warning("webhook %s failed: %s", url, exc)
            return None

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("emulator task failed", exc_info=task.exception())

    async def settle(self, timeout_s: float = SETTLE_TIMEOUT_S) -> None:
        """Tests: wait until every background request the emulator started (and those they start) has finished."""
        try:
            async with asyncio.timeout(timeout_s):
                while self._tasks:
                    await asyncio.gather(*list(self._tasks), return_exceptions=True)
        except TimeoutError:
            log.warning("emulator: %d tasks still running after %.0f s", len(self._tasks), timeout_s)


def _b(value: bool) -> str:
    return "true" if value else "false"


def _fault_message(fault: Fault) -> str:
    if fault.code == 20429:
        return "Too Many Requests"
    if fault.status >= 500:
        return "Service Unavailable" if fault.status == 503 else "Internal Server Error"
    return "Injected fault"
