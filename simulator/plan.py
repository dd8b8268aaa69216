"""The simulated day as a plan: a discrete-event simulation in simulated seconds, pure and seeded.

`schedule(opts)` yields every webhook request and every websocket action of the day in time order. All
randomness comes from one `random.Random(opts.seed)` consumed in event order, so the plan is a pure
function of the options (seed, rates, agents, speed, config): the same options give the same day, which
tests check step by step. Agents take callers by our own model of their state — what we sent, plus the
server's wrap_up_s — so planning needs nothing from the server. Server timers (wrap_up_s,
disconnect_grace_s) run in real seconds and are converted to simulated seconds with `speed`.

The model is Twilio's: one FIFO per queue; an agent that is free clicks "Take next caller" after a short
reaction (its softphone calls the `agent` route with `queue=`), Twilio dequeues the head of that queue and
asks `bridge`; when the conversation ends come the agent leg's status callback, the caller's Enqueue action
(`queue-result`, QueueResult=bridged) and the caller's status callback. A caller whose patience runs out
first hangs up (QueueResult=hangup). A small seeded share of requests is delivered twice (Twilio retries)
and of callers' status callbacks overtakes their queue-result. Callers dial from a pool of random numbers,
or, a share of them, from `known_callers` (the demo's directory, so screen pops find the customer).
"""

from __future__ import annotations

import heapq
import math
import random
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from callboard.config import Agent, Config

API_VERSION = "2010-04-01"
WAIT_POLL_EVERY_S = 10.0  # Twilio re-requests waitUrl when the wait TwiML ends; ours pauses about this long
MAX_QUEUE_SIZE = 1000  # Twilio's default queue size
AREA_CODES = ("212", "303", "312", "404", "415", "503", "602", "617", "713", "206", "305", "512")
CUSTOMERS = 500  # the pool of caller numbers: people call back, and screen pops show their history
END_LEGS = ("agent-status", "queue-result", "caller-status")



@dataclass(frozen=True, slots=True)
class Behaviour:
    """Distributions of the simulated day, in simulated seconds."""

    patience_median_s: float = 90.0  # lognormal: most callers hold a minute or two
    patience_sigma: float = 0.8
    instant_hangup_rate: float = 0.03  # hang up within seconds (the short abandons the SL excludes)
    talk_median_s: float = 150.0  # lognormal, sigma 0.6: mean about 3 minutes
    talk_sigma: float = 0.6
    reaction_min_s: float = 1.5  # "Take next caller" click after the agent is free
    reaction_mean_extra_s: float = 3.0
    break_every_s: float = 90 * 60.0  # mean time between breaks, per agent (plus lunch, meetings)
    reload_every_s: float = 25 * 60.0  # mean time between tab reloads, per agent
    drop_every_s: float = 4 * 3600.0  # mean time between drop-offs (longer than the grace), per agent
    duplicate_rate: float = 0.03  # Twilio retried a request
    out_of_order_rate: float = 0.08  # caller's status callback before its queue-result
    known_caller_share: float = 0.5  # of arrivals, when SimulationOptions.known_callers names any


@dataclass
class SimulationOptions:
    """What to simulate and against which server. The plan depends only on the seed, the rates, the agents,
    speed, duration, config and behaviour; url, secrets and public_url only say where and how to send it."""

    url: str  # where the server is reached (http://host:port)
    agents: int | None  # how many of the config's agents to play; None: all
    calls_per_minute: float  # arrivals per simulated minute
    seed: int
    duration_s: float | None  # wall-clock seconds; None: until stopped
    speed: float  # simulated seconds per wall-clock second
    secret: str  # CALLBOARD_SECRET, to mint the agents' tokens
    twilio_auth_token: str  # to sign the webhooks
    public_url: str | None  # the base URL the server checks signatures against; None: url
    config: Config
    account_sid: str | None = None  # default: derived from the seed
    behaviour: Behaviour = field(default_factory=Behaviour)
    # numbers of customers in the server's directory (the demo's: simulator/directory.py): a share of the
    # callers dial from these, so screen pops find someone; empty: every caller is a random number
    known_callers: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class CallInfo:
    """A caller's call: what every request of that call repeats."""

    sid: str
    queue: str
    queue_sid: str
    from_number: str
    to_number: str
    arrived_s: float


