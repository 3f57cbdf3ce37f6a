// hpsearch dashboard: a single page over the REST API (no other data source). Routes:
// #/ (studies), #/new (launch form), #/studies/ID (one study, updated live by polling).
// With HPSEARCH_AUTH=on the page asks for a user token once; the service keeps it in an
// HttpOnly cookie (this script never stores it).
"use strict";

const API = "/api/v1";
const POLL_MS = 2000;
const TRIAL_PAGE = 50;
const FINISHED = ["complete", "pruned", "diverged", "timed_out", "failed"];
let stopPolling = () => {};

// -- helpers ----------------------------------------------------------------------------------

const $ = (sel, root = document) => root.querySelector(sel);
const view = () => document.getElementById("view");

function esc(value) {
  return String(value ?? "").replace(/[&<>"']/g, (c) =>
    ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}

function fmt(value, digits = 4) {
  if (value === null || value === undefined || value === "") return "";
  if (typeof value === "number") {
    if (Number.isInteger(value)) return String(value);
    return Math.abs(value) < 1e-3 || Math.abs(value) >= 1e4 ? value.toExponential(2)
      : value.toFixed(digits);
  }
  if (Array.isArray(value)) return value.join(" ");
  return String(value);
}

function duration(seconds) {
  if (seconds === null || seconds === undefined) return "";
  if (seconds < 60) return `${seconds.toFixed(1)} s`;
  const m = Math.floor(seconds / 60);
  return m < 60 ? `${m} min ${Math.round(seconds % 60)} s` : `${Math.floor(m / 60)} h ${m % 60} min`;
}

function since(iso, until) {
  if (!iso) return null;
  const end = until ? Date.parse(until + "Z") : Date.now();
  return Math.max(0, (end - Date.parse(iso + "Z")) / 1000);
}

async function api(path, options = {}) {
  const response = await fetch(API + path, {
    headers: { "Content-Type": "application/json" }, ...options });
  const text = await response.text();
  const body = text ? JSON.parse(text) : null;
  if (!response.ok) {
    const error = new Error(body?.detail || `HTTP ${response.status}`);
    error.status = response.status;
    error.body = body;
    throw error;
  }
  return body;
}

function badge(state) { return `<span class="badge s-${esc(state)}">${esc(state)}</span>`; }

// plotly.js (3.5 MB) loads only when a study's plots are about to draw, so the studies list,
// the form and a study's table never wait for it.
let plotlyLoaded = null;
function loadPlotly() {
  plotlyLoaded ??= new Promise((resolve, reject) => {
    const script = Object.assign(document.createElement("script"),
                                 { src: "/static/vendor/plotly.min.js", async: true });
    script.onload = resolve;
    script.onerror = () => { plotlyLoaded = null; reject(new Error("could not load plotly.js")); };
    document.head.append(script);
  });
  return plotlyLoaded;
}

function plot(id, traces, layout) {
  const el = document.getElementById(id);
  if (!el || !window.Plotly) return;
  const base = { margin: { l: 55, r: 15, t: 35, b: 45 }, autosize: true,
                 legend: { orientation: "h" }, font: { size: 11 } };
  Plotly.react(el, traces, { ...base, ...layout },
               { responsive: true, displaylogo: false, displayModeBar: "hover" });
}

// -- router -------------------------------------------------------------------------------------

// -- sign in (HPSEARCH_AUTH=on) -------------------------------------------------------------------

async function refreshSession() {
  const session = await api("/session");
  const out = $("#sign-out");
  out.hidden = !session.signed_in;
  out.title = session.token ? `signed in as ${session.token.name}` : "";
  return session;
}

function renderSignIn(message = "") {
  stopPolling();
  stopPolling = () => {};
  view().innerHTML = `<h1>Sign in</h1>
    <div class="card"><form id="sign-in">
      <p class="muted">This service asks for a user token. Make one where it runs:
        <code>hpsearch token create YOUR-NAME</code></p>
      <label>Token <input id="token" type="password" autocomplete="off" required></label>
      <div class="toolbar"><button class="primary" type="submit">Sign in</button></div>
      <p class="errors" id="sign-in-error">${esc(message)}</p>
    </form></div>`;
  $("#token").focus();
  $("#sign-in").addEventListener("submit", async (event) => {
    event.preventDefault();
    const response = await fetch(`${API}/session`, {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ token: $("#token").value.trim() }) });
    if (!response.ok) {
      const body = await response.json().catch(() => null);
      $("#sign-in-error").textContent = body?.detail || `HTTP ${response.status}`;
      return;
    }
    await refreshSession();
    route();
  });
}

