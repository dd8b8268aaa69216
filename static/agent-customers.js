// The agent console's customer panel: who is calling (the pop's matches from the directory), a list to
// pick from when one number belongs to several customers, memo and latest notes, a note for this call,
// edit the customer or create one prefilled with the caller's number, and a search for withheld or wrong
// numbers. It listens to the console's "callboard:pop" event and talks to /api/customers with the
// console's own token. Owns #customer-panel only.

import { el, takeToken } from "./common.js";

const t = window.t || ((s, v) => (v ? s.replace(/\{(\w+)\}/g, (_, k) => v[k]) : s));

const NOTES_SHOWN = 10;
const root = document.getElementById("customer-panel");
const state = {
  pop: null, // the current screen pop (null: no call)
  matches: [], // the pop's customers
  selected: null, // the full customer being shown (GET /api/customers/{id})
  mode: "idle", // idle | pick | detail | edit | create | search
  results: [],
  error: "",
  draft: null, // the editor's values after a refused save
};

async function api(method, path, body) {
  const token = takeToken("agent");
  const headers = { Authorization: `Bearer ${token}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const resp = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const data = resp.status === 204 ? null : await resp.json().catch(() => ({ error: resp.statusText }));
  if (!resp.ok) throw new Error(data?.error || `HTTP ${resp.status}`);
  return data;
}

function fail(error) {
  state.error = error.message || String(error);
  render();
}

// ---------------------------------------------------------------------------------------------
// Actions.

async function openCustomer(id) {
  state.error = "";
  try {
    state.selected = await api("GET", `/api/customers/${encodeURIComponent(id)}`);
    state.mode = "detail";
  } catch (error) {
    return fail(error);
  }
  render();
}

async function addNote(text) {
  const body = { text };
  if (state.pop?.call_sid) body.call_sid = state.pop.call_sid;
  try {
    await api("POST", `/api/customers/${encodeURIComponent(state.selected.id)}/notes`, body);
  } catch (error) {
    return fail(error);
  }
  await openCustomer(state.selected.id);
}

function formValues(form) {
  const data = Object.fromEntries(new FormData(form).entries());
  data.phones = String(data.phones || "").split(/[,;、\n]/).map((p) => p.trim()).filter(Boolean);
  return data;
}

async function save(form) {
  const values = formValues(form);
  state.draft = values; // a refused save keeps what was typed
  state.error = "";
  try {
    if (state.mode === "create") {
      const created = await api("POST", "/api/customers", values);
      state.matches = [...state.matches, created];
      state.selected = created;
    } else {
      const c = state.selected;
      state.selected = await api("PUT", `/api/customers/${encodeURIComponent(c.id)}`, {
        ...values, owner: c.owner, team: c.team, external_id: c.external_id,
      });
    }
    state.mode = "detail";
    state.draft = null;
  } catch (error) {
    return fail(error);
  }
  render();
}

async function search(q) {
  state.error = "";
  try {
    const data = await api("GET", `/api/customers?q=${encodeURIComponent(q)}&limit=20`);
    state.results = data.customers;
    state.mode = "search";
  } catch (error) {
    return fail(error);
  }
  render();
}

function onPop(pop, fresh = false) {
  const sameCall = !fresh && pop && state.pop && pop.call_sid === state.pop.call_sid;
  state.pop = pop;
  state.matches = Array.isArray(pop?.customers) ? pop.customers : [];
  if (!pop) {
    if (state.mode !== "search") { state.mode = "idle"; state.selected = null; }
  } else if (sameCall && ["detail", "edit", "create", "search"].includes(state.mode)) {
    // the second pop of a call (the lookup finished): keep what the agent is doing, refresh the list
  } else if (state.matches.length === 1) {
    state.mode = "detail";
    openCustomer(state.matches[0].id);
  } else {
    state.mode = state.matches.length > 1 ? "pick" : "idle";
    state.selected = null;
  }
  render();
}

// ---------------------------------------------------------------------------------------------
// Rendering.

function button(label, testid, onClick, className = "btn") {
  const b = el("button", { type: "button", className, "data-testid": testid, textContent: label });
  b.addEventListener("click", onClick);
  return b;
}

function callerLine() {
  const pop = state.pop;
  if (!pop) return el("p", { className: "cust-hint", "data-testid": "cust-status", textContent: t("No active call. Search the directory:") });
  if (pop.withheld) return el("p", { className: "cust-warn", "data-testid": "cust-status", textContent: t("The caller's number is withheld: search by name.") });
  if (pop.directory_unavailable) return el("p", { className: "cust-warn", "data-testid": "cust-status", textContent: t("The customer directory is unavailable right now.") });
  if (pop.lookup_pending) return el("p", { className: "cust-hint", "data-testid": "cust-status", textContent: t("Looking up {number}…", { number: pop.from }) });
  if (state.matches.length === 0) return el("p", { className: "cust-hint", "data-testid": "cust-status", textContent: t("No customer with {number}.", { number: pop.from }) });
  if (state.matches.length > 1) return el("p", { className: "cust-hint", "data-testid": "cust-status", textContent: t("{n} customers share {number}: pick one.", { n: state.matches.length, number: pop.from }) });
  return el("p", { className: "cust-hint", "data-testid": "cust-status", textContent: t("Calling: {number}", { number: pop.from }) });
}

function matchList(list, prefix) {
  return el("ul", { className: "cust-list", "data-testid": `${prefix}-list` }, ...list.map((c, i) => {
    const item = el("li", {});
    const pick = el("button", { type: "button", className: "cust-pick", "data-testid": `${prefix}-${i}` },
      el("span", { className: "cust-pick-name", textContent: c.name }),
      el("span", { className: "cust-pick-sub", textContent: [c.kana, c.company].filter(Boolean).join(" · ") }));
    if (c.notes?.length) pick.append(el("span", { className: "cust-pick-note", textContent: c.notes[0].text }));
    pick.addEventListener("click", () => openCustomer(c.id));
    item.append(pick);
    return item;
  }));
}

function formatTime(ms) {
  return new Date(ms).toLocaleString(document.documentElement.lang || undefined, { dateStyle: "short", timeStyle: "short" });
}

function detail(c) {
  const box = el("div", { className: "cust-detail", "data-testid": "cust-detail" });
  box.append(el("div", { className: "cust-head" },
    el("span", { className: "cust-name", "data-testid": "cust-name", textContent: c.name }),
    el("span", { className: "cust-kana", "data-testid": "cust-kana", textContent: c.kana || "" })));
  const facts = el("dl", { className: "cust-facts" });
  const add = (label, value, testid) => {
    if (!value) return;
    facts.append(el("dt", { textContent: label }), el("dd", { "data-testid": testid, textContent: value }));
  };
  add(t("Company"), c.company, "cust-company");
  add(t("Phones"), (c.phones || []).join(", "), "cust-phones");
  add(t("Email"), c.email, "cust-email");
  add(t("Owner"), c.owner, "cust-owner");
  box.append(facts);
  if (c.memo) box.append(el("p", { className: "cust-memo", "data-testid": "cust-memo", textContent: c.memo }));

  const notes = el("ol", { className: "cust-notes", "data-testid": "cust-notes" });
  for (const [i, n] of (c.notes || []).slice(0, NOTES_SHOWN).entries()) {
    notes.append(el("li", { "data-testid": `cust-note-${i}` },
      el("span", { className: "cust-note-meta", textContent: `${formatTime(n.at_ms)} · ${n.agent}${n.call_sid && n.call_sid === state.pop?.call_sid ? " · " + t("this call") : ""}` }),
      el("span", { className: "cust-note-text", textContent: n.text })));
  }
  box.append(el("h3", { textContent: t("Notes") }), notes.childElementCount ? notes
    : el("p", { className: "cust-hint", "data-testid": "cust-no-notes", textContent: t("No notes yet.") }));

  const form = el("form", { className: "cust-note-form" });
  const text = el("textarea", { name: "text", rows: 2, maxLength: 4000, required: true, "data-testid": "cust-note-text",
    placeholder: state.pop ? t("Note about this call…") : t("Note…") });
  form.append(text, el("button", { type: "submit", className: "btn btn-primary", "data-testid": "cust-note-add", textContent: t("Add note") }));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    if (text.value.trim()) addNote(text.value);
  });
  box.append(form);
  const actions = el("div", { className: "cust-actions" });
  actions.append(button(t("Edit"), "cust-edit", () => { state.mode = "edit"; state.draft = null; render(); }, "btn-ghost"));
  if (state.matches.length > 1) actions.append(button(t("Back to the list"), "cust-back", () => { state.mode = "pick"; render(); }, "btn-ghost"));
  box.append(actions);
  return box;
}

function editor(customer) {
  const c = state.draft || customer;
  const form = el("form", { className: "cust-form", "data-testid": state.mode === "create" ? "cust-create-form" : "cust-edit-form" });
  const field = (name, label, value, props = {}) => el("label", {},
    el("span", { textContent: label }),
    el(props.multiline ? "textarea" : "input", { name, value: value || "", "data-testid": `cust-field-${name}`, ...props.attrs }));
  form.append(
    field("name", t("Name"), c.name, { attrs: { required: true, maxLength: 200 } }),
    field("kana", t("Reading (kana)"), c.kana, { attrs: { maxLength: 200 } }),
    field("company", t("Company"), c.company, { attrs: { maxLength: 200 } }),
    field("phones", t("Phones (comma-separated)"), (c.phones || []).join(", ")),
    field("email", t("Email"), c.email, { attrs: { type: "email", maxLength: 254 } }),
    field("memo", t("Memo"), c.memo, { multiline: true, attrs: { rows: 3, maxLength: 4000 } }));
  const actions = el("div", { className: "cust-actions" },
    el("button", { type: "submit", className: "btn btn-primary", "data-testid": "cust-save", textContent: t("Save") }));
  actions.append(button(t("Cancel"), "cust-cancel", () => {
    state.draft = null;
    state.mode = state.selected ? "detail" : state.matches.length > 1 ? "pick" : "idle";
    state.error = "";
    render();
  }, "btn-ghost"));
  form.append(actions);
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    save(form);
  });
  return form;
}

function searchBox() {
  const form = el("form", { className: "cust-search" });
  const input = el("input", { type: "search", name: "q", maxLength: 200, "data-testid": "cust-search",
    placeholder: t("Name, kana, company, email or number"), "aria-label": t("Search customers") });
  form.append(input, el("button", { type: "submit", className: "btn", "data-testid": "cust-search-go", textContent: t("Search") }));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    search(input.value);
  });
  return form;
}

// A line in the console's Caller card (below its number): who it is, at a glance, without scrolling.
const popBody = document.querySelector("#pop .pop-body");
const summary = el("div", { className: "cust-pop-summary", "data-testid": "cust-pop-summary" });
popBody?.append(summary);

function renderSummary() {
  const pop = state.pop;
  let text = "";
  let memo = "";
  if (pop?.withheld) text = t("Withheld number");
  else if (pop?.directory_unavailable) text = t("Directory unavailable");
  else if (pop?.lookup_pending) text = t("Looking up…");
  else if (pop && state.selected && ["detail", "edit"].includes(state.mode)) {
    text = state.selected.name + (state.selected.company ? ` · ${state.selected.company}` : "");
    memo = state.selected.memo || "";
  } else if (pop && state.matches.length > 1) text = t("{n} possible customers", { n: state.matches.length });
  else if (pop && state.matches.length === 0) text = t("Not in the directory");
  summary.replaceChildren(el("span", { className: "cust-pop-who", textContent: text }),
    ...(memo ? [el("span", { className: "cust-pop-memo", textContent: memo })] : []));
}

function render() {
  renderSummary();
  if (!root) return;
  const body = [searchBox(), callerLine()];
  if (state.error) body.push(el("p", { className: "cust-error", role: "alert", "data-testid": "cust-error", textContent: state.error }));
  if (state.mode === "search") {
    body.push(el("h3", { textContent: t("Search results") }));
    body.push(state.results.length ? matchList(state.results, "cust-result")
      : el("p", { className: "cust-hint", "data-testid": "cust-no-results", textContent: t("No customer found.") }));
    if (state.pop) body.push(button(t("Back to the caller"), "cust-back-to-call", () => onPop(state.pop, true), "btn-ghost"));
  } else if (state.mode === "pick") {
    body.push(matchList(state.matches, "cust-match"));
  } else if (state.mode === "detail" && state.selected) {
    body.push(detail(state.selected));
  } else if (state.mode === "edit" && state.selected) {
    body.push(editor(state.selected));
  } else if (state.mode === "create") {
    body.push(editor({ phones: state.pop && !state.pop.withheld ? [state.pop.from] : [] }));
  }
  if (state.pop && ["idle", "pick", "search"].includes(state.mode) && !state.pop.lookup_pending) {
    body.push(button(!state.pop.withheld && state.matches.length === 0 ? t("New customer with this number") : t("New customer"),
      "cust-create", () => { state.mode = "create"; state.selected = null; state.draft = null; state.error = ""; render(); }, "btn-ghost"));
  }
  root.replaceChildren(el("h2", { textContent: t("Customer") }), ...body);
}

document.body.classList.add("has-customer-panel");
window.addEventListener("callboard:pop", (event) => onPop(event.detail?.pop || null));
render();
