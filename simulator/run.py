"""`callboard simulate`: a believable contact-center day against a running server.

We play Twilio and the agents. Callers are signed Twilio webhook sequences over HTTP that follow the URLs
the server's TwiML gives (as Twilio does); agents are real websocket clients. The plan (simulator/plan.py)
is a pure, seeded function of the options; `run_simulation()` replays it on the wall clock divided by
`speed` and counts what the server answered. Each agent mirrors the server's snapshot and deltas; when the
server disagrees with the plan at pick-up (the agent is not `available` there) it is reported as a
divergence, never hidden. Nothing is dropped silently: non-2xx answers, {"type": "error"} messages and
closes we did not ask for are counted, sampled in the report and logged.

`calls_per_minute` is per simulated minute; `duration_s` is wall-clock seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import email.utils
import json
import logging
import signal
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any
from xml.etree import ElementTree

import aiohttp
from twilio.request_validator import RequestValidator
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, WebSocketException
from websockets.typing import Subprotocol

from callboard.auth import issue_token
from callboard.config import Config
from simulator.plan import (
    END_LEGS,
    Behaviour,
    CallInfo,
    Planner,
    SimulationOptions,
    Step,
    caller_params,
    completed_params,
    schedule,
    select_agents,
)
from wallboard import patch as merge_patch

__all__ = ["Behaviour", "SimulationOptions", "Step", "add_arguments", "format_report", "options_from_args",
           "run_simulation", "run_until_interrupted", "schedule", "select_agents", "signed_headers"]

log = logging.getLogger("callboard.simulate")

WS_PROTOCOL = Subprotocol("callboard.v1.json")
SAMPLES_KEPT = 50  # error samples kept in the report; the counts are always complete
RECONNECT_DELAYS_S = (0.2, 0.5, 1.0, 2.0, 5.0)  # after a server close we did not ask for; fixed, no RNG
RECONNECT_CODES = frozenset({1001, 1006, 1011, 1012, 4429})  # going away, lost, server error, restart, too slow
LOGIN_TIMEOUT_S = 10.0
CLEANUP_TIMEOUT_S = 30.0  # ending the calls in flight after a stop: a few requests each, unless the server hangs


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `callboard simulate` options."""
    parser.add_argument("--url", default="http://127.0.0.1:8080", help="server base URL")
    parser.add_argument("--agents", type=_count, default=None, help="simulated agents (default: every agent of the config)")
    parser.add_argument("--calls-per-minute", type=_rate, default=6.0, help="arrival rate per simulated minute")
    parser.add_argument("--seed", type=int, default=1, help="the same seed and options give the same plan")
    parser.add_argument("--duration", type=_positive, default=None, help="wall-clock seconds (default: until stopped)")
    parser.add_argument("--speed", type=_positive, default=1.0,
                        help="time multiplier: 10 makes every simulated duration (arrival gaps too) 10x shorter")


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number")
    return value


