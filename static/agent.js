// The agent console: my badge and state buttons, the screen pop, my queues' waiting counts,
// teammates' badges, and "Take next caller" through the Twilio Voice JS SDK when the server offers it.
// Voice is strictly optional: any failure there leaves presence working.

import {
  CallboardSocket,
  EM_DASH,
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
  levelHighIsBad,
  setLevel,
  setText,
  stateLabel,
  t,
  takeToken,
} from "./common.js";
import { offers } from "./agent-offers.js";

const PAGE = "agent";
const ERROR_VISIBLE_MS = 15_000;

const params = new URLSearchParams(window.location.search);
const clock = new ServerClock();

let socket = null;
let token = null;
let me = null; // my agent id: the `sub` of the welcome message
let snapshot = null;
let live = false;
let currentPop = null;

const $ = (id) => document.getElementById(id);
const dom = {
  banner: $("stale-banner"),
  bannerText: $("stale-text"),
  agentName: $("agent-name"),
  centerName: $("center-name"),
  clock: $("clock"),
  tokenRoot: $("token-root"),
  error: $("error"),
  errorCode: $("error-code"),
  errorMessage: $("error-message"),
  badge: $("my-badge"),
  myName: $("my-name"),
  myState: $("my-state"),
  myTime: $("my-time"),
  myReason: $("my-reason"),
  btnAvailable: $("btn-available"),
  btnAway: $("btn-away"),
  reasons: $("away-reasons"),
  pop: $("pop"),
  popFrom: $("pop-from"),
  popQueue: $("pop-queue"),
  popWaited: $("pop-waited"),
  popTo: $("pop-to"),
  popCustomers: $("pop-customers"),
  myQueues: $("myqueues"),
  takeQueue: $("take-queue"),
  takeNext: $("take-next"),
  voiceNotice: $("voice-notice"),
  mates: $("mates"),
};

// ---------------------------------------------------------------------------------------------
// Errors (from the server, or local ones such as "not connected").

let errorTimer = 0;

function showError(code, message) {
  setText(dom.errorCode, code || "error");
  setText(dom.errorMessage, message || t("Something went wrong."));
  dom.error.hidden = false;
  window.clearTimeout(errorTimer);
  errorTimer = window.setTimeout(hideError, ERROR_VISIBLE_MS);
}

function hideError() {
  window.clearTimeout(errorTimer);
  dom.error.hidden = true;
}

// ---------------------------------------------------------------------------------------------
// My badge and state buttons.

// Other scripts of this page (agent-softphone.js) follow the console through these events, never its internals.
function announce(name, detail) {
  window.dispatchEvent(new CustomEvent(`callboard:${name}`, { detail }));
}

function myRecord() {
  return (me && snapshot?.agents?.[me]) || null;
}

let clockFormat = null;

function renderHeader() {
  const center = snapshot?.center || {};
  setText(dom.centerName, center.name || "");
  const record = myRecord();
  const name = record?.name || me || t("Agent");
  setText(dom.agentName, name);
  document.title = `${name} — callboard`;
  clockFormat = clockFormatter(center.timezone);
  renderClock();
  renderReasons();
}

function renderClock() {
  if (clockFormat) setText(dom.clock, clockFormat.format(new Date(clock.now())));
}

let badgeState = null;

function renderMe() {
  const record = myRecord();
  const state = record ? record.state || "offline" : null;
  if (badgeState !== state) {
    if (badgeState) dom.badge.classList.remove(`st-${badgeState}`);
    if (state) dom.badge.classList.add(`st-${state}`);
    dom.badge.dataset.state = state || "unknown";
    badgeState = state;
  }
  setText(dom.myName, record ? `${record.name || me}${record.team ? ` \u00b7 ${record.team}` : ""}` : me ? t("{id} is not an agent of this center", { id: me }) : "");
  setText(dom.myState, record ? stateLabel(state) : EM_DASH);
  const detail = record?.reason || (state === "on-call" && record?.call?.from ? t("with {caller}", { caller: record.call.from }) : "");
  setText(dom.myReason, detail);
  tickMe();
  dom.btnAvailable.classList.toggle("current", state === "available");
  dom.btnAway.classList.toggle("current", state === "away");
  updateButtons();
  renderMyQueues();
  announce("me", { me, record, agents: snapshot?.agents || {}, queues: Object.keys(snapshot?.queues || {}) });
}

