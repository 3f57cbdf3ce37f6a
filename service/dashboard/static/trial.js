// hpsearch dashboard: one trial's page and a comparison of 2 to 5 trials. Routes:
// #/studies/ID/trials/N (params searched and fixed, state, timings, per-epoch curves) and
// #/studies/ID/compare/N,M,... (curves overlaid, params side by side). app.js's route() asks
// trialRoute() first; its drawTrials() calls wireTrialRows() to make rows open their trial and
// to add the checkboxes that pick trials to compare. Uses app.js's helpers (api, esc, fmt,
// badge, duration, since, loadPlotly, plot, poll, shownPage, showing, stopPolling, POLL_MS,
// FINISHED, view, $).
"use strict";

const COMPARE_MIN = 2;
const COMPARE_MAX = 5;
// One color per compared trial, the same in every plot and in the table's header.
const TRIAL_COLORS = ["#2563eb", "#d97706", "#15803d", "#b91c1c", "#7c3aed"];
const TRAIN_COLOR = "#0f766e";
const VALIDATION_COLOR = "#2563eb";
const EPOCH_FIELDS = new Set(["epoch", "should_stop", "stop_reason"]);
// Study id -> the trial numbers ticked in its table: kept across pages, polls and a visit to
// a trial's page.
const picked = new Map();

/** The page for ``hash`` when it is a trial or comparison route (a function that renders it),
 * else null. */
