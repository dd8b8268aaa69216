// The wallboard: queue tiles and an agent grid, kept current from a snapshot plus merge-patch deltas.
//
// Rendering is incremental on purpose: one DOM node per queue and per agent is created once and then
// only the texts and classes that a delta touched are rewritten, batched into one animation frame.
// The one-second ticker rewrites only the time texts. That keeps a 1,000-agent board smooth on a
// cheap wall-display PC.

import {
  CallboardSocket,
  EM_DASH,
  STATE_ORDER,
  ServerClock,
  applyMergePatch,
  applyThemeFromQuery,
  deltaPatch,
  askForToken,
  bindStaleBanner,
  clockFormatter,
  el,
  everySecond,
  forgetToken,
  formatCount,
  formatDuration,
  formatPercent,
  levelHighIsBad,
  levelLowIsBad,
  listParam,
  setLevel,
  setText,
  stateLabel,
  t,
  takeToken,
} from "./common.js";
import { fitBoard } from "./wall-fit.js";

const PAGE = "wallboard";
const NO_TEAM = "\u0000no-team"; // sorts apart from any real team name
const WINDOWS = [
  ["today", "Today"],
  ["last_30m", "30 min"],
];
// Page rotation when the board cannot show everything legibly at once (?rotate=seconds).
const ROTATE_DEFAULT_S = 12;
const ROTATE_MIN_S = 3;
const ROTATE_MAX_S = 600;
// While a caller waits past wait_critical_s, a supervisor's screen with sound on beeps this often.
const ALERT_REPEAT_S = 30;
const WINDOW_TESTID = { today: "today", last_30m: "30m" };
const COUNT_STATES = ["available", "on-call", "wrap-up", "away"];

const params = new URLSearchParams(window.location.search);
const options = {
  queues: listParam(params, "queues"),
  teams: listParam(params, "teams"),
  kiosk: params.get("kiosk") === "1" || params.get("kiosk") === "true",
  group: params.get("group") === "none" ? "none" : "team",
  sort: ["name", "state", "time"].includes(params.get("sort")) ? params.get("sort") : "name",
  hideOffline: params.get("offline") === "hide",
  rotateS: rotateSeconds(params.get("rotate")),
};

function rotateSeconds(raw) {
  const value = Number(raw);
  if (!raw || !Number.isFinite(value)) return ROTATE_DEFAULT_S;
  return Math.min(ROTATE_MAX_S, Math.max(ROTATE_MIN_S, value));
}

const clock = new ServerClock();
let snapshot = null;

const dom = {
  banner: document.getElementById("stale-banner"),
  bannerText: document.getElementById("stale-text"),
  centerName: document.getElementById("center-name"),
  clock: document.getElementById("clock"),
  queues: document.getElementById("queues"),
  agents: document.getElementById("agents"),
  tokenRoot: document.getElementById("token-root"),
  header: document.querySelector("header.topbar"),
  board: document.getElementById("board"),
  legend: document.getElementById("legend"),
  queuePager: document.getElementById("queue-pager"),
  alert: document.getElementById("critical-alert"),
  alertText: document.getElementById("critical-alert-text"),
};

/** name -> queue tile view */
const queueViews = new Map();
/** id -> agent card view */
const agentViews = new Map();
/** group key -> team section view */
const teamViews = new Map();

// Work collected from deltas, drawn once per animation frame.
const pending = { agents: new Set(), queues: new Set(), center: false, layoutQueues: false, teams: new Set(), fit: false };
let frameRequested = false;

// ---------------------------------------------------------------------------------------------
// Filters and ordering.

function queueVisible(name) {
  return options.queues.length === 0 || options.queues.includes(name);
}

function agentVisible(agent) {
  if (options.teams.length && !options.teams.includes(agent.team)) return false;
  if (options.queues.length) {
    const queues = Array.isArray(agent.queues) ? agent.queues : [];
    if (!queues.some((q) => options.queues.includes(q))) return false;
  }
  return true;
}

function queueOrder(names) {
  if (options.queues.length) return options.queues.filter((q) => names.includes(q));
  return [...names].sort((a, b) => a.localeCompare(b));
}

function groupKey(agent) {
  if (options.group === "none") return "";
  return agent.team ? String(agent.team) : NO_TEAM;
}

function compareGroups(a, b) {
  if (options.teams.length) {
    const ia = options.teams.indexOf(a);
    const ib = options.teams.indexOf(b);
    if (ia !== ib) return (ia < 0 ? 1e9 : ia) - (ib < 0 ? 1e9 : ib);
  }
  if (a === NO_TEAM) return 1;
  if (b === NO_TEAM) return -1;
  return a.localeCompare(b);
}

