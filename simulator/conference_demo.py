"""`callboard demo --bridge conference`: a simulated center on the conference bridge, Twilio played by the emulator.

Callers dial in through the Twilio emulator (simulator/twilio_api.py), which requests callboard's webhooks
signed as Twilio would and runs the TwiML it gets back. Agents are real websocket clients with an emulated
softphone, working the way the console lets them:

- pull routing: an available agent whose queues have someone waiting clicks "Take next caller" — their
  softphone places its TwiML App call (`/twilio/voice/agent`, `queue=`); callboard claims the caller, moves
  it into its conference (a Calls update) and answers the agent's leg with the same conference;
- offer routing: agents accept (or reject, or let ring out) the router's offers; the accepted caller is
  dequeued to `connect`, which puts it in its conference and rings the agent in as a participant;
- on the call: some callers are put on hold and resumed (`/api/calls/{sid}/hold`), some transferred to a
  colleague who is available (`transfer` `{"agent"}`: rung in as a participant, the first agent leaves when
  they answer) or to another queue (`transfer` `{"queue"}`, the caller keeps its place), the rest end — the
  caller hangs up or the agent does (`hangup`); after each call the agent records a wrap-up with a
  disposition from `[center] dispositions` (`wrap-up`).

The demo keeps its own count of what it saw — callers offered (enqueued), answered (their first screen
pop), abandoned (ended without one), per queue — and `DemoReport.by_queue` is what the server's statistics
must say (tests compare them). Every control answered with something other than the expected is an error,
counted and logged. `speed` divides every simulated duration but not the server's own timers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, WebSocketException

from callboard.auth import issue_token
from callboard.config import Config
from simulator.crew import Crew
from simulator.offer_demo import KNOWN_CALLER_SHARE, caller_number
from simulator.twilio_api import ENDED, EmuCall, TwilioEmulator, new_sid

log = logging.getLogger("callboard.simulator.conference")

NOTES = ("", "", "customer will call back", "asked about the invoice", "sent the link by email")


@dataclass(frozen=True)
class ConferenceBehaviour:
    """How simulated agents and callers behave, in simulated seconds (probabilities per call)."""

    think_s: tuple[float, float] = (1.0, 4.0)  # before "Take next caller", before answering an offer
    accept_p: float = 0.85  # offer routing: the rest are rejected or let ring out, half and half
    talk_s: tuple[float, float] = (40.0, 160.0)
    hold_p: float = 0.3
    hold_s: tuple[float, float] = (5.0, 20.0)
    transfer_agent_p: float = 0.15
    transfer_queue_p: float = 0.08
    caller_hangs_up_p: float = 0.5  # at the end of the talk; otherwise the agent hangs up
    wrap_s: tuple[float, float] = (1.0, 4.0)  # until the disposition is recorded
    patience_s: tuple[float, float] = (60.0, 300.0)
    back_after_missed_s: tuple[float, float] = (20.0, 60.0)


@dataclass
class DemoReport:
    counts: Counter[str] = field(default_factory=Counter)
    by_queue: dict[str, Counter[str]] = field(default_factory=dict)
    statistics: str | None = None  # "match" or what differs: the server's counts against ours, after the stop

    def count(self, queue: str, what: str) -> None:
        self.by_queue.setdefault(queue, Counter())[what] += 1

    def queue_counts(self) -> dict[str, dict[str, int]]:
        """Per queue: offered, answered, abandoned — what the server's statistics must say."""
        return {q: {k: c[k] for k in ("offered", "answered", "abandoned")} for q, c in self.by_queue.items()}

    def line(self) -> str:
        c = self.counts
        check = "" if self.statistics is None else f", server statistics {self.statistics}"
        return (f"callers {c['callers']}, answered {c['answered']}, abandoned {c['abandoned']}, "
                f"holds {c['holds']}, transfers to agents {c['transfers_agent']} (taken {c['transfers_taken']}, "
                f"refused {c['transfers_refused']}, not answered {c['transfers_not_taken']}), "
                f"transfers to queues {c['transfers_queue']}, wrap-ups {c['dispositions']}, "
                f"callers found in the directory {c['known_pops']} (offered to their owner first "
                f"{c['offers_to_owner']}), errors {c['errors']}{check}")


