"""The whole product for real: API processes, worker processes training with Keras, SQLite and
PostgreSQL. Workers and the API killed mid-study: test_chaos.py (serve, its worker and its trial
processes killed at random, on both backends), tests/deploy (a worker container killed mid-trial,
the API and the database restarted, a worker cut off by the network) and the lease use cases
(tests/usecases/test_leases.py: a lost worker's trial re-run with the same parameters, racing
workers and the exact budget)."""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx

from tests.service.test_api_studies import ISSUE_SPEC
from tests.support import answers_ready, free_port, spec, wait_for, wait_until_done

FINISHED = ("complete", "pruned", "diverged", "timed_out", "failed")


def all_trials(api: Any, study_id: int) -> list[dict[str, Any]]:
    return api.http.get(f"/api/v1/studies/{study_id}/trials", params={"limit": 1000}).json()["data"]


def check_issue_study(api: Any, study_id: int) -> None:
    """The issue's 'Done when' for a 20-trial run of its spec."""
    study = wait_until_done(api, study_id, timeout=420)
    assert study["status"] == "completed", study
    trials = all_trials(api, study_id)
    assert len(trials) == 20 and study["finished"] == 20
    assert all(t["state"] in FINISHED for t in trials)
    assert sorted(t["number"] for t in trials) == list(range(20))
    pruned = [t for t in trials if t["state"] == "pruned"]
    assert pruned, "the median pruner should prune some of 20 trials"
    for t in pruned:
        assert t["reason"].startswith(f"pruned at epoch {t['epochs_run']} ")
    assert study["best_trial"]["value"] >= 0.95, study["best_trial"]
    space = ISSUE_SPEC["search_space"]
    for t in trials:
        p = t["params"]
        for name in ("learning_rate", "dropout", "bn_momentum", "clip_threshold"):
            assert space[name]["low"] <= p[name] <= space[name]["high"], (name, p[name])
        assert p["clip_mode"] in ("value", "norm")
        assert p["hidden_units"] == [300, 100] and p["batch_size"] == 50
    below = sum(t["params"]["learning_rate"] < 10**-2.5 for t in trials)
    assert 4 <= below <= 16, below  # 10 expected: log-uniform over [1e-4, 1e-1]


def start_serve(tmp_path: Path, port: int, workers: int, log: Path | None = None) -> Any:
    """`hpsearch serve` (what `make run` starts) on SQLite under ``tmp_path``."""
    out = log.open("wb") if log else subprocess.DEVNULL
    try:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "hpsearch",
                "serve",
                "--workers",
                str(workers),
                "--port",
                str(port),
                "--data-dir",
                str(tmp_path / "data"),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "HPSEARCH_LOG_FORMAT": "text", "HPSEARCH_DATABASE_URL": ""},
        )
    finally:
        if log:
            out.close()  # type: ignore[union-attr]


def test_make_run_study_completes_with_two_workers_on_sqlite(tmp_path: Path) -> None:
    """`hpsearch serve` (what `make run` starts) and the issue's spec, 8 trials of 2 epochs
    unpruned (its 20 trials, the pruning and the log-scale sampling: the PostgreSQL test)."""
    port = free_port()
    serve = start_serve(tmp_path, port, workers=2, log=tmp_path / "serve.log")
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: answers_ready(url), 60, "hpsearch serve to answer")

        class Api:
            http = httpx.Client(base_url=url, timeout=30)

        body = copy.deepcopy(ISSUE_SPEC)
        body["n_trials"], body["training"]["epochs"] = 8, 2
        body["pruner"] = {"type": "none"}  # 8 complete trials: enough for the importance
        response = Api.http.post("/api/v1/studies", json=body)
        assert response.status_code == 201, response.text
        study = wait_until_done(Api, response.json()["id"], timeout=300)
        assert study["status"] == "completed" and study["finished"] == 8, study
        assert study["best_trial"]["value"] >= 0.9, study["best_trial"]
        assert (tmp_path / "data" / "hpsearch.db").is_file()
        workers = {t["worker_id"] for t in all_trials(Api, response.json()["id"])}
        assert {w.rsplit("-", 1)[-1] for w in workers} == {"1", "2"}, workers  # <serve>-local-N
        assert all("-local-" in w for w in workers), workers
        # Importance runs in a process of its own, spawned by serve.
        importance = Api.http.get(f"/api/v1/studies/{response.json()['id']}/importance")
        assert importance.status_code == 200, importance.text
        assert set(importance.json()["importances"]) == set(ISSUE_SPEC["search_space"])
    finally:
        serve.send_signal(signal.SIGTERM)
        serve.wait(90)
    # Its workers (and their trial processes) went with it.
    wait_for(
        lambda: not _processes_with(f"http://127.0.0.1:{port}"),
        30,
        "the local workers to exit with serve",
    )


