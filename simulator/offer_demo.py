"""`callboard demo --routing offer`: a simulated center in offer mode, Twilio played by the emulator.

Callers dial in through the Twilio emulator (simulator/twilio_api.py), which requests callboard's webhooks
signed as Twilio would and runs the TwiML it gets back. Agents are real websocket clients that answer the
router's offers the way people do: most accept after a few seconds, some reject, some let the offer ring
out (missed; two in a row sets them away, and they come back a little later). An accepted offer's dial
rings the agent's emulated softphone, which answers (now and then it fails to, which shows the re-queue),
talks for a while and hangs up. Callers who wait too long hang up.

`speed` divides every simulated duration (talk, patience, think time) but not the server's own timers.
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

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, WebSocketException

from callboard.auth import issue_token
from callboard.config import Config
from simulator.crew import Crew
from simulator.twilio_api import EmuCall, TwilioEmulator

log = logging.getLogger("callboard.simulator.offers")

DEMO_ACCOUNT_SID = "AC" + "d" * 32
KNOWN_CALLER_SHARE = 0.5  # of the callers, when the demo knows the directory's numbers


def caller_number(rng: random.Random, known_callers: tuple[str, ...], share: float = KNOWN_CALLER_SHARE) -> str:
    """A caller's From: a customer's number `share` of the time (no draw without any), else a random one."""
    if known_callers and rng.random() < share:
        return rng.choice(known_callers)
    return f"+1555{rng.randint(2000000, 9999999)}"


@dataclass(frozen=True)
class OfferBehaviour:
    """How simulated agents and callers behave, in simulated seconds."""

    accept_p: float = 0.82
    reject_p: float = 0.08  # the rest let the offer ring out (missed)
    think_s: tuple[float, float] = (1.0, 5.0)
    softphone_fails_p: float = 0.04  # accepted, but the softphone does not answer: the caller is re-queued
    talk_s: tuple[float, float] = (40.0, 200.0)
    patience_s: tuple[float, float] = (60.0, 300.0)
    back_after_missed_s: tuple[float, float] = (20.0, 60.0)


@dataclass
class OfferDemoReport:
    counts: Counter[str] = field(default_factory=Counter)

    def line(self) -> str:
        c = self.counts
        return (f"offers {c['offers']} (accepted {c['accepted']}, rejected {c['rejected']}, missed {c['missed']}), "
                f"callers {c['callers']}, bridged {c['bridged']}, hung up waiting {c['gave_up']}, "
                f"requeued by a silent softphone {c['softphone_failed']}, callers found in the directory "
                f"{c['known_pops']} (offered to their owner first {c['offers_to_owner']}), errors {c['errors']}")


class _Agent:
    """One agent's console: a websocket answering offers, and the softphone the emulator rings."""

    def __init__(self, demo: OfferDemo, agent_id: str) -> None:
        self.demo, self.id = demo, agent_id
        self.ws: ClientConnection | None = None
        self.accepted: set[str] = set()
        self.state: str | None = None

    async def run(self) -> None:
        token = issue_token(self.demo.secret, self.id, "agent", 24 * 3600)
        while not self.demo.stop.is_set():
            try:
                async with connect(self.demo.ws_url, subprotocols=["callboard.v1.json"], open_timeout=10,
                                   proxy=None) as ws:
                    self.ws = ws
                    await ws.send(json.dumps({"type": "hello", "token": token}))
                    async for raw in ws:
                        await self.on_message(json.loads(raw))
            except ConnectionClosed:
                pass
            except (OSError, WebSocketException, TimeoutError) as exc:
                log.warning("demo agent %s: websocket %r; reconnecting", self.id, exc)
            self.ws = None
            await asyncio.sleep(1.0)

    async def on_message(self, msg: dict[str, Any]) -> None:
        kind = msg.get("type")
        if kind == "offer":
            self.demo.report.counts["offers"] += 1
            if any(c.get("owner") == self.id for c in msg.get("customers") or ()):
                self.demo.report.counts["offers_to_owner"] += 1  # the router's first step: the customer's owner
            self.demo.spawn(self.answer(msg["offer_id"]))
        elif kind == "pop":
            self.demo.pop(msg)
        elif kind == "snapshot":
            self.state = (msg.get("agents", {}).get(self.id) or {}).get("state")
        elif kind == "delta":
            me = (msg.get("agents") or {}).get(self.id) or {}
            if "state" in me:
                self.state = me["state"]
                if me.get("reason") == "missed offers":
                    self.demo.spawn(self.come_back())
        elif kind == "error":
            self.demo.report.counts["errors"] += 1
            log.warning("demo agent %s: %s", self.id, msg)

    async def answer(self, offer_id: str) -> None:
        demo, b = self.demo, self.demo.behaviour
        roll = demo.rng.random()
        await demo.sleep(demo.rng.uniform(*b.think_s))
        if roll < b.accept_p:
            self.accepted.add(offer_id)
            demo.report.counts["accepted"] += 1
            await self.send({"type": "accept", "offer_id": offer_id})
        elif roll < b.accept_p + b.reject_p:
            demo.report.counts["rejected"] += 1
            await self.send({"type": "reject", "offer_id": offer_id})
        else:
            demo.report.counts["missed"] += 1  # let it ring out

    async def come_back(self) -> None:
        await self.demo.sleep(self.demo.rng.uniform(*self.demo.behaviour.back_after_missed_s))
        await self.send({"type": "set_state", "state": "available"})

    async def send(self, msg: dict[str, Any]) -> None:
        if self.ws is not None:
            with contextlib.suppress(ConnectionClosed, OSError):
                await self.ws.send(json.dumps(msg))

    async def softphone(self, params: dict[str, str], caller: EmuCall) -> str:
        """The emulator rings this agent's client: answer the call of an offer this agent accepted."""
        offer_id = params.get("offer_id", "")
        if offer_id not in self.accepted:
            return "no-answer"
        self.accepted.discard(offer_id)
        if self.demo.rng.random() < self.demo.behaviour.softphone_fails_p:
            self.demo.report.counts["softphone_failed"] += 1
            return "reject"
        self.demo.spawn(self.talk(caller))
        return "answer"

    async def talk(self, caller: EmuCall) -> None:
        for _ in range(200):  # the bridge follows the answer at once; wait for it
            if caller.bridged_to or caller.status == "completed":
                break
            await asyncio.sleep(0.05)
        if not caller.bridged_to:
            return
        self.demo.report.counts["bridged"] += 1
        child = caller.bridged_to
        await self.demo.sleep(self.demo.rng.uniform(*self.demo.behaviour.talk_s))
        await self.demo.emu.hangup(child)  # the agent hangs up; wrap-up follows on the server


