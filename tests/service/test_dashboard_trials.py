"""The dashboard's trial page and trial comparison in a real browser (chromium, Playwright)
against a real API, fed by protocol clients that report made-up accuracies (the pages read the
API, never the training), and the trial answer they read. Screenshots land in
build/screenshots (or $HPSEARCH_SCREENSHOTS)."""

from __future__ import annotations

import json
from typing import Any

from tests.service import test_dashboard
from tests.service.test_dashboard import Tab
from tests.service.test_protocol import FakeWorker, run_study
from tests.support import spec, wait_for

browser = test_dashboard.browser  # the dashboard tests' chromium, a fixture of this module too

# Counts the page's Content-Security-Policy violations from the first script on.
COUNT_CSP_VIOLATIONS = """
window.__cspViolations = [];
document.addEventListener("securitypolicyviolation",
  (e) => window.__cspViolations.push(`${e.violatedDirective}: ${e.blockedURI}`));
"""

# Each plotly trace of the plot in element ID as drawn: its name, its x values, and the number
# of points (markers) in its SVG group, which only exist once plotly drew them.
DRAWN_TRACES = """(id) => {
  const el = document.getElementById(id);
  if (!el || !el.data) return null;
  const groups = el.querySelectorAll(".scatterlayer .trace");
  return el.data.map((t, i) => ({
    name: t.name, type: t.type, x: Array.from(t.x),
    points: groups[i] ? groups[i].querySelectorAll(".points path.point").length : 0,
    lines: groups[i] ? groups[i].querySelectorAll("path.js-line").length : 0,
  }));
}"""


def drawn(page: Any, plot_id: str, expected: int) -> list[dict[str, Any]]:
    """The traces of ``plot_id`` once ``expected`` of them are drawn with their points."""

    def ready() -> list[dict[str, Any]] | None:
        traces: list[dict[str, Any]] | None = page.evaluate(DRAWN_TRACES, plot_id)
        if traces and len(traces) == expected and all(t["points"] for t in traces):
            return traces
        return None

    result: list[dict[str, Any]] = wait_for(ready, 60, f"the traces of #{plot_id}")
    return result


def shown(value: str, reported: Any) -> bool:
    """Whether a cell's text is ``reported``, the value as the API answered it."""
    return value == reported if isinstance(reported, str) else json.loads(value) == reported


def test_trial_answer_says_which_params_were_searched_and_which_fixed(api) -> None:
    body = spec(
        "searched-and-fixed",
        n_trials=1,
        model={"hidden_units": [8], "activation": "tanh"},
        training={"epochs": 6, "batch_size": 16, "optimizer": "adam"},
        search_space={
            "learning_rate": {"type": "float", "low": 1e-3, "high": 1e-1, "log": True},
            "dropout": {"type": "float", "low": 0.0, "high": 0.3},
        },
    )
    created = api.http.post("/api/v1/studies", json=body)
    assert created.status_code == 201, created.text
    study = created.json()
    worker = FakeWorker(api.url, "searched-fixed")
    trial = worker.ask()
    assert trial is not None and trial["study_id"] == study["id"]
    worker.report(trial, 1, 0.6)
    worker.tell(trial, value=0.6)

    detail = api.http.get(f"/api/v1/studies/{study['id']}/trials/{trial['number']}").json()
    assert detail["searched"] == ["learning_rate", "dropout"]
    assert detail["fixed"] == ["hidden_units", "activation", "batch_size", "optimizer"]
    assert set(detail["params"]) == {*detail["searched"], *detail["fixed"]}
    assert detail["params"]["hidden_units"] == [8] and detail["params"]["optimizer"] == "adam"
    assert 1e-3 <= detail["params"]["learning_rate"] <= 1e-1
    assert detail["epochs_planned"] == 6 and detail["epochs_run"] == 1
    assert [e["val_accuracy"] for e in detail["epochs"]] == [0.6]
    # What was there before is still there, unchanged.
    assert detail["state"] == "complete" and detail["value"] == 0.6
    assert detail["worker_id"] == "searched-fixed" and detail["started_at"]

    # The OpenAPI document describes the answer, the new fields too.
    schemas = api.http.get("/openapi.json").json()["components"]["schemas"]
    operation = api.http.get("/openapi.json").json()["paths"][
        "/api/v1/studies/{study_id}/trials/{number}"
    ]["get"]
    answer = operation["responses"]["200"]["content"]["application/json"]["schema"]
    assert answer == {"$ref": "#/components/schemas/TrialDetail"}
    fields = schemas["TrialDetail"]["properties"]
    assert {"searched", "fixed", "epochs_planned", "epochs", "started_at"} <= set(fields)
    assert "search space" in fields["searched"]["description"]
    assert set(detail) == set(fields)


