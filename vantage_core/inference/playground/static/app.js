// The Vantage playground: plain browser JavaScript over the public HTTP API
// (GET /health, GET /v1/databases, GET /v1/databases/{id}/schema, POST /v1/generate; with
// `vantage serve --adapt-dir`: POST /v1/databases/{id}/examples, POST /v1/databases/{id}/adapt,
// GET /v1/adapt).
"use strict";

const PASTE = "__paste__";
const POLL_MS = 400;  // how often the adaptation's progress is read
const $ = (id) => document.getElementById(id);

// What the server allows (GET /health) and the last question answered on a known database.
const served = {adapt: false, adapted: []};
let asked = null;  // {question, db_id}

// Distinct colours for the first experts; more experts get hues spread by the golden angle.
const PALETTE = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1",
                 "#ff9da7", "#9c755f", "#bab0ac", "#1f77b4", "#8c564b", "#17becf", "#bcbd22",
                 "#7f7f7f", "#d62728"];
function expertColour(e) {
  return e < PALETTE.length ? PALETTE[e] : `hsl(${(e * 137.508) % 360}, 60%, 55%)`;
}

async function api(path, body) {
  const init = body === undefined ? {} : {
    method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)};
  const res = await fetch(path, init);
  let data = null;
  try { data = await res.json(); } catch (_) { /* not JSON */ }
  if (!res.ok) {
    let detail = data && data.detail !== undefined ? data.detail : res.statusText;
    if (Array.isArray(detail)) detail = detail.map((d) => `${(d.loc || []).join(".")}: ${d.msg}`).join("; ");
    throw new Error(`${res.status}: ${detail}`);
  }
  return data;
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k === "style") node.style.cssText = v;
    else if (k.startsWith("data-")) node.setAttribute(k, v);
    else node[k] = v;
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = !message;
}

// ------------------------------------------------------------------ databases and schema

async function loadDatabases() {
  const select = $("db");
  select.innerHTML = "";
  let ids = [];
  try {
    ids = await api("/v1/databases");
  } catch (err) {
    showError(`could not list databases: ${err.message}`);
  }
  for (const id of ids) select.append(el("option", {value: id}, id));
  select.append(el("option", {value: PASTE}, "paste a schema…"));
  select.value = ids.length ? ids[0] : PASTE;
  await onDatabaseChange();
}

async function onDatabaseChange() {
  const pasted = $("db").value === PASTE;
  $("schema-box").hidden = !pasted;
  $("run").disabled = pasted;  // a pasted schema has no rows to run against
  const view = $("schema-view");
  view.hidden = true;
  if (pasted) return;
  try {
    const schema = await api(`/v1/databases/${encodeURIComponent($("db").value)}/schema`);
    const box = $("schema-tables");
    box.innerHTML = "";
    for (const t of schema.tables) {
      const cols = t.columns.map((c) => (t.primary_keys || []).includes(c.name) ? `${c.name}*` : c.name);
      box.append(el("div", {class: "schema-table"}, el("b", {}, t.name), `: ${cols.join(", ")}`));
    }
    view.hidden = false;
  } catch (err) {
    showError(`could not read the schema: ${err.message}`);
  }
}

// ------------------------------------------------------------------ asking

function buildRequest() {
  const question = $("question").value.trim();
  if (!question) throw new Error("type a question first");
  const req = {question, routing: $("show-routing").checked, decoding: $("decoding").value};
  if (req.decoding === "beam") req.beam_size = Math.max(1, parseInt($("beam-size").value, 10) || 1);
  if ($("db").value === PASTE) {
    const ddl = $("schema-sql").value.trim();
    if (!ddl) throw new Error("paste CREATE TABLE statements, or pick a database");
    req.schema_sql = ddl;
  } else {
    req.db_id = $("db").value;
    req.run = $("run").checked;
  }
  return req;
}

async function ask(event) {
  event.preventDefault();
  await askQuestion();
}

async function askQuestion() {
  showError("");
  let req;
  try { req = buildRequest(); } catch (err) { showError(err.message); return; }
  const button = $("ask");
  button.disabled = true;
  $("status").textContent = "thinking…";
  try {
    const out = await api("/v1/generate", req);
    render(out, req);
    $("status").textContent = `${out.n_tokens} tokens in ${out.seconds.toFixed(2)} s` + (out.note ? `; ${out.note}` : "");
  } catch (err) {
    showError(err.message);
    $("status").textContent = "";
  } finally {
    button.disabled = false;
  }
}

