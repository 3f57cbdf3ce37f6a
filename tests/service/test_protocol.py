"""The worker protocol's guarantees, driven by fake workers over real HTTP (no training):
idempotent ask, report and tell; the exact budget under racing workers; stop, resume, delete;
incremental polling; fair share between studies. Leases running out (re-lets, losses, time
limits, heartbeats) are tested in-process with a fake clock: tests/usecases/test_leases.py."""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from typing import Any

import httpx

from hpsearch.client import Client
from hpsearch.protocol import AskRequest, EpochReport, TellRequest
from hpsearch.results import TrialResult, TrialState
from tests.support import spec, wait_for

# Any status: the tests judge the answers themselves.
ANY_STATUS = range(100, 600)
METRICS = {"loss": 1.0, "accuracy": 0.5, "val_loss": 1.1, "val_accuracy": 0.5}


class FakeWorker:
    """Speaks the protocol like ``hpsearch worker`` does, minus the training: the protocol's own
    request models, sent by the client the worker uses (``hpsearch.client``). Each call returns
    the answer whatever its status, for the tests to judge; ``http`` sends raw requests (bodies
    the models would refuse to build)."""

    def __init__(self, api_url: str, worker_id: str, token: str | None = None) -> None:
        self.client = Client(api_url, token)
        self.http = self.client.http
        self.id = worker_id

    def _post(self, path: str, body: Any) -> httpx.Response:
        return self.client.request(
            "POST", path, json=body.model_dump(mode="json"), expect=ANY_STATUS
        )

    def ask(self) -> dict[str, Any] | None:
        r = self._post("/api/v1/workers/ask", AskRequest(worker_id=self.id))
        assert r.status_code in (200, 204), r.text
        return r.json() if r.status_code == 200 else None

    def report(self, trial: dict[str, Any], epoch: int, value: float = 0.5) -> httpx.Response:
        metrics = {**METRICS, "val_accuracy": value}
        return self._post(
            f"/api/v1/trials/{trial['trial_id']}/report",
            EpochReport(worker_id=self.id, attempt=trial["attempt"], epoch=epoch, metrics=metrics),
        )

    def tell(
        self,
        trial: dict[str, Any],
        state: str = "complete",
        value: float = 0.5,
        epochs: int = 1,
        reason: str | None = None,
    ) -> httpx.Response:
        result = TrialResult(
            state=TrialState(state),
            reason=reason,
            epochs_run=epochs,
            best_value=value,
            final_value=value,
            seconds=0.1,
            epochs=[],
        )
        return self._post(
            f"/api/v1/trials/{trial['trial_id']}/tell",
            TellRequest(worker_id=self.id, attempt=trial["attempt"], result=result),
        )


def plausible_accuracy(params: dict[str, Any], epoch: int) -> float:
    """A validation accuracy that rises with the epochs toward a ceiling that is highest at a
    learning rate of about 0.03 and falls with dropout: trials differ, and the median pruner
    has something to prune."""
    distance = math.log10(params.get("learning_rate", 0.03)) + 1.5
    ceiling = 0.95 - 0.12 * distance**2 - 0.2 * params.get("dropout", 0.0)
    ceiling -= 0.001 * abs(params.get("batch_size", 32) - 32)
    return round(max(ceiling, 0.05) * (1 - 0.5**epoch), 6)


def run_study(
    api: Any,
    worker_id: str,
    value: Callable[[dict[str, Any], int], float] = plausible_accuracy,
    token: str | None = None,
) -> int:
    """Run every trial there is to run as a worker would, minus the training: each epoch reports
    ``value(params, epoch)`` as the objective, and the trial ends pruned where the API says to
    stop. What the dashboard draws then has a real study's shape in a fraction of a second.
    Returns how many trials it ran."""
    worker, ran = FakeWorker(api.url, worker_id, token), 0
    while (trial := worker.ask()) is not None:
        ran += 1
        planned = trial["settings"]["epochs"]
        for epoch in range(1, planned + 1):
            reached = value(trial["params"], epoch)
            answer = worker.report(trial, epoch, reached)
            assert answer.status_code == 200, answer.text
            if answer.json()["should_stop"]:
                told = worker.tell(
                    trial, "pruned", value=reached, epochs=epoch, reason=answer.json()["reason"]
                )
                break
        else:
            told = worker.tell(trial, value=reached, epochs=planned)
        assert told.status_code == 200, told.text
    return ran


