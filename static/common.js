// Shared by the wallboard and the agent console: token handling, the websocket client with
// reconnect backoff, JSON Merge Patch, server clock skew, and formatting. No dependencies, no build.

export const SUBPROTOCOL = "callboard.v1.json";

// Reconnect policy: exponential backoff with full jitter (sleep = random(0, min(cap, base * 2^n))).
// Full jitter spreads a whole room of wallboards over the window after a rolling restart (1012)
// instead of having them all hit the new instance in the same millisecond.
export const BACKOFF_BASE_MS = 500;
export const BACKOFF_CAP_MS = 30_000;
// A connection that stayed open this long counts as healthy: the next failure starts from base again.
export const BACKOFF_RESET_AFTER_MS = 10_000;
// The server rejected the token itself: retrying cannot help, a human must get a new link.
export const FATAL_CLOSE_CODES = new Set([4401, 4403]);

export const EM_DASH = "\u2014";

// ---------------------------------------------------------------------------------------------
// Tokens: URL fragment (#token=...) first, then sessionStorage, else a form on the page.
// Tokens never go into query strings (they would land in server logs and Referer headers).

function storageKey(page) {
  return `callboard.token.${page}`;
}

function safeStorage() {
  try {
    return window.sessionStorage;
  } catch {
    return null; // storage disabled (privacy mode, sandboxed iframe): the token lives in memory only
  }
}

/** The token from the fragment (moved to sessionStorage and scrubbed from the address bar) or storage. */
export function takeToken(page) {
  const storage = safeStorage();
  const hash = window.location.hash.replace(/^#/, "");
  if (hash) {
    const params = new URLSearchParams(hash);
    const fromHash = params.get("token");
    if (fromHash) {
      params.delete("token");
      const rest = params.toString();
      const url = window.location.pathname + window.location.search + (rest ? `#${rest}` : "");
      // replaceState, not location.hash = "": no reload, no history entry that still holds the token.
      window.history.replaceState(window.history.state, "", url);
      storage?.setItem(storageKey(page), fromHash);
      return fromHash;
    }
  }
  return storage?.getItem(storageKey(page)) || null;
}

export function storeToken(page, token) {
  safeStorage()?.setItem(storageKey(page), token);
}

export function forgetToken(page) {
  safeStorage()?.removeItem(storageKey(page));
}

/**
 * Show the token form (an input and a button, never window.prompt) inside `root`; resolves once the
 * user submits a non-empty token, which is stored in sessionStorage first.
 */
export function askForToken(page, root, message = "") {
  return new Promise((resolve) => {
    root.replaceChildren();
    root.hidden = false;
    const form = el("form", { className: "token-form", "data-testid": "token-form" });
    const title = el("h2", { textContent: "Sign in to callboard" });
    const hint = el("p", {
      className: "token-hint",
      textContent: message || "Paste the access token from your callboard link.",
    });
    const input = el("input", {
      type: "password",
      name: "token",
      autocomplete: "off",
      spellcheck: false,
      placeholder: "access token",
      "aria-label": "Access token",
      "data-testid": "token-input",
    });
    const button = el("button", { type: "submit", className: "btn btn-primary", textContent: "Connect", "data-testid": "token-submit" });
    form.append(title, hint, input, button);
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      const token = input.value.trim();
      if (!token) {
        input.focus();
        return;
      }
      storeToken(page, token);
      root.hidden = true;
      root.replaceChildren();
      resolve(token);
    });
    root.append(form);
    input.focus();
  });
}

// ---------------------------------------------------------------------------------------------
// JSON Merge Patch (RFC 7386).

function isObject(value) {
  return value !== null && typeof value === "object" && !Array.isArray(value);
}

/**
 * Apply `patch` to `target` and return the result. Objects are patched in place (the wallboard keeps
 * one snapshot object for hours and deltas touch a few keys); null deletes a key; arrays and scalars
 * replace the target value.
 */
export function applyMergePatch(target, patch) {
  if (!isObject(patch)) return patch;
  const result = isObject(target) ? target : {};
  for (const key of Object.keys(patch)) {
    const value = patch[key];
    if (value === null) {
      delete result[key];
    } else {
      result[key] = applyMergePatch(result[key], value);
    }
  }
  return result;
}

/**
 * The merge patch carried by a delta message. The contract makes the message itself the patch
 * (its "type" key aside); {"type": "delta", "patch": {...}} is accepted too.
 */
