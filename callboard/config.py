"""The center's configuration: a TOML file validated into frozen dataclasses, or the built-in demo center.

Validation is strict on purpose: a typo in a key would otherwise silently change a service level. Every
error names the file and the key path, in English, and the CLI turns it into exit code 2.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

QUEUE_NAME_RE = re.compile(r"^[A-Za-z0-9#_-]{1,64}$")
AGENT_ID_RE = re.compile(r"^[A-Za-z0-9_.@-]{1,121}$")  # Twilio client identities: keep to URL-safe characters
E164_RE = re.compile(r"^\+[1-9]\d{1,14}$")
RESET_TIME_RE = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")
UI_LANGUAGE_RE = re.compile(r"^[A-Za-z]{2,3}(-[A-Za-z0-9]{1,8})*$")  # a BCP 47 tag: "ja", "en-GB"


class ConfigError(Exception):
    """An invalid configuration; str() is the full English message naming the file and the key."""

    def __init__(self, source: str, key: str, problem: str) -> None:
        self.source, self.key, self.problem = source, key, problem
        super().__init__(f"{source}: {key}: {problem}")


@dataclass(frozen=True, slots=True)
class Thresholds:
    """Wallboard colours per queue: green at or better than the first number, amber up to the second, else red."""

    sl_target: float = 0.8
    sl_warning: float = 0.7
    waiting_warning: int = 3
    waiting_critical: int = 8
    wait_warning_s: int = 60
    wait_critical_s: int = 180
    # abandon rate (short abandons excluded): lower is better, amber from the first, red from the second
    abandon_warning: float = 0.05
    abandon_critical: float = 0.1


@dataclass(frozen=True, slots=True)
class Center:
    name: str = "callboard demo center"
    timezone: str = "UTC"
    reset_time: str = "00:00"
    sl_threshold_s: int = 20
    short_abandon_s: int = 5
    wrap_up_s: int = 15
    disconnect_grace_s: int = 10
    language: str = "en-US"
    voice: str = "Polly.Joanna"
    # the pages' language when neither ?lang= nor the browser names one they have ("en", "ja"; None: English)
    ui_language: str | None = None
    position_every_s: int = 30
    hold_music_url: str | None = None
    caller_id: str | None = None
    away_reasons: tuple[str, ...] = ("break", "lunch", "meeting", "training")
    call_retention_days: int = 7
    records_retention_days: int = 400  # call records and agent-state history in SQL (records/), pruned daily
    # Region for phone numbers typed without a country code (customers/phones.py). "JP": the directory's
    # first users type Japanese national numbers (03-1234-5678) and the demo center is Japanese-flavoured;
    # a US center sets "US". A wrong region never mis-stores silently: a number it cannot read is a 400.
    default_region: str = "JP"
    # softphone (docs/softphone.md): how a caller meets its agent, where the conference media lives, and
    # the wrap-up panel's disposition codes
    bridge: str = "queue"
    conference_region: str = "us1"
    dispositions: tuple[str, ...] = ("resolved", "follow-up", "escalated", "wrong number")


@dataclass(frozen=True, slots=True)
class Queue:
    name: str
    numbers: tuple[str, ...] = ()
    greeting: str = "Thank you for calling. Please hold for the next available agent."
    team: str | None = None
    language: str | None = None
    voice: str | None = None
    hold_music_url: str | None = None
    position_every_s: int | None = None
    thresholds: Thresholds = field(default_factory=Thresholds)


@dataclass(frozen=True, slots=True)
class Agent:
    id: str
    name: str
    team: str | None = None
    queues: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Server:
    """Runtime knobs that are not the center's business rules."""

    lease_renew_s: float = 5.0
    lease_ttl_s: float = 15.0
    sweep_every_s: float = 1.0
    redis_max_ops_per_s: float | None = None  # None: no budget
    tick_ms: int = 25  # the busy hub's coalescing window; an idle hub flushes at once (wallboard/hub.py)
    stream_max_len: int = 100_000
    allowed_origins: tuple[str, ...] = ()  # besides the page's own origin
    voice_sdk_url: str | None = None


ROUTING_MODES = ("pull", "offer")
ROUTING_STEPS = ("owner", "team", "queue")


@dataclass(frozen=True, slots=True)
class Routing:
    """[routing]: who gets which caller (see routing/ and docs/routing.md). Pull stays the default."""

    mode: str = "pull"
    offer_timeout_s: int = 15  # an offer not answered in this time is expired (missed)
    missed_to_away: int = 2  # missed offers in a row that set the agent away ("missed offers"); 0: never
    order: tuple[str, ...] = ROUTING_STEPS
    tick_ms: int = 200  # how often each instance's router looks for callers and agents to match
    connect_timeout_s: int = 60  # an accepted offer still not bridged after this is released


