// The softphone panel of the agent console: device state, incoming calls (transfers ring here), mute, keypad,
// hold, transfer, hang-up, the "a supervisor is listening" banner and the wrap-up panel with dispositions.
// It follows the console through its callboard:* window events (agent.js announces token, me, message,
// device, call) and talks to the server only through /api/softphone and /api/calls/{sid}/... .
// Mute and DTMF stay in the browser (the Voice SDK's call.mute() and call.sendDigits()).

const t = window.t || ((s, v) => (v ? s.replace(/\{(\w+)\}/g, (_, k) => v[k]) : s));

// One line per Twilio Voice SDK error code an agent may meet; anything else shows Twilio's own message.
const TWILIO_ERRORS = {
  20101: "The voice token is not valid (check TWILIO_API_KEY and TWILIO_API_SECRET on the server).",
  20103: "The voice token was refused (its account or key does not match).",
  20104: "The voice token expired before it could be renewed; reload the page.",
  31000: "Twilio reported a general error; try again.",
  31005: "The connection to Twilio was lost (network or Twilio trouble).",
  31009: "No connection to Twilio (network or firewall blocks it).",
  31201: "The microphone could not be opened.",
  31204: "The voice token is malformed.",
  31205: "The voice token expired; reload the page.",
  31208: "Microphone access was denied; allow it in the browser.",
  31401: "Microphone access was denied; allow it in the browser.",
  31402: "No microphone was found.",
  53000: "The signalling connection to Twilio failed (network or firewall).",
};

const DTMF_KEYS = ["1", "2", "3", "4", "5", "6", "7", "8", "9", "*", "0", "#"];

const sp = {
  token: null,
  me: null,
  record: null,
  agents: {},
  queues: [],
  settings: null,
  device: null,
  sdkCall: null, // the Voice SDK call in progress (outgoing take-next or an accepted incoming)
  incoming: null,
  callSid: null, // the caller's CallSid (from the pop): what the controls act on
  lastCallSid: null, // the call the wrap-up panel is about
  wrapDone: new Set(),
  onHold: false,
  muted: false,
  monitor: null,
};

function h(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key.startsWith("data-") || key.startsWith("aria-")) node.setAttribute(key, value);
    else node[key] = value;
  }
  node.append(...children);
  return node;
}

const ui = {};

