// The supervisors' customers page: search the directory, edit or delete a customer, create one, import a
// CSV (UTF-8 or cp932, as Excel saves it) and export one (UTF-8 with BOM). Every call goes to
// /api/customers with the page's bearer token; the server checks the role (agents get 403 here).

import { askForToken, el, forgetToken, takeToken } from "./common.js";

const t = window.t || ((s, v) => (v ? s.replace(/\{(\w+)\}/g, (_, k) => v[k]) : s));

const PAGE = "customers";
const root = document.getElementById("cust-page");
const tokenRoot = document.getElementById("token-root");
let token = null;
// draft: the editor's values after a refused save, so that nothing typed is lost
const state = { q: "", results: [], editing: null, creating: false, error: "", notice: "", imported: null, draft: null };

async function api(method, path, body, raw = false) {
  const headers = { Authorization: `Bearer ${token}` };
  let payload;
  if (body instanceof Blob) {
    headers["Content-Type"] = "text/csv";
    payload = body;
  } else if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    payload = JSON.stringify(body);
  }
  const resp = await fetch(path, { method, headers, body: payload });
  if (resp.status === 401) {
    forgetToken(PAGE);
    token = await askForToken(PAGE, tokenRoot, t("This token was rejected or has expired: paste a new one."));
    return api(method, path, body, raw);
  }
  if (!resp.ok) {
    const data = await resp.json().catch(() => ({ error: resp.statusText }));
    throw new Error(data.error || `HTTP ${resp.status}`);
  }
  if (raw) return resp;
  return resp.status === 204 ? null : resp.json();
}

async function run(action) {
  state.error = "";
  state.notice = "";
  try {
    await action();
  } catch (error) {
    state.error = error.message || String(error);
  }
  render();
}

const search = () => run(async () => {
  state.results = (await api("GET", `/api/customers?q=${encodeURIComponent(state.q)}&limit=100`)).customers;
});

const open = (id) => run(async () => {
  state.draft = null;
  state.editing = await api("GET", `/api/customers/${encodeURIComponent(id)}`);
  state.creating = false;
});

function values(form) {
  const data = Object.fromEntries(new FormData(form).entries());
  data.phones = String(data.phones || "").split(/[,;、\n]/).map((p) => p.trim()).filter(Boolean);
  for (const key of ["owner", "team", "external_id"]) if (!data[key]) data[key] = null;
  return data;
}

const save = (form) => run(async () => {
  const body = values(form);
  state.draft = body;
  const saved = state.creating ? await api("POST", "/api/customers", body)
    : await api("PUT", `/api/customers/${encodeURIComponent(state.editing.id)}`, body);
  state.notice = t("Saved {name}.", { name: saved.name });
  state.draft = null;
  state.editing = null;
  state.creating = false;
  state.results = (await api("GET", `/api/customers?q=${encodeURIComponent(state.q)}&limit=100`)).customers;
});

const remove = () => run(async () => {
  const c = state.editing;
  if (!window.confirm(t("Delete {name} and all their notes?", { name: c.name }))) return;
  await api("DELETE", `/api/customers/${encodeURIComponent(c.id)}`);
  state.notice = t("Deleted {name}.", { name: c.name });
  state.editing = null;
  state.results = state.results.filter((r) => r.id !== c.id);
});

const importFile = (file) => run(async () => {
  state.imported = await api("POST", "/api/customers/import", file);
  state.results = (await api("GET", `/api/customers?q=${encodeURIComponent(state.q)}&limit=100`)).customers;
});

const exportCsv = () => run(async () => {
  const resp = await api("GET", "/api/customers.csv", undefined, true);
  const url = URL.createObjectURL(await resp.blob());
  const link = el("a", { href: url, download: "customers.csv" });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
});

// ---------------------------------------------------------------------------------------------

function button(label, testid, onClick, className = "btn") {
  const b = el("button", { type: "button", className, "data-testid": testid, textContent: label });
  b.addEventListener("click", onClick);
  return b;
}

function toolbar() {
  const form = el("form", { className: "cust-search" });
  const input = el("input", { type: "search", value: state.q, maxLength: 200, "data-testid": "cust-search",
    placeholder: t("Name, kana, company, email or number"), "aria-label": t("Search customers") });
  input.addEventListener("input", () => { state.q = input.value; });
  form.append(input, el("button", { type: "submit", className: "btn btn-primary", "data-testid": "cust-search-go", textContent: t("Search") }));
  form.addEventListener("submit", (event) => { event.preventDefault(); search(); });
  const file = el("input", { type: "file", accept: ".csv,text/csv", hidden: true, "data-testid": "cust-import-file" });
  file.addEventListener("change", () => { if (file.files[0]) importFile(file.files[0]); file.value = ""; });
  return el("div", { className: "cust-toolbar" }, form,
    button(t("New customer"), "cust-new", () => { state.creating = true; state.editing = {}; state.draft = null; render(); }),
    button(t("Import CSV…"), "cust-import", () => file.click()),
    button(t("Export CSV"), "cust-export", exportCsv), file);
}