function compareAgents(a, b) {
  const va = a.record;
  const vb = b.record;
  if (options.sort === "state") {
    const d = stateRank(va.state) - stateRank(vb.state);
    if (d) return d;
  } else if (options.sort === "time") {
    const d = (va.since_ms ?? Infinity) - (vb.since_ms ?? Infinity);
    if (d) return d;
  }
  return (va.name || a.id).localeCompare(vb.name || b.id) || a.id.localeCompare(b.id);
}

function stateRank(state) {
  const i = STATE_ORDER.indexOf(state);
  return i < 0 ? STATE_ORDER.length : i;
}

// ---------------------------------------------------------------------------------------------
// Header.

let clockFormat = null;

function renderCenter() {
  const center = snapshot?.center || {};
  const name = center.name || "callboard";
  setText(dom.centerName, name);
  document.title = `${name} — ${t("wallboard")}`;
  clockFormat = clockFormatter(center.timezone);
  dom.clock.title = center.timezone || "";
  renderClock();
}

function renderClock() {
  if (!clockFormat) return;
  setText(dom.clock, clockFormat.format(new Date(clock.now())));
}

// ---------------------------------------------------------------------------------------------
// Queue tiles.

function makeQueueView(name) {
  const id = `queue-${name}`;
  const kpi = (label, key, title) => {
    const value = el("div", { className: "kpi-value", "data-testid": `${id}-${key}`, textContent: EM_DASH });
    const box = el("div", { className: `kpi kpi-${key}`, title }, el("div", { className: "kpi-label", textContent: label }), value);
    return { box, value };
  };
  const waiting = kpi(t("Waiting"), "waiting", t("Callers waiting in this queue now"));
  const longest = kpi(t("Longest wait"), "longest", t("How long the caller waiting longest has waited"));
  const atRisk = kpi(t("At risk"), "at-risk", "");

  const counts = {};
  const countsRow = el("div", { className: "queue-agents", title: t("Agents serving this queue, by state (an agent in several queues counts in each)") });
  for (const state of COUNT_STATES) {
    const value = el("span", { className: "count-value", "data-testid": `${id}-${state}`, textContent: "0" });
    counts[state] = value;
    countsRow.append(
      el("div", { className: `count st-${state}` }, value, el("span", { className: "count-label", textContent: stateLabel(state) })),
    );
  }

  // Today's totals: the numbers a supervisor asks first.
  const today = {};
  const todayRow = el("div", { className: "queue-today" }, el("span", { className: "today-label", textContent: t("Today") }));
  for (const [key, label] of [
    ["offered", t("Offered")],
    ["answered", t("Answered")],
    ["abandoned", t("Abandoned")],
  ]) {
    today[key] = el("b", { className: "today-value", "data-testid": `${id}-${key}-today`, textContent: EM_DASH });
    todayRow.append(el("span", { className: `today-item today-${key}` }, el("span", { className: "today-name", textContent: label }), today[key]));
  }

  const stats = {};
  const head = el(
    "tr",
    {},
    el("th", { scope: "col" }),
    ...[
      [t("SL"), t("Service level: answered within the target time")],
      [t("Aband."), t("Abandon rate (short abandons excluded)")],
      [t("ASA"), t("Average speed of answer")],
      [t("AHT"), t("Average handle time")],
    ].map(([text, title]) => el("th", { scope: "col", textContent: text, title })),
  );
  const body = el("tbody");
  for (const [win, label] of WINDOWS) {
    const suffix = WINDOW_TESTID[win];
    const cell = (key) => el("td", { "data-testid": `${id}-${key}-${suffix}`, textContent: EM_DASH });
    stats[win] = { sl: cell("sl"), abandon: cell("abandon"), asa: cell("asa"), aht: cell("aht") };
    body.append(
      el("tr", { className: `win-${win}` }, el("th", { scope: "row", textContent: t(label) }), stats[win].sl, stats[win].abandon, stats[win].asa, stats[win].aht),
    );
  }
  const table = el("table", { className: "queue-stats" }, el("thead", {}, head), body);

  const title = el("h2", { className: "queue-name", textContent: name, title: name });
  const root = el(
    "article",
    { className: "queue", "data-testid": id, "data-queue": name },
    el(
      "div",
      { className: "queue-body" },
      title,
      el("div", { className: "queue-live" }, waiting.box, longest.box, atRisk.box),
      countsRow,
      todayRow,
      table,
    ),
  );
  return {
    name,
    root,
    waiting: waiting.value,
    longest: longest.value,
    atRisk: atRisk.value,
    atRiskBox: atRisk.box,
    counts,
    today,
    stats,
    oldestMs: null,
    waitingMs: [],
    waitingCount: 0,
    waitedS: 0,
    longestIsLong: false,
    thresholds: {},
  };
}