def create(api, name: str, **overrides: Any) -> dict[str, Any]:
    response = api.http.post("/api/v1/studies", json=spec(name, **overrides))
    assert response.status_code == 201, response.text
    return response.json()


def study(api, study_id: int) -> dict[str, Any]:
    return api.http.get(f"/api/v1/studies/{study_id}").json()


def drain(worker: FakeWorker) -> None:
    """Finish whatever this worker holds (so that later tests start clean)."""
    while (trial := worker.ask()) is not None:
        worker.tell(trial)


def test_asking_again_returns_the_same_running_trial(api) -> None:
    s = create(api, "idempotent-ask", n_trials=3)
    w = FakeWorker(api.url, "same-worker")
    first, second = w.ask(), w.ask()
    assert first["trial_id"] == second["trial_id"] and first["params"] == second["params"]
    assert study(api, s["id"])["trial_counts"]["running"] == 1
    assert first["settings"]["epochs"] == 3 and first["dataset"]["name"] == "synthetic"
    drain(w)


def test_repeated_report_changes_nothing_and_gets_the_same_answer(api) -> None:
    create(api, "idempotent-report", n_trials=1)
    w = FakeWorker(api.url, "reporter")
    trial = w.ask()
    one, again = w.report(trial, 1, 0.4), w.report(trial, 1, 0.9)
    assert one.status_code == again.status_code == 200
    assert one.json() == again.json()
    detail = api.http.get(f"/api/v1/studies/{trial['study_id']}/trials/{trial['number']}").json()
    assert [e["val_accuracy"] for e in detail["epochs"]] == [0.4]
    w.tell(trial)


def test_tell_for_a_finished_trial_gets_409_and_changes_nothing(api) -> None:
    create(api, "tell-twice", n_trials=1)
    w = FakeWorker(api.url, "teller")
    trial = w.ask()
    w.report(trial, 1, 0.7)
    assert w.tell(trial, value=0.7).status_code == 200
    again = w.tell(trial, value=0.1)
    assert again.status_code == 409
    assert "already complete" in again.json()["detail"]
    detail = api.http.get(f"/api/v1/studies/{trial['study_id']}/trials/{trial['number']}").json()
    assert detail["value"] == 0.7 and detail["state"] == "complete"


def test_report_from_a_worker_without_the_lease_gets_409(api) -> None:
    create(api, "wrong-worker", n_trials=1)
    owner, intruder = FakeWorker(api.url, "owner"), FakeWorker(api.url, "intruder")
    trial = owner.ask()
    response = intruder.report(trial, 1)
    assert response.status_code == 409 and "no longer leased" in response.json()["detail"]
    owner.tell(trial)