function tickMe() {
  const record = myRecord();
  const since = record?.since_ms;
  setText(dom.myTime, Number.isFinite(since) ? formatDuration(clock.secondsSince(since)) : EM_DASH);
}

function updateButtons() {
  const usable = live && !!myRecord();
  dom.btnAvailable.disabled = !usable;
  dom.btnAway.disabled = !usable;
  for (const button of dom.reasons.querySelectorAll("button")) button.disabled = !usable;
}

let renderedReasons = "";

function renderReasons() {
  const reasons = Array.isArray(snapshot?.center?.away_reasons) ? snapshot.center.away_reasons : [];
  const key = JSON.stringify(reasons);
  if (key === renderedReasons) return;
  renderedReasons = key;
  dom.reasons.replaceChildren(
    ...reasons.map((reason) => {
      const button = el("button", { type: "button", className: "btn", textContent: reason, "data-testid": `away-reason-${reason}` });
      button.addEventListener("click", () => {
        setState("away", reason);
        closeReasons();
      });
      return button;
    }),
  );
  updateButtons();
}

function closeReasons() {
  dom.reasons.hidden = true;
  dom.btnAway.setAttribute("aria-expanded", "false");
}

function setState(state, reason) {
  const message = { type: "set_state", state };
  if (state === "away" && reason) message.reason = reason;
  // No optimistic update: the badge changes when the server's delta says so (one path for one fact).
  if (!socket || !socket.send(message)) {
    showError("not_connected", t("Not connected \u2014 your state was not changed. Try again when the banner is gone."));
  }
}

function setupButtons() {
  dom.btnAvailable.addEventListener("click", () => {
    closeReasons();
    setState("available");
  });
  dom.btnAway.addEventListener("click", () => {
    const reasons = snapshot?.center?.away_reasons;
    if (!Array.isArray(reasons) || reasons.length === 0) {
      setState("away"); // the center defines no reasons: plain away
      return;
    }
    const open = dom.reasons.hidden;
    dom.reasons.hidden = !open;
    dom.btnAway.setAttribute("aria-expanded", String(open));
  });
  $("error-dismiss").addEventListener("click", hideError);
  const themeButton = $("theme-toggle");
  const label = () => {
    themeButton.textContent = document.documentElement.dataset.theme === "light" ? t("Dark") : t("Light");
  };
  label();
  themeButton.addEventListener("click", () => {
    document.documentElement.dataset.theme = document.documentElement.dataset.theme === "light" ? "dark" : "light";
    label();
  });
}

// ---------------------------------------------------------------------------------------------
// Screen pop.

function renderPop() {
  const pop = currentPop;
  // the customer panel (static/agent-customers.js) follows the pop through this event
  window.dispatchEvent(new CustomEvent("callboard:pop", { detail: { pop } }));
  dom.pop.classList.toggle("empty", !pop);
  dom.pop.dataset.callSid = pop?.call_sid || "";
  if (!pop) {
    dom.popCustomers.replaceChildren();
    return;
  }
  setText(dom.popFrom, pop.from || t("unknown caller"));
  setText(dom.popQueue, pop.queue || EM_DASH);
  setText(dom.popWaited, formatDuration(pop.waited_s));
  setText(dom.popTo, pop.to || EM_DASH);
  const customers = Array.isArray(pop.customers) ? pop.customers : [];
  if (customers.length === 0) {
    dom.popCustomers.replaceChildren(el("p", { className: "no-customer", "data-testid": "pop-no-customer", textContent: t("no customer record") }));
    return;
  }
  dom.popCustomers.replaceChildren(el("ul", { className: "customers" }, ...customers.map(renderCustomer)));
}