function trialRoute(hash) {
  const one = hash.match(/^#\/studies\/(\d+)\/trials\/(\d+)$/);
  if (one) return () => renderTrial(Number(one[1]), Number(one[2]));
  const many = hash.match(/^#\/studies\/(\d+)\/compare\/(\d+(?:,\d+)*)$/);
  if (many) {
    const numbers = [...new Set(many[2].split(",").map(Number))];
    return () => renderCompare(Number(many[1]), numbers);
  }
  return null;
}

// -- shared pieces ------------------------------------------------------------------------------

/** A parameter's value as the API answered it: strings as they are, the rest as JSON. */
function paramText(value) {
  return typeof value === "string" ? value : JSON.stringify(value);
}

/** The metrics reported per epoch, paired train then validation: [["loss", ["loss",
 * "val_loss"]], ["accuracy", [...]]], in the order the API lists them. */
function metricGroups(epochs) {
  const names = [...new Set(epochs.flatMap((e) => Object.keys(e)))].filter((k) =>
    !EPOCH_FIELDS.has(k) && epochs.some((e) => typeof e[k] === "number"));
  const groups = new Map();
  for (const name of names) {
    const base = name.replace(/^val_/, "");
    if (!groups.has(base)) groups.set(base, []);
    groups.get(base).push(name);
  }
  for (const members of groups.values()) {
    members.sort((a, b) => Number(a.startsWith("val_")) - Number(b.startsWith("val_")));
  }
  return [...groups];
}

/** One metric's curve: the epochs that reported it. */
function curve(epochs, metric) {
  const points = epochs.filter((e) => typeof e[metric] === "number");
  return { x: points.map((e) => e.epoch), y: points.map((e) => e[metric]) };
}

function epochAxis(planned) {
  return { title: { text: "epoch" }, range: [0.8, planned + 0.2], dtick: planned <= 20 ? 1 : undefined };
}

function timestamp(iso) {
  return iso ? `${iso.replace("T", " ").slice(0, 19)} UTC` : "–";
}

/** The searched range of ``name`` as the spec wrote it ("" when the spec used the default
 * search space). */
function rangeText(spec, name) {
  const p = spec?.search_space?.[name];
  if (!p) return "";
  if (p.type === "categorical") return `one of ${p.choices.map(paramText).join(", ")}`;
  const step = p.step ? ` step ${paramText(p.step)}` : "";
  return `${p.log ? "log " : ""}[${paramText(p.low)}, ${paramText(p.high)}]${step}`;
}

/** Searched names first, in the search space's order, then the fixed ones, then any other. */
function paramNames(trials) {
  const names = [];
  for (const t of trials) for (const n of t.searched) if (!names.includes(n)) names.push(n);
  for (const t of trials) for (const n of t.fixed) if (!names.includes(n)) names.push(n);
  for (const t of trials) for (const n of Object.keys(t.params)) if (!names.includes(n)) names.push(n);
  return names;
}

function kindTag(searched) {
  return searched ? `<span class="tag tag-searched">searched</span>`
    : `<span class="tag tag-fixed">fixed</span>`;
}

/** Polls while ``trials`` are not all finished and page ``shown`` is (app.js's ``poll``). */
function pollWhileRunning(trials, shown, draw) {
  if (trials.every((t) => FINISHED.includes(t.state))) return;
  poll(shown, POLL_MS, async () => {
    if ((await draw()).every((t) => FINISHED.includes(t.state))) stopPolling();
  });
}

// -- one trial ----------------------------------------------------------------------------------

async function renderTrial(studyId, number) {
  const shown = shownPage;
  const [study, trial] = await Promise.all([
    api(`/studies/${studyId}`), api(`/studies/${studyId}/trials/${number}`)]);
  if (!showing(shown)) return;
  view().innerHTML = `<p><a id="back-to-study" href="#/studies/${studyId}">← ${esc(study.name)}</a></p>
    <h1>Trial ${trial.number} <span id="trial-state">${badge(trial.state)}</span></h1>
    <p id="trial-reason" class="muted"></p>
    <div id="trial-stats" class="card stats"></div>
    <div class="grid" id="trial-plots"></div>
    <div class="grid trial-tables">
      <div class="card"><h2>Parameters</h2><div class="table-wrap">
        <table id="trial-params"></table></div>
        <p class="muted">Searched: sampled for this trial from the search space. Fixed: set in
          the spec's model or training. Anything else takes the trainer's default.</p></div>
      <div class="card"><h2>Epochs</h2><div class="table-wrap"><table id="trial-epochs"></table></div></div>
    </div>`;
  const draw = async (t = null) => {
    t ??= await api(`/studies/${studyId}/trials/${number}`);
    if (!showing(shown)) return [t];
    drawTrialPage(study, t);
    await loadPlotly();
    drawTrialCurves(t);
    return [t];
  };
  await draw(trial);
  pollWhileRunning([trial], shown, draw);
}

function drawTrialPage(study, t) {
  $("#trial-state").innerHTML = badge(t.state);
  $("#trial-reason").textContent = t.reason || "";
  const took = t.duration_seconds ?? since(t.started_at, t.finished_at);
  const weights = t.parameters
    ? `${t.parameters.total.toLocaleString("en")} (${t.parameters.trainable.toLocaleString("en")} trainable)`
    : "–";
  const stat = (id, label, value) =>
    `<div><span class="muted">${esc(label)}</span><b id="${id}">${esc(value)}</b></div>`;
  $("#trial-stats").innerHTML = [
    stat("trial-value", study.objective.metric, t.value === null ? "–" : fmt(t.value)),
    stat("trial-epochs-run", "Epochs", `${t.epochs_run} / ${t.epochs_planned}`),
    stat("trial-worker", "Worker", t.worker_id || "–"),
    stat("trial-attempt", "Attempt", String(t.attempt)),
    stat("trial-started", "Started", timestamp(t.started_at)),
    stat("trial-ended", "Ended", timestamp(t.finished_at)),
    stat("trial-duration", "Duration", duration(took) || "–"),
    stat("trial-train-time", "Training", duration(t.train_seconds) || "–"),
    stat("trial-weights", "Weights", weights),
  ].join("");
  const searched = new Set(t.searched);
  $("#trial-params").innerHTML = `<thead><tr><th>parameter</th><th>value</th><th></th>
    <th>searched range</th></tr></thead><tbody>${paramNames([t]).map((name) => `
    <tr data-param="${esc(name)}" class="${searched.has(name) ? "searched" : "fixed"}">
      <th>${esc(name)}</th><td class="param-value">${esc(paramText(t.params[name]))}</td>
      <td>${kindTag(searched.has(name))}</td>
      <td class="muted">${esc(searched.has(name) ? rangeText(study.spec, name) : "")}</td></tr>`).join("")}
    </tbody>`;
  const metrics = metricGroups(t.epochs).flatMap(([, names]) => names);
  $("#trial-epochs").innerHTML = `<thead><tr><th>epoch</th>${metrics.map((m) =>
    `<th>${esc(m)}</th>`).join("")}<th>answer</th></tr></thead><tbody>${t.epochs.map((e) => `
    <tr><td>${e.epoch}</td>${metrics.map((m) => `<td>${fmt(e[m])}</td>`).join("")}
      <td class="answer ${e.should_stop ? "s-pruned" : "muted"}">${esc(e.should_stop
        ? e.stop_reason || "stop" : "go on")}</td></tr>`).join("") ||
    `<tr><td colspan="${metrics.length + 2}" class="muted">No epoch reported yet.</td></tr>`}</tbody>`;
}

function drawTrialCurves(t) {
  const groups = metricGroups(t.epochs);
  const container = $("#trial-plots");
  const wanted = groups.map(([base]) => base).join(",");
  if (container.dataset.metrics !== wanted) {
    container.dataset.metrics = wanted;
    container.innerHTML = groups.map(([base]) =>
      `<div class="card"><div id="trial-plot-${esc(base)}" class="plot"></div></div>`).join("") ||
      `<div class="card"><p class="muted">Curves appear with the first reported epoch.</p></div>`;
  }
  const last = t.epochs.length ? t.epochs[t.epochs.length - 1].epoch : 0;
  // A trial that ended before its planned epochs: a line where it stopped, saying why.
  const stopped = FINISHED.includes(t.state) && last > 0 && last < t.epochs_planned;
  for (const [base, names] of groups) {
    plot(`trial-plot-${base}`, names.map((m) => ({
      type: "scatter", mode: "lines+markers", name: m, ...curve(t.epochs, m),
      line: { color: m.startsWith("val_") ? VALIDATION_COLOR : TRAIN_COLOR, width: 2,
              dash: m.startsWith("val_") ? "solid" : "dot" },
      marker: { size: 7 }, hovertemplate: `${m}<br>epoch %{x}: %{y:.4f}<extra></extra>` })),
    { title: { text: `${base} per epoch: ${names.length > 1 ? "train and validation" : names[0]}` },
      xaxis: epochAxis(t.epochs_planned),
      yaxis: { title: { text: base } },
      shapes: stopped ? [{ type: "line", xref: "x", yref: "paper", x0: last, x1: last, y0: 0,
                           y1: 1, line: { color: "#d97706", dash: "dash", width: 1 } }] : [],
      annotations: stopped ? [{ xref: "x", yref: "paper", x: last, y: 1, xanchor: "left",
        yanchor: "top", showarrow: false, font: { color: "#b45309" },
        text: ` ${t.state} after epoch ${last} of ${t.epochs_planned}` }] : [] });
  }
}

// -- comparison ---------------------------------------------------------------------------------

async function renderCompare(studyId, numbers) {
  const shown = shownPage;
  if (numbers.length < COMPARE_MIN || numbers.length > COMPARE_MAX) {
    view().innerHTML = `<p><a href="#/studies/${studyId}">← back to the study</a></p>
      <p class="errors" id="compare-error">A comparison shows ${COMPARE_MIN} to ${COMPARE_MAX}
        trials; this link names ${numbers.length}.</p>`;
    return;
  }
  const load = () => Promise.all(numbers.map((n) => api(`/studies/${studyId}/trials/${n}`)));
  const [study, trials] = await Promise.all([api(`/studies/${studyId}`), load()]);
  if (!showing(shown)) return;
  view().innerHTML = `<p><a id="back-to-study" href="#/studies/${studyId}">← ${esc(study.name)}</a></p>
    <h1>Comparing trials ${numbers.join(", ")}</h1>
    <div class="grid" id="compare-plots"></div>
    <div class="card"><h2>Parameters side by side</h2>
      <p class="muted">Rows whose values differ are highlighted.</p>
      <div class="table-wrap"><table id="compare-params"></table></div></div>`;
  const draw = async (ts = null) => {
    ts ??= await load();
    if (!showing(shown)) return ts;
    drawCompareTable(study, ts);
    await loadPlotly();
    drawCompareCurves(ts);
    return ts;
  };
  await draw(trials);
  pollWhileRunning(trials, shown, draw);
}

function drawCompareTable(study, trials) {
  const head = trials.map((t, i) => `<th data-trial="${t.number}"><span class="swatch"
    style="background:${TRIAL_COLORS[i]}"></span><a href="#/studies/${study.id}/trials/${t.number}"
    >trial ${t.number}</a></th>`).join("");
  const row = (label, cells, cls = "", attrs = "") =>
    `<tr class="${cls}" ${attrs}><th>${label}</th>${cells.map((c) => `<td>${c}</td>`).join("")}</tr>`;
  const outcome = [
    row("state", trials.map((t) => badge(t.state)), "outcome"),
    row(esc(study.objective.metric), trials.map((t) => (t.value === null ? "–" : fmt(t.value))), "outcome"),
    row("epochs", trials.map((t) => `${t.epochs_run} / ${t.epochs_planned}`), "outcome"),
    row("duration", trials.map((t) => duration(t.duration_seconds) || "–"), "outcome"),
  ];
  const params = paramNames(trials).map((name) => {
    const texts = trials.map((t) => (name in t.params ? paramText(t.params[name]) : "–"));
    const searched = trials.some((t) => t.searched.includes(name));
    const differs = new Set(texts).size > 1;
    return row(`${esc(name)} ${kindTag(searched)}`, texts.map(esc),
               `${searched ? "searched" : "fixed"}${differs ? " differs" : ""}`,
               `data-param="${esc(name)}"`);
  });
  $("#compare-params").innerHTML = `<thead><tr><th></th>${head}</tr></thead>
    <tbody>${outcome.join("")}</tbody><tbody>${params.join("")}</tbody>`;
}

function drawCompareCurves(trials) {
  // Validation first (what the search optimizes), then train: one plot per metric.
  const groups = metricGroups(trials.flatMap((t) => t.epochs));
  const metrics = [...groups.map(([, n]) => n.filter((m) => m.startsWith("val_"))).flat(),
                   ...groups.map(([, n]) => n.filter((m) => !m.startsWith("val_"))).flat()];
  const container = $("#compare-plots");
  if (container.dataset.metrics !== metrics.join(",")) {
    container.dataset.metrics = metrics.join(",");
    container.innerHTML = metrics.map((m) =>
      `<div class="card"><div id="compare-plot-${esc(m)}" class="plot"></div></div>`).join("") ||
      `<div class="card"><p class="muted">Curves appear with the first reported epoch.</p></div>`;
  }
  const planned = Math.max(...trials.map((t) => t.epochs_planned));
  for (const m of metrics) {
    plot(`compare-plot-${m}`, trials.map((t, i) => ({
      type: "scatter", mode: "lines+markers", ...curve(t.epochs, m),
      name: `trial ${t.number}${t.state === "complete" ? "" : ` (${t.state})`}`,
      line: { color: TRIAL_COLORS[i], width: 2 }, marker: { size: 7 },
      hovertemplate: `trial ${t.number}<br>epoch %{x}: %{y:.4f}<extra></extra>` })),
    { title: { text: `${m} (${m.startsWith("val_") ? "validation" : "train"})` },
      xaxis: epochAxis(planned), yaxis: { title: { text: m } } });
  }
}

// -- the study's trial table: rows open their trial, checkboxes pick trials to compare -----------

/** Called by drawTrials() after each redraw of #trials. */
function wireTrialRows(studyId) {
  const table = $("#trials");
  if (!table) return;
  const chosen = picked.get(studyId) ?? new Set();
  picked.set(studyId, chosen);
  table.querySelector("thead tr")?.insertAdjacentHTML("afterbegin",
    `<th class="pick" title="pick ${COMPARE_MIN} to ${COMPARE_MAX} trials to compare">compare</th>`);
  for (const tr of table.querySelectorAll("tbody tr")) {
    const number = tr.dataset.number;
    if (number === undefined) {  // the "no trial yet" row
      const cell = tr.querySelector("td[colspan]");
      if (cell) cell.colSpan += 1;
      continue;
    }
    tr.classList.add("opens");
    tr.tabIndex = 0;
    tr.title = `open trial ${number}`;
    tr.insertAdjacentHTML("afterbegin", `<td class="pick"><input type="checkbox"
      aria-label="compare trial ${number}" data-pick="${number}"
      ${chosen.has(Number(number)) ? "checked" : ""}></td>`);
  }
  const open = (tr) => { location.hash = `#/studies/${studyId}/trials/${tr.dataset.number}`; };
  table.onclick = (event) => {
    const tr = event.target.closest("tbody tr[data-number]");
    if (!tr || event.target.closest("td.pick, a, button, input")) return;
    if (String(window.getSelection?.() ?? "")) return;  // selecting text, not opening
    open(tr);
  };
  table.onkeydown = (event) => {
    const tr = event.target.closest?.("tbody tr[data-number]");
    if (tr && event.target === tr && event.key === "Enter") open(tr);
  };
  table.onchange = (event) => {
    const box = event.target.closest("input[data-pick]");
    if (!box) return;
    if (box.checked) chosen.add(Number(box.dataset.pick));
    else chosen.delete(Number(box.dataset.pick));
    drawCompareBar(studyId);
  };
  drawCompareBar(studyId);
}

function drawCompareBar(studyId) {
  let bar = $("#compare-bar");
  if (!bar) {
    bar = Object.assign(document.createElement("div"), { id: "compare-bar", className: "toolbar" });
    bar.innerHTML = `<button id="compare" class="primary" type="button">Compare</button>
      <span id="compare-why" class="muted"></span>
      <button id="compare-clear" type="button">Clear</button>`;
    $("#trials").closest(".table-wrap").before(bar);
  }
  const chosen = [...(picked.get(studyId) ?? [])].sort((a, b) => a - b);
  const n = chosen.length;
  let why = `Trials ${chosen.join(", ")} picked.`;
  if (n === 0) why = `Tick ${COMPARE_MIN} to ${COMPARE_MAX} trials to compare them.`;
  else if (n < COMPARE_MIN) why = `Trial ${chosen[0]} picked: tick at least one more to compare.`;
  else if (n > COMPARE_MAX) why = `${n} trials picked: at most ${COMPARE_MAX} compare at once.`;
  const button = $("#compare");
  button.disabled = n < COMPARE_MIN || n > COMPARE_MAX;
  button.title = button.disabled ? why : `compare trials ${chosen.join(", ")}`;
  $("#compare-why").textContent = why;
  $("#compare-clear").hidden = n === 0;
  button.onclick = () => { location.hash = `#/studies/${studyId}/compare/${chosen.join(",")}`; };
  $("#compare-clear").onclick = () => {
    picked.get(studyId)?.clear();
    document.querySelectorAll("#trials input[data-pick]").forEach((box) => { box.checked = false; });
    drawCompareBar(studyId);
  };
}