function renderQueue(name) {
  const queue = snapshot?.queues?.[name];
  let view = queueViews.get(name);
  if (!queue || !queueVisible(name)) {
    if (view) {
      view.root.remove();
      queueViews.delete(name);
      pending.layoutQueues = true;
    }
    return;
  }
  if (!view) {
    view = makeQueueView(name);
    queueViews.set(name, view);
    pending.layoutQueues = true;
  }
  const th = queue.thresholds || {};
  view.thresholds = th;
  setText(view.waiting, formatCount(queue.waiting));
  setLevel(view.waiting, levelHighIsBad(queue.waiting, th.waiting_warning, th.waiting_critical));
  view.oldestMs = queue.waiting > 0 && Number.isFinite(queue.oldest_enqueued_ms) ? queue.oldest_enqueued_ms : null;
  view.waitingCount = Number.isFinite(queue.waiting) ? queue.waiting : 0;
  view.waitingMs = Array.isArray(queue.waiting_enqueued_ms) ? queue.waiting_enqueued_ms.filter(Number.isFinite) : null;
  tickQueue(view);

  const agents = queue.agents || {};
  for (const state of COUNT_STATES) setText(view.counts[state], formatCount(agents[state] ?? 0));

  const today = queue.today || {};
  for (const key of ["offered", "answered", "abandoned"]) setText(view.today[key], formatCount(today[key]));

  for (const [win] of WINDOWS) {
    const s = queue[win] || {};
    const cells = view.stats[win];
    setText(cells.sl, formatPercent(s.service_level));
    setLevel(cells.sl, levelLowIsBad(s.service_level, th.sl_target, th.sl_warning));
    setText(cells.abandon, formatPercent(s.abandon_rate));
    setLevel(cells.abandon, levelHighIsBad(s.abandon_rate, th.abandon_warning, th.abandon_critical));
    setText(cells.asa, formatDuration(s.asa_s));
    setText(cells.aht, formatDuration(s.aht_s));
  }
}

/** Callers waiting longer than the SL threshold: "3", or "50+" when only the oldest 50 are known. */
function atRiskText(view, slThresholdS) {
  if (view.oldestMs === null || view.waitingCount <= 0) return { count: 0, text: formatCount(0) };
  const cutoff = clock.now() - slThresholdS * 1000;
  if (view.waitingMs === null) {
    // an older server without waiting_enqueued_ms: only the oldest caller is known
    const oldestAtRisk = view.oldestMs < cutoff;
    return { count: oldestAtRisk ? 1 : 0, text: oldestAtRisk ? `${formatCount(1)}+` : formatCount(0) };
  }
  let count = 0;
  for (const ms of view.waitingMs) if (ms < cutoff) count += 1;
  const more = count === view.waitingMs.length && view.waitingCount > view.waitingMs.length;
  return { count, text: more ? `${formatCount(count)}+` : formatCount(count) };
}

function tickQueue(view) {
  const th = view.thresholds;
  const slThresholdS = Number.isFinite(snapshot?.center?.sl_threshold_s) ? snapshot.center.sl_threshold_s : 20;
  const risk = atRiskText(view, slThresholdS);
  setText(view.atRisk, risk.text);
  view.atRiskBox.title = t("Callers already waiting longer than the {s} s service-level target", { s: slThresholdS });
  if (view.oldestMs === null) {
    if (view.longestIsLong) {
      view.longestIsLong = false;
      view.longest.classList.remove("long");
    }
    view.waitedS = 0;
    setText(view.longest, EM_DASH);
    setLevel(view.longest, levelHighIsBad(0, th.wait_warning_s, th.wait_critical_s));
    setLevel(view.atRisk, "ok");
    return;
  }
  const waited = clock.secondsSince(view.oldestMs);
  view.waitedS = waited;
  const text = formatDuration(waited);
  setText(view.longest, text);
  if ((text.length > 5) !== view.longestIsLong) {
    view.longestIsLong = text.length > 5;
    view.longest.classList.toggle("long", view.longestIsLong);
  }
  const level = levelHighIsBad(waited, th.wait_warning_s, th.wait_critical_s);
  setLevel(view.longest, level);
  setLevel(view.atRisk, risk.count === 0 ? "ok" : level === "crit" ? "crit" : "warn");
}