// ------------------------------------------------------------------ rendering

function render(out, req) {
  $("answer").hidden = false;
  $("sql").textContent = out.sql || "(empty)";
  renderCorrection(out, req);
  renderCandidates(out);
  renderRows(out, req);
  renderRouting(out);
}

function renderCandidates(out) {
  const body = $("candidates").querySelector("tbody");
  body.innerHTML = "";
  out.candidates.forEach((c, i) => {
    const ran = !c.executed ? "–" : c.ok ? `ok, ${c.n_rows} rows` : `error: ${c.error}`;
    const row = el("tr", {class: i === out.chosen ? "chosen" : ""},
      el("td", {}, i === out.chosen ? `${i} ✓` : i), el("td", {}, el("code", {}, c.sql)),
      el("td", {}, c.logprob === null ? "–" : c.logprob.toFixed(3)), el("td", {}, c.finished ? "eos" : "cut"),
      el("td", {}, ran));
    body.append(row);
  });
}

function renderRows(out, req) {
  const panel = $("rows-panel");
  const table = $("rows").querySelector("tbody");
  table.innerHTML = "";
  panel.hidden = !req.run;
  if (!req.run) return;
  if (out.error) {
    $("rows-note").textContent = `(the SQL did not run: ${out.error})`;
    return;
  }
  const rows = out.rows || [];
  $("rows-note").textContent = `(${rows.length}${out.truncated ? "+, truncated" : ""} rows)`;
  for (const r of rows.slice(0, 200)) {
    table.append(el("tr", {}, ...r.map((v) => el("td", {}, cellText(v)))));
  }
}

// A cell as the API sends it: NULL, text, a number, "Infinity"-like strings, or {"$base64": ...} for bytes.
function cellText(v) {
  if (v === null) return "NULL";
  if (typeof v === "object" && typeof v.$base64 === "string") {
    const hex = Array.from(atob(v.$base64), (ch) => ch.charCodeAt(0).toString(16).padStart(2, "0")).join("");
    return `X'${hex.toUpperCase()}'`;
  }
  return v;
}

function renderRouting(out) {
  const panel = $("routing-panel");
  const table = $("routing");
  table.innerHTML = "";
  const routing = out.routing || [];
  panel.hidden = routing.length === 0;
  if (!routing.length) return;
  const nLayers = Math.max(...routing.map((t) => t.length));
  let maxExpert = 0;
  for (const tok of routing) for (const l of tok) for (const e of l.experts) maxExpert = Math.max(maxExpert, e);

  const legend = $("legend");
  legend.innerHTML = "";
  for (let e = 0; e <= maxExpert; e++) {
    legend.append(el("span", {class: "legend-item"},
      el("span", {class: "swatch", style: `background:${expertColour(e)}`}), `expert ${e}`));
  }

  const head = el("tr", {}, el("th", {}, "layer"));
  const shown = (t) => { const s = out.tokens[t] ?? "?"; return s.trim() ? s : "␣"; };  // a lone space piece
  routing.forEach((_, t) => head.append(el("th", {class: "tok", title: `token ${t}`}, shown(t))));
  table.append(el("thead", {}, head));
  const body = el("tbody");
  for (let layer = 0; layer < nLayers; layer++) {
    const row = el("tr", {}, el("th", {}, `MoE ${layer}`));
    routing.forEach((tokLayers, t) => {
      const r = tokLayers[layer];
      const cell = el("td", {class: "route-cell", "data-layer": layer, "data-token": t});
      if (r) {
        const total = r.weights.reduce((a, b) => a + b, 0) || 1;
        const order = r.experts.map((e, i) => [e, r.weights[i]]).sort((a, b) => b[1] - a[1]);
        cell.setAttribute("data-expert", order[0][0]);  // the top-weighted expert
        const bar = el("div", {class: "bar"});
        for (const [e, w] of order) {
          bar.append(el("span", {class: "stripe", "data-expert": e,
                                 style: `background:${expertColour(e)};flex:${w / total} 1 0`}));
        }
        cell.append(bar);
        cell.title = `layer ${layer} · token ${t} ${JSON.stringify(out.tokens[t] ?? "")}\n` +
          order.map(([e, w]) => `expert ${e}: ${w.toFixed(3)}`).join("\n");
      }
      row.append(cell);
    });
    body.append(row);
  }
  table.append(body);
}