function build() {
  const panel = h("section", { className: "panel softphone", "aria-label": t("Softphone"), "data-testid": "softphone" });
  ui.device = h("div", { className: "sp-device", "data-testid": "device-state", "data-state": "offline", textContent: t("Voice: offline") });
  ui.monitor = h("div", { className: "sp-monitor", "data-testid": "monitor-banner", role: "status", hidden: true });
  ui.notice = h("div", { className: "sp-notice", "data-testid": "sp-notice", role: "status" });
  ui.answer = h("button", { type: "button", className: "btn btn-primary", "data-testid": "sp-answer", textContent: t("Answer") });
  ui.decline = h("button", { type: "button", className: "btn", "data-testid": "sp-decline", textContent: t("Decline") });
  ui.incoming = h("div", { className: "sp-incoming", "data-testid": "sp-incoming", hidden: true },
    h("span", { className: "sp-incoming-text", textContent: t("Incoming call") }), ui.answer, ui.decline);
  ui.mute = h("button", { type: "button", className: "btn", "data-testid": "sp-mute", textContent: t("Mute") });
  ui.hold = h("button", { type: "button", className: "btn", "data-testid": "sp-hold", textContent: t("Hold") });
  ui.hangup = h("button", { type: "button", className: "btn btn-danger", "data-testid": "sp-hangup", textContent: t("Hang up") });
  ui.keypadToggle = h("button", { type: "button", className: "btn", "data-testid": "sp-keypad-toggle", textContent: t("Keypad") });
  ui.keypad = h("div", { className: "sp-keypad", "data-testid": "sp-keypad", hidden: true },
    ...DTMF_KEYS.map((key) => h("button", { type: "button", className: "btn sp-key", "data-testid": `sp-key-${key}`, "data-key": key, textContent: key })));
  ui.target = h("select", { "data-testid": "sp-transfer-target", "aria-label": t("Transfer to") });
  ui.warm = h("input", { type: "checkbox", "data-testid": "sp-transfer-warm" });
  ui.transfer = h("button", { type: "button", className: "btn", "data-testid": "sp-transfer", textContent: t("Transfer") });
  ui.transferRow = h("div", { className: "sp-transfer", "data-testid": "sp-transfer-row" },
    ui.target, h("label", { className: "sp-warm" }, ui.warm, ` ${t("talk first (warm)")}`), ui.transfer);
  ui.conferenceNote = h("p", { className: "sp-note", "data-testid": "sp-conference-note", hidden: true,
    textContent: t("Hold and transfer need the conference bridge; this center bridges calls through a queue.") });
  ui.controls = h("div", { className: "sp-controls", "data-testid": "sp-controls", hidden: true },
    h("div", { className: "sp-row" }, ui.mute, ui.hold, ui.keypadToggle, ui.hangup), ui.keypad, ui.transferRow, ui.conferenceNote);
  ui.disposition = h("select", { "data-testid": "wrapup-disposition", "aria-label": t("Disposition") });
  ui.note = h("textarea", { "data-testid": "wrapup-note", rows: 2, maxLength: 2000, placeholder: t("Note (optional)") });
  ui.save = h("button", { type: "button", className: "btn btn-primary", "data-testid": "wrapup-save", textContent: t("Save") });
  ui.skip = h("button", { type: "button", className: "btn-ghost", "data-testid": "wrapup-skip", textContent: t("Skip") });
  ui.wrapup = h("div", { className: "sp-wrapup", "data-testid": "wrapup", hidden: true },
    h("h3", { textContent: t("Wrap-up") }), ui.disposition, ui.note, h("div", { className: "sp-row" }, ui.save, ui.skip));
  panel.append(h("h2", { textContent: t("Softphone") }), ui.device, ui.monitor, ui.incoming, ui.controls, ui.wrapup, ui.notice);
  const host = document.querySelector(".console-data") || document.body;
  const after = document.getElementById("pop")?.closest(".grid-2");
  if (after && after.parentNode === host) after.after(panel);
  else host.append(panel);

  ui.answer.addEventListener("click", () => answerIncoming());
  ui.decline.addEventListener("click", () => declineIncoming());
  ui.mute.addEventListener("click", () => toggleMute());
  ui.hold.addEventListener("click", () => control("hold", { on: !sp.onHold }));
  ui.hangup.addEventListener("click", () => hangup());
  ui.keypadToggle.addEventListener("click", () => { ui.keypad.hidden = !ui.keypad.hidden; });
  ui.keypad.addEventListener("click", (event) => {
    const key = event.target?.dataset?.key;
    if (key && sp.sdkCall?.sendDigits) sp.sdkCall.sendDigits(key);
  });
  ui.transfer.addEventListener("click", () => transfer());
  ui.save.addEventListener("click", () => saveWrapUp());
  ui.skip.addEventListener("click", () => { if (sp.lastCallSid) sp.wrapDone.add(sp.lastCallSid); render(); });
}

function notice(text, level = "") {
  ui.notice.textContent = text;
  ui.notice.dataset.level = level;
}

function setDevice(state, text) {
  ui.device.dataset.state = state;
  ui.device.textContent = text;
}

export function explainTwilioError(error) {
  const code = Number(error?.code);
  const line = TWILIO_ERRORS[code] || error?.explanation || error?.message || String(error);
  return Number.isFinite(code) && code > 0 ? t("Voice error {code}: {line}", { code, line: t(line) }) : t(line);
}

// -- the device ----------------------------------------------------------------------------------------

function onDevice({ device }) {
  sp.device = device;
  setDevice("registering", t("Voice: registering\u2026"));
  device.on?.("registering", () => setDevice("registering", t("Voice: registering\u2026")));
  device.on?.("registered", () => setDevice("ready", t("Voice: ready")));
  device.on?.("unregistered", () => setDevice("offline", t("Voice: offline")));
  device.on?.("error", (error) => setDevice("error", explainTwilioError(error)));
  device.on?.("tokenWillExpire", () => { ui.device.dataset.renewals = String(Number(ui.device.dataset.renewals || 0) + 1); });
  device.on?.("incoming", (call) => onIncoming(call));
  // Registering lets Twilio ring this browser: a transfer or a conference adds the agent as a participant.
  Promise.resolve(device.register?.()).catch((error) => setDevice("error", explainTwilioError(error)));
}

function onIncoming(call) {
  sp.incoming = call;
  ui.incoming.hidden = false;
  const from = call?.parameters?.From || "";
  ui.incoming.querySelector(".sp-incoming-text").textContent = from ? t("Incoming call from {from}", { from }) : t("Incoming call");
  const gone = () => { if (sp.incoming === call) { sp.incoming = null; ui.incoming.hidden = true; } };
  // answered elsewhere on the page (agent-offers.js auto-answers the call of an accepted offer)
  call?.on?.("accept", () => { if (sp.incoming === call) { gone(); adoptCall(call); } });
  call?.on?.("cancel", gone);
  call?.on?.("disconnect", gone);
  call?.on?.("reject", gone);
}

