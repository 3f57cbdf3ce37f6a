"""Tokens, against a real API with HPSEARCH_AUTH=on: every endpoint but /healthz asks for one,
user and worker tokens each open only their half, tokens are kept hashed, and `hpsearch token
create|list|revoke` manage them. On SQLite: what the database decides about a token (hashing,
revocation, expiry, last use, idle local tokens) is tested on both backends in process
(tests/usecases/test_tokens.py); what a request sees of it does not depend on the backend."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import httpx
import pytest

from service.auth import tokens as auth
from tests.support import (
    Api,
    answers_ready,
    execute,
    free_port,
    hpsearch_cli,
    query,
    service_env,
    spec,
    start_secured_api,
    wait_for,
    wait_until_done,
)

# Stand-ins for the path parameters of every route (the answer may be 404 or 422 once the
# token passes; what is checked here is the answer before that).
PATH_VALUES = {"study_id": "1", "trial_id": "1", "number": "0", "dataset_id": "ds_0123456789abcdef"}
WORKER_ROUTES = {
    "/api/v1/workers/ask",
    "/api/v1/trials/{trial_id}/report",
    "/api/v1/trials/{trial_id}/heartbeat",
    "/api/v1/trials/{trial_id}/tell",
    "/api/v1/trials/{trial_id}/release",
}
EITHER_ROUTES = {"/api/v1/datasets/{dataset_id}/content", "/readyz"}
OPEN_ROUTES = {"/healthz", "/api/v1/session"}


@pytest.fixture(scope="module")
def secured(tmp_path_factory: Any) -> Iterator[Api]:
    """An API with auth on, a user token (``api.token``) made before it started."""
    server, drop = start_secured_api("sqlite", tmp_path_factory.mktemp("auth"))
    yield server
    server.stop()
    drop()


def operations(api: Api) -> list[tuple[str, str]]:
    """(method, path template) of every operation in the API's own OpenAPI schema."""
    schema = api.http.get("/openapi.json").json()
    return [
        (method.upper(), path)
        for path, item in schema["paths"].items()
        for method in item
        if method in ("get", "post", "put", "patch", "delete")
    ]


def call(api: Api, method: str, template: str, token: str | None) -> httpx.Response:
    return call_with(api, method, template, f"Bearer {token}" if token else None)


def call_with(api: Api, method: str, template: str, authorization: str | None) -> httpx.Response:
    path = re.sub(r"\{(\w+)\}", lambda m: PATH_VALUES[m.group(1)], template)
    headers = {"Authorization": authorization} if authorization else {}
    return httpx.request(method, api.url + path, headers=headers, json={}, timeout=30)


def test_every_endpoint_but_healthz_answers_401_without_a_token(secured: Api) -> None:
    ops = operations(secured)
    assert len(ops) >= 25  # the whole API, not a corner of it
    for method, template in ops:
        if template in OPEN_ROUTES:
            continue
        for authorization in (None, "Bearer hpsu_not-a-token", "Basic YWRtaW46YWRtaW4="):
            response = call_with(secured, method, template, authorization)
            assert response.status_code == 401, (method, template, authorization, response.text)
            assert response.headers["www-authenticate"].startswith("Bearer")
            assert "token" in response.json()["detail"]
    # Outside the schema: its documents need a token too; the dashboard's static page does not
    # (it holds no data and asks for a token itself).
    for path in ("/openapi.json", "/docs"):
        assert httpx.get(secured.url + path).status_code == 401
    assert httpx.get(secured.url + "/healthz").json() == {"status": "ok"}
    assert httpx.get(secured.url + "/").status_code == 200
    assert httpx.get(secured.url + "/static/app.js").status_code == 200


def test_user_and_worker_tokens_each_open_only_their_half(secured: Api) -> None:
    worker = secured.create_token("box-1", "worker")
    assert worker.startswith("hpsw_") and secured.token and secured.token.startswith("hpsu_")
    for method, template in operations(secured):
        if template in OPEN_ROUTES:
            continue
        as_user = call(secured, method, template, secured.token)
        as_worker = call(secured, method, template, worker)
        for token_kind, response in (("user", as_user), ("worker", as_worker)):
            allowed = template in EITHER_ROUTES or (template in WORKER_ROUTES) == (
                token_kind == "worker"
            )
            if allowed:
                assert response.status_code not in (401, 403), (token_kind, method, template)
            else:
                assert response.status_code == 403, (token_kind, method, template, response.text)
                detail = response.json()["detail"]
                assert f"is a {token_kind} token" in detail, detail