export function deltaPatch(message) {
  if (isObject(message.patch) && !("agents" in message) && !("queues" in message) && !("center" in message)) {
    return message.patch;
  }
  const { type: _type, ...patch } = message;
  return patch;
}

// ---------------------------------------------------------------------------------------------
// Server clock: durations are computed against the server's clock, so a wallboard PC whose clock is
// two minutes off still shows the same "longest wait" as everyone else.

export class ServerClock {
  constructor() {
    this.offsetMs = 0; // server_time_ms - Date.now() at receipt
  }

  /** Record the server time carried by a snapshot, at the moment it was received. */
  sync(serverTimeMs) {
    if (typeof serverTimeMs === "number" && Number.isFinite(serverTimeMs)) {
      this.offsetMs = serverTimeMs - Date.now();
    }
  }

  now() {
    return Date.now() + this.offsetMs;
  }

  /** Whole seconds elapsed since the server-time instant `ms` (never negative). */
  secondsSince(ms) {
    return Math.max(0, Math.floor((this.now() - ms) / 1000));
  }
}

/**
 * Call `tick` on every whole second of `clock` (so all counters on screen advance together).
 * Returns a function that stops it.
 */
export function everySecond(clock, tick) {
  let timer = 0;
  let stopped = false;
  const schedule = () => {
    if (stopped) return;
    const delay = 1000 - (((clock.now() % 1000) + 1000) % 1000) + 5;
    timer = window.setTimeout(() => {
      try {
        tick();
      } finally {
        schedule();
      }
    }, delay);
  };
  schedule();
  return () => {
    stopped = true;
    window.clearTimeout(timer);
  };
}

// ---------------------------------------------------------------------------------------------
// Formatting.

/** 5 -> "0:05", 65 -> "1:05", 3723 -> "1:02:03"; null/undefined/NaN -> em dash. */
/** A 24-hour clock formatter in the center's time zone (the browser's own zone if that one is unknown). */
export function clockFormatter(timezone) {
  const options = { hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false };
  try {
    return new Intl.DateTimeFormat(undefined, { ...options, timeZone: timezone || undefined });
  } catch {
    return new Intl.DateTimeFormat(undefined, options);
  }
}

export function formatDuration(seconds) {
  if (seconds === null || seconds === undefined || !Number.isFinite(seconds)) return EM_DASH;
  const total = Math.max(0, Math.floor(seconds));
  const h = Math.floor(total / 3600);
  const m = Math.floor((total % 3600) / 60);
  const s = total % 60;
  const ss = String(s).padStart(2, "0");
  return h > 0 ? `${h}:${String(m).padStart(2, "0")}:${ss}` : `${m}:${ss}`;
}

/**
 * 0.75 -> "75%"; null -> em dash. Rounds down, so a service level of 0.799 against a target of 0.8
 * reads "79%" in amber rather than a confusing amber "80%".
 */
export function formatPercent(ratio) {
  if (ratio === null || ratio === undefined || !Number.isFinite(ratio)) return EM_DASH;
  return `${Math.floor(ratio * 100 + 1e-9)}%`;
}

export function formatCount(value) {
  if (value === null || value === undefined || !Number.isFinite(value)) return EM_DASH;
  return String(value);
}

/** "ok" | "warn" | "crit" | "" for a value where higher is worse (waiting, wait seconds). */
export function levelHighIsBad(value, warning, critical) {
  if (value === null || value === undefined || !Number.isFinite(value)) return "";
  if (!Number.isFinite(warning) || !Number.isFinite(critical)) return "";
  if (value < warning) return "ok";
  if (value < critical) return "warn";
  return "crit";
}

/** "ok" | "warn" | "crit" | "" for a ratio where lower is worse (service level). */
export function levelLowIsBad(value, target, warning) {
  if (value === null || value === undefined || !Number.isFinite(value)) return "";
  if (!Number.isFinite(target) || !Number.isFinite(warning)) return "";
  if (value >= target) return "ok";
  if (value >= warning) return "warn";
  return "crit";
}

export const STATE_LABELS = {
  available: "Available",
  "on-call": "On call",
  "wrap-up": "Wrap-up",
  away: "Away",
  offline: "Offline",
};

export const STATE_ORDER = ["available", "on-call", "wrap-up", "away", "offline"];

export function stateLabel(state) {
  return STATE_LABELS[state] || String(state ?? "unknown");
}