async function signOut(event) {
  event.preventDefault();
  await fetch(`${API}/session`, { method: "DELETE" });
  // A fresh page: nothing the previous one was still loading can draw over the form.
  location.replace("/?signed-out");
}

// -- routing --------------------------------------------------------------------------------------

async function route() {
  stopPolling();
  stopPolling = () => {};
  const hash = location.hash || "#/";
  const study = hash.match(/^#\/studies\/(\d+)/);
  try {
    if (hash.startsWith("#/new")) await renderForm();
    else if (study) await renderStudy(Number(study[1]));
    else await renderList(Number(new URLSearchParams(hash.split("?")[1]).get("page") || 0));
  } catch (error) {
    if (error.status === 401) renderSignIn();
    else view().innerHTML = `<p class="errors">Could not load this page: ${esc(error.message)}</p>`;
  }
}
window.addEventListener("hashchange", route);
window.addEventListener("DOMContentLoaded", async () => {
  $("#sign-out").addEventListener("click", signOut);
  let session = null;
  try { session = await refreshSession(); } catch (error) { console.warn("session:", error.message); }
  if (session?.auth && !session.signed_in) {
    renderSignIn(new URLSearchParams(location.search).has("signed-out") ? "Signed out." : "");
  } else {
    route();
  }
});

function every(ms, fn) {
  let timer = null, stopped = false;
  const tick = async () => {
    if (stopped) return;
    try { await fn(); } catch (error) {
      if (error.status === 401) { stopped = true; renderSignIn("The session ended: sign in again."); return; }
      console.warn("refresh failed:", error.message);
    }
    if (!stopped) timer = setTimeout(tick, ms);
  };
  timer = setTimeout(tick, ms);
  return () => { stopped = true; clearTimeout(timer); };
}

// -- studies list ---------------------------------------------------------------------------------

async function renderList(page) {
  const limit = 20;
  const draw = async () => {
    const data = await api(`/studies?offset=${page * limit}&limit=${limit}`);
    const rows = data.data.map((s) => {
      const c = s.trial_counts;
      const failed = c.failed + c.diverged + c.timed_out;
      const started = s.started_at ? s.started_at.replace("T", " ").slice(0, 19) : "";
      const took = since(s.started_at, s.finished_at);
      return `<tr data-study-id="${s.id}">
        <td><a href="#/studies/${s.id}">${esc(s.name)}</a></td><td>${badge(s.status)}</td>
        <td><div class="bar"><span style="width:${(100 * s.progress).toFixed(1)}%"></span></div>
          <span class="progress-text">${s.finished} / ${s.n_trials}</span>
          <span class="muted">· ${c.pruned} pruned · ${failed} failed</span></td>
        <td>${s.best_trial ? fmt(s.best_trial.value) : ""}</td>
        <td class="hide-narrow">${esc(started)}</td><td class="hide-narrow">${duration(took)}</td></tr>`;
    }).join("");
    const pages = Math.max(1, Math.ceil(data.count / limit));
    view().innerHTML = `<h1>Studies</h1>
      <div class="table-wrap"><table id="studies"><thead><tr><th>Name</th><th>Status</th>
      <th>Progress</th><th>Best</th><th class="hide-narrow">Started</th>
      <th class="hide-narrow">Duration</th></tr></thead>
      <tbody>${rows || `<tr><td colspan="6" class="muted">No study yet:
        <a href="#/new">launch one</a>.</td></tr>`}</tbody></table></div>
      <div class="toolbar"><a class="button" href="#/?page=${Math.max(page - 1, 0)}">Newer</a>
      <span class="muted">page ${page + 1} of ${pages} (${data.count} studies)</span>
      <a class="button" href="#/?page=${Math.min(page + 1, pages - 1)}">Older</a></div>`;
  };
  await draw();
  stopPolling = every(3000, draw);
}

// -- launch form ------------------------------------------------------------------------------

let template = null;

async function renderForm() {
  template = template || await api("/studies/-/template");
  const uploaded = (await api("/datasets?limit=1000")).data;
  const spec = template.spec;
  const space = Object.entries(spec.search_space).map(([name, p]) => spaceRow(name, p)).join("");
  const select = (field, choices, value) => `<select data-field="${field}">${choices.map((c) =>
    `<option ${c === value ? "selected" : ""}>${esc(c)}</option>`).join("")}</select>`;
  const P = template.parameters;
  view().innerHTML = `<h1>New study</h1>
  <form id="study-form" novalidate>
    <div id="form-errors" class="errors"></div>
    <fieldset><legend>Study</legend><div class="fields">
      ${field("name", "Name", `<input data-field="name" value="" placeholder="my-study" required>`)}
      ${field("dataset", "Dataset", datasetSelect(uploaded, spec.dataset.name))}
      ${field("n_trials", "Trials", `<input data-field="n_trials" type="number" value="${spec.n_trials}">`)}
      ${field("training.epochs", "Epochs per trial",
              `<input data-field="training.epochs" type="number" value="${spec.training.epochs}">`)}
      ${field("objective.metric", "Objective", select("objective.metric",
              ["val_accuracy", "val_loss", "accuracy", "loss"], spec.objective.metric))}
    </div></fieldset>
    <fieldset><legend>Upload a dataset</legend>
      <p class="muted">An <code>.npz</code> (x_train, y_train; optionally x_val, y_val, x_test,
        y_test) or a <code>.csv</code> with a label column; text columns are one-hot encoded.</p>
      <div class="fields">
        ${field("file", "File", `<input type="file" id="dataset-file" accept=".npz,.csv">`)}
        ${field("label_column", "Label column (csv)", `<input id="dataset-label" placeholder="label">`)}
      </div>
      <div class="toolbar"><button id="upload-dataset" type="button">Upload</button>
        <span id="upload-status" class="muted"></span></div>
      <div id="upload-errors" class="errors"></div></fieldset>
    <fieldset><legend>Model and training (fixed values)</legend><div class="fields">
      ${field("model.architecture", "Architecture", select("model.architecture", P.architecture.choices, spec.model.architecture))}
      ${field("model.hidden_units", "Hidden units", `<input data-field="model.hidden_units" value="${spec.model.hidden_units.join(", ")}">`)}
      ${field("model.activation", "Activation", select("model.activation", P.activation.choices, spec.model.activation))}
      ${field("model.initializer", "Initializer", select("model.initializer", P.initializer.choices, spec.model.initializer))}
      ${field("model.batch_norm", "Batch norm", select("model.batch_norm", P.batch_norm.choices, spec.model.batch_norm))}
      ${field("training.optimizer", "Optimizer", select("training.optimizer", P.optimizer.choices, spec.training.optimizer))}
      ${field("training.batch_size", "Batch size", `<input data-field="training.batch_size" type="number" value="${spec.training.batch_size}">`)}
    </div></fieldset>
    <fieldset><legend>Search space</legend>
      <p class="muted">Untick “search” to fix a parameter at the value in “low”.</p>
      <div id="space">${space}</div></fieldset>
    <fieldset><legend>Sampler and pruner</legend><div class="fields">
      ${field("sampler.type", "Sampler", select("sampler.type", ["random", "tpe", "qmc"], spec.sampler.type))}
      ${field("sampler.seed", "Seed (optional)", `<input data-field="sampler.seed" type="number" placeholder="none">`)}
      ${field("pruner.type", "Pruner", select("pruner.type", ["median", "hyperband", "successive_halving", "none"], spec.pruner.type))}
      ${field("pruner.n_startup_trials", "Pruner start-up trials", `<input data-field="pruner.n_startup_trials" type="number" value="${spec.pruner.n_startup_trials}">`)}
      ${field("pruner.n_warmup_steps", "Warm-up epochs", `<input data-field="pruner.n_warmup_steps" type="number" value="${spec.pruner.n_warmup_steps}">`)}
    </div></fieldset>
    <div class="toolbar"><button class="primary" id="launch" type="submit">Launch study</button></div>
  </form>
  <h2>Or paste or upload a JSON spec</h2>
  <div class="card"><textarea id="spec-json" spellcheck="false">${esc(JSON.stringify(
      { ...spec, name: "" }, null, 2))}</textarea>
    <div class="toolbar"><input type="file" id="spec-file" accept=".json,application/json">
      <button id="launch-json" class="primary" type="button">Launch from JSON</button></div>
    <div id="json-errors" class="errors"></div></div>`;
  $("#upload-dataset").addEventListener("click", uploadDataset);
  $("#study-form").addEventListener("submit", (event) => {
    event.preventDefault();
    launch(specFromForm(), $("#form-errors"), true);
  });
  $("#spec-file").addEventListener("change", async (event) => {
    const file = event.target.files[0];
    if (file) $("#spec-json").value = await file.text();
  });
  $("#launch-json").addEventListener("click", () => {
    let body;
    try { body = JSON.parse($("#spec-json").value); } catch (error) {
      $("#json-errors").textContent = `Not valid JSON: ${error.message}`;
      return;
    }
    launch(body, $("#json-errors"), false);
  });
}

// Built-in datasets by name, uploaded ones by id (values starting with "ds_").
function datasetSelect(uploaded, selected) {
  const option = (value, label) =>
    `<option value="${esc(value)}" ${value === selected ? "selected" : ""}>${esc(label)}</option>`;
  const own = uploaded.map((d) => option(d.id,
    `${d.name} (${d.shapes.x_train.join("×")}, ${d.classes} classes, ${d.id})`)).join("");
  return `<select data-field="dataset"><optgroup label="Built in">${template.datasets.map(
    (n) => option(n, n)).join("")}</optgroup>${own ? `<optgroup label="Uploaded">${own}</optgroup>` : ""}
    </select>`;
}

async function uploadDataset() {
  const file = $("#dataset-file").files[0];
  const status = $("#upload-status"), errors = $("#upload-errors");
  errors.textContent = "";
  if (!file) { errors.textContent = "Choose an .npz or .csv file first."; return; }
  const form = new FormData();
  form.append("file", file);
  if ($("#dataset-label").value.trim()) form.append("label_column", $("#dataset-label").value.trim());
  status.textContent = `uploading ${file.name} (${(file.size / 1e6).toFixed(1)} MB)…`;
  const response = await fetch(`${API}/datasets`, { method: "POST", body: form });
  const body = await response.json().catch(() => null);
  status.textContent = "";
  if (response.status === 401) { renderSignIn("The session ended: sign in again."); return; }
  if (!response.ok) {
    errors.textContent = body?.errors?.length
      ? body.errors.map((e) => `${e.field}: ${e.reason}`).join("\n")
      : body?.detail || `HTTP ${response.status}`;
    return;
  }
  const uploaded = (await api("/datasets?limit=1000")).data;
  $('[data-field="dataset"]').outerHTML = datasetSelect(uploaded, body.id);
  status.textContent = `${body.name}: ${body.id}, ${body.classes} classes` +
    (response.status === 200 ? " (uploaded before)" : "");
}

function field(name, label, control) {
  return `<label>${esc(label)}${control}<span class="field-error" data-for="${name}"></span></label>`;
}

function spaceRow(name, p) {
  const f = `search_space.${name}`;
  const numeric = p.type !== "categorical";
  const bounds = numeric
    ? `${field(`${f}.low`, "low", `<input data-field="${f}.low" value="${p.low}">`)}
       ${field(`${f}.high`, "high", `<input data-field="${f}.high" value="${p.high}">`)}
       <label class="inline"><input type="checkbox" data-field="${f}.log" ${p.log ? "checked" : ""}>log</label>`
    : `${field(`${f}.choices`, "choices (comma-separated)",
              `<input data-field="${f}.choices" value="${p.choices.join(", ")}">`)}<span></span><span></span>`;
  return `<div class="space-row" data-param="${name}" data-type="${p.type}">
    <b>${esc(name)}<span class="field-error" data-for="${f}"></span></b>
    <label class="inline"><input type="checkbox" data-search checked>search</label>${bounds}</div>`;
}

function value(fieldName) {
  const el = $(`[data-field="${fieldName}"]`);
  if (!el) return undefined;
  if (el.type === "checkbox") return el.checked;
  if (el.type === "number") return el.value === "" ? undefined : Number(el.value);
  return el.value.trim();
}

function parseValue(text) {
  const t = String(text).trim();
  if (t === "true" || t === "false") return t === "true";
  return t !== "" && !Number.isNaN(Number(t)) ? Number(t) : t;
}

function specFromForm() {
  const P = template.parameters;
  const spec = {
    name: value("name"), n_trials: value("n_trials"),
    dataset: value("dataset").startsWith("ds_") ? { id: value("dataset") } : { name: value("dataset") },
    objective: { metric: value("objective.metric") },
    model: {
      architecture: value("model.architecture"),
      hidden_units: value("model.hidden_units").split(/[ ,]+/).filter(Boolean).map(Number),
      activation: value("model.activation"), initializer: value("model.initializer"),
      batch_norm: value("model.batch_norm"),
    },
    training: { epochs: value("training.epochs"), optimizer: value("training.optimizer"),
                batch_size: value("training.batch_size") },
    search_space: {},
    sampler: { type: value("sampler.type") },
    pruner: { type: value("pruner.type") },
  };
  if (value("sampler.seed") !== undefined) spec.sampler.seed = value("sampler.seed");
  if (spec.pruner.type === "median") {
    spec.pruner.n_startup_trials = value("pruner.n_startup_trials");
    spec.pruner.n_warmup_steps = value("pruner.n_warmup_steps");
  }
  document.querySelectorAll(".space-row").forEach((row) => {
    const name = row.dataset.param, f = `search_space.${name}`;
    const section = P[name]?.section || "model";
    if (row.dataset.type === "categorical") {
      const choices = value(`${f}.choices`).split(",").map(parseValue).filter((c) => c !== "");
      if ($("[data-search]", row).checked) spec.search_space[name] = { type: "categorical", choices };
      else spec[section][name] = choices[0];
      return;
    }
    const low = parseValue(value(`${f}.low`)), high = parseValue(value(`${f}.high`));
    if ($("[data-search]", row).checked) {
      spec.search_space[name] = { type: row.dataset.type, low, high, log: value(`${f}.log`) };
    } else {
      spec[section][name] = low;
    }
  });
  return spec;
}

// Shows each of the API's field errors next to its form field (``inFields``), or all of them
// in ``generalErrors`` (a pasted spec has no fields to point at).
async function launch(spec, generalErrors, inFields) {
  document.querySelectorAll(".field-error").forEach((e) => { e.textContent = ""; });
  document.querySelectorAll(".invalid").forEach((e) => e.classList.remove("invalid"));
  generalErrors.textContent = "";
  try {
    const study = await api("/studies", { method: "POST", body: JSON.stringify(spec) });
    location.hash = `#/studies/${study.id}`;
  } catch (error) {
    const unplaced = [];
    for (const e of error.body?.errors || []) {
      // The most specific element that names this field (or one of its parents).
      let target = null;
      for (let f = inFields ? e.field : ""; f && !target;
           f = f.includes(".") ? f.slice(0, f.lastIndexOf(".")) : "") {
        target = document.querySelector(`.field-error[data-for="${CSS.escape(f)}"]`);
      }
      if (target) {
        target.textContent = e.reason;
        document.querySelector(`[data-field="${CSS.escape(e.field)}"]`)?.classList.add("invalid");
      } else {
        unplaced.push(`${e.field}: ${e.reason}`);
      }
    }
    if (!error.body?.errors?.length) unplaced.push(error.message);
    generalErrors.innerHTML = unplaced.map(esc).join("<br>");
  }
}

// -- one study ----------------------------------------------------------------------------------

async function renderStudy(id) {
  const state = { page: 0, filter: "", sort: "number", descending: false, cursor: -1,
                  study: null, plotsAt: 0 };
  view().innerHTML = `<div id="study-head"></div>
    <div class="toolbar">
      <button id="stop" class="danger">Stop</button><button id="resume">Resume</button>
      <button id="delete" class="danger">Delete</button>
      <a id="csv" class="button" href="${API}/studies/${id}/trials.csv" download>Download CSV</a>
      <span id="action-error" class="errors"></span>
    </div>
    <div class="card"><h2>Best trial</h2><div id="best"><p class="muted">No completed trial yet.</p></div></div>
    <h2>Trials</h2>
    <div class="toolbar"><label class="inline">state
      <select id="state-filter"><option value="">all</option>${["running", ...FINISHED].map((s) =>
        `<option>${s}</option>`).join("")}</select></label>
      <button id="prev">Previous</button><span id="page-info" class="muted"></span>
      <button id="next">Next</button></div>
    <div class="table-wrap"><table id="trials"></table></div>
    <div class="grid">
      <div class="card"><div id="plot-history" class="plot"></div></div>
      <div class="card"><div id="plot-curves" class="plot"></div></div>
      <div class="card"><div id="plot-parallel" class="plot"></div></div>
      <div class="card"><div id="plot-importance" class="plot"></div></div>
    </div>
    <h2>Each searched parameter against the objective</h2><div id="plot-params" class="grid"></div>`;
  const action = (name, method = "POST") => async () => {
    if (name === "delete" && !confirm("Delete this study and all its trials?")) return;
    $("#action-error").textContent = "";
    try {
      await api(`/studies/${id}${name === "delete" ? "" : "/" + name}`, { method });
      if (name === "delete") location.hash = "#/";
      else await refresh(true);
    } catch (error) { $("#action-error").textContent = error.message; }
  };
  $("#stop").onclick = action("stop");
  $("#resume").onclick = action("resume");
  $("#delete").onclick = action("delete", "DELETE");
  $("#state-filter").onchange = (e) => { state.filter = e.target.value; state.page = 0; drawTrials(id, state); };
  $("#prev").onclick = () => { state.page = Math.max(0, state.page - 1); drawTrials(id, state); };
  $("#next").onclick = () => { state.page += 1; drawTrials(id, state); };

  async function refresh(force = false) {
    const study = await api(`/studies/${id}`);
    state.study = study;
    drawHead(study);
    if (!force && study.change_seq === state.cursor) return;  // nothing changed
    state.cursor = study.change_seq;
    await drawTrials(id, state);
    // Plots redraw at most every 5 s while trials stream in, after the table has painted.
    if (force || Date.now() - state.plotsAt > 5000 || !["queued", "running"].includes(study.status)) {
      state.plotsAt = Date.now();
      await nextFrame();
      await drawPlots(id);
    }
  }
  await refresh(true);
  stopPolling = every(POLL_MS, () => refresh(false));
}

function drawHead(s) {
  const c = s.trial_counts;
  const active = ["queued", "running"].includes(s.status);
  $("#study-head").innerHTML = `<h1>${esc(s.name)} <span id="study-status">${badge(s.status)}</span></h1>
    ${s.status_reason ? `<p class="muted">${esc(s.status_reason)}</p>` : ""}
    <div class="card stats">
      <div><span class="muted">Progress</span><b id="progress-text">${s.finished} / ${s.n_trials}</b>
        <div class="bar"><span style="width:${(100 * s.progress).toFixed(1)}%"></span></div></div>
      <div><span class="muted">Running</span><b id="count-running">${c.running}</b></div>
      <div><span class="muted">Complete</span><b id="count-complete">${c.complete}</b></div>
      <div><span class="muted">Pruned</span><b id="count-pruned">${c.pruned}</b></div>
      <div><span class="muted">Failed</span><b id="count-failed">${c.failed + c.diverged + c.timed_out}</b></div>
      <div><span class="muted">Best ${esc(s.objective.metric)}</span>
        <b id="best-value">${s.best_trial ? fmt(s.best_trial.value) : "–"}</b></div>
      <div><span class="muted">Duration</span><b>${duration(since(s.started_at, s.finished_at)) || "–"}</b></div>
    </div>`;
  $("#stop").disabled = !active;
  $("#resume").disabled = !["stopped", "failed"].includes(s.status);
  if (s.best_trial) {
    const json = JSON.stringify(s.best_trial.params, null, 2);
    if ($("#best-params")?.textContent !== json) {
      $("#best").innerHTML = `<p>Trial ${s.best_trial.number}: ${esc(s.objective.metric)}
        ${fmt(s.best_trial.value)}</p><pre id="best-params">${esc(json)}</pre>
        <button id="copy-best">Copy as JSON</button> <span id="copied" class="muted"></span>`;
      $("#copy-best").onclick = () => copyText(json);
    }
  }
}

async function copyText(text) {
  try {
    await navigator.clipboard.writeText(text);
  } catch {
    const area = Object.assign(document.createElement("textarea"), { value: text });
    document.body.append(area);
    area.select();
    document.execCommand("copy");
    area.remove();
  }
  $("#copied").textContent = "copied";
}

async function drawTrials(id, state) {
  const q = new URLSearchParams({ offset: state.page * TRIAL_PAGE, limit: TRIAL_PAGE,
                                  sort: state.sort, descending: state.descending });
  if (state.filter) q.set("state", state.filter);
  const page = await api(`/studies/${id}/trials?${q}`);
  const params = state.study?.searched || [];
  const metric = state.study?.objective.metric || "value";
  const th = (key, label) => `<th data-sort="${key}" class="${state.sort === key ? "sorted" : ""}
    ${state.sort === key && state.descending ? "desc" : ""}">${esc(label)}</th>`;
  const rows = page.data.map((t) => `<tr data-number="${t.number}" data-state="${t.state}">
    <td>${t.number}</td><td>${badge(t.state)}</td>
    ${params.map((p) => `<td>${esc(fmt(t.params[p]))}</td>`).join("")}
    <td>${fmt(t.value)}</td><td>${t.epochs_run}</td><td>${duration(t.train_seconds)}</td>
    <td>${esc(t.worker_id || "")}</td><td class="reason">${esc(t.reason || "")}</td></tr>`).join("");
  $("#trials").innerHTML = `<thead><tr>${th("number", "#")}${th("state", "state")}
    ${params.map((p) => `<th>${esc(p)}</th>`).join("")}${th("value", metric)}${th("epochs_run", "epochs")}
    ${th("duration", "duration")}<th>worker</th><th>reason</th></tr></thead><tbody>${rows ||
    `<tr><td colspan="${params.length + 7}" class="muted">No trial yet.</td></tr>`}</tbody>`;
  document.querySelectorAll("#trials th[data-sort]").forEach((el) => {
    el.onclick = () => {
      const key = el.dataset.sort;
      state.descending = state.sort === key ? !state.descending : key === "value";
      state.sort = key;
      drawTrials(id, state);
    };
  });
  const pages = Math.max(1, Math.ceil(page.count / TRIAL_PAGE));
  $("#page-info").textContent = `page ${state.page + 1} of ${pages} (${page.count} trials)`;
  $("#prev").disabled = state.page === 0;
  $("#next").disabled = state.page + 1 >= pages;
}

const STATE_COLORS = { complete: "#2563eb", pruned: "#d97706", running: "#9ca3af",
                       diverged: "#b91c1c", timed_out: "#b91c1c", failed: "#b91c1c" };

// Lets the browser paint and handle input between two plots: the next plot is a background task,
// so a click, and the requests and drawing it starts, go first.
const nextFrame = () => new Promise((resolve) => requestAnimationFrame(() =>
  window.scheduler?.postTask ? scheduler.postTask(resolve, { priority: "background" })
                             : setTimeout(resolve)));
const MAX_PARALLEL = 1000;

async function drawPlots(id) {
  const [a] = await Promise.all([api(`/studies/${id}/analysis`), loadPlotly()]);
  // Importance may take seconds the first time on a large study: it draws when it comes.
  api(`/studies/${id}/importance`).then(drawImportance).catch((e) => console.warn(e.message));
  const t = a.trials, metric = a.objective.metric, maximize = a.objective.direction === "maximize";
  // Optimization history: every finished trial's value, and the best so far.
  const done = t.number.map((n, i) => i).filter((i) => t.value[i] !== null);
  let best = null;
  const bestSoFar = done.map((i) => {
    if (t.state[i] === "complete") {
      best = best === null ? t.value[i] : (maximize ? Math.max(best, t.value[i]) : Math.min(best, t.value[i]));
    }
    return best;
  });
  // Indices of the finished trials in each state that has a value, computed once for all plots.
  const inState = Object.fromEntries(["complete", "pruned"].map((s) =>
    [s, done.filter((i) => t.state[i] === s)]));
  plot("plot-history", [
    ...["complete", "pruned"].map((s) => ({ type: "scattergl", mode: "markers", name: s,
      x: inState[s].map((i) => t.number[i]), y: inState[s].map((i) => t.value[i]),
      marker: { color: STATE_COLORS[s], size: 6 } })),
    { type: "scattergl", mode: "lines", name: "best so far", x: done.map((i) => t.number[i]),
      y: bestSoFar, line: { color: "#15803d" } },
  ], { title: { text: "Optimization history" }, xaxis: { title: { text: "trial" } },
       yaxis: { title: { text: metric } } });
  await nextFrame();
  // Learning curves: one trace per state, trials separated by gaps (hundreds of traces would
  // be slow); pruned trials stop short, drawn in orange.
  const curveStates = [...new Set(a.curves.map((c) => c.state))];
  plot("plot-curves", curveStates.map((s) => {
    const x = [], y = [], text = [];
    for (const c of a.curves.filter((c) => c.state === s)) {
      c.values.forEach((v, k) => { x.push(k + 1); y.push(v); text.push(c.number); });
      x.push(null); y.push(null); text.push(null);
    }
    return { type: "scatter", mode: "lines+markers", name: s, x, y, text,
      line: { color: STATE_COLORS[s] || "#9ca3af", width: 1 }, marker: { size: 4 },
      opacity: s === "pruned" ? 0.9 : 0.6, connectgaps: false,
      hovertemplate: `trial %{text} (${s})<br>epoch %{x}: %{y:.4f}<extra></extra>` };
  }), { title: { text: `Learning curves (${a.curves.length} of ${a.curves_total} trials; pruned in orange)` },
         xaxis: { title: { text: "epoch" }, range: [0.8, a.epochs + 0.2], dtick: 1 },
         yaxis: { title: { text: metric } } });
  // Each searched parameter against the objective; log axes where the search is log-scaled.
  const container = $("#plot-params");
  const wanted = a.searched.map((p) => `plot-param-${p.name}`).join(",");
  if (container.dataset.ids !== wanted) {
    container.dataset.ids = wanted;
    container.innerHTML = a.searched.map((p) =>
      `<div class="card"><div id="plot-param-${esc(p.name)}" class="plot"></div></div>`).join("");
  }
  for (const p of a.searched) {
    await nextFrame();
    plot(`plot-param-${p.name}`, ["complete", "pruned"].map((s) => ({
      type: "scattergl", mode: "markers", name: s, x: inState[s].map((i) => t.params[p.name][i]),
      y: inState[s].map((i) => t.value[i]), marker: { color: STATE_COLORS[s], size: 6 } })),
    { title: { text: p.name }, xaxis: { title: { text: p.name }, type: p.log ? "log" : "-" },
      yaxis: { title: { text: metric } } });
  }
  await nextFrame();
  // Parallel coordinates over the searched parameters, coloured by the objective: the best
  // MAX_PARALLEL complete trials (thousands of lines would only draw a solid block).
  const complete = [...inState.complete].sort((i, j) =>
    maximize ? t.value[j] - t.value[i] : t.value[i] - t.value[j]).slice(0, MAX_PARALLEL);
  if (complete.length) {
    const dims = a.searched.map((p) => {
      const raw = complete.map((i) => t.params[p.name][i]);
      if (p.type === "categorical") {
        const labels = p.choices.map(String);
        return { label: p.name, values: raw.map((v) => labels.indexOf(String(v))),
                 tickvals: labels.map((_, k) => k), ticktext: labels };
      }
      return p.log ? { label: `log10 ${p.name}`, values: raw.map((v) => Math.log10(v)) }
                   : { label: p.name, values: raw };
    });
    const values = complete.map((i) => t.value[i]);
    plot("plot-parallel", [{ type: "parcoords", dimensions: [...dims, { label: metric, values }],
      line: { color: values, colorscale: "Viridis", showscale: true, reversescale: !maximize } }],
    { title: { text: `Parallel coordinates (best ${complete.length} complete trials)`, y: 0.98 },
      margin: { l: 60, r: 60, t: 90, b: 30 } });
  } else {
    $("#plot-parallel").innerHTML = `<p class="muted">Parallel coordinates appear with the first complete trial.</p>`;
  }
}

function drawImportance(importance) {
  // Parameter importance, once enough trials completed.
  const names = Object.keys(importance.importances);
  if (importance.ready && names.length) {
    plot("plot-importance", [{ type: "bar", orientation: "h", x: names.map((n) => importance.importances[n]),
      y: names, marker: { color: "#2563eb" } }],
    { title: { text: `Parameter importance (${importance.complete} complete trials)` },
      yaxis: { autorange: "reversed" }, margin: { l: 110, r: 15, t: 35, b: 40 } });
  } else {
    $("#plot-importance").innerHTML = `<p class="muted">Parameter importance appears once
      ${importance.needed} trials completed (${importance.complete} so far).</p>`;
  }
}
