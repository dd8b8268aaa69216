// The reports page: intraday chart per queue, the agents' day, and the call history with CSV export.
// Plain JS, no build, no charting library: the chart is a few dozen lines of SVG drawn here, themed by the
// page's CSS variables (no CDN, nothing to keep patched; see docs/records.md).
import {
  askForToken, EM_DASH, el, forgetToken, formatDuration, formatPercent, takeToken,
} from "/static/common.js";

const t = window.t || ((s, v) => v ? s.replace(/\{(\w+)\}/g, (_, k) => v[k]) : s);

const PAGE = "reports";
// A call's outcome (records/: DESIGN.md's queue outcomes) and the words a supervisor reads for it.
const OUTCOME_LABELS = {
  answered: "answered",
  abandoned: "abandoned",
  short_abandoned: "hung up at once",
  unstaffed: "no agent signed in",
  queue_full: "queue full",
  waiting: "waiting",
  leave: "left the queue",
  redirected: "redirected",
  error: "error",
  other: "other",
};
const OUTCOMES = Object.keys(OUTCOME_LABELS);
const outcomeLabel = (outcome) => t(OUTCOME_LABELS[outcome] || outcome);
const SVG_NS = "http://www.w3.org/2000/svg";
const $ = (id) => document.getElementById(id);

let token = null;
let center = { timezone: "UTC", name: "" };
let agentNames = {}; // id -> name, from the snapshot: the history shows "Alice Moreau", as the agents' day does
const agentName = (id) => agentNames[id] || id;
let nextCursor = null;

// ---------------------------------------------------------------------------------------------
// API

class AuthError extends Error {}

async function api(path) {
  const response = await fetch(path, { headers: { Authorization: `Bearer ${token}` }, cache: "no-store" });
  if (response.status === 401 || response.status === 403) throw new AuthError(t("Reports need a supervisor token."));
  if (!response.ok) {
    let message = `HTTP ${response.status}`;
    try { message = (await response.json()).error || message; } catch { /* not JSON */ }
    throw new Error(message);
  }
  return response;
}

async function json(path) {
  return (await api(path)).json();
}

function showError(error) {
  const box = $("error");
  box.hidden = false;
  box.textContent = t("The reports could not be loaded: {message}", { message: error.message });
}

// ---------------------------------------------------------------------------------------------
// Formatting in the center's time zone

function localParts(ms) {
  const f = new Intl.DateTimeFormat("en-CA", {
    timeZone: center.timezone, year: "numeric", month: "2-digit", day: "2-digit",
    hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false,
  });
  const p = Object.fromEntries(f.formatToParts(new Date(ms)).map((x) => [x.type, x.value]));
  return { date: `${p.year}-${p.month}-${p.day}`, time: `${p.hour === "24" ? "00" : p.hour}:${p.minute}:${p.second}` };
}

function formatMs(ms) {
  if (ms === null || ms === undefined) return EM_DASH;
  const p = localParts(ms);
  return `${p.date} ${p.time}`;
}

// ---------------------------------------------------------------------------------------------
// The intraday chart: grouped bars (offered, answered, abandoned) and a service-level line, in SVG.

function svg(tag, attrs = {}, ...children) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  node.append(...children);
  return node;
}

function niceMax(value) {
  if (value <= 4) return 4;
  const magnitude = 10 ** Math.floor(Math.log10(value));
  for (const step of [1, 2, 4, 6, 8, 10]) { // even multiples: the middle grid line is a whole number
    if (step * magnitude >= value) return step * magnitude;
  }
  return 10 * magnitude;
}