def test_a_trial_opens_from_its_row_and_two_trials_compare_in_a_browser(make_api, browser) -> None:
    api = make_api("sqlite")
    body = spec(
        "trial-pages",
        n_trials=10,
        training={"epochs": 4, "batch_size": 32, "optimizer": "sgd"},
        search_space={
            "learning_rate": {"type": "float", "low": 1e-4, "high": 0.5, "log": True},
            "dropout": {"type": "float", "low": 0.0, "high": 0.5},
        },
        pruner={"type": "median", "n_startup_trials": 2, "n_warmup_steps": 0},
        sampler={"type": "random", "seed": 7},
    )
    created = api.http.post("/api/v1/studies", json=body)
    assert created.status_code == 201, created.text
    study_id = created.json()["id"]
    assert run_study(api, "trial-pages-worker") == 10  # fake training: the pages are the point
    listed = api.http.get(f"/api/v1/studies/{study_id}/trials?limit=100").json()["data"]
    pruned = [t["number"] for t in listed if t["state"] == "pruned"]
    complete = [t["number"] for t in listed if t["state"] == "complete"]
    assert pruned and complete, [(t["number"], t["state"]) for t in listed]
    shown_trial = pruned[0]
    detail = api.http.get(f"/api/v1/studies/{study_id}/trials/{shown_trial}").json()
    epochs = len(detail["epochs"])
    assert 1 <= epochs < detail["epochs_planned"] == 4

    tab = Tab(browser, width=1400, height=1000)
    page = tab.page
    page.add_init_script(COUNT_CSP_VIOLATIONS)
    page.goto(f"{api.url}/#/studies/{study_id}")
    row = page.locator(f'#trials tr[data-number="{shown_trial}"]')
    row.wait_for()
    assert page.is_disabled("#compare")
    assert "Tick 2 to 5 trials" in page.inner_text("#compare-why")

    # Clicking the row (anywhere but its checkbox) opens the trial at its own URL.
    row.locator("td.reason").click()
    page.wait_for_url(f"**/#/studies/{study_id}/trials/{shown_trial}")
    page.wait_for_selector("#trial-params tr[data-param]")
    assert page.inner_text("h1").startswith(f"Trial {shown_trial}")
    assert page.inner_text("#trial-state") == "pruned"
    assert page.inner_text("#trial-reason") == detail["reason"]
    assert "pruned at epoch" in detail["reason"]
    assert page.inner_text("#trial-worker") == detail["worker_id"]
    assert page.inner_text("#trial-epochs-run") == f"{epochs} / 4"
    assert page.inner_text("#trial-started") == detail["started_at"][:19].replace("T", " ") + " UTC"
    assert page.inner_text("#trial-ended") == detail["finished_at"][:19].replace("T", " ") + " UTC"
    assert page.inner_text("#trial-duration").endswith(" s")

    # Every parameter, valued as the API reports it; searched ones marked apart from fixed ones.
    rows = page.eval_on_selector_all(
        "#trial-params tbody tr",
        """rows => rows.map(r => ({name: r.dataset.param, kind: r.className,
             value: r.querySelector('.param-value').textContent,
             tag: r.querySelector('.tag').textContent}))""",
    )
    assert [r["name"] for r in rows] == detail["searched"] + detail["fixed"]
    assert detail["searched"] == ["learning_rate", "dropout"]
    assert set(detail["fixed"]) == {"hidden_units", "batch_norm", "batch_size", "optimizer"}
    for r in rows:
        kind = "searched" if r["name"] in detail["searched"] else "fixed"
        assert r["kind"] == kind and r["tag"] == kind, r
        assert shown(r["value"], detail["params"][r["name"]]), (r, detail["params"])
    searched_range = page.inner_text('#trial-params tr[data-param="learning_rate"]')
    assert "log [0.0001, 0.5]" in searched_range

    # Its curves: loss and accuracy, train and validation, one point per reported epoch; they
    # stop where the trial was pruned, short of the planned epochs.
    for plot_id, metrics in (
        ("trial-plot-loss", ["loss", "val_loss"]),
        ("trial-plot-accuracy", ["accuracy", "val_accuracy"]),
    ):
        traces = drawn(page, plot_id, 2)
        assert [t["name"] for t in traces] == metrics
        for t in traces:
            assert t["type"] == "scatter"
            assert t["points"] == epochs and t["lines"] == 1, t
            assert t["x"] == [e["epoch"] for e in detail["epochs"]] == list(range(1, epochs + 1))
        assert f"pruned after epoch {epochs} of 4" in page.inner_text(f"#{plot_id}")
    epoch_rows = page.locator("#trial-epochs tbody tr")
    assert epoch_rows.count() == epochs
    assert "pruned at epoch" in epoch_rows.nth(epochs - 1).inner_text()
    tab.shot("20-trial-page-1400px")
    # A reload shows the same page: the URL is the trial's.
    page.reload()
    drawn(page, "trial-plot-loss", 2)
    assert page.inner_text("h1").startswith(f"Trial {shown_trial}")

    # Back to the study; pick two trials, compare them.
    page.click("#back-to-study")
    page.wait_for_url(f"**/#/studies/{study_id}")
    other = complete[0]
    page.locator(f'#trials input[data-pick="{shown_trial}"]').check()
    assert page.url.endswith(f"#/studies/{study_id}")  # ticking does not open the trial
    assert page.is_disabled("#compare")
    assert "tick at least one more" in page.inner_text("#compare-why")
    page.locator(f'#trials input[data-pick="{other}"]').check()
    assert page.is_enabled("#compare")
    numbers = sorted([shown_trial, other])
    assert page.inner_text("#compare-why") == f"Trials {numbers[0]}, {numbers[1]} picked."
    tab.shot("22-trials-picked-1400px")
    page.click("#compare")
    page.wait_for_url(f"**/#/studies/{study_id}/compare/{numbers[0]},{numbers[1]}")
    compared = {n: api.http.get(f"/api/v1/studies/{study_id}/trials/{n}").json() for n in numbers}

    # One trace per trial per metric, each with one point per epoch that trial ran.
    for metric in ("val_loss", "val_accuracy", "loss", "accuracy"):
        traces = drawn(page, f"compare-plot-{metric}", 2)
        for t, n in zip(traces, numbers, strict=True):
            suffix = "" if compared[n]["state"] == "complete" else f" ({compared[n]['state']})"
            assert t["name"] == f"trial {n}{suffix}"
            assert t["type"] == "scatter" and t["lines"] == 1
            assert t["points"] == len(compared[n]["epochs"]), (metric, n, t)
        legend = page.text_content(f"#compare-plot-{metric} .legend") or ""
        assert f"trial {numbers[0]}" in legend and f"trial {numbers[1]}" in legend
    assert len(compared[shown_trial]["epochs"]) < len(compared[other]["epochs"]) == 4

    # Parameters side by side, as the API reports them; the rows that differ are highlighted.
    header = page.eval_on_selector_all(
        "#compare-params thead th[data-trial]", "ths => ths.map(t => t.dataset.trial)"
    )
    assert header == [str(n) for n in numbers]
    params = page.eval_on_selector_all(
        "#compare-params tr[data-param]",
        """rows => rows.map(r => ({name: r.dataset.param, cls: r.className,
             cells: Array.from(r.querySelectorAll('td')).map(td => td.textContent)}))""",
    )
    assert [p["name"] for p in params] == detail["searched"] + detail["fixed"]
    for p in params:
        values = [compared[n]["params"][p["name"]] for n in numbers]
        assert all(shown(c, v) for c, v in zip(p["cells"], values, strict=True)), (p, values)
        assert ("differs" in p["cls"].split()) == (values[0] != values[1]), p
    differing = {p["name"] for p in params if "differs" in p["cls"].split()}
    assert differing == {"learning_rate", "dropout"}
    tab.shot("21-compare-1400px")

    # A link that names one trial, and one to a trial that does not exist, say what is wrong.
    page.goto(f"{api.url}/#/studies/{study_id}/compare/{other}")
    page.wait_for_selector("#compare-error")
    assert "2 to 5 trials; this link names 1" in page.inner_text("#compare-error")
    tab.expect_console_error("status of 404")
    page.goto(f"{api.url}/#/studies/{study_id}/trials/999")
    page.wait_for_selector(".errors:has-text('no trial number 999')")

    assert page.evaluate("window.__cspViolations") == []
    assert tab.errors == []
    tab.close()