class _Agent:
    """One agent: a websocket console, the controls it clicks, and the softphone the emulator rings."""

    def __init__(self, demo: ConferenceDemo, agent_id: str, queues: tuple[str, ...]) -> None:
        self.demo, self.id, self.queues = demo, agent_id, queues
        self.token = issue_token(demo.secret, agent_id, "agent", 24 * 3600)
        self.ws: ClientConnection | None = None
        self.state: str | None = None
        self.leg: str | None = None  # the softphone's current call leg
        self.busy = False  # from a screen pop until the wrap-up is recorded
        self.caller: str | None = None  # the caller of the call popped last, until its wrap-up
        self.accepted: set[str] = set()
        self.changed = asyncio.Event()

    # -- the console's websocket -------------------------------------------------------------------------

    async def run(self) -> None:
        while not self.demo.stop.is_set():
            try:
                async with connect(self.demo.ws_url, subprotocols=["callboard.v1.json"], open_timeout=10,
                                   proxy=None) as ws:
                    self.ws = ws
                    await ws.send(json.dumps({"type": "hello", "token": self.token}))
                    async for raw in ws:
                        self.on_message(json.loads(raw))
            except ConnectionClosed:
                pass
            except (OSError, WebSocketException, TimeoutError) as exc:
                log.warning("demo agent %s: websocket %r; reconnecting", self.id, exc)
            self.ws = None
            await self.demo.wall_sleep(1.0)

    def on_message(self, msg: dict[str, Any]) -> None:
        kind, counts = msg.get("type"), self.demo.report.counts
        if kind == "snapshot":
            self._state((msg.get("agents", {}).get(self.id) or {}).get("state"))
        elif kind == "delta":
            me = (msg.get("agents") or {}).get(self.id) or {}
            if "state" in me:
                self._state(me["state"])
                if me.get("reason") == "missed offers":
                    self.demo.spawn(self.come_back())
        elif kind == "offer":
            counts["offers"] += 1
            if any(c.get("owner") == self.id for c in msg.get("customers") or ()):
                counts["offers_to_owner"] += 1  # the router's first step: the customer's owner
            self.demo.spawn(self.answer_offer(msg["offer_id"]))
        elif kind == "pop":  # the server counted this caller answered (a transfer's pop repeats a caller)
            caller = str(msg.get("call_sid", ""))
            if msg.get("customers"):
                self.demo.found_customer(caller)
            if caller == self.caller:
                return  # the same call's pop again: the lookup's answer came after the first, or a reconnect
            self.caller = caller  # now, not in the task: a second pop may come before the task runs
            self.demo.answered(caller)
            self.demo.spawn(self.handle_call(caller))
        elif kind == "transfer_failed":
            counts["transfers_not_taken"] += 1
        elif kind == "error" and msg.get("code") == "no_offer":
            counts["offers_gone"] += 1  # clicked after the offer ended (the caller left, or it timed out)
        elif kind == "error":
            counts["errors"] += 1
            log.warning("demo agent %s: %s", self.id, msg)

    def _state(self, state: str | None) -> None:
        self.state = state
        self.changed.set()

    async def send(self, msg: dict[str, Any]) -> None:
        if self.ws is not None:
            with contextlib.suppress(ConnectionClosed, OSError):
                await self.ws.send(json.dumps(msg))

    async def come_back(self) -> None:
        await self.demo.sleep(self.demo.rng.uniform(*self.demo.behaviour.back_after_missed_s))
        await self.send({"type": "set_state", "state": "available"})

    # -- taking callers ----------------------------------------------------------------------------------

    async def take_loop(self) -> None:
        """Pull routing: when available and someone waits in one of my queues, "Take next caller"."""
        demo = self.demo
        while not demo.stop.is_set():
            if self.state != "available" or self.busy or self.leg is not None:
                self.changed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.changed.wait(), 1.0)
                continue
            await demo.sleep(demo.rng.uniform(*demo.behaviour.think_s))
            queue = demo.waiting_queue(self.queues)
            if demo.stop.is_set() or queue is None or self.state != "available" or self.busy or self.leg is not None:
                await demo.wall_sleep(0.3)
                continue
            self.leg = sid = new_sid("CA")
            demo.report.counts["takes"] += 1
            leg = await demo.emu.place_call(from_=f"client:{self.id}", to="", url=f"{demo.base}/twilio/voice/agent",
                                            status_callback=f"{demo.base}/twilio/voice/status", sid=sid,
                                            params={"queue": queue})
            if leg.conference is None and not self.busy:  # somebody else took that caller first
                demo.report.counts["takes_missed"] += 1
                if self.leg == sid:
                    self.leg = None
                continue
            await self.wait_until_free()

    async def wait_until_free(self) -> None:
        while (self.busy or self.leg is not None) and not self.demo.stop.is_set():
            await self.demo.wall_sleep(0.2)

    async def answer_offer(self, offer_id: str) -> None:
        demo, b = self.demo, self.demo.behaviour
        roll = demo.rng.random()
        await demo.sleep(demo.rng.uniform(*b.think_s))
        if roll < b.accept_p:
            self.accepted.add(offer_id)
            demo.report.counts["accepted"] += 1
            await self.send({"type": "accept", "offer_id": offer_id})
        elif roll < b.accept_p + (1 - b.accept_p) / 2:
            demo.report.counts["rejected"] += 1
            await self.send({"type": "reject", "offer_id": offer_id})
        else:
            demo.report.counts["missed"] += 1  # let it ring out

    async def softphone(self, params: dict[str, str], leg: EmuCall) -> str:
        """The emulator rings this agent's client as a participant: an accepted offer, or a transfer to me."""
        offer_id = params.get("offer_id")
        if offer_id is not None:
            if offer_id not in self.accepted:
                return "no-answer"
            self.accepted.discard(offer_id)
        elif self.busy or self.leg is not None or self.state != "available":
            return "reject"  # a transfer while my softphone is busy
        if self.leg is not None:
            return "reject"
        self.leg = leg.sid
        await self.demo.sleep(self.demo.rng.uniform(0.5, 2.0))  # it rings; the agent clicks Answer
        return "answer"

    # -- on the call -------------------------------------------------------------------------------------

    async def handle_call(self, caller: str) -> None:
        """A screen pop: this caller is mine. Talk, maybe hold, maybe transfer, end, wrap up."""
        demo, b, rng = self.demo, self.demo.behaviour, self.demo.rng
        if self.busy or self.leg is None:
            demo.report.counts["errors"] += 1
            log.warning("demo agent %s: a screen pop for %s while %s", self.id, caller,
                        "busy" if self.busy else "no softphone call")
            return
        self.busy = True
        leg_sid = self.leg
        leg = demo.emu.calls.get(leg_sid)
        try:
            talk = rng.uniform(*b.talk_s)
            if rng.random() < b.hold_p:
                if await self.talk(leg, talk * 0.4):
                    return await self.wrap_up(caller, leg)
                if await demo.control(self, caller, "hold", {"on": True}):
                    demo.report.counts["holds"] += 1
                    ended = await self.talk(leg, rng.uniform(*b.hold_s))
                    if not ended and await demo.control(self, caller, "hold", {"on": False}):
                        demo.report.counts["resumes"] += 1
                talk *= 0.6
            if await self.talk(leg, talk):
                return await self.wrap_up(caller, leg)
            roll = rng.random()
            if roll < b.transfer_agent_p and await self.transfer_to_agent(caller, leg):
                return await self.wrap_up(caller, leg)
            if b.transfer_agent_p <= roll < b.transfer_agent_p + b.transfer_queue_p:
                queue = rng.choice([q.name for q in demo.config.queues])
                if await demo.control(self, caller, "transfer", {"queue": queue}):
                    demo.report.counts["transfers_queue"] += 1
                    return await self.wrap_up(caller, leg)
            caller_leg = demo.emu.calls.get(caller)
            if rng.random() < b.caller_hangs_up_p and caller_leg is not None:
                demo.report.counts["caller_hangups"] += 1
                await demo.emu.hangup(caller)
            elif await demo.control(self, caller, "hangup", {}):
                demo.report.counts["agent_hangups"] += 1
            await self.wrap_up(caller, leg)
        finally:
            self.busy = False
            if self.caller == caller:
                self.caller = None
            if self.leg == leg_sid:
                self.leg = None

    async def talk(self, leg: EmuCall | None, simulated_s: float) -> bool:
        """Talk for a while; True if my leg ended meanwhile (the caller hung up, I was transferred away)."""
        if leg is None:
            return True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(leg.ended.wait(), simulated_s / self.demo.speed)
        return leg.status in ENDED or self.demo.stop.is_set()

    async def transfer_to_agent(self, caller: str, leg: EmuCall | None) -> bool:
        """Cold transfer to a free colleague; True if they took it (my leg ended when they answered)."""
        demo = self.demo
        target = demo.free_agent(exclude=self.id)
        if target is None:
            return False
        status, body = await demo.api(self, caller, "transfer", {"agent": target.id})
        if status == 409 and body.get("code") in ("agent_busy", "agent_ringing", "transfer_pending"):
            demo.report.counts["transfers_refused"] += 1  # busy or being offered a call meanwhile: the server said so
            return False
        if status != 200:
            demo.error("transfer", caller, status, body)
            return False
        demo.report.counts["transfers_agent"] += 1
        if leg is not None:  # the colleague rings (at most 20 s); when they answer, I am removed
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(leg.ended.wait(), 25.0)
        if leg is not None and leg.status in ENDED:
            demo.report.counts["transfers_taken"] += 1
            return True
        return False

    async def wrap_up(self, caller: str, leg: EmuCall | None) -> None:
        demo = self.demo
        if leg is not None:  # the call ends for me when my leg does (the conference ended or I left it)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(leg.ended.wait(), 10.0)
        if demo.stop.is_set():
            return
        await demo.sleep(demo.rng.uniform(*demo.behaviour.wrap_s))
        body = {"disposition": demo.rng.choice(demo.config.center.dispositions), "note": demo.rng.choice(NOTES)}
        if await demo.control(self, caller, "wrap-up", body):
            demo.report.counts["dispositions"] += 1