// The browser's own title tooltip is slow to appear: show the same text at once.
function hoverTooltip(event) {
  const tip = $("tooltip");
  const cell = event.target.closest(".route-cell");
  if (!cell || !cell.title) { tip.hidden = true; return; }
  tip.textContent = cell.title;
  tip.hidden = false;
  tip.style.left = `${event.pageX + 12}px`;
  tip.style.top = `${event.pageY + 12}px`;
}

// ------------------------------------------------------------------ correcting and adapting

function renderCorrection(out, req) {
  asked = req.db_id ? {question: req.question, db_id: req.db_id} : null;
  const adapted = asked !== null && served.adapted.includes(asked.db_id);
  $("answered-by").textContent = adapted ? `(by the model adapted to ${asked.db_id})` : "";
  $("edit-sql").hidden = !(served.adapt && asked);
  $("learn").hidden = true;
  $("correct-sql").value = out.sql || "";
}

function showLearning(message) {
  $("learn-status").textContent = message;
}

async function saveExample() {
  const sql = $("correct-sql").value.trim();
  if (!asked || !sql) { showLearning("write the SQL that answers the question first"); return; }
  showError("");
  try {
    const saved = await api(`/v1/databases/${encodeURIComponent(asked.db_id)}/examples`,
                            {question: asked.question, sql});
    showLearning(`saved: ${saved.examples} example${saved.examples === 1 ? "" : "s"} of ${saved.db_id} ` +
                 `in ${saved.file}`);
  } catch (err) {
    showLearning("not saved");
    showError(err.message);
  }
}

async function startAdapting() {
  if (!asked) return;
  showError("");
  const db = asked.db_id;
  $("adapt").disabled = $("save-example").disabled = true;
  try {
    let job = await api(`/v1/databases/${encodeURIComponent(db)}/adapt`, {});
    while (job.state === "running") {
      showProgress(job);
      await new Promise((resolve) => setTimeout(resolve, POLL_MS));
      job = await api("/v1/adapt");
    }
    showProgress(job);
    if (job.state !== "succeeded") throw new Error(`adapting failed: ${job.error || job.message}`);
    await checkHealth();
    $("question").value = asked.question;
    $("db").value = db;
    await askQuestion();  // the adapted model's answer
    $("learn").hidden = false;  // with the finished progress bar
  } catch (err) {
    showError(err.message);
  } finally {
    $("adapt").disabled = $("save-example").disabled = false;
  }
}

function showProgress(job) {
  const bar = $("adapt-progress");
  bar.hidden = false;
  bar.max = Math.max(job.total, 1);
  bar.value = job.state === "succeeded" ? bar.max : job.step;
  bar.dataset.state = job.state;
  const steps = job.total ? ` (step ${job.step} of ${job.total})` : "";
  showLearning(`${job.state}: ${job.message}${job.state === "running" ? steps : ""}`);
}

async function checkHealth() {
  try {
    const h = await api("/health");
    served.adapt = Boolean(h.adapt);
    served.adapted = h.adapted || [];
    $("health").textContent = `model: ${h.model ? h.model.split("/").slice(-3).join("/") : "?"} · ` +
      `${h.databases} databases`;
  } catch (err) {
    $("health").textContent = `server unreachable (${err.message})`;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("ask-form").addEventListener("submit", ask);
  $("db").addEventListener("change", onDatabaseChange);
  $("routing").addEventListener("mousemove", hoverTooltip);
  $("routing").addEventListener("mouseleave", () => { $("tooltip").hidden = true; });
  $("edit-sql").addEventListener("click", () => { $("learn").hidden = false; $("correct-sql").focus(); });
  $("save-example").addEventListener("click", saveExample);
  $("adapt").addEventListener("click", startAdapting);
  checkHealth();
  loadDatabases();
});
