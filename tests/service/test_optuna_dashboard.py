"""Optuna's own tools over the service's storage: ``hpsearch dashboard`` (optuna-dashboard, a real
process) and ``optuna.load_study``, which find each study under ``<name>#<id>``; renaming an Optuna
study breaks nothing; and migration 0004 renames the studies of an older database."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import httpx
import optuna
import pytest
import sqlalchemy as sa
from alembic import command

from service.db.migrate import alembic_config
from service.db.models import utcnow
from service.db.session import make_engine
from service.studies.validation import parse_study_spec
from tests.service.test_protocol import FakeWorker, create, study
from tests.support import (
    BACKENDS,
    Api,
    execute,
    free_port,
    make_database,
    query,
    service_env,
    spec,
    wait_for,
)


def run_trials(api: Api, worker_id: str, values: list[float]) -> list[dict[str, Any]]:
    """A fake worker runs one trial per value (one epoch each), completing it with that value."""
    worker = FakeWorker(api.url, worker_id)
    trials = []
    for value in values:
        trial = worker.ask()
        assert trial is not None
        assert worker.report(trial, 1, value).status_code == 200
        assert worker.tell(trial, value=value).status_code == 200
        trials.append(trial)
    return trials


def optuna_names(api: Api) -> list[str]:
    return optuna.get_all_study_names(storage=api.database_url)


def test_optuna_dashboard_shows_the_service_s_studies_and_trials(api, tmp_path) -> None:
    s = create(api, "seen-by-optuna-dashboard", n_trials=2)
    run_trials(api, "optuna-dashboard-worker", [0.5, 0.7])

    port = free_port()
    log = (tmp_path / "optuna-dashboard.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "hpsearch", "dashboard", "--port", str(port)],
        env=service_env(api.database_url),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        url = f"http://127.0.0.1:{port}"

        def studies() -> list[dict] | None:
            assert process.poll() is None, (tmp_path / "optuna-dashboard.log").read_text()
            try:
                return httpx.get(f"{url}/api/studies", timeout=10).json()["study_summaries"]
            except httpx.TransportError:
                return None

        summaries = wait_for(studies, 60, "optuna-dashboard answering")
        ours = [
            x for x in summaries if {"key": "hpsearch_study", "value": s["name"]} in x["user_attrs"]
        ]
        assert len(ours) == 1, summaries
        assert ours[0]["study_name"] == f"seen-by-optuna-dashboard#{s['id']}"
        detail = httpx.get(f"{url}/api/studies/{ours[0]['study_id']}?after=0", timeout=10).json()
        values = sorted(t["values"][0] for t in detail["trials"] if t["state"] == "Complete")
        assert values == [0.5, 0.7]
        page = httpx.get(url, timeout=10, follow_redirects=True)
        assert page.status_code == 200 and "optuna" in page.text.lower()
    finally:
        process.terminate()
        process.wait(10)
        log.close()


def test_optuna_load_study_finds_a_study_by_its_name_and_id_with_its_trials(api) -> None:
    s = create(api, "digits-bn-clip", n_trials=3)
    run_trials(api, "load-study-worker", [0.61, 0.83, 0.72])

    found = optuna.load_study(study_name=f"digits-bn-clip#{s['id']}", storage=api.database_url)
    assert sorted(t.value for t in found.trials) == [0.61, 0.72, 0.83]
    assert found.best_value == 0.83 and found.direction == optuna.study.StudyDirection.MAXIMIZE
    assert found.user_attrs == {"hpsearch_study": "digits-bn-clip", "objective": "val_accuracy"}
    # Every study of ours bears its new name: none is left under the name it was created with.
    assert not [name for name in optuna_names(api) if name.startswith("hpsearch-")]


def test_an_optuna_study_renamed_by_hand_keeps_working(api) -> None:
    """The service finds its Optuna study by id: a new name (given with Optuna's tools, or by
    hand) changes nothing for workers, the reaper or the importance analysis."""
    s = create(api, "renamed-later", n_trials=5)
    worker = FakeWorker(api.url, "renamed-worker")
    first = worker.ask()
    assert first is not None
    assert worker.report(first, 1, 0.4).status_code == 200
    execute(
        api,
        f"UPDATE studies SET study_name = 'renamed-by-hand' "
        f"WHERE study_name = 'renamed-later#{s['id']}'",
    )
    log_before = api.log.read_text()
    # The reaper's rounds over a renamed study: tests/usecases/test_recovery.py.
    assert worker.report(first, 2, 0.45).status_code == 200
    assert worker.tell(first, value=0.45, epochs=2).status_code == 200
    run_trials(api, "renamed-worker-2", [0.5, 0.6, 0.7, 0.8])

    assert study(api, s["id"])["status"] == "completed"
    renamed = optuna.load_study(study_name="renamed-by-hand", storage=api.database_url)
    assert sorted(t.value for t in renamed.trials) == [0.45, 0.5, 0.6, 0.7, 0.8]
    assert renamed.trials[0].intermediate_values == {1: 0.4, 2: 0.45}
    # Computed in a process of its own, which finds the study by id too.
    importance = api.http.get(f"/api/v1/studies/{s['id']}/importance").json()
    assert importance["ready"] and importance["importances"], importance
    assert set(importance["importances"]) <= set(first["params"])
    assert "reaper round failed" not in api.log.read_text()[len(log_before) :]


def test_a_study_deleted_and_made_again_gets_an_optuna_study_of_its_own(api) -> None:
    """On SQLite the new study may get the deleted one's id (ours and Optuna's): its name and
    its search space are its own all the same."""
    narrow = {"learning_rate": {"type": "float", "low": 0.01, "high": 0.02}}
    first = create(api, "made-again", n_trials=1, search_space=narrow)
    (trial,) = run_trials(api, "made-again-1", [0.9])
    assert 0.01 <= trial["params"]["learning_rate"] <= 0.02, trial["params"]
    assert api.http.delete(f"/api/v1/studies/{first['id']}").status_code == 204
    assert f"made-again#{first['id']}" not in optuna_names(api)

    dropout = {"dropout": {"type": "float", "low": 0.3, "high": 0.4}}
    second = create(api, "made-again", n_trials=1, search_space=dropout)
    (trial,) = run_trials(api, "made-again-2", [0.55])
    assert 0.3 <= trial["params"]["dropout"] <= 0.4, trial["params"]
    again = optuna.load_study(study_name=f"made-again#{second['id']}", storage=api.database_url)
    assert [t.value for t in again.trials] == [0.55]
    assert list(again.trials[0].params) == ["dropout"]
    assert not [name for name in optuna_names(api) if name.startswith("hpsearch-")]


def next_study_id(api: Api) -> int:
    """The id the next study will get."""
    if api.database_url.startswith("sqlite"):
        return int(query(api, "SELECT max(id) AS last FROM hps_studies")[0]["last"] or 0) + 1
    (sequence,) = query(api, "SELECT pg_get_serial_sequence('hps_studies', 'id') AS name")
    (row,) = query(api, f"SELECT last_value, is_called FROM {sequence['name']}")
    return int(row["last_value"]) + (1 if row["is_called"] else 0)


def test_a_name_taken_by_an_optuna_study_made_elsewhere_is_a_409_naming_it(api) -> None:
    expected = f"taken#{next_study_id(api)}"
    optuna.create_study(study_name=expected, storage=api.database_url)
    before = set(optuna_names(api))

    refused = api.http.post("/api/v1/studies", json=spec("taken"))
    assert refused.status_code == 409, refused.text
    (error,) = refused.json()["errors"]
    assert error["field"] == "name"
    assert f"already named {expected!r}, made outside this service" in error["reason"]
    assert "taken" not in [x["name"] for x in api.http.get("/api/v1/studies").json()["data"]]
    assert set(optuna_names(api)) == before  # the Optuna study made for it is gone again

    optuna.delete_study(study_name=expected, storage=api.database_url)
    made = create(api, "taken", n_trials=1)
    assert f"taken#{made['id']}" in optuna_names(api)
    assert api.http.post(f"/api/v1/studies/{made['id']}/stop").status_code == 200


# -- migration 0004 -------------------------------------------------------------------------------


def migrate(url: str, revision: str, down: bool = False) -> None:
    """Our tables up (or down) to ``revision``; Optuna's are made first, as ``upgrade`` does."""
    optuna.storages.RDBStorage(url).engine.dispose()
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            config = alembic_config()
            config.attributes["connection"] = connection
            (command.downgrade if down else command.upgrade)(config, revision)
            connection.commit()
    finally:
        engine.dispose()