export function drawChart(queue, buckets, stepMin) {
  const used = buckets.map((b, i) => (b.offered ? i : -1)).filter((i) => i >= 0);
  if (!used.length) return el("p", { className: "rp-empty", textContent: t("No calls offered on this day.") });
  const lo = Math.max(used[0] - 2, 0);
  const hi = Math.min(used[used.length - 1] + 2, buckets.length - 1);
  const shown = buckets.slice(lo, hi + 1);
  const W = 760, H = 240, L = 40, R = 44, T = 14, B = 30;
  const plotW = W - L - R, plotH = H - T - B;
  const yMax = niceMax(Math.max(...shown.map((b) => b.offered)));
  const slot = plotW / shown.length;
  const barW = Math.max((slot * 0.8) / 3, 1);
  const y = (v) => T + plotH - (v / yMax) * plotH;
  const ySl = (r) => T + plotH - r * plotH;
  const chart = svg("svg", {
    viewBox: `0 0 ${W} ${H}`, class: "rp-chart", role: "img", "data-testid": `chart-${queue}`,
    "aria-label": t("Offered, answered and abandoned per {step} minutes; the line is the service level", { step: stepMin }),
  });
  for (const frac of [0, 0.5, 1]) {
    chart.append(
      svg("line", { x1: L, x2: W - R, y1: ySl(frac), y2: ySl(frac), class: "rp-grid" }),
      svg("text", { x: L - 6, y: ySl(frac) + 4, class: "rp-axis", "text-anchor": "end" }, String(Math.round(yMax * frac))),
      svg("text", { x: W - R + 6, y: ySl(frac) + 4, class: "rp-axis rp-axis-sl" }, `${Math.round(frac * 100)}%`),
    );
  }
  const labelEvery = Math.max(Math.ceil(shown.length / 12), 1);
  const points = [];
  shown.forEach((b, i) => {
    const x0 = L + i * slot + slot * 0.1;
    [["offered", b.offered], ["answered", b.answered], ["abandoned", b.abandoned]].forEach(([kind, v], k) => {
      const bar = svg("rect", {
        x: x0 + k * barW, y: y(v), width: Math.max(barW - 1, 1), height: T + plotH - y(v),
        class: `rp-bar rp-${kind}`, "data-kind": kind,
      }, svg("title", {}, `${b.start} ${t(kind[0].toUpperCase() + kind.slice(1))}: ${v}`));
      chart.append(bar);
    });
    if (b.service_level !== null && b.service_level !== undefined) {
      points.push([L + i * slot + slot / 2, ySl(b.service_level), b, i]);
    }
    if (i % labelEvery === 0) {
      chart.append(svg("text", { x: L + i * slot + slot / 2, y: H - 10, class: "rp-axis", "text-anchor": "middle" }, b.start));
    }
  });
  // The line joins neighbouring buckets only: a bucket without answered or abandoned calls has no
  // service level, and a line drawn across it would invent one.
  let run = [];
  const flush = () => {
    if (run.length > 1) chart.append(svg("polyline", { points: run.map(([px, py]) => `${px},${py}`).join(" "), class: "rp-sl-line" }));
    run = [];
  };
  points.forEach((point, k) => {
    if (k > 0 && point[3] !== points[k - 1][3] + 1) flush();
    run.push(point);
  });
  flush();
  if (points.length) {
    for (const [px, py, b] of points) {
      chart.append(svg("circle", { cx: px, cy: py, r: 3, class: "rp-sl-dot" },
        svg("title", {}, `${b.start} ${t("Service level")}: ${formatPercent(b.service_level)}`)));
    }
  }
  return chart;
}

function legend() {
  const item = (cls, text) => el("span", { className: "rp-key" }, el("i", { className: cls }), text);
  return el("div", { className: "rp-legend" },
    item("rp-offered", t("Offered")), item("rp-answered", t("Answered")), item("rp-abandoned", t("Abandoned")),
    item("rp-sl", t("Service level")));
}

function totalsLine(tot) {
  const part = (label, value) => el("span", {}, el("b", { textContent: value }), ` ${label}`);
  return el("p", { className: "rp-totals", "data-testid": "totals" },
    part(t("Offered"), String(tot.offered)), part(t("Answered"), String(tot.answered)),
    part(t("Abandoned"), String(tot.abandoned)), part(t("Service level"), formatPercent(tot.service_level)),
    part(t("ASA"), formatDuration(tot.asa_s)), part(t("AHT"), formatDuration(tot.aht_s)));
}

async function loadIntraday() {
  const day = $("day").value;
  const step = $("step").value;
  const body = await json(`/api/reports/intraday?date=${encodeURIComponent(day)}&step_min=${step}`);
  const charts = $("charts");
  charts.replaceChildren();
  for (const [queue, data] of Object.entries(body.queues)) {
    charts.append(el("figure", { className: "rp-figure", "data-queue": queue },
      el("figcaption", {}, el("h3", { textContent: queue }), totalsLine(data.totals)),
      drawChart(queue, data.buckets, body.step_min), legend()));
  }
}

// ---------------------------------------------------------------------------------------------
// The agents' day

async function loadAgents() {
  const body = await json(`/api/reports/agents?date=${encodeURIComponent($("day").value)}`);
  const rows = body.agents.map((a) => el("tr", { "data-agent": a.agent },
    el("td", { textContent: a.name }),
    ...["available", "on-call", "wrap-up", "away"].map((s) => el("td", { className: "num", textContent: formatDuration(a.seconds[s]) })),
    el("td", { className: "num", textContent: String(a.calls_taken) }),
    el("td", { className: "num", textContent: formatDuration(a.aht_s) }),
    el("td", { className: "num", textContent: String(a.offers_missed) })));
  $("agents-table").tBodies[0].replaceChildren(...rows);
}

// ---------------------------------------------------------------------------------------------
// The call history

