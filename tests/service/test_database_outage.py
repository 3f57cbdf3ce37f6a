"""The database goes away mid-study (a restart, a failover): the API answers 503 with
Retry-After instead of 500, workers wait and retry, and the study completes with every trial
once the database is back. Nothing finished before the outage is lost."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url

from tests.support import (
    Api,
    DatabaseProxy,
    free_port,
    make_database,
    service_env,
    spec,
    wait_for,
    wait_until_done,
)

N_TRIALS = 8


def _trials(api: Api, study_id: int) -> list[dict[str, Any]]:
    answer = api.http.get(f"/api/v1/studies/{study_id}/trials", params={"limit": 100})
    return list(answer.json()["data"])


def test_a_study_completes_through_a_database_outage(tmp_path: Path, workers: Any) -> None:
    url, drop = make_database("postgresql", tmp_path)
    proxy = DatabaseProxy(("127.0.0.1", 5432))
    via_proxy = make_url(url).set(host="127.0.0.1", port=proxy.port)
    database_url = via_proxy.render_as_string(hide_password=False)
    port = free_port()
    # Leases outlast the outage: this test is about the database, not about lost workers.
    env = service_env(database_url, HPSEARCH_LEASE_SECONDS="30")
    api = Api(f"http://127.0.0.1:{port}", database_url, env, tmp_path / "api.log", port)
    api.start()
    try:
        started = workers(api.url, 2)
        body = spec(
            "outage",
            n_trials=N_TRIALS,
            dataset={"name": "synthetic", "n_samples": 3000, "n_features": 20, "n_classes": 3},
            training={"epochs": 6, "batch_size": 32, "optimizer": "sgd"},
        )
        created = api.http.post("/api/v1/studies", json=body)
        assert created.status_code == 201, created.text
        study_id = created.json()["id"]

        def finished_while_running() -> list[dict[str, Any]] | None:
            trials = _trials(api, study_id)
            done = [t for t in trials if t["state"] == "complete"]
            busy = [t for t in trials if t["state"] == "running" and t["epochs_run"] >= 1]
            return done if len(done) >= 2 and busy else None

        before = wait_for(finished_while_running, 180, "2 finished trials and 1 mid-trial")
        proxy.cut(6)
        during = api.http.get(f"/api/v1/studies/{study_id}")
        assert during.status_code == 503, during.text
        assert during.headers["Retry-After"] == "1"
        assert "database is unavailable" in during.json()["detail"]

        study = wait_until_done(api, study_id, timeout=300)
        assert study["status"] == "completed", study
        trials = _trials(api, study_id)
        assert sorted(t["number"] for t in trials) == list(range(N_TRIALS))
        assert {t["state"] for t in trials} == {"complete"}, [t["reason"] for t in trials]
        after = {t["number"]: t["value"] for t in trials}
        for t in before:
            assert after[t["number"]] == t["value"], t
        # The workers met the outage (503 on a report, heartbeat or ask) and waited it out.
        logs = "".join(w.log.read_text() for w in started)
        assert "waiting for the API" in logs and "HTTP 503" in logs, logs[-3000:]
        assert all(w.process.poll() is None for w in started)
        assert "database unavailable; answered 503" in api.log.read_text()
    finally:
        api.stop()
        proxy.stop()
        drop()