STUDIES = sa.table(
    "hps_studies",
    *(sa.column(c) for c in ("id", "name", "optuna_name", "status", "n_trials", "n_allocated")),
    *(sa.column(c) for c in ("change_seq", "created_at", "started_at", "finished_at")),
    sa.column("spec", sa.JSON),
)
TRIALS = sa.table(
    "hps_trials",
    *(sa.column(c) for c in ("id", "study_id", "number", "state", "value", "worker_id")),
    *(sa.column(c) for c in ("attempt", "epochs_run", "optuna_synced", "change_seq")),
    *(sa.column(c) for c in ("created_at", "started_at", "finished_at")),
    sa.column("params", sa.JSON),
)


def old_style_study(url: str, name: str, values: list[float], n_trials: int) -> tuple[int, str]:
    """A study as the service wrote it before 0004: an Optuna study named ``hpsearch-<hex>``, our
    row naming it, a finished trial on each side per value. Returns (our id, the Optuna name)."""
    old_name = f"hpsearch-{uuid.uuid4().hex}"
    parsed = parse_study_spec(spec(name, n_trials=n_trials), 500, 100)
    optuna_study = optuna.create_study(
        study_name=old_name, storage=url, direction=parsed.objective.resolved_direction
    )
    optuna_study.set_user_attr("hpsearch_study", name)
    lr = optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True)
    for value in values:
        optuna_study.add_trial(
            optuna.trial.create_trial(
                params={"learning_rate": 0.01}, distributions={"learning_rate": lr}, value=value
            )
        )
    now = utcnow()
    engine = make_engine(url)
    with engine.begin() as connection:
        study_id = connection.execute(
            STUDIES.insert()
            .values(
                name=name,
                optuna_name=old_name,
                status="completed" if len(values) == n_trials else "queued",
                n_trials=n_trials,
                n_allocated=len(values),
                change_seq=len(values),
                created_at=now,
                started_at=now if values else None,
                finished_at=now if len(values) == n_trials else None,
                spec=parsed.model_dump(mode="json", exclude_none=True),
            )
            .returning(STUDIES.c.id)
        ).scalar_one()
        for number, trial in enumerate(optuna_study.get_trials()):
            connection.execute(
                TRIALS.insert().values(
                    id=trial._trial_id,
                    study_id=study_id,
                    number=number,
                    state="complete",
                    value=trial.value,
                    worker_id="old-worker",
                    attempt=1,
                    epochs_run=1,
                    optuna_synced=True,
                    change_seq=number + 1,
                    created_at=now,
                    started_at=now,
                    finished_at=now,
                    params={"learning_rate": 0.01},
                )
            )
    engine.dispose()
    return study_id, old_name


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_migration_renames_old_style_studies_and_keeps_their_trials(
    backend: str, tmp_path: Path
) -> None:
    url, drop = make_database(backend, tmp_path)
    port = free_port()
    env = service_env(url, HPSEARCH_DATA_DIR=str(tmp_path / "data"))
    api = Api(f"http://127.0.0.1:{port}", url, env, tmp_path / "api.log", port)
    try:
        migrate(url, "0003")
        done_id, done = old_style_study(url, "old-done", [0.6, 0.8], n_trials=2)
        waiting_id, waiting = old_style_study(url, "old-waiting", [], n_trials=1)

        api.start()  # migrates to the newest revision, as a deployment's API does
        assert sorted(optuna_names(api)) == [f"old-done#{done_id}", f"old-waiting#{waiting_id}"]
        renamed = optuna.load_study(study_name=f"old-done#{done_id}", storage=url)
        assert sorted(t.value for t in renamed.trials) == [0.6, 0.8]
        assert renamed.user_attrs["hpsearch_study"] == "old-done"
        assert study(api, done_id)["best_trial"]["value"] == 0.8
        rows = query(api, "SELECT id, uid FROM hps_studies ORDER BY id")
        assert rows == [{"id": done_id, "uid": done}, {"id": waiting_id, "uid": waiting}]
        # The queued one runs, through its link by id.
        (trial,) = run_trials(api, "after-migration", [0.7])
        assert trial["study_id"] == waiting_id
        ran = optuna.load_study(study_name=f"old-waiting#{waiting_id}", storage=url)
        assert [t.value for t in ran.trials] == [0.7]
        assert study(api, waiting_id)["status"] == "completed"
        # A new study is named in the new form.
        made = create(api, "after", n_trials=1)
        assert f"after#{made['id']}" in optuna_names(api)
        assert api.http.post(f"/api/v1/studies/{made['id']}/stop").status_code == 200
        api.stop()

        migrate(url, "0003", down=True)  # and back: 0003 finds its studies by their old names
        names = {r["optuna_name"] for r in query(api, "SELECT optuna_name FROM hps_studies")}
        assert {done, waiting} <= names and names == set(optuna_names(api))
        migrate(url, "head")
        assert f"old-done#{done_id}" in optuna_names(api)
    finally:
        api.stop()
        drop()
