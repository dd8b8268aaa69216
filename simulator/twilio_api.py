"""A Twilio emulator on loopback: the parts of the 2010-04-01 REST API callboard uses, plus Twilio's side of calls.

Why: routing dequeues callers through Twilio's REST API and then follows the webhooks Twilio sends after
that (connect, the agent's `<Client url>` bridge, the `<Dial action>` dial-result). Tests and the demo run
that whole path here, on 127.0.0.1, with callboard talking to it through the `twilio` package exactly as it
talks to api.twilio.com (`TWILIO_API_URL`).

Structure, so that more of Twilio can be added (Conferences, Participants):
- an in-memory model: `EmuCall` (one call leg and its TwiML state), `EmuQueue` (members in FIFO order);
- `ROUTES`: a route table of (method, path pattern, handler name); handlers return JSON-able dicts or raise
  `ApiError`, which becomes Twilio's error JSON ({"code", "message", "more_info", "status"});
- a TwiML runner (`_run_twiml`) that executes what callboard answers: Say/Play/Pause are skipped (no
  audio here), Enqueue, Redirect, Hangup, Dial with Client (rings an emulated softphone) and Dial Queue.

Every webhook it sends is signed with the auth token (`X-Twilio-Signature`), as Twilio signs. Faults are
injected with `inject()` (or `POST /_emulator/faults`): the next N REST requests answer a given status and
Twilio error code (429 with 20429, 500, 503) or are delayed. Softphones are callables deciding what an
emulated agent does with a ringing call: answer, reject (busy) or let it ring out (no-answer).
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from xml.etree import ElementTree

import aiohttp
from aiohttp import web

from callflow.signature import SIGNATURE_HEADER, sign

log = logging.getLogger("callboard.simulator.twilio")

API_PREFIX = "/2010-04-01/Accounts/{account}"
RING_TIMEOUT_S = 30.0  # Twilio's <Dial timeout> default; softphones that "miss" make it ring this long
MORE_INFO = "https://www.twilio.com/docs/errors/{code}"

# A softphone decides what to do with a ringing <Dial><Client>: "answer", "reject" or "no-answer".
# It receives the Client's parameters ({"offer_id": ...}) and the parent call.
Softphone = Callable[[dict[str, str], "EmuCall"], Awaitable[str]]


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
    """One call leg: who, where its TwiML stands, and what Twilio would report about it."""

    sid: str
    from_: str
    to: str
    direction: str = "inbound"
    status: str = "queued"
    parent_sid: str | None = None
    status_callback: str | None = None
    queue_sid: str | None = None  # while it waits in a queue
    enqueue_action: str | None = None
    enqueued_at: float = 0.0
    started_at: float = field(default_factory=time.time)
    answered_at: float | None = None
    bridged_to: str | None = None  # the other leg while connected
    dial_action: str | None = None  # the <Dial action> to request when the bridged dial ends
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
]


class TwilioEmulator:
    """Twilio's REST API and call engine for one account, served by `app()` on loopback."""

    def __init__(self, *, account_sid: str = "AC" + "0" * 32, auth_token: str,
                 api_keys: dict[str, str] | None = None) -> None:
        self.account_sid = account_sid
        self.auth_token = auth_token
        self.api_keys = dict(api_keys or {})  # API key SID -> secret (either credential pair is accepted)
        self.calls: dict[str, EmuCall] = {}
        self.queues: dict[str, EmuQueue] = {}
        self.softphones: dict[str, Softphone] = {}
        self.default_softphone: Softphone | None = None
        self.faults: list[Fault] = []
        self.requests: list[tuple[str, str, int]] = []  # (method, path, status) of every REST request
        self.webhooks: list[tuple[str, dict[str, str], int]] = []  # (url, params, status) of every webhook
        self.ring_timeout_s = RING_TIMEOUT_S
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._compiled = [(m, re.compile("^" + re.escape(API_PREFIX.format(account=account_sid))
                                         + re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+?)", re.escape(p)) + "$"), h)
                          for m, p, h in ROUTES]

    # -- serving -------------------------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        app.on_cleanup.append(self._cleanup)
        return app

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

    async def _dispatch(self, request: web.Request) -> web.Response:
        path = request.path
        if path == "/_emulator/faults" and request.method == "POST":
            body = await request.json()
            self.inject(**{k: body[k] for k in ("status", "code", "times", "delay_s", "path") if k in body})
            return web.json_response({"faults": len(self.faults)})
        status = 200
        try:
            self._authenticate(request)
            fault = self._take_fault(path)
            if fault is not None:
                if fault.delay_s:
                    await asyncio.sleep(fault.delay_s)
                if fault.status >= 400:
                    raise ApiError(fault.status, fault.code, _fault_message(fault))
            for method, pattern, handler in self._compiled:
                match = pattern.match(path)
                if match and method == request.method:
                    form = dict(await request.post()) if request.method == "POST" else {}
                    params = {**dict(request.query), **{k: str(v) for k, v in form.items()}}
                    result = await getattr(self, handler)(**match.groupdict(), params=params)
                    status = 201 if handler == "create_queue" else 200
                    return web.json_response(result, status=status)
            raise ApiError(404, 20404, f"The requested resource {path} was not found")
        except ApiError as exc:
            status = exc.status
            return web.json_response(exc.body(), status=exc.status)
        finally:
            self.requests.append((request.method, path, status))

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

    # -- REST handlers -------------------------------------------------------------------------------------

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
        q.members.remove(sid)
        leg = self.calls[sid]
        leg.queue_sid = None
        leg.enqueue_action = None  # a redirected member's <Enqueue action> is not requested
        leg.events.append("dequeued")
        self._spawn(self._redirect(leg, url, params.get("Method", "POST")))
        return body

    async def read_call(self, call: str, params: dict[str, str]) -> dict[str, Any]:
        return self._call(call).json(self.account_sid)

    async def update_call(self, call: str, params: dict[str, str]) -> dict[str, Any]:
        leg = self._call(call)
        if params.get("Status") in ("completed", "canceled"):
            self._spawn(self.hangup(leg.sid))
        elif params.get("Url"):
            if leg.status == "completed":
                raise ApiError(400, 21220, "Call is not in-progress. Cannot redirect.")
            self._leave_queue(leg)
            self._spawn(self._redirect(leg, params["Url"], params.get("Method", "POST")))
        elif params.get("Twiml"):
            self._leave_queue(leg)
            self._spawn(self._run_twiml(leg, params["Twiml"], base_url=""))
        return leg.json(self.account_sid)

    # -- lookups -------------------------------------------------------------------------------------------

    def queue_named(self, name: str) -> EmuQueue | None:
        return next((q for q in self.queues.values() if q.friendly_name == name), None)

    def ensure_queue(self, name: str) -> EmuQueue:
        queue = self.queue_named(name)
        if queue is None:
            queue = EmuQueue(sid=new_sid("QU"), friendly_name=name)
            self.queues[queue.sid] = queue
        return queue

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
                         sid: str | None = None) -> EmuCall:
        """A caller dials one of the center's numbers: Twilio requests the number's Voice URL."""
        leg = EmuCall(sid=sid or new_sid("CA"), from_=from_, to=to, status="ringing", status_callback=status_callback)
        self.calls[leg.sid] = leg
        leg.status = "in-progress"
        leg.answered_at = time.time()
        await self._redirect(leg, url, "POST")
        return leg

    async def hangup(self, sid: str) -> None:
        """A leg hangs up (the caller, or an agent's softphone): queue, dial and status callbacks follow."""
        leg = self.calls.get(sid)
        if leg is None or leg.status == "completed":
            return
        leg.status = "completed"
        leg.events.append("hangup")
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
                if parent.status != "completed" and twiml is not None:
                    await self._run_twiml(parent, twiml, base_url=action)
            if other is child and other.status != "completed":  # the caller left: the agent's leg ends too
                await self.hangup(other.sid)
        if leg.status_callback:
            await self._webhook(leg.status_callback, leg, {"CallStatus": "completed"})
        leg.ended.set()

    def _leave_queue(self, leg: EmuCall) -> None:
        queue = self.queues.get(leg.queue_sid or "")
        if queue is not None and leg.sid in queue.members:
            queue.members.remove(leg.sid)
        leg.queue_sid = None
        leg.enqueue_action = None

    async def _redirect(self, leg: EmuCall, url: str, method: str) -> None:
        twiml = await self._webhook(url, leg, {})
        if twiml is not None and leg.status != "completed":
            await self._run_twiml(leg, twiml, base_url=url)

    async def _run_twiml(self, leg: EmuCall, twiml: str, base_url: str) -> None:
        """Execute a TwiML document for `leg` until it waits (queue, dial) or ends."""
        try:
            root = ElementTree.fromstring(twiml)
        except ElementTree.ParseError:
            leg.events.append("bad-twiml")
            log.warning("call %s: TwiML from %s does not parse: %.200s", leg.sid, base_url, twiml)
            await self.hangup(leg.sid)
            return
        for verb in root:
            if leg.status == "completed":
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
                queue = self.ensure_queue((verb.text or "").strip())
                queue.members.append(leg.sid)
                leg.queue_sid, leg.enqueue_action, leg.enqueued_at = queue.sid, verb.get("action"), time.time()
                leg.events.append(f"enqueued:{queue.friendly_name}")
                wait_url = verb.get("waitUrl")
                if wait_url:  # the first turn of the hold loop: it carries the QueueSid
                    self._spawn(self._webhook(wait_url, leg, {"QueueSid": queue.sid, "QueuePosition":
                                                              str(len(queue.members)), "QueueTime": "0",
                                                              "CurrentQueueSize": str(len(queue.members))}))
                return
            elif tag == "Dial":
                await self._dial(leg, verb)
                return
        # the document ran out: Twilio hangs up
        if leg.status != "completed" and leg.queue_sid is None and leg.bridged_to is None:
            await self.hangup(leg.sid)

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
        phone = self.softphones.get(identity, self.default_softphone)
        answer = "no-answer"
        if phone is not None:
            timeout = float(dial.get("timeout") or self.ring_timeout_s)
            try:
                answer = await asyncio.wait_for(phone(params, leg), timeout)
            except TimeoutError:
                answer = "no-answer"
        if leg.status == "completed":  # the caller hung up while it rang
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
        if leg.status == "completed":
            await self.hangup(child.sid)
            return
        leg.bridged_to, child.bridged_to, leg.dial_action = child.sid, leg.sid, action
        leg.events.append(f"bridged:{identity}")

    async def _webhook(self, url: str, leg: EmuCall, extra: dict[str, str]) -> str | None:
        """POST a signed Twilio request about `leg`; returns the TwiML body, or None when it failed."""
        params = {"AccountSid": self.account_sid, "CallSid": leg.sid, "From": leg.from_, "To": leg.to,
                  "CallStatus": leg.status, "Direction": leg.direction, "ApiVersion": "2010-04-01", **extra}
        if leg.parent_sid and "ParentCallSid" not in params:
            params["ParentCallSid"] = leg.parent_sid
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

    async def settle(self, timeout_s: float = 10.0) -> None:
        """Tests: wait until every background request the emulator started has finished."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                while self._tasks:
                    await asyncio.gather(*list(self._tasks), return_exceptions=True)


def _fault_message(fault: Fault) -> str:
    if fault.code == 20429:
        return "Too Many Requests"
    if fault.status >= 500:
        return "Service Unavailable" if fault.status == 503 else "Internal Server Error"
    return "Injected fault"