function answerIncoming() {
  const call = sp.incoming;
  if (!call) return;
  sp.incoming = null;
  ui.incoming.hidden = true;
  call.accept?.();
  adoptCall(call);
}

function declineIncoming() {
  const call = sp.incoming;
  if (!call) return;
  sp.incoming = null;
  ui.incoming.hidden = true;
  call.reject?.();
}

function adoptCall(call) {
  sp.sdkCall = call;
  sp.muted = Boolean(call?.isMuted?.());
  call?.on?.("mute", (muted) => { sp.muted = Boolean(muted); render(); });
  call?.on?.("disconnect", () => { if (sp.sdkCall === call) { sp.sdkCall = null; render(); } });
  render();
}

function toggleMute() {
  const call = sp.sdkCall;
  if (!call?.mute) return;
  const next = !(call.isMuted ? call.isMuted() : sp.muted);
  call.mute(next);
  sp.muted = next;
  render();
}

// -- the server ------------------------------------------------------------------------------------------

async function api(path, options = {}) {
  const response = await fetch(path, {
    cache: "no-store",
    ...options,
    headers: { Authorization: `Bearer ${sp.token}`, "Content-Type": "application/json", ...(options.headers || {}) },
  });
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = null;
  }
  if (!response.ok) throw new Error(body?.error || t("the server answered HTTP {status}", { status: response.status }));
  return body;
}

async function loadSettings() {
  try {
    sp.settings = await api("/api/softphone");
  } catch (error) {
    notice(t("Call controls unavailable: {reason}", { reason: error.message }), "error");
    sp.settings = null;
  }
  render();
}

async function control(name, body = {}) {
  const sid = sp.callSid;
  if (!sid) return null;
  try {
    const answer = await api(`/api/calls/${encodeURIComponent(sid)}/${name}`, { method: "POST", body: JSON.stringify(body) });
    if (name === "hold") {
      sp.onHold = Boolean(answer.on);
      notice(sp.onHold ? t("The caller is on hold.") : t("The caller is back."));
    }
    render();
    return answer;
  } catch (error) {
    notice(error.message, "error");
    return null;
  }
}

// The console's one Hang up (agent.js's "Take next caller" no longer turns into a second one), by bridge:
// - conference: the server's hangup control ends the caller's call, so the conference ends for everyone in it
//   (the caller, this agent, a supervisor listening); leaving with the SDK alone would leave the caller there;
// - queue: the SDK disconnects this browser's leg, which ends the <Dial><Queue> bridge, as Twilio's own
//   softphones do. Only a call this browser does not hold (another tab or device) goes through the server.
// With no caller yet (an outgoing "Take next caller" still waiting), there is only our own leg to end.
async function hangup() {
  const conference = sp.settings?.bridge === "conference";
  const call = sp.sdkCall;
  if (conference && sp.callSid) {
    if (await control("hangup")) {
      notice(t("Call ended."));
      return;
    }
    if (call?.disconnect) {  // the server could not end it (its reason is in the notice): never leave the agent stuck
      const reason = ui.notice.textContent;
      call.disconnect();
      notice(t("The call could not be ended for everyone ({reason}); your softphone left it.", { reason }), "error");
    }
    return;
  }
  if (call?.disconnect) {
    call.disconnect();
    notice(t("Call ended."));
    return;
  }
  if (sp.callSid && (await control("hangup"))) notice(t("Call ended."));
}

const HANGUP_TITLE = {
  conference: "End the call for everyone on it: the caller, you, and a supervisor listening.",
  queue: "Hang up your softphone: the call with the caller ends.",
};

async function transfer() {
  const value = ui.target.value;
  if (!value) return;
  const [kind, name] = value.split(":");
  const body = kind === "queue" ? { queue: name } : { agent: name, warm: ui.warm.checked };
  const answer = await control("transfer", body);
  if (answer) {
    notice(kind === "queue" ? t("Transferred to the {queue} queue.", { queue: name })
      : t("Offered to {agent}\u2026", { agent: name }));
  }
}

async function saveWrapUp() {
  const sid = sp.lastCallSid;
  if (!sid) return;
  try {
    await api(`/api/calls/${encodeURIComponent(sid)}/wrap-up`, {
      method: "POST", body: JSON.stringify({ disposition: ui.disposition.value, note: ui.note.value }),
    });
    sp.wrapDone.add(sid);
    ui.note.value = "";
    notice(t("Wrap-up saved."));
  } catch (error) {
    notice(error.message, "error");
  }
  render();
}

// -- console events ----------------------------------------------------------------------------------------

