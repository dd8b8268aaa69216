// Offers in the agent console (routing, offer mode; and transfers from a colleague, kind "transfer", with the
// conference bridge in either routing mode): an offer rings (on screen, and audibly once the page
// has had a user gesture, as browsers require), shows the caller and the customer matches, and has
// Accept / Reject. After Accept, the incoming Voice SDK call that carries the same offer id (a custom
// parameter of the <Client> dial) is answered automatically. A console without a working Voice SDK cannot
// take an offered call: it says so on screen and tells the server ({"type": "can_take_calls"}), so the
// router offers its callers to someone who can.

const t = window.t || ((s, v) => (v ? s.replace(/\{(\w+)\}/g, (_, k) => v[k]) : s));

const RING_ON_MS = 400;
const RING_EVERY_MS = 1_500;

const state = {
  send: () => false, // set by bind(): sends a message on the agent's socket
  offer: null, // the open offer shown
  accepted: null, // the offer id we accepted, until its call arrives
  device: null,
  canTakeCalls: false,
  call: null,
  audio: null, // AudioContext, created after the first user gesture
  ringTimer: 0,
  countdownTimer: 0,
};

const panel = document.createElement("section");
panel.className = "panel offer";
panel.id = "offer";
panel.dataset.testid = "offer";
panel.setAttribute("aria-label", t("Offered call"));
panel.setAttribute("role", "alertdialog");
panel.hidden = true;
panel.innerHTML = `
  <h2 class="offer-title" data-testid="offer-title"></h2>
  <div class="offer-caller" data-testid="offer-from"></div>
  <div class="offer-meta"><span data-testid="offer-queue"></span> · <span data-testid="offer-waited"></span>
    · <span data-testid="offer-countdown"></span></div>
  <ul class="offer-customers" data-testid="offer-customers"></ul>
  <div class="offer-actions">
    <button type="button" class="btn btn-primary" data-testid="offer-accept"></button>
    <button type="button" class="btn btn-away" data-testid="offer-reject"></button>
  </div>
  <p class="offer-status" data-testid="offer-status" role="status" aria-live="polite"></p>`;
const q = (id) => panel.querySelector(`[data-testid="${id}"]`);
q("offer-accept").textContent = t("Accept");
q("offer-reject").textContent = t("Reject");

const notice = document.createElement("div");
notice.className = "offer-notice";
notice.dataset.testid = "offer-notice";

function mount() {
  const host = document.querySelector(".console-data") || document.body;
  host.prepend(panel);
  const voice = document.getElementById("voice-notice");
  (voice?.parentElement || host).append(notice);
  renderCapability();
}

function renderCapability() {
  notice.textContent = state.canTakeCalls
    ? t("Offered calls ring here.")
    : t("This console cannot take offered calls (no working softphone); callers go to other agents.");
  notice.dataset.canTakeCalls = String(state.canTakeCalls);
}

function text(testid, value) {
  q(testid).textContent = value;
}

function secondsLeft() {
  return state.offer ? Math.max(0, Math.ceil((state.offer.expires_ms - Date.now()) / 1000)) : 0;
}

function renderOffer() {
  const offer = state.offer;
  panel.hidden = !offer;
  document.body.classList.toggle("offer-ringing", !!offer && !state.accepted);
  if (!offer) return;
  panel.dataset.offerId = offer.offer_id;
  panel.dataset.kind = offer.kind || "call";
  // a transfer: a colleague hands on a call in progress (warm: they stay to talk to you first)
  const transfer = offer.kind === "transfer";
  text("offer-title", !transfer ? t("Incoming call")
    : offer.warm ? t("Warm transfer from {agent}", { agent: offer.from_agent || "?" })
      : t("Transfer from {agent}", { agent: offer.from_agent || "?" }));
  text("offer-from", offer.withheld ? t("Number withheld") : offer.from || t("unknown caller"));
  text("offer-queue", t("Queue {queue}", { queue: offer.queue }));
  text("offer-waited", t("waited {s} s", { s: Math.round(offer.waited_s || 0) }));
  text("offer-countdown", t("{s} s to answer", { s: secondsLeft() }));
  const list = q("offer-customers");
  list.replaceChildren();
  const customers = Array.isArray(offer.customers) ? offer.customers : [];
  if (customers.length === 0) {
    const li = document.createElement("li");
    li.className = "no-customer";
    li.textContent = t("no customer record");
    list.append(li);
  }
  customers.forEach((c, i) => {
    const li = document.createElement("li");
    li.dataset.testid = `offer-customer-${i}`;
    const name = [c.name, c.kana && `(${c.kana})`].filter(Boolean).join(" ");
    const extra = [c.company, c.owner && t("owner {owner}", { owner: c.owner }), c.memo].filter(Boolean).join(" · ");
    li.textContent = extra ? `${name} — ${extra}` : name;
    list.append(li);
  });
  const busy = !!state.accepted;
  q("offer-accept").disabled = busy;
  q("offer-reject").disabled = busy;
  text("offer-status", busy ? t("Connecting…") : "");
}