@dataclass(frozen=True, slots=True)
class Step:
    """One action at simulated time `at_s`. Call actors post webhooks; agent actors use their socket."""

    at_s: float
    actor: str  # "call:<caller sid>" or "agent:<id>"
    kind: str  # webhook route, "end", or "login" / "logout" / "set_state"
    params: dict[str, str] = field(default_factory=dict)
    call: CallInfo | None = None
    agent: str | None = None
    leg: str = ""  # caller / agent leg, and which end-of-call request this is
    token: str = ""  # I-Twilio-Idempotency-Token: the same on a retry
    duplicate: bool = False


def select_agents(config: Config, count: int | None) -> list[Agent]:
    """`count` agents that cover as many queues as possible first, then in config order."""
    if count is None or count >= len(config.agents):
        return list(config.agents)
    chosen: list[Agent] = []
    for queue in config.queues:
        if len(chosen) < count and not any(queue.name in a.queues for a in chosen):
            agent = next((a for a in config.agents if queue.name in a.queues and a not in chosen), None)
            if agent is not None:
                chosen.append(agent)
    chosen += [a for a in config.agents if a not in chosen][: count - len(chosen)]
    return [a for a in config.agents if a in chosen]


def _sid(rng: random.Random, prefix: str) -> str:
    return prefix + f"{rng.getrandbits(128):032x}"


def caller_params(account_sid: str, call: CallInfo, status: str) -> dict[str, str]:
    """Twilio's standard voice request parameters of the caller's leg."""
    country = _country(call.from_number)
    return {
        "AccountSid": account_sid, "ApiVersion": API_VERSION, "CallSid": call.sid, "CallStatus": status,
        "Direction": "inbound", "From": call.from_number, "Caller": call.from_number, "To": call.to_number,
        "Called": call.to_number, "FromCountry": country, "CallerCountry": country, "ToCountry": "US",
        "CalledCountry": "US",
    }


def _country(e164: str) -> str:
    """The caller's country as Twilio names it (ISO 3166 alpha-2) for the demo directory's callers: +81 Japan,
    +44 the UK; the simulator's own random callers are all +1."""
    return {"+81": "JP", "+44": "GB"}.get(e164[:3], "US")


def agent_leg_params(account_sid: str, app_sid: str, agent_id: str, leg_sid: str, status: str) -> dict[str, str]:
    """Parameters of a Voice SDK call from `client:<id>` to the TwiML App (To is empty)."""
    client = f"client:{agent_id}"
    return {
        "AccountSid": account_sid, "ApiVersion": API_VERSION, "ApplicationSid": app_sid, "CallSid": leg_sid,
        "CallStatus": status, "Direction": "inbound", "From": client, "Caller": client, "To": "", "Called": "",
    }


def completed_params(base: dict[str, str], duration_s: float) -> dict[str, str]:
    """A status callback for a call that ended after `duration_s` (Timestamp is added when sent)."""
    return base | {"CallStatus": "completed", "CallDuration": str(max(0, math.ceil(duration_s))),
                   "CallbackSource": "call-progress-events", "SequenceNumber": "0"}


@dataclass(slots=True)
class _SimCall:
    info: CallInfo
    patience_s: float
    waiting: bool = True


@dataclass(slots=True)
class _SimAgent:
    agent: Agent
    order: int
    state: str = "available"  # available | busy (clicked, on-call, wrap-up) | away | dropped
    idle_since: float = 0.0
    click_queue: str | None = None  # a "Take next caller" click is coming for this queue
    reloading: bool = False
    wants: str | None = None  # "break" or "drop", taken when next free