function layoutQueues() {
  const names = queueOrder([...queueViews.keys()]);
  let previous = null;
  for (const name of names) {
    const node = queueViews.get(name).root;
    const expected = previous ? previous.nextSibling : dom.queues.firstChild;
    if (node !== expected) dom.queues.insertBefore(node, expected);
    previous = node;
  }
  dom.queues.dataset.count = String(names.length);
  dom.queues.classList.toggle("empty", names.length === 0);
}

// ---------------------------------------------------------------------------------------------
// Agent grid.

function makeTeamView(key) {
  const label = key === "" ? t("Agents") : key === NO_TEAM ? t("No team") : key;
  const title = el("h2", { className: "team-name", textContent: label, title: label });
  const summary = el("div", { className: "team-summary" });
  const counts = {};
  for (const state of STATE_ORDER) {
    const n = el("span", { className: "team-count-n", textContent: "0" });
    const item = el("span", { className: `team-count st-${state}`, title: stateLabel(state) }, el("i", { className: "swatch" }), n);
    counts[state] = { item, n };
    summary.append(item);
  }
  const grid = el("div", { className: "agent-grid" });
  const testid = key === "" ? "team-all" : key === NO_TEAM ? "team-none" : `team-${key}`;
  const root = el(
    "section",
    { className: "team", "data-testid": testid },
    el("header", { className: "team-head", "data-testid": `${testid}-head` }, title, summary),
    grid,
  );
  return { key, root, grid, counts, members: new Set() };
}

function makeAgentView(id) {
  const name = el("span", { className: "agent-name", "data-testid": `agent-${id}-name` });
  const state = el("span", { className: "agent-state", "data-testid": `agent-${id}-state` });
  const reason = el("span", { className: "agent-reason", "data-testid": `agent-${id}-reason` });
  const time = el("span", { className: "agent-time", "data-testid": `agent-${id}-time`, textContent: "0:00" });
  const root = el(
    "div",
    { className: "agent", "data-testid": `agent-${id}`, "data-agent": id },
    el("div", { className: "agent-line" }, name, time),
    el("div", { className: "agent-line agent-sub" }, state, reason),
  );
  return { id, root, name, state, reason, time, timeText: time.firstChild, record: null, team: null, stateValue: null, sinceMs: null };
}

function renderAgent(id) {
  const agent = snapshot?.agents?.[id];
  let view = agentViews.get(id);
  if (!agent || !agentVisible(agent)) {
    if (view) removeAgentView(view);
    return;
  }
  if (!view) {
    view = makeAgentView(id);
    agentViews.set(id, view);
    pending.fit = true;
  }
  const previous = view.record ? { state: view.record.state, since: view.record.since_ms, name: view.record.name } : null;
  view.record = agent;

  const key = groupKey(agent);
  if (view.team !== key) {
    if (view.team !== null) leaveTeam(view);
    joinTeam(view, key);
  }

  setText(view.name, agent.name || id);
  view.root.title = `${agent.name || id} (${id})${agent.team ? ` \u2014 ${agent.team}` : ""}`;
  const state = agent.state || "offline";
  if (view.stateValue !== state) {
    if (options.hideOffline && (view.stateValue === "offline" || state === "offline")) pending.fit = true;
    if (view.stateValue) view.root.classList.remove(`st-${view.stateValue}`);
    view.root.classList.add(`st-${state}`);
    view.root.dataset.state = state;
    view.stateValue = state;
    pending.teams.add(key);
  }
  setText(view.state, stateLabel(state));
  view.root.classList.toggle("ringing", agent.ringing === true); // routing: an offer is ringing (agent-offers.css)
  view.root.dataset.missedOffers = String(agent.missed_offers || 0);
  const detail = agent.reason || (state === "on-call" && agent.call?.queue ? agent.call.queue : "");
  setText(view.reason, detail);
  view.sinceMs = Number.isFinite(agent.since_ms) ? agent.since_ms : null;
  tickAgent(view);

  if (
    !previous ||
    (options.sort === "state" && previous.state !== state) ||
    (options.sort === "time" && previous.since !== agent.since_ms) ||
    previous.name !== agent.name
  ) {
    pending.teams.add(key); // re-sort this team's grid
  }
}

function tickAgent(view) {
  const text = view.sinceMs === null ? EM_DASH : formatDuration(clock.secondsSince(view.sinceMs));
  // Write the text node directly: the cheapest possible DOM update for 1,000 cards every second.
  if (view.timeText) {
    if (view.timeText.data !== text) view.timeText.data = text;
  } else {
    setText(view.time, text);
    view.timeText = view.time.firstChild;
  }
}

