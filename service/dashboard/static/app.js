// hpsearch dashboard: a single page over the REST API (no other data source). Routes:
// #/ (studies), #/new (launch form), #/studies/ID (one study, updated live by polling).
// With HPSEARCH_AUTH=on the page asks for a user token once; the service keeps it in an
// HttpOnly cookie (this script never stores it).
"use strict";

const API = "/api/v1";
const POLL_MS = 2000;
const TRIAL_PAGE = 50;
// The finished states of hpsearch.lifecycle.TrialStatus (GET /studies/-/template lists them all).
const FINISHED = ["complete", "pruned", "diverged", "timed_out", "failed"];
let stopPolling = () => {};
// Which page is shown: route() counts them. A render notes the number it was started for
// (``const shown = shownPage`` before its first await), and one whose page the user left while
// its requests were in flight draws nothing and starts no poll (see ``showing`` and ``poll``).
let shownPage = 0;
const showing = (page) => page === shownPage;

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

// Every request of the page's API calls, so that signing out can abort them all at once.
const pageRequests = new AbortController();

async function api(path, options = {}) {
  let response, text;
  try {
    response = await fetch(API + path, {
      headers: { "Content-Type": "application/json" }, signal: pageRequests.signal, ...options });
    text = await response.text();
  } catch (error) {
    // Aborted by the sign-out: the page is about to be replaced, so no caller waits for an
    // answer (none will come, and nothing is drawn or reported for it).
    if (pageRequests.signal.aborted) return new Promise(() => {});
    throw error;
  }
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

// Draws (or redraws) a plot with SVG traces only: WebGL ones (scattergl, parcoords) compile
// their shaders with eval, which the page's Content-Security-Policy forbids. Resolves once drawn.
function plot(id, traces, layout) {
  const el = document.getElementById(id);
  if (!el || !window.Plotly) return Promise.resolve();
  // The legend sits at the bottom of the frame, below the x axis' title.
  const base = { autosize: true, font: { size: 11 },
                 legend: { orientation: "h", yref: "container", y: 0, yanchor: "bottom" } };
  const margin = { l: 55, r: 15, t: 35, b: 65, ...layout.margin };
  return Plotly.react(el, traces, { ...base, ...layout, margin },
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
  shownPage += 1;
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
  // First nothing more is asked for, and what is in flight is dropped: a request that reached
  // the service after the session ended would be answered 401 (an error in the console, and the
  // sign-in form drawn twice). Only then does the session end.
  stopPolling();
  stopPolling = () => {};
  pageRequests.abort();
  try {
    await fetch(`${API}/session`, { method: "DELETE" });
  } finally {
    // A fresh page, whatever the answer: this one asks for nothing more, and nothing it was
    // still loading can draw over the sign-in form.
    location.replace("/?signed-out");
  }
}

// -- routing --------------------------------------------------------------------------------------

async function route() {
  stopPolling();
  stopPolling = () => {};
  shownPage += 1;
  const hash = location.hash || "#/";
  const study = hash.match(/^#\/studies\/(\d+)/);
  try {
    const trialPage = trialRoute(hash);  // trial.js: #/studies/ID/trials/N, .../compare/N,M
    if (hash.startsWith("#/new")) await renderForm();
    else if (trialPage) await trialPage();
    else if (study) await renderStudy(Number(study[1]));
    else await renderList(Number(new URLSearchParams(hash.split("?")[1]).get("page") || 0));
  } catch (error) {
    // A page left while it was still loading (a trial opened from a study's table before its
    // plots were drawn) fails on the next page's elements: that error is not the next page's.
    if ((location.hash || "#/") !== hash) return console.warn(`${hash} left:`, error.message);
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

// Polls ``fn`` every ``ms`` while ``page`` is shown; nothing if it was left already.
function poll(page, ms, fn) {
  if (!showing(page)) return;
  stopPolling = every(ms, async () => { if (showing(page)) await fn(); });
}

// -- studies list ---------------------------------------------------------------------------------

async function renderList(page) {
  const shown = shownPage, limit = 20;
  const draw = async () => {
    const data = await api(`/studies?offset=${page * limit}&limit=${limit}`);
    if (!showing(shown)) return;
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
  poll(shown, 3000, draw);
}

// -- launch form ------------------------------------------------------------------------------

let template = null;

async function renderForm() {
  const shown = shownPage;
  template = template || await api("/studies/-/template");
  const uploaded = (await api("/datasets?limit=1000")).data;
  if (!showing(shown)) return;
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
  const shown = shownPage;
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
    if (!showing(shown)) return;
    state.study = study;
    drawHead(study);
    if (!force && study.change_seq === state.cursor) return;  // nothing changed
    state.cursor = study.change_seq;
    await drawTrials(id, state);
    if (!showing(shown)) return;
    // Plots redraw at most every 5 s while trials stream in, after the table has painted.
    if (force || Date.now() - state.plotsAt > 5000 || !["queued", "running"].includes(study.status)) {
      state.plotsAt = Date.now();
      await nextFrame();
      if (showing(shown)) await drawPlots(id);
    }
  }
  await refresh(true);
  poll(shown, POLL_MS, () => refresh(false));
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
  wireTrialRows(id);  // trial.js: rows open their trial; checkboxes pick trials to compare
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
// SVG draws each marker as an element of its own: past MAX_POINTS a plot takes long to draw
// and to follow the pointer. A larger study draws the best MAX_POINTS / 2 complete trials and an
// even spread of the others in trial order (early and late trials both show), and its plots'
// titles say so.
const MAX_POINTS = 1000;
const countText = (n) => n.toLocaleString("en");

function drawnTrials(done, t, maximize) {
  if (done.length <= MAX_POINTS) return { shown: done, note: "" };
  const best = done.filter((i) => t.state[i] === "complete")
    .sort((i, j) => (maximize ? t.value[j] - t.value[i] : t.value[i] - t.value[j]))
    .slice(0, MAX_POINTS / 2);
  const keep = new Set(best);
  const rest = done.filter((i) => !keep.has(i));
  const spread = MAX_POINTS - keep.size;
  for (let k = 0; k < spread; k++) keep.add(rest[Math.floor((k * rest.length) / spread)]);
  return { shown: done.filter((i) => keep.has(i)),
           note: `${countText(keep.size)} of ${countText(done.length)} trials drawn: the best ` +
                 `${countText(best.length)} and an even spread of the others` };
}

async function drawPlots(id) {
  const [a] = await Promise.all([api(`/studies/${id}/analysis`), loadPlotly()]);
  // Each plot waits its turn (below): the page may have moved on to another view meanwhile.
  const left = () => !document.getElementById("plot-params");
  if (left()) return;
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
  // The trials drawn as markers, in each state that has a value, computed once for all plots.
  const { shown, note } = drawnTrials(done, t, maximize);
  const inState = Object.fromEntries(["complete", "pruned"].map((s) =>
    [s, shown.filter((i) => t.state[i] === s)]));
  const titled = (text) => (note ? { title: { text, subtitle: { text: note } }, margin: { t: 60 } }
                                 : { title: { text } });
  await plot("plot-history", [
    ...["complete", "pruned"].map((s) => ({ type: "scatter", mode: "markers", name: s,
      x: inState[s].map((i) => t.number[i]), y: inState[s].map((i) => t.value[i]),
      marker: { color: STATE_COLORS[s], size: 6 } })),
    // One path over every finished trial, however many markers are drawn.
    { type: "scatter", mode: "lines", name: "best so far", x: done.map((i) => t.number[i]),
      y: bestSoFar, line: { color: "#15803d", shape: "hv" }, hoverinfo: "skip" },
  ], { ...titled("Optimization history"), xaxis: { title: { text: "trial" } },
       yaxis: { title: { text: metric } } });
  await nextFrame();
  // Learning curves: one trace per state, trials separated by gaps (hundreds of traces would
  // be slow); pruned trials stop short, drawn in orange.
  const curveStates = [...new Set(a.curves.map((c) => c.state))];
  await plot("plot-curves", curveStates.map((s) => {
    const x = [], y = [], text = [];
    for (const c of a.curves.filter((c) => c.state === s)) {
      c.values.forEach((v, k) => { x.push(k + 1); y.push(v); text.push(c.number); });
      x.push(null); y.push(null); text.push(null);
    }
    return { type: "scatter", mode: "lines+markers", name: s, x, y, text,
      line: { color: STATE_COLORS[s] || "#9ca3af", width: 1 }, marker: { size: 4 },
      opacity: s === "pruned" ? 0.9 : 0.6, connectgaps: false,
      hovertemplate: `trial %{text} (${s})<br>epoch %{x}: %{y:.4f}<extra></extra>` };
  }), { title: { text: `Learning curves (${countText(a.curves.length)} of ${countText(a.curves_total)} trials; pruned in orange)` },
         xaxis: { title: { text: "epoch" }, range: [0.8, a.epochs + 0.2], dtick: 1 },
         yaxis: { title: { text: metric } } });
  // Each searched parameter against the objective; log axes where the search is log-scaled,
  // a categorical parameter's choices in the order of the search space.
  if (left()) return;
  const container = $("#plot-params");
  const wanted = a.searched.map((p) => `plot-param-${p.name}`).join(",");
  if (container.dataset.ids !== wanted) {
    container.dataset.ids = wanted;
    container.innerHTML = a.searched.map((p) =>
      `<div class="card"><div id="plot-param-${esc(p.name)}" class="plot"></div></div>`).join("");
  }
  for (const p of a.searched) {
    await nextFrame();
    if (left()) return;
    const categorical = p.type === "categorical";
    const xOf = (i) => (categorical ? String(t.params[p.name][i]) : t.params[p.name][i]);
    await plot(`plot-param-${p.name}`, ["complete", "pruned"].map((s) => ({
      type: "scatter", mode: "markers", name: s, x: inState[s].map(xOf),
      y: inState[s].map((i) => t.value[i]), text: inState[s].map((i) => t.number[i]),
      marker: { color: STATE_COLORS[s], size: 6 },
      hovertemplate: `trial %{text} (${s})<br>${esc(p.name)} %{x}: %{y:.4f}<extra></extra>` })),
    { ...titled(p.name), yaxis: { title: { text: metric } },
      xaxis: { title: { text: p.name }, type: p.log ? "log" : categorical ? "category" : "-",
               ...(categorical ? { categoryorder: "array", categoryarray: p.choices.map(String) }
                               : searchAxis(p)) } });
  }
  await nextFrame();
  if (left()) return;
  // Parallel coordinates over the searched parameters and the objective: the best
  // MAX_PARALLEL complete trials (thousands of lines would only draw a solid block).
  const complete = done.filter((i) => t.state[i] === "complete").sort((i, j) =>
    maximize ? t.value[j] - t.value[i] : t.value[i] - t.value[j]);
  const chosen = complete.slice(0, MAX_PARALLEL);
  if (chosen.length) {
    const values = chosen.map((i) => t.value[i]);
    const lo = Math.min(...values), hi = Math.max(...values);
    const axes = [...a.searched.map((p) => parallelAxis(p)),
                  numericAxis(metric, lo, hi, false)];
    const columns = [...a.searched.map((p) => t.params[p.name]), t.value];
    const lines = chosen.map((i) => ({
      at: axes.map((axis, k) => axis.pos(columns[k][i])),
      color: objectiveColor(t.value[i], lo, hi, maximize),
      label: `trial ${t.number[i]}: ${metric} ${fmt(t.value[i])}`,
    })).filter((line) => line.at.every(Number.isFinite)).reverse();  // the best drawn last, on top
    const title = `Parallel coordinates (${chosen.length < complete.length ? "best " : ""}` +
      `${countText(chosen.length)} of ${countText(complete.length)} complete trials` +
      `${lines.length < chosen.length ? `; ${chosen.length - lines.length} lacking a value left out` : ""})`;
    drawParallel($("#plot-parallel"), axes, lines, title, { lo, hi, maximize });
  } else {
    $("#plot-parallel").innerHTML = `<p class="muted">Parallel coordinates appear with the first complete trial.</p>`;
  }
}

// A numeric parameter's axis spans its whole search range (a little more, so that a marker at
// either end shows whole): where the trials fell in it reads at a glance. A log axis is in log10
// units, as plotly takes them, labelled at 1, 2 and 5 times each power of ten (not every digit).
function searchAxis(p) {
  const [low, high] = p.log ? [Math.log10(p.low), Math.log10(p.high)] : [p.low, p.high];
  const pad = 0.03 * (high - low || 1);
  return { range: [low - pad, high + pad], ...(p.log && high - low <= 3 ? { dtick: "D2" } : {}) };
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

// -- parallel coordinates ---------------------------------------------------------------------
// Drawn in SVG by this script: plotly's parcoords needs WebGL, whose shaders are compiled with
// eval, which the page's Content-Security-Policy forbids. An axis maps a value to [0, 1]
// (bottom to top), or to NaN when it has no place on it.

const VIRIDIS = [[68, 1, 84], [72, 40, 120], [62, 73, 137], [49, 104, 142], [38, 130, 142],
                 [31, 158, 137], [53, 183, 121], [110, 206, 88], [181, 222, 43], [253, 231, 37]];

// Viridis, from dark purple (the worst objective) to yellow (the best).
function objectiveColor(value, lo, hi, maximize) {
  const f = hi > lo ? (value - lo) / (hi - lo) : Number(maximize);  // one value: the best
  const x = (maximize ? f : 1 - f) * (VIRIDIS.length - 1);
  const k = Math.min(Math.floor(x), VIRIDIS.length - 2), r = x - k;
  return `rgb(${VIRIDIS[k].map((c, n) => Math.round(c + r * (VIRIDIS[k + 1][n] - c))).join(",")})`;
}

function parallelAxis(p) {
  if (p.type === "categorical") {
    const labels = p.choices.map(String);
    const at = (k) => (labels.length > 1 ? k / (labels.length - 1) : 0.5);
    const every = Math.ceil(labels.length / 12);  // at most 12 labels, each readable
    return { label: p.name, pos: (v) => { const k = labels.indexOf(String(v)); return k < 0 ? NaN : at(k); },
             ticks: labels.map((text, k) => ({ at: at(k), text })).filter((_, k) => k % every === 0) };
  }
  return numericAxis(p.name, p.low, p.high, p.log, p.type === "int");
}

function numericAxis(label, low, high, log, integer = false) {
  const f = log ? Math.log10 : (v) => v, g = log ? (v) => 10 ** v : (v) => v;
  let a = f(low), b = f(high);
  if (!(b > a)) { const pad = Math.abs(a) / 10 || 1; a -= pad; b += pad; }  // a single value
  const pos = (v) => (v === null || v === undefined ? NaN : (f(v) - a) / (b - a));
  const values = tickValues(g(a), g(b), log, integer);
  const step = !log && values.length > 1 ? values[1] - values[0] : 0;
  return { label, pos, ticks: values.map((v) => ({ at: pos(v), text: tickText(v, step) })) };
}

// Round values in [lo, hi]: powers of ten (and 2x, 5x over a short span) on a log axis, else
// steps of 1, 2 or 5 times a power of ten.
function tickValues(lo, hi, log, integer) {
  const out = [];
  if (log) {
    const first = Math.floor(Math.log10(lo)), last = Math.ceil(Math.log10(hi));
    const steps = last - first <= 2 ? [1, 2, 5] : [1];
    for (let e = first; e <= last; e++) {
      for (const m of steps) {
        const v = Number((m * 10 ** e).toPrecision(12));
        if (v >= lo * (1 - 1e-9) && v <= hi * (1 + 1e-9)) out.push(v);
      }
    }
    return out;
  }
  const raw = (hi - lo) / 4, e = 10 ** Math.floor(Math.log10(raw)), m = raw / e;
  const step = Math.max((m < 1.5 ? 1 : m < 3.5 ? 2 : m < 7.5 ? 5 : 10) * e, integer ? 1 : 0);
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) {
    out.push(Number(v.toPrecision(12)));
  }
  return out;
}

// As many decimals as the step between ticks needs (3 significant digits on a log axis), and
// an exponent for the very small and the very large.
function tickText(v, step = 0) {
  if (v !== 0 && (Math.abs(v) < 1e-3 || Math.abs(v) >= 1e4)) {
    return Number(v.toPrecision(3)).toExponential().replace("e+", "e");
  }
  return step > 0 ? v.toFixed(Math.max(0, -Math.floor(Math.log10(step) + 1e-9)))
                  : String(Number(v.toPrecision(3)));
}

// ``lines``: [{at: a position on each axis, color, label}], drawn in this order; ``scale``: the
// objective's lowest and highest value, and its direction, for the color scale.
function drawParallel(el, axes, lines, title, scale) {
  const W = Math.max(el.clientWidth, 300), H = 380, left = 48, right = 84, bottom = 22;
  const gap = (W - left - right) / Math.max(axes.length - 1, 1);
  // Axis names take as many rows as they need not to overlap (at most 3).
  const widest = Math.max(...axes.map((axis) => axis.label.length)) * 6.6;
  const rows = Math.min(3, Math.max(1, Math.ceil(widest / gap)));
  const top = 34 + 14 * rows;
  const round = (v) => Math.round(10 * v) / 10;
  const x = (k) => round(left + k * gap), y = (at) => round(top + (1 - at) * (H - top - bottom));
  const polylines = lines.map((line) => `<polyline class="pc-line" stroke="${line.color}"
    points="${line.at.map((at, k) => `${x(k)},${y(at)}`).join(" ")}"><title>${esc(line.label)}</title></polyline>`);
  const axisMarks = axes.map((axis, k) => `<g class="pc-axis">
    <line x1="${x(k)}" x2="${x(k)}" y1="${y(1)}" y2="${y(0)}"></line>
    ${axis.ticks.map((tick) => `<line x1="${x(k) - 4}" x2="${x(k)}" y1="${y(tick.at)}" y2="${y(tick.at)}"></line>
      <text x="${x(k) - 6}" y="${y(tick.at) + 3.5}" text-anchor="end">${esc(tick.text)}</text>`).join("")}
    <text class="pc-name" x="${x(k)}" y="${top - 10 - 14 * (rows - 1 - (k % rows))}"
          text-anchor="middle">${esc(axis.label)}</text></g>`);
  const { lo, hi, maximize } = scale, bar = W - 54;
  // A few lines each stand out; a thousand show where they crowd.
  const opacity = Math.min(0.8, Math.max(0.15, 6 / Math.sqrt(lines.length)));
  const stops = Array.from({ length: 11 }, (_, k) => `<stop offset="${k / 10}"
    stop-color="${objectiveColor(lo + (k / 10) * (hi - lo), lo, hi, maximize)}"></stop>`);
  el.innerHTML = `<svg class="parallel" viewBox="0 0 ${W} ${H}" role="img" aria-label="${esc(title)}">
    <defs><linearGradient id="pc-scale" x1="0" y1="1" x2="0" y2="0">${stops.join("")}</linearGradient></defs>
    <text class="pc-title" x="${W / 2}" y="18" text-anchor="middle">${esc(title)}</text>
    <g class="pc-lines" stroke-opacity="${opacity.toFixed(2)}">${polylines.join("")}</g>${axisMarks.join("")}
    <rect class="pc-scale" x="${bar}" y="${y(1)}" width="10" height="${y(0) - y(1)}"
          fill="url(#pc-scale)"></rect>
    <text class="pc-scale-label" x="${bar + 14}" y="${y(1) + 8}">${esc(fmt(hi))}</text>
    <text class="pc-scale-label" x="${bar + 14}" y="${y(0)}">${esc(fmt(lo))}</text>
  </svg>`;
}