@dataclass(frozen=True, slots=True)
class Config:
    center: Center
    queues: tuple[Queue, ...]
    agents: tuple[Agent, ...]
    teams: tuple[str, ...]
    server: Server = field(default_factory=Server)
    source: str = "<built-in demo center>"
    routing: Routing = field(default_factory=Routing)
    webhooks: tuple[Any, ...] = ()  # webhooks.config.Endpoint, from [[webhooks]]
    agents_by_id: dict[str, Agent] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "agents_by_id", {a.id: a for a in self.agents})

    def queue(self, name: str) -> Queue | None:
        return next((q for q in self.queues if q.name == name), None)

    def agent(self, agent_id: str) -> Agent | None:
        return self.agents_by_id.get(agent_id)

    def queue_for_number(self, number: str) -> Queue:
        """The queue that owns a dialled number, else the first queue."""
        for queue in self.queues:
            if number in queue.numbers:
                return queue
        return self.queues[0]

    def agents_of_queue(self, queue: str) -> list[Agent]:
        return [a for a in self.agents if queue in a.queues]


_CENTER_KEYS = {f for f in Center.__dataclass_fields__}
_SERVER_KEYS = {f for f in Server.__dataclass_fields__}
_QUEUE_KEYS = {f for f in Queue.__dataclass_fields__}
_THRESHOLD_KEYS = {f for f in Thresholds.__dataclass_fields__}
_AGENT_KEYS = {"id", "name", "team", "queues"}
_TEAM_KEYS = {"name"}
_TOP_KEYS = {"center", "server", "queues", "agents", "teams", "webhooks"}
_ROUTING_KEYS = {f for f in Routing.__dataclass_fields__}
_TOP_KEYS.add("routing")


