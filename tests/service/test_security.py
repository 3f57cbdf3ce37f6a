"""What the API exposes besides its routes: no file outside its data directory, no pickle, CORS
closed unless configured, the headers every answer carries, what a worker token reaches, and
where a cookie-authenticated state change may come from."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.service import test_dashboard
from tests.service.test_dashboard import Tab
from tests.service.test_datasets import good_npz
from tests.service.test_protocol import FakeWorker
from tests.support import Api, spec, start_secured_api

browser = test_dashboard.browser  # Chromium, as the dashboard's tests start it

ROOT = Path(__file__).parents[2]


def test_no_path_reaches_outside_the_data_directory(make_api: Any) -> None:
    api: Api = make_api("sqlite")
    secret = api.data_dir.parent / "secret.txt"
    secret.write_text("do not serve me")
    attempts = [
        "/static/../../secret.txt",
        "/static/%2e%2e/%2e%2e/secret.txt",
        "/static/..%2f..%2fsecret.txt",
        "/static/vendor/..%2f..%2f..%2fetc%2fpasswd",
        "/api/v1/datasets/..%2f..%2fsecret.txt/content",
        "/api/v1/datasets/ds_0123456789abcdef%2f..%2f..%2fsecret.txt/content",
        "/static/app.js%00.txt",
    ]
    for path in attempts:
        with httpx.Client(base_url=api.url) as raw:
            response = raw.send(raw.build_request("GET", api.url + path))
        assert response.status_code in (404, 422), (path, response.status_code)
        assert "do not serve me" not in response.text and "root:" not in response.text
    # A spec cannot name a file either: only bundled datasets and uploads, by id.
    refused = api.http.post(
        "/api/v1/studies",
        json={
            "name": "by-path",
            "dataset": {"path": str(secret.with_suffix(".npz"))},
            "n_trials": 1,
        },
    )
    assert refused.status_code == 422
    assert {
        "field": "dataset.path",
        "reason": "files are not read by path through the API: name a built-in dataset, "
        "or upload the file and give its id",
    } in refused.json()["errors"]


def test_cors_is_closed_unless_origins_are_configured(make_api: Any) -> None:
    preflight = {
        "Origin": "https://dashboards.example",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type",
    }
    closed: Api = make_api("sqlite")
    answer = closed.http.options("/api/v1/studies", headers=preflight)
    assert "access-control-allow-origin" not in answer.headers
    get = closed.http.get("/api/v1/studies", headers={"Origin": "https://dashboards.example"})
    assert "access-control-allow-origin" not in get.headers

    opened: Api = make_api("postgresql", HPSEARCH_CORS_ORIGINS='["https://dashboards.example"]')
    answer = opened.http.options("/api/v1/studies", headers=preflight)
    assert answer.status_code == 200
    assert answer.headers["access-control-allow-origin"] == "https://dashboards.example"
    other = opened.http.options(
        "/api/v1/studies", headers={**preflight, "Origin": "https://elsewhere.example"}
    )
    assert "access-control-allow-origin" not in other.headers


def test_every_answer_carries_the_security_headers(make_api: Any) -> None:
    api: Api = make_api("sqlite")
    for path in ("/healthz", "/api/v1/studies", "/api/v1/studies/999", "/", "/static/app.js"):
        headers = api.http.get(path).headers
        assert headers["x-content-type-options"] == "nosniff", path
        assert headers["x-frame-options"] == "DENY", path
        assert headers["referrer-policy"] == "no-referrer", path
    page = api.http.get("/").headers["content-security-policy"]
    assert "default-src 'self'" in page and "script-src 'self'" in page
    assert "'unsafe-eval'" not in page and "frame-ancestors 'none'" in page


def test_no_pickle_anywhere_in_the_code() -> None:
    """Data crosses processes and the network as JSON, .npz (pickle refused) or CSV only.
    (ruff's S301/S302 rules also reject pickle and marshal calls.)"""
    banned = re.compile(
        r"^\s*(import|from)\s+(pickle|cPickle|dill|cloudpickle|joblib|shelve|marshal)\b"
        r"|allow_pickle\s*=\s*True"
        # A Connection's send/recv pickle; its *_bytes do not (trainer.child's JSON send is fine).
        r"|(?<!child_protocol)\.(send|recv)\("
        r"|safe_mode\s*=\s*False",
        re.MULTILINE,
    )
    offenders = [
        f"{path.relative_to(ROOT)}: {match.group(0).strip()}"
        for folder in ("hpsearch", "service", "trainer", "benchmarks")
        for path in (ROOT / folder).rglob("*.py")
        for match in banned.finditer(path.read_text())
    ]
    assert not offenders, offenders


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """An API with auth on (PostgreSQL, as on many machines) and a user token."""
    server, drop = start_secured_api("postgresql", tmp_path_factory.mktemp("security"))
    yield server
    server.stop()
    drop()


def test_a_worker_token_fetches_only_the_datasets_of_trials_leased_now(secured: Api) -> None:
    """Issue 16, finding 8: a worker token downloaded any dataset."""
    used, other = (
        secured.http.post("/api/v1/datasets", files={"file": (f"{n}.npz", good_npz(seed=s))})
        for n, s in (("used", 31), ("other", 32))
    )
    used_id, other_id = used.json()["id"], other.json()["id"]
    worker = FakeWorker(secured.url, "scoped-worker")
    worker.http.headers["Authorization"] = f"Bearer {secured.create_token('box', 'worker')}"

    def fetch(ident: str) -> httpx.Response:
        return worker.http.get(f"/api/v1/datasets/{ident}/content")

    refused = fetch(used_id)  # no study trains on it yet
    assert refused.status_code == 404
    assert "no trial leased now trains on dataset" in refused.json()["detail"]
    s = secured.http.post(
        "/api/v1/studies", json=spec("scoped", dataset={"id": used_id}, n_trials=1)
    )
    assert s.status_code == 201, s.text
    assert fetch(used_id).status_code == 404  # queued: no trial leased yet

    trial = worker.ask()
    assert trial is not None and trial["dataset_file"]["id"] == used_id
    got = worker.http.get(trial["dataset_file"]["content_path"])
    assert got.status_code == 200 and got.content == good_npz(seed=31)
    assert fetch(other_id).status_code == 404  # another dataset: still out of reach

    assert worker.tell(trial).status_code == 200
    assert fetch(used_id).status_code == 404  # the trial is over
    # A user token reads every dataset, as before.
    assert secured.http.get(f"/api/v1/datasets/{other_id}/content").status_code == 200


def test_a_cookie_authenticated_state_change_must_come_from_this_origin(secured: Api) -> None:
    """Issue 16, finding 8: the Origin check ignored the scheme, and a state change that carried
    the session cookie but no Origin was accepted."""
    page = httpx.Client(base_url=secured.url)
    assert page.post("/api/v1/session", json={"token": secured.token}).status_code == 204
    port = secured.port
    stop = "/api/v1/studies/999999/stop"  # allowed: 404 (no such study); refused: 403

    def answer(headers: dict[str, str]) -> int:
        return page.post(stop, headers=headers).status_code

    assert answer({"Origin": f"http://127.0.0.1:{port}"}) == 404
    assert answer({"Sec-Fetch-Site": "same-origin"}) == 404
    for origin in (
        f"https://127.0.0.1:{port}",  # another scheme
        f"http://127.0.0.1:{port + 1}",  # another port
        f"http://localhost:{port}",  # another host
        "null",
    ):
        refused = page.post(stop, headers={"Origin": origin})
        assert refused.status_code == 403, origin
        assert f"cross-site request from {origin} refused" in refused.json()["detail"]
    for headers in ({}, {"Sec-Fetch-Site": "cross-site"}, {"Sec-Fetch-Site": "same-site"}):
        refused = page.post(stop, headers=headers)
        assert refused.status_code == 403, headers
        assert "needs an Origin header" in refused.json()["detail"]
    # A bearer token is no cookie: scripts and the command line are unchanged.
    assert secured.http.post(stop, headers={"Origin": "https://evil.example"}).status_code == 404
    assert page.delete("/api/v1/session").status_code == 204


def test_the_dashboards_own_state_changes_pass_the_origin_check(secured: Api, browser) -> None:
    """What Chromium sends with the page's requests (Origin, Sec-Fetch-Site) passes; the same
    request from a script without them does not (the test above)."""
    tab = Tab(browser)
    page = tab.page
    page.goto(f"{secured.url}/")
    page.fill("#token", secured.token or "")
    page.click("#sign-in button[type=submit]")
    page.wait_for_selector("#sign-out", state="visible")
    tab.expect_console_error("status of 404")
    status = page.evaluate(
        "async () => (await fetch('/api/v1/studies/999999/stop', {method: 'POST'})).status"
    )
    assert status == 404  # through the origin check to the route: no such study
    uploaded = page.evaluate(
        """async () => {
             const form = new FormData();
             form.append("file", new Blob(["a,label\\n1,0\\n2,1\\n3,0\\n"]), "page.csv");
             const r = await fetch("/api/v1/datasets", {method: "POST", body: form});
             return [r.status, (await r.json()).name];
           }"""
    )
    assert uploaded == [201, "page"]
    assert tab.errors == []
    tab.close()