def _rate(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of calls per minute (0 or more)")
    return value


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of agents (0 or more)")
    return value


def options_from_args(args: argparse.Namespace, *, config: Config, secret: str, twilio_auth_token: str,
                      public_url: str | None = None, url: str | None = None,
                      known_callers: tuple[str, ...] = ()) -> SimulationOptions:
    """SimulationOptions from the parsed `add_arguments` options; `url` overrides --url, `known_callers` are the
    directory's numbers (both: the demo)."""
    return SimulationOptions(url=(url or args.url).rstrip("/"), agents=args.agents, calls_per_minute=args.calls_per_minute,
                             seed=args.seed, duration_s=args.duration, speed=args.speed, secret=secret,
                             twilio_auth_token=twilio_auth_token, public_url=public_url, config=config,
                             known_callers=known_callers)


class _Tally:
    """What the simulator saw, by its own count. Every error is counted and logged; samples are capped."""

    def __init__(self) -> None:
        self.calls = {k: 0 for k in ("arrived", "offered", "unstaffed", "answered", "abandoned", "completed",
                                     "finished_at_stop")}
        self.by_queue: dict[str, dict[str, int]] = {}
        self.requests: dict[str, int] = {}
        self.duplicates = 0
        self.agents = {k: 0 for k in ("logins", "reloads", "drops", "breaks", "reconnects", "pops", "set_states")}
        self.known_pops: set[str] = set()  # calls whose screen pop named a customer of the directory
        self.samples: dict[str, list[Any]] = {"webhook_errors": [], "websocket_errors": [], "unexpected_closes": [],
                                              "divergences": []}
        self.counts = {k: 0 for k in self.samples}

    def count(self, queue: str, outcome: str) -> None:
        self.calls[outcome] += 1
        per = self.by_queue.setdefault(queue, {"offered": 0, "unstaffed": 0, "answered": 0, "abandoned": 0})
        if outcome in per:
            per[outcome] += 1

    def problem(self, kind: str, detail: dict[str, Any]) -> None:
        self.counts[kind] += 1
        if len(self.samples[kind]) < SAMPLES_KEPT:
            self.samples[kind].append(detail)
        (log.info if kind == "divergences" else log.warning)("simulator %s: %s", kind.replace("_", " ")[:-1], detail)


class _AgentClient:
    """One softphone tab: a websocket that says hello, mirrors the snapshot and sends state intents."""

    def __init__(self, run: _Run, agent_id: str) -> None:
        self.run, self.id = run, agent_id
        self.token = issue_token(run.opts.secret, agent_id, "agent", 24 * 3600)
        self.ws: ClientConnection | None = None
        self.reader: asyncio.Task[None] | None = None
        self.mirror: dict[str, Any] = {}
        self.ready = asyncio.Event()
        self.wanted = False  # the plan has this tab open
        self.lock = asyncio.Lock()

    @property
    def state(self) -> str | None:
        return (self.mirror.get("agents", {}).get(self.id) or {}).get("state")

    async def perform(self, step: Step) -> None:
        async with self.lock:
            if step.kind == "login":
                self.wanted = True
                self.run.tally.agents["logins"] += 1
                await self._open()
            elif step.kind == "logout":
                self.wanted = False
                if step.leg in ("reload", "drop"):
                    self.run.tally.agents[step.leg + "s"] += 1
                await self._close()
            elif step.kind == "set_state":
                self.run.tally.agents["set_states"] += 1
                if step.params.get("state") == "away":
                    self.run.tally.agents["breaks"] += 1
                await self._send({"type": "set_state", **step.params})

    async def _open(self) -> None:
        self.ready.clear()
        try:
            self.ws = await connect(self.run.ws_url, subprotocols=[WS_PROTOCOL], open_timeout=10, proxy=None)
            await self.ws.send(json.dumps({"type": "hello", "token": self.token}))
        except (OSError, WebSocketException, TimeoutError) as exc:
            self.run.tally.problem("websocket_errors", {"agent": self.id, "error": f"connect failed: {exc!r}"})
            return
        self.reader = asyncio.create_task(self._read(self.ws), name=f"sim-agent-{self.id}")
        ready = asyncio.ensure_future(self.ready.wait())
        await asyncio.wait({ready, self.reader}, timeout=LOGIN_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED)
        ready.cancel()
        if not self.ready.is_set() and not self.reader.done():  # a refusal is counted by the reader
            self.run.tally.problem("websocket_errors", {"agent": self.id,
                                                        "error": f"no welcome and snapshot in {LOGIN_TIMEOUT_S:.0f} s"})

    async def _close(self) -> None:
        ws, self.ws = self.ws, None
        if ws is not None:
            await ws.close()
        if self.reader is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self.reader
            self.reader = None

    async def _send(self, msg: dict[str, Any]) -> None:
        try:
            if self.ws is None:
                raise ConnectionError("not connected")
            await self.ws.send(json.dumps(msg))
        except (OSError, ConnectionError, WebSocketException) as exc:
            self.run.tally.problem("websocket_errors", {"agent": self.id, "error": f"send {msg['type']}: {exc!r}"})

    async def _read(self, ws: ClientConnection) -> None:
        try:
            async for raw in ws:
                self._on_message(json.loads(raw))
        except ConnectionClosed:
            pass
        except Exception:  # a boundary: one broken tab must not stop the simulation
            log.exception("simulated agent %s: reader failed", self.id)
        if ws is self.ws:  # closed by the server, not by us
            self.ws = None
            self.run.tally.problem("unexpected_closes", {"agent": self.id, "code": ws.close_code,
                                                         "reason": ws.close_reason})
            if self.wanted and not self.run.stopping and ws.close_code in RECONNECT_CODES:
                self.run.tasks.append(asyncio.create_task(self._reconnect(), name=f"sim-agent-{self.id}-reconnect"))

    def _on_message(self, msg: dict[str, Any]) -> None:
        kind = msg.get("type")
        if kind == "snapshot":
            self.mirror = {k: v for k, v in msg.items() if k != "type"}
        elif kind == "delta":
            self.mirror = merge_patch.apply(self.mirror, {k: v for k, v in msg.items() if k != "type"})
        elif kind == "pop":
            self.run.tally.agents["pops"] += 1
            if msg.get("customers"):  # a call pops twice when its lookup lands after the bridge: a set
                self.run.tally.known_pops.add(str(msg.get("call_sid")))
            bridged_to = self.run.bridged_to.get(msg.get("call_sid", ""))
            if bridged_to != self.id:
                self.run.tally.problem("divergences", {"agent": self.id, "pop_for": msg.get("call_sid"),
                                                       "bridged_to": bridged_to})
        elif kind == "error":
            self.run.tally.problem("websocket_errors", {"agent": self.id, "code": msg.get("code"),
                                                        "message": msg.get("message")})
        if self.mirror and self.state not in (None, "offline"):
            self.ready.set()

    async def _reconnect(self) -> None:
        for delay in RECONNECT_DELAYS_S:
            await asyncio.sleep(delay)
            async with self.lock:
                if not self.wanted or self.run.stopping or self.ws is not None:
                    return
                self.run.tally.agents["reconnects"] += 1
                await self._open()
                if self.ws is not None:
                    return


class _CallActor:
    """One caller's requests in order, following the URLs the server's TwiML gives, as Twilio would."""

    def __init__(self, run: _Run, info: CallInfo) -> None:
        self.run, self.info = run, info
        self.queue: asyncio.Queue[Step | None] = asyncio.Queue()
        self.phase = "new"  # new | waiting | unstaffed | failed (incoming refused) | bridged
        paths = {r: f"{run.public_url}/twilio/voice/{r}" for r in ("queue-result", "wait", "bridge", "status")}
        self.urls = paths | {"incoming": f"{run.public_url}/twilio/voice/incoming",
                             "agent": f"{run.public_url}/twilio/voice/agent"}
        self.agent_id: str | None = None
        self.agent_base: dict[str, str] = {}
        self.bridged_s = 0.0
        self.done: set[str] = set()

    async def run_steps(self) -> None:
        while (step := await self.queue.get()) is not None and step.kind != "end":
            try:
                await self.perform(step)
            except Exception:  # a boundary: one call's failure is reported, the others go on
                log.exception("simulated call %s: step %s failed", self.info.sid, step.kind)
        if step is None:
            await self.finish()

    async def perform(self, step: Step) -> None:
        if self.phase in ("unstaffed", "failed") and step.leg != "caller-status":
            return  # the server sent this caller away (or failed it); Twilio would not ask for anything else
        if step.kind == "agent":
            self.agent_id = step.agent or step.params["From"].removeprefix("client:")
            self.agent_base = {k: v for k, v in step.params.items() if k != "queue"}
            state = self.run.agents[self.agent_id].state if self.agent_id in self.run.agents else None
            if state != "available":
                self.run.tally.problem("divergences", {"call": self.info.sid, "agent": self.agent_id,
                                                       "server_state": state, "planned": "available"})
        if step.kind == "bridge" and self.agent_id:  # before the request: the pop may overtake its answer
            self.run.bridged_to[self.info.sid] = self.agent_id
        body = await self.run.post(self.urls[step.kind], step.params, step.token, self.info.sid, step.duplicate)
        if step.duplicate:
            return
        if step.leg in END_LEGS:
            self.done.add(step.leg)
        tally, queue = self.run.tally, self.info.queue
        if step.kind == "incoming":
            tally.count(queue, "arrived")
        if body is None:
            if step.kind == "incoming":
                self.phase = "failed"
            return
        if step.kind == "incoming":
            enqueue = _twiml_find(body, "Enqueue")
            if enqueue is None:
                self.phase = "unstaffed"
                tally.count(queue, "unstaffed")
                return
            self.phase = "waiting"
            tally.count(queue, "offered")
            self.urls["queue-result"] = enqueue.get("action") or self.urls["queue-result"]
            self.urls["wait"] = enqueue.get("waitUrl") or self.urls["wait"]
        elif step.kind == "wait":
            redirect = _twiml_find(body, "Redirect")
            if redirect is not None and redirect.text:
                self.urls["wait"] = redirect.text.strip()
        elif step.kind == "agent":
            queue_el = _twiml_find(body, "Queue")
            if queue_el is None:
                tally.problem("divergences", {"call": self.info.sid, "agent": self.agent_id, "agent_twiml": body[:200]})
            else:
                self.urls["bridge"] = queue_el.get("url") or self.urls["bridge"]
        elif step.kind == "bridge":
            self.phase, self.bridged_s = "bridged", step.at_s
            tally.count(queue, "answered")
        elif step.kind == "queue-result" and step.params.get("QueueResult") == "hangup":
            tally.count(queue, "abandoned")
        if step.leg == "caller-status":
            tally.count(queue, "completed")

    async def finish(self) -> None:
        """Stopped mid-call: end it now as Twilio would (hang up a waiting caller, end a conversation)."""
        now_s = self.run.sim_now()
        acct, info = self.run.planner_account_sid, self.info
        if self.phase in ("new", "failed"):
            return
        self.run.tally.calls["finished_at_stop"] += 1
        ends: list[tuple[str, str, dict[str, str]]] = []
        if self.phase == "waiting" and self.agent_id is not None:  # agent leg placed, bridge not yet
            await self.perform(Step(now_s, "", "bridge", caller_params(acct, info, "in-progress") | {
                "QueueSid": info.queue_sid, "QueueTime": str(int(now_s - info.arrived_s)),
                "DequeingCallSid": self.agent_base["CallSid"]}))
        if self.phase == "waiting":
            ends.append(("queue-result", "queue-result", caller_params(acct, info, "completed") | {
                "QueueResult": "hangup", "QueueSid": info.queue_sid, "QueueTime": str(int(now_s - info.arrived_s))}))
        elif self.phase == "bridged":
            ends.append(("status", "agent-status", completed_params(self.agent_base, now_s - self.bridged_s)))
            ends.append(("queue-result", "queue-result", caller_params(acct, info, "in-progress") | {
                "QueueResult": "bridged", "QueueSid": info.queue_sid,
                "QueueTime": str(int(self.bridged_s - info.arrived_s))}))
        ends.append(("status", "caller-status", completed_params(caller_params(acct, info, "completed"),
                                                                 now_s - info.arrived_s)))
        for kind, leg, params in ends:
            if leg not in self.done:
                await self.perform(Step(now_s, "", kind, params, info, leg=leg, token=f"{id(self):x}{leg}"))


def signed_headers(validator: RequestValidator, url: str, params: dict[str, str], token: str) -> dict[str, str]:
    """The headers of a Twilio webhook: X-Twilio-Signature over the full URL and the POST parameters."""
    return {"X-Twilio-Signature": validator.compute_signature(url, params), "User-Agent": "TwilioProxy/1.1",
            "I-Twilio-Idempotency-Token": token}


def _twiml_find(body: str, tag: str) -> Any:
    try:
        root = ElementTree.fromstring(body)
    except ElementTree.ParseError:
        return None
    return next(root.iter(tag), None)


class _Run:
    def __init__(self, opts: SimulationOptions, stop: asyncio.Event) -> None:
        self.opts, self.stop = opts, stop
        self.base = opts.url.rstrip("/")
        self.public_url = (opts.public_url or opts.url).rstrip("/")
        self.ws_url = ("wss" + self.base[5:] if self.base.startswith("https") else "ws" + self.base[4:]) + "/ws"
        self.validator = RequestValidator(opts.twilio_auth_token)
        self.tally = _Tally()
        self.agents: dict[str, _AgentClient] = {}
        self.calls: dict[str, _CallActor] = {}
        self.bridged_to: dict[str, str] = {}  # caller sid -> agent, to check screen pops
        self.tasks: list[asyncio.Task[None]] = []
        self.start: float | None = None
        self.stopping = False
        self.planner_account_sid = ""
        self.session: aiohttp.ClientSession | None = None

    def sim_now(self) -> float:
        return 0.0 if self.start is None else (asyncio.get_running_loop().time() - self.start) * self.opts.speed

    async def post(self, url: str, params: dict[str, str], token: str, call_sid: str, duplicate: bool) -> str | None:
        """Sign and POST one webhook as Twilio would; the body on 2xx, else None (and the error counted)."""
        assert self.session is not None
        if "CallDuration" in params:
            params = params | {"Timestamp": email.utils.format_datetime(datetime.now(UTC).replace(microsecond=0))}
        target = self.base + url[len(self.public_url):] if url.startswith(self.public_url) else url
        route = url.split("?")[0].rsplit("/", 1)[-1]
        self.tally.requests[route] = self.tally.requests.get(route, 0) + 1
        self.tally.duplicates += duplicate
        headers = signed_headers(self.validator, url, params, token or call_sid)
        try:
            async with self.session.post(target, data=params, headers=headers) as resp:
                body = await resp.text()
                if 200 <= resp.status < 300:
                    return body
                self.tally.problem("webhook_errors", {"route": route, "call": call_sid, "status": resp.status,
                                                      "body": body[:300]})
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.tally.problem("webhook_errors", {"route": route, "call": call_sid, "status": None,
                                                  "body": f"{type(exc).__name__}: {exc}"})
        return None

    def route(self, step: Step) -> None:
        if step.agent is not None and step.actor.startswith("agent:"):
            agent = self.agents.get(step.agent)
            if agent is None:
                agent = self.agents[step.agent] = _AgentClient(self, step.agent)
            self.tasks.append(asyncio.create_task(agent.perform(step), name=f"sim-{step.actor}-{step.kind}"))
            return
        actor = self.calls.get(step.actor)
        if actor is None:
            assert step.call is not None
            actor = self.calls[step.actor] = _CallActor(self, step.call)
            self.tasks.append(asyncio.create_task(actor.run_steps(), name=f"sim-{step.actor}"))
        actor.queue.put_nowait(step)
        if step.kind == "end":
            del self.calls[step.actor]

    async def run(self) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        planner = Planner(self.opts)
        self.planner_account_sid = planner.account_sid
        connector = aiohttp.TCPConnector(limit=64)
        self.session = aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=15))
        began = loop.time()
        try:
            await self._replay(planner.run())
        finally:
            self.stopping = True
            for actor in list(self.calls.values()):
                actor.queue.put_nowait(None)
            self.calls.clear()
            late = await self._settle(self.tasks, CLEANUP_TIMEOUT_S)
            report = self.report(loop.time() - began) | {"unfinished_at_stop": late}
            await self._settle([asyncio.create_task(a.perform(Step(0, "", "logout", agent=a.id, leg="stop")))
                                for a in self.agents.values()], LOGIN_TIMEOUT_S)
            await self.session.close()
        return report

    async def _settle(self, tasks: list[asyncio.Task[None]], timeout_s: float) -> int:
        """Wait for tasks; cancel the ones still running after timeout_s; log any that failed. Returns the late."""
        self.tasks = [t for t in tasks if not t.done()]
        late: set[asyncio.Task[None]] = set()
        if self.tasks:
            _, late = await asyncio.wait(self.tasks, timeout=timeout_s)
        for task in late:
            log.warning("simulator: %s still running %.0f s after the stop; cancelled", task.get_name(), timeout_s)
            task.cancel()
        for task in tasks:
            if task.done() and not task.cancelled() and task.exception() is not None:
                log.error("simulator: %s failed", task.get_name(), exc_info=task.exception())
        return len(late)

    async def _replay(self, steps: Iterator[Step]) -> None:
        loop = asyncio.get_running_loop()
        deadline: float | None = None
        for step in steps:
            self.tasks = [t for t in self.tasks if not t.done() or self._failed(t)]
            if self.start is None and step.at_s > 0:
                deadline = await self._start_clock()
            if self.start is not None:
                due = self.start + step.at_s / self.opts.speed
                if deadline is not None and due > deadline:
                    break
                if await self._stopped_within(due - loop.time()):
                    return
            self.route(step)
        if self.start is None:
            deadline = await self._start_clock()
        if deadline is not None:
            await self._stopped_within(deadline - loop.time())
        else:
            await self.stop.wait()

    async def _start_clock(self) -> float | None:
        """Start once every tab is open (a caller must never find the center still signing in); the deadline."""
        if self.tasks:
            await asyncio.wait(self.tasks)
        self.start = asyncio.get_running_loop().time()
        return None if self.opts.duration_s is None else self.start + self.opts.duration_s

    @staticmethod
    def _failed(task: asyncio.Task[None]) -> bool:
        """Log a finished task's exception once (so none is lost when it is dropped from the list)."""
        if not task.cancelled() and task.exception() is not None:
            log.error("simulator: %s failed", task.get_name(), exc_info=task.exception())
        return False

    async def _stopped_within(self, delay_s: float) -> bool:
        if delay_s > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), delay_s)
        return self.stop.is_set()

    def report(self, elapsed_s: float) -> dict[str, Any]:
        t = self.tally
        return {
            "seed": self.opts.seed, "speed": self.opts.speed, "elapsed_s": round(elapsed_s, 2),
            "simulated_s": round(self.sim_now(), 1),
            "calls": dict(t.calls), "by_queue": t.by_queue,
            "webhooks": {"requests": dict(t.requests), "duplicates_sent": t.duplicates,
                         "errors": t.counts["webhook_errors"], "error_samples": t.samples["webhook_errors"]},
            "agents": dict(t.agents) | {"simulated": len(self.agents), "pops_with_customer": len(t.known_pops),
                                        "connected": sum(a.ws is not None for a in self.agents.values()),
                                        "expected_connected": sum(a.wanted for a in self.agents.values()),
                                        "final_states": {a.id: a.state for a in self.agents.values()}},
            "websocket": {"errors": t.counts["websocket_errors"], "error_samples": t.samples["websocket_errors"],
                          "unexpected_closes": t.counts["unexpected_closes"],
                          "close_samples": t.samples["unexpected_closes"]},
            "divergences": t.counts["divergences"], "divergence_samples": t.samples["divergences"],
        }