function importResult() {
  const r = state.imported;
  const box = el("section", { className: "panel cust-import-result", "data-testid": "cust-import-result" },
    el("h3", { textContent: t("Import") }),
    el("p", { "data-testid": "cust-import-summary",
      textContent: t("{created} created, {updated} updated, {bad} bad lines.", { created: r.created, updated: r.updated, bad: r.errors.length }) }));
  if (r.errors.length) {
    box.append(el("ol", { "data-testid": "cust-import-errors" }, ...r.errors.map((e) =>
      el("li", { textContent: e.line ? t("line {line}: {message}", { line: e.line, message: e.message }) : e.message }))));
  }
  box.append(button(t("Dismiss"), "cust-import-dismiss", () => { state.imported = null; render(); }, "btn-ghost"));
  return box;
}

function editor() {
  const c = { ...state.editing, ...(state.draft || {}) };
  const form = el("form", { className: "panel cust-form", "data-testid": "cust-editor" });
  const field = (name, label, value, attrs = {}, multiline = false) => el("label", {}, el("span", { textContent: label }),
    el(multiline ? "textarea" : "input", { name, value: value ?? "", "data-testid": `cust-field-${name}`, ...attrs }));
  form.append(el("h3", { textContent: state.creating ? t("New customer") : t("Edit {name}", { name: c.name }) }),
    el("div", { className: "cust-editor-grid" },
      field("name", t("Name"), c.name, { required: true, maxLength: 200 }),
      field("kana", t("Reading (kana)"), c.kana, { maxLength: 200 }),
      field("company", t("Company"), c.company, { maxLength: 200 }),
      field("phones", t("Phones (comma-separated)"), (c.phones || []).join(", ")),
      field("email", t("Email"), c.email, { type: "email", maxLength: 254 }),
      field("owner", t("Owner (agent id)"), c.owner, { maxLength: 121 }),
      field("team", t("Team"), c.team, { maxLength: 64 }),
      field("external_id", t("External id"), c.external_id, { maxLength: 100 })),
    field("memo", t("Memo"), c.memo, { rows: 3, maxLength: 4000 }, true));
  if (!state.creating && c.notes?.length) {
    form.append(el("h3", { textContent: t("Notes") }), el("ol", { className: "cust-notes", "data-testid": "cust-notes" },
      ...c.notes.map((n) => el("li", {}, el("span", { className: "cust-note-meta",
        textContent: `${new Date(n.at_ms).toLocaleString()} · ${n.agent}${n.call_sid ? " · " + n.call_sid : ""}` }),
      el("span", { className: "cust-note-text", textContent: n.text })))));
  }
  const actions = el("div", { className: "cust-actions" },
    el("button", { type: "submit", className: "btn btn-primary", "data-testid": "cust-save", textContent: t("Save") }),
    button(t("Cancel"), "cust-cancel", () => { state.editing = null; state.creating = false; state.draft = null; render(); }, "btn-ghost"));
  if (!state.creating) actions.append(button(t("Delete"), "cust-delete", remove, "btn btn-danger"));
  form.append(actions);
  form.addEventListener("submit", (event) => { event.preventDefault(); save(form); });
  return form;
}

function table() {
  if (!state.results.length) return el("p", { className: "cust-hint", "data-testid": "cust-no-results", textContent: t("No customer found.") });
  const head = el("tr", {}, ...[t("Name"), t("Reading (kana)"), t("Company"), t("Phones"), t("Email"), t("Owner")]
    .map((h) => el("th", { textContent: h })));
  const rows = state.results.map((c, i) => {
    const tr = el("tr", { "data-testid": `cust-row-${i}` }, ...[c.name, c.kana, c.company, c.phones.join(", "), c.email, c.owner || ""]
      .map((v) => el("td", { textContent: v })));
    tr.addEventListener("click", () => open(c.id));
    return tr;
  });
  return el("table", { className: "cust-table", "data-testid": "cust-table" }, el("thead", {}, head), el("tbody", {}, ...rows));
}

function render() {
  const parts = [toolbar()];
  if (state.error) parts.push(el("p", { className: "cust-error", role: "alert", "data-testid": "cust-error", textContent: state.error }));
  if (state.notice) parts.push(el("p", { className: "cust-hint", role: "status", "data-testid": "cust-notice", textContent: state.notice }));
  if (state.imported) parts.push(importResult());
  if (state.editing) parts.push(editor());
  parts.push(el("section", { className: "panel" }, table()));
  root.replaceChildren(...parts);
}

async function start() {
  document.title = `callboard — ${t("Customers")}`;
  document.getElementById("page-title").textContent = t("Customers");
  token = takeToken(PAGE) || await askForToken(PAGE, tokenRoot, t("Paste a supervisor token (callboard token <name> --role supervisor)."));
  render();
  await search();
}

start();