def test_tokens_are_kept_hashed_and_revoked_at_once(secured: Api) -> None:
    token = secured.create_token("carol")
    assert secured.http.get("/api/v1/studies", headers={"Authorization": f"Bearer {token}"})
    rows = stored_tokens(secured)
    assert all(token not in json.dumps(r, default=str) for r in rows)  # never the secret
    (row,) = [r for r in rows if r["name"] == "carol"]
    assert row["token_hash"] == hashlib.sha256(token.encode()).hexdigest()

    listed = json.loads(hpsearch_cli(secured.env, "token", "list", "--json"))
    (carol,) = [t for t in listed if t["name"] == "carol"]
    assert carol["status"] == "active" and carol["kind"] == "user"
    assert carol["last_used_at"] is not None  # the request above
    assert carol["hint"] == token[:9] + "…"
    assert "token_hash" not in carol

    out = hpsearch_cli(secured.env, "token", "revoke", "carol")
    assert f"revoked user token {carol['id']} (carol)" in out
    response = httpx.get(
        secured.url + "/api/v1/studies", headers={"Authorization": f"Bearer {token}"}
    )
    assert response.status_code == 401
    assert "revoked" in response.json()["detail"]
    listed = json.loads(hpsearch_cli(secured.env, "token", "list", "--json"))
    assert [t["status"] for t in listed if t["name"] == "carol"] == ["revoked"]
    again = subprocess.run(
        [sys.executable, "-m", "hpsearch", "token", "revoke", "carol"],
        env=secured.env,
        capture_output=True,
        check=False,
        text=True,
    )
    assert again.returncode == 2 and "no active token" in again.stderr


def test_an_expired_token_is_refused(secured: Api) -> None:
    token = secured.create_token("temp", "user", "--expires-in", "1h")
    headers = {"Authorization": f"Bearer {token}"}
    assert httpx.get(secured.url + "/api/v1/studies", headers=headers).status_code == 200
    execute(secured, "UPDATE hps_tokens SET expires_at = '2020-01-01 00:00:00' WHERE name = 'temp'")
    assert httpx.get(secured.url + "/api/v1/studies", headers=headers).status_code == 401
    listed = json.loads(hpsearch_cli(secured.env, "token", "list", "--json"))
    assert [t["status"] for t in listed if t["name"] == "temp"] == ["expired"]
    bad = subprocess.run(
        [sys.executable, "-m", "hpsearch", "token", "create", "x", "--expires-in", "soon"],
        env=secured.env,
        capture_output=True,
        check=False,
        text=True,
    )
    assert bad.returncode == 2 and "--expires-in" in bad.stderr


def test_workers_need_a_worker_token(secured: Api, workers: Any) -> None:
    study = secured.http.post("/api/v1/studies", json=spec("auth-workers", n_trials=3)).json()
    # A user token and no token: the worker says why and exits 4, training nothing.
    (with_user_token,) = workers(secured.url, 1, prefix="u", token=secured.token)
    (without,) = workers(secured.url, 1, prefix="n")
    for w, status in ((with_user_token, 403), (without, 401)):
        assert w.process.wait(60) == 4
        log = w.log.read_text()
        assert f"refused this worker's token (HTTP {status}" in log, log
        assert "hpsearch token create --kind worker" in log
    assert secured.http.get(f"/api/v1/studies/{study['id']}").json()["status"] == "queued"

    workers(secured.url, 1, prefix="w", token=secured.create_token("box-2", "worker"))
    done = wait_until_done(secured, study["id"], timeout=240)
    assert done["status"] == "completed" and done["trial_counts"]["complete"] == 3