class Planner:
    """The discrete-event simulation behind `schedule()`. Handlers only emit steps at the current time."""

    def __init__(self, opts: SimulationOptions) -> None:
        self.rng = random.Random(opts.seed)
        self.b = opts.behaviour
        self.config = opts.config
        self.horizon = opts.duration_s * opts.speed if opts.duration_s is not None else math.inf
        self.mean_gap_s = 60.0 / opts.calls_per_minute if opts.calls_per_minute > 0 else math.inf
        self.account_sid = opts.account_sid or _sid(self.rng, "AC")
        self.app_sid = _sid(self.rng, "AP")
        self.agents = {a.id: _SimAgent(a, i) for i, a in enumerate(select_agents(opts.config, opts.agents))}
        self.fifo: dict[str, deque[_SimCall]] = {q.name: deque() for q in opts.config.queues}
        self.queue_sids = {q.name: _sid(self.rng, "QU") for q in opts.config.queues}
        weights = {q.name: sum(q.name in s.agent.queues for s in self.agents.values()) for q in opts.config.queues}
        self.queue_names = [q.name for q in opts.config.queues if weights[q.name] and q.numbers]  # callers dial these
        self.queue_weights = [weights[q] for q in self.queue_names]
        self.customers = [f"+1{self.rng.choice(AREA_CODES)}{self.rng.randint(200, 999)}{self.rng.randint(0, 9999):04d}"
                          for _ in range(CUSTOMERS)]
        self.known_callers = list(opts.known_callers)
        # wrap-up ends on the server's clock; allow one sweep for it to notice
        self.wrap_s = (opts.config.center.wrap_up_s + opts.config.server.sweep_every_s + 0.5) * opts.speed
        self.drop_min_s = (opts.config.center.disconnect_grace_s + 5) * opts.speed
        self.reload_max_s = min(4.0, 0.5 * opts.config.center.disconnect_grace_s * opts.speed)  # well within grace
        self.heap: list[tuple[float, int, str, Any]] = []
        self.seq = 0
        self.now = 0.0
        self.out: list[Step] = []

    def at(self, t: float, kind: str, arg: Any = None) -> None:
        if t <= self.horizon:
            self.seq += 1
            heapq.heappush(self.heap, (t, self.seq, kind, arg))

    def emit(self, actor: str, kind: str, **kw: Any) -> Step:
        step = Step(self.now, actor, kind, **kw)
        self.out.append(step)
        return step

    def webhook(self, call: CallInfo, route: str, params: dict[str, str], leg: str = "", retry: bool = True) -> None:
        token = f"{self.rng.getrandbits(128):032x}"
        step = self.emit(f"call:{call.sid}", route, params=params, call=call, leg=leg, token=token)
        if retry and self.rng.random() < self.b.duplicate_rate:
            self.out.append(Step(self.now, step.actor, route, params, call, None, leg, token, duplicate=True))

    def run(self) -> Iterator[Step]:
        for sim in self.agents.values():
            self.emit(f"agent:{sim.agent.id}", "login", agent=sim.agent.id)
            self.at(self.rng.expovariate(1 / self.b.break_every_s), "break", sim)
            self.at(self.rng.expovariate(1 / self.b.reload_every_s), "reload", sim)
            self.at(self.rng.expovariate(1 / self.b.drop_every_s), "drop", sim)
        if self.queue_names:
            self.at(self.rng.expovariate(1 / self.mean_gap_s), "arrival")
        yield from self.out
        while self.heap:
            self.now, _, kind, arg = heapq.heappop(self.heap)
            self.out = []
            getattr(self, f"on_{kind.replace('-', '_')}")(arg)
            self.rebalance()
            yield from self.out

    # -- callers --

    def on_arrival(self, _: None) -> None:
        self.at(self.now + self.rng.expovariate(1 / self.mean_gap_s), "arrival")
        qname = self.rng.choices(self.queue_names, self.queue_weights)[0]
        queue = self.config.queue(qname)
        assert queue is not None
        # no draw without known callers: the plans of earlier options stay what they were
        known = bool(self.known_callers) and self.rng.random() < self.b.known_caller_share
        caller = self.rng.choice(self.known_callers if known else self.customers)
        info = CallInfo(_sid(self.rng, "CA"), qname, self.queue_sids[qname], caller, self.rng.choice(queue.numbers),
                        self.now)
        if self.rng.random() < self.b.instant_hangup_rate:
            patience = self.rng.uniform(1.0, 5.0)
        else:
            patience = max(1.0, self.rng.lognormvariate(math.log(self.b.patience_median_s), self.b.patience_sigma))
        call = _SimCall(info, patience)
        self.webhook(info, "incoming", caller_params(self.account_sid, info, "ringing"))
        self.fifo[qname].append(call)
        self.at(self.now + 0.5, "wait", call)
        self.at(self.now + call.patience_s, "abandon", call)

    def on_wait(self, call: _SimCall) -> None:
        if not call.waiting:
            return
        fifo = self.fifo[call.info.queue]
        waited = [self.now - c.info.arrived_s for c in fifo]
        self.webhook(call.info, "wait", caller_params(self.account_sid, call.info, "in-progress") | {
            "QueueSid": call.info.queue_sid, "QueuePosition": str(fifo.index(call) + 1),
            "QueueTime": str(int(self.now - call.info.arrived_s)), "CurrentQueueSize": str(len(fifo)),
            "AvgQueueTime": str(int(sum(waited) / len(waited))), "MaxQueueSize": str(MAX_QUEUE_SIZE),
        }, retry=False)
        self.at(self.now + WAIT_POLL_EVERY_S, "wait", call)

    def on_abandon(self, call: _SimCall) -> None:
        if not call.waiting:
            return
        call.waiting = False
        self.fifo[call.info.queue].remove(call)
        waited = self.now - call.info.arrived_s
        ends = [("queue-result", caller_params(self.account_sid, call.info, "completed") | {
                    "QueueResult": "hangup", "QueueSid": call.info.queue_sid, "QueueTime": str(int(waited))}),
                ("caller-status", completed_params(caller_params(self.account_sid, call.info, "completed"), waited))]
        self.end_call(call.info, ends)

    def end_call(self, info: CallInfo, ends: list[tuple[str, dict[str, str]]]) -> None:
        if len(ends) > 1 and self.rng.random() < self.b.out_of_order_rate:
            ends.reverse()  # the caller's status (last) overtakes its queue-result
        for leg, params in ends:
            self.webhook(info, "queue-result" if leg == "queue-result" else "status", params, leg=leg)
        self.emit(f"call:{info.sid}", "end", call=info)

    # -- agents taking callers --

    def rebalance(self) -> None:
        """Give each waiting caller without a coming click one free agent's click (longest idle first)."""
        for qname in sorted(self.fifo, key=lambda q: self.fifo[q][0].info.arrived_s if self.fifo[q] else math.inf):
            unclaimed = len(self.fifo[qname]) - sum(s.click_queue == qname for s in self.agents.values())
            free = sorted((s for s in self.agents.values() if self.clickable(s) and qname in s.agent.queues),
                          key=lambda s: (s.idle_since, s.order))
            for sim in free[: max(0, unclaimed)]:
                sim.click_queue = qname
                reaction = self.b.reaction_min_s + self.rng.expovariate(1 / self.b.reaction_mean_extra_s)
                self.at(self.now + reaction, "click", sim)

    def clickable(self, sim: _SimAgent) -> bool:
        return sim.state == "available" and sim.click_queue is None and not sim.reloading and sim.wants is None

    def on_click(self, sim: _SimAgent) -> None:
        qname, sim.click_queue = sim.click_queue, None
        fifo = self.fifo.get(qname or "") or next((self.fifo[q] for q in sim.agent.queues if self.fifo[q]), None)
        if not fifo:  # the caller hung up meanwhile: the agent is free again, maybe for what it wanted
            self.on_free(sim)
            return
        call = fifo.popleft()
        call.waiting = False
        sim.state = "busy"
        leg_sid = _sid(self.rng, "CA")
        base = agent_leg_params(self.account_sid, self.app_sid, sim.agent.id, leg_sid, "ringing")
        self.webhook(call.info, "agent", base | {"queue": call.info.queue}, leg="agent", retry=False)
        self.webhook(call.info, "bridge", caller_params(self.account_sid, call.info, "in-progress") | {
            "QueueSid": call.info.queue_sid, "QueueTime": str(int(self.now - call.info.arrived_s)),
            "DequeingCallSid": leg_sid})
        talk = min(1800.0, max(20.0, self.rng.lognormvariate(math.log(self.b.talk_median_s), self.b.talk_sigma)))
        self.at(self.now + talk, "hangup", (sim, call, base, talk))

    def on_hangup(self, arg: tuple[_SimAgent, _SimCall, dict[str, str], float]) -> None:
        sim, call, agent_base, talk = arg
        info = call.info
        bridged_s = self.now - talk
        self.webhook(info, "status", completed_params(agent_base, talk), leg="agent-status")
        self.end_call(info, [
            ("queue-result", caller_params(self.account_sid, info, "in-progress") | {
                "QueueResult": "bridged", "QueueSid": info.queue_sid, "QueueTime": str(int(bridged_s - info.arrived_s))}),
            ("caller-status", completed_params(caller_params(self.account_sid, info, "completed"), self.now - info.arrived_s)),
        ])
        self.at(self.now + self.wrap_s, "free", sim)

    def on_free(self, sim: _SimAgent) -> None:
        if sim.state == "busy":
            sim.state, sim.idle_since = "available", self.now
        if sim.wants == "break":
            self.on_break(sim)
        elif sim.wants == "drop":
            self.on_drop(sim)

    # -- agents' own life: breaks, reloads, drop-offs --

    def others_staff(self, sim: _SimAgent) -> bool:
        """Would every queue of this agent keep a signed-in, present colleague if it left?"""
        return all(any(o is not sim and q in o.agent.queues and o.state in ("available", "busy") and not o.reloading
                       for o in self.agents.values()) for q in sim.agent.queues if q in self.queue_names)

    def can_leave(self, sim: _SimAgent, kind: str) -> bool:
        if sim.state != "available" or sim.click_queue is not None or sim.reloading:
            if sim.state == "busy" or sim.click_queue is not None:
                sim.wants = sim.wants or kind
            else:
                self.at(self.now + 60.0, kind, sim)
            return False
        if not self.others_staff(sim):
            sim.wants = None
            self.at(self.now + 600.0, kind, sim)
            return False
        sim.wants = None
        return True

    def on_break(self, sim: _SimAgent) -> None:
        if not self.can_leave(sim, "break"):
            return
        reasons = self.config.center.away_reasons or ("break",)
        reason = self.rng.choices(reasons, [6 if r == "break" else 1 for r in reasons])[0]
        low, high = {"break": (300, 900), "lunch": (1800, 2700), "meeting": (900, 2700)}.get(reason, (600, 1800))
        sim.state = "away"
        self.emit(f"agent:{sim.agent.id}", "set_state", agent=sim.agent.id, params={"state": "away", "reason": reason})
        self.at(self.now + self.rng.uniform(low, high), "back", sim)

    def on_back(self, sim: _SimAgent) -> None:
        self.emit(f"agent:{sim.agent.id}", "set_state", agent=sim.agent.id, params={"state": "available"})
        sim.state, sim.idle_since = "available", self.now
        self.at(self.now + self.rng.expovariate(1 / self.b.break_every_s), "break", sim)

    def on_reload(self, sim: _SimAgent) -> None:
        if sim.state == "dropped" or sim.reloading or sim.click_queue is not None or not self.others_staff(sim):
            self.at(self.now + 60.0, "reload", sim)
            return
        sim.reloading = True
        self.emit(f"agent:{sim.agent.id}", "logout", agent=sim.agent.id, leg="reload")
        self.at(self.now + self.rng.uniform(min(0.5, self.reload_max_s), self.reload_max_s), "reloaded", sim)

    def on_reloaded(self, sim: _SimAgent) -> None:
        sim.reloading = False
        self.emit(f"agent:{sim.agent.id}", "login", agent=sim.agent.id, leg="reload")
        self.at(self.now + self.rng.expovariate(1 / self.b.reload_every_s), "reload", sim)

    def on_drop(self, sim: _SimAgent) -> None:
        if not self.can_leave(sim, "drop"):
            return
        sim.state = "dropped"
        self.emit(f"agent:{sim.agent.id}", "logout", agent=sim.agent.id, leg="drop")
        self.at(self.now + self.drop_min_s + self.rng.expovariate(1 / 300.0), "rejoin", sim)

    def on_rejoin(self, sim: _SimAgent) -> None:
        self.emit(f"agent:{sim.agent.id}", "login", agent=sim.agent.id, leg="drop")
        self.emit(f"agent:{sim.agent.id}", "set_state", agent=sim.agent.id, params={"state": "available"})
        sim.state, sim.idle_since = "available", self.now
        self.at(self.now + self.rng.expovariate(1 / self.b.drop_every_s), "drop", sim)


def schedule(opts: SimulationOptions) -> Iterator[Step]:
    """Every step of the simulated day in time order; a pure function of `opts` (endless without duration)."""
    return Planner(opts).run()