def test_a_running_trials_page_follows_its_epochs_until_it_ends(make_api, browser) -> None:
    api = make_api("sqlite", HPSEARCH_LEASE_SECONDS="120")
    created = api.http.post("/api/v1/studies", json=spec("live-trial", n_trials=1))
    assert created.status_code == 201, created.text
    worker = FakeWorker(api.url, "live")
    trial = worker.ask()
    assert trial is not None
    assert worker.report(trial, 1, 0.4).status_code == 200

    tab = Tab(browser, width=1400, height=1000)
    page = tab.page
    page.add_init_script(COUNT_CSP_VIOLATIONS)
    page.goto(f"{api.url}/#/studies/{trial['study_id']}/trials/{trial['number']}")
    assert [t["points"] for t in drawn(page, "trial-plot-accuracy", 2)] == [1, 1]
    assert page.inner_text("#trial-state") == "running"
    assert page.inner_text("#trial-epochs-run") == "1 / 3"

    # Each new epoch shows up on the open page, and so does the end of the trial.
    assert worker.report(trial, 2, 0.5).status_code == 200
    wait_for(
        lambda: [t["points"] for t in drawn(page, "trial-plot-accuracy", 2)] == [2, 2],
        20,
        "the second epoch on the page",
    )
    assert page.inner_text("#trial-epochs-run") == "2 / 3"
    assert worker.tell(trial, value=0.5, epochs=2).status_code == 200
    wait_for(lambda: page.inner_text("#trial-state") == "complete", 20, "the complete state")
    assert page.inner_text("#trial-epochs-run") == "2 / 3"
    assert page.inner_text("#trial-value") == "0.5000"
    assert page.evaluate("window.__cspViolations") == []
    assert tab.errors == []
    tab.close()