const NAME_KEYS = ["name", "full_name", "display_name", "company"];

function renderCustomer(customer, index) {
  const item = el("li", { className: "customer", "data-testid": `pop-customer-${index}` });
  if (customer === null || typeof customer !== "object") {
    item.append(el("div", { className: "customer-name", textContent: String(customer) }));
    return item;
  }
  const nameKey = NAME_KEYS.find((k) => typeof customer[k] === "string" && customer[k]);
  item.append(el("div", { className: "customer-name", textContent: nameKey ? customer[nameKey] : t("Customer") }));
  const details = el("dl");
  for (const [key, value] of Object.entries(customer)) {
    if (key === nameKey || value === null || value === undefined || value === "") continue;
    const text = typeof value === "object" ? JSON.stringify(value) : String(value);
    details.append(el("dt", { textContent: key.replace(/_/g, " ") }), el("dd", { textContent: text }));
  }
  if (details.childElementCount) item.append(details);
  return item;
}

// ---------------------------------------------------------------------------------------------
// My queues.

const queueViews = new Map();

function renderMyQueues() {
  const names = Array.isArray(myRecord()?.queues) ? myRecord().queues : [];
  const key = names.join("\u0000");
  if (dom.myQueues.dataset.names !== key) {
    dom.myQueues.dataset.names = key;
    queueViews.clear();
    dom.myQueues.replaceChildren(
      ...names.map((name) => {
        const waiting = el("div", { className: "myqueue-waiting", "data-testid": `myqueue-${name}-waiting`, textContent: EM_DASH });
        const longest = el("b", { "data-testid": `myqueue-${name}-longest`, textContent: EM_DASH });
        const root = el(
          "div",
          { className: "myqueue", "data-testid": `myqueue-${name}` },
          el("div", { className: "myqueue-name", textContent: name }),
          waiting,
          el("div", { className: "myqueue-longest" }, `${t("waiting \u00b7 longest")} `, longest),
        );
        queueViews.set(name, { name, root, waiting, longest, oldestMs: null, thresholds: {} });
        return root;
      }),
    );
    const selected = dom.takeQueue.value;
    dom.takeQueue.replaceChildren(...names.map((name) => el("option", { value: name, textContent: name })));
    if (names.includes(selected)) dom.takeQueue.value = selected;
    dom.takeQueue.hidden = names.length <= 1;
  }
  for (const name of names) renderMyQueue(name);
}

function renderMyQueue(name) {
  const view = queueViews.get(name);
  if (!view) return;
  const queue = snapshot?.queues?.[name];
  const t = queue?.thresholds || {};
  view.thresholds = t;
  setText(view.waiting, queue ? formatCount(queue.waiting) : EM_DASH);
  setLevel(view.waiting, queue ? levelHighIsBad(queue.waiting, t.waiting_warning, t.waiting_critical) : "");
  view.oldestMs = queue && queue.waiting > 0 && Number.isFinite(queue.oldest_enqueued_ms) ? queue.oldest_enqueued_ms : null;
  tickMyQueue(view);
}

function tickMyQueue(view) {
  if (view.oldestMs === null) {
    setText(view.longest, EM_DASH);
    setLevel(view.longest, "");
    return;
  }
  const waited = clock.secondsSince(view.oldestMs);
  setText(view.longest, formatDuration(waited));
  setLevel(view.longest, levelHighIsBad(waited, view.thresholds.wait_warning_s, view.thresholds.wait_critical_s));
}

// ---------------------------------------------------------------------------------------------
// Teammates (every other agent the server sends us: our team).

const mateViews = new Map();