// -- sound: a short two-tone ring with WebAudio; silent until the page has had a user gesture -----------

function unlockAudio() {
  if (state.audio) return;
  const Ctx = window.AudioContext || window.webkitAudioContext;
  if (!Ctx) return;
  try {
    state.audio = new Ctx();
  } catch {
    state.audio = null;
  }
}

function beep() {
  const ctx = state.audio;
  if (!ctx || ctx.state === "closed") return;
  if (ctx.state === "suspended") ctx.resume?.();
  const now = ctx.currentTime;
  for (const [freq, start] of [[880, 0], [660, RING_ON_MS / 2000]]) {
    const osc = ctx.createOscillator();
    const gain = ctx.createGain();
    osc.frequency.value = freq;
    gain.gain.setValueAtTime(0.0001, now + start);
    gain.gain.exponentialRampToValueAtTime(0.2, now + start + 0.02);
    gain.gain.exponentialRampToValueAtTime(0.0001, now + start + RING_ON_MS / 2000);
    osc.connect(gain).connect(ctx.destination);
    osc.start(now + start);
    osc.stop(now + start + RING_ON_MS / 2000);
  }
  panel.dataset.rang = String(Number(panel.dataset.rang || 0) + 1);
}

function startRinging() {
  stopRinging();
  beep();
  state.ringTimer = window.setInterval(beep, RING_EVERY_MS);
  state.countdownTimer = window.setInterval(() => text("offer-countdown", t("{s} s to answer", { s: secondsLeft() })), 1000);
}

function stopRinging() {
  window.clearInterval(state.ringTimer);
  window.clearInterval(state.countdownTimer);
  state.ringTimer = 0;
  state.countdownTimer = 0;
}

// -- messages ------------------------------------------------------------------------------------------

const ENDED_TEXT = {
  accepted: "Accepted: connecting the caller…",
  rejected: "Offer rejected.",
  expired: "Offer expired (missed).",
  caller_left: "The caller hung up.",
  agent_unavailable: "Offer withdrawn: you are no longer available.",
  dequeue_failed: "The caller could not be connected; they will be offered again.",
  not_connected: "The transferred call did not reach your softphone.",
  connect_timeout: "The call was not connected in time.",
};

function onOffer(message) {
  state.offer = message;
  state.accepted = null;
  renderOffer();
  startRinging();
}

function onOfferEnded(message) {
  if (!state.offer || state.offer.offer_id !== message.offer_id) return;
  stopRinging();
  const reason = ENDED_TEXT[message.reason] || message.reason;
  if (message.reason === "accepted") {
    text("offer-status", t(reason));
    return; // the panel stays until the call arrives and is answered
  }
  state.offer = null;
  state.accepted = null;
  renderOffer();
  notice.textContent = t(reason);
}

function answer(accept) {
  if (!state.offer || state.accepted) return;
  unlockAudio();
  const offerId = state.offer.offer_id;
  if (!state.send({ type: accept ? "accept" : "reject", offer_id: offerId })) {
    text("offer-status", t("Not connected; try again."));
    return;
  }
  stopRinging();
  if (accept) {
    state.accepted = offerId;
    renderOffer();
  }
}

// -- voice: answer the incoming call of the accepted offer --------------------------------------------

function offerIdOf(call) {
  const params = call?.customParameters;
  if (params && typeof params.get === "function") return params.get("offer_id");
  return params?.offer_id ?? null;
}

function onIncoming(call) {
  const id = offerIdOf(call);
  if (!id || id !== state.accepted) return; // not ours to answer automatically: it rings as usual
  state.call = call;
  call.accept?.();
  state.offer = null;
  state.accepted = null;
  renderOffer();
  notice.textContent = t("Connected.");
  call.on?.("disconnect", () => {
    if (state.call === call) state.call = null;
    renderCapability();
  });
}

function setCanTakeCalls(value) {
  if (state.canTakeCalls === value) return;
  state.canTakeCalls = value;
  renderCapability();
  state.send({ type: "can_take_calls", value });
}

export const offers = {
  /** Fields for the hello: until a softphone is ready this console cannot take offered calls. */
  hello() {
    return { can_take_calls: state.canTakeCalls };
  },
  bind(send) {
    state.send = send;
  },
  onMessage(message) {
    if (message.type === "offer") onOffer(message);
    else if (message.type === "offer_ended") onOfferEnded(message);
    else return false;
    return true;
  },
  attachDevice(device) {
    state.device = device;
    device.on?.("incoming", onIncoming);
    setCanTakeCalls(true);
  },
  voiceUnavailable() {
    state.device = null;
    setCanTakeCalls(false);
  },
};

q("offer-accept").addEventListener("click", () => answer(true));
q("offer-reject").addEventListener("click", () => answer(false));
for (const kind of ["pointerdown", "keydown"]) window.addEventListener(kind, unlockAudio, { capture: true });
if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", mount);
else mount();
window.cbOffers = offers;
