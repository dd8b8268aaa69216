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
  takeToken,
} from "./common.js";

const PAGE = "wallboard";
const NO_TEAM = "\u0000no-team"; // sorts apart from any real team name
const WINDOWS = [
  ["today", "Today"],
  ["last_30m", "30 min"],
];
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
};

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
};

/** name -> queue tile view */
const queueViews = new Map();
/** id -> agent card view */
const agentViews = new Map();
/** group key -> team section view */
const teamViews = new Map();

// Work collected from deltas, drawn once per animation frame.
const pending = { agents: new Set(), queues: new Set(), center: false, layoutQueues: false, teams: new Set() };
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
  document.title = `${name} — wallboard`;
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
  const kpi = (label, key) => {
    const value = el("div", { className: "kpi-value", "data-testid": `${id}-${key}`, textContent: EM_DASH });
    const box = el("div", { className: `kpi kpi-${key}` }, el("div", { className: "kpi-label", textContent: label }), value);
    return { box, value };
  };
  const waiting = kpi("Waiting", "waiting");
  const longest = kpi("Longest wait", "longest");

  const counts = {};
  const countsRow = el("div", { className: "queue-agents" });
  for (const state of COUNT_STATES) {
    const value = el("span", { className: "count-value", "data-testid": `${id}-${state}`, textContent: "0" });
    counts[state] = value;
    countsRow.append(
      el("div", { className: `count st-${state}` }, value, el("span", { className: "count-label", textContent: stateLabel(state) })),
    );
  }

  const stats = {};
  const head = el(
    "tr",
    {},
    el("th", { scope: "col" }),
    ...[
      ["SL", "Service level: answered within the target time"],
      ["Aband.", "Abandon rate (short abandons excluded)"],
      ["ASA", "Average speed of answer"],
      ["AHT", "Average handle time"],
    ].map(([t, title]) => el("th", { scope: "col", textContent: t, title })),
  );
  const body = el("tbody");
  for (const [win, label] of WINDOWS) {
    const suffix = WINDOW_TESTID[win];
    const cell = (key) => el("td", { "data-testid": `${id}-${key}-${suffix}`, textContent: EM_DASH });
    stats[win] = { sl: cell("sl"), abandon: cell("abandon"), asa: cell("asa"), aht: cell("aht") };
    body.append(
      el("tr", { className: `win-${win}` }, el("th", { scope: "row", textContent: label }), stats[win].sl, stats[win].abandon, stats[win].asa, stats[win].aht),
    );
  }
  const table = el("table", { className: "queue-stats" }, el("thead", {}, head), body);

  const title = el("h2", { className: "queue-name", textContent: name });
  const root = el(
    "article",
    { className: "queue", "data-testid": id, "data-queue": name },
    el(
      "div",
      { className: "queue-body" },
      title,
      el("div", { className: "queue-live" }, waiting.box, longest.box),
      countsRow,
      table,
    ),
  );
  return { name, root, waiting: waiting.value, longest: longest.value, counts, stats, oldestMs: null, longestIsLong: false, thresholds: {} };
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
  const t = queue.thresholds || {};
  view.thresholds = t;
  setText(view.waiting, formatCount(queue.waiting));
  setLevel(view.waiting, levelHighIsBad(queue.waiting, t.waiting_warning, t.waiting_critical));
  view.oldestMs = queue.waiting > 0 && Number.isFinite(queue.oldest_enqueued_ms) ? queue.oldest_enqueued_ms : null;
  tickQueue(view);

  const agents = queue.agents || {};
  for (const state of COUNT_STATES) setText(view.counts[state], formatCount(agents[state] ?? 0));

  for (const [win] of WINDOWS) {
    const s = queue[win] || {};
    const cells = view.stats[win];
    setText(cells.sl, formatPercent(s.service_level));
    setLevel(cells.sl, levelLowIsBad(s.service_level, t.sl_target, t.sl_warning));
    setText(cells.abandon, formatPercent(s.abandon_rate));
    setText(cells.asa, formatDuration(s.asa_s));
    setText(cells.aht, formatDuration(s.aht_s));
  }
}

function tickQueue(view) {
  const t = view.thresholds;
  if (view.oldestMs === null) {
    if (view.longestIsLong) {
      view.longestIsLong = false;
      view.longest.classList.remove("long");
    }
    setText(view.longest, EM_DASH);
    setLevel(view.longest, levelHighIsBad(0, t.wait_warning_s, t.wait_critical_s));
    return;
  }
  const waited = clock.secondsSince(view.oldestMs);
  const text = formatDuration(waited);
  setText(view.longest, text);
  if ((text.length > 5) !== view.longestIsLong) {
    view.longestIsLong = text.length > 5;
    view.longest.classList.toggle("long", view.longestIsLong);
  }
  setLevel(view.longest, levelHighIsBad(waited, t.wait_warning_s, t.wait_critical_s));
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
  const label = key === "" ? "Agents" : key === NO_TEAM ? "No team" : key;
  const title = el("h2", { className: "team-name", textContent: label });
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
    el("header", { className: "team-head" }, title, summary),
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
    setText(team.counts[state].n, String(counts[state]));
    team.counts[state].item.classList.toggle("zero", counts[state] === 0);
  }
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
    layoutQueues();
  }
  dom.agents.classList.toggle("empty", agentViews.size === 0);
}

function tick() {
  renderClock();
  for (const view of queueViews.values()) if (view.oldestMs !== null) tickQueue(view);
  for (const view of agentViews.values()) tickAgent(view);
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
    themeButton.textContent = document.documentElement.dataset.theme === "light" ? "Dark" : "Light";
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
    offline.textContent = options.hideOffline ? "Show offline" : "Hide offline";
  };
  updateOffline();
  offline.addEventListener("click", () => {
    options.hideOffline = !options.hideOffline;
    document.body.classList.toggle("hide-offline", options.hideOffline);
    setQueryParam("offline", options.hideOffline ? "hide" : null);
    updateOffline();
  });
}

// ---------------------------------------------------------------------------------------------

async function main() {
  setupChrome();
  renderCenter(); // the clock runs (in local time) before the first snapshot names the center's zone
  const onStatus = bindStaleBanner(dom.banner, dom.bannerText);
  let token = takeToken(PAGE);
  if (!token) {
    onStatus({ state: "signin" });
    token = await askForToken(PAGE, dom.tokenRoot);
  }
  let socket = null;
  const start = (t) => {
    socket = new CallboardSocket(t, {
      onSnapshot,
      onDelta,
      onStatus: async (status) => {
        onStatus(status);
        if (status.state === "rejected") {
          // Retrying a rejected token cannot help; offer the form for a fresh one.
          forgetToken(PAGE);
          const fresh = await askForToken(PAGE, dom.tokenRoot, "This token was rejected or has expired \u2014 get a new link, or paste a new token.");
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