function renderMate(id) {
  const agent = snapshot?.agents?.[id];
  let view = mateViews.get(id);
  if (!agent || id === me) {
    if (view) {
      view.root.remove();
      mateViews.delete(id);
    }
    return false;
  }
  let added = false;
  if (!view) {
    const name = el("span", { className: "agent-name", "data-testid": `teammate-${id}-name` });
    const time = el("span", { className: "agent-time", "data-testid": `teammate-${id}-time` });
    const state = el("span", { className: "agent-state", "data-testid": `teammate-${id}-state` });
    const reason = el("span", { className: "agent-reason", "data-testid": `teammate-${id}-reason` });
    const root = el(
      "div",
      { className: "agent", "data-testid": `teammate-${id}`, "data-agent": id },
      el("div", { className: "agent-line" }, name, time),
      el("div", { className: "agent-line agent-sub" }, state, reason),
    );
    view = { id, root, name, time, state, reason, stateValue: null, sinceMs: null, sortName: "" };
    mateViews.set(id, view);
    added = true;
  }
  const stateValue = agent.state || "offline";
  if (view.stateValue !== stateValue) {
    if (view.stateValue) view.root.classList.remove(`st-${view.stateValue}`);
    view.root.classList.add(`st-${stateValue}`);
    view.root.dataset.state = stateValue;
    view.stateValue = stateValue;
  }
  const sortName = agent.name || id;
  if (view.sortName !== sortName) added = true;
  view.sortName = sortName;
  setText(view.name, sortName);
  setText(view.state, stateLabel(stateValue));
  setText(view.reason, agent.reason || (stateValue === "on-call" && agent.call?.queue ? agent.call.queue : ""));
  view.sinceMs = Number.isFinite(agent.since_ms) ? agent.since_ms : null;
  tickMate(view);
  return added;
}

function tickMate(view) {
  setText(view.time, view.sinceMs === null ? EM_DASH : formatDuration(clock.secondsSince(view.sinceMs)));
}

function orderMates() {
  const views = [...mateViews.values()].sort((a, b) => a.sortName.localeCompare(b.sortName) || a.id.localeCompare(b.id));
  let previous = null;
  for (const view of views) {
    const expected = previous ? previous.nextSibling : dom.mates.firstChild;
    if (view.root !== expected) dom.mates.insertBefore(view.root, expected);
    previous = view.root;
  }
  dom.mates.classList.toggle("empty", views.length === 0);
  if (views.length === 0 && !dom.mates.firstChild) dom.mates.append(el("p", { className: "pop-idle mates-empty", textContent: t("No teammates online in this view.") }));
  else dom.mates.querySelector(".mates-empty")?.remove();
}

// ---------------------------------------------------------------------------------------------
// Messages.

function onWelcome(message) {
  me = message.sub;
}

function onSnapshot(message) {
  clock.sync(message.server_time_ms);
  snapshot = message;
  const record = myRecord();
  // After a reconnect the server sends the pop again while the call lasts; no call means no pop.
  if (!record || !record.call) currentPop = null;
  renderHeader();
  renderMe();
  renderPop();
  for (const id of mateViews.keys()) if (!snapshot.agents?.[id]) renderMate(id);
  for (const id of Object.keys(snapshot.agents || {})) renderMate(id);
  orderMates();
}

function onDelta(message) {
  if (!snapshot) return;
  const body = deltaPatch(message);
  const mine = me && body.agents && me in body.agents ? body.agents[me] : undefined;
  const touchedAgents = body.agents === null ? [...mateViews.keys(), me] : Object.keys(body.agents || {});
  snapshot = applyMergePatch(snapshot, body);

  // The pop lives exactly as long as my record's call: cleared when the call becomes null.
  if (currentPop && (body.agents === null || mine === null || (mine && "call" in mine && mine.call === null))) {
    currentPop = null;
    renderPop();
  }
  if ("center" in body) renderHeader();
  if (touchedAgents.includes(me)) {
    renderHeader();
    renderMe();
  } else if (body.queues !== undefined) {
    renderMyQueues();
  }
  let reorder = false;
  for (const id of touchedAgents) if (id !== me && renderMate(id)) reorder = true;
  for (const id of touchedAgents) if (id !== me && !mateViews.has(id)) reorder = true;
  if (reorder) orderMates();
}