// ---------------------------------------------------------------------------------------------
// DOM helpers.

/** Create an element; `props` keys that contain "-" (data-*, aria-*) become attributes. */
export function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === undefined || value === null) continue;
    if (key.includes("-")) node.setAttribute(key, String(value));
    else node[key] = value;
  }
  if (children.length) node.append(...children);
  return node;
}

/** Set text only when it changed (a write of the same string still costs a style/layout pass). */
export function setText(node, text) {
  if (node.textContent !== text) node.textContent = text;
}

/** Replace the lvl-* class of `node` with `level` ("ok" | "warn" | "crit" | ""), touching it only on change. */
export function setLevel(node, level) {
  const current = node.dataset.level || "";
  if (current === level) return;
  if (current) node.classList.remove(`lvl-${current}`);
  if (level) node.classList.add(`lvl-${level}`);
  node.dataset.level = level;
}

/** Theme from ?theme=light|dark (dark by default, the wall-display case). */
export function applyThemeFromQuery(params) {
  const theme = params.get("theme") === "light" ? "light" : "dark";
  document.documentElement.dataset.theme = theme;
  return theme;
}

/** A comma-separated query parameter as a list (empty list when absent). */
export function listParam(params, name) {
  const raw = params.get(name);
  if (!raw) return [];
  return raw
    .split(",")
    .map((part) => part.trim())
    .filter(Boolean);
}

// ---------------------------------------------------------------------------------------------
// The websocket client.

/**
 * One logical connection to /ws that survives restarts.
 *
 * Handlers (all optional): onWelcome(msg), onSnapshot(msg), onDelta(msg), onMessage(msg) for any
 * other type, onStatus(status) where status is {state: "connecting" | "open" | "live" |
 * "reconnecting" | "rejected", code?, reason?, retryInMs?}. "open" means the socket is open and the
 * hello was sent; "live" means a snapshot has arrived on it, so what is on screen is current.
 */
export class CallboardSocket {
  constructor(token, handlers = {}, options = {}) {
    this.token = token;
    this.handlers = handlers;
    this.url = options.url || socketUrl();
    this.random = options.random || Math.random;
    this.ws = null;
    this.attempt = 0;
    this.openedAt = 0;
    this.retryTimer = 0;
    this.stopped = false;
    this.live = false;
  }

  start() {
    this.stopped = false;
    this.connect();
    // When the network comes back, do not sit out the rest of a 30 s backoff.
    this.onOnline = () => {
      if (!this.stopped && this.retryTimer) {
        window.clearTimeout(this.retryTimer);
        this.retryTimer = 0;
        this.connect();
      }
    };
    window.addEventListener("online", this.onOnline);
  }

  stop() {
    this.stopped = true;
    window.clearTimeout(this.retryTimer);
    this.retryTimer = 0;
    if (this.onOnline) window.removeEventListener("online", this.onOnline);
    if (this.ws) {
      const ws = this.ws;
      this.ws = null;
      ws.close(1000, "page closed");
    }
  }

  /** Send an object as JSON; returns false (and sends nothing) when the socket is not open. */
  send(message) {
    if (!this.ws || this.ws.readyState !== WebSocket.OPEN) return false;
    this.ws.send(JSON.stringify(message));
    return true;
  }

  get isOpen() {
    return !!this.ws && this.ws.readyState === WebSocket.OPEN;
  }

  emit(name, arg) {
    const handler = this.handlers[name];
    if (!handler) return;
    try {
      handler(arg);
    } catch (error) {
      // A rendering bug must not take the connection down with it.
      console.error(`callboard: ${name} handler failed`, error);
    }
  }