def test_exact_budget_with_many_workers_racing(api) -> None:
    s = create(api, "race", n_trials=10)
    finished: list[int] = []
    lock = threading.Lock()

    errors: list[str] = []

    def run(worker_id: str) -> None:
        w = FakeWorker(api.url, worker_id)
        while (trial := w.ask()) is not None:
            w.report(trial, 1)
            told = w.tell(trial)
            with lock:
                if told.status_code != 200:
                    errors.append(f"{worker_id}: tell -> {told.status_code} {told.text}")
                finished.append(trial["number"])

    threads = [threading.Thread(target=run, args=(f"racer-{i}",)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []
    final = study(api, s["id"])
    assert final["status"] == "completed"
    assert final["finished"] == 10 and final["trial_counts"]["complete"] == 10
    assert sorted(finished) == sorted(set(finished)) and len(finished) == 10
    assert api.http.get(f"/api/v1/studies/{s['id']}/trials").json()["count"] == 10


def test_stop_prunes_running_trials_and_starts_no_new_ones_then_resume(api) -> None:
    s = create(api, "stop-resume", n_trials=3)
    w = FakeWorker(api.url, "stopper")
    trial = w.ask()
    stopped = api.http.post(f"/api/v1/studies/{s['id']}/stop").json()
    assert stopped["status"] == "stopped"
    answer = w.report(trial, 1).json()
    assert answer == {"should_stop": True, "reason": "stopped with the study at epoch 1"}
    assert w.tell(trial, state="pruned").status_code == 200
    assert w.ask() is None
    detail = api.http.get(f"/api/v1/studies/{s['id']}/trials/{trial['number']}").json()
    assert detail["state"] == "pruned" and detail["reason"] == "stopped with the study at epoch 1"
    assert api.http.post(f"/api/v1/studies/{s['id']}/stop").status_code == 409
    assert api.http.post(f"/api/v1/studies/{s['id']}/resume").json()["status"] == "running"
    drain(w)
    final = study(api, s["id"])
    assert final["status"] == "completed" and final["finished"] == 3


def test_delete_removes_the_study_and_frees_its_workers(api) -> None:
    s = create(api, "to-delete", n_trials=2)
    w = FakeWorker(api.url, "deleter")
    trial = w.ask()
    assert api.http.delete(f"/api/v1/studies/{s['id']}").status_code == 204
    assert api.http.get(f"/api/v1/studies/{s['id']}").status_code == 404
    assert w.report(trial, 1).status_code == 404
    assert w.ask() is None


def test_incremental_polling_returns_only_changed_trials(api) -> None:
    s = create(api, "polling", n_trials=3)
    w = FakeWorker(api.url, "poller")
    first = w.ask()
    w.tell(first)
    page = api.http.get(f"/api/v1/studies/{s['id']}/trials").json()
    cursor = page["cursor"]
    second = w.ask()
    changed = api.http.get(f"/api/v1/studies/{s['id']}/trials", params={"after": cursor}).json()
    assert [t["number"] for t in changed["data"]] == [second["number"]]
    nothing = api.http.get(
        f"/api/v1/studies/{s['id']}/trials", params={"after": changed["cursor"]}
    ).json()
    assert nothing["data"] == []
    drain(w)
    complete = api.http.get(
        f"/api/v1/studies/{s['id']}/trials", params={"state": "complete", "limit": 2}
    ).json()
    assert complete["count"] == 3 and len(complete["data"]) == 2


def test_csv_export_has_a_row_per_trial_and_a_column_per_parameter(api) -> None:
    s = create(api, "csv", n_trials=2)
    drain(FakeWorker(api.url, "csv-worker"))
    response = api.http.get(f"/api/v1/studies/{s['id']}/trials.csv")
    assert response.headers["content-type"].startswith("text/csv")
    lines = response.text.strip().splitlines()
    assert lines[0].startswith("number,state,val_accuracy,")
    assert "learning_rate" in lines[0] and "clip_threshold" in lines[0]
    assert len(lines) == 3


def test_workers_share_out_over_running_studies(api) -> None:
    a, b = create(api, "fair-a", n_trials=4), create(api, "fair-b", n_trials=4)
    held = [FakeWorker(api.url, f"fair-{i}").ask() for i in range(4)]
    per_study = {a["id"]: 0, b["id"]: 0}
    for trial in held:
        per_study[trial["study_id"]] += 1
    assert per_study == {a["id"]: 2, b["id"]: 2}
    for i, trial in enumerate(held):
        FakeWorker(api.url, f"fair-{i}").tell(trial)
    drain(FakeWorker(api.url, "fair-0"))


def test_seeded_random_sampler_spreads_learning_rates_log_uniformly(api) -> None:
    s = create(
        api,
        "log-uniform",
        n_trials=60,
        search_space={"learning_rate": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True}},
    )
    w = FakeWorker(api.url, "sampler")
    rates = []
    while (trial := w.ask()) is not None:
        rates.append(trial["params"]["learning_rate"])
        w.tell(trial)
    assert len(rates) == 60 and all(1e-4 <= r <= 1e-1 for r in rates)
    below = sum(r < 10**-2.5 for r in rates)
    assert 18 <= below <= 42, below  # 30 expected; binomial(60, 0.5) within +-3 sd
    # Seeded: the same seed samples the same values whichever process serves the trial.
    again = create(api, "log-uniform-again", n_trials=3, search_space=s["spec"]["search_space"])
    replay = [w.ask()["params"]["learning_rate"] for _ in range(1)]
    assert replay[0] == rates[0]
    drain(w)
    assert again["id"] != s["id"]


def test_report_without_all_metrics_gets_422(api) -> None:
    create(api, "partial-metrics", n_trials=1)
    w = FakeWorker(api.url, "partial")
    trial = w.ask()
    response = w.http.post(
        f"/api/v1/trials/{trial['trial_id']}/report",
        json={"worker_id": w.id, "attempt": 1, "epoch": 1, "metrics": {"loss": 1.0}},
    )
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "metrics"
    w.tell(trial)


def test_a_study_whose_first_trials_all_fail_is_failed(api) -> None:
    s = create(api, "all-fail", n_trials=20)
    w = FakeWorker(api.url, "failing")
    for _ in range(5):
        trial = w.ask()
        result = w.http.post(
            f"/api/v1/trials/{trial['trial_id']}/tell",
            json={
                "worker_id": w.id,
                "attempt": 1,
                "result": {"state": "failed", "reason": "ValueError: broken data", "epochs_run": 0},
            },
        )
        assert result.status_code == 200
    final = study(api, s["id"])
    assert final["status"] == "failed"
    assert "its first 5 trials all failed; last: ValueError: broken data" in final["status_reason"]
    assert w.ask() is None


def test_an_optuna_trial_orphaned_by_an_api_crash_is_adopted_and_run(api) -> None:
    """A crash between Optuna's ask and our record leaves a running Optuna trial we never
    handed out: the reaper adopts it once it is older than a lease, and a worker runs it."""
    import optuna

    from service.optuna_bridge import distributions
    from service.studies.spec import StudySpec

    s = create(api, "orphan", n_trials=2)
    storage = optuna.storages.RDBStorage(api.database_url)
    orphan = optuna.load_study(study_name=f"orphan#{s['id']}", storage=storage).ask(
        distributions(StudySpec.model_validate(s["spec"]))
    )
    wait_for(
        lambda: study(api, s["id"])["trial_counts"]["running"] == 1,
        15,
        "the reaper to adopt the orphan",
    )
    w = FakeWorker(api.url, "adopter")
    trial = w.ask()
    assert trial["trial_id"] == orphan._trial_id and trial["number"] == 0
    assert trial["params"]["learning_rate"] == orphan.params["learning_rate"]
    assert w.tell(trial).status_code == 200
    drain(w)
    final = study(api, s["id"])
    assert final["status"] == "completed" and final["finished"] == 2
    detail = api.http.get(f"/api/v1/studies/{s['id']}/trials/0").json()
    assert detail["reason"].startswith("recovered: created just before an API crash")
    storage.remove_session()


def test_a_new_worker_asking_twice_at_once_is_registered_once(api) -> None:
    create(api, "twin-asks", n_trials=2)
    answers: list[int] = []

    def ask() -> None:
        r = httpx.post(f"{api.url}/api/v1/workers/ask", json={"worker_id": "twin"}, timeout=30)
        answers.append(r.status_code)

    threads = [threading.Thread(target=ask) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(answers) == [200, 200, 200, 200]
    drain(FakeWorker(api.url, "twin"))