function localInputToIso(value) {
  // datetime-local has no zone: the API reads an offset-less time in the center's zone, as shown here.
  return value ? `${value}:00`.slice(0, 19) : "";
}

function filterQuery() {
  const q = new URLSearchParams();
  const since = localInputToIso($("since").value);
  const until = localInputToIso($("until").value);
  if (since) q.set("since", since);
  if (until) q.set("until", until);
  for (const id of ["queue", "agent", "outcome", "number"]) {
    if ($(id).value.trim()) q.set(id, $(id).value.trim());
  }
  return q;
}

function callRow(c) {
  return el("tr", { "data-call": c.call_sid },
    el("td", { textContent: formatMs(c.entered_ms) }),
    el("td", { textContent: c.from || EM_DASH }),
    el("td", { textContent: c.queue || EM_DASH }),
    el("td", { className: `rp-outcome rp-o-${c.outcome || "unknown"}`, textContent: c.outcome ? outcomeLabel(c.outcome) : EM_DASH }),
    el("td", { textContent: c.agent ? agentName(c.agent) : EM_DASH, title: c.agent || "" }),
    el("td", { className: "num", textContent: formatDuration(c.wait_s) }),
    el("td", { className: "num", textContent: formatDuration(c.talk_s) }),
    el("td", { className: "num", textContent: formatDuration(c.handle_s) }));
}

async function loadCalls(append = false) {
  const q = filterQuery();
  q.set("limit", "50");
  if (append && nextCursor) q.set("cursor", nextCursor);
  const body = await json(`/api/calls?${q}`);
  const tbody = $("calls-table").tBodies[0];
  const rows = body.calls.map(callRow);
  if (append) tbody.append(...rows);
  else tbody.replaceChildren(...(rows.length ? rows : [el("tr", {}, el("td", { colSpan: 8, className: "rp-empty", textContent: t("No calls match.") }))]));
  nextCursor = body.next_cursor;
  $("more").hidden = !nextCursor;
}

async function exportCsv() {
  const response = await api(`/api/calls.csv?${filterQuery()}`);
  const url = URL.createObjectURL(await response.blob());
  const a = el("a", { href: url, download: `calls-${$("day").value || "export"}.csv` });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}

// ---------------------------------------------------------------------------------------------

function guard(fn) {
  return (event) => {
    event?.preventDefault?.();
    fn().catch(onError);
  };
}

async function onError(error) {
  if (error instanceof AuthError) {
    forgetToken(PAGE);
    $("reports").hidden = true;
    token = await askForToken(PAGE, $("token-root"), error.message);
    start();
    return;
  }
  showError(error);
}

function fillSelect(select, values, label = (v) => v) {
  select.replaceChildren(el("option", { value: "", textContent: t("any") }),
    ...values.map((v) => el("option", { value: v, textContent: label(v) })));
}

async function start() {
  const snapshot = await json("/api/snapshot");
  $("token-root").hidden = true;
  $("reports").hidden = false;
  center = snapshot.center || center;
  $("center-name").textContent = center.name || "";
  fillSelect($("queue"), Object.keys(snapshot.queues || {}));
  agentNames = Object.fromEntries(Object.entries(snapshot.agents || {}).map(([id, a]) => [id, a.name || id]));
  fillSelect($("agent"), Object.keys(agentNames), agentName);
  fillSelect($("outcome"), OUTCOMES, outcomeLabel);
  if (!$("day").value) $("day").value = new URLSearchParams(location.search).get("date") || localParts(Date.now()).date;
  await Promise.all([loadIntraday(), loadAgents(), loadCalls()]);
}

function translateStatic() {
  for (const node of document.querySelectorAll("[data-i18n]")) node.textContent = t(node.dataset.i18n);
}

async function main() {
  translateStatic();
  const params = new URLSearchParams(location.search);
  const root = document.documentElement;
  // the button names the theme it switches to
  const labelToggle = () => { $("theme-toggle").textContent = root.dataset.theme === "light" ? t("Dark") : t("Light"); };
  if (params.get("theme") === "light") root.dataset.theme = "light";
  labelToggle();
  $("theme-toggle").addEventListener("click", () => {
    root.dataset.theme = root.dataset.theme === "light" ? "dark" : "light";
    labelToggle();
  });
  $("day-form").addEventListener("submit", guard(() => Promise.all([loadIntraday(), loadAgents()])));
  $("filters").addEventListener("submit", guard(() => loadCalls(false)));
  $("more").addEventListener("click", guard(() => loadCalls(true)));
  $("csv").addEventListener("click", guard(exportCsv));
  token = takeToken(PAGE) || await askForToken(PAGE, $("token-root"));
  start().catch(onError);
}

main();