class OfferDemo:
    """Callers through the emulator, agents on websockets, until `stop` is set."""

    def __init__(self, *, config: Config, secret: str, emu: TwilioEmulator, base: str, stop: asyncio.Event,
                 calls_per_minute: float = 4.0, speed: float = 1.0, seed: int = 1,
                 behaviour: OfferBehaviour | None = None, known_callers: tuple[str, ...] = (),
                 known_share: float = KNOWN_CALLER_SHARE) -> None:
        self.config, self.secret, self.emu, self.base, self.stop = config, secret, emu, base.rstrip("/"), stop
        self.ws_url = self.base.replace("http", "ws", 1) + "/ws"
        self.calls_per_minute, self.speed = calls_per_minute, speed
        self.rng = random.Random(seed)
        self.behaviour = behaviour or OfferBehaviour()
        self.report = OfferDemoReport()
        self.crew = Crew(self.report.counts, stop, log, "offer demo")
        self.spawn = self.crew.spawn
        self.agents = {a.id: _Agent(self, a.id) for a in config.agents}
        self.numbers = [(q.name, q.numbers[0]) for q in config.queues if q.numbers]
        self.known_callers = known_callers  # the directory's numbers (simulator/directory.py): half dial from these
        self.known_share = known_share
        # its own stream: which number a caller dials leaves the behaviour's draws (talk, hold, ...) as they were
        self.caller_rng = random.Random(f"{seed}-callers")
        self.known_pops: set[str] = set()

    def pop(self, msg: dict[str, Any]) -> None:
        """A screen pop: count the calls whose pop named a customer (the lookup's pop may come a second time)."""
        sid = str(msg.get("call_sid", ""))
        if msg.get("customers") and sid not in self.known_pops:
            self.known_pops.add(sid)
            self.report.counts["known_pops"] += 1

    async def sleep(self, simulated_s: float) -> None:
        await self.crew.sleep(simulated_s / self.speed)

    async def caller(self, n: int) -> None:
        queue, number = self.rng.choice(self.numbers)
        frm = caller_number(self.caller_rng, self.known_callers, self.known_share)
        self.report.counts["callers"] += 1
        call = await self.emu.place_call(from_=frm, to=number, url=f"{self.base}/twilio/voice/incoming",
                                         status_callback=f"{self.base}/twilio/voice/status")
        await self.sleep(self.rng.uniform(*self.behaviour.patience_s))
        if call.queue_sid is not None and call.status != "completed":  # still waiting: gives up
            self.report.counts["gave_up"] += 1
            await self.emu.hangup(call.sid)

    async def run(self) -> OfferDemoReport:
        for agent in self.agents.values():
            self.emu.softphones[agent.id] = agent.softphone
            self.spawn(agent.run())
        n = 0
        rate_per_s = self.calls_per_minute / 60.0 * self.speed
        while not self.stop.is_set() and rate_per_s > 0 and self.numbers:
            await self.crew.sleep(self.rng.expovariate(rate_per_s))
            if self.stop.is_set():
                break
            n += 1
            self.spawn(self.caller(n))
        if rate_per_s <= 0:
            await self.stop.wait()
        await self.finish()
        return self.report

    async def finish(self) -> None:
        """Hang up every call still up, then close the agents."""
        for call in list(self.emu.calls.values()):
            if call.status != "completed" and call.parent_sid is None:
                try:
                    await self.emu.hangup(call.sid)
                except Exception:  # a boundary: stopping goes on for the other calls
                    log.exception("offer demo: hanging up %s failed", call.sid)
        await self.crew.cancel_all()
        log.info("offer demo: %s", self.report.line())
