// Supervisor monitor on the wallboard: with a supervisor token, clicking an agent who is on a call offers
// Listen / Whisper / Barge. The supervisor's browser registers its own Twilio device (identity
// supervisor:<name>, from /api/voice-token) and answers the participant call the server adds to the
// conference. A file of its own, independent of wallboard.js: it only reads the page's tiles ([data-agent]).

import { takeToken } from "./common.js";

const t = window.t || ((s, v) => (v ? s.replace(/\{(\w+)\}/g, (_, k) => v[k]) : s));
const MODES = ["listen", "whisper", "barge"];
const MODE_LABELS = { listen: "Listen", whisper: "Whisper", barge: "Barge" };

const mon = { token: null, device: null, pending: null, call: null, popover: null, status: null };

function claimsOf(token) {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    return JSON.parse(atob(part + "===".slice((part.length + 3) % 4)));
  } catch {
    return null;
  }
}

async function api(path, options = {}) {
  const response = await fetch(path, {
    cache: "no-store",
    ...options,
    headers: { Authorization: `Bearer ${mon.token}`, "Content-Type": "application/json" },
  });
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = null;
  }
  if (!response.ok) throw new Error(body?.error || `HTTP ${response.status}`);
  return body;
}

function loadScript(url) {
  return new Promise((resolve, reject) => {
    const script = document.createElement("script");
    script.src = url;
    script.onload = () => resolve();
    script.onerror = () => reject(new Error("could not load the Twilio Voice SDK"));
    document.head.append(script);
  });
}

async function setupDevice() {
  const answer = await api("/api/voice-token");
  if (!window.Twilio?.Device) await loadScript(answer.sdk_url);
  const device = new window.Twilio.Device(answer.token);
  mon.device = device;
  device.on?.("tokenWillExpire", async () => {
    try {
      device.updateToken?.((await api("/api/voice-token")).token);
    } catch (error) {
      showStatus(t("Monitor failed: {reason}", { reason: error.message }));
    }
  });
  // The monitor call rings this browser: answer it only when we asked for it.
  device.on?.("incoming", (call) => {
    if (!mon.pending) {
      call.reject?.();
      return;
    }
    call.accept?.();
    mon.call = call;
    const { agent, mode } = mon.pending;
    mon.pending = null;
    showStatus(t("Monitoring {agent} ({mode})", { agent, mode: t(MODE_LABELS[mode]) }), true);
    call.on?.("disconnect", () => {
      if (mon.call === call) {
        mon.call = null;
        hideStatus();
      }
    });
  });
  await device.register?.();
}

function showStatus(text, stoppable = false) {
  if (!mon.status) {
    mon.status = document.createElement("div");
    mon.status.className = "sp-monitor-status";
    mon.status.dataset.testid = "monitor-status";
    document.body.append(mon.status);
  }
  mon.status.replaceChildren(document.createTextNode(text));
  if (stoppable) {
    const stop = document.createElement("button");
    stop.type = "button";
    stop.className = "btn-ghost";
    stop.dataset.testid = "monitor-stop";
    stop.textContent = t("Hang up");
    stop.addEventListener("click", () => mon.call?.disconnect?.());
    mon.status.append(" ", stop);
  }
  mon.status.hidden = false;
}

function hideStatus() {
  if (mon.status) mon.status.hidden = true;
}

function closePopover() {
  mon.popover?.remove();
  mon.popover = null;
}

async function monitor(agent, callSid, mode) {
  closePopover();
  try {
    if (!mon.device) await setupDevice();
    mon.pending = { agent, mode };
    await api(`/api/calls/${encodeURIComponent(callSid)}/monitor`, { method: "POST", body: JSON.stringify({ mode }) });
  } catch (error) {
    mon.pending = null;
    showStatus(t("Monitor failed: {reason}", { reason: error.message }));
  }
}

async function openFor(tile, agent) {
  closePopover();
  let record = null;
  try {
    record = (await api("/api/snapshot")).agents?.[agent];
  } catch (error) {
    showStatus(t("Monitor failed: {reason}", { reason: error.message }));
    return;
  }
  const callSid = record?.call?.call_sid;
  if (record?.state !== "on-call" || !callSid) return;
  const box = document.createElement("div");
  box.className = "sp-monitor-popover";
  box.dataset.testid = "monitor-popover";
  box.setAttribute("aria-label", t("Monitor {agent}", { agent }));
  for (const mode of MODES) {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "btn";
    button.dataset.testid = `monitor-${mode}`;
    button.textContent = t(MODE_LABELS[mode]);
    button.addEventListener("click", () => monitor(agent, callSid, mode));
    box.append(button);
  }
  const rect = tile.getBoundingClientRect();
  box.style.left = `${Math.round(rect.left)}px`;
  box.style.top = `${Math.round(rect.bottom + 4)}px`;
  document.body.append(box);
  mon.popover = box;
}

function main() {
  mon.token = takeToken("wallboard");
  if (!mon.token || claimsOf(mon.token)?.role !== "supervisor") return; // wall displays never monitor
  document.addEventListener("click", (event) => {
    if (mon.popover?.contains(event.target)) return;
    const tile = event.target?.closest?.("[data-agent]");
    if (!tile) {
      closePopover();
      return;
    }
    openFor(tile, tile.dataset.agent);
  });
  document.addEventListener("keydown", (event) => { if (event.key === "Escape") closePopover(); });
}

main();
