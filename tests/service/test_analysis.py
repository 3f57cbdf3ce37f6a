"""The dashboard's data endpoints over real HTTP, fed by fake workers (no training): the plots'
columns and curves, and parameter importance once enough trials completed."""

from __future__ import annotations

import math

import psutil

from tests.service.test_protocol import FakeWorker, create
from tests.support import query


def test_importance_names_the_parameter_that_drives_the_objective(api) -> None:
    s = create(
        api,
        "importance",
        n_trials=40,
        search_space={
            "learning_rate": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
            "dropout": {"type": "float", "low": 0.0, "high": 0.5},
        },
    )
    worker = FakeWorker(api.url, "importance-worker")

    def importance() -> dict:
        response = api.http.get(f"/api/v1/studies/{s['id']}/importance")
        assert response.status_code == 200, response.text
        return response.json()

    told = 0
    while (trial := worker.ask()) is not None:
        # The objective depends on the learning rate only: best at 1e-2, on a log scale.
        value = 1.0 - abs(math.log10(trial["params"]["learning_rate"]) + 2) / 3
        assert worker.report(trial, 1, value).status_code == 200
        assert worker.tell(trial, value=value).status_code == 200
        told += 1
        if told == 4:
            early = importance()
            assert early["ready"] is False
            assert (early["complete"], early["needed"]) == (4, 5)
            assert early["importances"] == {}
    assert told == 40
    answer = importance()
    assert answer["ready"] is True and answer["complete"] == 40
    weights = answer["importances"]
    assert set(weights) == {"learning_rate", "dropout"}
    assert weights["learning_rate"] > 0.8 > weights["dropout"]
    assert math.isclose(sum(weights.values()), 1.0, rel_tol=1e-6)


def test_importance_survives_its_process_being_killed(api) -> None:
    """Importance runs in a process of the API's own; killed, the next request starts another."""
    s = create(api, "importance-kill", n_trials=6)
    worker = FakeWorker(api.url, "importance-kill-worker")
    for number in range(6):
        trial = worker.ask()
        assert trial is not None
        worker.tell(trial, value=0.1 * number)
        if number == 4:
            first = api.http.get(f"/api/v1/studies/{s['id']}/importance").json()
            assert first["ready"] is True and first["complete"] == 5
            analysts = [
                p
                for p in psutil.Process(api.process.pid).children()
                if "spawn_main" in " ".join(p.cmdline())
            ]
            assert len(analysts) == 1
            analysts[0].kill()
            analysts[0].wait(10)
    response = api.http.get(f"/api/v1/studies/{s['id']}/importance")
    assert response.status_code == 200, response.text
    assert response.json()["ready"] is True and response.json()["complete"] == 6


def test_analysis_gives_every_trial_s_columns_and_its_curve(api) -> None:
    s = create(api, "analysis", n_trials=3, pruner={"type": "none"})
    worker = FakeWorker(api.url, "analysis-worker")
    curves = {0: [0.3, 0.4, 0.5], 1: [0.2], 2: [0.6, 0.7]}
    states = {0: "complete", 1: "pruned", 2: "complete"}
    while (trial := worker.ask()) is not None:
        curve = curves[trial["number"]]
        for epoch, value in enumerate(curve, start=1):
            worker.report(trial, epoch, value)
        worker.tell(trial, states[trial["number"]], value=max(curve), epochs=len(curve))
    a = api.http.get(f"/api/v1/studies/{s['id']}/analysis").json()
    assert a["objective"] == {"metric": "val_accuracy", "direction": "maximize"}
    assert a["trials"]["number"] == [0, 1, 2]
    assert a["trials"]["state"] == ["complete", "pruned", "complete"]
    assert a["trials"]["epochs_run"] == [3, 1, 2]
    assert {p["name"] for p in a["searched"]} == set(a["trials"]["params"])
    assert all(len(column) == 3 for column in a["trials"]["params"].values())
    assert [(c["number"], c["state"], c["values"]) for c in a["curves"]] == [
        (0, "complete", [0.3, 0.4, 0.5]),
        (1, "pruned", [0.2]),
        (2, "complete", [0.6, 0.7]),
    ]


def test_importance_of_a_study_made_after_a_deleted_one_counts_only_its_own_trials(api) -> None:
    """On SQLite a new study may get a deleted one's Optuna id; the importance process must not
    mix the deleted study's trials (still in its cache) into the new one's importances."""

    def finish(s: dict, param: str, worker_id: str) -> dict:
        worker = FakeWorker(api.url, worker_id)
        while (trial := worker.ask()) is not None:
            worker.tell(trial, value=trial["params"][param])
        answer = api.http.get(f"/api/v1/studies/{s['id']}/importance").json()
        assert answer["ready"] is True and answer["complete"] == 6, answer
        return answer

    lr = {"learning_rate": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True}}
    first = create(api, "importance-before", n_trials=6, search_space=lr)
    (row,) = query(api, f"SELECT optuna_study_id FROM hps_studies WHERE id = {first['id']}")
    assert set(finish(first, "learning_rate", "imp-before")["importances"]) == {"learning_rate"}
    assert api.http.delete(f"/api/v1/studies/{first['id']}").status_code == 204

    dropout = {"dropout": {"type": "float", "low": 0.0, "high": 0.5}}
    second = create(api, "importance-after", n_trials=6, search_space=dropout)
    (again,) = query(api, f"SELECT optuna_study_id FROM hps_studies WHERE id = {second['id']}")
    if api.database_url.startswith("sqlite"):  # the case this test is about
        assert again["optuna_study_id"] == row["optuna_study_id"]
    assert finish(second, "dropout", "imp-after")["importances"] == {"dropout": 1.0}
