"""The dashboard in a real browser (Debian's chromium driven by Playwright) against a real API
with real workers. Screenshots land in build/screenshots (or $HPSEARCH_SCREENSHOTS)."""

from __future__ import annotations

import csv
import io
import itertools
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page, Route, sync_playwright

from tests.service.test_protocol import run_study
from tests.support import spec, wait_for

CHROMIUM = os.environ.get("HPSEARCH_CHROMIUM", "/usr/bin/chromium")
SHOTS = Path(
    os.environ.get("HPSEARCH_SCREENSHOTS", Path(__file__).parents[2] / "build" / "screenshots")
)
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not shutil.which(CHROMIUM) and not Path(CHROMIUM).exists():
        pytest.fail(f"the browser tests need chromium at {CHROMIUM} (make test installs it)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield b
        b.close()


class Tab:
    """A page that records console errors and failed requests, and takes screenshots."""

    def __init__(self, browser: Any, width: int = 1280, height: int = 900) -> None:
        self.context = browser.new_context(
            viewport={"width": width, "height": height}, accept_downloads=True
        )
        self.page: Page = self.context.new_page()
        self.errors: list[str] = []
        self.expected: list[str] = []
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("requestfailed", lambda r: self.errors.append(f"{r.url}: {r.failure}"))

    def expect_console_error(self, text: str) -> None:
        """Chromium logs every 4xx answer as a console error, the API's deliberate 422 too:
        declare it before causing it. Any other error still fails the test."""
        self.expected.append(text)

    def _console(self, message: Any) -> None:
        if message.type != "error":
            return
        for i, text in enumerate(self.expected):
            if text in message.text:
                del self.expected[i]
                return
        self.errors.append(message.text)

    def shot(self, name: str) -> Path:
        SHOTS.mkdir(parents=True, exist_ok=True)
        path = SHOTS / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path

    def close(self) -> None:
        self.context.close()


def test_launch_watch_prune_stop_and_download_in_a_browser(make_api, workers, browser) -> None:
    api = make_api("sqlite")
    workers(api.url, 2)
    tab = Tab(browser)
    page = tab.page
    page.goto(f"{api.url}/#/new")
    page.wait_for_selector("#launch")
    page.fill('[data-field="name"]', "browser-study")
    page.fill('[data-field="n_trials"]', "40")
    page.fill('[data-field="training.epochs"]', "4")
    page.fill('[data-field="model.hidden_units"]', "64")
    page.fill('[data-field="pruner.n_startup_trials"]', "2")
    page.fill('[data-field="sampler.seed"]', "3")

    # A bad range: the API's 422 shows next to the field it concerns.
    page.fill('[data-field="search_space.learning_rate.low"]', "0.5")
    tab.expect_console_error("status of 422")
    page.click("#launch")
    error = page.locator('.field-error[data-for="search_space.learning_rate.low"]')
    error.wait_for()
    wait_for(lambda: "must be below high" in error.inner_text(), 10, "the field error")
    assert "invalid" in (
        page.get_attribute('[data-field="search_space.learning_rate.low"]', "class") or ""
    )
    tab.shot("01-form-field-error")

    # Fixed, it launches and the page follows the study.
    page.fill('[data-field="search_space.learning_rate.low"]', "0.0001")
    page.click("#launch")
    page.wait_for_url("**/#/studies/*")
    study_id = int(page.url.rsplit("/", 1)[1])
    page.wait_for_selector("#trials tr[data-state]", timeout=120_000)
    assert page.inner_text("#study-status") in ("running", "queued")
    tab.shot("02-study-running")

    # Trials appear while it runs; a pruned trial's curve is cut short.
    def pruned_curve() -> list[int]:
        # The pruned trace holds one segment per pruned trial, separated by gaps (null).
        lengths: list[int] = page.evaluate(
            """() => (document.getElementById('plot-curves').data || [])
                 .filter(t => t.name === 'pruned')
                 .flatMap(t => t.x.join(',').split(',,').filter(s => s)
                 .map(s => s.split(',').filter(v => v !== '').length))"""
        )
        return lengths

    lengths = wait_for(pruned_curve, 180, "a pruned trial's curve")
    assert min(lengths) < 4
    assert int(page.inner_text("#count-pruned")) >= 1
    rows = page.locator("#trials tbody tr[data-state]").count()
    assert rows >= 2
    pruned_row = page.locator('#trials tr[data-state="pruned"]').first
    assert "pruned at epoch" in pruned_row.inner_text()
    tab.shot("03-pruned-curves")

    # Stop: no new trials start; the status says so.
    page.click("#stop")
    wait_for(lambda: page.inner_text("#study-status") == "stopped", 20, "the stopped status")
    assert page.is_disabled("#stop") and page.is_enabled("#resume")

    # CSV download: one row per trial.
    with page.expect_download() as download:
        page.click("#csv")
    text = Path(download.value.path()).read_text()
    table = list(csv.reader(io.StringIO(text)))
    assert table[0][:3] == ["number", "state", "val_accuracy"]
    assert "learning_rate" in table[0]
    api_count = api.http.get(f"/api/v1/studies/{study_id}/trials").json()["count"]
    assert len(table) - 1 == api_count

    # Best trial: parameters shown, copied as JSON.
    page.wait_for_selector("#best-params")
    page.click("#copy-best")
    page.wait_for_selector("#copied:text('copied')")
    tab.shot("04-stopped")
    assert tab.errors == []
    tab.close()

    # At 390 px: the study page, plots drawn, fits the width (tables scroll inside their box).
    narrow = Tab(browser, width=390, height=844)
    narrow.page.goto(f"{api.url}/#/studies/{study_id}")
    narrow.page.wait_for_selector("#trials tr[data-state]")
    for drawn in (
        "#plot-history .scatterlayer .point",
        "#plot-curves .scatterlayer .js-line",
        "#plot-parallel polyline.pc-line",
        "#plot-param-learning_rate .scatterlayer .point",
    ):
        narrow.page.wait_for_selector(drawn, timeout=60_000)
    # Importance: drawn, or the count still needed (with fewer than 5 complete trials).
    narrow.page.wait_for_selector("#plot-importance .main-svg, #plot-importance p", timeout=60_000)
    width = narrow.page.evaluate("document.documentElement.scrollWidth")
    assert width <= 390, width
    narrow.shot("05-study-390px")
    narrow.page.goto(f"{api.url}/#/")
    narrow.page.wait_for_selector(f'tr[data-study-id="{study_id}"]')
    assert narrow.page.evaluate("document.documentElement.scrollWidth") <= 390
    narrow.shot("06-list-390px")
    assert narrow.errors == []
    narrow.close()


def test_pasted_json_spec_launches_and_its_errors_show(make_api, browser) -> None:
    api = make_api("sqlite")
    tab = Tab(browser)
    page = tab.page
    page.goto(f"{api.url}/#/new")
    page.wait_for_selector("#spec-json")
    page.fill("#spec-json", '{"name": "pasted", "dataset": {"name": "digits"}, "n_trials": 0}')
    tab.expect_console_error("status of 422")
    page.click("#launch-json")
    page.wait_for_selector("#json-errors:has-text('n_trials')")
    page.fill("#spec-json", '{"name": "pasted", "dataset": {"name": "digits"}, "n_trials": 3}')
    page.click("#launch-json")
    page.wait_for_url("**/#/studies/*")
    page.wait_for_selector("#study-status")
    assert "pasted" in page.inner_text("h1")
    page.goto(f"{api.url}/#/")
    page.wait_for_selector("#studies tr[data-study-id]")
    assert "0 / 3" in page.inner_text("#studies")
    tab.shot("07-list")
    assert tab.errors == []
    tab.close()


def test_upload_a_dataset_in_the_form_and_launch_a_study_on_it(make_api, browser, tmp_path) -> None:
    from tests.service.test_datasets import good_csv, npz_bytes

    api = make_api("sqlite")
    bad = tmp_path / "bad.npz"
    bad.write_bytes(npz_bytes(x_train=[[1.0, float("nan")], [2.0, 3.0]], y_train=[0, 1]))
    good = tmp_path / "pets.csv"
    good.write_bytes(good_csv())
    tab = Tab(browser)
    page = tab.page
    page.goto(f"{api.url}/#/new")
    page.wait_for_selector("#upload-dataset")
    assert page.locator('[data-field="dataset"] optgroup[label="Uploaded"]').count() == 0

    # A bad file: the reason shows, nothing is added.
    page.set_input_files("#dataset-file", str(bad))
    tab.expect_console_error("status of 422")
    page.click("#upload-dataset")
    page.wait_for_selector("#upload-errors:has-text('NaN or infinite')")
    assert "file: x_train holds 1 NaN or infinite value(s)" in page.inner_text("#upload-errors")
    assert api.http.get("/api/v1/datasets").json()["count"] == 0

    # A good one joins the dataset list, selected; a study launched from the form trains on it.
    page.set_input_files("#dataset-file", str(good))
    page.fill("#dataset-label", "kind")
    page.click("#upload-dataset")
    page.wait_for_selector("#upload-status:has-text('2 classes')")
    ident = api.http.get("/api/v1/datasets").json()["data"][0]["id"]
    assert page.eval_on_selector('[data-field="dataset"]', "e => e.value") == ident
    assert "pets (120×5, 2 classes" in page.inner_text(
        '[data-field="dataset"] optgroup[label="Uploaded"]'
    )
    tab.shot("08-form-uploaded-dataset")
    page.fill('[data-field="name"]', "on-pets")
    page.click("#launch")
    page.wait_for_url("**/#/studies/*")
    study_id = int(page.url.rsplit("/", 1)[1])
    assert api.http.get(f"/api/v1/studies/{study_id}").json()["spec"]["dataset"] == {"id": ident}
    shown = api.http.get(f"/api/v1/datasets/{ident}").json()["studies"]
    assert [s["name"] for s in shown] == ["on-pets"]
    assert tab.errors == []
    tab.close()


def test_with_auth_on_the_dashboard_asks_for_a_user_token(make_api, browser) -> None:
    api = make_api("sqlite", HPSEARCH_AUTH="on")
    study = api.http.post("/api/v1/studies", json=spec("signed-in-study", n_trials=2)).json()
    worker_token = api.create_token("box", "worker")
    tab = Tab(browser)
    page = tab.page
    response = page.goto(f"{api.url}/")
    assert response is not None
    headers = response.headers
    assert "script-src 'self'" in headers["content-security-policy"]
    assert "frame-ancestors 'none'" in headers["content-security-policy"]
    assert headers["x-frame-options"] == "DENY"
    assert headers["x-content-type-options"] == "nosniff"
    page.wait_for_selector("#sign-in")
    assert page.is_hidden("#sign-out")
    tab.shot("10-sign-in")

    # A worker token, then a wrong one: each says why, next to the form.
    for token, reason, status in (
        (worker_token, "needs a user token", "403"),
        ("hpsu_wrong", "unknown, revoked or expired", "401"),
    ):
        tab.expect_console_error(f"status of {status}")
        page.fill("#token", token)
        page.click("#sign-in button[type=submit]")
        wait_for(lambda r=reason: r in page.inner_text("#sign-in-error"), 10, reason)

    page.fill("#token", api.token or "")
    page.click("#sign-in button[type=submit]")
    page.wait_for_selector(f"text={study['name']}")
    assert page.is_visible("#sign-out")
    # The token lives in an HttpOnly cookie: the page's scripts cannot read it.
    (cookie,) = tab.context.cookies()
    assert cookie["name"] == "hpsearch_session" and cookie["httpOnly"]
    assert cookie["sameSite"] == "Strict"
    assert api.token not in page.evaluate("document.cookie + JSON.stringify(localStorage)")
    tab.shot("11-signed-in")

    # The cookie also opens the links a browser follows by itself: the CSV and the API docs.
    page.goto(f"{api.url}/#/studies/{study['id']}")
    page.wait_for_selector("#csv")
    with page.expect_download() as download:
        page.click("#csv")
    assert Path(download.value.path()).read_text().startswith("number,state,val_accuracy")
    assert tab.context.request.get(f"{api.url}/openapi.json").status == 200

    before = len(tab.errors)
    page.click("#sign-out")
    page.wait_for_selector("#sign-in")
    # Signing out aborts the page's requests in flight, then reloads it (which aborts plotly.js
    # if it was still loading): aborted by design. Any other failure still counts.
    tab.errors[before:] = [e for e in tab.errors[before:] if not e.endswith("net::ERR_ABORTED")]
    assert "Signed out" in page.inner_text("#sign-in-error")
    assert tab.context.request.get(f"{api.url}/api/v1/studies").status == 401
    assert not tab.errors, tab.errors
    tab.close()


# Records every Content-Security-Policy violation of the page, from before its first script.
CSP_VIOLATIONS = """
window.__cspViolations = [];
document.addEventListener("securitypolicyviolation", (e) => window.__cspViolations.push(
  `${e.violatedDirective}: ${e.blockedURI} at ${e.sourceFile}:${e.lineNumber}`));
"""
# The marks that carry data in each plot of the page: plotly's markers, lines and bars, and the
# parallel coordinates' polylines. An empty plot (a WebGL trace the CSP stopped) still has its
# frame, .main-svg, but none of these.
DRAWN_MARKS = """() => {
  const drawn = (plot, sel) => [...plot.querySelectorAll(sel)].filter((e) =>
    (e.getAttribute(e.tagName === "polyline" ? "points" : "d") || "").length > 2).length;
  return Object.fromEntries([...document.querySelectorAll(".plot")].map((plot) => [plot.id, {
    points: drawn(plot, ".scatterlayer .point"),
    lines: drawn(plot, ".scatterlayer .js-line"),
    bars: drawn(plot, ".barlayer .bars .point path"),
    polylines: drawn(plot, "polyline.pc-line"),
  }]));
}"""
# The parallel coordinates' axes: name, tick labels and their heights.
PARALLEL_AXES = """() => [...document.querySelectorAll("#plot-parallel .pc-axis")].map((axis) => ({
  name: axis.querySelector(".pc-name").textContent,
  ticks: [...axis.querySelectorAll("text:not(.pc-name)")].map((t) =>
    [t.textContent, Number(t.getAttribute("y"))]),
}))"""

EVERY_PLOT_STUDY = spec(
    "every-plot",
    n_trials=20,
    training={"epochs": 3, "optimizer": "sgd"},
    search_space={
        "learning_rate": {"type": "float", "low": 1e-3, "high": 0.3, "log": True},
        "dropout": {"type": "float", "low": 0.0, "high": 0.5},
        "batch_size": {"type": "int", "low": 16, "high": 64},
        "clip_mode": {"type": "categorical", "choices": ["value", "norm"]},
        "clip_threshold": {"type": "float", "low": 0.1, "high": 10.0, "log": True},
    },
    pruner={"type": "median", "n_startup_trials": 6, "n_warmup_steps": 1},
)


def test_every_plot_of_a_finished_study_draws_its_trials_under_the_csp(
    make_api, browser, tmp_path
) -> None:
    api = make_api("sqlite")
    created = api.http.post("/api/v1/studies", json=EVERY_PLOT_STUDY)
    assert created.status_code == 201, created.text
    study_id = created.json()["id"]
    assert run_study(api, "every-plot-worker") == 20  # fake training: the plots are the point
    analysis = api.http.get(f"/api/v1/studies/{study_id}/analysis").json()
    importance = api.http.get(f"/api/v1/studies/{study_id}/importance").json()
    trials, metric = analysis["trials"], analysis["objective"]["metric"]
    finished = [i for i, v in enumerate(trials["value"]) if v is not None]
    complete = [i for i in finished if trials["state"][i] == "complete"]
    assert len(finished) >= 18 and len(complete) >= 5 and importance["ready"], trials["state"]
    names = [p["name"] for p in analysis["searched"]]
    assert names == list(EVERY_PLOT_STUDY["search_space"])

    tab = Tab(browser, width=1400, height=900)
    page = tab.page
    page.add_init_script(CSP_VIOLATIONS)
    page.goto(f"{api.url}/#/studies/{study_id}")
    # Every plot of the page, each with one mark per trial (or epoch, or parameter) it shows.
    curves = analysis["curves"]
    expected = {
        "plot-history": {"points": len(finished), "lines": 1},  # and the best-so-far line
        "plot-curves": {
            "points": sum(len(c["values"]) for c in curves),
            "lines": len(curves),  # one line per trial
        },
        "plot-parallel": {"polylines": len(complete)},
        "plot-importance": {"bars": len(importance["importances"])},
        **{f"plot-param-{name}": {"points": len(finished)} for name in names},
    }
    # Each plot draws in one go: once every one shows a mark, each has drawn all of its own.
    deadline, marks = time.monotonic() + 60, {}
    while time.monotonic() < deadline:
        marks = page.evaluate(DRAWN_MARKS)
        if set(marks) == set(expected) and all(any(m.values()) for m in marks.values()):
            break
        page.wait_for_timeout(300)
    violations = page.evaluate("window.__cspViolations")
    drawn = {
        plot: {k: marks.get(plot, {}).get(k, 0) for k in want} for plot, want in expected.items()
    }
    assert drawn == expected, f"CSP violations: {violations}"
    assert len(importance["importances"]) == len(names)

    # Log axes where the search is log-scaled; a categorical parameter shows its choices.
    axis_types = page.evaluate(
        "(names) => names.map((n) => document.getElementById('plot-param-' + n).layout.xaxis.type)",
        names,
    )
    assert axis_types == ["log", "linear", "linear", "category", "log"]
    ticks = page.eval_on_selector_all(
        "#plot-param-clip_mode .xtick text", "ts => ts.map(t => t.textContent)"
    )
    assert ticks == ["value", "norm"]
    # Parallel coordinates: one axis per searched parameter, then the objective; the log-scaled
    # learning rate has its decades equally spaced.
    axes = page.evaluate(PARALLEL_AXES)
    assert [a["name"] for a in axes] == [*names, metric]
    assert [text for text, _ in axes[3]["ticks"]] == ["value", "norm"]
    decades = axes[0]["ticks"]
    assert [float(text) for text, _ in decades] == [0.001, 0.01, 0.1]
    gaps = [a[1] - b[1] for a, b in itertools.pairwise(decades)]
    assert max(gaps) - min(gaps) < 1, decades
    colors = page.eval_on_selector_all(
        "#plot-parallel .pc-line", "ls => new Set(ls.map(l => l.getAttribute('stroke'))).size"
    )
    assert colors > 1  # colored by the objective

    assert violations == [] and page.evaluate("window.__cspViolations") == []
    assert tab.errors == []
    path = tmp_path / "study-every-plot.png"
    page.screenshot(path=str(path), full_page=True)
    SHOTS.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(path, SHOTS / "12-study-every-plot.png")
    print(f"screenshot: {path} and {SHOTS / '12-study-every-plot.png'}")
    tab.close()


def test_signing_out_while_a_poll_is_in_flight_logs_no_error(make_api, browser) -> None:
    api = make_api("sqlite", HPSEARCH_AUTH="on")
    study = api.http.post("/api/v1/studies", json=spec("poll-at-sign-out", n_trials=2)).json()
    tab = Tab(browser)
    page = tab.page
    page.goto(f"{api.url}/")
    page.fill("#token", api.token or "")
    page.click("#sign-in button[type=submit]")
    page.wait_for_selector(f"text={study['name']}")  # the studies list, drawn once signed in
    page.goto(f"{api.url}/#/studies/{study['id']}")
    page.wait_for_selector("#study-status")

    # The page's next poll of the study is held on its way to the service, and goes on only once
    # the service has ended the session: it would be answered 401, an error in the console,
    # unless the page dropped it before signing out.
    held: list[Route] = []

    def hold(route: Route) -> None:
        held.append(route)

    page.route(f"**/api/v1/studies/{study['id']}", hold, times=1)
    wait_for(lambda: page.wait_for_timeout(50) or held, 10, "the page's next poll")

    def end_the_session_then_release_the_poll(route: Route) -> None:
        if route.request.method != "DELETE":
            route.continue_()
            return
        ended = route.fetch()
        held[0].continue_()
        held[0].request.response()  # its answer, or None when the page dropped it
        route.fulfill(response=ended)

    page.route("**/api/v1/session", end_the_session_then_release_the_poll)
    answers: list[tuple[str, int]] = []
    page.on("response", lambda r: answers.append((r.request.method + " " + r.url, r.status)))
    failed: list[str] = []
    page.on("requestfailed", lambda r: failed.append(f"{r.url} {r.failure}"))
    page.click("#sign-out")
    page.wait_for_selector("#sign-in")
    assert "Signed out" in page.inner_text("#sign-in-error")
    assert [a for a in answers if a[1] == 401] == []
    poll = f"{api.url}/api/v1/studies/{study['id']}"
    assert f"{poll} net::ERR_ABORTED" in failed, failed  # dropped by the page, not answered
    assert [e for e in tab.errors if not e.endswith("net::ERR_ABORTED")] == []
    tab.close()


def test_a_page_left_while_it_loads_draws_nothing_over_the_next_one(make_api, browser) -> None:
    """The studies list is left for a study before its first answer came: that late answer must
    not draw the list over the study's page, nor leave the list's poll running."""
    api = make_api("sqlite")
    study = api.http.post("/api/v1/studies", json=spec("left-while-loading", n_trials=2)).json()
    tab = Tab(browser)
    page = tab.page
    held: list[Route] = []

    def hold(route: Route) -> None:
        held.append(route)

    page.route("**/api/v1/studies?offset=0*", hold, times=1)
    page.goto(f"{api.url}/")
    wait_for(lambda: page.wait_for_timeout(50) or held, 10, "the list's first request")

    page.evaluate(f"location.hash = '#/studies/{study['id']}'")
    page.wait_for_selector("#study-status")
    lists: list[str] = []
    page.on("request", lambda r: lists.append(r.url) if "/api/v1/studies?offset" in r.url else 0)
    held[0].continue_()
    page.wait_for_timeout(4000)  # the list polls every 3 s

    assert page.query_selector("#study-status") is not None, page.inner_text("#view")[:300]
    assert page.query_selector("#studies") is None  # the list's table was not drawn over it
    assert lists == []  # and the list does not poll behind the study's page
    assert study["name"] in page.inner_text("#study-head")
    assert tab.errors == []
    tab.close()