def _processes_with(text: str) -> list[int]:
    import psutil

    found = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        if any(text in part for part in p.info["cmdline"] or []):
            found.append(p.info["pid"])
    return found


def test_local_workers_exit_when_serve_is_killed(tmp_path: Path) -> None:
    port = free_port()
    serve = start_serve(tmp_path, port, workers=1)
    url = f"http://127.0.0.1:{port}"
    wait_for(lambda: _processes_with(url), 30, "the local worker to start")
    serve.kill()
    serve.wait()
    wait_for(lambda: not _processes_with(url), 30, "the orphaned worker to exit")


def test_issue_study_completes_with_three_workers_on_postgresql(make_api, workers) -> None:
    api = make_api("postgresql")
    workers(api.url, 3)
    body = copy.deepcopy(ISSUE_SPEC)
    body["n_trials"] = 20
    study = api.http.post("/api/v1/studies", json=body).json()
    check_issue_study(api, study["id"])
    assert len({t["worker_id"] for t in all_trials(api, study["id"])}) == 3


def test_sigterm_lets_a_worker_finish_its_trial_then_exit(make_api, workers) -> None:
    api = make_api("sqlite")
    study = api.http.post(
        "/api/v1/studies",
        json=spec(
            "sigterm",
            n_trials=2,
            dataset={"name": "digits"},
            model={"hidden_units": [32]},
            training={"epochs": 4, "batch_size": 8},
        ),
    ).json()
    (worker,) = workers(api.url, 1)
    wait_for(
        lambda: any(
            t["state"] == "running" and t["epochs_run"] >= 1 for t in all_trials(api, study["id"])
        ),
        120,
        "a running trial",
    )
    assert worker.terminate(timeout=120) == 0
    trials = all_trials(api, study["id"])
    assert [t["state"] for t in trials] == ["complete"]
    assert trials[0]["epochs_run"] == 4 and trials[0]["attempt"] == 1


def test_two_api_processes_on_one_postgresql_keep_the_budget_exact(make_api) -> None:
    """No state in memory: workers alternating between two API processes see one service."""
    import threading

    from tests.service.test_protocol import FakeWorker
    from tests.support import Api, service_env

    first = make_api("postgresql")
    port = free_port()
    second = Api(
        f"http://127.0.0.1:{port}",
        first.database_url,
        service_env(first.database_url),
        first.log.with_name("api-2.log"),
        port,
    )
    second.start()
    try:
        study = first.http.post("/api/v1/studies", json=spec("two-apis", n_trials=16)).json()
        seen: list[int] = []
        errors: list[str] = []

        def run(i: int) -> None:
            apis = [FakeWorker(first.url, f"both-{i}"), FakeWorker(second.url, f"both-{i}")]
            n = 0
            while (trial := apis[n % 2].ask()) is not None:
                apis[(n + 1) % 2].report(trial, 1)  # report through the other process
                told = apis[n % 2].tell(trial)
                if told.status_code != 200:
                    errors.append(f"both-{i}: tell -> {told.status_code} {told.text}")
                seen.append(trial["number"])
                n += 1

        threads = [threading.Thread(target=run, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert errors == []
        final = second.http.get(f"/api/v1/studies/{study['id']}").json()
        assert final["status"] == "completed" and final["finished"] == 16
        assert sorted(seen) == list(range(16))
    finally:
        second.stop()
