"""What the API exposes besides its routes: no file outside its data directory, no pickle, CORS
closed unless configured, and the headers every answer carries."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx

from tests.service.conftest import Api

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