def test_the_dashboard_session_cookie(secured: Api) -> None:
    page = httpx.Client(base_url=secured.url)
    assert page.get("/api/v1/session").json() == {"auth": True, "signed_in": False, "token": None}
    assert page.get("/api/v1/studies").status_code == 401
    worker = secured.create_token("box-3", "worker")
    refused = page.post("/api/v1/session", json={"token": worker})
    assert refused.status_code == 403 and "needs a user token" in refused.json()["detail"]
    assert page.post("/api/v1/session", json={"token": "nope"}).status_code == 401

    signed = page.post("/api/v1/session", json={"token": secured.token})
    assert signed.status_code == 204
    cookie = signed.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/" in cookie
    assert page.get("/api/v1/session").json()["token"]["name"] == "admin"
    assert page.get("/api/v1/studies").status_code == 200
    assert page.get("/docs").status_code == 200
    # The cookie never opens a state-changing call from another site.
    forged = page.post(
        "/api/v1/studies", json=spec("forged"), headers={"Origin": "https://evil.example"}
    )
    assert forged.status_code == 403 and "cross-site" in forged.json()["detail"]
    names = [s["name"] for s in secured.http.get("/api/v1/studies").json()["data"]]
    assert "forged" not in names

    assert page.delete("/api/v1/session").status_code == 204
    assert page.get("/api/v1/studies").status_code == 401


# -- serve and the loopback rule -------------------------------------------------------------


def non_loopback_address() -> str:
    out = subprocess.run(
        ["ip", "-4", "-o", "addr"], capture_output=True, check=False, text=True
    ).stdout
    for match in re.finditer(r"inet (\d+\.\d+\.\d+\.\d+)/", out):
        if not match.group(1).startswith("127."):
            return match.group(1)
    pytest.fail(f"this test needs a non-loopback IPv4 address on this machine: {out}")


def test_serve_refuses_a_network_address_without_auth(tmp_path: Any) -> None:
    env = service_env(f"sqlite:///{tmp_path / 'db.sqlite'}", HPSEARCH_DATA_DIR=str(tmp_path))
    for host in ("0.0.0.0", non_loopback_address()):
        done = subprocess.run(
            [sys.executable, "-m", "hpsearch", "serve", "--host", host, "--workers", "0"],
            env=env,
            capture_output=True,
            check=False,
            text=True,
            timeout=60,
        )
        assert done.returncode == 2
        assert f"refusing to listen on {host} without authentication" in done.stderr
        assert "HPSEARCH_AUTH=on" in done.stderr


@pytest.mark.parametrize("allowed", [False, True])
def test_an_api_without_auth_answers_only_on_loopback(tmp_path: Any, allowed: bool) -> None:
    """Started by other means than `serve` (plain uvicorn on 0.0.0.0), the API itself still
    refuses requests that arrive on a network address while auth is off."""
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    env = service_env(url, HPSEARCH_DATA_DIR=str(tmp_path))
    if allowed:
        env["HPSEARCH_ALLOW_NO_AUTH"] = "true"
    port = free_port()
    api = Api(f"http://127.0.0.1:{port}", url, env, tmp_path / "api.log", port)
    api.process = subprocess.Popen(
        [
            *(sys.executable, "-m", "uvicorn", "service.api.app:app_factory", "--factory"),
            *("--host", "0.0.0.0", "--port", str(port)),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: answers_ready(api.url), 60, "the API")
        remote = f"http://{non_loopback_address()}:{port}/api/v1/studies"
        response = httpx.get(remote, timeout=10)
        if allowed:
            assert response.status_code == 200
        else:
            assert response.status_code == 403
            assert "answers only on loopback addresses" in response.json()["detail"]
            assert httpx.get(api.url + "/api/v1/studies").status_code == 200
    finally:
        api.stop()


def test_token_lifetimes_take_seconds_too(secured: Api) -> None:
    """Finding 8: `--expires-in 45s` was refused (only d, h and m were units)."""
    secured.create_token("brief", "user", "--expires-in", "45s")
    (row,) = [
        t
        for t in json.loads(hpsearch_cli(secured.env, "token", "list", "--json"))
        if t["name"] == "brief"
    ]
    lifetime = datetime.fromisoformat(row["expires_at"]) - datetime.fromisoformat(row["created_at"])
    assert abs(lifetime.total_seconds() - 45) < 1, lifetime
    helptext = hpsearch_cli(secured.env, "token", "create", "--help")
    assert "s (seconds)" in " ".join(helptext.split())
    for bad, says in (("10w", "d, h, m or s"), ("0s", "d, h, m or s"), ("99999999d", "longer")):
        with pytest.raises(ValueError, match=re.escape(says)):
            auth.parse_duration(bad)


# -- helpers --------------------------------------------------------------------------------


def stored_tokens(api: Api) -> list[dict[str, Any]]:
    return query(api, "SELECT * FROM hps_tokens")