function joinTeam(view, key) {
  let team = teamViews.get(key);
  if (!team) {
    team = makeTeamView(key);
    teamViews.set(key, team);
    placeTeam(team);
  }
  team.members.add(view.id);
  team.grid.append(view.root);
  view.team = key;
  pending.teams.add(key);
}

function leaveTeam(view) {
  const team = teamViews.get(view.team);
  view.root.remove();
  if (team) {
    team.members.delete(view.id);
    pending.teams.add(team.key);
  }
  view.team = null;
}

function removeAgentView(view) {
  pending.fit = true;
  leaveTeam(view);
  agentViews.delete(view.id);
}

function placeTeam(team) {
  const keys = [...teamViews.keys()].sort(compareGroups);
  const index = keys.indexOf(team.key);
  const nextKey = keys[index + 1];
  const next = nextKey !== undefined ? teamViews.get(nextKey).root : null;
  dom.agents.insertBefore(team.root, next && next.parentNode === dom.agents ? next : null);
}

/** Re-sort one team's grid (moving only out-of-place nodes) and refresh its state counts. */
function refreshTeam(key) {
  const team = teamViews.get(key);
  if (!team) return;
  if (team.members.size === 0) {
    team.root.remove();
    teamViews.delete(key);
    pending.fit = true;
    return;
  }
  const views = [...team.members].map((id) => agentViews.get(id)).filter(Boolean);
  views.sort(compareAgents);
  let previous = null;
  const counts = Object.fromEntries(STATE_ORDER.map((s) => [s, 0]));
  for (const view of views) {
    const expected = previous ? previous.nextSibling : team.grid.firstChild;
    if (view.root !== expected) team.grid.insertBefore(view.root, expected);
    previous = view.root;
    if (view.stateValue in counts) counts[view.stateValue] += 1;
  }
  for (const state of STATE_ORDER) {
    setText(team.counts[state].n, formatCount(counts[state]));
    team.counts[state].item.classList.toggle("zero", counts[state] === 0);
  }
  pending.legend = true;
}

function rebuildAgents() {
  for (const team of teamViews.values()) team.root.remove();
  teamViews.clear();
  for (const view of agentViews.values()) view.team = null;
  const views = [...agentViews.values()];
  agentViews.clear();
  for (const view of views) view.root.remove();
  for (const id of Object.keys(snapshot?.agents || {})) renderAgent(id);
  scheduleFrame();
}

// ---------------------------------------------------------------------------------------------
// Snapshot and deltas.

function onSnapshot(message) {
  clock.sync(message.server_time_ms);
  snapshot = message;
  pending.center = true;
  pending.layoutQueues = true;
  // Reconcile rather than rebuild: after a reconnect most nodes are still right.
  for (const name of queueViews.keys()) if (!snapshot.queues?.[name]) pending.queues.add(name);
  for (const name of Object.keys(snapshot.queues || {})) pending.queues.add(name);
  for (const id of agentViews.keys()) if (!snapshot.agents?.[id]) pending.agents.add(id);
  for (const id of Object.keys(snapshot.agents || {})) pending.agents.add(id);
  flush(); // draw the first picture now, not a frame later
}

function onDelta(message) {
  if (!snapshot) return; // a delta before any snapshot has nothing to apply to
  const patch = deltaPatch(message);
  const touchedAgents = patch.agents === null ? [...agentViews.keys()] : Object.keys(patch.agents || {});
  const touchedQueues = patch.queues === null ? [...queueViews.keys()] : Object.keys(patch.queues || {});
  snapshot = applyMergePatch(snapshot, patch);
  for (const id of touchedAgents) pending.agents.add(id);
  for (const name of touchedQueues) pending.queues.add(name);
  if ("center" in patch) pending.center = true;
  scheduleFrame();
}

function scheduleFrame() {
  if (frameRequested) return;
  frameRequested = true;
  window.requestAnimationFrame(() => {
    frameRequested = false;
    flush();
  });
}

function flush() {
  if (pending.center) {
    pending.center = false;
    renderCenter();
  }
  for (const name of pending.queues) renderQueue(name);
  pending.queues.clear();
  for (const id of pending.agents) renderAgent(id);
  pending.agents.clear();
  for (const key of pending.teams) refreshTeam(key);
  pending.teams.clear();
  if (pending.layoutQueues) {
    pending.layoutQueues = false;
    pending.fit = true;
    layoutQueues();
  }
  dom.agents.classList.toggle("empty", agentViews.size === 0);
  if (pending.legend) {
    pending.legend = false;
    renderLegend();
  }
  if (pending.fit) {
    pending.fit = false;
    fit();
  }
}