function onMessage(message) {
  announce("message", message);
  if (offers.onMessage(message)) return; // routing: offer, offer_ended (static/agent-offers.js)
  if (message.type === "pop") {
    currentPop = message;
    renderPop();
  } else if (message.type === "error") {
    showError(message.code, message.message);
  }
}

function tick() {
  renderClock();
  tickMe();
  for (const view of queueViews.values()) if (view.oldestMs !== null) tickMyQueue(view);
  for (const view of mateViews.values()) tickMate(view);
}

// ---------------------------------------------------------------------------------------------
// Voice: GET /api/voice-token -> load the SDK from sdk_url -> new Twilio.Device(token).

const voice = { device: null, call: null, ready: false, generation: 0 };

function voiceNotice(text, presenceOnly = false) {
  setText(dom.voiceNotice, text);
  dom.voiceNotice.classList.toggle("presence-only", presenceOnly);
}

function presenceOnly(reason) {
  voice.ready = false;
  offers.voiceUnavailable();
  dom.takeNext.disabled = true;
  // the reason is the server's English sentence (or one of ours below): shown translated when we have it
  voiceNotice(t("Presence only: {reason}", { reason: t(reason) }), true);
  dom.takeNext.dataset.voice = "unavailable";
}

async function fetchVoiceToken() {
  let response;
  try {
    response = await fetch("/api/voice-token", { headers: { Authorization: `Bearer ${token}` }, cache: "no-store" });
  } catch {
    throw new Error("the voice token request failed (network)");
  }
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = null;
  }
  if (!response.ok) {
    throw new Error(body?.error || t("the voice token request failed (HTTP {status})", { status: response.status }));
  }
  if (!body || typeof body.token !== "string") throw new Error("the voice token answer has no token");
  return body;
}

const loadedScripts = new Map();

function loadScript(url) {
  if (loadedScripts.has(url)) return loadedScripts.get(url);
  const promise = new Promise((resolve, reject) => {
    const script = document.createElement("script");
    script.src = url;
    script.async = true;
    script.crossOrigin = "anonymous";
    script.onload = () => resolve();
    script.onerror = () => {
      loadedScripts.delete(url);
      script.remove();
      reject(new Error("could not load the Twilio Voice SDK"));
    };
    document.head.append(script);
  });
  loadedScripts.set(url, promise);
  return promise;
}

async function setupVoice() {
  const generation = ++voice.generation;
  dom.takeNext.disabled = true;
  dom.takeNext.dataset.voice = "checking";
  voiceNotice(t("Checking voice\u2026"));
  try {
    voice.device?.destroy?.();
  } catch {
    // an old device that fails to tear down is not worth surfacing
  }
  voice.device = null;
  try {
    const answer = await fetchVoiceToken();
    if (generation !== voice.generation) return;
    if (!window.Twilio?.Device) {
      if (!answer.sdk_url) throw new Error("the server gave no SDK address");
      await loadScript(answer.sdk_url);
    }
    if (generation !== voice.generation) return;
    if (!window.Twilio?.Device) throw new Error("the Twilio Voice SDK did not load");
    const device = new window.Twilio.Device(answer.token);
    voice.device = device;
    announce("device", { device, identity: answer.identity, ttlS: answer.ttl_s, fetchToken: fetchVoiceToken });
    device.on?.("error", (error) => {
      voiceNotice(t("Voice error: {message}", { message: error?.message || error }), true);
    });
    device.on?.("tokenWillExpire", async () => {
      try {
        const fresh = await fetchVoiceToken();
        device.updateToken?.(fresh.token);
      } catch (error) {
        voiceNotice(t("Voice token refresh failed: {message}", { message: error.message }), true);
      }
    });
    voice.ready = true;
    offers.attachDevice(device);
    dom.takeNext.disabled = false;
    dom.takeNext.dataset.voice = "ready";
    voiceNotice(answer.identity ? t("Voice ready as {identity}.", { identity: answer.identity }) : t("Voice ready."));
  } catch (error) {
    if (generation !== voice.generation) return;
    console.warn("callboard: voice unavailable", error);
    presenceOnly(error?.message || String(error));
  }
}