class ConferenceDemo:
    """Callers through the emulator, agents on websockets and the controls API, until `stop` is set."""

    def __init__(self, *, config: Config, secret: str, emu: TwilioEmulator, base: str, stop: asyncio.Event,
                 calls_per_minute: float = 4.0, speed: float = 1.0, seed: int = 1,
                 behaviour: ConferenceBehaviour | None = None, known_callers: tuple[str, ...] = (),
                 known_share: float = KNOWN_CALLER_SHARE) -> None:
        self.config, self.secret, self.emu, self.base, self.stop = config, secret, emu, base.rstrip("/"), stop
        self.ws_url = self.base.replace("http", "ws", 1) + "/ws"
        self.offer_mode = config.routing.mode == "offer"
        self.calls_per_minute, self.speed = calls_per_minute, speed
        self.rng = random.Random(seed)
        self.behaviour = behaviour or ConferenceBehaviour()
        self.report = DemoReport()
        self.crew = Crew(self.report.counts, stop, log, "conference demo")
        self.spawn, self.wall_sleep = self.crew.spawn, self.crew.sleep
        self.agents = {a.id: _Agent(self, a.id, tuple(a.queues)) for a in config.agents}
        self.numbers = [(q.name, q.numbers[0]) for q in config.queues if q.numbers]
        self.queue_of: dict[str, str] = {}  # caller sid -> the queue it was first offered to
        self.popped: set[str] = set()  # callers answered (first screen pop)
        self.known_callers = known_callers  # the directory's numbers (simulator/directory.py): half dial from these
        self.known_share = known_share
        # its own stream: which number a caller dials leaves the behaviour's draws (talk, hold, ...) as they were
        self.caller_rng = random.Random(f"{seed}-callers")
        self.known: set[str] = set()  # callers whose pop named a customer
        self.session: aiohttp.ClientSession | None = None
        self.baseline: dict[str, dict[str, int]] | None = None

    # -- helpers -----------------------------------------------------------------------------------------

    async def sleep(self, simulated_s: float) -> None:
        await self.wall_sleep(simulated_s / self.speed)

    def waiting_queue(self, queues: tuple[str, ...]) -> str | None:
        """The agent's queue whose front caller has waited longest (what the console shows), or None."""
        fronts = []
        for name in queues:
            queue = self.emu.queue_named(name)
            if queue is not None and queue.members:
                fronts.append((self.emu.calls[queue.members[0]].enqueued_at, name))
        return min(fronts)[1] if fronts else None

    def free_agent(self, exclude: str) -> _Agent | None:
        free = [a for a in self.agents.values()
                if a.id != exclude and a.state == "available" and not a.busy and a.leg is None and a.ws is not None]
        return self.rng.choice(free) if free else None

    def answered(self, caller: str) -> None:
        if caller in self.popped:
            return  # taken again after a transfer: one call, answered once
        self.popped.add(caller)
        self.report.counts["answered"] += 1
        self.report.count(self.queue_of.get(caller, "?"), "answered")

    def found_customer(self, caller: str) -> None:
        if caller not in self.known:
            self.known.add(caller)
            self.report.counts["known_pops"] += 1

    def error(self, control: str, caller: str, status: int, body: Any) -> None:
        self.report.counts["errors"] += 1
        log.warning("conference demo: %s of %s answered %s: %s", control, caller, status, body)

    async def api(self, agent: _Agent, caller: str, control: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        assert self.session is not None
        try:
            async with self.session.post(f"{self.base}/api/calls/{caller}/{control}", json=body,
                                         headers={"Authorization": f"Bearer {agent.token}"}) as resp:
                return resp.status, await resp.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            return 0, {"error": repr(exc)}

    async def control(self, agent: _Agent, caller: str, control: str, body: dict[str, Any]) -> bool:
        """A console button; True when the server did it. Anything else is an error (counted, logged)."""
        status, answer = await self.api(agent, caller, control, body)
        if status == 200:
            return True
        if self.stop.is_set():
            return False
        self.error(control, caller, status, answer)
        return False

    # -- callers -----------------------------------------------------------------------------------------

    async def caller(self) -> None:
        queue, number = self.rng.choice(self.numbers)
        frm = caller_number(self.caller_rng, self.known_callers, self.known_share)
        patience = self.rng.uniform(*self.behaviour.patience_s)
        self.report.counts["callers"] += 1
        call = await self.emu.place_call(from_=frm, to=number, url=f"{self.base}/twilio/voice/incoming",
                                         status_callback=f"{self.base}/twilio/voice/status")
        if call.queue is None and call.sid not in self.popped:
            if call.status not in ENDED:
                self.report.counts["errors"] += 1
                log.warning("conference demo: caller %s was neither queued nor sent away: %s", call.sid, call.events)
            else:
                self.report.counts["unstaffed"] += 1
            return
        self.queue_of[call.sid] = call.queue or queue
        self.report.count(self.queue_of[call.sid], "offered")
        await self.sleep(patience)
        if call.queue is not None and call.status not in ENDED and call.sid not in self.popped and not self.stop.is_set():
            await self.emu.hangup(call.sid)  # tired of waiting

    def count_ended(self) -> None:
        """Callers who ended without a screen pop abandoned (the server counts the same)."""
        for sid, queue in self.queue_of.items():
            if sid not in self.popped and self.emu.calls[sid].status in ENDED:
                self.report.counts["abandoned"] += 1
                self.report.count(queue, "abandoned")

    # -- the run -----------------------------------------------------------------------------------------

    async def server_counts(self) -> dict[str, dict[str, int]] | None:
        """Today's offered/answered/abandoned per queue as the wallboard shows them, or None if unreachable."""
        assert self.session is not None
        wall = issue_token(self.secret, "demo-statistics-check", "wallboard", 600)
        try:
            async with self.session.get(f"{self.base}/api/snapshot", headers={"Authorization": f"Bearer {wall}"}) as resp:
                if resp.status != 200:
                    return None
                snap = await resp.json()
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return None
        return {q: {k: int(e["today"][k]) for k in ("offered", "answered", "abandoned")}
                for q, e in snap.get("queues", {}).items()}

    async def check_statistics(self, baseline: dict[str, dict[str, int]]) -> None:
        """The server's counts since the start must be ours exactly (they follow its change stream: poll a bit)."""
        ours = self.report.queue_counts()
        diff: dict[str, Any] = {}
        for _ in range(30):
            now = await self.server_counts()
            if now is None:
                break
            diff = {}
            for q, counts in now.items():
                theirs = {k: v - baseline.get(q, {}).get(k, 0) for k, v in counts.items()}
                mine = ours.get(q, {"offered": 0, "answered": 0, "abandoned": 0})
                if theirs != mine:
                    diff[q] = {"server": theirs, "demo": mine}
            if not diff:
                self.report.statistics = "match"
                return
            await asyncio.sleep(0.1)
        self.report.statistics = f"differ: {diff}" if diff else "not checked (no snapshot)"
        log.warning("conference demo: the server's statistics %s", self.report.statistics)

    async def run(self) -> DemoReport:
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        try:
            self.baseline = await self.server_counts()  # a day's counts may predate this run
            for agent in self.agents.values():
                self.emu.softphones[agent.id] = agent.softphone
                self.spawn(agent.run())
                if not self.offer_mode:
                    self.spawn(agent.take_loop())
            rate_per_s = self.calls_per_minute / 60.0 * self.speed
            while not self.stop.is_set() and rate_per_s > 0 and self.numbers:
                await self.wall_sleep(self.rng.expovariate(rate_per_s))
                if not self.stop.is_set():
                    self.spawn(self.caller())
            if rate_per_s <= 0 or not self.numbers:
                await self.stop.wait()
            await self.finish()
        finally:
            await self.session.close()
        return self.report

    async def finish(self) -> None:
        """Hang up every caller still up, let callboard hear of it, count, then close the agents."""
        for call in list(self.emu.calls.values()):
            if call.status not in ENDED and call.sid in self.queue_of:
                try:
                    await self.emu.hangup(call.sid)
                except Exception:  # a boundary: stopping goes on for the other calls
                    log.exception("conference demo: hanging up %s failed", call.sid)
        await self.emu.settle(5.0)
        await asyncio.sleep(0.5)  # pops in flight for callers answered just before the stop
        self.count_ended()
        if self.baseline is not None:
            await self.check_statistics(self.baseline)
        await self.crew.cancel_all()
        log.info("conference demo: %s", self.report.line())