def load_config(path: str | Path | None) -> Config:
    """Read and validate a TOML file; None gives the built-in demo center."""
    if path is None:
        return demo_config()
    source = str(path)
    try:
        raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(source, "(file)", "no such file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(source, "(syntax)", f"not valid TOML: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(source, "(file)", f"cannot read it: {exc}") from None
    return parse_config(raw, source)


def parse_config(raw: dict[str, Any], source: str) -> Config:
    """Validate an already-parsed TOML document."""
    v = _Validator(source)
    v.no_unknown(raw, _TOP_KEYS, "")
    center = Center(**v.fields(raw.get("center", {}), "center", _CENTER_KEYS, Center))
    server = Server(**v.fields(raw.get("server", {}), "server", _SERVER_KEYS, Server))
    try:
        ZoneInfo(center.timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(source, "center.timezone", f"unknown time zone {center.timezone!r}") from None
    if not RESET_TIME_RE.match(center.reset_time):
        raise ConfigError(source, "center.reset_time", f"{center.reset_time!r} is not a time like \"00:00\"")
    if center.ui_language is not None and not UI_LANGUAGE_RE.match(center.ui_language):
        raise ConfigError(source, "center.ui_language", f"{center.ui_language!r} is not a language tag like \"ja\" or \"en\"")
    if center.caller_id is not None and not E164_RE.match(center.caller_id):
        raise ConfigError(source, "center.caller_id", "must be an E.164 number like +15551234567")
    if not _known_region(center.default_region):
        raise ConfigError(source, "center.default_region", f"{center.default_region!r} is not a region code like \"JP\" or \"US\"")
    if server.lease_ttl_s <= server.lease_renew_s:
        raise ConfigError(source, "server.lease_ttl_s", "must be longer than server.lease_renew_s")
    _check_softphone(center, source)

    teams_raw = v.table_list(raw.get("teams", []), "teams")
    teams: list[str] = []
    for i, item in enumerate(teams_raw):
        v.no_unknown(item, _TEAM_KEYS, f"teams[{i}]")
        name = v.string(item.get("name"), f"teams[{i}].name")
        if name in teams:
            raise ConfigError(source, f"teams[{i}].name", f"duplicate team {name!r}")
        teams.append(name)
    declared_teams = bool(teams)

    queues_raw = v.table_list(raw.get("queues"), "queues")
    if not queues_raw:
        raise ConfigError(source, "queues", "at least one [[queues]] entry is required")
    queues: list[Queue] = []
    seen_numbers: dict[str, str] = {}
    for i, item in enumerate(queues_raw):
        key = f"queues[{i}]"
        values = v.fields(item, key, _QUEUE_KEYS, Queue, required=("name",))
        name = values["name"]
        if not QUEUE_NAME_RE.match(name):
            raise ConfigError(source, f"{key}.name", f"{name!r} is not a valid Twilio queue name (letters, digits, # _ -, at most 64)")
        if any(q.name == name for q in queues):
            raise ConfigError(source, f"{key}.name", f"duplicate queue {name!r}")
        for number in values.get("numbers", ()):
            if not E164_RE.match(number):
                raise ConfigError(source, f"{key}.numbers", f"{number!r} is not an E.164 number like +15551234567")
            if number in seen_numbers:
                raise ConfigError(source, f"{key}.numbers", f"{number} already belongs to queue {seen_numbers[number]!r}")
            seen_numbers[number] = name
        if "thresholds" in values:
            values["thresholds"] = Thresholds(**v.fields(values["thresholds"], f"{key}.thresholds", _THRESHOLD_KEYS, Thresholds))
        queues.append(Queue(**values))
        team = values.get("team")
        if team is not None:
            if not declared_teams and team not in teams:
                teams.append(team)
            if team not in teams:
                raise ConfigError(source, f"{key}.team", f"unknown team {team!r} (declared: {', '.join(teams)})")

    agents_raw = v.table_list(raw.get("agents", []), "agents")
    agents: list[Agent] = []
    for i, item in enumerate(agents_raw):
        key = f"agents[{i}]"
        v.no_unknown(item, _AGENT_KEYS, key)
        agent_id = v.string(item.get("id"), f"{key}.id")
        if not AGENT_ID_RE.match(agent_id):
            raise ConfigError(source, f"{key}.id", f"{agent_id!r} may only use letters, digits and _ . @ -")
        if any(a.id == agent_id for a in agents):
            raise ConfigError(source, f"{key}.id", f"duplicate agent id {agent_id!r}")
        name = v.string(item.get("name", agent_id), f"{key}.name")
        team = item.get("team")
        if team is not None:
            team = v.string(team, f"{key}.team")
            if not declared_teams and team not in teams:
                teams.append(team)
            if team not in teams:
                raise ConfigError(source, f"{key}.team", f"unknown team {team!r} (declared: {', '.join(teams)})")
        agent_queues = item.get("queues", [])
        if not isinstance(agent_queues, list) or not all(isinstance(q, str) for q in agent_queues):
            raise ConfigError(source, f"{key}.queues", "must be a list of queue names")
        for q in agent_queues:
            if not any(queue.name == q for queue in queues):
                raise ConfigError(source, f"{key}.queues", f"unknown queue {q!r}")
        agents.append(Agent(id=agent_id, name=name, team=team, queues=tuple(agent_queues)))

    routing = _parse_routing(v, raw.get("routing", {}))
    return Config(center=center, queues=tuple(queues), agents=tuple(agents), teams=tuple(teams), server=server,
                  source=source, routing=routing,
                  webhooks=_webhooks(raw.get("webhooks"), source))


def _parse_routing(v: _Validator, table: object) -> Routing:
    routing = Routing(**v.fields(table, "routing", _ROUTING_KEYS, Routing))
    if routing.mode not in ROUTING_MODES:
        raise ConfigError(v.source, "routing.mode", f"{routing.mode!r} is not one of {', '.join(ROUTING_MODES)}")
    if not routing.order or len(set(routing.order)) != len(routing.order) or any(
            step not in ROUTING_STEPS for step in routing.order):
        raise ConfigError(v.source, "routing.order", f"must list some of {', '.join(ROUTING_STEPS)}, each once")
    if not 1 <= routing.offer_timeout_s <= 300:
        raise ConfigError(v.source, "routing.offer_timeout_s", "must be between 1 and 300 seconds")
    if routing.missed_to_away > 100:
        raise ConfigError(v.source, "routing.missed_to_away", "must be between 0 (never) and 100")
    if not 10 <= routing.tick_ms <= 5000:
        raise ConfigError(v.source, "routing.tick_ms", "must be between 10 and 5000 milliseconds")
    if not 5 <= routing.connect_timeout_s <= 600:
        raise ConfigError(v.source, "routing.connect_timeout_s", "must be between 5 and 600 seconds")
    return routing


def _webhooks(raw: Any, source: str) -> tuple[Any, ...]:
    from webhooks.config import WebhookConfigError, parse_webhooks  # webhooks/ imports nothing of the shell

    try:
        return parse_webhooks(raw)
    except WebhookConfigError as exc:
        raise ConfigError(source, exc.key, exc.problem) from None


def _known_region(region: str) -> bool:
    import phonenumbers

    return region in phonenumbers.SUPPORTED_REGIONS

BRIDGE_MODES = ("queue", "conference")
# Twilio's media regions for conferences: the caller's audio is mixed there (jp1 keeps Japan's calls in Japan).
CONFERENCE_REGIONS = ("us1", "ie1", "de1", "sg1", "br1", "au1", "jp1")
DISPOSITION_MAX_CHARS = 64


def _check_softphone(center: Center, source: str) -> None:
    """The softphone keys of [center]: bridge mode, conference region, disposition codes."""
    if center.bridge not in BRIDGE_MODES:
        raise ConfigError(source, "center.bridge", f"{center.bridge!r} is not one of {', '.join(BRIDGE_MODES)}")
    if center.conference_region not in CONFERENCE_REGIONS:
        raise ConfigError(source, "center.conference_region",
                          f"{center.conference_region!r} is not a Twilio region ({', '.join(CONFERENCE_REGIONS)})")
    if not center.dispositions:
        raise ConfigError(source, "center.dispositions", "must list at least one disposition code")
    seen: set[str] = set()
    for code in center.dispositions:
        if not code.strip() or len(code) > DISPOSITION_MAX_CHARS:
            raise ConfigError(source, "center.dispositions", f"{code!r} must be 1 to {DISPOSITION_MAX_CHARS} characters")
        if code in seen:
            raise ConfigError(source, "center.dispositions", f"duplicate disposition {code!r}")
        seen.add(code)


class _Validator:
    def __init__(self, source: str) -> None:
        self.source = source

    def no_unknown(self, table: object, allowed: set[str], where: str) -> None:
        if not isinstance(table, dict):
            raise ConfigError(self.source, where or "(top level)", "must be a table")
        for key in table:
            if key not in allowed:
                path = f"{where}.{key}" if where else key
                raise ConfigError(self.source, path, f"unknown key (allowed: {', '.join(sorted(allowed))})")

    def table_list(self, value: object, where: str) -> list[dict[str, Any]]:
        if value is None:
            return []
        if not isinstance(value, list) or not all(isinstance(x, dict) for x in value):
            raise ConfigError(self.source, where, f"must be an array of tables ([[{where}]])")
        return value

    def string(self, value: object, where: str) -> str:
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(self.source, where, "must be a non-empty string")
        return value

    def fields(self, table: object, where: str, allowed: set[str], cls: type, required: tuple[str, ...] = ()) -> dict[str, Any]:
        """Check each key's type against the dataclass defaults (lists become tuples)."""
        self.no_unknown(table, allowed, where)
        assert isinstance(table, dict)
        out: dict[str, Any] = {}
        for name in required:
            if name not in table:
                raise ConfigError(self.source, f"{where}.{name}", "is required")
        for key, value in table.items():
            path = f"{where}.{key}"
            default = cls.__dataclass_fields__[key].default
            if key == "thresholds":
                out[key] = value
            elif isinstance(default, bool):
                if not isinstance(value, bool):
                    raise ConfigError(self.source, path, "must be true or false")
                out[key] = value
            elif isinstance(default, int | float) and not isinstance(default, bool) or key in ("redis_max_ops_per_s", "position_every_s"):
                if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                    raise ConfigError(self.source, path, "must be a non-negative number")
                if isinstance(default, int) and not isinstance(value, int) and key != "redis_max_ops_per_s":
                    raise ConfigError(self.source, path, "must be a whole number")
                out[key] = value
            elif isinstance(default, tuple) or key == "numbers":
                if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
                    raise ConfigError(self.source, path, "must be a list of strings")
                out[key] = tuple(value)
            else:
                out[key] = self.string(value, path)
        return out


def demo_config() -> Config:
    """A small believable center: three queues, three teams, twelve agents."""
    raw: dict[str, Any] = {
        "center": {"name": "callboard demo center", "timezone": "UTC", "wrap_up_s": 10,
                   "conference_region": "jp1"},  # used by `callboard demo --bridge conference`
        "queues": [
            {"name": "support", "numbers": ["+15550100001"], "team": "support",
             "greeting": "Thank you for calling support. An agent will be with you shortly."},
            {"name": "sales", "numbers": ["+15550100002"], "team": "sales",
             "greeting": "Thank you for calling sales. Please hold."},
            {"name": "billing", "numbers": ["+15550100003"], "team": "support",
             "greeting": "You have reached billing. Please hold."},
        ],
        "agents": [
            {"id": aid, "name": name, "team": team, "queues": queues}
            for aid, name, team, queues in [
                ("alice", "Alice Moreau", "support", ["support", "billing"]),
                ("bob", "山田 太郎", "support", ["support"]),
                ("carol", "Carol Singh", "support", ["support", "billing"]),
                ("dave", "Dave Okafor", "support", ["support"]),
                ("erin", "Erin Larsen", "support", ["billing", "support"]),
                ("frank", "Frank Dubois", "support", ["support"]),
                ("grace", "Grace Kim", "sales", ["sales"]),
                ("heidi", "佐藤 花子", "sales", ["sales"]),
                ("ivan", "Ivan Petrov", "sales", ["sales"]),
                ("judy", "Judy Alvarez", "sales", ["sales", "support"]),
                ("mallory", "Mallory Chen", "billing", ["billing"]),
                ("oscar", "Oscar Rossi", "billing", ["billing", "support"]),
            ]
        ],
    }
    return parse_config(raw, "<built-in demo center>")