function onMessage(message) {
  if (message.type === "pop") {
    sp.callSid = message.call_sid;
    sp.lastCallSid = message.call_sid;
    sp.onHold = false;
  } else if (message.type === "monitor") {
    sp.monitor = message.active ? message : null;
  } else if (message.type === "transfer_failed") {
    const why = TRANSFER_FAILED[message.reason];
    notice(why ? t(why, { agent: message.to })
      : t("{agent} did not take the transfer ({reason}).", { agent: message.to, reason: message.reason || "" }), "error");
  }
  render();
}

function onMe({ me, record, agents, queues }) {
  sp.me = me;
  sp.record = record;
  sp.agents = agents || {};
  sp.queues = queues || [];
  if (record && !record.call) {
    sp.callSid = null;
    sp.monitor = null;
    sp.onHold = false;
  } else if (record?.call?.call_sid) {
    sp.callSid = record.call.call_sid;
    sp.lastCallSid = record.call.call_sid;
  }
  render();
}

// transfer_failed reasons (the transfer offer's end); the caller is still with you in every case
const TRANSFER_FAILED = {
  rejected: "{agent} declined the transfer; the caller is still with you.",
  missed: "{agent} did not answer the transfer in time; the caller is still with you.",
  agent_unavailable: "{agent} is no longer available; the caller is still with you.",
  caller_left: "The caller hung up before {agent} took the transfer.",
  not_connected: "{agent}'s softphone did not connect; the caller is still with you.",
};

const MONITOR_TEXT = {
  listen: "{name} (supervisor) is listening to this call.",
  whisper: "{name} (supervisor) is coaching you; the caller cannot hear them.",
  barge: "{name} (supervisor) has joined the call.",
};

function fillSelect(select, options) {
  const key = JSON.stringify(options);
  if (select.dataset.key === key) return;
  const keep = select.value;
  select.replaceChildren(...options.map(([value, label]) => h("option", { value, textContent: label })));
  if (options.some(([value]) => value === keep)) select.value = keep;
  select.dataset.key = key;
}

function render() {
  const conference = sp.settings?.bridge === "conference";
  const onCall = Boolean(sp.callSid);
  ui.controls.hidden = !onCall && !sp.sdkCall;
  ui.controls.dataset.bridge = sp.settings?.bridge || "";
  ui.hold.hidden = !conference;
  ui.transferRow.hidden = !conference;
  ui.conferenceNote.hidden = conference || !sp.settings;
  ui.hold.textContent = sp.onHold ? t("Resume") : t("Hold");
  ui.hold.dataset.on = String(sp.onHold);
  ui.mute.textContent = sp.muted ? t("Unmute") : t("Mute");
  ui.mute.dataset.on = String(sp.muted);
  ui.mute.disabled = !sp.sdkCall;
  ui.keypadToggle.disabled = !sp.sdkCall;
  ui.hangup.disabled = !onCall && !sp.sdkCall;
  ui.hangup.title = t(HANGUP_TITLE[conference ? "conference" : "queue"]);
  ui.hangup.dataset.does = conference && onCall ? "server" : sp.sdkCall ? "sdk" : "server";
  const targets = [
    ...Object.keys(sp.agents).filter((id) => id !== sp.me).sort()
      .map((id) => [`agent:${id}`, t("{name} ({state})", { name: sp.agents[id]?.name || id, state: t(sp.agents[id]?.state || "offline") })]),
    ...sp.queues.slice().sort().map((q) => [`queue:${q}`, t("queue {queue}", { queue: q })]),
  ];
  fillSelect(ui.target, targets);
  fillSelect(ui.disposition, (sp.settings?.dispositions || []).map((d) => [d, t(d)]));
  if (sp.monitor) {
    ui.monitor.hidden = false;
    ui.monitor.dataset.mode = sp.monitor.mode || "";
    ui.monitor.textContent = t(MONITOR_TEXT[sp.monitor.mode] || MONITOR_TEXT.listen, { name: sp.monitor.supervisor });
  } else {
    ui.monitor.hidden = true;
  }
  const wrapping = sp.record?.state === "wrap-up" || (!onCall && sp.lastCallSid && !sp.wrapDone.has(sp.lastCallSid) && sp.record?.state !== "on-call");
  ui.wrapup.hidden = !(sp.lastCallSid && !onCall && wrapping && !sp.wrapDone.has(sp.lastCallSid) && sp.settings);
  ui.wrapup.dataset.callSid = sp.lastCallSid || "";
}

function main() {
  build();
  window.addEventListener("callboard:token", (event) => {
    sp.token = event.detail.token;
    loadSettings();
  });
  window.addEventListener("callboard:me", (event) => onMe(event.detail));
  window.addEventListener("callboard:message", (event) => onMessage(event.detail));
  window.addEventListener("callboard:device", (event) => onDevice(event.detail));
  window.addEventListener("callboard:call", (event) => adoptCall(event.detail.call));
  render();
}

main();