async def run_simulation(opts: SimulationOptions, stop: asyncio.Event | None = None) -> dict[str, Any]:
    """Replay the plan against opts.url until duration or `stop`, end calls in flight, return the report."""
    return await _Run(opts, stop or asyncio.Event()).run()


async def run_until_interrupted(opts: SimulationOptions) -> dict[str, Any]:
    """run_simulation with Ctrl-C / SIGTERM as the stop: the calls in flight still end and the report is returned."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        return await run_simulation(opts, stop)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def format_report(report: dict[str, Any]) -> str:
    """A short English summary for the terminal, then the full report as JSON."""
    c, w, a = report["calls"], report["webhooks"], report["agents"]
    lines = [
        f"simulated {report['simulated_s']:.0f} s in {report['elapsed_s']:.0f} s (seed {report['seed']}, speed {report['speed']}x)",
        f"calls: {c['offered']} offered, {c['answered']} answered, {c['abandoned']} abandoned, {c['unstaffed']} unstaffed",
        f"agents: {a['simulated']} simulated, {a['logins']} logins, {a['breaks']} breaks, {a['reloads']} reloads, "
        f"{a['drops']} drop-offs, {a['pops']} screen pops ({a['pops_with_customer']} with a customer)",
        f"problems: {w['errors']} webhook errors, {report['websocket']['errors']} websocket errors, "
        f"{report['websocket']['unexpected_closes']} unexpected closes, {report['divergences']} divergences",
    ]
    return "\n".join(lines) + "\n" + json.dumps(report, indent=2, sort_keys=True)