  connect() {
    this.retryTimer = 0;
    this.live = false;
    this.emit("onStatus", { state: "connecting" });
    let ws;
    try {
      ws = new WebSocket(this.url, SUBPROTOCOL);
    } catch (error) {
      console.error("callboard: cannot open websocket", error);
      this.scheduleReconnect(0, "cannot open websocket");
      return;
    }
    this.ws = ws;
    ws.addEventListener("open", () => {
      if (this.ws !== ws) return;
      this.openedAt = Date.now();
      // handlers.hello may add fields (the agent console says whether it can take offered calls)
      ws.send(JSON.stringify({ type: "hello", token: this.token, ...(this.handlers.hello?.() || {}) }));
      this.emit("onStatus", { state: "open" });
    });
    ws.addEventListener("message", (event) => {
      if (this.ws !== ws) return;
      if (typeof event.data !== "string") return; // we only offer the JSON subprotocol
      let message;
      try {
        message = JSON.parse(event.data);
      } catch {
        console.error("callboard: unparsable message", event.data);
        return;
      }
      this.dispatch(message);
    });
    ws.addEventListener("close", (event) => {
      if (this.ws !== ws) return;
      this.ws = null;
      this.live = false;
      const lastedMs = this.openedAt ? Date.now() - this.openedAt : 0;
      this.openedAt = 0;
      if (lastedMs > BACKOFF_RESET_AFTER_MS) this.attempt = 0;
      if (this.stopped) return;
      if (FATAL_CLOSE_CODES.has(event.code)) {
        this.stopped = true;
        this.emit("onStatus", { state: "rejected", code: event.code, reason: event.reason });
        return;
      }
      this.scheduleReconnect(event.code, event.reason);
    });
    // "error" is always followed by "close"; the close handler decides what to do.
  }

  dispatch(message) {
    switch (message.type) {
      case "welcome":
        this.emit("onWelcome", message);
        break;
      case "snapshot":
        this.emit("onSnapshot", message);
        if (!this.live) {
          this.live = true;
          this.emit("onStatus", { state: "live" });
        }
        break;
      case "delta":
        this.emit("onDelta", message);
        break;
      default:
        this.emit("onMessage", message);
    }
  }

  /** Delay before the next attempt: full jitter over an exponentially growing, capped window. */
  nextDelayMs() {
    const windowMs = Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * 2 ** this.attempt);
    this.attempt = Math.min(this.attempt + 1, 30); // 2^30 * base is far past the cap already
    return Math.floor(this.random() * windowMs);
  }

  scheduleReconnect(code, reason) {
    const delay = this.nextDelayMs();
    this.emit("onStatus", { state: "reconnecting", code, reason, retryInMs: delay, retryAt: Date.now() + delay });
    this.retryTimer = window.setTimeout(() => this.connect(), delay);
  }
}

function formatClockTime(ms) {
  return new Date(ms).toLocaleTimeString(undefined, { hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false });
}

/** Same-origin /ws with ws: or wss: following the page. */
export function socketUrl() {
  const scheme = window.location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${window.location.host}/ws`;
}

/** Human text for a socket status, shared by both pages' stale banners. */
export function statusText(status) {
  switch (status.state) {
    case "connecting":
      return "Connecting\u2026";
    case "open":
      return "Connected \u2014 loading\u2026";
    case "reconnecting": {
      const why =
        status.code === 1012
          ? "server restarting"
          : status.code === 4429
            ? "connection too slow"
            : "connection lost";
      const seconds = Math.ceil((status.retryInMs || 0) / 1000);
      const since = status.staleSince ? ` since ${formatClockTime(status.staleSince)}` : "";
      return `Stale${since} \u2014 ${why}, reconnecting${seconds > 0 ? ` in ${seconds} s` : ""}\u2026`;
    }
    case "rejected":
      return "Token rejected \u2014 get a new link";
    case "signin":
      return "Not connected \u2014 sign in below";
    default:
      return "";
  }
}

/**
 * Drive a stale banner from socket statuses: shown (and `document.body.classList` gets "stale")
 * whenever the socket is not open with a current snapshot. Counts down the retry seconds.
 */
export function bindStaleBanner(banner, textNode) {
  let countdown = 0;
  let wasLive = false;
  let staleSince = 0; // when the numbers on screen stopped being current (0: never were)
  return (incoming) => {
    window.clearInterval(countdown);
    const live = incoming.state === "live";
    if (live) staleSince = 0;
    else if (wasLive) staleSince = Date.now();
    wasLive = live;
    const status = { ...incoming, staleSince };
    banner.hidden = live;
    banner.dataset.state = status.state;
    document.body.classList.toggle("stale", !live);
    document.body.classList.toggle("rejected", status.state === "rejected");
    setText(textNode, statusText(status));
    if (status.state === "reconnecting" && status.retryAt) {
      countdown = window.setInterval(() => {
        const left = Math.max(0, status.retryAt - Date.now());
        setText(textNode, statusText({ ...status, retryInMs: left }));
        if (left <= 0) window.clearInterval(countdown);
      }, 250);
    }
  };
}