// ---------------------------------------------------------------------------------------------
// The legend: what each colour means, how many agents are in each state (each agent once), and what
// the queue tiles' agent counts mean (an agent serving several queues is counted in each of them).

const legendViews = {};

function makeLegend() {
  const items = el("div", { className: "legend-items" });
  for (const state of STATE_ORDER) {
    const n = el("b", { className: "legend-n", "data-testid": `legend-${state}`, textContent: "0" });
    const item = el("span", { className: `legend-item st-${state}` }, el("i", { className: "swatch" }), el("span", { className: "legend-label", textContent: stateLabel(state) }), n);
    legendViews[state] = { item, n };
    items.append(item);
  }
  const note = el("span", {
    className: "legend-note",
    "data-testid": "legend-note",
    textContent: t("Agents here are counted once; a queue's tiles count an agent in every queue they serve."),
  });
  const pager = el("span", { className: "pager", id: "agent-pager", "data-testid": "agent-pager", hidden: true });
  dom.legend.replaceChildren(items, note, pager);
  dom.agentPager = pager;
}

function renderLegend() {
  const counts = Object.fromEntries(STATE_ORDER.map((s) => [s, 0]));
  for (const view of agentViews.values()) if (view.stateValue in counts) counts[view.stateValue] += 1;
  for (const state of STATE_ORDER) {
    setText(legendViews[state].n, formatCount(counts[state]));
    legendViews[state].item.classList.toggle("zero", counts[state] === 0);
  }
}

// ---------------------------------------------------------------------------------------------
// Fit: every queue card and agent cell on screen without scrolling, at any size from 1280x720 to
// 3840x2160; when they cannot all be shown legibly, pages rotate every options.rotateS seconds.

let layout = null;
let pageIndex = 0;
let rotateTimer = 0;

function visibleAgentSlots() {
  const slots = [];
  for (const team of [...dom.agents.children]) {
    const head = team.querySelector(".team-head");
    if (head) slots.push(head); // a grid cell like any agent's (with ?group=none: "Agents" and the counts)
    for (const card of team.querySelectorAll(".agent")) {
      if (options.hideOffline && card.dataset.state === "offline") continue;
      slots.push(card);
    }
  }
  return slots;
}

function fit() {
  const queueCards = queueOrder([...queueViews.keys()]).map((name) => queueViews.get(name).root);
  const slots = visibleAgentSlots();
  const headerH = dom.header && getComputedStyle(dom.header).display !== "none" ? dom.header.getBoundingClientRect().height : 0;
  const bannerH = dom.banner.hidden ? 0 : dom.banner.getBoundingClientRect().height;
  layout = fitBoard({
    width: document.documentElement.clientWidth,
    height: window.innerHeight,
    chromeH: headerH + bannerH,
    queues: queueCards.length,
    slots: slots.length,
  });
  document.body.classList.add("fit");
  const board = dom.board.style;
  board.setProperty("--pad", `${layout.pad}px`);
  board.setProperty("--gap", `${layout.gap}px`);
  board.height = `${layout.boardH}px`;
  const q = dom.queues.style;
  q.setProperty("--qu", `${layout.queues.u}px`);
  q.gridTemplateColumns = `repeat(${layout.queues.cols}, minmax(0, 1fr))`;
  q.gridAutoRows = `${layout.queues.cellH}px`;
  q.height = `${layout.queues.regionH}px`;
  const a = dom.agents.style;
  a.setProperty("--au", `${layout.agents.u}px`);
  dom.legend.style.setProperty("--au", `${layout.agents.u}px`);
  a.gridTemplateColumns = `repeat(${layout.agents.cols}, minmax(0, 1fr))`;
  a.gridAutoRows = `${layout.agents.cellH}px`;
  a.setProperty("--agent-gap", `${layout.agents.rowGap}px`);
  a.height = `${layout.agents.gridH}px`;
  dom.legend.hidden = slots.length === 0;
  fitted.queueCards = queueCards;
  fitted.slots = slots;
  applyPages();
  scheduleRotation();
}

const fitted = { queueCards: [], slots: [] };