// While a call is up the button stays "Take next caller", disabled: the one Hang up is the softphone panel's
// (agent-softphone.js), which ends the call the way the center's bridge needs. This button used to turn into a
// second "Hang up" that only disconnected the browser's leg, beside the panel's that ended the call for everyone.
function resetCallButton() {
  voice.call = null;
  dom.takeNext.disabled = !voice.ready;
  dom.takeNext.removeAttribute("title");
  delete dom.takeNext.dataset.call;
}

function callButtonBusy() {
  dom.takeNext.disabled = true;
  dom.takeNext.dataset.call = "up";
  dom.takeNext.title = t("On a call: hang up in the softphone panel.");
}

async function takeNext() {
  if (voice.call || !voice.ready || !voice.device) return;
  const queue = dom.takeQueue.value || myRecord()?.queues?.[0];
  dom.takeNext.disabled = true;
  voiceNotice(queue ? t("Calling for the next caller in {queue}\u2026", { queue }) : t("Calling for the next caller\u2026"));
  try {
    // SDK 2.x returns a Promise<Call>; 1.x returns a Connection. await handles both.
    const call = await voice.device.connect({ params: queue ? { queue } : {} });
    voice.call = call;
    announce("call", { call });
    callButtonBusy();
    const ended = (text) => () => {
      if (voice.call !== call) return;
      resetCallButton();
      voiceNotice(text);
    };
    call?.on?.("accept", () => voiceNotice(t("Connected.")));
    call?.on?.("disconnect", ended(t("Call ended.")));
    call?.on?.("cancel", ended(t("Call cancelled.")));
    call?.on?.("reject", ended(t("Call rejected.")));
    call?.on?.("error", (error) => {
      if (voice.call !== call) return;
      resetCallButton();
      voiceNotice(t("Call failed: {message}", { message: error?.message || error }), true);
    });
  } catch (error) {
    resetCallButton();
    voiceNotice(t("Call failed: {message}", { message: error?.message || error }), true);
  }
}

// ---------------------------------------------------------------------------------------------

async function main() {
  applyThemeFromQuery(params);
  setupButtons();
  renderHeader();
  dom.takeNext.addEventListener("click", () => {
    takeNext().catch((error) => console.error("callboard: take next failed", error));
  });
  const onStatus = bindStaleBanner(dom.banner, dom.bannerText);
  token = takeToken(PAGE);
  if (!token) {
    onStatus({ state: "signin" });
    token = await askForToken(PAGE, dom.tokenRoot);
  }
  const start = () => {
    announce("token", { token });
    socket = new CallboardSocket(token, {
      onWelcome,
      onSnapshot,
      onDelta,
      onMessage,
      hello: () => offers.hello(),
      onStatus: async (status) => {
        onStatus(status);
        live = status.state === "live";
        updateButtons();
        if (status.state === "rejected") {
          forgetToken(PAGE);
          token = await askForToken(PAGE, dom.tokenRoot, t("This token was rejected or has expired \u2014 get a new link, or paste a new token."));
          start();
          setupVoice();
        }
      },
    });
    offers.bind((message) => socket?.send(message) ?? false);
    socket.start();
  };
  start();
  setupVoice(); // independent of the socket: its failure never touches presence
  everySecond(clock, tick);
}

main();