function applyPages() {
  if (!layout) return;
  const qPages = layout.queues.pages;
  const aPages = layout.agents.pages;
  const qPage = pageIndex % qPages;
  const aPage = pageIndex % aPages;
  fitted.queueCards.forEach((card, i) => card.classList.toggle("off-page", Math.floor(i / layout.queues.perPage) !== qPage));
  fitted.slots.forEach((slot, i) => slot.classList.toggle("off-page", Math.floor(i / layout.agents.perPage) !== aPage));
  dom.queuePager.hidden = qPages <= 1;
  setText(dom.queuePager, qPages > 1 ? t("Queues {i} of {n}", { i: qPage + 1, n: qPages }) : "");
  if (dom.agentPager) {
    dom.agentPager.hidden = aPages <= 1;
    setText(dom.agentPager, aPages > 1 ? t("Agents {i} of {n}", { i: aPage + 1, n: aPages }) : "");
  }
  document.body.dataset.pages = `${qPages}x${aPages}`;
}

function scheduleRotation() {
  const rotating = layout && (layout.queues.pages > 1 || layout.agents.pages > 1);
  if (rotating && !rotateTimer) {
    rotateTimer = window.setInterval(() => {
      pageIndex += 1;
      applyPages();
    }, options.rotateS * 1000);
  } else if (!rotating && rotateTimer) {
    window.clearInterval(rotateTimer);
    rotateTimer = 0;
    pageIndex = 0;
    applyPages();
  }
}

// For tests and curious people in the console: the layout, and a way to turn the page now.
window.__cbWall = {
  layout: () => layout,
  nextPage: () => {
    pageIndex += 1;
    applyPages();
  },
};

// ---------------------------------------------------------------------------------------------
// The critical-wait alert: a caller waiting past a queue's wait_critical_s flashes the board (cards
// and an alert strip), and beeps on a supervisor's screen that turned sound on (browsers allow audio
// only after a user gesture, so the wall itself stays silent unless someone clicks).

const alert = { active: new Set(), lastBeepMs: 0, audio: null, soundOn: false, beeps: 0 };

function checkAlerts() {
  const critical = [];
  for (const name of Object.keys(snapshot?.queues || {})) {
    const view = queueViews.get(name);
    if (!view || view.oldestMs === null) continue;
    const limit = view.thresholds.wait_critical_s;
    const alerting = Number.isFinite(limit) && view.waitedS >= limit;
    view.root.classList.toggle("alerting", alerting);
    if (alerting) critical.push(view);
  }
  for (const view of queueViews.values()) if (view.oldestMs === null) view.root.classList.remove("alerting");
  const names = new Set(critical.map((v) => v.name));
  const fresh = [...names].some((n) => !alert.active.has(n));
  alert.active = names;
  document.body.classList.toggle("alerting", critical.length > 0);
  dom.alert.hidden = critical.length === 0;
  if (critical.length) {
    critical.sort((a, b) => b.waitedS - a.waitedS);
    const worst = critical[0];
    const more = critical.length > 1 ? ` ${t("(+{n} more queues)", { n: critical.length - 1 })}` : "";
    setText(dom.alertText, t("A caller has waited {time} in {queue}", { time: formatDuration(worst.waitedS), queue: worst.name }) + more);
    const now = Date.now();
    if (fresh || now - alert.lastBeepMs >= ALERT_REPEAT_S * 1000) beep(now);
  }
}

function beep(now) {
  if (!alert.soundOn || !alert.audio) return;
  alert.lastBeepMs = now;
  alert.beeps += 1;
  window.__cbAlertBeeps = alert.beeps;
  const ctx = alert.audio;
  for (const [offset, freq] of [
    [0, 880],
    [0.3, 660],
  ]) {
    const osc = ctx.createOscillator();
    const gain = ctx.createGain();
    osc.frequency.value = freq;
    gain.gain.setValueAtTime(0.0001, ctx.currentTime + offset);
    gain.gain.exponentialRampToValueAtTime(0.3, ctx.currentTime + offset + 0.02);
    gain.gain.exponentialRampToValueAtTime(0.0001, ctx.currentTime + offset + 0.25);
    osc.connect(gain).connect(ctx.destination);
    osc.start(ctx.currentTime + offset);
    osc.stop(ctx.currentTime + offset + 0.27);
  }
}

function setupSound() {
  const button = document.getElementById("sound-toggle");
  const update = () => {
    button.setAttribute("aria-pressed", String(alert.soundOn));
    button.textContent = alert.soundOn ? t("Sound on") : t("Sound off");
  };
  update();
  button.addEventListener("click", () => {
    // The click is the user gesture that lets the page play audio at all.
    if (!alert.audio) {
      const Context = window.AudioContext || window.webkitAudioContext;
      if (!Context) {
        button.disabled = true;
        button.title = t("This browser cannot play sounds");
        return;
      }
      alert.audio = new Context();
    }
    alert.soundOn = !alert.soundOn;
    if (alert.soundOn) {
      alert.audio.resume?.();
      alert.active = new Set(); // a caller already past the limit beeps now
      alert.lastBeepMs = 0;
    }
    update();
  });
}

function tick() {
  renderClock();
  for (const view of queueViews.values()) if (view.oldestMs !== null) tickQueue(view);
  for (const view of agentViews.values()) tickAgent(view);
  checkAlerts();
}

// ---------------------------------------------------------------------------------------------
// Chrome: theme, grouping, sorting (all mirrored into the query string so a configured board
// survives a reload; the token stays in sessionStorage, never in the query).

function setQueryParam(name, value) {
  const url = new URL(window.location.href);
  if (value === null) url.searchParams.delete(name);
  else url.searchParams.set(name, value);
  window.history.replaceState(window.history.state, "", url.pathname + url.search + url.hash);
}

function setupChrome() {
  applyThemeFromQuery(params);
  const themeButton = document.getElementById("theme-toggle");
  const updateThemeButton = () => {
    themeButton.textContent = document.documentElement.dataset.theme === "light" ? t("Dark") : t("Light");
  };
  updateThemeButton();
  themeButton.addEventListener("click", () => {
    const next = document.documentElement.dataset.theme === "light" ? "dark" : "light";
    document.documentElement.dataset.theme = next;
    setQueryParam("theme", next === "light" ? "light" : null);
    updateThemeButton();
  });

  document.body.classList.toggle("kiosk", options.kiosk);
  document.body.classList.toggle("hide-offline", options.hideOffline);

  const group = document.getElementById("group-select");
  group.value = options.group;
  group.addEventListener("change", () => {
    options.group = group.value === "none" ? "none" : "team";
    setQueryParam("group", options.group === "none" ? "none" : null);
    rebuildAgents();
    pending.fit = true;
  });

  const sort = document.getElementById("sort-select");
  sort.value = options.sort;
  sort.addEventListener("change", () => {
    options.sort = sort.value;
    setQueryParam("sort", options.sort === "name" ? null : options.sort);
    for (const key of teamViews.keys()) pending.teams.add(key);
    scheduleFrame();
  });

  const offline = document.getElementById("offline-toggle");
  const updateOffline = () => {
    offline.setAttribute("aria-pressed", String(options.hideOffline));
    offline.textContent = options.hideOffline ? t("Show offline") : t("Hide offline");
  };
  updateOffline();
  offline.addEventListener("click", () => {
    options.hideOffline = !options.hideOffline;
    document.body.classList.toggle("hide-offline", options.hideOffline);
    setQueryParam("offline", options.hideOffline ? "hide" : null);
    updateOffline();
    pending.fit = true;
    scheduleFrame();
  });
}

// ---------------------------------------------------------------------------------------------

async function main() {
  setupChrome();
  setupSound();
  makeLegend();
  // The fit follows the screen: a resize, a rotated TV, a banner that comes or goes.
  window.addEventListener("resize", () => {
    pending.fit = true;
    scheduleFrame();
  });
  renderCenter(); // the clock runs (in local time) before the first snapshot names the center's zone
  const bannerStatus = bindStaleBanner(dom.banner, dom.bannerText);
  const onStatus = (status) => {
    const wasHidden = dom.banner.hidden;
    bannerStatus(status);
    if (wasHidden !== dom.banner.hidden) {
      pending.fit = true;
      scheduleFrame();
    }
  };
  let token = takeToken(PAGE);
  if (!token) {
    onStatus({ state: "signin" });
    token = await askForToken(PAGE, dom.tokenRoot);
  }
  let socket = null;
  const start = (tok) => {
    socket = new CallboardSocket(tok, {
      onSnapshot,
      onDelta,
      onStatus: async (status) => {
        onStatus(status);
        if (status.state === "rejected") {
          // Retrying a rejected token cannot help; offer the form for a fresh one.
          forgetToken(PAGE);
          const fresh = await askForToken(PAGE, dom.tokenRoot, t("This token was rejected or has expired \u2014 get a new link, or paste a new token."));
          start(fresh);
        }
      },
      onMessage: (message) => {
        if (message.type === "error") console.warn("callboard: server error", message.code, message.message);
      },
    });
    socket.start();
  };
  start(token);
  everySecond(clock, tick);
}

main();
